import base64
import importlib.util
from pathlib import Path
from unittest.mock import patch

from odoo.tests import TransactionCase, new_test_user, tagged
from odoo.tools import mute_logger

from odoo.addons.exchange_connector.models.exchange_mailbox import PendingRun
from odoo.addons.mail.tools.discuss import Store

from .common import ConfiguredTenantMixin, ExchangeTenantMixin, no_commit_progress

IMPORT_LOGGER = "odoo.addons.exchange_connector.models.exchange_mail_import"
ADDON = Path(__file__).resolve().parent.parent
PNG = base64.b64decode(
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg==")


def mime(subject, sender, to, message_id=None, cc=None, in_reply_to=None,
         date="Mon, 02 Nov 2026 10:00:00 +0000", html=None, text="Hello", extra_headers=()):
    """A plain mail's source; ``html`` makes it an HTML mail."""
    headers = [f"From: {sender}", f"To: {to}", f"Subject: {subject}", f"Date: {date}", "MIME-Version: 1.0"]
    if message_id:
        headers.append(f"Message-ID: {message_id}")
    if cc:
        headers.append(f"Cc: {cc}")
    if in_reply_to:
        headers += [f"In-Reply-To: {in_reply_to}", f"References: {in_reply_to}"]
    headers += list(extra_headers)
    if html is not None:
        headers.append("Content-Type: text/html; charset=utf-8")
        body = html
    else:
        headers.append("Content-Type: text/plain; charset=utf-8")
        body = text
    return ("\r\n".join(headers) + "\r\n\r\n" + body + "\r\n").encode()


def mime_with_image_and_attachment(subject, sender, to, message_id):
    png = base64.b64encode(PNG).decode()
    pdf = base64.b64encode(b"%PDF-1.4 quotation").decode()
    return (
        f"From: {sender}\r\nTo: {to}\r\nSubject: {subject}\r\nMessage-ID: {message_id}\r\n"
        "Date: Tue, 03 Nov 2026 08:30:00 +0100\r\nMIME-Version: 1.0\r\n"
        'Content-Type: multipart/mixed; boundary="mixed"\r\n\r\n'
        '--mixed\r\nContent-Type: multipart/related; boundary="rel"\r\n\r\n'
        "--rel\r\nContent-Type: text/html; charset=utf-8\r\n\r\n"
        '<p>Our logo <img src="cid:logo@x"> and a tracker <img src="https://track.example/p.gif?u=1"></p>'
        "<script>alert(1)</script><p onclick=\"steal()\">Click</p>\r\n"
        "--rel\r\nContent-Type: image/png\r\nContent-Transfer-Encoding: base64\r\n"
        'Content-ID: <logo@x>\r\nContent-Disposition: inline; filename="logo.png"\r\n\r\n'
        f"{png}\r\n--rel--\r\n"
        "--mixed\r\nContent-Type: application/pdf\r\nContent-Transfer-Encoding: base64\r\n"
        'Content-Disposition: attachment; filename="quotation.pdf"\r\n\r\n'
        f"{pdf}\r\n--mixed--\r\n"
    ).encode()


class MailImportMixin(ExchangeTenantMixin):
    @staticmethod
    def drop(remote, source, folder="Inbox/Transfer In"):
        return remote.add_message(remote.ensure_folder_path(folder).id, source)

    def drop_fine_and_poison(self, remote):
        """Two mails from one sender; storing the one titled "Poison" fails while :meth:`poisoned` lasts."""
        self.drop(remote, mime("Fine", "rita@customer.test", remote.email, "<fine@customer.test>"))
        self.drop(remote, mime("Poison", "rita@customer.test", remote.email, "<poison@customer.test>"))

    def poisoned(self):
        """A context in which storing a mail titled "Poison" raises, as a bug or a bad row would."""
        mail_class = type(self.env["exchange.mail"])
        message_values = mail_class._exchange_message_values

        def fail_on_poison(mail, user, parsed, model, res_id, author):
            if parsed["subject"] == "Poison":
                raise ValueError("cannot store this one")
            return message_values(mail, user, parsed, model, res_id, author)

        return patch.object(mail_class, "_exchange_message_values", fail_on_poison)

    def sync_mails(self, user):
        """One mail sync of ``user`` through the seam, as the scheduler runs it (commits are no-ops here)."""
        mailbox = user._exchange_mailbox()
        run = PendingRun(self.env["exchange.sync.run"], user, "mails", "manual")
        with no_commit_progress(self.env), user._exchange_backend() as backend:
            mailbox._sync_mails(backend, run)
        self.env.invalidate_all()
        return run.record  # empty when the run found nothing new

    def messages_on(self, record, **domain):
        terms = [("model", "=", record._name), ("res_id", "=", record.id), ("message_type", "=", "email")]
        terms += [(key, "=", value) for key, value in domain.items()]
        return self.env["mail.message"].search(terms)

    def assert_nothing_sent(self, messages):
        self.assertTrue(messages)
        self.assertFalse(self.env["mail.mail"].search([("mail_message_id", "in", messages.ids)]))
        self.assertFalse(self.env["mail.notification"].search([("mail_message_id", "in", messages.ids)]))

    def mails_of(self, user, **domain):
        return self.env["exchange.mail"].search(
            [("user_id", "=", user.id)] + [(key, "=", value) for key, value in domain.items()])


@tagged("post_install", "-at_install")
class TestMailImport(MailImportMixin, ConfiguredTenantMixin, TransactionCase):
    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        Partner = cls.env["res.partner"]
        cls.customer = Partner.create(
            {"name": "Customer Co", "is_company": True, "email": "info@customer.test"})
        cls.paula = Partner.create({"name": "Paula", "email": "Paula <PAULA@Customer.test>",
                                    "parent_id": cls.customer.id})
        cls.rita = Partner.create({"name": "Rita", "email": "rita@customer.test"})
        cls.ruth = Partner.create({"name": "Ruth", "email": "ruth@other.test"})
        cls.colleague = new_test_user(cls.env, login="colleague.test", name="Colleague",
                                      email="colleague@ourcompany.test")

    def check_routing(self, kind):
        user, remote = self.connected_user(kind, f"route{kind}")
        event = self.env["calendar.event"].create(
            {"name": "Quotation meeting", "start": "2026-11-01 10:00:00", "stop": "2026-11-01 11:00:00"})
        odoo_message = event.message_post(body="Our quotation", message_type="comment")
        followers_before = self.env["mail.followers"].search_count([])
        self.drop(remote, mime_with_image_and_attachment("Logo", "Paula Q <paula@customer.test>",
                                                         remote.email, f"<logo-{kind}@customer.test>"))
        self.drop(remote, mime("Re: Quotation", "ruth@other.test", remote.email, f"<reply-{kind}@other.test>",
                               in_reply_to=odoo_message.message_id))
        self.drop(remote, mime("Offer", f"{user.name} <{remote.email}>",
                               "Rita <RITA@customer.test>, ruth@other.test", f"<offer-{kind}@ours.test>",
                               cc="colleague@ourcompany.test", date="Wed, 04 Nov 2026 15:00:00 +0000"),
                  folder="Inbox/Transfer Out")
        self.drop(remote, mime("Who?", "stranger@nowhere.test", remote.email,
                               f"<who-{kind}@nowhere.test>"))

        run = self.sync_mails(user)

        self.assertEqual((run.count_created, run.count_skipped, run.count_failed), (3, 1, 0))
        # by sender: author, original date, subject, attachments, inline image, sanitized, no tracker
        on_paula = self.messages_on(self.paula)
        self.assertEqual(len(on_paula), 1)
        self.assertEqual(on_paula.author_id, self.paula)
        self.assertEqual(on_paula.subject, "Logo")
        self.assertEqual(str(on_paula.date), "2026-11-03 07:30:00")
        self.assertEqual(on_paula.message_id, f"<logo-{kind}@customer.test>")
        self.assertEqual(sorted(on_paula.attachment_ids.mapped("name")), ["logo.png", "quotation.pdf"])
        body = str(on_paula.body)
        self.assertIn("/web/image/", body)
        self.assertNotIn("cid:", body)
        self.assertNotIn("track.example", body)
        self.assertNotIn("<script", body)
        self.assertNotIn("onclick", body)
        self.assertEqual(on_paula.exchange_user_ids, user)
        # by thread: the reply goes to the document, not to Ruth
        on_event = self.messages_on(event, subject="Re: Quotation")
        self.assertEqual(len(on_event), 1)
        self.assertEqual(on_event.author_id, self.ruth)
        # by recipients: outgoing to Rita and Ruth, author the user, the colleague in Cc is no partner
        for partner in (self.rita, self.ruth):
            sent = self.messages_on(partner, subject="Offer")
            self.assertEqual(len(sent), 1, partner.name)
            self.assertEqual(sent.author_id, user.partner_id)
        self.assertFalse(self.messages_on(self.colleague.partner_id))
        self.assertEqual(self.mails_of(user, state="queued").subject, "Who?")
        imported = self.env["mail.message"].search([("exchange_user_ids", "in", user.ids)])
        self.assertEqual(len(imported), 4)
        self.assert_nothing_sent(imported)
        self.assertEqual(self.env["mail.followers"].search_count([]), followers_before,
                         "nobody was subscribed")

        # A repeated run (even after the listing starts over) stores nothing twice.
        user._exchange_mailbox().write({"mails_in_state": False, "mails_out_state": False})
        again = self.sync_mails(user)
        self.assertEqual(again.count_created, 0)
        self.assertEqual(len(self.env["mail.message"].search([("exchange_user_ids", "in", user.ids)])), 4)
        return user, remote

    def test_routing_graph(self):
        self.check_routing("graph")

    def test_routing_ews(self):
        self.check_routing("ews")

    def test_bulk_fetch_requests(self):
        user, remote = self.connected_user("graph", "bulky")
        for number in range(45):
            self.drop(remote, mime(f"Bulk {number}", "paula@customer.test", remote.email,
                                   f"<bulk{number}@x.test>"))
        self.tenant.request_log.clear()
        run = self.sync_mails(user)
        self.assertEqual(run.count_created, 45)
        mime_requests = [e for e in self.tenant.request_log.entries
                         if not e.get("batch_item") and "$batch" in e.get("path", "")]
        self.assertLessEqual(len(mime_requests), 3, "45 mails in $batch calls of 20")
        self.assertFalse([e for e in self.tenant.request_log.entries
                          if not e.get("batch_item") and e.get("path", "").endswith("/$value")])

    def test_mail_shared_by_three_users_is_stored_once(self):
        users = [self.connected_user(kind, f"share{number}")
                 for number, kind in enumerate(("graph", "ews", "graph"))]
        source = mime("Shared news", "paula@customer.test", "all@ourcompany.test", "<shared@customer.test>")
        for _user, remote in users:
            self.drop(remote, source)
        for user, _remote in users:
            self.sync_mails(user)
        self.sync_mails(users[0][0])
        stored = self.messages_on(self.paula, message_id="<shared@customer.test>")
        self.assertEqual(len(stored), 1)
        self.assertEqual(stored.exchange_user_ids, users[0][0] | users[1][0] | users[2][0])
        self.assert_nothing_sent(stored)
        # The chatter gets whose mailboxes it came from.
        data = Store().add(stored.with_user(users[0][0])).get_result()["mail.message"][0]
        self.assertEqual(data["exchange_mailbox_names"], ", ".join(stored.exchange_user_ids.mapped("name")))

    def test_mail_odoo_sent_is_not_imported_again(self):
        user, remote = self.connected_user("ews", "sender")
        sent = self.rita.message_post(body="From Odoo", message_type="comment", subject="Odoo quote")
        self.drop(remote, mime("Odoo quote", remote.email, "rita@customer.test", sent.message_id),
                  folder="Inbox/Transfer Out")
        self.sync_mails(user)
        self.assertEqual(self.env["mail.message"].search([("message_id", "=", sent.message_id)]), sent)
        self.assertEqual(sent.exchange_user_ids, user)
        self.assertEqual(self.mails_of(user).message_ids, sent)

    def test_mail_without_message_id_is_stored_once_by_content(self):
        users = [self.connected_user(kind, f"nomid{kind}") for kind in ("graph", "ews")]
        source = mime("No id", "paula@customer.test", "x@ourcompany.test", None, text="same text")
        for _user, remote in users:
            self.drop(remote, source)
            self.drop(remote, source)  # twice in one folder too
        for user, _remote in users:
            self.sync_mails(user)
        stored = self.messages_on(self.paula, subject="No id")
        self.assertEqual(len(stored), 1)
        self.assertTrue(stored.message_id.endswith("@content-key.exchange-connector.invalid>"))
        self.assertEqual(len(stored.exchange_user_ids), 2)

    def test_upgrade_restarts_folders_that_were_skipped(self):
        user, remote = self.connected_user("graph", "upgrader")
        self.drop(remote, mime("Before the upgrade", "rita@customer.test", remote.email,
                               "<before@customer.test>"))
        mailbox_class = type(self.env["exchange.mailbox"])

        def skip_all(mailbox, folder_kind, page, run):  # what 19.0.1 did
            run._count(skipped=len(page.items))

        with patch.object(mailbox_class, "_import_message_page", skip_all):
            self.sync_mails(user)
        self.assertTrue(user._exchange_mailbox().mails_in_state)
        self.sync_mails(user)
        self.assertFalse(self.messages_on(self.rita, subject="Before the upgrade"), "the state moved past it")

        spec = importlib.util.spec_from_file_location(
            "post_mail", ADDON / "migrations" / "19.0.2.0.0" / "post-mail.py")
        migration = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(migration)
        self.env.flush_all()
        migration.migrate(self.env.cr, "19.0.1.0.0")
        self.env.invalidate_all()
        self.assertFalse(user._exchange_mailbox().mails_in_state)

        self.sync_mails(user)
        self.assertEqual(len(self.messages_on(self.rita, subject="Before the upgrade")), 1)
        self.sync_mails(user)
        self.assertEqual(len(self.messages_on(self.rita, subject="Before the upgrade")), 1)

    def test_unknown_address_settings(self):
        company = self.env.company
        user, remote = self.connected_user("ews", "unknown")
        domain_company = self.env["res.partner"].create(
            {"name": "Newco", "is_company": True, "email": "contact@newco.test"})

        self.drop(remote, mime("Queued", "anne@newco.test", remote.email, "<q@newco.test>"))
        self.sync_mails(user)
        self.assertEqual(self.mails_of(user, message_key="<q@newco.test>").state, "queued")

        company.exchange_unknown_address = "ignore"
        self.drop(remote, mime("Ignored", "bert@newco.test", remote.email, "<i@newco.test>"))
        self.sync_mails(user)
        self.assertEqual(self.mails_of(user, message_key="<i@newco.test>").state, "ignored")
        self.assertFalse(self.env["res.partner"].search([("email", "=", "bert@newco.test")]))

        company.exchange_unknown_address = "create"
        self.drop(remote, mime("Created", "Carla Neu <carla@newco.test>", remote.email, "<c@newco.test>"))
        self.drop(remote, mime("Again", "Carla Neu <carla@newco.test>", remote.email, "<c2@newco.test>"))
        self.sync_mails(user)
        carla = self.env["res.partner"].search([("email_normalized", "=", "carla@newco.test")])
        self.assertEqual((carla.name, carla.parent_id), ("Carla Neu", domain_company),
                         "one partner for two mails of one batch")
        self.assertEqual(len(self.messages_on(carla, subject="Created")), 1)
        self.assertEqual(len(self.messages_on(carla, subject="Again")), 1)
        self.assertEqual(self.mails_of(user, message_key="<c@newco.test>").state, "posted")

    def test_delete_after_import_only_after_commit(self):
        user, remote = self.connected_user("graph", "deleter", exchange_delete_after_import=True)
        stored = self.drop(remote, mime("To delete", "rita@customer.test", remote.email,
                                        "<del@customer.test>"))
        folder = remote.folder_by_path("Inbox/Transfer In")
        seen_at_commits = []
        Mail = self.env["exchange.mail"]

        def commit_and_look(cron, processed=0, *, remaining=None, deactivate=False):
            posted = bool(Mail.search(
                [("message_key", "=", "<del@customer.test>"), ("state", "=", "posted")]))
            seen_at_commits.append((posted, stored.id in {i.id for i in remote.items_in(folder.id)}))
            return float("inf")

        mailbox = user._exchange_mailbox()
        delete_imported = type(mailbox)._exchange_delete_imported

        def crash_before_deleting(mailbox, backend):
            if Mail.search_count([("delete_pending", "=", True), ("user_id", "=", user.id)]):
                raise RuntimeError("killed between the commit and the deletion")
            return delete_imported(mailbox, backend)

        run = PendingRun(self.env["exchange.sync.run"], user, "mails", "cron")
        # Not assertRaises: it would roll back to a savepoint what the "committed" pages stored.
        crashed = False
        with patch.object(type(self.env["ir.cron"]), "_commit_progress", commit_and_look), \
                patch.object(type(mailbox), "_exchange_delete_imported", crash_before_deleting), \
                user._exchange_backend() as backend:
            try:
                mailbox._sync_mails(backend, run)
            except RuntimeError:
                crashed = True
        self.assertTrue(crashed)
        self.assertIn((True, True), seen_at_commits, "the post was committed while the mail was still there")
        self.assertTrue(remote.items_in(folder.id), "a crash after the commit leaves the mail in the folder")

        # The next run recognizes it, deletes it, and posts nothing again.
        run = self.sync_mails(user)
        self.assertFalse(remote.items_in(folder.id))
        self.assertEqual(len(self.messages_on(self.rita, subject="To delete")), 1)
        self.assertEqual(run.count_created, 0)
        self.assertFalse(Mail.search([("delete_pending", "=", True)]))

    @mute_logger(IMPORT_LOGGER)
    def test_a_failing_mail_is_retried_then_parked(self):
        user, remote = self.connected_user("ews", "failing")
        self.drop_fine_and_poison(remote)
        with self.poisoned():
            first = self.sync_mails(user)
            self.assertEqual((first.count_created, first.count_failed), (1, 1))
            poison = self.mails_of(user, message_key="<poison@customer.test>")
            self.assertEqual((poison.state, poison.tries), ("failed", 1))
            self.assertIn("cannot store this one", poison.reason)
            self.assertEqual(poison.run_id, first)
            self.sync_mails(user)
            self.sync_mails(user)
            self.assertEqual((poison.state, poison.tries), ("parked", 3))
            fourth = self.sync_mails(user)
            self.assertEqual(fourth.count_failed, 0, "a parked mail holds nothing up")
        self.assertEqual(len(self.messages_on(self.rita, subject="Fine")), 1)
        poison.action_retry()
        self.sync_mails(user)
        self.assertEqual(poison.state, "posted")
        self.assertEqual(len(self.messages_on(self.rita, subject="Poison")), 1)
