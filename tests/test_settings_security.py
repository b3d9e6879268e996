import xmlrpc.client

from odoo.tests import HttpCase, tagged

from .common import ExternalApiMixin, create_mailbox_users


@tagged("post_install", "-at_install")
class TestSettingsOverRpc(ExternalApiMixin, HttpCase):
    """What another internal user can reach over the external API, with their own credentials."""

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.anna, cls.marco = create_mailbox_users(cls.env)
        cls.env["ir.config_parameter"].sudo().set_param("exchange_connector.client_secret", "tenant-secret")

    def test_other_user_cannot_read_secrets(self):
        marco = ("marco.test", "marco.test.pw")
        self.assertRpcAccessError(*marco, "res.users", "read", [self.anna.id], ["exchange_ews_password"])
        self.assertRpcAccessError(*marco, "res.users", "read", [self.anna.id], ["exchange_token_cache"])
        self.assertRpcAccessError(*marco, "res.users", "search_read",
                                  [("id", "=", self.anna.id)], ["exchange_ews_password"])
        # Reading "all fields" is refused as a whole rather than leaking the secret among them.
        self.assertRpcAccessError(*marco, "res.users", "read", [self.anna.id])
        public = self.rpc(*marco, "res.users", "read", [self.anna.id], ["name", "exchange_account_type"])
        self.assertEqual(public[0]["exchange_account_type"], "ews")
        # Which mailbox, on which server, as whom: the owner's and the administrators' only.
        self.assertRpcAccessError(*marco, "res.users", "read", [self.anna.id], ["exchange_email"])
        self.assertRpcAccessError(
            *marco, "ir.config_parameter", "get_param", "exchange_connector.client_secret")
        # default_get() of the settings is open to internal users: it must not hand out the secret.
        defaults = self.rpc(*marco, "res.config.settings", "default_get", ["exchange_client_secret"])
        self.assertNotIn("tenant-secret", repr(defaults))

    def test_other_user_cannot_write_settings(self):
        marco = ("marco.test", "marco.test.pw")
        for values in ({"exchange_ews_password": "x"}, {"exchange_sync_interval": 60}):
            self.assertRpcAccessError(*marco, "res.users", "write", [self.anna.id], values)
        self.assertEqual(self.anna.sudo().exchange_ews_password, "anna-secret")
        self.assertEqual(self.anna.exchange_sync_interval, 15)

    def test_owner_reads_and_writes_own_settings_over_rpc(self):
        anna = ("anna.test", "anna.test.pw")
        self.rpc(*anna, "res.users", "write", [self.anna.id],
                 {"exchange_ews_password": "rotated", "exchange_sync_interval": 45})
        values = self.rpc(*anna, "res.users", "read", [self.anna.id],
                          ["exchange_ews_password", "exchange_sync_interval"])
        self.assertEqual(values[0]["exchange_ews_password"], "rotated")
        self.assertEqual(values[0]["exchange_sync_interval"], 45)
        # The OAuth token cache is for server code only, even for its owner.
        self.assertRpcAccessError(*anna, "res.users", "read", [self.anna.id], ["exchange_token_cache"])
        with self.assertRaises(xmlrpc.client.Fault) as caught:
            self.rpc(*anna, "res.users", "write", [self.anna.id], {"exchange_sync_interval": 1})
        self.assertIn("must be at least 5 minutes", caught.exception.faultString)

    def test_preferences_tour(self):
        self.start_tour("/odoo", "exchange_connector_preferences", login="marco.test")
        self.assertEqual(self.marco.exchange_account_type, "ews")
        self.assertEqual(self.marco.exchange_ews_url, "https://exchange.example.org/EWS/Exchange.asmx")
        self.assertEqual(self.marco.sudo().exchange_ews_password, "tour-secret")
        self.assertEqual(self.marco.exchange_transfer_folder_out, "Sent to Odoo")
