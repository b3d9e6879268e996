import sys
import threading
import traceback
from datetime import timedelta
from unittest.mock import patch

from odoo import SUPERUSER_ID, api, fields
from odoo.exceptions import AccessError
from odoo.orm.environments import Transaction
from odoo.tests import TransactionCase, new_test_user, tagged
from odoo.tools import mute_logger

from odoo.addons.exchange_connector.services import ExchangeError, RunBudget, TimeBudgetExceeded

from .common import ExchangeTenantMixin
from .test_backend_seam import MIME

MAILBOX_LOGGER = "odoo.addons.exchange_connector.models.exchange_mailbox"


def _no_commit_progress(self, processed=0, *, remaining=None, deactivate=False):
    return float("inf")


class SchedulerMixin(ExchangeTenantMixin):
    @classmethod
    def add_mails(cls, remote, count, folder_path="Inbox/Transfer In"):
        folder = remote.ensure_folder_path(folder_path)
        for number in range(count):
            mime = MIME.replace(b"{to}", remote.email.encode())
            mime = mime.replace(b"{subject}", f"mail{number}".encode())
            remote.add_message(folder.id, mime)

    @classmethod
    def connected_ews_user(cls, env, name, due_in=timedelta(0), **values):
        user, remote = cls.ews_user(env, name, **values)
        mailbox = user._exchange_mark_connected(remote.email)
        mailbox.next_sync = fields.Datetime.now() + due_in
        return user, remote, mailbox


