import contextlib
import hashlib
import logging
import os
import secrets
import time
import warnings
from urllib.parse import urlsplit

from odoo import api, fields, models, tools
from odoo.exceptions import AccessError, UserError, ValidationError
from odoo.tools import consteq, email_normalize, hmac

from ..services import (
    AuthenticationError,
    ConnectionProblem,
    ExchangeError,
    ThrottledError,
    TimeBudgetExceeded,
)
from ..services.auth import GraphOAuth
from ..services.ews import EwsBackend
from ..services.graph import GraphBackend
from .exchange_mailbox import MAILBOX_STATES, SYNC_STATE_FIELDS
from .res_config_settings import (
    DEFAULT_AUTHORITY_HOST,
    DEFAULT_GRAPH_URL,
    DEFAULT_MIN_SYNC_INTERVAL,
    DEFAULT_SYNC_INTERVAL,
)

_logger = logging.getLogger(__name__)

OAUTH_STATE_SCOPE = "exchange_connector_oauth"
OAUTH_CALLBACK_PATH = "/exchange_connector/oauth/callback"
CONNECT_TOKEN_SCOPE = "exchange_connector_connect"
CONNECT_TOKEN_LIFETIME = 600  # seconds between a click on Connect and the redirect it causes
MAX_EVENT_WINDOW_DAYS = 3650
# Which mailbox a user's settings point at: changing one of these starts over with another mailbox.
MAILBOX_IDENTITY_FIELDS = {"exchange_account_type", "exchange_email", "exchange_ews_url"}
# Writing any of these means the user fixed their credentials: the lockout is lifted.
EXCHANGE_CREDENTIAL_FIELDS = {
    "exchange_account_type", "exchange_email", "exchange_ews_url", "exchange_ews_username",
    "exchange_ews_password", "exchange_ews_auth", "exchange_verify_tls", "exchange_ca_bundle",
}

# Refusals of the user's own credentials: only these count towards the lockout, which exists
# so that retries never get the account locked by Exchange.
USER_CREDENTIAL_FAILURES = ("password", "invalid_grant", "no_account", "token")

# The mailbox's connection state, which its user may read too.
EXCHANGE_STATUS_FIELDS = ["exchange_state", "exchange_connected_email", "exchange_last_error"]
EXCHANGE_STATUS_FIELDS += ["exchange_outlook_calendar_syncs"]

# Settings a user may read and change on their own record (preferences), although
# res.users is otherwise writable by administrators only. Secrets that only server code
# needs (the OAuth token cache) are deliberately not in this list.
EXCHANGE_SELF_FIELDS = [
    "exchange_account_type",
    "exchange_email",
    "exchange_ews_url",
    "exchange_ews_username",
    "exchange_ews_password",
    "exchange_ews_auth",
    "exchange_verify_tls",
    "exchange_ca_bundle",
    "exchange_transfer_folder_in",
    "exchange_transfer_folder_out",
    "exchange_sync_interval",
    "exchange_event_days_back",
    "exchange_event_days_ahead",
    "exchange_delete_after_import",
    "exchange_delete_contact_on_unsubscribe",
    "exchange_sync_mails",
    "exchange_sync_events",
    "exchange_sync_contacts",
    "exchange_event_private",
]


