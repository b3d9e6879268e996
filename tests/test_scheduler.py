import threading
from datetime import timedelta
from unittest.mock import patch

from odoo import SUPERUSER_ID, api, fields
from odoo.exceptions import AccessError
from odoo.orm.environments import Transaction
from odoo.tests import TransactionCase, new_test_user, tagged
from odoo.tools import mute_logger

from odoo.addons.exchange_connector.services import ExchangeError, RunBudget, TimeBudgetExceeded
from odoo.addons.exchange_connector.services.ews import EwsBackend

from .common import ConfiguredTenantMixin, ExchangeTenantMixin, WorkerThreadsMixin, no_commit_progress
from .test_backend_seam import MIME

MAILBOX_LOGGER = "odoo.addons.exchange_connector.models.exchange_mailbox"


class WorkerKilled(BaseException):
    """What a worker killed at limit_time_real looks like to the code it was running: nothing catches it."""


class SchedulerMixin(WorkerThreadsMixin, ExchangeTenantMixin):
    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        # One mailbox at a time, in the calling cursor: the tests of the concurrent mode are in
        # test_scheduler_scale.py (threads only see committed rows).
        cls.startClassPatcher(patch.object(
            type(cls.env["exchange.mailbox"]), "_exchange_sync_concurrency", return_value=1))
        cls.Mailbox = cls.env["exchange.mailbox"]
        cls.Run = cls.env["exchange.sync.run"]

    @classmethod
    def add_mails(cls, remote, count, folder_path="Inbox/Transfer In"):
        folder = remote.ensure_folder_path(folder_path)
        for number in range(count):
            mime = MIME.replace(b"{to}", remote.email.encode())
            mime = mime.replace(b"{subject}", f"mail{number}".encode())
            remote.add_message(folder.id, mime)

    @classmethod
    def connected_ews_user(cls, env, name, due_in=timedelta(0), **values):
        user, remote = cls.connected_user("ews", name, env=env, **values)
        mailbox = user._exchange_mailbox()
        mailbox.next_sync = fields.Datetime.now() + due_in
        return user, remote, mailbox

    @classmethod
    def commit_ews_users(cls, prefix, count):
        """``count`` connected on-premises users in committed rows (removed with the class), due in
        the order they are made, each with a mail: ``cls.user_ids``, ``cls.emails`` {user id: address}."""
        cls.addClassCleanup(cls.remove_committed_users)
        cls.user_ids, cls.emails = [], {}
        with cls.registry.cursor() as cr:
            env = api.Environment(cr, SUPERUSER_ID, {})
            for number in range(count):
                user, remote, _mailbox = cls.connected_ews_user(
                    env, f"{prefix}{number}", due_in=timedelta(minutes=number - 10))
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

    @staticmethod
    def ews_pages_of(size):
        """Patch the EWS backends to list folders ``size`` changes per page (the seam uses the default)."""
        init = EwsBackend.__init__

        def init_with_small_pages(backend, *args, **kwargs):
            init(backend, *args, **kwargs)
            backend.page_size = size

        return patch.object(EwsBackend, "__init__", init_with_small_pages)

    def run_cron(self, budget=None):
        """``_cron_sync`` in the test transaction, which cannot commit (TestSchedulerConcurrency commits)."""
        with no_commit_progress(self.env):
            self.env["exchange.mailbox"]._cron_sync(budget=budget)

    def run_worker(self):
        """``_cron_sync`` in a cursor of its own that commits, as a cron worker runs it."""
        with self.registry.cursor() as cr:
            # The test runner holds the registry lock that Environment() takes to look
            # the registry up by name: hand it the registry instead.
            cr.transaction = Transaction(self.registry)
            api.Environment(cr, SUPERUSER_ID, {})["exchange.mailbox"]._cron_sync()