@tagged("post_install", "-at_install")
class TestScheduler(SchedulerMixin, TransactionCase):
    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.start_tenant(cls.env)
        cls.Mailbox = cls.env["exchange.mailbox"]
        cls.Run = cls.env["exchange.sync.run"]

    def setUp(self):
        super().setUp()
        self.tenant.knobs.reset()
        self.tenant.request_log.clear()

    def run_cron(self, budget=None):
        # The test cursor cannot commit; the real commits are in TestSchedulerConcurrency.
        with patch.object(type(self.env["ir.cron"]), "_commit_progress", _no_commit_progress):
            self.Mailbox._cron_sync(budget=budget)

    def runs_of(self, user, kind=None):
        domain = [("user_id", "=", user.id)] + ([("kind", "=", kind)] if kind else [])
        return self.Run.search(domain, order="id")

    def test_due_mailbox_is_synced_and_the_interval_respected(self):
        due_user, due_remote, mailbox = self.connected_ews_user(
            self.env, "dina", due_in=timedelta(minutes=-1), exchange_sync_contacts=False)
        idle_user, idle_remote, _idle = self.connected_ews_user(self.env, "ivo", due_in=timedelta(hours=1))
        self.add_mails(due_remote, 3)

        self.run_cron()

        runs = self.runs_of(due_user)
        self.assertEqual(sorted(runs.mapped("kind")), ["events", "mails"], "contacts are switched off")
        self.assertEqual(set(runs.mapped("state")), {"done"})
        self.assertEqual(set(runs.mapped("trigger")), {"cron"})
        self.assertEqual(self.runs_of(due_user, "mails").count_skipped, 3)
        self.assertEqual(mailbox.mails_in_folder_id, due_remote.folder_by_path("Inbox/Transfer In").id)
        self.assertTrue(mailbox.mails_in_state and mailbox.mails_out_state and mailbox.events_state)
        self.assertTrue(due_remote.folder_by_path("Inbox/Transfer Out"), "missing transfer folders appear")
        self.assertGreater(mailbox.next_sync, fields.Datetime.now() + timedelta(minutes=14))
        self.assertFalse(self.runs_of(idle_user))
        self.assertEqual(self.tenant.request_log.count(mailbox=idle_remote.email), 0)

        # Not due again before its interval: nothing happens, not even a request.
        served = self.tenant.request_log.count(mailbox=due_remote.email)
        self.run_cron()
        self.assertEqual(len(self.runs_of(due_user)), 2)
        self.assertEqual(self.tenant.request_log.count(mailbox=due_remote.email), served)

        # Once due, the sync continues from the saved state: only the new mail is listed.
        self.add_mails(due_remote, 1)
        mailbox.next_sync = fields.Datetime.now() - timedelta(seconds=1)
        self.run_cron()
        self.assertEqual(self.runs_of(due_user, "mails")[-1:].count_skipped, 1)

    def test_manual_trigger_syncs_at_the_next_run(self):
        user, remote, mailbox = self.connected_ews_user(self.env, "manu", due_in=timedelta(hours=1))
        other, _other_remote, _other_mailbox = self.connected_ews_user(
            self.env, "otto", due_in=timedelta(hours=1))
        self.run_cron()
        self.assertFalse(self.runs_of(user))

        cron = self.env.ref("exchange_connector.ir_cron_exchange_sync")
        triggers = self.env["ir.cron.trigger"].search_count([("cron_id", "=", cron.id)])
        action = user.with_user(user).action_exchange_sync_now()
        self.assertEqual(action["tag"], "display_notification")
        self.assertTrue(mailbox.sync_requested)
        self.assertEqual(self.env["ir.cron.trigger"].search_count([("cron_id", "=", cron.id)]), triggers + 1)
        with self.assertRaises(AccessError):
            other.with_user(user).action_exchange_sync_now()

        self.run_cron()
        runs = self.runs_of(user)
        self.assertEqual(set(runs.mapped("trigger")), {"manual"})
        self.assertEqual(set(runs.mapped("state")), {"done"})
        self.assertFalse(mailbox.sync_requested)
        self.assertGreater(mailbox.next_sync, fields.Datetime.now() + timedelta(minutes=14))
        self.assertFalse(self.runs_of(other), "only the user who asked is synced")
        self.assertTrue(self.tenant.request_log.count(mailbox=remote.email))

    def test_one_users_failure_never_stops_the_others(self):
        revoked, revoked_remote = self.graph_user(self.env, "rolf")
        revoked._exchange_mailbox().next_sync = fields.Datetime.now() - timedelta(hours=3)
        self.tenant.identity.revoke(revoked_remote.email)
        crashing, crashing_remote, crashing_mailbox = self.connected_ews_user(
            self.env, "carl", due_in=timedelta(hours=-2))
        healthy, _healthy_remote, _healthy_mailbox = self.connected_ews_user(
            self.env, "hana", due_in=timedelta(hours=-1))
        self.add_mails(crashing_remote, 2)
        import_page = type(self.Mailbox)._import_message_page

        def import_page_crashing_for_carl(mailbox, folder_kind, page, run):
            import_page(mailbox, folder_kind, page, run)
            if mailbox.user_id == crashing:
                raise ValueError("a bug in the mail import")

        with patch.object(type(self.Mailbox), "_import_message_page", import_page_crashing_for_carl), \
                mute_logger(MAILBOX_LOGGER):
            self.run_cron()

        failed = self.runs_of(revoked)
        self.assertEqual(len(failed), 1, "a refused sign-in stops that user's run at once")
        self.assertEqual((failed.state, failed.kind, failed.error_code, failed.exc_name),
                         ("failed", "mails", "invalid_grant", "AuthenticationError"))
        self.assertEqual(revoked._exchange_mailbox().auth_failures, 1)
        self.assertTrue(revoked.exchange_last_error)

        crash = self.runs_of(crashing, "mails")
        self.assertEqual((crash.state, crash.exc_name), ("failed", "ValueError"))
        self.assertEqual(crash.count_skipped, 0, "the failed page's work is rolled back")
        self.assertFalse(crashing_mailbox.mails_in_state, "and so is its state: the next run redoes it")
        self.assertEqual(self.runs_of(crashing).filtered(lambda r: r.kind != "mails").mapped("state"),
                         ["done", "done"], "the other kinds still run")

        self.assertEqual(set(self.runs_of(healthy).mapped("state")), {"done"})
        self.assertEqual(len(self.runs_of(healthy)), 3)

    def test_an_error_outside_the_kinds_is_logged_and_the_next_user_still_synced(self):
        broken, _broken_remote, broken_mailbox = self.connected_ews_user(
            self.env, "bruno", due_in=timedelta(hours=-2))
        healthy, _healthy_remote, _healthy_mailbox = self.connected_ews_user(
            self.env, "heidi", due_in=timedelta(hours=-1))
        enabled_kinds = type(self.Mailbox)._exchange_enabled_kinds

        def enabled_kinds_failing_for_bruno(mailbox):
            if mailbox.user_id == broken:
                raise RuntimeError("a bug before any kind ran")
            return enabled_kinds(mailbox)

        with patch.object(type(self.Mailbox), "_exchange_enabled_kinds", enabled_kinds_failing_for_bruno), \
                mute_logger(MAILBOX_LOGGER):
            self.run_cron()

        failed = self.runs_of(broken)
        self.assertEqual((failed.kind, failed.state, failed.exc_name),
                         ("connection", "failed", "RuntimeError"))
        self.assertGreater(broken_mailbox.next_sync, fields.Datetime.now(), "not retried in a loop")
        self.assertEqual(broken_mailbox.last_error, "a bug before any kind ran")
        self.assertEqual(set(self.runs_of(healthy).mapped("state")), {"done"})

    def test_time_budget_gives_a_partial_run_that_resumes_from_the_saved_state(self):
        user, remote = self.graph_user(self.env, "paula")
        self.tenant.knobs.set(remote.email, page_size=2)
        mailbox = user._exchange_mailbox()
        self.add_mails(remote, 5)
        now = [0.0]
        budget = RunBudget(10, clock=lambda: now[0])
        import_page = type(self.Mailbox)._import_message_page

        def import_page_then_spend_the_budget(mailbox, folder_kind, page, run):
            import_page(mailbox, folder_kind, page, run)
            now[0] = 11

        with patch.object(type(self.Mailbox), "_import_message_page", import_page_then_spend_the_budget):
            self.run_cron(budget=budget)

        partial = self.runs_of(user)
        self.assertEqual((partial.kind, partial.state, partial.exc_name, partial.count_skipped),
                         ("mails", "partial", "TimeBudgetExceeded", 2))
        self.assertTrue(mailbox.mails_in_state)
        self.assertLessEqual(mailbox.next_sync, fields.Datetime.now(), "due again at once")
        self.assertEqual(mailbox.auth_failures, 0)
        saved_state = mailbox.mails_in_state

        self.run_cron()
        resumed = self.runs_of(user, "mails")[-1]
        self.assertEqual((resumed.state, resumed.count_skipped), ("done", 3),
                         "the 2 mails done are not listed again")
        self.assertNotEqual(mailbox.mails_in_state, saved_state)
        self.assertEqual(sorted(self.runs_of(user).mapped("kind")), ["contacts", "events", "mails", "mails"])

    def test_locked_out_and_disconnected_mailboxes_are_not_synced(self):
        locked, locked_remote, locked_mailbox = self.connected_ews_user(self.env, "lotte")
        locked_mailbox.state = "auth_failed"
        gone, gone_remote, gone_mailbox = self.connected_ews_user(self.env, "gunnar")
        gone._exchange_mark_disconnected()
        self.run_cron()
        self.assertFalse(self.runs_of(locked) | self.runs_of(gone))
        self.assertEqual(self.tenant.request_log.count(mailbox=locked_remote.email), 0)
        self.assertEqual(self.tenant.request_log.count(mailbox=gone_remote.email), 0)


