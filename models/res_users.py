import logging
import re
import ssl

from cryptography import x509
from lxml import etree

from odoo import api, fields, models
from odoo.exceptions import AccessError, UserError, ValidationError
from odoo.tools import email_normalize
from odoo.tools.mail import single_email_re

from ..services.ews_url import InvalidEwsUrl, parse_ews_url
from .exchange_mailbox import MAILBOX_STATES
from .res_config_settings import DEFAULT_MIN_SYNC_INTERVAL, DEFAULT_SYNC_INTERVAL

_logger = logging.getLogger(__name__)

#: The preferences opened on the Office 365 / Exchange tab (where Connect comes back to).
MAILBOX_TAB_VIEW = "exchange_connector.view_users_form_exchange_mailbox"
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
# Which mailbox a user's settings point at: changing one of these starts over with another mailbox.
MAILBOX_IDENTITY_FIELDS = {"exchange_account_type", "exchange_email", "exchange_ews_url"}
# Writing any of these means the user fixed their credentials: the lockout is lifted.
EXCHANGE_CREDENTIAL_FIELDS = {
    "exchange_account_type", "exchange_email", "exchange_ews_url", "exchange_ews_username",
    "exchange_ews_password", "exchange_ews_auth", "exchange_verify_tls", "exchange_ca_bundle",
}

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
            user._exchange_mailbox()._exchange_mark_disconnected()
        # Storing a sign-in (Connect) starts syncing, forgetting it (Disconnect) stops it; the seam
        # saving a rotated refresh token changes nothing.
        if "exchange_token_cache" in vals and not self.env.context.get("exchange_token_rotation"):
            for user in self:
                if vals["exchange_token_cache"]:
                    user._exchange_mailbox()._exchange_mark_connected()
                else:
                    user._exchange_mailbox()._exchange_mark_disconnected()
        if "exchange_ca_bundle" in vals:
            self.env["exchange.mailbox"].sudo()._exchange_remove_unused_ca_files()
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
    # The buttons check who may act, then ask the mailbox (exchange_mailbox_connection.py), which
    # does the work as superuser.

    def _exchange_check_can_manage(self):
        """Only the user themself or an administrator may connect, test or disconnect a mailbox."""
        self._exchange_check_may_use_mailboxes()
        for user in self:
            if user != self.env.user and not self.env.user.has_group("base.group_system"):
                raise AccessError(self.env._(
                    "Only %(user)s or an administrator can manage the mailbox of %(user)s.", user=user.name))

    def _exchange_oauth_start(self):
        """Start the sign-in of the user's own mailbox (only they may): msal's flow, for the HTTP session."""
        self.ensure_one()
        # The controller calls it on request.env.user, a superuser record: check the caller's own rights.
        self.sudo(False)._exchange_check_may_use_mailboxes()
        if self != self.env.user:
            raise AccessError(self.env._("Only %(user)s can connect their own mailbox.", user=self.name))
        return self._exchange_mailbox()._exchange_oauth_start()

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

    def action_exchange_disconnect(self):
        """Disconnect button: forget the Microsoft sign-in (the stored tokens) of these mailboxes."""
        self._exchange_check_can_manage()
        self.sudo().write({"exchange_token_cache": False})
        _logger.info("Office 365 mailbox of %s disconnected by %s", ", ".join(self.mapped("login")),
                     self.env.user.login)
        return True

    def action_exchange_test_connection(self):
        """Test connection button: one notification saying that it works, or what is wrong."""
        self.ensure_one()
        self._exchange_check_can_manage()
        check = self._exchange_mailbox()._exchange_test_connection()
        return self._exchange_notification(check["message"], "success" if check["ok"] else "danger")

    def action_exchange_create_transfer_folders(self):
        """Create transfer folders button: create the missing folders under the Inbox."""
        self.ensure_one()
        self._exchange_check_can_manage()
        message, kind = self._exchange_mailbox()._exchange_create_transfer_folders()
        return self._exchange_notification(message, kind)

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

    # -- mailbox record -------------------------------------------------------

    def _exchange_mailbox(self):
        """This user's exchange.mailbox (as superuser), created when missing."""
        self.ensure_one()
        mailboxes = self.env["exchange.mailbox"].sudo()
        mailbox = mailboxes.search([("user_id", "=", self.id)], limit=1)
        return mailbox or mailboxes.create({"user_id": self.id})

    # The connection is the mailbox's (exchange_mailbox_connection.py). These names stay on the
    # user for the controller, the tests, the benchmarks and the demo, which hold a user.

    def _exchange_backend(self, budget=None):
        """This user's backend, as ``with user._exchange_backend() as backend:`` (the mailbox's seam)."""
        return self._exchange_mailbox()._exchange_backend(budget=budget)

    def _exchange_check_connection(self):
        """Test connection without a notification: see ``exchange.mailbox._exchange_check_connection``."""
        return self._exchange_mailbox()._exchange_check_connection()

    def _exchange_describe_error(self, error):
        """The sentence telling the current reader what ``error`` means for this user's mailbox."""
        return self._exchange_mailbox()._exchange_describe_error(error)

    def _exchange_mark_connected(self, connected_email=None):
        """Record a working connection: syncing starts now. Returns the mailbox."""
        return self._exchange_mailbox()._exchange_mark_connected(connected_email)

    def _exchange_mark_disconnected(self):
        """Stop syncing this user's mailbox and forget its sync states. Returns the mailbox."""
        return self._exchange_mailbox()._exchange_mark_disconnected()

    def _exchange_reset_lockout(self):
        """Let the connector use these users' (new) credentials again at the next run."""
        self.env["exchange.mailbox"].sudo().search([("user_id", "in", self.ids)])._exchange_reset_lockout()

    def _exchange_oauth_finish(self, flow, auth_response):
        """Redeem the sign-in answer the browser brought back: see the mailbox's."""
        return self._exchange_mailbox()._exchange_oauth_finish(flow, auth_response)

    def _exchange_oauth_state_is_valid(self, state):
        return self._exchange_mailbox()._exchange_oauth_state_is_valid(state)

    def _exchange_connect_token(self, issued=None):
        return self._exchange_mailbox()._exchange_connect_token(issued)

    def _exchange_connect_token_is_valid(self, token):
        return self._exchange_mailbox()._exchange_connect_token_is_valid(token)

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
