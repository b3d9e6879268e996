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
