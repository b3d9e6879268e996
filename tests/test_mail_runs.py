import collections
import threading
from datetime import timedelta
from unittest.mock import patch

from odoo import SUPERUSER_ID, api, fields
from odoo.orm.environments import Transaction
from odoo.tests import TransactionCase, tagged
from odoo.tools import mute_logger

from .test_backend_seam import MIME
from .test_mail_import import IMPORT_LOGGER, MailImportMixin, mime
from .test_scheduler import SchedulerMixin


@tagged("post_install", "-at_install")
class TestMailRunReport(MailImportMixin, TransactionCase):
    """The sync run says which mails failed or were parked in it, and why."""

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.start_tenant(cls.env)
        cls.rita = cls.env["res.partner"].create({"name": "Rita", "email": "rita@customer.test"})

    @mute_logger(IMPORT_LOGGER)
    def check_failed_mails_listed(self, kind):
        user, remote = self.connected_user(kind, f"runreport{kind}")
        self.drop_fine_and_poison(remote)
        with self.poisoned():
            runs = [self.sync_mails(user) for _try in range(3)]
        poison = self.mails_of(user, message_key="<poison@customer.test>")
        for run in runs:
            self.assertEqual(run.failed_mail_ids, poison, "only the mail that failed is listed")
        self.assertEqual(poison.failed_run_ids, runs[0] | runs[1] | runs[2])
        self.assertEqual(poison.state, "parked")
        self.assertIn("cannot store this one", poison.reason)

        # Retried and posted, it stays listed on the runs where it failed, not on the new one.
        poison.action_retry()
        last = self.sync_mails(user)
        self.assertEqual(poison.state, "posted")
        self.assertFalse(last.failed_mail_ids)
        self.assertEqual(runs[0].failed_mail_ids, poison)

        # The user sees them on the form of their own run.
        run_as_user = runs[2].with_user(user)
        self.assertEqual(run_as_user.failed_mail_ids.mapped("reason"), [poison.reason])
        arch = self.env["exchange.sync.run"].get_views([(False, "form")])["views"]["form"]["arch"]
        self.assertIn('name="failed_mail_ids"', arch)

    def test_failed_mails_listed_graph(self):
        self.check_failed_mails_listed("graph")

    def test_failed_mails_listed_ews(self):
        self.check_failed_mails_listed("ews")


