import contextlib
import hashlib
import logging
import os
import secrets
import time
import warnings
from urllib.parse import urlsplit

from odoo import api, fields, models, tools
from odoo.exceptions import UserError
from odoo.tools import consteq, email_normalize, hmac

from ..services import (
    AuthenticationError,
    ConnectionProblem,
    ExchangeError,
    FolderNotFound,
    ThrottledError,
    TimeBudgetExceeded,
)
from ..services.auth import GraphOAuth
from ..services.ews import EwsBackend
from ..services.ews_url import InvalidEwsUrl, parse_ews_url
from ..services.graph import GraphBackend
from .exchange_mailbox import SYNC_STATE_FIELDS, StoredTokenCache
from .res_config_settings import DEFAULT_AUTHORITY_HOST, DEFAULT_GRAPH_URL

_logger = logging.getLogger(__name__)

OAUTH_STATE_SCOPE = "exchange_connector_oauth"
OAUTH_CALLBACK_PATH = "/exchange_connector/oauth/callback"
CONNECT_TOKEN_SCOPE = "exchange_connector_connect"
CONNECT_TOKEN_LIFETIME = 600  # seconds between a click on Connect and the redirect it causes
CA_FOLDER = os.path.join("exchange_connector", "ca")
# A CA file younger than this is kept even when no user names it: a worker may be about to open it.
CA_FILE_GRACE_SECONDS = 60

# Refusals of the user's own credentials: only these count towards the lockout, which exists
# so that retries never get the account locked by Exchange.
USER_CREDENTIAL_FAILURES = ("password", "invalid_grant", "no_account", "token")


