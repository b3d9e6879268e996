from odoo.exceptions import AccessError
from odoo.tests import TransactionCase, new_test_user, tagged

from odoo.addons.exchange_connector.services import AuthenticationError

from .common import PASSWORD, ExchangeTenantMixin
from .test_oauth import ALICE, ALICE_AND_BOB, BOB

CAROL = "carol@contoso.example"
NO_SUCH_HOST_EWS_URL = "https://no-such-host.invalid/EWS/Exchange.asmx"


@tagged("post_install", "-at_install")
class TestExchangeConnectionTest(ExchangeTenantMixin, TransactionCase):
    """Test connection against the real tenant: one sentence per thing that can be wrong."""

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.start_tenant(cls.env, scenario=ALICE_AND_BOB)
        cls.tenant.seed({"users": [{"email": CAROL, "display_name": "Carol Example", "password": PASSWORD,
                                    "folders": ["Inbox/Transfer In", "Inbox/Transfer Out"]}]})
        cls.alice = new_test_user(cls.env, login="alice", name="Alice",
                                  exchange_account_type="graph", exchange_email=ALICE)
        # Bob's mailbox has the incoming transfer folder only.
        cls.bob = new_test_user(cls.env, login="bob", name="Bob",
                                exchange_account_type="graph", exchange_email=BOB)
        cls.carol = new_test_user(
            cls.env, login="carol", name="Carol", exchange_account_type="ews", exchange_email=CAROL,
            exchange_ews_url=cls.tenant.ews_url, exchange_ews_username="CONTOSO\\carol",
            exchange_ews_password=PASSWORD, exchange_ews_auth="ntlm", exchange_ca_bundle=cls.tenant_ca_pem())

    def click_test_connection(self, user):
        """Click Test connection as ``user``; return (notification type, message)."""
        action = user.with_user(user).action_exchange_test_connection()
        self.assertEqual(action["tag"], "display_notification")
        user.env.invalidate_all()
        return action["params"]["type"], action["params"]["message"]

    def assertConnectionFails(self, user, sentence):
        kind, message = self.click_test_connection(user)
        self.assertEqual(kind, "danger", message)
        self.assertIn(sentence, message)
        return message

    def test_office365_mailbox_connected_with_its_folders(self):
        self.connect_without_browser(self.alice)
        self.assertEqual(self.click_test_connection(self.alice), (
            "success", f"Connected to {ALICE}; the transfer folders are in place."))
        self.assertEqual(self.alice.exchange_state, "connected")

    def test_office365_mailbox_not_connected(self):
        self.assertConnectionFails(self.alice, "not connected: click Connect")

    def test_missing_transfer_folder_is_reported_then_created(self):
        self.connect_without_browser(self.bob)
        message = self.assertConnectionFails(
            self.bob, "the folder “Inbox/Transfer Out” is missing under the Inbox")
        self.assertNotIn("Transfer In", message)
        action = self.bob.with_user(self.bob).action_exchange_create_transfer_folders()
        self.assertEqual(action["params"]["type"], "success", action["params"]["message"])
        self.assertIsNotNone(self.tenant.store.mailbox(BOB).folder_by_path("Inbox/Transfer Out"))
        self.assertEqual(self.click_test_connection(self.bob)[0], "success")

    def test_on_premises_mailbox_connected(self):
        self.assertEqual(self.click_test_connection(self.carol), (
            "success", f"Connected to {CAROL}; the transfer folders are in place."))
        self.assertEqual(self.carol.exchange_state, "connected")

    def test_wrong_password(self):
        self.carol.exchange_ews_password = "not-the-password"
        self.assertConnectionFails(self.carol, "Exchange refused the user name or password")

    def test_unknown_host(self):
        self.carol.exchange_ews_url = NO_SUCH_HOST_EWS_URL
        self.assertConnectionFails(self.carol, "The server name no-such-host.invalid is unknown")

    def test_untrusted_certificate(self):
        # Without the tenant's CA, the system's authorities cannot vouch for its certificate.
        self.carol.exchange_ca_bundle = False
        self.assertConnectionFails(self.carol, f"The certificate of {self.tenant.host} is not trusted")
        self.connect_without_browser(self.alice)
        self.env["ir.config_parameter"].sudo().set_param("exchange_connector.ca_bundle_path", False)
        self.assertConnectionFails(
            self.alice, f"The Odoo server does not trust the certificate of {self.tenant.host}: an admin")

    def test_revoked_sign_in_asks_to_connect_again(self):
        self.connect_without_browser(self.alice)
        self.tenant.identity.revoke(ALICE)
        self.assertConnectionFails(self.alice, "no longer accepts the sign-in of this mailbox")
        self.assertIn("Connect", self.alice.exchange_last_error)

    def test_token_cache_without_an_account_asks_to_connect_again(self):
        self.alice.sudo().exchange_token_cache = '{"Account": {}, "RefreshToken": {}}'
        self.assertConnectionFails(self.alice, "no longer accepts the sign-in of this mailbox")

    def test_sign_in_name_other_than_the_mailbox_address_is_found(self):
        # Real tenants: the sign-in name (UPN) is often not the mailbox address. A user's cache
        # holds their one verified sign-in, found without the name.
        self.connect_without_browser(self.alice)
        self.alice.exchange_email = "Alice.Example@contoso.example"
        self.alice.sudo().exchange_token_cache = self.alice.sudo().exchange_token_cache  # reconnects
        self.assertEqual(self.click_test_connection(self.alice)[0], "success")

    def test_company_app_errors_do_not_lock_users_out(self):
        # An expired client secret is the company's problem: no user may end up locked out by it.
        self.env["ir.config_parameter"].sudo().set_param("exchange_connector.max_auth_failures", 2)
        self.connect_without_browser(self.alice)
        self.env["ir.config_parameter"].sudo().set_param("exchange_connector.client_secret", "expired")
        self.env.invalidate_all()
        self.tenant.identity.advance_clock(3700)
        for _attempt in range(3):
            self.assertConnectionFails(self.alice, "Microsoft rejected the application ID or secret")
        self.assertEqual(self.alice.exchange_state, "connected")
        self.assertFalse(self.alice._exchange_mailbox().auth_failures)

    def test_pointing_the_user_at_another_mailbox_forgets_the_old_one(self):
        self.connect_without_browser(self.alice)
        mailbox = self.alice._exchange_mailbox()
        mailbox.write({"mails_in_state": "delta-of-alice", "events_state": "calendar-of-alice"})
        self.alice.exchange_email = BOB
        self.assertEqual(mailbox.state, "not_connected", "Bob's mailbox needs its own sign-in")
        self.assertFalse(mailbox.mails_in_state or mailbox.events_state or mailbox.connected_email)

    def test_mailbox_status_is_private_to_its_user_and_administrators(self):
        self.carol.with_user(self.carol).action_exchange_test_connection()
        self.assertEqual(self.carol.with_user(self.carol).exchange_state, "connected")
        as_bob = self.carol.with_user(self.bob)
        self.assertEqual((as_bob.exchange_state, as_bob.exchange_connected_email), ("not_connected", False))

    def test_wrong_application_secret(self):
        self.connect_without_browser(self.alice)
        self.env["ir.config_parameter"].sudo().set_param("exchange_connector.client_secret", "wrong")
        self.env.invalidate_all()
        self.tenant.identity.advance_clock(3700)  # the cached access token expired: msal must ask the tenant
        self.assertConnectionFails(self.alice, "Microsoft rejected the application ID or secret")

    def test_consent_sentence(self):
        # The tenant grants any scope it is asked for, so missing consent is checked on the mapping alone.
        message = self.alice._exchange_describe_error(
            AuthenticationError("Access denied", kind="consent", code="ErrorAccessDenied", status=403))
        self.assertIn("lacks consent", message)

    def test_lockout_after_repeated_failures_and_recovery_with_the_right_password(self):
        self.env["ir.config_parameter"].sudo().set_param("exchange_connector.max_auth_failures", 3)
        carol = self.carol.with_user(self.carol)
        carol.exchange_ews_password = "not-the-password"
        for _attempt in range(3):
            self.assertConnectionFails(self.carol, "Exchange refused the user name or password")
        self.assertEqual(self.carol.exchange_state, "auth_failed")
        self.assertTrue(self.env["mail.message"].search([
            ("model", "=", "res.users"), ("res_id", "=", self.carol.id),
            ("partner_ids", "in", self.carol.partner_id.ids)]), "the user is told about the lockout")
        self.tenant.request_log.clear()
        self.assertConnectionFails(self.carol, "stopped using your Exchange password")
        self.assertEqual(self.tenant.request_log.count(protocol="ews"), 0, "a locked mailbox is left alone")
        carol.exchange_ews_password = PASSWORD
        self.assertEqual(self.carol.exchange_state, "connected")
        self.assertEqual(self.click_test_connection(self.carol)[0], "success")

    def test_reconnecting_lifts_the_lockout(self):
        self.env["ir.config_parameter"].sudo().set_param("exchange_connector.max_auth_failures", 2)
        self.connect_without_browser(self.alice)
        self.tenant.identity.revoke(ALICE)
        for _attempt in range(2):
            self.assertConnectionFails(self.alice, "no longer accepts the sign-in")
        self.assertEqual(self.alice.exchange_state, "auth_failed")
        self.connect_without_browser(self.alice)
        self.assertEqual(self.alice.exchange_state, "connected")
        self.assertEqual(self.click_test_connection(self.alice)[0], "success")

    def test_only_the_owner_or_an_administrator_tests_a_mailbox(self):
        with self.assertRaises(AccessError):
            self.carol.with_user(self.bob).action_exchange_test_connection()
        with self.assertRaises(AccessError):
            self.carol.with_user(self.bob).action_exchange_create_transfer_folders()
        admin = new_test_user(self.env, login="admin.exchange", groups="base.group_user,base.group_system")
        action = self.carol.with_user(admin).action_exchange_test_connection()
        self.assertEqual(action["params"]["type"], "success")

    def test_buttons_are_on_the_user_form_and_in_my_preferences(self):
        buttons = ["action_exchange_connect", "action_exchange_disconnect", "action_exchange_test_connection",
                   "action_exchange_create_transfer_folders"]
        for view, user in (("base.view_users_form", self.env.ref("base.user_admin")),
                           ("base.view_users_form_simple_modif", self.alice)):
            arch = self.env["res.users"].with_user(user).get_view(self.env.ref(view).id, "form")["arch"]
            for button in buttons:
                self.assertIn(f'name="{button}"', arch, view)
