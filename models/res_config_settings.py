from odoo import api, fields, models
from odoo.exceptions import ValidationError

# Microsoft's public cloud; national clouds and the local test tenant are set on the Settings page.
DEFAULT_AUTHORITY_HOST = "https://login.microsoftonline.com"
DEFAULT_GRAPH_URL = "https://graph.microsoft.com/v1.0"
DEFAULT_SYNC_INTERVAL = 15
DEFAULT_MIN_SYNC_INTERVAL = 5
DEFAULT_SYNC_CONCURRENCY = 4


class ResConfigSettings(models.TransientModel):
    _inherit = "res.config.settings"

    # Every field is for administrators: default_get() is callable over RPC by any internal user and
    # would return the config parameters as they are (the client secret, and the tenant, endpoints,
    # CA path and allowed servers that map the company's set-up).
    exchange_tenant_id = fields.Char(
        "Azure tenant ID", config_parameter="exchange_connector.tenant_id", default="organizations",
        groups="base.group_system",
        help="Directory (tenant) ID of the Azure app, or 'organizations' for a multi-tenant app.")
    exchange_client_id = fields.Char(
        "Azure client ID", config_parameter="exchange_connector.client_id", groups="base.group_system")
    exchange_client_secret = fields.Char(
        "Azure client secret", config_parameter="exchange_connector.client_secret",
        groups="base.group_system")
    exchange_authority_host = fields.Char(
        "Identity platform host", config_parameter="exchange_connector.authority_host",
        default=DEFAULT_AUTHORITY_HOST, groups="base.group_system",
        help="Change only for a national cloud (e.g. https://login.microsoftonline.us) or a test tenant.")
    exchange_graph_url = fields.Char(
        "Microsoft Graph URL", config_parameter="exchange_connector.graph_url", default=DEFAULT_GRAPH_URL,
        groups="base.group_system")
    exchange_ca_bundle_path = fields.Char(
        "CA bundle for Microsoft", config_parameter="exchange_connector.ca_bundle_path",
        groups="base.group_system",
        help="Path of a PEM file on the Odoo server that signs the identity platform and Graph "
             "certificates. Leave empty to trust the system's certificate authorities.")
    exchange_ews_allowed_hosts = fields.Char(
        "Allowed Exchange servers", config_parameter="exchange_connector.ews_allowed_hosts",
        groups="base.group_system",
        help="Comma-separated host names users may enter as their EWS server (\"*.example.com\" allows "
             "a domain's hosts). Empty: any host.")
    exchange_default_sync_interval = fields.Integer(
        "Default sync interval (minutes)", config_parameter="exchange_connector.default_sync_interval",
        default=DEFAULT_SYNC_INTERVAL, groups="base.group_system")
    exchange_min_sync_interval = fields.Integer(
        "Minimum sync interval (minutes)", config_parameter="exchange_connector.min_sync_interval",
        default=DEFAULT_MIN_SYNC_INTERVAL, groups="base.group_system",
        help="Users cannot sync more often than this: it protects the Odoo server and the mailboxes' "
             "Microsoft request budget.")
    exchange_event_create_partners = fields.Boolean(
        related="company_id.exchange_event_create_partners", readonly=False)
    exchange_unknown_address = fields.Selection(
        related="company_id.exchange_unknown_address", readonly=False)
    exchange_attachment_limit_mb = fields.Integer(
        related="company_id.exchange_attachment_limit_mb", readonly=False)
    exchange_sync_concurrency = fields.Integer(
        "Mailboxes synced at once", config_parameter="exchange_connector.sync_concurrency",
        default=DEFAULT_SYNC_CONCURRENCY,
        help="How many mailboxes one run of the scheduled job syncs at the same time "
             "(1: one after the other).")

    # What the administrator registers in Microsoft Entra, as this database really asks for it.
    exchange_redirect_uri = fields.Char("Redirect URI", compute="_compute_exchange_app_registration")
    exchange_permissions = fields.Char("Delegated permissions", compute="_compute_exchange_app_registration")
    exchange_outlook_calendar_installed = fields.Boolean(compute="_compute_exchange_app_registration")
    exchange_reuses_outlook_credentials = fields.Boolean(compute="_compute_exchange_app_registration")

    def _compute_exchange_app_registration(self):
        # Imported here: exchange_mailbox_connection imports this module's defaults.
        from ..services.auth import DELEGATED_SCOPES  # noqa: PLC0415
        from .exchange_mailbox_connection import OAUTH_CALLBACK_PATH  # noqa: PLC0415

        params = self.env["ir.config_parameter"].sudo()
        # msal adds offline_access (the refresh token), openid and profile to every sign-in.
        permissions = [scope.rsplit("/", 1)[-1] for scope in DELEGATED_SCOPES] + ["offline_access"]
        outlook = self.env["ir.module.module"].sudo().search_count(
            [("name", "=", "microsoft_calendar"), ("state", "=", "installed")])
        for settings in self:
            settings.exchange_redirect_uri = settings.get_base_url() + OAUTH_CALLBACK_PATH
            settings.exchange_permissions = ", ".join(permissions)
            settings.exchange_outlook_calendar_installed = bool(outlook)
            settings.exchange_reuses_outlook_credentials = not settings.exchange_client_id and bool(
                params.get_param("microsoft_calendar_client_id"))

    @api.constrains(
        "exchange_default_sync_interval", "exchange_min_sync_interval", "exchange_sync_concurrency")
    def _check_exchange_sync_intervals(self):
        for settings in self:
            if settings.exchange_sync_concurrency < 1:
                raise ValidationError(self.env._("At least one mailbox must be synced at a time."))
            if settings.exchange_min_sync_interval < 1:
                raise ValidationError(self.env._("The minimum sync interval must be at least 1 minute."))
            if settings.exchange_default_sync_interval < settings.exchange_min_sync_interval:
                raise ValidationError(self.env._(
                    "The default sync interval (%(default)s min) cannot be below the minimum "
                    "(%(minimum)s min).",
                    default=settings.exchange_default_sync_interval,
                    minimum=settings.exchange_min_sync_interval,
                ))

    @api.model
    def default_get(self, fields):
        # default_get() is callable over RPC by any internal user and fills every
        # config_parameter field, group-restricted or not: drop what the caller may not read.
        values = super().default_get(fields)
        return {
            name: value for name, value in values.items()
            if name not in self._fields or self._has_field_access(self._fields[name], "read")
        }