@tagged("post_install", "-at_install")
class TestSchedulerConcurrency(SchedulerMixin, TransactionCase):
    """Two cron workers with their own committed transactions, as in production.

    The users live in committed rows (created and removed by the class), because each worker
    runs in a cursor of its own, outside the test transaction.
    """

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.start_tenant()  # on-premises mailboxes only: no company settings to commit
        cls.addClassCleanup(cls.remove_committed_users)
        cls.user_ids, cls.emails = [], {}
        with cls.registry.cursor() as cr:
            env = api.Environment(cr, SUPERUSER_ID, {})
            for number in range(5):
                user, remote, _mailbox = cls.connected_ews_user(
                    env, f"conc{number}", due_in=timedelta(minutes=number - 10))
                cls.user_ids.append(user.id)
                cls.emails[user.id] = remote.email
                cls.add_mails(remote, 1)

    @classmethod
    def remove_committed_users(cls):
        with cls.registry.cursor() as cr:
            env = api.Environment(cr, SUPERUSER_ID, {})
            users = env["res.users"].browse(cls.user_ids).exists()
            partners = users.partner_id
            env["exchange.sync.run"].search([("user_id", "in", users.ids)]).unlink()
            env["exchange.mailbox"].search([("user_id", "in", users.ids)]).unlink()
            users.unlink()
            partners.unlink()

    def test_two_workers_never_sync_the_same_mailbox(self):
        # Worker "first" takes the most overdue mailbox and keeps it locked, inside its sync,
        # until worker "second" has done a complete pass. "second" must skip the locked one
        # and sync the others; "first" then finds those no longer due.
        first_inside, second_done = threading.Event(), threading.Event()
        synced = {"first": [], "second": []}
        errors = []
        import_page = type(self.env["exchange.mailbox"])._import_message_page

        def import_page_observed(mailbox, folder_kind, page, run):
            import_page(mailbox, folder_kind, page, run)
            worker = threading.current_thread().name
            if folder_kind == "in" and mailbox.id not in synced[worker]:
                synced[worker].append(mailbox.id)
            if worker == "first" and not first_inside.is_set():
                first_inside.set()
                second_done.wait(timeout=60)

        def work(before=None, after=None):
            try:
                if before:
                    before()
                with self.registry.cursor() as cr:
                    # The test runner holds the registry lock that Environment() takes to look
                    # the registry up by name: hand it the registry instead.
                    cr.transaction = Transaction(self.registry)
                    api.Environment(cr, SUPERUSER_ID, {})["exchange.mailbox"]._cron_sync()
            except Exception as error:  # noqa: BLE001 - re-raised in the test thread
                errors.append(error)
            finally:
                if after:
                    after()

        workers = [
            threading.Thread(target=work, name="first", kwargs={"after": first_inside.set}),
            threading.Thread(target=work, name="second",
                             kwargs={"before": lambda: first_inside.wait(timeout=60),
                                     "after": second_done.set}),
        ]
        with patch.object(type(self.env["exchange.mailbox"]), "_import_message_page", import_page_observed):
            for worker in workers:
                worker.start()
            for worker in workers:
                worker.join(timeout=90)
        hung = [worker for worker in workers if worker.is_alive()]
        self.assertFalse(hung, "a worker hung in:\n" + "".join(
            "".join(traceback.format_stack(sys._current_frames()[worker.ident])) for worker in hung))
        self.assertFalse(errors)

        with self.registry.cursor() as cr:
            env = api.Environment(cr, SUPERUSER_ID, {})
            mailbox_ids = env["exchange.mailbox"].search([("user_id", "in", self.user_ids)]).ids
            runs = env["exchange.sync.run"].search([("user_id", "in", self.user_ids), ("kind", "=", "mails")])
            runs_per_user = {user_id: len(runs.filtered(lambda r, u=user_id: r.user_id.id == u))
                             for user_id in self.user_ids}
            states = set(runs.mapped("state"))
        self.assertEqual(runs_per_user, dict.fromkeys(self.user_ids, 1), "every mailbox synced exactly once")
        self.assertEqual(states, {"done"})
        all_synced = synced["first"] + synced["second"]
        self.assertEqual(len(synced["first"]), 1)
        self.assertEqual(len(synced["second"]), 4, "the second worker skipped only the locked mailbox")
        self.assertEqual(sorted(all_synced), sorted(mailbox_ids))
        for email in self.emails.values():
            self.assertEqual(self.tenant.request_log.count(endpoint="SyncFolderItems", mailbox=email), 2,
                             "one listing of each transfer folder per mailbox")


