import contextlib
import hashlib
import logging
import os
import re
import secrets
import ssl
import time
import warnings
from urllib.parse import urlsplit

from cryptography import x509
from lxml import etree

from odoo import api, fields, models, tools
from odoo.exceptions import AccessError, UserError, ValidationError
from odoo.tools import consteq, email_normalize, hmac
from odoo.tools.mail import single_email_re

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
from .exchange_mailbox import MAILBOX_STATES, SYNC_STATE_FIELDS, StoredTokenCache
from .res_config_settings import (
    DEFAULT_AUTHORITY_HOST,
    DEFAULT_GRAPH_URL,
    DEFAULT_MIN_SYNC_INTERVAL,
    DEFAULT_SYNC_INTERVAL,
)

_logger = logging.getLogger(__name__)

OAUTH_STATE_SCOPE = "exchange_connector_oauth"
OAUTH_CALLBACK_PATH = "/exchange_connector/oauth/callback"
#: The preferences opened on the Office 365 / Exchange tab (where Connect comes back to).
MAILBOX_TAB_VIEW = "exchange_connector.view_users_form_exchange_mailbox"
CONNECT_TOKEN_SCOPE = "exchange_connector_connect"
CONNECT_TOKEN_LIFETIME = 600  # seconds between a click on Connect and the redirect it causes
MAX_EVENT_WINDOW_DAYS = 3650
MAX_SYNC_INTERVAL = 7 * 24 * 60  # minutes: a week
# What a user may type, at most: beyond, a value only costs (a long password keeps a worker hashing
# NTLM for minutes, a CA bundle is parsed at every connection). Exchange's own limits are lower.
EXCHANGE_TEXT_LIMITS = {
    "exchange_email": 254,  # RFC 5321
    "exchange_ews_url": 2048,
    "exchange_ews_username": 256,
    "exchange_ews_password": 256,  # Active Directory's maximum
    "exchange_ca_bundle": 256 * 1024,  # a few dozen certificates
    "exchange_transfer_folder_in": 255,  # Exchange's folder name maximum
    "exchange_transfer_folder_out": 255,
}
# Pasted values often come with a space or a line break around them; a password is taken as typed.
EXCHANGE_STRIPPED_FIELDS = (
    "exchange_email", "exchange_ews_url", "exchange_ews_username",
    "exchange_transfer_folder_in", "exchange_transfer_folder_out",
)
CONTROL_CHARACTERS = re.compile(r"[\x00-\x1f\x7f]")
# PEM is text in lines: line breaks and tabs are fine there.
PEM_CONTROL_CHARACTERS = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
PEM_CERTIFICATE = "-----BEGIN CERTIFICATE-----"
PEM_BLOCK = re.compile(r"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----", re.DOTALL)
CA_FOLDER = os.path.join("exchange_connector", "ca")
# A CA file younger than this is kept even when no user names it: a worker may be about to open it.
CA_FILE_GRACE_SECONDS = 60
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
EXCHANGE_STATUS_FIELDS += ["exchange_health", "exchange_transfer_folders_missing", "exchange_ca_summary"]
EXCHANGE_STATUS_FIELDS += ["exchange_contact_count"]
EXCHANGE_STATUS_FIELDS += ["exchange_first_sync_pending"]
# Who may have a mailbox: every internal user (implied by base.group_user); an administrator may
# remove that implication and give the group to some users only.
MAILBOX_USER_GROUP = "exchange_connector.group_exchange_user"

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
    "exchange_contact_folder",
    "exchange_keep_customers_subscribed",
    "exchange_unsubscribe_reassigned_customers",
]
# Everything of the feature on the user: closed to portal and public users.
EXCHANGE_USER_FIELDS = frozenset(EXCHANGE_SELF_FIELDS + EXCHANGE_STATUS_FIELDS + ["exchange_token_cache"])


