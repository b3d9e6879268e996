"""Microsoft identity platform v2.0 of the local tenant (what msal talks to).

Endpoints below ``/{tenant}/`` (tenant id, a mailbox domain, ``common`` or
``organizations``): OpenID discovery, JWKS, an authorize page (HTML sign-in
form; tests POST ``login``/``password`` to the authorize URL msal built) and
the token endpoint (authorization_code + PKCE, refresh_token with rotation,
client_credentials).  Access tokens are RS256 JWTs checked by
``validate_bearer``, which graph.py and ews.py call.
"""

import base64
import hashlib
import html
import json
import secrets
import threading
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Optional
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import jwt
from werkzeug.wrappers import Response

from .tls import generate_rsa_key

GRAPH_RESOURCE = "https://graph.microsoft.com"
RESERVED_SCOPES = ("openid", "profile", "offline_access", "email")
DEFAULT_APP_ROLES = [
    "Mail.ReadWrite",
    "Calendars.Read",
    "Calendars.ReadWrite",
    "Contacts.ReadWrite",
    "User.Read.All",
]
DEFAULT_DELEGATED_SCOPES = ["Mail.ReadWrite", "Calendars.ReadWrite", "Contacts.ReadWrite", "User.Read"]
AUTH_CODE_LIFETIME = 600
REFRESH_TOKEN_LIFETIME = 90 * 24 * 3600
_signing_key = None
_signing_key_lock = threading.Lock()


def _process_signing_key():
    # One RSA key per process keeps Tenant.start() fast in test suites.
    global _signing_key
    with _signing_key_lock:
        if _signing_key is None:
            _signing_key = generate_rsa_key()
        return _signing_key


