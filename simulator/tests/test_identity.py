"""Identity platform: real msal against the tenant over HTTPS."""

import base64
import hashlib
import json

import pytest

from simulator.identity import TokenError


def _claims(jwt_token):
    payload = jwt_token.split(".")[1]
    return json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))


def test_openid_configuration_and_keys(tenant, session):
    config = session.get(tenant.authority + "/v2.0/.well-known/openid-configuration").json()
    assert config["issuer"] == f"{tenant.base_url}/{tenant.tenant_id}/v2.0"
    assert config["token_endpoint"] == tenant.authority + "/oauth2/v2.0/token"
    assert config["authorization_endpoint"] == tenant.authority + "/oauth2/v2.0/authorize"
    keys = session.get(config["jwks_uri"]).json()["keys"]
    assert keys[0]["kty"] == "RSA" and keys[0]["kid"] == tenant.identity.kid
    assert (tenant.base_url + "/").startswith("https://127.0.0.1:")


def test_auth_code_flow_with_pkce_and_nonce(tenant, oauth):
    app = oauth.msal_app()
    flow = app.initiate_auth_code_flow(
        oauth.GRAPH_SCOPES, redirect_uri=oauth.REDIRECT_URI, login_hint=oauth.ALICE
    )
    assert "code_challenge_method=S256" in flow["auth_uri"]
    page = oauth.session.get(flow["auth_uri"])
    assert page.status_code == 200 and 'name="password"' in page.text and oauth.ALICE in page.text
    params = oauth.sign_in(flow["auth_uri"])
    assert params["state"] == flow["state"]
    result = app.acquire_token_by_auth_code_flow(flow, params)
    assert result["token_type"] == "Bearer"
    assert result["expires_in"] == 3600 and result["ext_expires_in"] == 3600
    id_claims = _claims(result["id_token"])
    # msal itself refuses an id_token that does not echo the (hashed) nonce it sent.
    assert id_claims["nonce"] == hashlib.sha256(flow["nonce"].encode()).hexdigest()
    assert id_claims["aud"] == oauth.CLIENT_ID and id_claims["tid"] == tenant.tenant_id
    assert id_claims["preferred_username"] == oauth.ALICE and id_claims["name"] == "Alice Example"
    assert id_claims["iss"] == f"{tenant.base_url}/{tenant.tenant_id}/v2.0"
    account = app.get_accounts()[0]
    alice = tenant.store.mailbox(oauth.ALICE)
    assert account["home_account_id"] == f"{alice.id}.{tenant.tenant_id}"
    info = tenant.identity.validate_bearer("Bearer " + result["access_token"])
    assert info.mailbox is alice and info.app == oauth.CLIENT_ID
    assert set(info.scopes) == {"Mail.ReadWrite", "Calendars.ReadWrite", "Contacts.ReadWrite"}
    assert _claims(result["access_token"])["aud"] == "https://graph.microsoft.com"


def test_wrong_password_shows_form_again(tenant, oauth):
    flow = oauth.msal_app().initiate_auth_code_flow(oauth.GRAPH_SCOPES, redirect_uri=oauth.REDIRECT_URI)
    response = oauth.session.post(
        flow["auth_uri"], data={"login": oauth.ALICE, "password": "nope"}, allow_redirects=False
    )
    assert response.status_code == 200 and "AADSTS50126" in response.text


def test_pkce_verifier_is_checked(tenant, oauth):
    app = oauth.msal_app()
    flow = app.initiate_auth_code_flow(oauth.GRAPH_SCOPES, redirect_uri=oauth.REDIRECT_URI)
    params = oauth.sign_in(flow["auth_uri"])
    flow["code_verifier"] = "x" * 43
    result = app.acquire_token_by_auth_code_flow(flow, params)
    assert result["error"] == "invalid_grant" and result["error_codes"] == [501481]


def test_unknown_redirect_uri_is_never_followed(tenant, oauth):
    flow = oauth.msal_app().initiate_auth_code_flow(
        oauth.GRAPH_SCOPES, redirect_uri="https://evil.example/cb"
    )
    page = oauth.session.get(flow["auth_uri"], allow_redirects=False)
    assert page.status_code == 400 and "AADSTS50011" in page.text
    posted = oauth.session.post(
        flow["auth_uri"], data={"login": oauth.ALICE, "password": oauth.PASSWORD}, allow_redirects=False
    )
    assert posted.status_code == 400 and "Location" not in posted.headers


def test_wrong_client_secret_is_refused(tenant, oauth):
    result = oauth.msal_app(client_secret="wrong").acquire_token_for_client(
        ["https://graph.microsoft.com/.default"]
    )
    assert result["error"] == "invalid_client"
    assert result["error_codes"] == [7000215]
    assert result["error_description"].startswith("AADSTS7000215: ")
    assert result["trace_id"] and result["correlation_id"] and result["timestamp"]


def test_refresh_rotates_and_the_old_refresh_token_stays_valid(tenant, oauth):
    # Microsoft's identity platform hands out a new refresh token but does not revoke the one
    # redeemed ("Refresh tokens ... aren't revoked when used to acquire new access tokens").
    first, app = oauth.user_tokens()
    account = app.get_accounts()[0]
    refreshed = app.acquire_token_silent(oauth.GRAPH_SCOPES, account=account, force_refresh=True)
    assert refreshed["refresh_token"] != first["refresh_token"]
    reused = app.acquire_token_by_refresh_token(first["refresh_token"], oauth.GRAPH_SCOPES)
    assert "access_token" in reused, reused
    assert reused["refresh_token"] not in (first["refresh_token"], refreshed["refresh_token"])