class ResUsers(models.Model):
    _inherit = "res.users"

    exchange_account_type = fields.Selection(
        [("graph", "Office 365 (Microsoft Graph)"), ("ews", "Exchange on-premises (EWS)")],
        string="Mailbox type", copy=False,
        help="Office 365 mailboxes are reached through Microsoft Graph (EWS for Exchange Online was "
             "retired on 1 October 2026); on-premises Exchange 2010 SP2 and later through EWS.")
    # Which mailbox, where and as whom: the owner reads them through SELF_READABLE_FIELDS, the
    # other users not at all (they name servers and accounts to try passwords against).
    exchange_email = fields.Char("Mailbox address", copy=False, groups="base.group_system")
    exchange_ews_url = fields.Char(
        "EWS URL", copy=False, groups="base.group_system",
        help="For example https://mail.example.com/EWS/Exchange.asmx")
    exchange_ews_username = fields.Char(
        "EWS user name", copy=False, groups="base.group_system",
        help="DOMAIN\\user or the user principal name.")
    exchange_ews_password = fields.Char("EWS password", copy=False, groups="base.group_system")
    exchange_ews_auth = fields.Selection(
        [("ntlm", "NTLM"), ("basic", "Basic")], string="EWS authentication", default="ntlm")
    exchange_verify_tls = fields.Boolean(
        "Verify TLS certificates", default=True,
        help="Switch off only for a test server: the password would be sent to anyone in between.")
    exchange_ca_bundle = fields.Text(
        "Trusted CA certificates (PEM)", groups="base.group_system",
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
    exchange_connected_email = fields.Char("Connected as", compute="_compute_exchange_status")
    exchange_last_error = fields.Text("Last sync error", compute="_compute_exchange_status")
    exchange_outlook_calendar_syncs = fields.Boolean(
        "Odoo's Outlook Calendar syncs", compute="_compute_exchange_outlook_calendar_syncs")

    @property
    def SELF_READABLE_FIELDS(self):
        return super().SELF_READABLE_FIELDS + EXCHANGE_SELF_FIELDS + EXCHANGE_STATUS_FIELDS

    @property
    def SELF_WRITEABLE_FIELDS(self):
        return super().SELF_WRITEABLE_FIELDS + EXCHANGE_SELF_FIELDS

    # -- who may use a mailbox at all ------------------------------------------
    # The self-readable/-writeable lists are the same for every user, portal users included:
    # the mailbox fields and buttons are closed here to whoever is not a mailbox user.

    @api.model
    def _exchange_may_use_mailboxes(self):
        """Whether the current user may have a mailbox: internal users (the mailbox group), administrators."""
        user = self.env.user
        return self.env.su or user.has_group(MAILBOX_USER_GROUP) or user.has_group("base.group_system")

    @api.model
    def _exchange_check_may_use_mailboxes(self):
        if not self._exchange_may_use_mailboxes():
            raise AccessError(self.env._(
                "Office 365 / Exchange mailboxes are for internal users whom the administrator allows to "
                "use them: ask your administrator."))

    def _has_field_access(self, field, operation):
        if field.name in EXCHANGE_USER_FIELDS and not self._exchange_may_use_mailboxes():
            return False
        return super()._has_field_access(field, operation)

    def read(self, fields=None, load="_classic_read"):
        # res.users reads the self-readable fields as superuser, past _has_field_access.
        if fields and EXCHANGE_USER_FIELDS.intersection(fields):
            self._exchange_check_may_use_mailboxes()
        return super().read(fields=fields, load=load)

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
        for user in self.sudo().filtered("exchange_ews_url"):
            address = self._exchange_parse_ews_url(user.exchange_ews_url)
            if address.scheme == "http" and user.exchange_ews_auth == "basic":
                raise ValidationError(self.env._(
                    "Basic authentication would send the password of %(user)s readable over http: use the "
                    "https:// address of the server, or NTLM.", user=user.name))
            if allowed and not any(address.host_matches(pattern) for pattern in allowed):
                # The list itself is the administrator's: it is not shown to users.
                raise ValidationError(self.env._(
                    "The server in this EWS URL is not one of the Exchange servers your administrator "
                    "allows: check the EWS URL, or ask your administrator."))

    @api.model
    def _exchange_parse_ews_url(self, url):
        """The :class:`EwsUrl` of ``url`` as the HTTP client reads it; ValidationError saying what to fix."""
        try:
            return parse_ews_url(url)
        except InvalidEwsUrl as error:
            reason = error.reason
        if reason == "credentials":
            message = self.env._(
                "The EWS URL must not contain a user name or password: remove the part before “@” and "
                "enter them in the EWS user name and password fields.")
        elif reason in ("characters", "length"):
            message = self.env._(
                "The EWS URL contains spaces, line breaks, backslashes or other characters a web address "
                "cannot have: type it again, e.g. https://mail.example.com/EWS/Exchange.asmx.")
        elif reason == "host":
            message = self.env._(
                "The server name in the EWS URL is not a host name: type it again, e.g. "
                "https://mail.example.com/EWS/Exchange.asmx.")
        else:
            message = self.env._(
                "The EWS URL is not a web address: it looks like https://mail.example.com/EWS/Exchange.asmx.")
        raise ValidationError(message)

    @api.model
    def _exchange_clean_values(self, vals):
        """Check what a user typed before it is stored, and trim pasted spaces and line breaks.

        Bounds every text and number (Exchange's own limits are lower), refuses control
        characters (a NUL would only meet a database error) and checks the mailbox address,
        the EWS URL and the CA certificates. Returns the values to store; raises
        ValidationError with what to fix.
        """
        vals = dict(vals)
        for name in EXCHANGE_STRIPPED_FIELDS:
            if isinstance(vals.get(name), str):
                vals[name] = vals[name].strip()
        for name, limit in EXCHANGE_TEXT_LIMITS.items():
            value = vals.get(name)
            if not value:
                continue
            label = self._fields[name]._description_string(self.env)
            if not isinstance(value, str) or len(value) > limit:
                raise ValidationError(self.env._(
                    "%(field)s is too long: it takes at most %(limit)s characters.",
                    field=label, limit=limit))
            characters = PEM_CONTROL_CHARACTERS if name == "exchange_ca_bundle" else CONTROL_CHARACTERS
            if characters.search(value):
                raise ValidationError(self.env._(
                    "%(field)s contains a line break, tab or other control character: type it again "
                    "without them.", field=label))
        if vals.get("exchange_email") and not single_email_re.match(vals["exchange_email"]):
            raise ValidationError(self.env._(
                "“%(address)s” is not a mailbox address: enter one like name@company.com.",
                address=vals["exchange_email"]))
        if vals.get("exchange_ews_url"):
            self._exchange_parse_ews_url(vals["exchange_ews_url"])
        if vals.get("exchange_ca_bundle"):
            self._exchange_check_ca_bundle(vals["exchange_ca_bundle"])
        self._exchange_check_numbers(vals)
        return vals

    @api.model
    def _exchange_check_numbers(self, vals):
        # Before the database sees them: beyond its integer range they would only raise its error.
        if "exchange_sync_interval" in vals:
            minimum = self._exchange_param_int("min_sync_interval", DEFAULT_MIN_SYNC_INTERVAL)
            if not minimum <= (vals["exchange_sync_interval"] or 0) <= MAX_SYNC_INTERVAL:
                raise ValidationError(self.env._(
                    "The sync interval must be at least %(minimum)s minutes (your administrator's minimum) "
                    "and at most %(maximum)s minutes (a week).", minimum=minimum, maximum=MAX_SYNC_INTERVAL))
        for name in ("exchange_event_days_back", "exchange_event_days_ahead"):
            if name in vals and not 0 <= (vals[name] or 0) <= MAX_EVENT_WINDOW_DAYS:
                raise ValidationError(self.env._(
                    "The event window counts days back and days ahead: use 0 to %(maximum)s for both.",
                    maximum=MAX_EVENT_WINDOW_DAYS))

    @api.model
    def _exchange_check_ca_bundle(self, pem):
        """Refuse text that is not PEM certificates OpenSSL can load."""
        problem = PEM_CERTIFICATE not in pem
        if not problem:
            try:
                ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).load_verify_locations(cadata=pem)
            except (ssl.SSLError, ValueError):
                problem = True
        if problem:
            raise ValidationError(self.env._(
                "Trusted CA certificates takes certificates in PEM form, each from “-----BEGIN "
                "CERTIFICATE-----” to “-----END CERTIFICATE-----”: paste them again, or leave the field "
                "empty to trust the system's certificate authorities."))

    @api.model_create_multi
    def create(self, vals_list):
        vals_list = [self._exchange_clean_values(vals) for vals in vals_list]
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
        if EXCHANGE_USER_FIELDS.intersection(vals):
            self._exchange_check_may_use_mailboxes()
            vals = self._exchange_clean_values(vals)
        switched = self._exchange_switches_mailbox(vals)
        private_changed = self.browse()
        if "exchange_event_private" in vals:
            # Read as superuser: a user's mailbox fields are closed to portal users and to others.
            private_changed = self.sudo().filtered(lambda user: user.exchange_account_type and (
                vals["exchange_event_private"] != user.exchange_event_private)).with_env(self.env)
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
        if "exchange_ca_bundle" in vals:
            self._exchange_remove_unused_ca_files()
        if EXCHANGE_CREDENTIAL_FIELDS.intersection(vals):
            # Whoever could write the credentials may also lift the lockout they caused.
            self.sudo()._exchange_reset_lockout()
        return res

    def _exchange_visible_mailboxes(self):
        """``(visible, {user id: exchange.mailbox})``: which of these users the caller may see the
        mailbox of (themself; everyone for administrators: the last error names servers and
        mailboxes), and those mailboxes, read as superuser."""
        is_admin = self.env.user.has_group("base.group_system")
        visible = self._origin if is_admin else self._origin & self.env.user
        mailboxes = self.env["exchange.mailbox"].sudo().search([("user_id", "in", visible.ids)])
        return visible, {mailbox.user_id.id: mailbox for mailbox in mailboxes}

    @api.depends_context("uid", "lang")
    def _compute_exchange_status(self):
        _visible, by_user = self._exchange_visible_mailboxes()
        for user in self:
            mailbox = by_user.get(user._origin.id)
            user.exchange_state = mailbox.state if mailbox else "not_connected"
            user.exchange_connected_email = mailbox.connected_email if mailbox else False
            # Shown on the tab: worded for its reader, who is already there.
            user.exchange_last_error = mailbox and mailbox._exchange_last_error_for_reader(on_tab=True)

    # -- account linking: Connect / Disconnect / Test connection ------------

    def _exchange_check_can_manage(self):
        """Only the user themself or an administrator may connect, test or disconnect a mailbox."""
        self._exchange_check_may_use_mailboxes()
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
        self._exchange_check_may_use_mailboxes()
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
        self._exchange_check_may_use_mailboxes()
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
            result["error_kind"] = self.env["exchange.mailbox"]._exchange_error_kind(exc)
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
        if not check["mailbox"]:
            # What the user reads now replaces an older error, whatever refused this test (the seam
            # records Microsoft's refusals itself, with their code).
            mailbox = self.sudo()._exchange_mailbox()
            if mailbox.last_error != check["message"]:
                mailbox.write({"last_error": check["message"], "last_error_code": False,
                               "last_error_kind": check.get("error_kind", False)})
        else:
            mailbox = self.sudo()._exchange_mailbox()
            if mailbox.transfer_folders_missing != bool(check["missing_folders"]):
                mailbox.transfer_folders_missing = bool(check["missing_folders"])
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
        self.sudo()._exchange_mailbox().transfer_folders_missing = False
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
                # The tab shows the state this button left at once (static/src/tab).
                "next": {"type": "ir.actions.client", "tag": "exchange_connector_reload_record"},
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
            mailbox = self._exchange_mailbox()
            where = mailbox._exchange_where_to_fix()
            if error.kind == "password":
                if not mailbox._exchange_notice_reader_is_owner():
                    return self.env._(
                        "Exchange refused the user name or password of %(user)s: they must correct "
                        "them%(where)s, or an administrator enters the right ones on their user form.",
                        user=self.name, where=where)
                return self.env._(
                    "Exchange refused the user name or password: correct them%(where)s.", where=where)
            if error.kind in ("invalid_grant", "no_account", "token"):
                if not mailbox._exchange_notice_reader_is_owner():
                    return self.env._(
                        "Microsoft no longer accepts the sign-in of this mailbox (it expired or was "
                        "revoked): only %(user)s can click Connect%(where)s and sign in again.",
                        user=self.name, where=where)
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
            if self.exchange_account_type == "graph" and error.kind in ("dns", "refused", "tls"):
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
            mailbox = self._exchange_mailbox()
            where = mailbox._exchange_where_to_fix()
            for_owner = mailbox._exchange_notice_reader_is_owner()
            if error.kind == "dns":
                return self.env._(
                    "The server name %(host)s is unknown: check the server address for typing errors.",
                    host=host)
            if error.kind == "tls":
                if not for_owner:
                    return self.env._(
                        "The certificate of %(host)s is not trusted for the mailbox of %(user)s: they must "
                        "paste their company's CA certificate under Trusted CA certificates%(where)s, or an "
                        "administrator pastes it on their user form.", host=host, user=self.name, where=where)
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
                    "the server is down or the Odoo server cannot reach it.", host=host, user=self.name,
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
    def _exchange_backend(self, budget=None, mailbox=None):
        """Yield this user's mailbox backend (Graph or EWS) — the only way models reach Microsoft.

        ::

            with user._exchange_backend(budget=RunBudget(60)) as backend:
                backend.whoami()

        A rotated OAuth token cache is committed the moment Microsoft hands it out (see
        :class:`StoredTokenCache`; saved on exit, in the current transaction, only for a user not
        committed yet). On exit the backend is closed and the outcome recorded on the user's
        exchange.mailbox, in the current transaction: success resets the failure counter; an
        :class:`AuthenticationError` leaving the block counts as a failed sign-in, and at
        ``exchange_connector.max_auth_failures`` (3) the mailbox is locked (state
        ``auth_failed``) and the user notified. A locked mailbox gets no backend at all
        (UserError) until the user reconnects or changes the credentials, so that scheduled
        runs never get the account locked out by Exchange; an Exchange account that refused too
        many passwords lately gets none either (``exchange.sign.in.failure``), whatever was
        written meanwhile. Let AuthenticationError propagate out of the block; callers that turn
        errors into a UserError roll the counting back. A caller that holds the user's
        exchange.mailbox already (a sync) passes it as ``mailbox``: it is not looked up again.
        """
        self.ensure_one()
        user = self.sudo()
        mailbox = mailbox.sudo() if mailbox else user._exchange_mailbox()
        if mailbox.state == "auth_failed":
            raise UserError(mailbox._exchange_lockout_sentence())
        failures = self.env["exchange.sign.in.failure"]
        account = user._exchange_password_account()
        actor_uid = failures._actor_uid(user)
        if account:
            # Whatever was written meanwhile (a new password lifts the lockout): no endless guessing.
            failures._check_allowed(account, actor_uid)
        backend = provider = None
        sign_in_used = user.exchange_token_cache
        try:
            backend, provider = user._exchange_new_backend(budget)
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
        """The key of the Exchange account this user's password is tried on (None for Office 365)."""
        self.ensure_one()
        user = self.sudo()
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
        # The stored sign-in is shared with every worker: its refreshes go through the store.
        store = None if cache_blob else StoredTokenCache(self.env.registry, self.id)
        provider = oauth.delegated_token_provider(self.exchange_email, token_store=store)
        graph_url = (self.env["ir.config_parameter"].sudo().get_param("exchange_connector.graph_url")
                     or DEFAULT_GRAPH_URL)
        backend = GraphBackend(self.exchange_email, provider, graph_url=graph_url,
                               verify=self._exchange_microsoft_verify(), budget=budget)
        return backend, provider

    def _exchange_ews_verify(self):
        """requests' ``verify`` for the EWS server: False, the user's own CA certificates, or the system's."""
        if not self.exchange_verify_tls:
            return False
        data = self._exchange_ca_file_content(self.exchange_ca_bundle)
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
        users = self.sudo().with_context(active_test=False).search([("exchange_ca_bundle", "!=", False)])
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

    # -- manual trigger -------------------------------------------------------

    def action_exchange_sync_now(self):
        """Ask for a sync of these users' mailboxes at once: the scheduled job does it in the background."""
        self._exchange_check_may_use_mailboxes()
        if any(user != self.env.user for user in self) and not self.env.user.has_group("base.group_system"):
            raise AccessError(self.env._("You can only synchronise your own mailbox."))
        mailboxes = self.env["exchange.mailbox"].sudo()
        for user in self:
            mailboxes |= user.sudo()._exchange_mailbox()
        mailboxes._exchange_request_sync()
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
        if user.share or not self._exchange_may_use_mailboxes() or not user.exchange_account_type:
            return {"configured": False}
        mailbox = self.env["exchange.mailbox"].sudo().search([("user_id", "=", user.id)], limit=1)
        last_sync = mailbox.last_sync_done
        return {
            "configured": True,
            "state": mailbox.state or "not_connected",
            "sync_requested": mailbox.sync_requested,
            "last_sync": fields.Datetime.to_string(last_sync) if last_sync else False,
            "last_error": mailbox._exchange_last_error_for_reader() if mailbox else False,
            "account_type": user.exchange_account_type,
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

    # -- what the Office 365 / Exchange tab shows ------------------------------

    exchange_health = fields.Selection(
        [("not_connected", "Not connected"), ("connected", "Connected"),
         ("failing", "Connected, but the last check failed"), ("auth_failed", "Sign-in refused")],
        string="Mailbox state", compute="_compute_exchange_screen")
    exchange_transfer_folders_missing = fields.Boolean(compute="_compute_exchange_screen")
    exchange_ca_summary = fields.Char("Trusted CA", compute="_compute_exchange_screen")
    exchange_first_sync_pending = fields.Boolean(
        "First sync waits for confirmation", compute="_compute_exchange_screen")

    @api.depends_context("uid")
    @api.depends("exchange_ca_bundle")
    def _compute_exchange_screen(self):
        visible, by_user = self._exchange_visible_mailboxes()
        for user in self:
            mailbox = by_user.get(user._origin.id)
            state = mailbox.state if mailbox else "not_connected"
            if state == "connected" and mailbox.last_error:
                state = "failing"
            user.exchange_health = state
            user.exchange_transfer_folders_missing = bool(mailbox and mailbox.transfer_folders_missing)
            user.exchange_first_sync_pending = bool(mailbox and mailbox.first_sync_pending
                                                    and mailbox.state == "connected")
            pem = user.sudo().exchange_ca_bundle if user._origin in visible else False
            user.exchange_ca_summary = self._exchange_describe_ca_bundle(pem)

    @api.model
    def _exchange_describe_ca_bundle(self, pem):
        """"<subject>, valid until <date>" of the first certificate in ``pem`` (and how many follow)."""
        if not pem or PEM_CERTIFICATE not in pem:
            return False
        blocks = PEM_BLOCK.findall(pem)
        try:
            certificates = [x509.load_pem_x509_certificate(block.encode()) for block in blocks]
        except ValueError:
            certificates = []
        if not certificates:
            return self.env._("Not a readable certificate")
        first = certificates[0]
        names = first.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)
        subject = names[0].value if names else first.subject.rfc4514_string()
        expiry = getattr(first, "not_valid_after_utc", None) or first.not_valid_after
        summary = self.env._("%(subject)s, valid until %(date)s",
                             subject=subject, date=expiry.date().isoformat())
        if len(certificates) > 1:
            summary = self.env._("%(summary)s, and %(count)s more", summary=summary,
                                 count=len(certificates) - 1)
        return summary

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

    def _get_view_postprocessed(self, view, arch, **options):
        arch, models = super()._get_view_postprocessed(view, arch, **options)
        if view == self.env.ref(MAILBOX_TAB_VIEW, raise_if_not_found=False):
            # The preferences opened on the mailbox tab: the user's own fields, as base does for
            # the preferences form itself.
            tree = etree.fromstring(arch)
            for node in tree.xpath("//field[@__groups_key__]"):
                if node.get("name") in self.SELF_READABLE_FIELDS:
                    node.attrib.pop("__groups_key__")
            arch = etree.tostring(tree)
        return arch, models

    # -- contact push: "My Outlook contacts" --------------------------------

    exchange_contact_folder = fields.Char(
        "Outlook contact folder",
        help="Leave empty to keep your subscribed partners in the main Contacts folder, the one your "
             "phone syncs; or name a folder below it (created if needed).")
    exchange_keep_customers_subscribed = fields.Boolean(
        "Keep my customers subscribed",
        help="Partners who get you as their salesperson are put in your Outlook contacts.")
    exchange_unsubscribe_reassigned_customers = fields.Boolean(
        "Unsubscribe customers reassigned to someone else",
        help="A partner whose salesperson changes from you to someone else leaves your Outlook contacts.")
    exchange_contact_count = fields.Integer("My Outlook contacts", compute="_compute_exchange_contact_count")

    def _compute_exchange_contact_count(self):
        counts = dict(self.env["exchange.contact.subscription"].sudo()._read_group(
            [("user_id", "in", self.ids)], ["user_id"], ["__count"]))
        for user in self:
            user.exchange_contact_count = counts.get(user, 0)

    def action_exchange_my_outlook_contacts(self):
        """The partners in my Outlook contacts (the list filtered "In my Outlook")."""
        self.ensure_one()
        action = self.env["ir.actions.act_window"]._for_xml_id("contacts.action_contacts")
        action["context"] = {"search_default_exchange_in_my_outlook": 1}
        return action

    def action_exchange_subscribe_my_customers(self):
        """Subscribe me to every partner whose salesperson I am (and that I may read)."""
        self.ensure_one()
        partners = self.env["res.partner"].sudo().search([("user_id", "=", self.id)])
        added = self.env["exchange.contact.subscription"]._subscribe_readable(partners, self)
        return {
            "type": "ir.actions.client",
            "tag": "display_notification",
            "params": {
                "type": "success",
                "message": self.env._("%(count)s customers added to your Outlook contacts.", count=added),
                "next": {"type": "ir.actions.act_window_close"},
            },
        }
