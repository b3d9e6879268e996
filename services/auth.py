"""OAuth 2.0 for Microsoft Graph with msal: sign-in (auth code + PKCE), silent refresh, app-only tokens.

The token cache lives in the caller's database as msal's serialized JSON
blob.  Each helper here takes that blob and hands back the updated one
whenever msal rotated the refresh token (``provider.cache_blob`` after use,
``provider.cache_changed`` tells whether to persist it).

Typical use by the Odoo side::

    oauth = GraphOAuth(client_id, secret, authority, cache_blob=None, verify=ca_path)
    flow = oauth.start_sign_in(redirect_uri, login_hint=user.email)   # keep flow in the session
    ... redirect the browser to flow["auth_uri"] ...
    signed_in = oauth.finish_sign_in(flow, request.params)            # -> SignedIn(email, name, cache_blob)
    provider = GraphOAuth(client_id, secret, authority, cache_blob=signed_in.cache_blob,
                          verify=ca_path).delegated_token_provider(signed_in.email)
    backend = GraphBackend(email, provider, graph_url=..., verify=ca_path)
    ... after the run: if provider.cache_changed: store provider.cache_blob

A token provider is a callable ``provider(force_refresh=False) -> str``
returning an access token; GraphBackend calls it with ``force_refresh=True``
once after a 401.

Microsoft may make a refresh token single-use: a rotated one must be stored
before anything else can fail, and two workers must not redeem the same one.
A delegated provider given a ``token_store`` (see :class:`TokenStore`) does
each refresh inside ``token_store.refreshing()``, which serializes the
refreshes of one mailbox and hands over the newest stored cache, and stores
the rotated cache at once with ``token_store.save()``.
"""

import contextlib
import logging
import time
from dataclasses import dataclass

import msal
import requests

from .errors import AuthenticationError, ExchangeError, connection_problem

_logger = logging.getLogger(__name__)

GRAPH_RESOURCE = "https://graph.microsoft.com"
#: Delegated permissions the connector asks for (msal adds openid/profile/offline_access itself).
DELEGATED_SCOPES = [
    f"{GRAPH_RESOURCE}/User.Read",
    f"{GRAPH_RESOURCE}/Mail.ReadWrite",
    f"{GRAPH_RESOURCE}/Calendars.Read",
    f"{GRAPH_RESOURCE}/Contacts.ReadWrite",
]
APP_ONLY_SCOPES = [f"{GRAPH_RESOURCE}/.default"]
DEFAULT_TIMEOUT = (10, 60)
#: msal's cache of HTTP answers, shared by every GraphOAuth of the process: the authority's OpenID
#: discovery is asked once a day instead of once per sign-in or sync (msal keeps 2xx GETs 24 h).
_MSAL_HTTP_CACHE = {}


def new_http_session(verify=True):
    """A requests Session that uses exactly ``verify`` (CA bundle path, True or False).

    ``trust_env`` is off: with it, a REQUESTS_CA_BUNDLE environment variable
    silently replaces the session's ``verify`` and proxies variables would
    apply to a local tenant.
    """
    session = requests.Session()
    session.trust_env = False
    session.verify = verify
    return session


@dataclass(frozen=True)
class SignedIn:
    """The outcome of a finished sign-in: who signed in and the cache to persist."""

    email: str
    display_name: str
    cache_blob: str


#: msal's own margin: an access token expiring sooner than this is refreshed.
ACCESS_TOKEN_MARGIN = 300


class TokenStore:
    """Where a mailbox's token cache is kept, shared by every process that uses the mailbox.

    An implementation (the Odoo side's, or a test's) overrides the three methods.
    """

    @contextlib.contextmanager
    def refreshing(self):
        """Hold the mailbox's refresh lock; yield the newest stored cache blob (None: nothing stored)."""
        yield None

    def newest(self):
        """The stored cache blob as it is now (inside :meth:`refreshing`)."""
        return None

    def save(self, cache_blob, replaces):
        """Store ``cache_blob`` at once if the stored cache is still ``replaces``; True when stored."""
        return False


def _oauth_error(result, what):
    """Turn an msal error dict into an AuthenticationError (or ExchangeError) with a kind."""
    code = result.get("error") or "unknown_error"
    description = (
        (result.get("error_description") or "").splitlines()[0] if result.get("error_description") else ""
    )
    aadsts = result.get("error_codes") or []
    if code in ("invalid_grant", "interaction_required") and 65001 not in aadsts:
        kind = "invalid_grant"
    elif code in ("consent_required", "unauthorized_client") or 65001 in aadsts:
        kind = "consent"
    elif code == "invalid_client":
        kind = "client"
    else:
        kind = None
    _logger.warning("%s failed: %s %s", what, code, description)
    message = f"{what} failed: {description or code}"
    if kind is None:
        return ExchangeError(message, code=code)
    return AuthenticationError(message, kind=kind, code=code)


