import socket

from odoo.exceptions import UserError
from odoo.tests import TransactionCase, new_test_user, tagged

from .common import ExchangeTenantMixin


@tagged("post_install", "-at_install")
class TestNotices(ExchangeTenantMixin, TransactionCase):
    """Lockouts and refused sign-ins reach the user inside Odoo, worded for whoever reads them."""

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.start_tenant(cls.env)
        cls.env["ir.config_parameter"].sudo().set_param("exchange_connector.max_auth_failures", 2)

    def notices_of(self, user):
        return self.env["mail.message"].search(
            [("partner_ids", "in", user.partner_id.ids), ("model", "=", "res.users")], order="id")

    def inbox_notifications(self, user):
        return self.env["mail.notification"].search([
            ("res_partner_id", "=", user.partner_id.id), ("notification_type", "=", "inbox"),
            ("mail_message_id", "in", self.notices_of(user).ids)])

    def mails_to(self, user):
        return self.env["mail.mail"].search([("email_to", "ilike", user.email)])

    def lock_out_ews(self, name, **values):
        user, remote = self.ews_user(self.env, name, password="wrong-password", **values)
        user._exchange_mark_connected(remote.email)
        for _attempt in range(2):
            self.refused_sign_in(user)
        self.assertEqual(user._exchange_mailbox().state, "auth_failed")
        return user

    def test_lockout_reaches_the_inbox_of_a_user_who_chose_email_without_a_mail_server(self):
        self.env["ir.mail_server"].search([]).unlink()
        user = self.lock_out_ews("nora", notification_type="email", email="nora@contoso.test")
        notice = self.notices_of(user)
        self.assertEqual(len(notice), 1)
        self.assertEqual(len(self.inbox_notifications(user)), 1,
                         "in the Odoo inbox although the user chose to be notified by e-mail")
        self.assertFalse(self.mails_to(user), "no e-mail without a mail server to send it")
        body = str(notice.body)
        self.assertIn("Correct the user name or password in your preferences", body)
        self.assertNotIn("reconnect", body.lower(), "an Exchange user has nothing to reconnect")
        self.assertNotIn("Connect", body)
        self.assertIn("<details>", body, "the raw error is folded away")
        self.assertIn("check your password", notice.subject)

    def test_lockout_is_also_mailed_when_a_mail_server_is_configured(self):
        self.env["ir.mail_server"].create({"name": "Company SMTP", "smtp_host": "smtp.contoso.invalid"})
        user = self.lock_out_ews("olga", notification_type="inbox", email="olga@contoso.test")
        self.assertEqual(len(self.inbox_notifications(user)), 1)
        mail = self.mails_to(user)
        self.assertEqual(len(mail), 1)
        self.assertIn("check your password", mail.subject)

    def test_office365_user_is_told_to_connect_again_before_and_at_the_lockout(self):
        remote = self.new_remote_mailbox("paula")
        self.tenant.knobs.set(remote.email, token_lifetime_seconds=60)
        user = new_test_user(self.env, login="paula.test", name="Paula", exchange_account_type="graph",
                             exchange_email=remote.email, notification_type="email")
        user.exchange_token_cache = self.sign_in(remote.email)
        self.tenant.identity.revoke(remote.email)
        for _attempt in range(2):
            self.refused_sign_in(user)
        warning, lockout = self.notices_of(user)
        self.assertIn("click Connect and sign in again", str(warning.body))
        self.assertIn("Click Connect in your preferences", str(lockout.body))
        self.assertIn("connect it again", lockout.subject)
        self.assertEqual(len(self.inbox_notifications(user)), 2)

    def test_wording_fits_the_reader(self):
        user = self.lock_out_ews("quinn")
        mailbox = user._exchange_mailbox()
        # The user, from Discuss or a scheduled run's log: sent to the tab.
        sent_to_the_tab = r"your Exchange password.*in your preferences \(My Preferences"
        with self.assertRaisesRegex(UserError, sent_to_the_tab):
            user.with_user(user).action_exchange_sync_now()
        # The user, on the tab: not sent to it.
        on_tab = mailbox.with_user(user).with_context(exchange_on_tab=True)._exchange_lockout_sentence()
        self.assertIn("Correct the user name or password, then click Test connection", on_tab)
        self.assertNotIn("preferences", on_tab)
        # An administrator on the user's form: what that user must do.
        admin = new_test_user(self.env, login="root.admin", groups="base.group_system,base.group_user")
        with self.assertRaisesRegex(UserError, "Quinn must correct the user name or password in their"):
            user.with_user(admin).action_exchange_sync_now()
        graph_user, _remote = self.graph_user(self.env, "rosa")
        graph_mailbox = graph_user._exchange_mailbox()
        self.assertIn("Only Rosa can fix it: they must click Connect",
                      graph_mailbox.with_user(admin)._exchange_lockout_sentence())

    def test_test_connection_on_the_tab_does_not_send_the_user_to_the_tab(self):
        self.env["ir.config_parameter"].sudo().set_param("exchange_connector.max_auth_failures", 5)
        user, _remote = self.ews_user(self.env, "sonja", password="wrong-password")
        me = user.with_user(user)
        on_tab = me.with_context(exchange_on_tab=True).action_exchange_test_connection()["params"]["message"]
        self.assertEqual(on_tab, "Exchange refused the user name or password: correct them.")
        elsewhere = me.action_exchange_test_connection()["params"]["message"]
        self.assertIn("correct them in your preferences (My Preferences, tab Office 365 / Exchange)",
                      elsewhere)
        admin = new_test_user(self.env, login="sonja.admin", groups="base.group_system,base.group_user")
        for_admin = user.with_user(admin).action_exchange_test_connection()["params"]["message"]
        self.assertIn("of Sonja: they must correct them in their preferences", for_admin)

    def test_certificate_and_unreachable_server_are_worded_for_their_reader(self):
        admin = new_test_user(self.env, login="tess.admin", groups="base.group_system,base.group_user")
        user, _remote = self.ews_user(self.env, "tess", exchange_ca_bundle=False)
        mailbox = user._exchange_mailbox()
        me = user.with_user(user)
        host = self.tenant.host

        def test_connection(who, on_tab):
            answer = who.with_context(exchange_on_tab=on_tab).action_exchange_test_connection()
            return answer["params"]["message"]

        # The user on the tab: what to do, not where to go; never "reconnect".
        self.assertEqual(test_connection(me, True),
                         f"The certificate of {host} is not trusted: paste your company's CA certificate "
                         "under Trusted CA certificates, then click Test connection.")
        self.assertIn("under Trusted CA certificates in your preferences (My Preferences, tab Office 365 / "
                      "Exchange)", test_connection(me, False), "elsewhere: sent to the tab")
        # An administrator on the user's form: what that user must do, and where.
        for_admin = test_connection(user.with_user(admin), True)
        self.assertIn("not trusted for the mailbox of Tess: they must paste their company's CA certificate "
                      "under Trusted CA certificates in their preferences", for_admin)
        self.assertEqual(mailbox.last_error_kind, "ConnectionProblem:tls")
        # The text stored by the administrator's test is worded again for each reader.
        self.env.invalidate_all()
        self.assertEqual(me.exchange_last_error, test_connection(me, True),
                         "the user's tab does not show the administrator's wording")
        self.assertIn("in your preferences", me.env["exchange.mailbox"].exchange_cockpit()["last_error"])
        self.assertIn("they must paste", user.with_user(admin).exchange_last_error)

        # A server that does not answer: the EWS URL to check, by whom.
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            closed_port = probe.getsockname()[1]
        user.exchange_ews_url = f"https://127.0.0.1:{closed_port}/EWS/Exchange.asmx"
        self.assertEqual(test_connection(me, True),
                         "127.0.0.1 could not be reached: check the EWS URL. If it is right, the server is "
                         "down or the Odoo server cannot reach it: tell your Exchange administrator.")
        self.assertIn("the Exchange server of Tess, could not be reached: they must check the EWS URL in "
                      "their preferences", test_connection(user.with_user(admin), True))
        for message in (test_connection(me, True), test_connection(me, False)):
            self.assertNotIn("connect", message.lower(), "an Exchange user is never told to (re)connect")

        # Office 365: Microsoft's address and certificate are the company's settings, not the user's.
        graph_user, _remote = self.graph_user(self.env, "ursula")
        self.env["ir.config_parameter"].sudo().set_param("exchange_connector.ca_bundle_path", False)
        graph_message = test_connection(graph_user.with_user(graph_user), False)
        self.assertIn("an administrator sets the CA bundle for Microsoft in Settings", graph_message)
        self.assertNotIn("preferences", graph_message)
        self.assertNotIn("Connect", graph_message)
