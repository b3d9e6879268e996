from unittest.mock import patch

from odoo.tests import HttpCase, new_test_user, tagged

from .common import ExchangeTenantMixin

DISCUSS_URL = "/odoo/discuss"


@tagged("post_install", "-at_install")
class TestDiscussSync(ExchangeTenantMixin, HttpCase):
    """The manual "Sync now" of Discuss and of the user forms, clicked in a browser.

    A click only asks for a sync (``sync_requested`` and a trigger of the scheduled job): the
    job does the work, never the HTTP request.
    """

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.start_tenant(cls.env)
        cls.cron = cls.env.ref("exchange_connector.ir_cron_exchange_sync")

    def connected_ews_user(self, name):
        """An on-premises mailbox connected by a real Test connection, never synced yet, past its
        first-sync preview.

        The login is ``<name>.test``, also its password (``name`` of 5 letters or more).
        """
        user, remote = self.ews_user(self.env, name)
        user.with_user(user).action_exchange_test_connection()
        mailbox = user._exchange_mailbox()
        self.assertEqual(mailbox.state, "connected", mailbox.last_error)
        self.assertFalse(mailbox.last_sync_done)
        mailbox.first_sync_pending = False  # the user has seen the first-sync preview
        return user, remote, mailbox

    def trigger_count(self):
        return self.env["ir.cron.trigger"].search_count([("cron_id", "=", self.cron.id)])

    def runs_of(self, user):
        return self.env["exchange.sync.run"].search([("user_id", "=", user.id)])

    def run_cron(self):
        # The test cursor cannot commit: _commit_progress only reports "time left".
        with patch.object(type(self.env["ir.cron"]), "_commit_progress", return_value=float("inf")):
            self.env["exchange.mailbox"]._cron_sync()

    def test_sync_now_from_discuss_is_done_by_the_scheduled_job(self):
        user, remote, mailbox = self.connected_ews_user("evelyn")
        summary = user.with_user(user).exchange_sync_summary()
        self.assertEqual(summary, {
            "configured": True, "state": "connected", "sync_requested": False,
            "last_sync": False, "last_error": False, "account_type": "ews",
        })
        triggers = self.trigger_count()
        requests_before = self.tenant.request_log.count(mailbox=remote.email)

        self.start_tour(DISCUSS_URL, "exchange_connector_discuss_sync", login=user.login)

        self.env.invalidate_all()
        self.assertTrue(mailbox.sync_requested)
        self.assertEqual(self.trigger_count(), triggers + 1, "the click triggers the scheduled job")
        self.assertFalse(self.runs_of(user), "the browser's request does not sync by itself")
        self.assertEqual(self.tenant.request_log.count(mailbox=remote.email), requests_before,
                         "the browser's request does not talk to Exchange")

        self.run_cron()

        runs = self.runs_of(user)
        self.assertTrue(runs)
        self.assertEqual(set(runs.mapped("trigger")), {"manual"})
        self.assertEqual(set(runs.mapped("state")), {"done"})
        summary = user.with_user(user).exchange_sync_summary()
        self.assertFalse(summary["sync_requested"])
        self.assertTrue(summary["last_sync"], "the Discuss entry now shows when the last sync ended")

    def test_user_without_mailbox_sees_no_entry(self):
        user = new_test_user(self.env, login="paula.s7")
        self.assertEqual(user.with_user(user).exchange_sync_summary(), {"configured": False})
        self.start_tour(DISCUSS_URL, "exchange_connector_discuss_no_mailbox", login=user.login)

    def test_locked_mailbox_leads_to_reconnect_instead_of_sync(self):
        user, _remote = self.ews_user(self.env, "larissa")
        user.sudo().exchange_ews_password = "not the password"
        for _attempt in range(3):
            self.refused_sign_in(user)
        mailbox = user._exchange_mailbox()
        self.assertEqual(mailbox.state, "auth_failed")
        triggers = self.trigger_count()

        self.start_tour(DISCUSS_URL, "exchange_connector_discuss_locked", login=user.login)

        self.env.invalidate_all()
        self.assertEqual(mailbox.state, "auth_failed")
        self.assertFalse(mailbox.sync_requested)
        self.assertEqual(self.trigger_count(), triggers)

    def test_sync_now_in_my_preferences(self):
        user, _remote, mailbox = self.connected_ews_user("petra")
        triggers = self.trigger_count()

        self.start_tour("/odoo", "exchange_connector_preferences_sync", login=user.login)

        self.env.invalidate_all()
        self.assertTrue(mailbox.sync_requested)
        self.assertEqual(self.trigger_count(), triggers + 1)
        self.assertFalse(self.runs_of(user))

    def test_administrator_asks_for_a_sync_on_the_user_form(self):
        user, _remote, mailbox = self.connected_ews_user("ulrich")
        triggers = self.trigger_count()

        self.start_tour(f"/odoo/action-base.action_res_users/{user.id}", "exchange_connector_user_form_sync",
                        login="admin")

        self.env.invalidate_all()
        self.assertTrue(mailbox.sync_requested)
        self.assertEqual(self.trigger_count(), triggers + 1)