class ExchangeMailbox(models.Model):
    """The connection to a user's mailbox: the Microsoft sign-in, the backend seam, the lockout, the
    connection check and the sentences its errors become.

    The user's settings (address, EWS URL, credentials, CA certificates, the stored sign-in) stay
    fields of ``res.users``, read here as superuser; who may connect, test or disconnect is
    checked by the buttons on ``res.users`` before they call these methods, which run as
    superuser on the mailbox (``res.users._exchange_mailbox()``).
    """

    _inherit = "exchange.mailbox"

    # -- the Microsoft sign-in (Office 365) -------------------------------------

    @api.model
    def _exchange_microsoft_verify(self):
        """What requests verifies Microsoft's certificates with: the configured CA bundle path, or True."""
        return self.env["ir.config_parameter"].sudo().get_param("exchange_connector.ca_bundle_path") or True

    @api.model
    def _exchange_azure_app_credentials(self):
        """The Azure app's client id and secret: the connector's own, or those of Odoo's Outlook Calendar.

        One app registration may serve both (with both redirect URIs): an administrator who set up
        ``microsoft_calendar`` need not enter the same credentials twice.
        """
        config = self.env["ir.config_parameter"].sudo()
        client_id = config.get_param("exchange_connector.client_id")
        if client_id:
            return client_id, config.get_param("exchange_connector.client_secret")
        return (config.get_param("microsoft_calendar_client_id"),
                config.get_param("microsoft_calendar_client_secret"))

    @api.model
    def _exchange_graph_oauth(self, cache_blob=None):
        """The company's Azure app (from Settings) as a GraphOAuth over ``cache_blob``.

        Contacts the identity platform at once (OpenID discovery): may raise
        ConnectionProblem / ExchangeError; UserError when Office 365 is not set up.
        """
        config = self.env["ir.config_parameter"].sudo()
        client_id, client_secret = self._exchange_azure_app_credentials()
        if not (client_id and client_secret):
            raise UserError(self.env._(
                "Office 365 is not set up yet: an administrator must enter the Azure client ID and secret "
                "in Settings > Office 365 / Exchange."))
        authority_host = config.get_param("exchange_connector.authority_host") or DEFAULT_AUTHORITY_HOST
        tenant_id = config.get_param("exchange_connector.tenant_id") or "organizations"
        return GraphOAuth(
            client_id, client_secret, f"{authority_host.rstrip('/')}/{tenant_id}",
            cache_blob=cache_blob, verify=self._exchange_microsoft_verify())

    def _exchange_oauth_signature(self, nonce):
        self.ensure_one()
        return hmac(self.env(su=True), OAUTH_STATE_SCOPE, (self.user_id.id, nonce))

    def _exchange_oauth_state(self):
        """A fresh OAuth state for this mailbox's user: "<user id>.<nonce>.<HMAC of both>"."""
        self.ensure_one()
        nonce = secrets.token_urlsafe(16)
        return f"{self.user_id.id}.{nonce}.{self._exchange_oauth_signature(nonce)}"

    def _exchange_oauth_state_is_valid(self, state):
        """True only for a state this database signed for this very user."""
        self.ensure_one()
        parts = (state or "").split(".")
        if len(parts) != 3 or parts[0] != str(self.user_id.id):
            return False
        return consteq(parts[2], self._exchange_oauth_signature(parts[1]))

    def _exchange_oauth_start(self):
        """Start the sign-in (authorization code + PKCE); returns msal's flow, to keep in the HTTP session.

        Only for the mailbox's own user, in their browser: ``res.users._exchange_oauth_start``
        checks that before it calls this.
        """
        self.ensure_one()
        user = self.user_id.sudo()
        oauth = self._exchange_graph_oauth()
        # The answer must come back as a GET: Odoo's session cookie has no SameSite attribute, so
        # browsers treat it as Lax and would not send it with Microsoft's cross-site form_post (msal
        # advises form_post; the code in the URL is bound to the PKCE verifier kept server-side).
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="response_mode='form_post' is recommended")
            return oauth.start_sign_in(
                user.get_base_url() + OAUTH_CALLBACK_PATH, login_hint=user.exchange_email or None,
                state=self._exchange_oauth_state(), response_mode="query")

    def _exchange_oauth_finish(self, flow, auth_response):
        """Redeem the answer the browser brought back and store the user's token cache.

        Raises ExchangeError (see ``_exchange_describe_error``) or UserError.
        """
        self.ensure_one()
        user = self.user_id.sudo()
        signed_in = self._exchange_graph_oauth().finish_sign_in(flow, auth_response)
        expected = email_normalize(user.exchange_email)
        if expected and email_normalize(signed_in.email) != expected \
                and email_normalize(self._exchange_signed_in_mailbox(signed_in)) != expected:
            raise UserError(self.env._(
                "You signed in to Microsoft as %(signed_in)s, but the mailbox set for %(user)s is "
                "%(mailbox)s: click Connect again and sign in as %(mailbox)s, or change the mailbox "
                "address first.",
                signed_in=signed_in.email, user=user.name, mailbox=user.exchange_email))
        # exchange_email is a credential field: writing it lifts a lockout, and storing the sign-in
        # connects the mailbox (see res.users.write()).
        user.write({
            "exchange_token_cache": signed_in.cache_blob,
            "exchange_email": user.exchange_email or signed_in.email,
        })
        _logger.info("User %s connected the Office 365 mailbox %s", user.login, signed_in.email)
        return signed_in

    def _exchange_signed_in_mailbox(self, signed_in):
        """The mailbox address of a fresh sign-in, as Graph tells it.

        The sign-in name (UPN, e.g. jdoe@contoso.onmicrosoft.com) is often not the mailbox
        address (john.doe@contoso.com): only Graph's /me says which mailbox it opens.
        """
        backend, _provider = self._exchange_new_graph_backend(None, cache_blob=signed_in.cache_blob)
        try:
            return backend.whoami().email
        finally:
            backend.close()

    def _exchange_connect_token(self, issued=None):
        """A short-lived token bound to this mailbox's user that the Connect URL carries.

        A plain link on another site cannot start a sign-in for a logged-in user (which Microsoft's
        single sign-on might complete unnoticed): it would need this database's HMAC.
        """
        self.ensure_one()
        issued = int(issued if issued is not None else time.time())
        return f"{issued}.{hmac(self.env(su=True), CONNECT_TOKEN_SCOPE, (self.user_id.id, issued))}"

    def _exchange_connect_token_is_valid(self, token):
        self.ensure_one()
        issued, _dot, _signature = (token or "").partition(".")
        if not issued.isdigit() or not 0 <= time.time() - int(issued) <= CONNECT_TOKEN_LIFETIME:
            return False
        return consteq(token, self._exchange_connect_token(int(issued)))

    # -- Test connection and the transfer folders ---------------------------------

    def _exchange_transfer_folder_paths(self):
        self.ensure_one()
        user = self.user_id
        if not user.exchange_sync_mails:
            return []
        names = [user.exchange_transfer_folder_in, user.exchange_transfer_folder_out]
        return [f"Inbox/{name.strip()}" for name in names if name and name.strip()]

    def _exchange_check_connection(self):
        """Resolve the mailbox and look for the transfer folders, without raising.

        Returns ``{"ok": bool, "message": one sentence, "mailbox": address or None,
        "missing_folders": [paths]}``.
        """
        self.ensure_one()
        user = self.user_id.sudo()
        result = {"ok": False, "message": "", "mailbox": None, "missing_folders": []}
        if not user.exchange_account_type:
            result["message"] = self.env._(
                "No mailbox is set up: choose the mailbox type under Office 365 / Exchange first.")
            return result
        if user.exchange_account_type == "graph" and not user.exchange_token_cache:
            result["message"] = self._exchange_not_connected_sentence()
            return result
        try:
            with self._exchange_backend() as backend:
                result["mailbox"] = backend.whoami().email
                result["missing_folders"] = [path for path in self._exchange_transfer_folder_paths()
                                             if backend.find_folder(path) is None]
        except ExchangeError as exc:
            result["message"] = self._exchange_describe_error(exc)
            result["error_kind"] = self._exchange_error_kind(exc)
            return result
        except UserError as exc:
            # The seam refuses a mailbox that is not set up, not connected or locked out.
            result["message"] = exc.args[0]
            return result
        missing = result["missing_folders"]
        if missing:
            folders = self.env._(" and ").join(f"“{path}”" for path in missing)
            if len(missing) == 1:
                result["message"] = self.env._(
                    "Connected to %(mailbox)s, but the folder %(folders)s is missing under the Inbox: "
                    "click Create transfer folders.", mailbox=result["mailbox"], folders=folders)
            else:
                result["message"] = self.env._(
                    "Connected to %(mailbox)s, but the folders %(folders)s are missing under the Inbox: "
                    "click Create transfer folders.", mailbox=result["mailbox"], folders=folders)
            return result
        result["ok"] = True
        if self._exchange_transfer_folder_paths():
            result["message"] = self.env._("Connected to %(mailbox)s; the transfer folders are in place.",
                                           mailbox=result["mailbox"])
        else:
            result["message"] = self.env._("Connected to %(mailbox)s.", mailbox=result["mailbox"])
        return result

    def _exchange_test_connection(self):
        """Test connection: :meth:`_exchange_check_connection`, with what it found kept for the tab."""
        self.ensure_one()
        check = self._exchange_check_connection()
        if not check["mailbox"]:
            # What the user reads now replaces an older error, whatever refused this test (the seam
            # records Microsoft's refusals itself, with their code).
            if self.last_error != check["message"]:
                self.write({"last_error": check["message"], "last_error_code": False,
                            "last_error_kind": check.get("error_kind", False)})
        elif self.transfer_folders_missing != bool(check["missing_folders"]):
            self.transfer_folders_missing = bool(check["missing_folders"])
        return check

    def _exchange_create_transfer_folders(self):
        """Create the missing transfer folders under the Inbox: ``(sentence, notification type)``."""
        self.ensure_one()
        paths = self._exchange_transfer_folder_paths()
        if not paths:
            return self.env._("Mail import is off for this mailbox: no transfer folder is needed."), "info"
        try:
            with self._exchange_backend() as backend:
                for path in paths:
                    backend.ensure_folder(path)
        except ExchangeError as exc:
            return self._exchange_describe_error(exc), "danger"
        except UserError as exc:
            return exc.args[0], "danger"
        self.transfer_folders_missing = False
        return self.env._(
            "The transfer folders %(folders)s are in place.",
            folders=self.env._(" and ").join(f"“{path}”" for path in paths)), "success"

    # -- what errors mean to users ------------------------------------------------

    def _exchange_not_connected_sentence(self):
        return self.env._(
            "This Office 365 mailbox is not connected: click Connect and sign in with Microsoft.")

    def _exchange_server_host(self):
        """The host name a connection problem is about, to name it in the message."""
        self.ensure_one()
        user = self.user_id.sudo()
        if user.exchange_account_type == "ews":
            url = user.exchange_ews_url or ""
        else:
            url = (self.env["ir.config_parameter"].sudo().get_param("exchange_connector.authority_host")
                   or DEFAULT_AUTHORITY_HOST)
        return urlsplit(url).hostname or url

    def _exchange_describe_error(self, error):
        """The one sentence telling the reader what is wrong and what to do, for any error of services/.

        The single place where error kinds become words: Test connection, the sign-in callback,
        sync runs and the notices all use it.
        """
        self.ensure_one()
        user = self.user_id
        if isinstance(error, AuthenticationError):
            where = self._exchange_where_to_fix()
            if error.kind == "password":
                if not self._exchange_notice_reader_is_owner():
                    return self.env._(
                        "Exchange refused the user name or password of %(user)s: they must correct "
                        "them%(where)s, or an administrator enters the right ones on their user form.",
                        user=user.name, where=where)
                return self.env._(
                    "Exchange refused the user name or password: correct them%(where)s.", where=where)
            if error.kind in ("invalid_grant", "no_account", "token"):
                if not self._exchange_notice_reader_is_owner():
                    return self.env._(
                        "Microsoft no longer accepts the sign-in of this mailbox (it expired or was "
                        "revoked): only %(user)s can click Connect%(where)s and sign in again.",
                        user=user.name, where=where)
                return self.env._(
                    "Microsoft no longer accepts the sign-in of this mailbox (it expired or was revoked): "
                    "click Connect and sign in again%(where)s.", where=where)
            if error.kind == "consent":
                return self.env._(
                    "Microsoft refused access because the app lacks consent for this mailbox: ask your "
                    "Microsoft 365 administrator to grant consent, then click Connect again.")
            if error.kind == "client":
                return self.env._(
                    "Microsoft rejected the application ID or secret: ask your Odoo administrator to check "
                    "the Azure application in Settings.")
            if error.kind == "state":
                return self.env._(
                    "The Microsoft sign-in answer does not belong to this sign-in: click Connect again.")
            if error.kind == "auth_method":
                return self.env._(
                    "%(host)s does not offer NTLM sign-in: choose Basic authentication with the https:// "
                    "address of the server, or ask your Exchange administrator to enable NTLM for EWS.",
                    host=self._exchange_server_host())
        if isinstance(error, ConnectionProblem):
            host = self._exchange_server_host()
            if user.exchange_account_type == "graph" and error.kind in ("dns", "refused", "tls"):
                # Microsoft's address and the trust in it are the company's settings: nothing for
                # the mailbox's user to change, nothing to reconnect.
                if error.kind == "tls":
                    return self.env._(
                        "The Odoo server does not trust the certificate of %(host)s: an administrator sets "
                        "the CA bundle for Microsoft in Settings → Office 365 / Exchange. Nothing to change "
                        "in the mailbox settings.", host=host)
                return self.env._(
                    "The Odoo server could not reach %(host)s: the next sync tries again. If it lasts, an "
                    "administrator checks the server's network access and the Microsoft addresses in "
                    "Settings → Office 365 / Exchange. Nothing to change in the mailbox settings.", host=host)
            where = self._exchange_where_to_fix()
            for_owner = self._exchange_notice_reader_is_owner()
            if error.kind == "dns":
                return self.env._(
                    "The server name %(host)s is unknown: check the server address for typing errors.",
                    host=host)
            if error.kind == "tls":
                if not for_owner:
                    return self.env._(
                        "The certificate of %(host)s is not trusted for the mailbox of %(user)s: they must "
                        "paste their company's CA certificate under Trusted CA certificates%(where)s, or an "
                        "administrator pastes it on their user form.", host=host, user=user.name, where=where)
                return self.env._(
                    "The certificate of %(host)s is not trusted: paste your company's CA certificate under "
                    "Trusted CA certificates%(where)s, then click Test connection.", host=host, where=where)
            if error.kind == "unavailable":
                return self.env._(
                    "%(host)s answered that Exchange is unavailable (HTTP 503): it is overloaded or under "
                    "maintenance. Try again later; if it lasts, tell your Exchange administrator.", host=host)
            if error.kind == "timeout":
                return self.env._(
                    "%(host)s did not answer in time: try again later, or check that the Odoo server can "
                    "reach it.", host=host)
            if not for_owner:
                return self.env._(
                    "%(host)s, the Exchange server of %(user)s, could not be reached: they must check the "
                    "EWS URL%(where)s, or an administrator corrects it on their user form. If it is right, "
                    "the server is down or the Odoo server cannot reach it.", host=host, user=user.name,
                    where=where)
            return self.env._(
                "%(host)s could not be reached: check the EWS URL%(where)s. If it is right, the server is "
                "down or the Odoo server cannot reach it: tell your Exchange administrator.",
                host=host, where=where)
        if isinstance(error, ThrottledError):
            return self.env._(
                "Microsoft is throttling this mailbox at the moment: try again in a few minutes.")
        if isinstance(error, TimeBudgetExceeded):
            return self.env._("The mailbox answered too slowly to finish in time: try again later.")
        if isinstance(error, FolderNotFound):
            return self.env._(
                "A folder the connector uses is missing in the mailbox: click Test connection, then Create "
                "transfer folders if it offers to (%(details)s).", details=error.message)
        return self.env._("Microsoft refused the request (%(code)s): %(message)s",
                          code=error.code or "error", message=error.message)

    # -- connection state and lockout ---------------------------------------------

    def _exchange_mark_connected(self, connected_email=None):
        """Record a working connection (after the sign-in or a successful test): syncing starts now."""
        self.ensure_one()
        if connected_email and self.connected_email and \
                connected_email.lower() != self.connected_email.lower():
            # Another mailbox: the old states mean nothing there.
            self.write(dict.fromkeys(SYNC_STATE_FIELDS, False))
        self.write({
            "state": "connected", "connected_email": connected_email or self.user_id.sudo().exchange_email,
            "auth_failures": 0, "last_error": False, "last_error_code": False,
            "next_sync": fields.Datetime.now(),
        })
        return self

    def _exchange_mark_disconnected(self):
        """Stop syncing this mailbox and forget its sync states (the records imported stay)."""
        self.ensure_one()
        self.write(dict.fromkeys(SYNC_STATE_FIELDS, False) | {
            "state": "not_connected", "connected_email": False, "auth_failures": 0,
            "sync_requested": False, "next_sync": False,
        })
        return self

    def _exchange_has_credentials(self):
        """Whether the connector holds what it needs to open the mailbox (it may still be refused)."""
        self.ensure_one()
        user = self.user_id.sudo()
        if user.exchange_account_type == "ews":
            return bool(user.exchange_ews_url)
        return user.exchange_account_type == "graph" and bool(user.exchange_token_cache)

    def _exchange_reset_lockout(self):
        """Forget the failed sign-ins: the connector uses the (new) credentials again at the next run.

        With the caller's rights on the mailboxes (an administrator's button, or superuser).
        """
        self.filtered("auth_failures").auth_failures = 0
        for mailbox in self.filtered(lambda mailbox: mailbox.state == "auth_failed"):
            # An Office 365 mailbox without a stored sign-in has nothing to try until Connect.
            usable = mailbox._exchange_has_credentials()
            mailbox.write({
                "state": "connected" if usable else "not_connected",
                "next_sync": fields.Datetime.now() if usable else False,
            })

    # -- THE seam to Microsoft ----------------------------------------------------

    @contextlib.contextmanager
    def _exchange_backend(self, budget=None):
        """Yield this mailbox's backend (Graph or EWS) — the only way models reach Microsoft.

        ::

            with mailbox._exchange_backend(budget=RunBudget(60)) as backend:
                backend.whoami()

        A rotated OAuth token cache is committed the moment Microsoft hands it out (see
        :class:`StoredTokenCache`; saved on exit, in the current transaction, only for a user not
        committed yet). On exit the backend is closed and the outcome recorded on the mailbox,
        in the current transaction: success resets the failure counter; an
        :class:`AuthenticationError` leaving the block counts as a failed sign-in, and at
        ``exchange_connector.max_auth_failures`` (3) the mailbox is locked (state
        ``auth_failed``) and the user notified. A locked mailbox gets no backend at all
        (UserError) until the user reconnects or changes the credentials, so that scheduled
        runs never get the account locked out by Exchange; an Exchange account that refused too
        many passwords lately gets none either (``exchange.sign.in.failure``), whatever was
        written meanwhile. Let AuthenticationError propagate out of the block; callers that turn
        errors into a UserError roll the counting back. Runs as superuser: the callers checked
        who may use the mailbox.
        """
        self.ensure_one()
        mailbox = self.sudo()
        user = mailbox.user_id
        if mailbox.state == "auth_failed":
            raise UserError(mailbox._exchange_lockout_sentence())
        failures = self.env["exchange.sign.in.failure"]
        account = mailbox._exchange_password_account()
        actor_uid = failures._actor_uid(user)
        if account:
            # Whatever was written meanwhile (a new password lifts the lockout): no endless guessing.
            failures._check_allowed(account, actor_uid)
        backend = provider = None
        sign_in_used = user.exchange_token_cache
        try:
            backend, provider = mailbox._exchange_new_backend(budget)
            yield backend
        except AuthenticationError as error:
            if error.kind == "password" and account:
                failures._record(account, actor_uid)
            if error.kind in USER_CREDENTIAL_FAILURES:
                mailbox._exchange_record_auth_failure(error)
            else:
                # A wrong or expired client secret, or missing consent, is the company's Azure
                # app, not this user's credentials: no lockout, which would hit every user.
                mailbox._exchange_record_error(error)
            raise
        except TimeBudgetExceeded:
            raise
        except ExchangeError as error:
            mailbox._exchange_record_error(error)
            raise
        else:
            mailbox._exchange_record_success()
        finally:
            if provider is not None and provider.cache_changed:
                # Save the rotated refresh token unless the user disconnected or signed in again
                # meanwhile (syncs commit page by page, so this transaction sees that).
                user.invalidate_recordset(["exchange_token_cache"])
                if user.exchange_token_cache == sign_in_used:
                    user.with_context(exchange_token_rotation=True).exchange_token_cache = provider.cache_blob
            if backend is not None:
                backend.close()

    def _exchange_password_account(self):
        """The key of the Exchange account the user's password is tried on (None for Office 365)."""
        self.ensure_one()
        user = self.user_id.sudo()
        if user.exchange_account_type != "ews" or not user.exchange_ews_url:
            return None
        try:
            host = parse_ews_url(user.exchange_ews_url).host
        except InvalidEwsUrl:
            host = user.exchange_ews_url
        return self.env["exchange.sign.in.failure"]._account_key(
            host, user.exchange_ews_username or user.exchange_email)

    def _exchange_new_backend(self, budget=None):
        """Build ``(backend, token_provider or None)`` from the user's settings and the company's."""
        self.ensure_one()
        user = self.user_id.sudo()
        if not user.exchange_email:
            raise UserError(self.env._(
                "%(user)s has no mailbox address: enter it in the preferences, tab Office 365 / Exchange.",
                user=user.name))
        if user.exchange_account_type == "graph":
            return self._exchange_new_graph_backend(budget)
        if user.exchange_account_type == "ews":
            if not user.exchange_ews_url:
                raise UserError(self.env._(
                    "%(user)s has no EWS URL: enter it in the preferences, tab Office 365 / Exchange.",
                    user=user.name))
            backend = EwsBackend(
                user.exchange_email, user.exchange_ews_username or user.exchange_email,
                user.exchange_ews_password or "", user.exchange_ews_url,
                auth_type=user.exchange_ews_auth or "ntlm", verify=self._exchange_ews_verify(), budget=budget)
            return backend, None
        raise UserError(self.env._(
            "Choose the mailbox type of %(user)s (Office 365 or Exchange on-premises) in the preferences.",
            user=user.name))

    def _exchange_new_graph_backend(self, budget, cache_blob=None):
        self.ensure_one()
        user = self.user_id.sudo()
        # The Azure app and CA settings are read in one place, next to the sign-in that uses them too.
        oauth = self._exchange_graph_oauth(cache_blob or user.exchange_token_cache or None)
        # The stored sign-in is shared with every worker: its refreshes go through the store.
        store = None if cache_blob else StoredTokenCache(self.env.registry, user.id)
        provider = oauth.delegated_token_provider(user.exchange_email, token_store=store)
        graph_url = (self.env["ir.config_parameter"].sudo().get_param("exchange_connector.graph_url")
                     or DEFAULT_GRAPH_URL)
        backend = GraphBackend(user.exchange_email, provider, graph_url=graph_url,
                               verify=self._exchange_microsoft_verify(), budget=budget)
        return backend, provider

    # -- the users' own CA certificates (on-premises servers) ---------------------

    def _exchange_ews_verify(self):
        """requests' ``verify`` for the EWS server: False, the user's own CA certificates, or the system's."""
        self.ensure_one()
        user = self.user_id.sudo()
        if not user.exchange_verify_tls:
            return False
        data = self._exchange_ca_file_content(user.exchange_ca_bundle)
        if not data:
            return True
        # requests wants a file; one per distinct bundle, named by content, written once.
        folder = self._exchange_ca_folder()
        path = os.path.join(folder, hashlib.sha256(data).hexdigest() + ".pem")
        if not os.path.exists(path):
            os.makedirs(folder, exist_ok=True)
            temporary = f"{path}.{os.getpid()}.tmp"
            with open(temporary, "wb") as handle:
                handle.write(data)
            os.replace(temporary, path)
        return path

    @api.model
    def _exchange_ca_folder(self):
        """Where this database's CA files are: in its filestore, so that it cleans only its own."""
        return os.path.join(tools.config.filestore(self.env.cr.dbname), CA_FOLDER)

    @staticmethod
    def _exchange_ca_file_content(pem):
        pem = (pem or "").strip()
        return (pem + "\n").encode() if pem else b""

    @api.model
    def _exchange_remove_unused_ca_files(self):
        """Delete the CA files no user's bundle names any more (one just written is left a minute).

        Safe at any time: a missing file is written again when its bundle is next used.
        """
        folder = self._exchange_ca_folder()
        if not os.path.isdir(folder):
            return
        users = self.env["res.users"].sudo().with_context(active_test=False).search(
            [("exchange_ca_bundle", "!=", False)])
        used = {hashlib.sha256(self._exchange_ca_file_content(pem)).hexdigest() + ".pem"
                for pem in users.mapped("exchange_ca_bundle")}
        now = time.time()
        for name in os.listdir(folder):
            path = os.path.join(folder, name)
            if name in used:
                continue
            with contextlib.suppress(FileNotFoundError):
                if now - os.path.getmtime(path) > CA_FILE_GRACE_SECONDS:
                    os.remove(path)

    @api.autovacuum
    def _gc_exchange_ca_files(self):
        self._exchange_remove_unused_ca_files()