@tagged("post_install", "-at_install")
class TestSyncLogAccess(TransactionCase):
    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.anna = new_test_user(cls.env, login="anna.log", name="Anna Log")
        cls.marco = new_test_user(cls.env, login="marco.log", name="Marco Log")
        cls.admin = new_test_user(cls.env, login="admin.log", name="Admin Log", groups="base.group_system")
        Run = cls.env["exchange.sync.run"]
        cls.anna_run = Run._start(cls.anna, "mails")
        cls.marco_run = Run._start(cls.marco, "events", "manual")

    def test_users_read_their_own_runs_and_administrators_all(self):
        Run = self.env["exchange.sync.run"]
        both = [("id", "in", (self.anna_run | self.marco_run).ids)]
        self.assertEqual(Run.with_user(self.anna).search(both), self.anna_run)
        with self.assertRaises(AccessError):
            self.marco_run.with_user(self.anna).read(["state"])
        with self.assertRaises(AccessError):
            self.anna_run.with_user(self.anna).write({"state": "done"})
        self.assertEqual(len(Run.with_user(self.admin).search(both)), 2)
        with self.assertRaises(AccessError):
            self.env["exchange.mailbox"].with_user(self.anna).search([])
        with self.assertRaises(AccessError):
            self.env["exchange.binding"].with_user(self.anna).search([])

    def test_finish_keeps_microsoft_error_details(self):
        self.anna_run._finish(
            ExchangeError("Folder gone", code="ErrorFolderNotFound", status=404, request_id="r-1"))
        self.assertEqual(
            (self.anna_run.state, self.anna_run.exc_name, self.anna_run.error_code, self.anna_run.request_id),
            ("failed", "ExchangeError", "ErrorFolderNotFound", "r-1"))
        self.marco_run._count(skipped=2)
        self.marco_run._count(skipped=3, failed=1)
        self.marco_run._finish(TimeBudgetExceeded("out of time"))
        self.assertEqual((self.marco_run.state, self.marco_run.count_skipped, self.marco_run.count_failed),
                         ("partial", 5, 1))
        self.assertTrue(self.marco_run.date_done)
