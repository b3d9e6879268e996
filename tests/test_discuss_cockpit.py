import json
import threading
import time
from datetime import timedelta

from odoo import SUPERUSER_ID, api, fields
from odoo.exceptions import UserError
from odoo.tests import HttpCase, tagged

from ..models.exchange_cockpit import COCKPIT_BUS_TYPE
from .test_mail_import import MailImportMixin, mime

DISCUSS_URL = "/odoo/discuss"
#: Longer than the section's fallback re-read (BUSY_REFRESH_MS, 2 s) while the bus is down.
QUIET_SECONDS = 2.5


@tagged("post_install", "-at_install")
class TestDiscussCockpit(MailImportMixin, HttpCase):
    """The Discuss cockpit clicked in a browser, with the scheduled job run by the test.

    Each click only asks for its kind and triggers the job; a thread of the test waits for that
    trigger and runs the job in a cursor of its own, as a cron worker would, while the browser
    keeps the page: the section must show the outcome without a reload, and (the page does not
    poll while the bus is connected) it can only learn it over the bus.
    """

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.start_tenant(cls.env)
        cls.cron = cls.env.ref("exchange_connector.ir_cron_exchange_sync")
        cls.env["ir.config_parameter"].sudo().set_param("exchange_connector.sync_concurrency", 1)
        Partner = cls.env["res.partner"]
        cls.paula = Partner.create({"name": "Paula", "email": "paula@customer.test"})
        cls.anna_a = Partner.create({"name": "Anna (Acme)", "email": "anna@dup.test"})
        cls.anna_b = Partner.create({"name": "Anna (private)", "email": "anna@dup.test"})

    def cron_worker(self):
        """Run the scheduled job each time it is triggered, until :attr:`done` is set.

        The job waits until the browser has read the section after the click (it shows the
        request), then for longer than the section's fallback re-read, before it runs: the
        outcome can only reach the page over the bus, and any read of the section during that
        wait (a polling page) lands in :attr:`reads_while_waiting`.
        """
        Cron = type(self.env["ir.cron"])
        Mailbox = type(self.env["exchange.mailbox"])
        original_trigger, original_read = Cron._trigger, Mailbox.exchange_cockpit
        triggered, self.done, self.cron_runs = threading.Event(), threading.Event(), []
        self.after_cron_run = lambda number: None
        reads, trigger_reads, self.reads_while_waiting = [], [], []

        def trigger(cron, at=None):
            result = original_trigger(cron, at)
            if self.cron in cron:
                trigger_reads.append((len(reads), cron.env.cr))
                triggered.set()
            return result

        @api.model
        def exchange_cockpit(model):
            reads.append(model.env.cr)
            return original_read(model)

        def read_after_the_click():
            start, click_cursor = trigger_reads[-1]
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                if any(cursor is not click_cursor for cursor in reads[start:]):
                    return
                time.sleep(0.05)
            raise AssertionError("the section was not read again after the click")

        def work():
            while not self.done.is_set():
                if not triggered.wait(timeout=120):
                    return
                triggered.clear()
                if self.done.is_set():
                    return
                read_after_the_click()
                before = len(reads)
                time.sleep(QUIET_SECONDS)
                self.reads_while_waiting.extend(reads[before:])
                with self.registry.cursor() as cr:
                    api.Environment(cr, SUPERUSER_ID, {})["exchange.mailbox"]._cron_sync()
                self.cron_runs.append(fields.Datetime.now())
                self.after_cron_run(len(self.cron_runs))

        self.patch(Cron, "_trigger", trigger)
        self.patch(Mailbox, "exchange_cockpit", exchange_cockpit)
        thread = threading.Thread(target=work, name="exchange-cockpit-cron", daemon=True)
        thread.start()

        def stop():
            self.done.set()
            triggered.set()
            thread.join()
        self.addCleanup(stop)

    def test_each_button_runs_its_kind_in_the_background_and_the_section_follows(self):
        user, remote = self.connected_user("ews", "cora")
        # Synced before: not due, no sync pending.
        user._exchange_mailbox().write({
            "sync_requested": False, "next_sync": fields.Datetime.now() + timedelta(hours=1)})
        self.drop(remote, mime("Order", "Paula <paula@customer.test>", remote.email, "<order@c.test>"))
        self.drop(remote, mime("Invoice", "Paula <paula@customer.test>", remote.email, "<invoice@c.test>"))
        self.drop(remote, mime("Question", "Anna <anna@dup.test>", remote.email, "<question@c.test>"))
        self.drop(remote, mime("Follow-up", "Anna <anna@dup.test>", remote.email, "<follow-up@c.test>"))
        start = (fields.Datetime.now() + timedelta(days=2)).replace(microsecond=0)
        remote.add_event(subject="Review", start=start, end=start + timedelta(hours=1),
                         organizer=("Olga Outside", "olga@outside.example"),
                         attendees=[{"name": "Cora", "address": remote.email, "response": "accepted"}])
        self.paula.with_user(user).action_exchange_subscribe()
        self.cron_worker()
        last_note = self.env["bus.bus"].search([], order="id desc", limit=1).id

        # Dropped once the first mail run is done: "Sync all" has a new mail to show.
        self.after_cron_run = lambda number: number == 1 and self.drop(
            remote, mime("Reply", "paula@customer.test", remote.email, "<reply@c.test>"))

        self.start_tour(DISCUSS_URL, "exchange_connector_cockpit", login=user.login)

        self.assertEqual(len(self.cron_runs), 4, "one run of the job per click")
        self.assertEqual(self.reads_while_waiting, [], "the page did not poll: the bus brought the outcome")
        runs = self.env["exchange.sync.run"].search([("user_id", "=", user.id)], order="id")
        self.assertEqual(
            [(run.kind, run.trigger, run.state) for run in runs],
            [("mails", "manual", "done"), ("events", "manual", "done"), ("contacts", "manual", "done"),
             ("mails", "manual", "done"), ("events", "manual", "done"), ("contacts", "manual", "done")],
            "each button ran its kind alone, Sync all every kind, all by the scheduled job")
        notes = self.env["bus.bus"].search([("id", ">", last_note), ("message", "like", COCKPIT_BUS_TYPE)])
        self.assertEqual(
            {tuple(json.loads(note.channel)[1:]) for note in notes}, {("res.partner", user.partner_id.id)},
            "the job told the user's browser, and only theirs, when the kinds ran")
        phases = [json.loads(note.message)["payload"] for note in notes]
        self.assertIn({"kind": "mails", "phase": "running"}, phases)
        self.assertIn({"kind": "contacts", "phase": "done"}, phases)
        self.assertIn({"kind": False, "phase": "idle"}, phases)

    def test_the_section_re_reads_itself_only_while_the_bus_is_down(self):
        user, remote = self.connected_user("ews", "bettina")
        user._exchange_mailbox().write({
            "sync_requested": False, "next_sync": fields.Datetime.now() + timedelta(hours=1)})
        self.drop(remote, mime("Order", "Paula <paula@customer.test>", remote.email, "<offline@c.test>"))
        self.cron_worker()

        self.start_tour(DISCUSS_URL, "exchange_connector_cockpit_bus_down", login=user.login)

        self.assertEqual(len(self.cron_runs), 1)
        self.assertTrue(self.reads_while_waiting, "without the bus, the section read itself on its own")

    def test_first_sync_waits_for_the_preview(self):
        user, remote = self.connected_user("ews", "fiona", preview_seen=False)
        mailbox = user._exchange_mailbox()
        self.assertTrue(mailbox.first_sync_pending, "a newly connected mailbox waits for its user")
        self.drop(remote, mime("Order", "paula@customer.test", remote.email, "<first-order@c.test>"))
        self.drop(remote, mime("Offer", "paula@customer.test", remote.email, "<first-offer@c.test>"))
        self.assertFalse(self.env["exchange.mailbox"].search(self.env["exchange.mailbox"]._due_domain())
                         .filtered(lambda due: due == mailbox), "the scheduled job leaves it alone")
        self.cron_worker()

        self.start_tour(DISCUSS_URL, "exchange_connector_first_sync_preview", login=user.login)

        self.assertFalse(mailbox.first_sync_pending)
        runs = self.env["exchange.sync.run"].search([("user_id", "=", user.id)])
        self.assertEqual(sorted(runs.mapped("kind")), ["contacts", "events", "mails"])
        self.assertEqual(set(runs.mapped("trigger")), {"manual"})
        self.assertTrue(remote.folder_by_path("Inbox/Transfer Out"), "the real run created the folder")

    def test_requests_add_up_and_sync_all_asks_for_every_kind(self):
        user, _remote = self.connected_user("ews", "rhea")
        mailbox = user._exchange_mailbox()
        mailbox.write({"sync_requested": False, "next_sync": fields.Datetime.now() + timedelta(hours=1)})
        Cockpit = self.env["exchange.mailbox"].with_user(user)

        summary = Cockpit.exchange_cockpit_request("mails")
        self.assertEqual((mailbox.sync_requested, mailbox.sync_requested_kinds), (True, "mails"))
        self.assertEqual([kind["requested"] for kind in summary["kinds"]], [True, False, False])
        Cockpit.exchange_cockpit_request("events")
        Cockpit.exchange_cockpit_request("mails")
        self.assertEqual(mailbox.sync_requested_kinds, "mails,events")
        self.assertEqual(mailbox._exchange_requested_kinds(), ["mails", "events"])

        summary = Cockpit.exchange_cockpit_request()  # Sync all
        self.assertEqual((mailbox.sync_requested, mailbox.sync_requested_kinds), (True, False))
        self.assertEqual([kind["requested"] for kind in summary["kinds"]], [True, True, True])
        Cockpit.exchange_cockpit_request("contacts")
        self.assertFalse(mailbox.sync_requested_kinds, "Sync all pending already includes it")

        with self.assertRaises(UserError):
            Cockpit.exchange_cockpit_request("everything")
        mailbox.state = "auth_failed"
        for kind in ("mails", None):
            with self.assertRaises(UserError) as refused:
                Cockpit.exchange_cockpit_request(kind)
            self.assertEqual(str(refused.exception), mailbox._exchange_lockout_sentence(),
                             "a locked mailbox says why and what to do, whichever button")
        user._exchange_mark_disconnected()
        with self.assertRaises(UserError):
            Cockpit.exchange_cockpit_request("mails")
        with self.assertRaises(UserError):
            Cockpit.exchange_cockpit_open_waiting()

    def test_each_run_reads_as_one_sentence(self):
        user, _remote = self.connected_user("ews", "sina")
        Run = self.env["exchange.sync.run"].sudo()

        def text(kind, state="done", **counts):
            run = Run.create(dict({"user_id": user.id, "kind": kind, "state": state},
                                  **{f"count_{name}": count for name, count in counts.items()}))
            return self.env["exchange.mailbox"]._exchange_cockpit_run_text(run)

        self.assertEqual(text("mails", created=1), "1 mail imported")
        self.assertEqual(text("mails", created=12, failed=1), "12 mails imported, 1 failed")
        self.assertEqual(text("events", created=1, updated=2), "1 event added, 2 updated, 0 removed")
        self.assertEqual(text("events", created=3, deleted=1), "3 events added, 0 updated, 1 removed")
        self.assertEqual(text("contacts", created=1), "1 contact added, 0 updated, 0 removed")
        self.assertEqual(text("contacts", "partial", created=0, updated=5),
                         "0 contacts added, 5 updated, 0 removed (continues at the next run)")

    def test_office_365_mailbox_not_connected_offers_connect(self):
        user, _remote = self.graph_user(self.env, "nora")
        user.with_user(user).action_exchange_disconnect()
        self.assertEqual(user._exchange_mailbox().state, "not_connected")
        self.start_tour(DISCUSS_URL, "exchange_connector_cockpit_connect", login=user.login)

    def test_office_365_sign_in_refused_leads_to_my_mailbox(self):
        user, remote = self.graph_user(self.env, "olivia")
        self.tenant.identity.revoke(remote.email)
        for _attempt in range(3):
            self.refused_sign_in(user)
        self.assertEqual(user._exchange_mailbox().state, "auth_failed")
        self.start_tour(DISCUSS_URL, "exchange_connector_cockpit_reconnect", login=user.login)
