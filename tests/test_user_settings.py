from odoo.exceptions import AccessError, ValidationError
from odoo.tests import Form, TransactionCase, tagged

from .common import create_mailbox_users


@tagged("post_install", "-at_install")
class TestUserSettings(TransactionCase):
    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.anna, cls.marco = create_mailbox_users(cls.env)

    def test_user_edits_own_settings_through_preferences_form(self):
        anna = self.anna.with_user(self.anna)
        with Form(anna, view="base.view_users_form_simple_modif") as form:
            form.exchange_account_type = "ews"
            form.exchange_ews_url = "https://exchange.example.org/EWS/Exchange.asmx"
            form.exchange_ews_password = "new-secret"
            form.exchange_transfer_folder_in = "Odoo In"
            form.exchange_sync_interval = 30
            form.exchange_delete_after_import = True
        self.assertEqual(self.anna.exchange_ews_url, "https://exchange.example.org/EWS/Exchange.asmx")
        self.assertEqual(self.anna.sudo().exchange_ews_password, "new-secret")
        self.assertEqual(self.anna.exchange_transfer_folder_in, "Odoo In")
        self.assertEqual(self.anna.exchange_sync_interval, 30)
        self.assertTrue(self.anna.exchange_delete_after_import)

    def test_preferences_form_shows_only_fields_of_the_account_type(self):
        with Form(self.marco.with_user(self.marco), view="base.view_users_form_simple_modif") as form:
            self.assertTrue(form._get_modifier("exchange_ews_url", "invisible"))
            self.assertFalse(form._get_modifier("exchange_email", "invisible"))
            form.exchange_account_type = "ews"
            self.assertFalse(form._get_modifier("exchange_ews_url", "invisible"))
            self.assertTrue(form._get_modifier("exchange_ews_url", "required"))
            form.exchange_ews_url = "https://mail.example.com/EWS/Exchange.asmx"

    def test_defaults_for_a_new_user(self):
        self.env["ir.config_parameter"].sudo().set_param("exchange_connector.default_sync_interval", 20)
        user = self.env["res.users"].create({"login": "fresh", "name": "Fresh"})
        self.assertEqual(user.exchange_sync_interval, 20)
        self.assertEqual(user.exchange_transfer_folder_in, "Transfer In")
        self.assertEqual(user.exchange_transfer_folder_out, "Transfer Out")
        self.assertEqual(user.exchange_ews_auth, "ntlm")
        self.assertTrue(all(user[kind] for kind in
                            ("exchange_sync_mails", "exchange_sync_events", "exchange_sync_contacts")))

    def test_interval_below_admin_minimum_is_refused(self):
        self.env["ir.config_parameter"].sudo().set_param("exchange_connector.min_sync_interval", 10)
        anna = self.anna.with_user(self.anna)
        with self.assertRaisesRegex(ValidationError, "must be at least 10 minutes"):
            anna.write({"exchange_sync_interval": 9})
        anna.write({"exchange_sync_interval": 10})
        self.assertEqual(self.anna.exchange_sync_interval, 10)

    def test_ews_url_is_checked_against_the_allowed_servers(self):
        anna = self.anna.with_user(self.anna)
        with self.assertRaisesRegex(ValidationError, "not a web address"):
            anna.write({"exchange_ews_url": "mail.example.com"})
        plain = "http://mail.example.com/EWS/Exchange.asmx"
        with self.assertRaisesRegex(ValidationError, "readable over http"):
            anna.write({"exchange_ews_url": plain, "exchange_ews_auth": "basic"})
        anna.write({"exchange_ews_url": plain, "exchange_ews_auth": "ntlm"})
        self.env["ir.config_parameter"].sudo().set_param(
            "exchange_connector.ews_allowed_hosts", "mail.example.com, *.corp.example.org")
        with self.assertRaisesRegex(ValidationError, "not one of the Exchange servers your administrator"):
            anna.write({"exchange_ews_url": "https://intranet.example.com/EWS/Exchange.asmx"})
        anna.write({"exchange_ews_url": "https://ex01.corp.example.org/EWS/Exchange.asmx"})
        self.assertEqual(self.anna.exchange_ews_url, "https://ex01.corp.example.org/EWS/Exchange.asmx")

    def test_event_window_is_bounded(self):
        with self.assertRaisesRegex(ValidationError, "use 0 to 3650"):
            self.anna.write({"exchange_event_days_back": 100000})

    def test_admin_minimum_cannot_exceed_default(self):
        with self.assertRaisesRegex(ValidationError, "cannot be below the minimum"):
            self.env["res.config.settings"].create({
                "exchange_min_sync_interval": 30, "exchange_default_sync_interval": 15,
            })

    def test_settings_page_stores_company_wide_parameters(self):
        settings = self.env["res.config.settings"].create({
            "exchange_tenant_id": "0b6f1c4e-tenant", "exchange_client_id": "client-1",
            "exchange_client_secret": "s3cr3t", "exchange_graph_url": "https://graph.microsoft.us/v1.0",
            "exchange_min_sync_interval": 7, "exchange_default_sync_interval": 12,
        })
        settings.execute()
        params = self.env["ir.config_parameter"].sudo()
        self.assertEqual(params.get_param("exchange_connector.client_secret"), "s3cr3t")
        self.assertEqual(params.get_param("exchange_connector.graph_url"), "https://graph.microsoft.us/v1.0")
        self.assertEqual(params.get_param("exchange_connector.min_sync_interval"), "7")
        with self.assertRaises(ValidationError):
            self.anna.write({"exchange_sync_interval": 6})

    def test_copy_does_not_carry_secrets_or_mailbox(self):
        clone = self.anna.copy({"login": "anna.clone"})
        self.assertFalse(clone.sudo().exchange_ews_password)
        self.assertFalse(clone.sudo().exchange_token_cache)
        self.assertFalse(clone.exchange_email)
        self.assertFalse(clone.exchange_account_type)
        # Preferences that are not secrets are a useful template for the clone.
        self.assertEqual(clone.exchange_transfer_folder_in, self.anna.exchange_transfer_folder_in)

    def test_user_cannot_touch_another_users_secrets_or_settings(self):
        anna_as_marco = self.anna.with_user(self.marco)
        with self.assertRaises(AccessError):
            anna_as_marco.read(["exchange_ews_password"])
        with self.assertRaises(AccessError):
            anna_as_marco.read(["exchange_token_cache"])
        with self.assertRaises(AccessError):
            anna_as_marco.write({"exchange_sync_interval": 60})
        with self.assertRaises(AccessError):
            anna_as_marco.write({"exchange_ews_password": "stolen"})
        self.assertEqual(self.anna.sudo().exchange_ews_password, "anna-secret")

    def test_owner_reads_own_password_but_not_token_cache(self):
        anna = self.anna.with_user(self.anna)
        self.assertEqual(anna.read(["exchange_ews_password"])[0]["exchange_ews_password"], "anna-secret")
        with self.assertRaises(AccessError):
            anna.read(["exchange_token_cache"])

    def test_admin_form_has_the_exchange_tab(self):
        admin_form = self.env.ref("base.view_users_form")
        arch = self.env["res.users"].get_views([(admin_form.id, "form")])["views"]["form"]["arch"]
        self.assertIn('name="exchange_connector"', arch)
        self.assertIn('name="exchange_ews_password"', arch)
