from odoo.exceptions import UserError
from odoo.tests import TransactionCase, new_test_user, tagged

from odoo.addons.exchange_connector.services import ConnectionProblem

from .common import CLIENT_ID, CLIENT_SECRET, ExchangeTenantMixin
from .test_oauth import ALICE_AND_BOB, BOB

UNREACHABLE_EWS_URL = "https://no-such-host.invalid/EWS/Exchange.asmx"


@tagged("post_install", "-at_install")
class TestScreens(ExchangeTenantMixin, TransactionCase):
    """What the tab, the sync log and the settings show is the state the last action left."""

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.start_tenant(cls.env, scenario=ALICE_AND_BOB)

    def test_the_tab_shows_a_failed_then_a_fixed_test_at_once(self):
        user, remote = self.ews_user(self.env, "tilda")
        me = user.with_user(user)
        self.assertEqual(me.exchange_health, "not_connected")
        action = me.with_context(exchange_on_tab=True).action_exchange_test_connection()
        self.assertEqual(action["params"]["next"]["tag"], "exchange_connector_reload_record",
                         "the form reloads the record the button changed")
        me.env.invalidate_all()
        self.assertEqual((me.exchange_health, me.exchange_connected_email), ("connected", remote.email))
        self.assertFalse(me.exchange_last_error)

        me.exchange_ews_password = "not the password"
        action = me.with_context(exchange_on_tab=True).action_exchange_test_connection()
        self.assertEqual(action["params"]["type"], "danger")
        me.env.invalidate_all()
        self.assertEqual(me.exchange_health, "failing", "no plain 'Connected' next to the error")
        self.assertIn("refused the user name or password", me.exchange_last_error)

        me.exchange_ews_password = "Passw0rd!"
        me.with_context(exchange_on_tab=True).action_exchange_test_connection()
        me.env.invalidate_all()
        self.assertEqual(me.exchange_health, "connected")
        self.assertFalse(me.exchange_last_error, "the old error goes with the successful test")

    def test_create_transfer_folders_is_offered_only_when_they_are_missing(self):
        user = new_test_user(self.env, login="bob", name="Bob", exchange_account_type="graph",
                             exchange_email=BOB)
        self.connect_without_browser(user)
        me = user.with_user(user)
        self.assertFalse(me.exchange_transfer_folders_missing)
        me.action_exchange_test_connection()
        me.env.invalidate_all()
        self.assertTrue(me.exchange_transfer_folders_missing, "Bob's mailbox lacks Inbox/Transfer Out")
        me.action_exchange_create_transfer_folders()
        me.env.invalidate_all()
        self.assertFalse(me.exchange_transfer_folders_missing)
        self.assertIsNotNone(self.tenant.store.mailbox(BOB).folder_by_path("Inbox/Transfer Out"))

    def test_ca_certificate_is_summed_up_by_subject_and_expiry(self):
        user, _remote = self.ews_user(self.env, "ulla")
        summary = user.with_user(user).exchange_ca_summary
        self.assertRegex(summary, r"^.+, valid until \d{4}-\d{2}-\d{2}$")
        self.assertNotIn("BEGIN CERTIFICATE", summary)
        other = new_test_user(self.env, login="vera.test")
        self.assertFalse(user.with_user(other).exchange_ca_summary, "nobody else learns the user's CA")

    def test_failed_run_says_what_to_do_and_keeps_the_exception_whole(self):
        user, _remote = self.ews_user(self.env, "wanda")
        runs = self.env["exchange.sync.run"]
        failed = runs._start(user, "mails")
        long_message = "word " * 400 + "end-of-the-exception"
        failed._finish(ConnectionProblem(long_message, kind="dns"))
        self.assertIn("is unknown: check the server address", failed.error_summary)
        self.assertTrue(failed.exc_message.endswith("end-of-the-exception"), "never cut")
        self.assertEqual(failed.result, "Failed: nothing new")
        crashed = runs._start(user, "events")
        crashed._finish(ValueError("a bug"))
        self.assertIn("give the details below to your administrator", crashed.error_summary)

    def test_sync_log_says_done_0_imported_only_when_nothing_was_there(self):
        user, _remote = self.ews_user(self.env, "xenia")
        runs = self.env["exchange.sync.run"]
        empty = runs._start(user, "mails")
        empty._finish()
        self.assertEqual(empty.result, "Done: nothing new")
        skipped = runs._start(user, "mails")
        skipped._count(skipped=4)
        skipped._finish()
        self.assertEqual(skipped.result, "Done: 4 skipped")
        imported = runs._start(user, "events")
        imported._count(created=3, updated=1)
        imported._finish()
        self.assertEqual(imported.result, "Done: 3 imported, 1 updated")

    def test_settings_show_the_real_redirect_uri_and_every_permission(self):
        settings = self.env["res.config.settings"].create({})
        base_url = self.env["ir.config_parameter"].sudo().get_param("web.base.url")
        self.assertEqual(settings.exchange_redirect_uri, f"{base_url}/exchange_connector/oauth/callback")
        self.assertEqual(settings.exchange_permissions,
                         "User.Read, Mail.ReadWrite, Calendars.Read, Contacts.ReadWrite, offline_access")
        installed = bool(self.env["ir.module.module"].search_count(
            [("name", "=", "microsoft_calendar"), ("state", "=", "installed")]))
        self.assertEqual(settings.exchange_outlook_calendar_installed, installed)

    def test_odoo_outlook_calendar_credentials_are_reused(self):
        params = self.env["ir.config_parameter"].sudo()
        params.set_param("exchange_connector.client_id", False)
        params.set_param("exchange_connector.client_secret", False)
        user = new_test_user(self.env, login="yara.test", exchange_account_type="graph",
                             exchange_email="alice@contoso.example")
        with self.assertRaisesRegex(UserError, "Office 365 is not set up yet"):
            user.with_user(user)._exchange_oauth_start()
        params.set_param("microsoft_calendar_client_id", CLIENT_ID)
        params.set_param("microsoft_calendar_client_secret", CLIENT_SECRET)
        self.assertTrue(self.env["res.config.settings"].create({}).exchange_reuses_outlook_credentials)
        flow = user.with_user(user)._exchange_oauth_start()
        self.assertIn(f"client_id={CLIENT_ID}", flow["auth_uri"])

    def test_administrators_find_mailboxes_and_sync_log_without_debug_mode(self):
        for name in ("menu_exchange_mailbox", "menu_exchange_sync_run"):
            xmlid = f"exchange_connector.{name}"
            menu = self.env.ref(xmlid)
            self.assertEqual(menu.parent_id, self.env.ref("base.menu_users"), "Settings > Users & Companies")
            self.assertNotIn(self.env.ref("base.group_no_one"), menu.group_ids | menu.parent_id.group_ids)

    def test_a_user_without_a_mailbox_is_told_what_the_tab_is_for(self):
        for view in ("base.view_users_form", "base.view_users_form_simple_modif"):
            arch = self.env["res.users"].get_view(self.env.ref(view).id, "form")["arch"]
            self.assertIn('name="exchange_purpose"', arch, view)
