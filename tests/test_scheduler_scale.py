import re
import threading
from datetime import timedelta
from unittest.mock import patch

from odoo import SUPERUSER_ID, api, fields
from odoo.sql_db import Cursor
from odoo.tests import TransactionCase, tagged

from odoo.addons.exchange_connector.services import RunBudget

from .common import ConfiguredTenantMixin
from .test_scheduler import SchedulerMixin

WRITE = re.compile(r"^\s*(INSERT\s+INTO|UPDATE|DELETE\s+FROM)\s+\"?(\w+)", re.IGNORECASE)


class SqlWrites:
    """The INSERT, UPDATE and DELETE statements this process sends to PostgreSQL meanwhile, as
    ``(verb, table)``; ``thread`` keeps those of one thread only."""

    def __init__(self, thread=None):
        self.statements = []
        self.thread = thread or threading.current_thread()
        self._execute = Cursor.execute

    def __enter__(self):
        execute = self._execute
        statements, thread = self.statements, self.thread

        def execute_counted(cursor, query, params=None, log_exceptions=True):
            text = query.code if hasattr(query, "code") else str(query)
            match = WRITE.match(text)
            if match and threading.current_thread() is thread:
                statements.append((match.group(1).split()[0].upper(), match.group(2)))
            return execute(cursor, query, params, log_exceptions)

        self._patch = patch.object(Cursor, "execute", execute_counted)
        self._patch.start()
        return self

    def __exit__(self, *exc_info):
        self._patch.stop()