def test_single_use_refresh_tokens_refuse_a_second_redemption(tenant, oauth):
    tenant.knobs.set(None, refresh_token_single_use=True)
    first, app = oauth.user_tokens()
    account = app.get_accounts()[0]
    refreshed = app.acquire_token_silent(oauth.GRAPH_SCOPES, account=account, force_refresh=True)
    assert refreshed["token_source"] == "identity_provider"
    assert refreshed["refresh_token"] != first["refresh_token"]
    assert refreshed["access_token"] != first["access_token"]
    reused = app.acquire_token_by_refresh_token(first["refresh_token"], oauth.GRAPH_SCOPES)
    assert reused["error"] == "invalid_grant" and reused["error_codes"] == [70008]
    # The new refresh token still works (msal caches it and uses it).
    again = app.acquire_token_silent(oauth.GRAPH_SCOPES, account=account, force_refresh=True)
    assert "access_token" in again, again


def test_expired_refresh_token(tenant, oauth):
    first, app = oauth.user_tokens()
    tenant.identity.advance_clock(91 * 24 * 3600)
    result = app.acquire_token_by_refresh_token(first["refresh_token"], oauth.GRAPH_SCOPES)
    assert result["error"] == "invalid_grant" and result["error_codes"] == [700082]


def test_client_credentials_gives_roles(tenant, oauth):
    result = oauth.msal_app().acquire_token_for_client(["https://graph.microsoft.com/.default"])
    assert "refresh_token" not in result and "id_token" not in result
    info = tenant.identity.validate_bearer("Bearer " + result["access_token"])
    assert info.mailbox is None and info.app == oauth.CLIENT_ID
    assert {"Mail.ReadWrite", "Calendars.Read", "Contacts.ReadWrite"} <= set(info.roles)
    bad = oauth.msal_app().acquire_token_for_client(["https://graph.microsoft.com/Mail.Read"])
    assert bad["error"] == "invalid_scope"


def test_token_lifetime_knob_and_expiry(tenant, oauth):
    tenant.knobs.set(oauth.ALICE, token_lifetime_seconds=600)
    result, _app = oauth.user_tokens()
    assert result["expires_in"] == 600
    header = "Bearer " + result["access_token"]
    assert tenant.identity.validate_bearer(header).mailbox.email == oauth.ALICE
    assert oauth.get("/v1.0/me", result["access_token"]).status_code == 200
    tenant.identity.advance_clock(601)
    with pytest.raises(TokenError) as refused:
        tenant.identity.validate_bearer(header)
    assert refused.value.code == "InvalidAuthenticationToken"
    answer = oauth.get("/v1.0/me", result["access_token"])
    assert answer.status_code == 401
    assert answer.json()["error"]["code"] == "InvalidAuthenticationToken"


def test_revocation_refuses_access_and_refresh_tokens(tenant, oauth):
    alice, app = oauth.user_tokens()
    bob, _ = oauth.user_tokens(login=oauth.BOB, app=oauth.msal_app())
    tenant.identity.revoke(oauth.ALICE)
    with pytest.raises(TokenError):
        tenant.identity.validate_bearer("Bearer " + alice["access_token"])
    assert oauth.get("/v1.0/me", alice["access_token"]).status_code == 401
    assert tenant.identity.validate_bearer("Bearer " + bob["access_token"]).mailbox.email == oauth.BOB
    refreshed = app.acquire_token_by_refresh_token(alice["refresh_token"], oauth.GRAPH_SCOPES)
    assert refreshed["error"] == "invalid_grant" and refreshed["error_codes"] == [50173]
    # Signing in again after revocation gives working tokens.
    fresh, _ = oauth.user_tokens(app=oauth.msal_app())
    assert tenant.identity.validate_bearer("Bearer " + fresh["access_token"]).mailbox.email == oauth.ALICE


def test_malformed_and_foreign_tokens(tenant):
    for header in (None, "", "Basic abc", "Bearer not.a.jwt", "Bearer " + "e30." * 2 + "sig"):
        with pytest.raises(TokenError):
            tenant.identity.validate_bearer(header)


def test_authorization_code_is_single_use(tenant, oauth):
    app = oauth.msal_app()
    flow = app.initiate_auth_code_flow(oauth.GRAPH_SCOPES, redirect_uri=oauth.REDIRECT_URI)
    params = oauth.sign_in(flow["auth_uri"])
    assert "access_token" in app.acquire_token_by_auth_code_flow(dict(flow), params)
    again = oauth.session.post(
        tenant.authority + "/oauth2/v2.0/token",
        data={
            "grant_type": "authorization_code",
            "code": params["code"],
            "client_id": oauth.CLIENT_ID,
            "client_secret": oauth.CLIENT_SECRET,
            "redirect_uri": oauth.REDIRECT_URI,
            "code_verifier": flow["code_verifier"],
        },
    )
    assert again.status_code == 400 and again.json()["error_codes"] == [54005]