class ResUsers(models.Model):
    _inherit = "res.users"

    exchange_account_type = fields.Selection(
        [("graph", "Office 365 (Microsoft Graph)"), ("ews", "Exchange on-premises (EWS)")],
        string="Mailbox type", copy=False,
        help="Office 365 mailboxes are reached through Microsoft Graph (EWS for Exchange Online was "
             "retired on 1 October 2026); on-premises Exchange 2010 SP2 and later through EWS.")
    exchange_email = fields.Char("Mailbox address", copy=False)
    exchange_ews_url = fields.Char(
        "EWS URL", copy=False, help="For example https://mail.example.com/EWS/Exchange.asmx")
    exchange_ews_username = fields.Char(
        "EWS user name", copy=False, help="DOMAIN\\user or the user principal name.")
    exchange_ews_password = fields.Char("EWS password", copy=False, groups="base.group_system")
    exchange_ews_auth = fields.Selection(
        [("ntlm", "NTLM"), ("basic", "Basic")], string="EWS authentication", default="ntlm")
    exchange_verify_tls = fields.Boolean(
        "Verify TLS certificates", default=True,
        help="Switch off only for a test server: the password would be sent to anyone in between.")
    exchange_ca_bundle = fields.Text(
        "Trusted CA certificates (PEM)",
        help="On-premises servers often use an in-house certificate authority: paste its "
             "certificate(s) here to trust it for this mailbox.")
    exchange_transfer_folder_in = fields.Char(
        "Incoming transfer folder", default="Transfer In",
        help="Folder under the Inbox from which received mails are imported.")
    exchange_transfer_folder_out = fields.Char(
        "Outgoing transfer folder", default="Transfer Out",
        help="Folder under the Inbox from which sent mails are imported.")
    exchange_sync_interval = fields.Integer(
        "Sync interval (minutes)", default=lambda self: self._default_exchange_sync_interval())
    exchange_event_days_back = fields.Integer(
        "Import events from (days back)", default=30)
    exchange_event_days_ahead = fields.Integer(
        "Import events until (days ahead)", default=90)
    exchange_delete_after_import = fields.Boolean(
        "Delete mails from the transfer folders after import")
    exchange_delete_contact_on_unsubscribe = fields.Boolean(
        "Delete the Outlook contact when I unsubscribe")
    exchange_sync_mails = fields.Boolean("Import mails", default=True)
    exchange_sync_events = fields.Boolean("Import events", default=True)
    exchange_sync_contacts = fields.Boolean("Push subscribed contacts", default=True)
    exchange_event_private = fields.Selection(
        [("import", "Import"), ("busy", "Import as Busy"), ("skip", "Skip")],
        "Private meetings", default="import", required=True,
        help="What becomes of the meetings marked private in your Outlook calendar: imported as private "
             "Odoo events, imported as a private \"Busy\" slot without subject or details, or left out.")
    # msal's serialized token cache (refresh token included): server code reads it with sudo().
    exchange_token_cache = fields.Text(copy=False, groups="base.group_system")
    # The mailbox's connection state, kept on exchange.mailbox, shown on the user.
    exchange_state = fields.Selection(
        MAILBOX_STATES, string="Mailbox connection", compute="_compute_exchange_status")
    exchange_connected_email = fields.Char("Connected mailbox", compute="_compute_exchange_status")
    exchange_last_error = fields.Text("Last sync error", compute="_compute_exchange_status")
    exchange_outlook_calendar_syncs = fields.Boolean(
        "Odoo's Outlook Calendar syncs", compute="_compute_exchange_outlook_calendar_syncs")

    @property
    def SELF_READABLE_FIELDS(self):
        return super().SELF_READABLE_FIELDS + EXCHANGE_SELF_FIELDS + EXCHANGE_STATUS_FIELDS

    @property
    def SELF_WRITEABLE_FIELDS(self):
        return super().SELF_WRITEABLE_FIELDS + EXCHANGE_SELF_FIELDS

    @api.model
    def _exchange_param_int(self, key, default):
        value = self.env["ir.config_parameter"].sudo().get_param(f"exchange_connector.{key}")
        try:
            return int(value) if value else default
        except ValueError:
            return default

    def _default_exchange_sync_interval(self):
        return self._exchange_param_int("default_sync_interval", DEFAULT_SYNC_INTERVAL)

    @api.constrains("exchange_sync_interval")
    def _check_exchange_sync_interval(self):
        minimum = self._exchange_param_int("min_sync_interval", DEFAULT_MIN_SYNC_INTERVAL)
        for user in self:
            if user.exchange_sync_interval < minimum:
                raise ValidationError(self.env._(
                    "The sync interval of %(user)s must be at least %(minimum)s minutes: your "
                    "administrator set this minimum to protect the server. Choose %(minimum)s or more.",
                    user=user.name, minimum=minimum,
                ))

    @api.constrains("exchange_event_days_back", "exchange_event_days_ahead")
    def _check_exchange_event_window(self):
        for user in self:
            for days in (user.exchange_event_days_back, user.exchange_event_days_ahead):
                if not 0 <= days <= MAX_EVENT_WINDOW_DAYS:
                    raise ValidationError(self.env._(
                        "The event window counts days back and days ahead: use 0 to %(maximum)s for both.",
                        maximum=MAX_EVENT_WINDOW_DAYS))

    @api.constrains("exchange_ews_url", "exchange_ews_auth")
    def _check_exchange_ews_url(self):
        # Test connection reports whether a host answers: without a limit, any user could use it
        # to probe the company network. Administrators name the Exchange servers users may enter.
        param = self.env["ir.config_parameter"].sudo().get_param("exchange_connector.ews_allowed_hosts")
        allowed = [host.strip().lower() for host in (param or "").split(",") if host.strip()]
        for user in self.filtered("exchange_ews_url"):
            parts = urlsplit(user.exchange_ews_url.strip())
            host = (parts.hostname or "").lower()
            if parts.scheme not in ("https", "http") or not host:
                raise ValidationError(self.env._(
                    "The EWS URL of %(user)s is not a web address: it looks like "
                    "https://mail.example.com/EWS/Exchange.asmx.", user=user.name))
            if parts.scheme == "http" and user.exchange_ews_auth == "basic":
                raise ValidationError(self.env._(
                    "Basic authentication would send the password of %(user)s readable over http: use the "
                    "https:// address of the server, or NTLM.", user=user.name))
            if allowed and not any(
                    host == pattern or (pattern.startswith("*.") and host.endswith(pattern[1:]))
                    for pattern in allowed):
                raise ValidationError(self.env._(
                    "%(host)s is not one of the Exchange servers your administrator allows (%(allowed)s): "
                    "ask them, or check the EWS URL.", host=host, allowed=", ".join(allowed)))

    @api.model_create_multi
    def create(self, vals_list):
        users = super().create(vals_list)
        for user in users.filtered("exchange_account_type"):
            user._exchange_mailbox()
        return users

    def _exchange_switches_mailbox(self, vals):
        """The users of ``self`` whose write of ``vals`` points them at another mailbox."""
        def normalized(field, value):
            if field == "exchange_email":
                return email_normalize(value) or value or False
            return value or False

        changed = [field for field in MAILBOX_IDENTITY_FIELDS if field in vals]
        if not changed:
            return self.browse()
        return self.filtered(lambda user: any(
            normalized(field, user[field]) != normalized(field, vals[field]) for field in changed))

    def write(self, vals):
        switched = self._exchange_switches_mailbox(vals)
        private_changed = self.filtered(lambda user: user.exchange_account_type and vals.get(
            "exchange_event_private", user.exchange_event_private) != user.exchange_event_private)
        res = super().write(vals)
        for user in private_changed - switched:
            user._exchange_mailbox()._exchange_restart_events()
        for user in switched:
            # Another mailbox (or protocol): the saved sync states and the connection belong to the
            # old one. The mailbox record is created here at the latest, not by a later request.
            user._exchange_mark_disconnected()
        # Storing a sign-in (Connect) starts syncing, forgetting it (Disconnect) stops it; the seam
        # saving a rotated refresh token changes nothing.
        if "exchange_token_cache" in vals and not self.env.context.get("exchange_token_rotation"):
            for user in self:
                if vals["exchange_token_cache"]:
                    user._exchange_mark_connected()
                else:
                    user._exchange_mark_disconnected()
        if EXCHANGE_CREDENTIAL_FIELDS.intersection(vals):
            # Whoever could write the credentials may also lift the lockout they caused.
            self.sudo()._exchange_reset_lockout()
        return res

    @api.depends_context("uid")
    def _compute_exchange_status(self):
        # Read as superuser, shown only to the user themself and administrators: the last error
        # names servers and mailboxes.
        is_admin = self.env.user.has_group("base.group_system")
        visible = self._origin if is_admin else self._origin & self.env.user
        mailboxes = self.env["exchange.mailbox"].sudo().search([("user_id", "in", visible.ids)])
        by_user = {mailbox.user_id.id: mailbox for mailbox in mailboxes}
        for user in self:
            mailbox = by_user.get(user._origin.id)
            user.exchange_state = mailbox.state if mailbox else "not_connected"
            user.exchange_connected_email = mailbox.connected_email if mailbox else False
            user.exchange_last_error = mailbox.last_error if mailbox else False

    # -- account linking: Connect / Disconnect / Test connection ------------

    def _exchange_check_can_manage(self):
        """Only the user themself or an administrator may connect, test or disconnect a mailbox."""
        for user in self:
            if user != self.env.user and not self.env.user.has_group("base.group_system"):
                raise AccessError(self.env._(
                    "Only %(user)s or an administrator can manage the mailbox of %(user)s.", user=user.name))

    @api.model
    def _exchange_microsoft_verify(self):
        """What requests verifies Microsoft's certificates with: the configured CA bundle path, or True."""
        return self.env["ir.config_parameter"].sudo().get_param("exchange_connector.ca_bundle_path") or True

    @api.model
    def _exchange_graph_oauth(self, cache_blob=None):
        """The company's Azure app (from Settings) as a GraphOAuth over ``cache_blob``.

        Contacts the identity platform at once (OpenID discovery): may raise
        ConnectionProblem / ExchangeError; UserError when Office 365 is not set up.
        """
        config = self.env["ir.config_parameter"].sudo()
        client_id = config.get_param("exchange_connector.client_id")
        client_secret = config.get_param("exchange_connector.client_secret")
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
        return hmac(self.env(su=True), OAUTH_STATE_SCOPE, (self.id, nonce))

    def _exchange_oauth_state(self):
        """A fresh OAuth state for this user: "<user id>.<nonce>.<HMAC of both>"."""
        self.ensure_one()
        nonce = secrets.token_urlsafe(16)
        return f"{self.id}.{nonce}.{self._exchange_oauth_signature(nonce)}"

    def _exchange_oauth_state_is_valid(self, state):
        """True only for a state this database signed for this very user."""
        self.ensure_one()
        parts = (state or "").split(".")
        if len(parts) != 3 or parts[0] != str(self.id):
            return False
        return consteq(parts[2], self._exchange_oauth_signature(parts[1]))

    def _exchange_oauth_start(self):
        """Start the sign-in (authorization code + PKCE); returns msal's flow, to keep in the HTTP session."""
        self.ensure_one()
        if self != self.env.user:
            raise AccessError(self.env._("Only %(user)s can connect their own mailbox.", user=self.name))
        oauth = self._exchange_graph_oauth()
        # The answer must come back as a GET: Odoo's session cookie has no SameSite attribute, so
        # browsers treat it as Lax and would not send it with Microsoft's cross-site form_post (msal
        # advises form_post; the code in the URL is bound to the PKCE verifier kept server-side).
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="response_mode='form_post' is recommended")
            return oauth.start_sign_in(
                self.get_base_url() + OAUTH_CALLBACK_PATH, login_hint=self.exchange_email or None,
                state=self._exchange_oauth_state(), response_mode="query")

    def _exchange_oauth_finish(self, flow, auth_response):
        """Redeem the answer the browser brought back and store the user's token cache.

        Raises ExchangeError (see ``_exchange_describe_error``) or UserError.
        """
        self.ensure_one()
        signed_in = self._exchange_graph_oauth().finish_sign_in(flow, auth_response)
        expected = email_normalize(self.exchange_email)
        if expected and email_normalize(signed_in.email) != expected \
                and email_normalize(self._exchange_signed_in_mailbox(signed_in)) != expected:
            raise UserError(self.env._(
                "You signed in to Microsoft as %(signed_in)s, but the mailbox set for %(user)s is "
                "%(mailbox)s: click Connect again and sign in as %(mailbox)s, or change the mailbox "
                "address first.",
                signed_in=signed_in.email, user=self.name, mailbox=self.exchange_email))
        # exchange_email is a credential field: writing it lifts a lockout (see write()).
        self.sudo().write({
            "exchange_token_cache": signed_in.cache_blob,
            "exchange_email": self.exchange_email or signed_in.email,
        })
        _logger.info("User %s connected the Office 365 mailbox %s", self.login, signed_in.email)
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

    def action_exchange_connect(self):
        """Connect button: send the browser to Microsoft's sign-in page, through the OAuth controller."""
        self.ensure_one()
        if self != self.env.user:
            raise UserError(self.env._(
                "Only %(user)s can connect their mailbox: the Microsoft sign-in happens in their own "
                "browser. Ask them to click Connect in their preferences.", user=self.name))
        if self.exchange_account_type != "graph":
            raise UserError(self.env._(
                "Connect applies to Office 365 mailboxes: choose that mailbox type first."))
        return {"type": "ir.actions.act_url", "target": "self",
                "url": f"/exchange_connector/oauth/start?token={self._exchange_connect_token()}"}

    def _exchange_connect_token(self, issued=None):
        """A short-lived token bound to this user that the Connect URL carries.

        A plain link on another site cannot start a sign-in for a logged-in user (which Microsoft's
        single sign-on might complete unnoticed): it would need this database's HMAC.
        """
        self.ensure_one()
        issued = int(issued if issued is not None else time.time())
        return f"{issued}.{hmac(self.env(su=True), CONNECT_TOKEN_SCOPE, (self.id, issued))}"

    def _exchange_connect_token_is_valid(self, token):
        self.ensure_one()
        issued, _dot, _signature = (token or "").partition(".")
        if not issued.isdigit() or not 0 <= time.time() - int(issued) <= CONNECT_TOKEN_LIFETIME:
            return False
        return consteq(token, self._exchange_connect_token(int(issued)))

    def action_exchange_disconnect(self):
        """Disconnect button: forget the Microsoft sign-in (the stored tokens) of these mailboxes."""
        self._exchange_check_can_manage()
        self.sudo().write({"exchange_token_cache": False})
        _logger.info("Office 365 mailbox of %s disconnected by %s", ", ".join(self.mapped("login")),
                     self.env.user.login)
        return True

    def _exchange_transfer_folder_paths(self):
        self.ensure_one()
        if not self.exchange_sync_mails:
            return []
        names = [self.exchange_transfer_folder_in, self.exchange_transfer_folder_out]
        return [f"Inbox/{name.strip()}" for name in names if name and name.strip()]

    def _exchange_check_connection(self):
        """Resolve the mailbox and look for the transfer folders, without raising.

        Returns ``{"ok": bool, "message": one sentence, "mailbox": address or None,
        "missing_folders": [paths]}``.
        """
        self.ensure_one()
        result = {"ok": False, "message": "", "mailbox": None, "missing_folders": []}
        if not self.exchange_account_type:
            result["message"] = self.env._(
                "No mailbox is set up: choose the mailbox type under Office 365 / Exchange first.")
            return result
        if self.exchange_account_type == "graph" and not self.sudo().exchange_token_cache:
            result["message"] = self._exchange_not_connected_sentence()
            return result
        try:
            with self.sudo()._exchange_backend() as backend:
                result["mailbox"] = backend.whoami().email
                result["missing_folders"] = [path for path in self._exchange_transfer_folder_paths()
                                             if backend.find_folder(path) is None]
        except ExchangeError as exc:
            result["message"] = self._exchange_describe_error(exc)
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

    def action_exchange_test_connection(self):
        """Test connection button: one notification saying that it works, or what is wrong."""
        self.ensure_one()
        self._exchange_check_can_manage()
        check = self._exchange_check_connection()
        return self._exchange_notification(check["message"], "success" if check["ok"] else "danger")

    def action_exchange_create_transfer_folders(self):
        """Create transfer folders button: create the missing folders under the Inbox."""
        self.ensure_one()
        self._exchange_check_can_manage()
        paths = self._exchange_transfer_folder_paths()
        if not paths:
            return self._exchange_notification(
                self.env._("Mail import is off for this mailbox: no transfer folder is needed."), "info")
        try:
            with self.sudo()._exchange_backend() as backend:
                for path in paths:
                    backend.ensure_folder(path)
        except ExchangeError as exc:
            return self._exchange_notification(self._exchange_describe_error(exc), "danger")
        except UserError as exc:
            return self._exchange_notification(exc.args[0], "danger")
        return self._exchange_notification(self.env._(
            "The transfer folders %(folders)s are in place.",
            folders=self.env._(" and ").join(f"“{path}”" for path in paths)), "success")

    def _exchange_notification(self, message, kind):
        return {
            "type": "ir.actions.client",
            "tag": "display_notification",
            "params": {
                "title": self.env._("Office 365 / Exchange"),
                "message": message,
                "type": kind,
                "sticky": kind == "danger",
            },
        }

    def _exchange_not_connected_sentence(self):
        return self.env._(
            "This Office 365 mailbox is not connected: click Connect and sign in with Microsoft.")

    def _exchange_server_host(self):
        """The host name a connection problem is about, to name it in the message."""
        self.ensure_one()
        if self.exchange_account_type == "ews":
            url = self.exchange_ews_url or ""
        else:
            url = (self.env["ir.config_parameter"].sudo().get_param("exchange_connector.authority_host")
                   or DEFAULT_AUTHORITY_HOST)
        return urlsplit(url).hostname or url

    def _exchange_describe_error(self, error):
        """The one sentence telling the user what is wrong and what to do, for any error of services/.

        The single place where error kinds become words: Test connection, the
        sign-in callback and sync runs all use it.
        """
        self.ensure_one()
        if isinstance(error, AuthenticationError):
            if error.kind == "password":
                return self.env._(
                    "Exchange refused the user name or password: correct them under "
                    "Office 365 / Exchange in the preferences.")
            if error.kind in ("invalid_grant", "no_account", "token"):
                return self.env._(
                    "Microsoft no longer accepts the sign-in of this mailbox (it expired or was revoked): "
                    "click Connect and sign in again.")
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
        if isinstance(error, ConnectionProblem):
            host = self._exchange_server_host()
            if error.kind == "dns":
                return self.env._(
                    "The server name %(host)s is unknown: check the server address for typing errors.",
                    host=host)
            if error.kind == "tls":
                return self.env._(
                    "The certificate of %(host)s is not trusted: paste your company's CA certificate under "
                    "Trusted CA certificates (for Office 365, ask your administrator to set the CA bundle "
                    "in Settings).", host=host)
            if error.kind == "timeout":
                return self.env._(
                    "%(host)s did not answer in time: try again later, or check that the Odoo server can "
                    "reach it.", host=host)
            return self.env._(
                "%(host)s could not be reached: check the server address and that the server is running "
                "and reachable from the Odoo server.", host=host)
        if isinstance(error, ThrottledError):
            return self.env._(
                "Microsoft is throttling this mailbox at the moment: try again in a few minutes.")
        if isinstance(error, TimeBudgetExceeded):
            return self.env._("The mailbox answered too slowly to finish in time: try again later.")
        return self.env._("Microsoft refused the request (%(code)s): %(message)s",
                          code=error.code or "error", message=error.message)

    # -- mailbox record -------------------------------------------------------

    def _exchange_mailbox(self):
        """This user's exchange.mailbox (as superuser), created when missing."""
        self.ensure_one()
        mailboxes = self.env["exchange.mailbox"].sudo()
        mailbox = mailboxes.search([("user_id", "=", self.id)], limit=1)
        return mailbox or mailboxes.create({"user_id": self.id})

    def _exchange_mark_connected(self, connected_email=None):
        """Record a working connection (after the sign-in or a successful test): syncing starts now."""
        self.ensure_one()
        mailbox = self._exchange_mailbox()
        if connected_email and mailbox.connected_email and \
                connected_email.lower() != mailbox.connected_email.lower():
            # Another mailbox: the old states mean nothing there.
            mailbox.write(dict.fromkeys(SYNC_STATE_FIELDS, False))
        mailbox.write({
            "state": "connected", "connected_email": connected_email or self.exchange_email,
            "auth_failures": 0, "last_error": False, "last_error_code": False,
            "next_sync": fields.Datetime.now(),
        })
        return mailbox

    def _exchange_mark_disconnected(self):
        """Stop syncing this user's mailbox and forget its sync states (the records imported stay)."""
        self.ensure_one()
        mailbox = self._exchange_mailbox()
        mailbox.write(dict.fromkeys(SYNC_STATE_FIELDS, False) | {
            "state": "not_connected", "connected_email": False, "auth_failures": 0,
            "sync_requested": False, "next_sync": False,
        })
        return mailbox

    def _exchange_has_credentials(self):
        """Whether the connector holds what it needs to open the mailbox (it may still be refused)."""
        self.ensure_one()
        user = self.sudo()
        if user.exchange_account_type == "ews":
            return bool(user.exchange_ews_url)
        return user.exchange_account_type == "graph" and bool(user.exchange_token_cache)

    def _exchange_reset_lockout(self):
        """Forget the failed sign-ins: the connector uses the (new) credentials again at the next run."""
        mailboxes = self.env["exchange.mailbox"].sudo().search([("user_id", "in", self.ids)])
        mailboxes.filtered("auth_failures").auth_failures = 0
        for mailbox in mailboxes.filtered(lambda mailbox: mailbox.state == "auth_failed"):
            user = mailbox.user_id
            # An Office 365 mailbox without a stored sign-in has nothing to try until Connect.
            usable = user._exchange_has_credentials()
            mailbox.write({
                "state": "connected" if usable else "not_connected",
                "next_sync": fields.Datetime.now() if usable else False,
            })

    # -- THE seam to Microsoft ------------------------------------------------

    @contextlib.contextmanager
    def _exchange_backend(self, budget=None):
        """Yield this user's mailbox backend (Graph or EWS) — the only way models reach Microsoft.

        ::

            with user._exchange_backend(budget=RunBudget(60)) as backend:
                backend.whoami()

        On exit the rotated OAuth token cache is saved, the backend closed and the outcome
        recorded on the user's exchange.mailbox, in the current transaction: success resets the
        failure counter; an :class:`AuthenticationError` leaving the block counts as a failed
        sign-in, and at ``exchange_connector.max_auth_failures`` (3) the mailbox is locked
        (state ``auth_failed``) and the user notified. A locked mailbox gets no backend at all
        (UserError) until the user reconnects or changes the credentials, so that scheduled
        runs never get the account locked out by Exchange. Let AuthenticationError propagate
        out of the block; callers that turn errors into a UserError roll the counting back.
        """
        self.ensure_one()
        user = self.sudo()
        mailbox = user._exchange_mailbox()
        if mailbox.state == "auth_failed":
            raise UserError(self.env._(
                "Exchange authentication failed — reconnect: the connector stopped using the mailbox of "
                "%(user)s after repeated failed sign-ins. Click Connect (Office 365) or correct the password "
                "(Exchange) in the preferences.", user=user.name))
        backend = provider = None
        sign_in_used = user.exchange_token_cache
        try:
            backend, provider = user._exchange_new_backend(budget)
            yield backend
        except AuthenticationError as error:
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

    def _exchange_new_backend(self, budget=None):
        """Build ``(backend, token_provider or None)`` from the user's settings and the company's."""
        self.ensure_one()
        if not self.exchange_email:
            raise UserError(self.env._(
                "%(user)s has no mailbox address: enter it in the preferences, tab Office 365 / Exchange.",
                user=self.name))
        if self.exchange_account_type == "graph":
            return self._exchange_new_graph_backend(budget)
        if self.exchange_account_type == "ews":
            if not self.exchange_ews_url:
                raise UserError(self.env._(
                    "%(user)s has no EWS URL: enter it in the preferences, tab Office 365 / Exchange.",
                    user=self.name))
            backend = EwsBackend(
                self.exchange_email, self.exchange_ews_username or self.exchange_email,
                self.exchange_ews_password or "", self.exchange_ews_url,
                auth_type=self.exchange_ews_auth or "ntlm", verify=self._exchange_ews_verify(), budget=budget)
            return backend, None
        raise UserError(self.env._(
            "Choose the mailbox type of %(user)s (Office 365 or Exchange on-premises) in the preferences.",
            user=self.name))

    def _exchange_new_graph_backend(self, budget, cache_blob=None):
        # The Azure app and CA settings are read in one place, next to the sign-in that uses them too.
        oauth = self._exchange_graph_oauth(cache_blob or self.exchange_token_cache or None)
        provider = oauth.delegated_token_provider(self.exchange_email)
        graph_url = (self.env["ir.config_parameter"].sudo().get_param("exchange_connector.graph_url")
                     or DEFAULT_GRAPH_URL)
        backend = GraphBackend(self.exchange_email, provider, graph_url=graph_url,
                               verify=self._exchange_microsoft_verify(), budget=budget)
        return backend, provider

    def _exchange_ews_verify(self):
        """requests' ``verify`` for the EWS server: False, the user's own CA certificates, or the system's."""
        if not self.exchange_verify_tls:
            return False
        pem = (self.exchange_ca_bundle or "").strip()
        if not pem:
            return True
        # requests wants a file; one per distinct bundle, named by content, written once.
        data = (pem + "\n").encode()
        folder = os.path.join(tools.config["data_dir"], "exchange_connector", "ca")
        path = os.path.join(folder, hashlib.sha256(data).hexdigest() + ".pem")
        if not os.path.exists(path):
            os.makedirs(folder, exist_ok=True)
            temporary = f"{path}.{os.getpid()}.tmp"
            with open(temporary, "wb") as handle:
                handle.write(data)
            os.replace(temporary, path)
        return path

    # -- manual trigger -------------------------------------------------------

    def action_exchange_sync_now(self):
        """Ask for a sync of these users' mailboxes at once: the scheduled job does it in the background."""
        if any(user != self.env.user for user in self) and not self.env.user.has_group("base.group_system"):
            raise AccessError(self.env._("You can only synchronise your own mailbox."))
        for user in self:
            mailbox = user.sudo()._exchange_mailbox()
            if mailbox.state == "auth_failed":
                raise UserError(self.env._(
                    "Exchange authentication failed — reconnect the mailbox of %(user)s before syncing.",
                    user=user.name))
            if mailbox.state != "connected":
                raise UserError(self.env._("Connect the mailbox of %(user)s first.", user=user.name))
            # A running sync holds a lease, not the row: the request waits for nothing, and it
            # makes the mailbox due again as soon as that sync ends.
            mailbox.sync_requested = True
        self.env.ref("exchange_connector.ir_cron_exchange_sync").sudo()._trigger()
        return {
            "type": "ir.actions.client",
            "tag": "display_notification",
            "params": {
                "type": "info",
                "message": self.env._(
                    "The synchronisation starts in a moment; see My sync log for the result."),
                "next": {"type": "ir.actions.act_window_close"},
            },
        }

    # -- Discuss: the sidebar's "Office 365 / Exchange" entry ----------------

    @api.model
    def exchange_sync_summary(self):
        """The current user's mailbox as the Discuss sidebar shows it, in one cheap call.

        ``{"configured": False}`` without a mailbox; otherwise ``state`` (not_connected |
        connected | auth_failed), ``sync_requested``, ``last_sync`` (UTC string or False) and
        ``last_error``. Always about the caller: nothing here reveals another user's mailbox.
        """
        user = self.env.user
        if user.share or not user.exchange_account_type:
            return {"configured": False}
        mailbox = self.env["exchange.mailbox"].sudo().search([("user_id", "=", user.id)], limit=1)
        last_sync = mailbox.last_sync_done
        return {
            "configured": True,
            "state": mailbox.state or "not_connected",
            "sync_requested": mailbox.sync_requested,
            "last_sync": fields.Datetime.to_string(last_sync) if last_sync else False,
            "last_error": mailbox.last_error or False,
        }

    def _compute_exchange_outlook_calendar_syncs(self):
        for user in self:
            user.exchange_outlook_calendar_syncs = user._exchange_outlook_calendar_syncs()

    def _exchange_outlook_calendar_syncs(self):
        """Odoo's Outlook Calendar (``microsoft_calendar``) is installed and syncing this user's calendar.

        It then brings the user's meetings itself: the event import leaves them to it rather than
        make a second copy of each (the preferences say so).
        """
        self.ensure_one()
        user = self.sudo()
        if not hasattr(user, "_microsoft_calendar_authenticated"):
            return False
        # Its status says "active" for users who never connected it: only a token means it syncs.
        return user._microsoft_calendar_authenticated() and user._get_microsoft_sync_status() == "sync_active"
