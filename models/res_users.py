from odoo import api, fields, models
from odoo.exceptions import ValidationError

from .res_config_settings import DEFAULT_MIN_SYNC_INTERVAL, DEFAULT_SYNC_INTERVAL

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
    # msal's serialized token cache (refresh token included): server code reads it with sudo().
    exchange_token_cache = fields.Text(copy=False, groups="base.group_system")

    @property
    def SELF_READABLE_FIELDS(self):
        return super().SELF_READABLE_FIELDS + EXCHANGE_SELF_FIELDS

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
            if user.exchange_event_days_back < 0 or user.exchange_event_days_ahead < 0:
                raise ValidationError(self.env._(
                    "The event window counts days back and days ahead: use 0 or more for both."))
