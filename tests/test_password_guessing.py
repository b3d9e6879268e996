from odoo.tests import TransactionCase, tagged

from .common import ExchangeTenantMixin


@tagged("post_install", "-at_install")
class TestPasswordGuessing(ExchangeTenantMixin, TransactionCase):
    """Trying passwords through Test connection, writing a new one before each try."""

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.start_tenant(cls.env)
        params = cls.env["ir.config_parameter"].sudo()
        params.set_param("exchange_connector.max_sign_in_failures_per_account", 3)
        params.set_param("exchange_connector.max_sign_in_failures_per_user", 5)

    def setUp(self):
        super().setUp()
        self.tenant.request_log.clear()

    def guess(self, user, password, **values):
        """What an attacker does: write a password (which lifts the lockout), then Test connection."""
        me = user.with_user(user)
        me.write(dict(values, exchange_ews_password=password))
        return me._exchange_check_connection()["message"]

    def ews_requests(self):
        return self.tenant.request_log.count(protocol="ews")

    def test_writes_of_the_password_do_not_reset_the_count(self):
        user, remote = self.ews_user(self.env, "mallory")
        for number in range(3):
            self.assertIn("refused the user name or password", self.guess(user, f"guess{number}"))
        served = self.ews_requests()
        message = self.guess(user, "guess3")
        self.assertIn("refused the password 3 times lately", message)
        self.assertEqual(self.ews_requests(), served, "nothing more reaches Exchange")
        # Not even the right password, until the window has passed: the guesser cannot tell.
        self.assertIn("refused the password 3 times lately", self.guess(user, "Passw0rd!"))
        failures = self.env["exchange.sign.in.failure"].search([])
        failures.write({"failed_at": "2000-01-01 00:00:00"})
        self.assertIn(f"Connected to {remote.email}", self.guess(user, "Passw0rd!"))

    def test_one_odoo_user_trying_many_accounts_is_stopped_too(self):
        user, _remote = self.ews_user(self.env, "trudy")
        for name in ("victim1", "victim2", "victim3"):
            remote = self.new_remote_mailbox(name)
            for number in range(2 if name != "victim3" else 1):
                self.assertIn("refused the user name or password",
                              self.guess(user, f"guess{number}", exchange_ews_username=remote.email))
        served = self.ews_requests()
        fresh = self.new_remote_mailbox("victim4")
        self.assertIn("refused the password 5 times lately",
                      self.guess(user, "guess", exchange_ews_username=fresh.email))
        self.assertEqual(self.ews_requests(), served)
        # The accounts' other users are not stopped by trudy's tries.
        owner, _unused = self.ews_user(self.env, "olga", exchange_email=fresh.email,
                                       exchange_ews_username=fresh.email)
        self.assertIn("Connected to", owner.with_user(owner)._exchange_check_connection()["message"])