class GraphOAuth:
    """An msal ConfidentialClientApplication over a serialized token cache.

    :param authority: ``https://login.microsoftonline.com/<tenant>`` or a
        local tenant's ``tenant.authority``.
    :param verify: CA bundle path or True (also used for the tenant discovery msal does at once).
    """

    def __init__(
        self, client_id, client_secret, authority, cache_blob=None, verify=True, timeout=DEFAULT_TIMEOUT
    ):
        self.cache = msal.SerializableTokenCache()
        if cache_blob:
            self.cache.deserialize(cache_blob)
        #: The blob the cache was last loaded from, as stored.
        self.loaded_blob = cache_blob
        self._session = new_http_session(verify)
        try:
            self.app = msal.ConfidentialClientApplication(
                client_id,
                client_credential=client_secret,
                authority=authority,
                token_cache=self.cache,
                http_client=self._session,
                timeout=timeout,
                # Only Microsoft's hosts are in msal's instance list; a
                # sovereign or local authority is trusted as configured.
                instance_discovery=False,
                http_cache=_MSAL_HTTP_CACHE,
            )
        except requests.exceptions.RequestException as exc:
            raise connection_problem(exc, authority) from exc
        except ValueError as exc:
            raise ExchangeError(
                f"The authority {authority} did not answer OpenID discovery: {exc}",
                code="authority_discovery_failed",
            ) from exc

    @property
    def cache_blob(self):
        """The serialized cache to persist (always the current content)."""
        return self.cache.serialize()

    @property
    def cache_changed(self):
        """True when msal added or rotated tokens since the cache was loaded or last serialized."""
        return self.cache.has_state_changed

    def start_sign_in(
        self, redirect_uri, login_hint=None, state=None, scopes=None, response_mode="form_post"
    ):
        """Start an authorization-code flow with PKCE; returns msal's flow dict.

        Keep the dict server-side (it holds the PKCE verifier and nonce) and
        send the browser to ``flow["auth_uri"]``.  ``state`` may carry the
        caller's own HMAC-signed CSRF token.  With the default
        ``response_mode="form_post"`` (RFC 9700's advice) the answer reaches
        ``redirect_uri`` as a POSTed form, so the code never sits in a URL;
        pass ``"query"`` for a GET callback.
        """
        return self.app.initiate_auth_code_flow(
            scopes or DELEGATED_SCOPES,
            redirect_uri=redirect_uri,
            state=state,
            login_hint=login_hint,
            prompt="select_account" if not login_hint else None,
            response_mode=response_mode,
        )

    def finish_sign_in(self, flow, auth_response, scopes=None):
        """Redeem the code the browser brought back (``auth_response``: the POSTed form or query parameters).

        Returns :class:`SignedIn` with the cache blob holding the refresh token.
        """
        try:
            result = self.app.acquire_token_by_auth_code_flow(flow, dict(auth_response), scopes=scopes)
        except ValueError as exc:
            # msal raises ValueError for a state mismatch or a replayed flow.
            raise AuthenticationError(
                f"Sign-in answer rejected: {exc}", kind="state", code="state_mismatch"
            ) from exc
        except requests.exceptions.RequestException as exc:
            raise connection_problem(exc) from exc
        if "access_token" not in result:
            raise _oauth_error(result, "Sign-in")
        claims = result.get("id_token_claims") or {}
        email = claims.get("preferred_username") or claims.get("email") or claims.get("upn") or ""
        return SignedIn(email=email, display_name=claims.get("name", ""), cache_blob=self.cache_blob)

    def delegated_token_provider(self, email, scopes=None, token_store=None):
        """A token provider for ``email``'s delegated tokens, refreshed silently from the cache.

        With a :class:`TokenStore`, refreshes are serialized through it and each rotated
        cache is saved there the moment it is received (``cache_changed`` then stays False,
        unless the store could not take it).
        """
        return _DelegatedTokenProvider(self, email, scopes or DELEGATED_SCOPES, token_store)

    def load(self, cache_blob):
        """Replace the cache's content with ``cache_blob`` (a newer one stored by another process)."""
        self.cache.deserialize(cache_blob)
        self.loaded_blob = cache_blob

    def app_token_provider(self, scopes=None):
        """A token provider for app-only tokens (client credentials), for ``GraphBackend(app_only=True)``."""
        return _AppTokenProvider(self, scopes or APP_ONLY_SCOPES)

    def forget(self, email):
        """Remove ``email``'s tokens from the cache (sign-out); persist ``cache_blob`` afterwards."""
        for account in self.app.get_accounts(username=email):
            self.app.remove_account(account)