@tagged("post_install", "-at_install")
class TestScheduler(SchedulerMixin, ConfiguredTenantMixin, TransactionCase):
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

    def test_no_mailbox_starts_without_enough_time_left_in_the_cron_run(self):
        early_user, early_remote, early = self.connected_ews_user(
            self.env, "tina", due_in=timedelta(hours=-2))
        late_user, late_remote, late = self.connected_ews_user(self.env, "tom", due_in=timedelta(hours=-1))
        reported = []

        def cron_run_with_1_second_left(cron, processed=0, *, remaining=None, deactivate=False):
            if remaining is not None:
                reported.append(remaining)
            return 1.0

        with patch.object(type(self.env["ir.cron"]), "_commit_progress", cron_run_with_1_second_left):
            self.Mailbox._cron_sync()
        self.assertFalse(self.runs_of(early_user) | self.runs_of(late_user),
                         "not even the first mailbox starts")
        self.assertEqual(self.tenant.request_log.count(mailbox=early_remote.email), 0)
        self.assertEqual(self.Mailbox.search(self.Mailbox._due_domain()) & (early | late), early | late)
        self.assertGreaterEqual(reported[0], 2, "both are reported as remaining: Odoo runs the job again")

        # The administrator's budget cuts the time of a run outside the cron runner as well.
        self.env["ir.config_parameter"].set_param("exchange_connector.cron_time_budget", "1")
        self.run_cron()
        self.assertFalse(self.runs_of(early_user) | self.runs_of(late_user))
        self.assertEqual(self.tenant.request_log.count(mailbox=late_remote.email), 0)

    def test_the_deadline_is_checked_before_every_mailbox(self):
        early_user, early_remote, early = self.connected_ews_user(
            self.env, "tilda", due_in=timedelta(hours=-2))
        late_user, late_remote, late = self.connected_ews_user(self.env, "theo", due_in=timedelta(hours=-1))
        self.add_mails(early_remote, 1)
        now = [0.0]
        import_page = type(self.Mailbox)._import_message_page

        def import_page_until_1_second_is_left(mailbox, folder_kind, page, run):
            import_page(mailbox, folder_kind, page, run)
            now[0] = 9

        def budget_on_the_test_clock(seconds):
            return RunBudget(seconds, clock=lambda: now[0])

        # 10 seconds left in the cron run, and a budget of 60: the cron's 10 count.
        with patch.object(type(self.env["ir.cron"]), "_commit_progress", return_value=10.0), \
                patch(f"{MAILBOX_LOGGER}.RunBudget", budget_on_the_test_clock), \
                patch.object(type(self.Mailbox), "_import_message_page",
                             import_page_until_1_second_is_left):
            self.Mailbox._cron_sync()
        self.assertEqual(set(self.runs_of(early_user).mapped("state")), {"done"})
        self.assertFalse(early.sync_lease_until, "the lease ends with the sync")
        self.assertFalse(self.runs_of(late_user), "1 second left: the next mailbox does not start")
        self.assertEqual(self.tenant.request_log.count(mailbox=late_remote.email), 0)
        self.assertIn(late, self.Mailbox.search(self.Mailbox._due_domain()))

    def test_a_live_lease_is_skipped_and_an_expired_one_taken_over(self):
        busy_user, busy_remote, busy = self.connected_ews_user(self.env, "bea", due_in=timedelta(hours=-2))
        dead_user, dead_remote, dead = self.connected_ews_user(self.env, "dirk", due_in=timedelta(hours=-1))
        now = fields.Datetime.now()
        busy.write({"sync_lease_until": now + timedelta(minutes=2), "sync_lease_token": "a-running-worker"})
        dead.write({"sync_lease_until": now - timedelta(seconds=1), "sync_lease_token": "a-dead-worker",
                    "sync_requested": True})
        seen_during_sync = []
        import_page = type(self.Mailbox)._import_message_page

        def import_page_observed(mailbox, folder_kind, page, run):
            import_page(mailbox, folder_kind, page, run)
            seen_during_sync.append(
                (mailbox.sync_lease_until, mailbox.sync_lease_token, mailbox.sync_requested))

        with patch.object(type(self.Mailbox), "_import_message_page", import_page_observed):
            self.run_cron()

        self.assertFalse(self.runs_of(busy_user))
        self.assertEqual(self.tenant.request_log.count(mailbox=busy_remote.email), 0)
        self.assertEqual(busy.sync_lease_token, "a-running-worker", "another worker's lease is left alone")
        self.assertEqual(set(self.runs_of(dead_user).mapped("state")), {"done"})
        self.assertEqual(set(self.runs_of(dead_user).mapped("trigger")), {"manual"})
        lease_until, token, requested = seen_during_sync[0]
        self.assertGreater(lease_until, fields.Datetime.now() + timedelta(seconds=60), "budget plus margin")
        self.assertNotIn(token, (False, "a-dead-worker"))
        self.assertFalse(requested, "the request is cleared when the sync starts")
        self.assertEqual((dead.sync_lease_until, dead.sync_lease_token, dead.sync_requested),
                         (False, False, False))
        self.assertGreater(dead.next_sync, fields.Datetime.now() + timedelta(minutes=14))

    def test_a_crash_after_the_second_page_keeps_the_pages_before(self):
        user, remote, mailbox = self.connected_ews_user(self.env, "pia", due_in=timedelta(hours=-1))
        self.add_mails(remote, 5)
        states = []
        import_page = type(self.Mailbox)._import_message_page

        def import_page_crashing_at_the_third(mailbox, folder_kind, page, run):
            import_page(mailbox, folder_kind, page, run)
            if folder_kind == "in":
                states.append(page.state)
                if len(states) == 3:
                    raise ValueError("a bug in the mail import")

        with patch.object(type(self.Mailbox), "_import_message_page", import_page_crashing_at_the_third), \
                self.ews_pages_of(2), mute_logger(MAILBOX_LOGGER):
            self.run_cron()
        crash = self.runs_of(user, "mails")
        self.assertEqual((crash.state, crash.exc_name, crash.count_skipped), ("failed", "ValueError", 4))
        self.assertEqual(mailbox.mails_in_state, states[1], "the state saved is that of the second page")

        mailbox.next_sync = fields.Datetime.now() - timedelta(seconds=1)
        with self.ews_pages_of(2):
            self.run_cron()
        resumed = self.runs_of(user, "mails")[-1]
        self.assertEqual((resumed.state, resumed.count_skipped), ("done", 1), "only the third page is redone")

    def test_the_administrators_minimum_interval_applies_to_existing_users(self):
        user, _remote, mailbox = self.connected_ews_user(
            self.env, "mira", due_in=timedelta(minutes=-1), exchange_sync_interval=5)
        self.env["ir.config_parameter"].set_param("exchange_connector.min_sync_interval", "60")
        self.run_cron()
        self.assertEqual(set(self.runs_of(user).mapped("state")), {"done"})
        self.assertGreater(mailbox.next_sync, fields.Datetime.now() + timedelta(minutes=59))

    def ghost_run(self, user, mailbox, minutes_ago):
        """What a worker killed mid-sync leaves: a run "Started", and a lease nobody releases."""
        started = fields.Datetime.now() - timedelta(minutes=minutes_ago)
        run = self.Run._start(user, "mails")
        run.date_started = started
        mailbox.write({"sync_lease_until": started + timedelta(minutes=3), "sync_lease_token": "dead-worker"})
        return run

    def test_the_next_run_closes_a_dead_workers_run(self):
        user, _remote, mailbox = self.connected_ews_user(self.env, "gustav", due_in=timedelta(minutes=-5))
        ghost = self.ghost_run(user, mailbox, minutes_ago=10)
        lease_expired = mailbox.sync_lease_until
        other_user, _other_remote, other_mailbox = self.connected_ews_user(self.env, "greta",
                                                                          due_in=timedelta(hours=1))
        other_ghost = self.ghost_run(other_user, other_mailbox, minutes_ago=1)
        other_mailbox.sync_lease_until = fields.Datetime.now() + timedelta(minutes=2)

        self.run_cron()

        self.assertEqual(ghost.state, "interrupted")
        self.assertEqual(ghost.date_done, lease_expired, "closed when the dead worker's lease ended")
        self.assertEqual(ghost.exc_name, "WorkerInterrupted")
        self.assertIn("stopped before the end", ghost.exc_message)
        new_runs = self.Run.search([("user_id", "=", user.id), ("id", "!=", ghost.id)])
        self.assertEqual(set(new_runs.mapped("state")), {"done"})
        self.assertEqual(other_ghost.state, "started", "a live lease: its worker may still be running")

    def test_runs_of_mailboxes_no_sync_takes_any_more_are_closed_by_the_autovacuum(self):
        user, _remote, mailbox = self.connected_ews_user(self.env, "gisela", due_in=timedelta(hours=1))
        ghost = self.ghost_run(user, mailbox, minutes_ago=2 * 24 * 60)
        user._exchange_mark_disconnected()
        recent = self.ghost_run(*self.connected_ews_user(self.env, "gino", due_in=timedelta(hours=1))[::2],
                                minutes_ago=5)
        self.Run._gc_interrupted_runs()
        self.assertEqual(ghost.state, "interrupted")
        self.assertEqual(recent.state, "started", "left to the next sync of its mailbox")


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
        cls.commit_ews_users("conc", 5)

    def test_two_workers_never_sync_the_same_mailbox(self):
        # Worker "first" leases the most overdue mailbox and stays inside its sync until worker
        # "second" has done a complete pass. "second" must skip the leased one
        # and sync the others; "first" then finds those no longer due.
        first_inside, second_done = threading.Event(), threading.Event()
        synced = {"first": [], "second": []}
        import_page = type(self.env["exchange.mailbox"])._import_message_page

        def import_page_observed(mailbox, folder_kind, page, run):
            import_page(mailbox, folder_kind, page, run)
            worker = threading.current_thread().name
            if folder_kind == "in" and mailbox.id not in synced[worker]:
                synced[worker].append(mailbox.id)
            if worker == "first" and not first_inside.is_set():
                first_inside.set()
                second_done.wait(timeout=60)

        with patch.object(type(self.env["exchange.mailbox"]), "_import_message_page", import_page_observed):
            self.run_side_by_side(self.run_worker, self.run_worker, first_inside, second_done)

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
        self.assertEqual(len(synced["second"]), 4, "the second worker skipped only the leased mailbox")
        self.assertEqual(sorted(all_synced), sorted(mailbox_ids))
        for email in self.emails.values():
            self.assertEqual(self.tenant.request_log.count(endpoint="SyncFolderItems", mailbox=email), 3,
                             "one listing of each transfer folder and of the calendar per mailbox")


