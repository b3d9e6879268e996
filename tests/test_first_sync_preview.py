from datetime import timedelta

from odoo import fields
from odoo.tests import TransactionCase, tagged

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
        user, remote = self.connected_user(kind, f"preview{kind}")
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