class _TokenProvider:
    def __init__(self, oauth, scopes):
        self.oauth = oauth
        self.scopes = scopes

    @property
    def cache_blob(self):
        return self.oauth.cache_blob

    @property
    def cache_changed(self):
        return self.oauth.cache_changed

    def _acquire(self, force_refresh):
        raise NotImplementedError

    def __call__(self, force_refresh=False):
        try:
            result = self._acquire(force_refresh)
        except requests.exceptions.RequestException as exc:
            raise connection_problem(exc) from exc
        if result is None:
            # msal found neither a valid access token nor a refresh token for these scopes.
            raise AuthenticationError(
                "No usable token in the cache: sign in again.", kind="no_account", code="no_token"
            )
        if "access_token" not in result:
            raise _oauth_error(result, "Token refresh")
        return result["access_token"]


class _DelegatedTokenProvider(_TokenProvider):
    def __init__(self, oauth, email, scopes, token_store=None):
        super().__init__(oauth, scopes)
        self.email = email
        self.token_store = token_store
        # The stored cache this provider's tokens come from: what a save may replace.
        self._stored = oauth.loaded_blob

    def _accounts(self):
        accounts = self.oauth.app.get_accounts(username=self.email)
        if not accounts:
            # The sign-in name (UPN) often differs from the mailbox address: a cache that holds
            # one user's sign-in alone (one cache per Odoo user) needs no name to find it.
            everyone = self.oauth.app.get_accounts()
            accounts = everyone if len(everyone) == 1 else []
        return accounts

    def _acquire(self, force_refresh):
        accounts = self._accounts()
        if not accounts:
            raise AuthenticationError(
                f"No stored sign-in for {self.email}: sign in again.", kind="no_account", code="no_account"
            )
        return self.oauth.app.acquire_token_silent_with_error(
            self.scopes, account=accounts[0], force_refresh=force_refresh
        )

    def _fresh_access_token(self):
        """An access token of the cache that msal would hand out without asking Microsoft, or None."""
        accounts = self._accounts()
        if not accounts:
            return None
        now = time.time()
        query = {"home_account_id": accounts[0]["home_account_id"]}
        for entry in self.oauth.cache.search(msal.TokenCache.CredentialType.ACCESS_TOKEN, query=query):
            expires_in = int(entry.get("expires_on", 0)) - now
            refresh_due = entry.get("refresh_on") and int(entry["refresh_on"]) <= now
            if expires_in > ACCESS_TOKEN_MARGIN and not refresh_due:
                return entry["secret"]
        return None

    def __call__(self, force_refresh=False):
        if self.token_store is None:
            return super().__call__(force_refresh)
        if not force_refresh:
            token = self._fresh_access_token()
            if token:
                return token
        with self.token_store.refreshing() as newest:
            if newest and newest != self._stored:
                # Another worker refreshed meanwhile: its refresh token is the one still valid.
                self._use(newest)
                token = None if force_refresh else self._fresh_access_token()
                if token:
                    return token
            try:
                return super().__call__(force_refresh)
            except AuthenticationError as error:
                newest = self.token_store.newest() if error.kind == "invalid_grant" else None
                if not newest or newest == self._stored:
                    raise
                # "Already redeemed" by a refresh that raced this one (outside the lock): use the newest.
                _logger.info("Refresh token of %s already redeemed elsewhere: retrying with the newest one",
                             self.email)
                self._use(newest)
                return super().__call__(force_refresh)
            finally:
                self._save()

    def _use(self, cache_blob):
        self.oauth.load(cache_blob)
        self._stored = cache_blob

    def _save(self):
        """Store a rotated cache now, before anything else can fail (a crash, a rollback)."""
        if not self.oauth.cache_changed:
            return
        blob = self.oauth.cache_blob  # serializing resets cache_changed
        if self.token_store.save(blob, replaces=self._stored):
            self._stored = blob
        else:
            # Not stored (the sign-in was replaced meanwhile, or the store is unavailable): the
            # caller still sees it as changed and decides.
            self.oauth.cache.has_state_changed = True


class _AppTokenProvider(_TokenProvider):
    def _acquire(self, force_refresh):
        if force_refresh:
            # msal serves app tokens from its cache until expiry; drop them to get a fresh one.
            cache = self.oauth.cache
            for token in list(cache.search(msal.TokenCache.CredentialType.ACCESS_TOKEN)):
                if not token.get("home_account_id"):  # app tokens belong to no user
                    cache.remove_at(token)
        return self.oauth.app.acquire_token_for_client(self.scopes)