@tagged("post_install", "-at_install")
class TestSchedulerLease(SchedulerMixin, TransactionCase):
    """The lease and the per-page commits, seen from other cursors, as users and workers see them.

    Each test commits its own users (a worker runs in a cursor of its own) and removes them.
    """

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.start_tenant()  # on-premises mailboxes only: no company settings to commit

    def committed_user(self, name, due_in=timedelta(minutes=-1), mails=0):
        with self.registry.cursor() as cr:
            env = api.Environment(cr, SUPERUSER_ID, {})
            user, remote, mailbox = self.connected_ews_user(env, name, due_in=due_in)
            user_id, mailbox_id = user.id, mailbox.id
        self.add_mails(remote, mails)
        self.addCleanup(self.remove_committed_user, user_id)
        return user_id, remote, mailbox_id

    def remove_committed_user(self, user_id):
        with self.registry.cursor() as cr:
            env = api.Environment(cr, SUPERUSER_ID, {})
            user = env["res.users"].browse(user_id)
            partner = user.partner_id
            env["exchange.sync.run"].search([("user_id", "=", user_id)]).unlink()
            env["exchange.mailbox"].search([("user_id", "=", user_id)]).unlink()
            user.unlink()
            partner.unlink()

    def read_committed(self, model, record_id, *field_names):
        with self.registry.cursor() as cr:
            record = api.Environment(cr, SUPERUSER_ID, {})[model].browse(record_id)
            return [record[name] for name in field_names]

    def runs_committed(self, user_id, kind="mails"):
        with self.registry.cursor() as cr:
            runs = api.Environment(cr, SUPERUSER_ID, {})["exchange.sync.run"].search(
                [("user_id", "=", user_id), ("kind", "=", kind)], order="id")
            return [(run.state, run.exc_name, run.count_skipped) for run in runs]

    def paused_before_the_first_page(self):
        """Patch the EWS listing to wait, before its first page, until the test resumes it.

        The pause is between two pages of the sync, where a worker talks to Microsoft.
        """
        paused, resume = threading.Event(), threading.Event()
        sync_messages = EwsBackend.sync_messages

        def sync_messages_pausing(backend, folder, state, **kwargs):
            for page in sync_messages(backend, folder, state, **kwargs):
                if not paused.is_set():
                    paused.set()
                    resume.wait(timeout=60)
                yield page

        self.addCleanup(resume.set)
        return patch.object(EwsBackend, "sync_messages", sync_messages_pausing), paused, resume

    def as_user_without_waiting(self, user_id, method):
        """Call ``method`` on the user, in a cursor of its own that fails instead of waiting for a lock."""
        with self.registry.cursor() as cr:
            cr.transaction = Transaction(self.registry)
            # Not a sleep: only a bound, so that a row locked by the sync fails the test, not hangs it.
            cr.execute("SET LOCAL lock_timeout = '5s'")
            user = api.Environment(cr, SUPERUSER_ID, {})["res.users"].browse(user_id)
            getattr(user.with_user(user), method)()

    def user_acts_while_the_sync_waits(self, user_id, method, pausing, paused, resume):
        """A worker syncs with ``pausing`` applied; the user calls ``method`` once ``paused`` is set,
        then the worker is resumed and finishes."""
        with pausing:
            join = self.in_thread(self.run_worker, "syncing")
            self.assertTrue(paused.wait(timeout=60))
            self.as_user_without_waiting(user_id, method)
            resume.set()
            join()

    def test_a_killed_worker_loses_only_the_page_it_was_on(self):
        user_id, _remote, mailbox_id = self.committed_user("kilian", mails=5)
        self.enterContext(self.ews_pages_of(2))
        states = []
        import_page = type(self.env["exchange.mailbox"])._import_message_page

        def import_page_killed_at_the_third(mailbox, folder_kind, page, run):
            import_page(mailbox, folder_kind, page, run)
            if folder_kind == "in":
                states.append(page.state)
                if len(states) == 3:
                    raise WorkerKilled()

        with patch.object(type(self.env["exchange.mailbox"]), "_import_message_page",
                          import_page_killed_at_the_third), self.assertRaises(WorkerKilled):
            self.in_thread(self.run_worker, "killed")()

        saved_state, lease_until = self.read_committed(
            "exchange.mailbox", mailbox_id, "mails_in_state", "sync_lease_until")
        self.assertEqual(saved_state, states[1], "pages 1 and 2 were committed with their state")
        self.assertEqual(self.runs_committed(user_id), [("started", False, 4)])
        self.assertGreater(lease_until, fields.Datetime.now(), "the dead worker's lease still holds")
        self.in_thread(self.run_worker, "too early")()
        self.assertEqual(len(self.runs_committed(user_id)), 1, "no second worker while the lease lives")

        with self.registry.cursor() as cr:
            api.Environment(cr, SUPERUSER_ID, {})["exchange.mailbox"].browse(mailbox_id).sync_lease_until = \
                fields.Datetime.now() - timedelta(seconds=1)
        self.in_thread(self.run_worker, "after the lease")()
        self.assertEqual(self.runs_committed(user_id)[-1], ("done", False, 1), "only the lost page is redone")

    def test_disconnect_during_a_sync_does_not_wait_for_it(self):
        user_id, _remote, mailbox_id = self.committed_user("dora", mails=1)
        self.user_acts_while_the_sync_waits(
            user_id, "action_exchange_disconnect", *self.paused_before_the_first_page())
        state, saved_state, lease, next_sync = self.read_committed(
            "exchange.mailbox", mailbox_id, "state", "mails_in_state", "sync_lease_until", "next_sync")
        self.assertEqual((state, saved_state, lease, next_sync), ("not_connected", False, False, False),
                         "the sync stopped without writing its state over the disconnection")
        self.assertEqual(self.runs_committed(user_id), [("partial", "MailboxReleased", 0)])

    def test_sync_now_during_a_sync_is_kept(self):
        user_id, _remote, mailbox_id = self.committed_user("sven", mails=1)
        self.user_acts_while_the_sync_waits(
            user_id, "action_exchange_sync_now", *self.paused_before_the_first_page())
        self.assertEqual(self.runs_committed(user_id), [("done", False, 1)])
        requested, lease = self.read_committed(
            "exchange.mailbox", mailbox_id, "sync_requested", "sync_lease_until")
        self.assertEqual((requested, lease), (True, False), "the request outlives the sync that was running")
        with self.registry.cursor() as cr:
            Mailbox = api.Environment(cr, SUPERUSER_ID, {})["exchange.mailbox"]
            self.assertIn(mailbox_id, Mailbox.search(Mailbox._due_domain()).ids, "due again at once")

        self.in_thread(self.run_worker, "requested")()
        self.assertEqual(self.read_committed("exchange.mailbox", mailbox_id, "sync_requested"), [False])
        with self.registry.cursor() as cr:
            runs = api.Environment(cr, SUPERUSER_ID, {})["exchange.sync.run"].search(
                [("user_id", "=", user_id), ("kind", "=", "mails")], order="id")
            self.assertEqual(runs.mapped("trigger"), ["cron", "manual"])


    def synced_once_then_due_with_a_new_mail(self, name):
        """A committed user whose transfer folder the first sync remembered, due again with a new mail."""
        user_id, remote, mailbox_id = self.committed_user(name, mails=1)
        self.in_thread(self.run_worker, "first")()
        self.add_mails(remote, 1)
        with self.registry.cursor() as cr:
            api.Environment(cr, SUPERUSER_ID, {})["exchange.mailbox"].browse(mailbox_id).next_sync = \
                fields.Datetime.now() - timedelta(minutes=1)
        return user_id, mailbox_id

    def assert_synced_and_requested_again(self, user_id, mailbox_id):
        runs = self.runs_committed(user_id)
        self.assertEqual(len(runs), 2)
        self.assertEqual(runs[-1][:2], ("done", False), "the sync that was running is not cut short")
        requested, lease = self.read_committed(
            "exchange.mailbox", mailbox_id, "sync_requested", "sync_lease_until")
        self.assertEqual((requested, lease), (True, False), "the request outlives the sync that was running")

    def test_sync_now_while_a_known_folder_is_listed_does_not_stop_the_sync(self):
        # The transaction's snapshot dates from before the request to Microsoft: the lease written
        # after it would meet the user's committed write (a serialization failure) unless read afresh.
        user_id, mailbox_id = self.synced_once_then_due_with_a_new_mail("xena")
        self.user_acts_while_the_sync_waits(
            user_id, "action_exchange_sync_now", *self.paused_before_the_first_page())
        self.assert_synced_and_requested_again(user_id, mailbox_id)

    def test_sync_now_during_a_page_redoes_the_page(self):
        user_id, mailbox_id = self.synced_once_then_due_with_a_new_mail("yuri")
        inside, resume = threading.Event(), threading.Event()
        self.addCleanup(resume.set)
        imports = []
        import_page = type(self.env["exchange.mailbox"])._import_message_page

        def import_page_interrupted_once(mailbox, folder_kind, page, run):
            import_page(mailbox, folder_kind, page, run)
            imports.append(page.state)
            if not inside.is_set():
                inside.set()
                resume.wait(timeout=60)

        pausing = patch.object(type(self.env["exchange.mailbox"]), "_import_message_page",
                               import_page_interrupted_once)
        # PostgreSQL's refusal of the first save is logged by the cursor: it is the point of the test.
        with mute_logger("odoo.sql_db"):
            self.user_acts_while_the_sync_waits(user_id, "action_exchange_sync_now", pausing, inside, resume)
        self.assert_synced_and_requested_again(user_id, mailbox_id)
        self.assertEqual(imports[0], imports[1], "the page whose state lost to the user's write was redone")
        self.assertEqual(self.read_committed("exchange.mailbox", mailbox_id, "mails_in_state"), [imports[-1]])


    def test_sync_now_during_the_last_request_leaves_the_outcome_written(self):
        user_id, _remote, mailbox_id = self.committed_user("zoe")
        self.in_thread(self.run_worker, "first")()
        with self.registry.cursor() as cr:
            api.Environment(cr, SUPERUSER_ID, {})["exchange.mailbox"].browse(mailbox_id).write({
                "last_error": "An earlier failure",
                "next_sync": fields.Datetime.now() - timedelta(minutes=1),
            })
        # Nothing new: no page, no commit after the calendar's listing, where the user clicks;
        # the seam then clears the earlier error on the mailbox row as the sync ends.
        paused, resume = threading.Event(), threading.Event()
        self.addCleanup(resume.set)
        sync_events = EwsBackend.sync_events

        def sync_events_pausing(backend, *args):
            paused.set()
            resume.wait(timeout=60)
            yield from sync_events(backend, *args)

        self.user_acts_while_the_sync_waits(
            user_id, "action_exchange_sync_now", patch.object(EwsBackend, "sync_events", sync_events_pausing),
            paused, resume)
        self.assertEqual(
            self.read_committed(
                "exchange.mailbox", mailbox_id, "sync_requested", "sync_lease_until", "last_error"),
            [True, False, False], "the sync ended normally: request kept, no lease left, old error cleared")


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