@tagged("post_install", "-at_install")
class TestMailImportTwoWorkers(SchedulerMixin, TransactionCase):
    """Two cron workers, each with its own committed transaction, never import one mailbox at once.

    The user, the sender's partner and what the import stores live in committed rows (made and
    removed by the class): each worker runs in a cursor of its own, outside the test transaction.
    """

    MAILS = 4

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.start_tenant()  # an on-premises mailbox: no company settings to commit
        cls.addClassCleanup(cls.remove_committed_rows)
        with cls.registry.cursor() as cr:
            env = api.Environment(cr, SUPERUSER_ID, {})
            cls.sender_id = env["res.partner"].create({"name": "Sender", "email": "sender@example.org"}).id
            user, remote, mailbox = cls.connected_ews_user(env, "mlock", due_in=timedelta(minutes=-10))
            cls.user_ids, cls.mailbox_id = [user.id], mailbox.id
            folder = remote.ensure_folder_path("Inbox/Transfer In")
            for number in range(cls.MAILS):
                source = MIME.replace(b"{to}", remote.email.encode())
                remote.add_message(folder.id, source.replace(b"{subject}", f"lock{number}".encode()))

    @classmethod
    def remove_committed_rows(cls):
        with cls.registry.cursor() as cr:
            env = api.Environment(cr, SUPERUSER_ID, {})
            env["mail.message"].search(
                [("model", "=", "res.partner"), ("res_id", "=", cls.sender_id)]).unlink()
            env["exchange.mail"].search([("user_id", "in", cls.user_ids)]).unlink()
            env["exchange.binding"].search([("user_id", "in", cls.user_ids)]).unlink()
            env["res.partner"].browse(cls.sender_id).unlink()
        cls.remove_committed_users()

    def due_now(self, due=None):
        """Whether the mailbox is due, in a committed cursor of its own; with ``due``, make it due first."""
        with self.registry.cursor() as cr:
            cr.transaction = Transaction(self.registry)  # the runner holds the registry lock
            mailbox = api.Environment(cr, SUPERUSER_ID, {})["exchange.mailbox"].browse(self.mailbox_id)
            if due:
                mailbox.next_sync = fields.Datetime.now() - timedelta(minutes=1)
            return bool(mailbox.filtered_domain(mailbox._due_domain()))

    def lock_is_free(self):
        """Whether another database session could take the mailbox's advisory lock now."""
        with self.registry.cursor() as cr:
            cr.transaction = Transaction(self.registry)  # the runner holds the registry lock
            mailbox = api.Environment(cr, SUPERUSER_ID, {})["exchange.mailbox"].browse(self.mailbox_id)
            free = mailbox._exchange_try_lock()
            if free:
                cr.execute("SELECT pg_advisory_unlock(%s, %s)", mailbox._exchange_lock_args())
            return free

    def test_two_workers_never_import_one_mailbox_at_once(self):
        # Worker "first" takes the mailbox and stops before importing its first page of mails;
        # worker "second" runs a whole pass meanwhile and must keep out of it.
        first_inside, second_done = threading.Event(), threading.Event()
        imported, free_for_second = collections.Counter(), []
        import_page = type(self.env["exchange.mailbox"])._import_message_page

        def import_page_observed(mailbox, folder_kind, page, run):
            worker = threading.current_thread().name
            if worker == "first" and not first_inside.is_set():
                first_inside.set()
                second_done.wait(timeout=60)
            if folder_kind == "in":
                imported[worker] += len(page.items)
            import_page(mailbox, folder_kind, page, run)

        def second():
            first_inside.wait(timeout=60)
            try:
                free_for_second.append(self.lock_is_free())
                self.run_worker()
            finally:
                second_done.set()

        def first():
            try:
                self.run_worker()
            finally:
                first_inside.set()

        with patch.object(type(self.env["exchange.mailbox"]), "_import_message_page", import_page_observed):
            join_first = self.in_thread(first, "first")
            join_second = self.in_thread(second, "second")
            join_second()
            join_first()
            self.assertEqual(free_for_second, [False], "the first worker held the mailbox's lock")
            self.assertEqual(dict(imported), {"first": self.MAILS}, "the second worker imported nothing")

            # Due again later, the next worker finds every mail already imported.
            self.assertFalse(self.due_now())
            self.due_now(due=True)
            self.in_thread(self.run_worker, "third")()
        self.assertEqual(dict(imported), {"first": self.MAILS})

        with self.registry.cursor() as cr:
            env = api.Environment(cr, SUPERUSER_ID, {})
            mails = env["exchange.mail"].search([("user_id", "in", self.user_ids)])
            messages = env["mail.message"].search([
                ("model", "=", "res.partner"), ("res_id", "=", self.sender_id),
                ("message_type", "=", "email")])
            bindings = env["exchange.binding"].search(
                [("user_id", "in", self.user_ids), ("kind", "=", "message")])
            runs = env["exchange.sync.run"].search([("user_id", "in", self.user_ids), ("kind", "=", "mails")])
            self.assertEqual(sorted(mails.mapped("message_key")),
                             [f"<lock{number}@example.org>" for number in range(self.MAILS)])
            self.assertEqual(set(mails.mapped("state")), {"posted"})
            self.assertEqual(sorted(messages.mapped("subject")),
                             [f"lock{number}" for number in range(self.MAILS)],
                             "each mail posted exactly once")
            self.assertEqual(len(bindings), self.MAILS)
            self.assertEqual(sum(runs.mapped("count_created")), self.MAILS)
            self.assertEqual(set(runs.mapped("state")), {"done"})


@tagged("post_install", "-at_install")
class TestMailImportParseQueries(MailImportMixin, TransactionCase):
    """Odoo's parser looks every mail's recipients up among the aliases; a page shares those lookups."""

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.start_tenant(cls.env)
        cls.env["res.partner"].create({"name": "Rita", "email": "rita@customer.test"})

    def alias_queries_of_import(self, kind, count):
        user, remote = self.connected_user(kind, f"aliasq{kind}")
        for number in range(count):
            to = f"{remote.email}, sales@ourcompany.test"
            message_id = f"<alias{number}@customer.test>"
            self.drop(remote, mime(f"Alias {number}", "rita@customer.test", to, message_id))
        queries = []
        cursor_class = type(self.env.cr)
        execute = cursor_class.execute

        def counted(cursor, query, params=None, log_exceptions=True):
            text = query.code if hasattr(query, "code") else str(query)
            if 'FROM "mail_alias" ' in text:
                queries.append(text)
            return execute(cursor, query, params, log_exceptions)

        with patch.object(cursor_class, "execute", counted):
            run = self.sync_mails(user)
        self.assertEqual(run.count_created, count)
        return queries

    def test_alias_lookups_once_per_page_ews(self):
        queries = self.alias_queries_of_import("ews", 10)
        self.assertLessEqual(len(queries), 3, "\n".join(queries))

    def test_alias_lookups_once_per_page_graph(self):
        queries = self.alias_queries_of_import("graph", 10)
        self.assertLessEqual(len(queries), 3, "\n".join(queries))
