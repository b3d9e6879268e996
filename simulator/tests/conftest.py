"""Shared fixtures: a real local tenant over HTTPS on 127.0.0.1 and real msal clients.

``tenant`` is a fresh Tenant per test (cheap: certificates and signing key are
generated once per process), seeded with TEST_SCENARIO: one confidential app
and two mailboxes.  Knobs are reset and the tenant stopped afterwards.
"""


import msal
import pytest
import requests

from simulator import Tenant

CLIENT_ID = "11111111-2222-3333-4444-555555555555"
CLIENT_SECRET = "test-secret~value"
REDIRECT_URI = "http://127.0.0.1:8069/exchange_connector/oauth/callback"
GRAPH_SCOPES = [
    "https://graph.microsoft.com/Mail.ReadWrite",
    "https://graph.microsoft.com/Calendars.ReadWrite",
    "https://graph.microsoft.com/Contacts.ReadWrite",
]
ALICE, BOB, PASSWORD = "alice@contoso.example", "bob@contoso.example", "Passw0rd!"

TEST_SCENARIO = {
    "apps": [
        {
            "name": "Odoo test",
            "client_id": CLIENT_ID,
            "client_secret": CLIENT_SECRET,
            "redirect_uris": [REDIRECT_URI],
        }
    ],
    "users": [
        {
            "email": ALICE,
            "display_name": "Alice Example",
            "password": PASSWORD,
            "folders": ["Inbox/Transfer In", "Inbox/Transfer Out"],
        },
        {"email": BOB, "display_name": "Bob Example", "password": PASSWORD},
    ],
}


@pytest.fixture
def tenant():
    """A running tenant seeded with TEST_SCENARIO; stopped (knobs reset) after the test."""
    running = Tenant.start(scenario=TEST_SCENARIO)
    try:
        yield running
    finally:
        running.knobs.reset()
        running.stop()


def https_session(tenant):
    """A requests.Session trusting only the tenant CA (trust_env off: the machine sets REQUESTS_CA_BUNDLE)."""
    session = requests.Session()
    session.verify = tenant.ca_path
    session.trust_env = False
    return session


@pytest.fixture
def session(tenant):
    with https_session(tenant) as http:
        yield http


def msal_app(tenant, session, client_secret=CLIENT_SECRET, client_id=CLIENT_ID):
    """A ConfidentialClientApplication pointed at the tenant."""
    return msal.ConfidentialClientApplication(
        client_id,
        client_credential=client_secret,
        authority=tenant.authority,
        http_client=session,
        instance_discovery=False,
    )


def user_tokens(tenant, session, login=ALICE, scopes=GRAPH_SCOPES, app=None):
    """Complete the authorization-code flow with PKCE through msal; returns (msal result, app)."""
    app = app or msal_app(tenant, session)
    flow = app.initiate_auth_code_flow(scopes, redirect_uri=REDIRECT_URI, login_hint=login)
    answer = tenant.browser_sign_in(flow["auth_uri"], login, PASSWORD)
    result = app.acquire_token_by_auth_code_flow(flow, answer)
    assert "access_token" in result, result
    return result, app


@pytest.fixture
def alice_token(tenant, session):
    """A delegated Graph access token of alice."""
    return user_tokens(tenant, session)[0]["access_token"]


@pytest.fixture
def app_token(tenant, session):
    """An app-only (client credentials) Graph access token."""
    result = msal_app(tenant, session).acquire_token_for_client(["https://graph.microsoft.com/.default"])
    assert "access_token" in result, result
    return result["access_token"]


class OAuthHelper:
    """The helpers above bound to one tenant and session (fixture ``oauth``)."""

    CLIENT_ID, CLIENT_SECRET, REDIRECT_URI, GRAPH_SCOPES = (
        CLIENT_ID,
        CLIENT_SECRET,
        REDIRECT_URI,
        GRAPH_SCOPES,
    )
    ALICE, BOB, PASSWORD = ALICE, BOB, PASSWORD

    def __init__(self, tenant, session):
        self.tenant = tenant
        self.session = session

    def msal_app(self, client_secret=CLIENT_SECRET, client_id=CLIENT_ID):
        return msal_app(self.tenant, self.session, client_secret=client_secret, client_id=client_id)

    def sign_in(self, auth_uri, login=ALICE, password=PASSWORD):
        return self.tenant.browser_sign_in(auth_uri, login, password)

    def user_tokens(self, login=ALICE, scopes=GRAPH_SCOPES, app=None):
        return user_tokens(self.tenant, self.session, login, scopes, app)

    def get(self, path, token, **kwargs):
        """GET a tenant URL (path relative to base_url) with a bearer token."""
        headers = dict(kwargs.pop("headers", {}), Authorization="Bearer " + token)
        return self.session.get(self.tenant.base_url + path, headers=headers, **kwargs)


@pytest.fixture
def oauth(tenant, session):
    return OAuthHelper(tenant, session)