@tagged("post_install", "-at_install")
class TestNoChangeSync(SchedulerMixin, ConfiguredTenantMixin, TransactionCase):
    """A sync that finds nothing: one request per folder or calendar, one UPDATE, no log row."""

    def synced_once_then_due(self, user):
        """Sync ``user``'s mailbox a first time (folders, states), then make it due again."""
        mailbox = user._exchange_mailbox()
        mailbox.next_sync = fields.Datetime.now() - timedelta(seconds=1)
        self.run_cron()
        self.assertTrue(mailbox.mails_in_state and mailbox.events_state and mailbox.contact_folder_id)
        mailbox.next_sync = fields.Datetime.now() - timedelta(seconds=1)
        self.env.flush_all()
        self.tenant.request_log.clear()
        return mailbox

    def new_runs(self, user):
        return self.Run.search([("user_id", "=", user.id), ("id", ">", self.last_run_id)])

    def requests_of(self, email):
        return [(entry["endpoint"] if entry["protocol"] == "graph" else entry.get("operation"),
                 entry["status"])
                for entry in self.tenant.request_log.entries
                if (entry.get("mailbox") or "").lower() == email.lower()
                or entry.get("protocol") == "ews" and entry["status"] == 401]

    def assert_no_change_run(self, user, mailbox, writes):
        self.assertEqual(writes.statements, [("UPDATE", "exchange_mailbox")],
                         "one UPDATE of the mailbox: no lease, no state, no log row")
        self.assertFalse(self.new_runs(user))
        self.assertGreater(mailbox.next_sync, fields.Datetime.now() + timedelta(minutes=14))
        self.assertGreaterEqual(mailbox.last_sync_done, self.started, "the mailbox shows when it was checked")
        self.assertFalse(mailbox.sync_lease_token)

    def test_graph_mailbox_without_news_costs_three_requests_and_one_update(self):
        user, remote = self.graph_user(self.env, "gustav")
        mailbox = self.synced_once_then_due(user)
        runs_before = self.Run.search_count([("user_id", "=", user.id)])
        self.started = fields.Datetime.now().replace(microsecond=0)
        self.last_run_id = self.Run.search([], order="id desc", limit=1).id
        with SqlWrites() as writes:
            self.run_cron()
        self.assertEqual(sorted(self.requests_of(remote.email)), [
            ("/v1.0/me/calendarView/delta", 200),
            ("/v1.0/me/mailFolders/{id}/messages/delta", 200),
            ("/v1.0/me/mailFolders/{id}/messages/delta", 200),
        ], "the two transfer folders and the calendar; no folder lookup, discovery or token request")
        self.assertEqual(self.tenant.request_log.count(protocol="identity"), 0)
        self.assert_no_change_run(user, mailbox, writes)
        self.assertEqual(self.Run.search_count([("user_id", "=", user.id)]), runs_before)

        # News is still news: a mail makes a run, and its state is saved.
        self.add_mails(remote, 1)
        saved = mailbox.mails_in_state
        mailbox.next_sync = fields.Datetime.now() - timedelta(seconds=1)
        self.run_cron()
        run = self.Run.search([("user_id", "=", user.id), ("kind", "=", "mails")], limit=1)
        self.assertEqual((run.state, run.count_skipped), ("done", 1))
        self.assertNotEqual(mailbox.mails_in_state, saved)
        self.assertFalse(mailbox.sync_lease_token, "the lease written for the page is released")

    def test_ews_mailbox_without_news_costs_three_requests_and_one_update(self):
        user, remote, _mailbox = self.connected_ews_user(self.env, "elsa")
        for hours in range(40):  # the cost of a calendar without news does not grow with it
            start = fields.Datetime.now() + timedelta(hours=hours)
            remote.add_event(subject=f"Meeting {hours}", start=start, end=start + timedelta(minutes=30))
        mailbox = self.synced_once_then_due(user)
        self.started = fields.Datetime.now().replace(microsecond=0)
        self.last_run_id = self.Run.search([], order="id desc", limit=1).id
        with SqlWrites() as writes:
            self.run_cron()
        self.assertEqual(self.requests_of(remote.email), [("SyncFolderItems", 200)] * 3,
                         "transfer folders and calendar; no version probe, NTLM handshake or GetFolder")
        self.assert_no_change_run(user, mailbox, writes)

        # A changed meeting makes an events run, and only that one.
        meeting = next(item for item in remote.items_in("calendar") if item.subject == "Meeting 3")
        remote.update_item(meeting.id, subject="Meeting 3 (moved)")
        mailbox.next_sync = fields.Datetime.now() - timedelta(seconds=1)
        self.run_cron()
        runs = self.new_runs(user)
        self.assertEqual(runs.kind, "events")
        self.assertEqual(runs.count_created + runs.count_updated + runs.count_skipped, 1,
                         "the changed meeting, and only it, is handled")

    def test_a_manual_sync_without_news_is_logged(self):
        user, _remote, _mailbox = self.connected_ews_user(self.env, "manon")
        mailbox = self.synced_once_then_due(user)
        mailbox.next_sync = fields.Datetime.now() + timedelta(hours=1)
        user.with_user(user).action_exchange_sync_now()
        self.last_run_id = self.Run.search([], order="id desc", limit=1).id
        self.run_cron()
        runs = self.new_runs(user)
        self.assertEqual(sorted(runs.mapped("kind")), ["contacts", "events", "mails"])
        self.assertEqual(set(runs.mapped("trigger")), {"manual"})
        self.assertFalse(mailbox.sync_requested)

    def test_a_remembered_folder_that_is_gone_is_found_again(self):
        user, remote, _mailbox = self.connected_ews_user(self.env, "greta")
        mailbox = self.synced_once_then_due(user)
        old_id = mailbox.mails_in_folder_id
        remote.delete_folder(old_id)
        self.run_cron()
        recreated = remote.folder_by_path("Inbox/Transfer In")
        self.assertNotEqual(recreated.id, old_id)
        self.assertEqual(mailbox.mails_in_folder_id, recreated.id)
        self.assertEqual(set(self.Run.search([("user_id", "=", user.id)]).mapped("state")), {"done"})

        # Another folder in the settings: that one is looked up, and listed from the beginning.
        self.add_mails(remote, 2, "Inbox/Eingang")
        user.exchange_transfer_folder_in = "Eingang"
        mailbox.next_sync = fields.Datetime.now() - timedelta(seconds=1)
        self.run_cron()
        self.assertEqual(mailbox.mails_in_folder_id, remote.folder_by_path("Inbox/Eingang").id)
        self.assertEqual(mailbox.mails_in_folder_path, "Inbox/Eingang")
        run = self.Run.search([("user_id", "=", user.id), ("kind", "=", "mails")], limit=1)
        self.assertEqual(run.count_skipped, 2)

    def test_contacts_ask_nothing_until_something_is_pending(self):
        user, remote, _mailbox = self.connected_ews_user(self.env, "carla")
        mailbox = self.synced_once_then_due(user)
        user.exchange_contact_folder = "Odoo"  # a subfolder, looked up with FindFolder
        pushed = []

        def push_contacts(mailbox, backend, folder, run):
            pushed.append(folder.id)

        with patch.object(type(self.Mailbox), "_contacts_pending", return_value=True), \
                patch.object(type(self.Mailbox), "_push_contacts", push_contacts):
            self.run_cron()
        self.assertEqual(pushed, [mailbox.contact_folder_id])
        self.assertTrue(self.requests_of(remote.email).count(("FindFolder", 200)))

    def test_each_mailbox_reads_only_its_own_rows(self):
        """Linear in the number due: a mailbox's reads (after each commit) fetch its row and its
        user's, never those of every due mailbox."""
        users = [self.connected_ews_user(self.env, f"lina{number}")[0] for number in range(3)]
        prefetched = []
        import_page = type(self.Mailbox)._import_message_page

        def import_page_observed(mailbox, folder_kind, page, run):
            import_page(mailbox, folder_kind, page, run)
            prefetched.append((len(list(mailbox._prefetch_ids)), len(list(mailbox.user_id._prefetch_ids))))

        with patch.object(type(self.Mailbox), "_import_message_page", import_page_observed):
            self.run_cron()
        self.assertEqual(len(self.Run.search([("user_id", "in", [user.id for user in users])])), 9)
        self.assertTrue(prefetched)
        self.assertEqual(set(prefetched), {(1, 1)})

    def test_the_job_triggers_itself_while_mailboxes_stay_due(self):
        early_user, _remote, _early = self.connected_ews_user(self.env, "tara", due_in=timedelta(hours=-2))
        _late_user, _remote, late = self.connected_ews_user(self.env, "timo", due_in=timedelta(hours=-1))
        cron = self.env.ref("exchange_connector.ir_cron_exchange_sync")
        Trigger = self.env["ir.cron.trigger"]
        triggers = Trigger.search_count([("cron_id", "=", cron.id)])
        now = [0.0]
        import_page = type(self.Mailbox)._import_message_page

        def import_page_spending_the_budget(mailbox, folder_kind, page, run):
            import_page(mailbox, folder_kind, page, run)
            now[0] = 59

        with patch.object(type(self.Mailbox), "_import_message_page", import_page_spending_the_budget):
            self.run_cron(budget=RunBudget(60, clock=lambda: now[0]))
        self.assertTrue(self.Run.search([("user_id", "=", early_user.id)]))
        self.assertIn(late, self.Mailbox.search(self.Mailbox._due_domain()))
        self.assertEqual(Trigger.search_count([("cron_id", "=", cron.id)]), triggers + 1,
                         "a trigger due now: the cron workers run the job again at once")


