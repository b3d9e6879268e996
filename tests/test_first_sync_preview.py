from datetime import timedelta

from odoo import fields
from odoo.tests import TransactionCase, tagged

from ..models.exchange_first_sync import FIRST_SYNC_PREVIEW_PARAM
from .common import no_commit_progress
from .test_mail_import import MailImportMixin, mime

#: What a dry run must never ask of Microsoft.
EWS_WRITES = {"CreateFolder", "CreateItem", "UpdateItem", "DeleteItem", "MoveItem", "CopyItem"}


@tagged("post_install", "-at_install")
class TestFirstSyncPreview(MailImportMixin, TransactionCase):
    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.start_tenant(cls.env)
        Partner = cls.env["res.partner"]
        cls.paula = Partner.create({"name": "Paula", "email": "paula@preview.test"})
        cls.anna_a = Partner.create({"name": "Anna (Acme)", "email": "anna@preview.test"})
        cls.anna_b = Partner.create({"name": "Anna (private)", "email": "anna@preview.test"})

    def check_preview_matches_the_real_run(self, kind):
        user, remote = self.connected_user(kind, f"preview{kind}", preview_seen=False)
        self.drop(remote, mime("Order", "paula@preview.test", remote.email, f"<order-{kind}@p.test>"))
        self.drop(remote, mime("Question", "anna@preview.test", remote.email, f"<question-{kind}@p.test>"))
        self.drop(remote, mime("Spam", "nobody@unknown.test", remote.email, f"<spam-{kind}@p.test>"))
        now = fields.Datetime.now().replace(microsecond=0)
        for days in (1, 3, 400):  # the last one is outside the user's window
            start = now + timedelta(days=days)
            remote.add_event(subject=f"Meeting in {days} days", start=start, end=start + timedelta(hours=1),
                             organizer=("Olga Outside", "olga@outside.example"),
                             attendees=[{"name": "Me", "address": remote.email, "response": "accepted"}])
        (self.paula | self.anna_a).with_user(user).action_exchange_subscribe()
        mailbox = user._exchange_mailbox()
        self.tenant.request_log.clear()

        preview = user.with_user(user).env["exchange.mailbox"].exchange_cockpit_preview()

        out_path = f"Inbox/{user.exchange_transfer_folder_out}"
        self.assertEqual(preview, {
            "mails": [{"folder": "Inbox/Transfer In", "count": 3, "exists": True},
                      {"folder": out_path, "count": 0, "exists": False}],
            "events": 2,
            "contacts": 2,
        })
        entries = self.tenant.request_log.entries
        self.assertTrue(entries)
        if kind == "graph":
            self.assertEqual({entry["method"] for entry in entries if entry["protocol"] == "graph"}, {"GET"},
                             "the dry run only lists")
        else:
            self.assertFalse({entry.get("operation") for entry in entries} & EWS_WRITES,
                             "the dry run only lists")
        self.assertIsNone(remote.folder_by_path(out_path), "the missing transfer folder is not created")
        self.assertFalse(self.env["exchange.sync.run"].search([("user_id", "=", user.id)]))
        self.assertFalse(mailbox.mails_in_state or mailbox.events_state or mailbox.contact_folder_id,
                         "the dry run saves no sync state")

        with no_commit_progress(self.env):
            self.assertEqual(mailbox._exchange_sync(trigger="manual"), [])
        runs = {run.kind: run for run in self.env["exchange.sync.run"].search([("user_id", "=", user.id)])}

        def handled(run):
            return run.count_created + run.count_updated + run.count_skipped + run.count_failed

        self.assertEqual(handled(runs["mails"]), sum(folder["count"] for folder in preview["mails"]))
        self.assertEqual(handled(runs["events"]), preview["events"])
        self.assertEqual(runs["contacts"].count_created, preview["contacts"])
        self.assertTrue(remote.folder_by_path(out_path), "the real run creates it")

    def test_preview_graph(self):
        self.check_preview_matches_the_real_run("graph")

    def test_preview_ews(self):
        self.check_preview_matches_the_real_run("ews")

    def run_scheduled_job(self):
        with no_commit_progress(self.env):
            self.env["exchange.mailbox"]._cron_sync()

    def runs_of(self, user):
        return self.env["exchange.sync.run"].search([("user_id", "=", user.id)])

    def test_a_new_mailbox_waits_for_its_user_by_default(self):
        """On by default: an on-premises mailbox connected by Test connection is not synced by the
        scheduled job until its user starts the first sync."""
        user, remote = self.ews_user(self.env, "newcomer")
        self.drop(remote, mime("Order", "paula@preview.test", remote.email, "<order-newcomer@p.test>"))
        user.with_user(user).action_exchange_test_connection()
        mailbox = user._exchange_mailbox()
        self.assertEqual(mailbox.state, "connected", mailbox.last_error)
        self.assertTrue(mailbox.first_sync_pending, "the preview is on without any setting")
        self.assertTrue(user.with_user(user).env["exchange.mailbox"].exchange_cockpit()["first_sync_pending"])
        self.assertTrue(user.with_user(user).exchange_first_sync_pending, "the tab says what it waits for")

        self.run_scheduled_job()
        self.assertFalse(self.runs_of(user), "the scheduled job left the unconfirmed mailbox alone")

        user.with_user(user).env["exchange.mailbox"].exchange_cockpit_start_first_sync()
        self.assertFalse(mailbox.first_sync_pending)
        user.invalidate_recordset()
        self.assertFalse(user.with_user(user).exchange_first_sync_pending)
        self.run_scheduled_job()
        runs = self.runs_of(user)
        self.assertEqual(sorted(runs.mapped("kind")), ["contacts", "events", "mails"])
        self.assertEqual(runs.filtered(lambda run: run.kind == "mails").count_created, 1)

        user._exchange_mark_disconnected()
        user._exchange_mark_connected(remote.email)
        self.assertFalse(mailbox.first_sync_pending, "a mailbox synced before does not wait again")

    def test_sync_now_is_a_go_and_the_parameter_an_opt_out(self):
        user, _remote = self.connected_user("ews", "impatient", preview_seen=False)
        mailbox = user._exchange_mailbox()
        self.assertTrue(mailbox.first_sync_pending)
        user.with_user(user).action_exchange_sync_now()  # the preferences tab's button
        self.assertFalse(mailbox.first_sync_pending, "the user asked for the sync: it is due")
        self.assertIn(mailbox, mailbox.search(mailbox._due_domain()))

        self.env["ir.config_parameter"].sudo().set_param(FIRST_SYNC_PREVIEW_PARAM, "0")
        user, _remote = self.connected_user("graph", "optout", preview_seen=False)
        self.assertFalse(user._exchange_mailbox().first_sync_pending, "opted out: synced at once")