def _b64url(raw):
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def _int_b64(value):
    return _b64url(value.to_bytes((value.bit_length() + 7) // 8, "big"))


class TokenError(Exception):
    """A bearer token graph.py/ews.py must refuse (code: InvalidAuthenticationToken)."""

    def __init__(self, code, message):
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


@dataclass
class App:
    """A registered application (confidential when it has a client_secret)."""

    client_id: str
    client_secret: Optional[str]
    redirect_uris: list
    name: str = "App"
    roles: list = field(default_factory=lambda: list(DEFAULT_APP_ROLES))


@dataclass
class TokenInfo:
    """What validate_bearer learned from an access token."""

    mailbox: object  # Mailbox, or None for app-only tokens
    app: str
    scopes: list
    expires_at: datetime
    roles: list = field(default_factory=list)
    audience: str = GRAPH_RESOURCE
    claims: dict = field(default_factory=dict)

    @property
    def is_app_only(self):
        return self.mailbox is None


class OAuthError(Exception):
    def __init__(self, status, error, code, description):
        super().__init__(description)
        self.status = status
        self.error = error
        self.code = code
        self.description = description


class Identity:
    """Token issuing and checking for one Tenant."""

    def __init__(self, tenant):
        self.tenant = tenant
        self.apps = {}
        self.clock_offset = 0.0
        self._lock = threading.RLock()
        self._codes = {}
        self._refresh_tokens = {}
        self._access_tokens = {}  # jti -> mailbox id (None for app-only)
        self._revoked_jtis = set()
        self._key = _process_signing_key()
        self.kid = _b64url(hashlib.sha256(self._public_pem()).digest()[:20])

    # -- configuration
    def now(self):
        """Seconds since the epoch as the tenant sees them (tests may advance_clock)."""
        return time.time() + self.clock_offset

    def advance_clock(self, seconds):
        """Move the tenant's clock forward: tokens and codes age without sleeping."""
        self.clock_offset += seconds

    def register_app(self, client_id, client_secret, redirect_uris, name="App", roles=None):
        """Register (or replace) an application; returns the App."""
        app = App(
            client_id=client_id,
            client_secret=client_secret,
            redirect_uris=list(redirect_uris or []),
            name=name,
            roles=list(roles) if roles is not None else list(DEFAULT_APP_ROLES),
        )
        with self._lock:
            self.apps[client_id] = app
        return app

    def revoke(self, email):
        """Revoke every refresh and access token of a user (as "revoke sessions" in Entra)."""
        mailbox = self.tenant.store.mailbox(email)
        with self._lock:
            for grant in self._refresh_tokens.values():
                if grant["mailbox_id"] == mailbox.id:
                    grant["revoked"] = True
            for jti, mailbox_id in self._access_tokens.items():
                if mailbox_id == mailbox.id:
                    self._revoked_jtis.add(jti)

    @property
    def issuer(self):
        return f"{self.tenant.base_url}/{self.tenant.tenant_id}/v2.0"

    def _public_pem(self):
        from cryptography.hazmat.primitives import serialization

        return self._key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )

    def jwks(self):
        numbers = self._key.public_key().public_numbers()
        return {
            "keys": [
                {
                    "kty": "RSA",
                    "use": "sig",
                    "kid": self.kid,
                    "x5t": self.kid,
                    "n": _int_b64(numbers.n),
                    "e": _int_b64(numbers.e),
                    "issuer": self.issuer,
                }
            ]
        }

    # -- tokens
    def _sign(self, claims):
        return jwt.encode(claims, self._key, algorithm="RS256", headers={"kid": self.kid, "typ": "JWT"})

    def issue_access_token(self, client_id, mailbox=None, scopes=(), roles=(), audience=GRAPH_RESOURCE):
        """Sign an access token; returns (token, expires_in seconds)."""
        lifetime = int(self.tenant.knobs.get(mailbox.email if mailbox else None).token_lifetime_seconds)
        now = int(self.now())
        jti = _b64url(uuid.uuid4().bytes)
        claims = {
            "aud": audience,
            "iss": f"https://sts.windows.net/{self.tenant.tenant_id}/",
            "iat": now,
            "nbf": now,
            "exp": now + lifetime,
            "tid": self.tenant.tenant_id,
            "appid": client_id,
            "azp": client_id,
            "uti": jti,
            "ver": "1.0",
            "idtyp": "user" if mailbox else "app",
        }
        if mailbox is not None:
            claims.update(
                oid=mailbox.id,
                sub=mailbox.id,
                upn=mailbox.email,
                unique_name=mailbox.email,
                preferred_username=mailbox.email,
                name=mailbox.display_name,
                scp=" ".join(scopes),
            )
        else:
            claims.update(oid=_app_object_id(client_id), sub=_app_object_id(client_id), roles=list(roles))
        with self._lock:
            self._access_tokens[jti] = mailbox.id if mailbox else None
        return self._sign(claims), lifetime

    def validate_bearer(self, authorization_header):
        """Check an ``Authorization: Bearer ...`` header; TokenInfo or TokenError."""
        if not authorization_header or not authorization_header.lower().startswith("bearer "):
            raise TokenError("InvalidAuthenticationToken", "Access token is empty.")
        token = authorization_header[7:].strip()
        try:
            claims = jwt.decode(
                token,
                self._key.public_key(),
                algorithms=["RS256"],
                options={"verify_exp": False, "verify_aud": False, "verify_nbf": False, "verify_iat": False},
            )
        except jwt.PyJWTError as error:
            raise TokenError("InvalidAuthenticationToken", "IDX14100: JWT is not well formed.") from error
        if claims.get("tid") != self.tenant.tenant_id:
            raise TokenError(
                "InvalidAuthenticationToken", "Access token validation failure. Invalid audience."
            )
        if claims.get("exp", 0) <= self.now():
            raise TokenError(
                "InvalidAuthenticationToken", "Lifetime validation failed, the token is expired."
            )
        with self._lock:
            revoked = claims.get("uti") in self._revoked_jtis
        if revoked:
            raise TokenError(
                "InvalidAuthenticationToken",
                "Continuous access evaluation resulted in challenge with result: InteractionRequired "
                "and code: TokenIssuedBeforeRevocationTimestamp",
            )
        mailbox = None
        if claims.get("idtyp") == "user":
            try:
                mailbox = self.tenant.store.mailbox(claims["oid"])
            except KeyError as error:
                raise TokenError(
                    "InvalidAuthenticationToken", "The user of this token does not exist."
                ) from error
        return TokenInfo(
            mailbox=mailbox,
            app=claims.get("appid"),
            scopes=(claims.get("scp") or "").split(),
            expires_at=datetime.fromtimestamp(claims["exp"], timezone.utc),
            roles=list(claims.get("roles") or []),
            audience=claims.get("aud"),
            claims=claims,
        )

    def _id_token(self, app, mailbox, nonce):
        now = int(self.now())
        claims = {
            "aud": app.client_id,
            "iss": self.issuer,
            "iat": now,
            "nbf": now,
            "exp": now + 3600,
            "name": mailbox.display_name,
            "oid": mailbox.id,
            "preferred_username": mailbox.email,
            "email": mailbox.email,
            "sub": _b64url(hashlib.sha256((mailbox.id + app.client_id).encode()).digest()),
            "tid": self.tenant.tenant_id,
            "ver": "2.0",
            "uti": _b64url(uuid.uuid4().bytes),
        }
        if nonce:
            claims["nonce"] = nonce
        return self._sign(claims)

    def _user_tokens(self, app, mailbox, scopes, nonce=None):
        resource, resource_scopes, reserved = _split_scopes(scopes)
        access_token, lifetime = self.issue_access_token(
            app.client_id, mailbox, [_short_scope(s) for s in resource_scopes], audience=resource
        )
        answer = {
            "token_type": "Bearer",
            "scope": " ".join(resource_scopes + [s for s in reserved if s != "offline_access"]),
            "expires_in": lifetime,
            "ext_expires_in": lifetime,
            "access_token": access_token,
            "client_info": _b64url(json.dumps({"uid": mailbox.id, "utid": self.tenant.tenant_id}).encode()),
        }
        if "offline_access" in reserved:
            refresh_token = "1.A" + secrets.token_urlsafe(48)
            with self._lock:
                self._refresh_tokens[refresh_token] = {
                    "client_id": app.client_id,
                    "mailbox_id": mailbox.id,
                    "scopes": list(scopes),
                    "expires_at": self.now() + REFRESH_TOKEN_LIFETIME,
                    "used": False,
                    "revoked": False,
                }
            answer["refresh_token"] = refresh_token
            answer["refresh_token_expires_in"] = REFRESH_TOKEN_LIFETIME
        if "openid" in reserved:
            answer["id_token"] = self._id_token(app, mailbox, nonce)
        return answer

    # -- HTTP
    def handle(self, request, tenant_segment, path):
        """Serve one identity request; path is what follows ``/{tenant}``."""
        if not self._known_tenant(tenant_segment):
            return self._json_error(
                OAuthError(
                    400,
                    "invalid_tenant",
                    90002,
                    f"Tenant '{tenant_segment}' not found. Check to make sure you have the correct tenant ID "
                    "and are signing into the correct cloud.",
                )
            )
        path = path.rstrip("/")
        if path in ("/v2.0/.well-known/openid-configuration", "/.well-known/openid-configuration"):
            return _json(self.openid_configuration(tenant_segment))
        if path in ("/discovery/v2.0/keys", "/discovery/keys"):
            return _json(self.jwks())
        if path == "/oauth2/v2.0/authorize":
            return self._authorize(request, tenant_segment)
        if path == "/oauth2/v2.0/token":
            if request.method != "POST":
                return self._json_error(
                    OAuthError(
                        405, "invalid_request", 90056, "The token endpoint only accepts POST requests."
                    )
                )
            try:
                return _json(
                    self._token(request), headers={"Cache-Control": "no-store", "Pragma": "no-cache"}
                )
            except OAuthError as error:
                return self._json_error(error)
        if path == "/oauth2/v2.0/logout":
            target = request.args.get("post_logout_redirect_uri")
            return Response(status=302, headers={"Location": target}) if target else Response("Signed out.")
        return self._json_error(
            OAuthError(404, "invalid_request", 90010, f"The endpoint {path} does not exist.")
        )

    def _known_tenant(self, segment):
        segment = segment.lower()
        if segment in (self.tenant.tenant_id.lower(), "common", "organizations"):
            return True
        return any(m.email.lower().endswith("@" + segment) for m in self.tenant.store.mailboxes())

    def openid_configuration(self, tenant_segment):
        """The document Microsoft serves at /{tenant}/v2.0/.well-known/openid-configuration."""
        base = f"{self.tenant.base_url}/{tenant_segment}"
        multi_tenant = tenant_segment.lower() in ("common", "organizations")
        issuer = f"{self.tenant.base_url}/{{tenantid}}/v2.0" if multi_tenant else self.issuer
        return {
            "token_endpoint": base + "/oauth2/v2.0/token",
            "token_endpoint_auth_methods_supported": [
                "client_secret_post",
                "private_key_jwt",
                "client_secret_basic",
            ],
            "jwks_uri": base + "/discovery/v2.0/keys",
            "response_modes_supported": ["query", "fragment", "form_post"],
            "subject_types_supported": ["pairwise"],
            "id_token_signing_alg_values_supported": ["RS256"],
            "response_types_supported": ["code", "id_token", "code id_token", "id_token token"],
            "scopes_supported": ["openid", "profile", "email", "offline_access"],
            "issuer": issuer,
            "request_uri_parameter_supported": False,
            "userinfo_endpoint": self.tenant.base_url + "/oidc/userinfo",
            "authorization_endpoint": base + "/oauth2/v2.0/authorize",
            "device_authorization_endpoint": base + "/oauth2/v2.0/devicecode",
            "http_logout_supported": True,
            "frontchannel_logout_supported": True,
            "end_session_endpoint": base + "/oauth2/v2.0/logout",
            "claims_supported": [
                "sub",
                "iss",
                "cloud_instance_name",
                "cloud_instance_host_name",
                "cloud_graph_host_name",
                "msgraph_host",
                "aud",
                "exp",
                "iat",
                "auth_time",
                "acr",
                "nonce",
                "preferred_username",
                "name",
                "tid",
                "ver",
                "at_hash",
                "c_hash",
                "email",
            ],
            "kerberos_endpoint": base + "/kerberos",
            "tenant_region_scope": "EU",
            "cloud_instance_name": "microsoftonline.com",
            "cloud_graph_host_name": "graph.windows.net",
            "msgraph_host": urlsplit(self.tenant.base_url).netloc,
            "rbac_url": "https://pas.windows.net",
        }

    # authorize
    def _authorize(self, request, tenant_segment):
        params = dict(request.args)
        params.update({k: v for k, v in request.form.items() if k not in ("login", "password")})
        client_id = params.get("client_id", "")
        app = self.apps.get(client_id)
        if app is None:
            return _error_page(
                "AADSTS700016",
                f"Application with identifier '{html.escape(client_id)}' was not found in the directory "
                f"'{self.tenant.tenant_id}'.",
            )
        redirect_uri = params.get("redirect_uri") or (app.redirect_uris[0] if app.redirect_uris else "")
        if redirect_uri not in app.redirect_uris:
            # Never redirect to an unregistered address: that is how codes get stolen.
            return _error_page(
                "AADSTS50011",
                f"The redirect URI '{html.escape(redirect_uri)}' specified in the request does not match the "
                f"redirect URIs configured for the application '{client_id}'.",
            )
        if params.get("response_type", "code") != "code":
            return _redirect(
                redirect_uri,
                params,
                {
                    "error": "unsupported_response_type",
                    "error_description": "AADSTS70005: response_type '{}' is not "
                    "enabled for the client.".format(params.get("response_type")),
                },
            )
        method = params.get("code_challenge_method", "plain" if params.get("code_challenge") else None)
        if method not in (None, "plain", "S256"):
            return _redirect(
                redirect_uri,
                params,
                {
                    "error": "invalid_request",
                    "error_description": "AADSTS501491: Invalid code_challenge_method.",
                },
            )
        if request.method != "POST":
            return _login_page(params, params.get("login_hint", ""), None)
        login = request.form.get("login", "").strip()
        password = request.form.get("password", "")
        try:
            mailbox = self.tenant.store.mailbox(login)
        except KeyError:
            mailbox = None
        if mailbox is None or mailbox.password != password:
            return _login_page(
                params,
                login,
                "AADSTS50126: Error validating credentials due to invalid username or password.",
            )
        code = "0.A" + secrets.token_urlsafe(40)
        with self._lock:
            self._codes[code] = {
                "client_id": client_id,
                "redirect_uri": redirect_uri,
                "mailbox_id": mailbox.id,
                "scopes": params.get("scope", "").split(),
                "nonce": params.get("nonce"),
                "code_challenge": params.get("code_challenge"),
                "code_challenge_method": method,
                "expires_at": self.now() + AUTH_CODE_LIFETIME,
                "used": False,
            }
        answer = {"code": code, "session_state": str(uuid.uuid4())}
        if "state" in params:
            answer["state"] = params["state"]
        return _redirect(redirect_uri, params, answer)

    # token
    def _client(self, request):
        client_id = request.form.get("client_id")
        secret = request.form.get("client_secret")
        if request.authorization and request.authorization.username:
            client_id = client_id or request.authorization.username
            secret = secret or request.authorization.password
        app = self.apps.get(client_id or "")
        if app is None:
            raise OAuthError(
                400,
                "unauthorized_client",
                700016,
                f"Application with identifier '{client_id}' was not found in the directory "
                f"'{self.tenant.tenant_id}'. This can happen if the application has not been installed by "
                "the administrator of the tenant.",
            )
        if app.client_secret is not None:
            if not secret:
                raise OAuthError(
                    401,
                    "invalid_client",
                    7000218,
                    "The request body must contain the following parameter: 'client_assertion' or "
                    "'client_secret'.",
                )
            if not secrets.compare_digest(secret.encode(), app.client_secret.encode()):
                raise OAuthError(
                    401,
                    "invalid_client",
                    7000215,
                    "Invalid client secret provided. Ensure the secret being sent in the request is the "
                    "client secret value, not the client secret ID, for a secret added to app "
                    f"'{app.client_id}'.",
                )
        return app

    def _token(self, request):
        grant_type = request.form.get("grant_type")
        if grant_type not in ("authorization_code", "refresh_token", "client_credentials"):
            raise OAuthError(
                400,
                "unsupported_grant_type",
                70003,
                f"The app requested an unsupported grant type '{grant_type}'.",
            )
        app = self._client(request)
        if grant_type == "client_credentials":
            return self._client_credentials(app, request)
        if grant_type == "authorization_code":
            return self._authorization_code(app, request)
        return self._refresh(app, request)

    def _client_credentials(self, app, request):
        scopes = request.form.get("scope", "").split()
        if len(scopes) != 1 or not scopes[0].endswith("/.default"):
            raise OAuthError(
                400,
                "invalid_scope",
                1002012,
                "The provided value for scope {} is not valid. Client credential flows must have a "
                "scope value with /.default suffixed to the resource identifier (application ID URI).".format(
                    " ".join(scopes)
                ),
            )
        resource = scopes[0][: -len("/.default")]
        token, lifetime = self.issue_access_token(app.client_id, None, roles=app.roles, audience=resource)
        return {
            "token_type": "Bearer",
            "expires_in": lifetime,
            "ext_expires_in": lifetime,
            "access_token": token,
        }

    def _authorization_code(self, app, request):
        code = request.form.get("code", "")
        with self._lock:
            grant = self._codes.get(code)
            if grant is None or grant["client_id"] != app.client_id:
                raise OAuthError(
                    400, "invalid_grant", 9002313, "Invalid request. Request is malformed or invalid."
                )
            if grant["used"]:
                raise OAuthError(
                    400,
                    "invalid_grant",
                    54005,
                    "OAuth2 Authorization code was already redeemed, "
                    "please retry with a new valid code or use an existing refresh token.",
                )
            if grant["expires_at"] <= self.now():
                raise OAuthError(
                    400,
                    "invalid_grant",
                    70008,
                    "The provided authorization code or refresh token has "
                    "expired due to inactivity. Send a new interactive authorization request for "
                    "this user and resource.",
                )
            if request.form.get("redirect_uri", grant["redirect_uri"]) != grant["redirect_uri"]:
                raise OAuthError(
                    400,
                    "invalid_grant",
                    500112,
                    "The reply address '{}' does not match the reply "
                    "address '{}' provided when requesting Authorization code.".format(
                        request.form.get("redirect_uri"), grant["redirect_uri"]
                    ),
                )
            if grant["code_challenge"]:
                verifier = request.form.get("code_verifier", "")
                if grant["code_challenge_method"] == "S256":
                    computed = _b64url(hashlib.sha256(verifier.encode("ascii", "replace")).digest())
                else:
                    computed = verifier
                if not verifier or not secrets.compare_digest(computed, grant["code_challenge"]):
                    raise OAuthError(
                        400,
                        "invalid_grant",
                        501481,
                        "The Code_Verifier does not match the code_challenge supplied in the "
                        "authorization request.",
                    )
            grant["used"] = True
        mailbox = self.tenant.store.mailbox(grant["mailbox_id"])
        scopes = grant["scopes"] or request.form.get("scope", "").split()
        return self._user_tokens(app, mailbox, scopes, nonce=grant["nonce"])

    def _refresh(self, app, request):
        token = request.form.get("refresh_token", "")
        with self._lock:
            grant = self._refresh_tokens.get(token)
            if grant is None or grant["client_id"] != app.client_id:
                raise OAuthError(
                    400, "invalid_grant", 9002313, "Invalid request. Request is malformed or invalid."
                )
            if grant["revoked"]:
                raise OAuthError(
                    400,
                    "invalid_grant",
                    50173,
                    "The provided grant has expired due to it being "
                    "revoked, a fresh auth token is needed. The user might have changed or reset "
                    "their password.",
                )
            mailbox = self.tenant.store.mailbox(grant["mailbox_id"])
            if grant["used"] and self.tenant.knobs.get(mailbox.email).refresh_token_single_use:
                # Strict rotation (knob): a refresh token is good for exactly one redemption.
                raise OAuthError(
                    400,
                    "invalid_grant",
                    70008,
                    "The provided authorization code or refresh token "
                    "has expired due to inactivity. Send a new interactive authorization request for "
                    "this user and resource. (The refresh token was already redeemed.)",
                )
            if grant["expires_at"] <= self.now():
                raise OAuthError(
                    400,
                    "invalid_grant",
                    700082,
                    "The refresh token has expired due to inactivity. "
                    "The token was issued on {} and was inactive for 90.00:00:00.".format(
                        datetime.fromtimestamp(
                            grant["expires_at"] - REFRESH_TOKEN_LIFETIME, timezone.utc
                        ).isoformat()
                    ),
                )
            grant["used"] = True
        requested = request.form.get("scope", "").split()
        scopes = requested or grant["scopes"]
        if "offline_access" not in scopes:
            scopes = scopes + ["offline_access"]
        return self._user_tokens(app, mailbox, scopes)

    def _json_error(self, error):
        trace_id, correlation_id = str(uuid.uuid4()), str(uuid.uuid4())
        timestamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M:%SZ")
        body = {
            "error": error.error,
            "error_description": f"AADSTS{error.code}: {error.description} Trace ID: {trace_id} "
            f"Correlation ID: {correlation_id} Timestamp: {timestamp}",
            "error_codes": [error.code],
            "timestamp": timestamp,
            "trace_id": trace_id,
            "correlation_id": correlation_id,
            "error_uri": f"{self.tenant.base_url}/error?code={error.code}",
        }
        return _json(body, status=error.status)


def _app_object_id(client_id):
    return str(uuid.uuid5(uuid.NAMESPACE_URL, "app:" + client_id))


def _short_scope(scope):
    return scope.rsplit("/", 1)[-1] if "://" in scope else scope


def _split_scopes(scopes):
    """(resource, resource scopes in the requested spelling, reserved scopes)."""
    reserved = [s for s in scopes if s in RESERVED_SCOPES]
    resource_scopes = [s for s in scopes if s not in RESERVED_SCOPES]
    resource = GRAPH_RESOURCE
    for scope in resource_scopes:
        if "://" in scope:
            resource = scope.rsplit("/", 1)[0]
            break
    if any(_short_scope(s) == ".default" for s in resource_scopes):
        prefix = resource + "/"
        resource_scopes = [prefix + s for s in DEFAULT_DELEGATED_SCOPES]
    if not resource_scopes:
        resource_scopes = ["User.Read"]
    return resource, resource_scopes, reserved


def _json(body, status=200, headers=None):
    return Response(
        json.dumps(body), status=status, headers=headers or {}, content_type="application/json; charset=utf-8"
    )


def _redirect(redirect_uri, params, answer):
    if params.get("response_mode") == "form_post":
        inputs = "".join(
            f'<input type="hidden" name="{html.escape(k)}" value="{html.escape(v)}"/>'
            for k, v in answer.items()
        )
        page = (
            '<html><head><title>Working...</title></head><body onload="document.forms[0].submit()">'
            f'<form method="POST" action="{html.escape(redirect_uri)}">{inputs}'
            '<noscript><input type="submit" value="Continue"/></noscript>'
            "</form></body></html>"
        )
        return Response(page, content_type="text/html; charset=utf-8")
    parts = urlsplit(redirect_uri)
    query = parse_qsl(parts.query) + list(answer.items())
    location = urlunsplit((parts.scheme, parts.netloc, parts.path, urlencode(query), ""))
    return Response(status=302, headers={"Location": location, "Cache-Control": "no-store"})


def _error_page(code, message):
    page = (
        "<!DOCTYPE html><html><head><title>Sign in to your account</title></head><body>"
        "<h1>Sorry, but we're having trouble signing you in.</h1>"
        f'<p id="error">{code}: {message}</p></body></html>'
    )
    return Response(page, status=400, content_type="text/html; charset=utf-8")


def _login_page(params, login, error):
    hidden = "".join(
        f'<input type="hidden" name="{html.escape(k)}" value="{html.escape(v)}"/>' for k, v in params.items()
    )
    page = """<!DOCTYPE html><html><head><meta charset="utf-8"><title>Sign in to your account</title>
<style>body{{font-family:Segoe UI,Arial,sans-serif;background:#f2f2f2}}
form{{background:#fff;width:360px;margin:80px auto;padding:40px;box-shadow:0 2px 6px rgba(0,0,0,.2)}}
input[type=email],input[type=password]{{width:100%;padding:8px;margin:8px 0}}
.error{{color:#e81123}}button{{background:#0067b8;color:#fff;border:0;padding:8px 24px}}</style></head><body>
<form method="POST"><h2>Sign in</h2><p>Local Microsoft tenant (simulator)</p>{}
<input type="email" name="login" placeholder="Email" value="{}" autofocus/>
<input type="password" name="password" placeholder="Password"/>{}
<button type="submit">Sign in</button></form></body></html>""".format(
        (f'<p class="error" id="error">{html.escape(error)}</p>') if error else "",
        html.escape(login),
        hidden,
    )
    return Response(page, status=200, content_type="text/html; charset=utf-8")