@tagged("post_install", "-at_install")
class TestConcurrentMailboxes(SchedulerMixin, TransactionCase):
    """Several mailboxes at once in one call of the job, each in a thread and cursor of its own."""

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.start_tenant()
        cls.commit_ews_users("para", 6)

    def test_three_mailboxes_at_once_each_synced_once_under_its_own_lease(self):
        inside = threading.Barrier(3, timeout=30)
        leases, threads, written = {}, {}, []
        lock = threading.Lock()
        import_page = type(self.env["exchange.mailbox"])._import_message_page

        def import_page_observed(mailbox, folder_kind, page, run):
            import_page(mailbox, folder_kind, page, run)
            if folder_kind != "in":
                return
            with lock:
                token = mailbox.env.context["exchange_sync_lease"]
                leases.setdefault(mailbox.id, set()).add(token)
                written.append(mailbox.sync_lease_token == token)
                threads.setdefault(mailbox.id, set()).add(threading.current_thread().name)
                first_three = len(leases) <= 3
            if first_three:
                inside.wait()  # passes only when three mailboxes are in their sync at the same time

        Mailbox = type(self.env["exchange.mailbox"])
        with patch.object(Mailbox, "_exchange_sync_concurrency", return_value=3), \
                patch.object(Mailbox, "_import_message_page", import_page_observed):
            self.in_thread(self.run_worker, "cron")()

        with self.registry.cursor() as cr:
            env = api.Environment(cr, SUPERUSER_ID, {})
            mailboxes = env["exchange.mailbox"].search([("user_id", "in", self.user_ids)])
            runs = env["exchange.sync.run"].search([("user_id", "in", self.user_ids), ("kind", "=", "mails")])
            self.assertEqual(sorted(runs.user_id.ids), sorted(self.user_ids), "every mailbox synced once")
            self.assertEqual(set(runs.mapped("state")), {"done"})
            self.assertFalse(any(mailboxes.mapped("sync_lease_token")), "every lease released")
            self.assertFalse(env["exchange.mailbox"].search(env["exchange.mailbox"]._due_domain())
                             & mailboxes)
        self.assertEqual(sorted(leases), sorted(mailboxes.ids))
        self.assertEqual({len(tokens) for tokens in leases.values()}, {1}, "one lease per mailbox")
        self.assertEqual(set(written), {True}, "each mailbox's lease is on its row while its pages are saved")
        self.assertEqual(len(set().union(*leases.values())), 6, "six distinct leases")
        self.assertEqual(len(set().union(*threads.values())), 3)
        self.assertTrue(all(name.startswith("cron/exchange-") for name in set().union(*threads.values())))
        for email in self.emails.values():
            self.assertEqual(self.tenant.request_log.count(endpoint="SyncFolderItems", mailbox=email), 3)
            self.assertLessEqual(self.tenant.knobs.peak_concurrency("ews", email), 4)
