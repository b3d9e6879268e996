import random

from odoo.tests import TransactionCase, tagged
from odoo.tools import mute_logger

from odoo.addons.exchange_connector.models.exchange_mail import STREAM_BYTES
from odoo.addons.exchange_connector.services.errors import ConnectionProblem

from .common import ConfiguredTenantMixin
from .test_mail_hostile import attachment_mail
from .test_mail_import import IMPORT_LOGGER, MailImportMixin, mime

#: Bytes of the big attachment: its mail is above STREAM_BYTES, the part above the spooling threshold.
BIG = 5 * 1024 * 1024


@tagged("post_install", "-at_install")
class TestBigMailImport(MailImportMixin, ConfiguredTenantMixin, TransactionCase):
    """Mails above STREAM_BYTES: fetched alone (Graph: one streamed ``$value`` GET, not ``$batch``),
    parsed with the big attachment spooled to a file, stored byte-identical; the size limit, the
    queue and a connection broken in the middle of the source behave as for any mail."""

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.rita = cls.env["res.partner"].create({"name": "Rita", "email": "rita@customer.test"})
        cls.content = random.Random(8).randbytes(BIG)

    def big_mail(self, remote, number, sender="rita@customer.test"):
        source = attachment_mail(f"Plans {number}", f"<plans{number}@customer.test>", f"plans{number}.pdf",
                                 self.content, "application/pdf")
        source = source.replace(b"From: rita@customer.test", f"From: {sender}".encode())
        self.assertGreater(len(source), STREAM_BYTES)
        return self.drop(remote, source.replace(b"me@ourcompany.test", remote.email.encode()))

    def fetches(self, remote):
        """The requests that fetched sources: ``(streamed $value GETs, $batch calls)`` (Graph)."""
        entries = [entry for entry in self.tenant.request_log.entries if entry.get("mailbox") == remote.email]
        streamed = [entry for entry in entries
                    if entry["path"].endswith("/$value") and not entry.get("batch_item")]
        batches = [entry for entry in entries if entry["path"].endswith("/$batch")]
        return streamed, batches

    def posted(self, subject):
        message = self.messages_on(self.rita).filtered(lambda message: message.subject == subject)
        self.assertEqual(len(message), 1, subject)
        return message

    def test_graph_big_mail_is_streamed_alone(self):
        user, remote = self.connected_user("graph", "bigstream")
        self.big_mail(remote, 1)
        self.tenant.request_log.clear()
        run = self.sync_mails(user)
        streamed, batches = self.fetches(remote)
        self.assertEqual(len(streamed), 1, "one GET .../$value for the big mail")
        self.assertFalse(batches, "the big mail does not go through $batch")
        self.assertEqual(run.count_created, 1)
        attachment = self.posted("Plans 1").attachment_ids
        self.assertEqual(attachment.mapped("name"), ["plans1.pdf"])
        self.assertEqual(attachment.raw, self.content, "byte-identical")
        self.assertEqual(attachment.mimetype, "application/pdf")
        self.assertEqual((attachment.res_model, attachment.res_id), ("res.partner", self.rita.id))

    def test_graph_small_mails_keep_batch(self):
        user, remote = self.connected_user("graph", "bigmixed")
        self.big_mail(remote, 2)
        for number in range(3):
            self.drop(remote, mime(f"Small {number}", "rita@customer.test", remote.email,
                                   f"<small{number}@customer.test>"))
        self.tenant.request_log.clear()
        self.sync_mails(user)
        streamed, batches = self.fetches(remote)
        self.assertEqual((len(streamed), len(batches)), (1, 1), "the 3 small mails in one $batch")
        for subject in ("Plans 2", "Small 0", "Small 1", "Small 2"):
            self.posted(subject)

    def check_size_limit(self, kind):
        self.env.company.exchange_attachment_limit_mb = 2
        user, remote = self.connected_user(kind, f"biglimit{kind}")
        self.big_mail(remote, 3)
        attachments_before = self.env["ir.attachment"].search_count([("name", "=", "plans3.pdf")])
        self.sync_mails(user)
        message = self.posted("Plans 3")
        self.assertFalse(message.attachment_ids)
        self.assertIn("plans3.pdf", str(message.body))
        self.assertIn("limit of 2 MB", str(message.body))
        self.assertEqual(self.env["ir.attachment"].search_count([("name", "=", "plans3.pdf")]),
                         attachments_before, "nothing stored for the file above the limit")

    def test_graph_size_limit_note(self):
        self.check_size_limit("graph")

    def test_ews_size_limit_note(self):
        self.check_size_limit("ews")

    def test_graph_connection_broken_mid_stream_loses_nothing(self):
        self.check_connection_broken("graph")

    def test_ews_connection_broken_mid_stream_loses_nothing(self):
        self.check_connection_broken("ews")

    def check_connection_broken(self, kind):
        user, remote = self.connected_user(kind, f"bigcut{kind}")
        self.big_mail(remote, 4)
        self.drop(remote, mime("Small", "rita@customer.test", remote.email, "<small-cut@customer.test>"))
        self.tenant.knobs.set(remote.email, cut_mime_after_bytes=BIG // 2)
        with mute_logger(IMPORT_LOGGER), self.assertRaises(ConnectionProblem):
            self.sync_mails(user)
        self.assertFalse(self.mails_of(user), "the page is rolled back, its state not saved")
        self.tenant.knobs.reset()
        self.sync_mails(user)
        self.assertEqual(self.posted("Plans 4").attachment_ids.raw, self.content)
        self.posted("Small")
        self.assertEqual(len(self.mails_of(user, state="posted")), 2)
        self.sync_mails(user)
        self.assertEqual(len(self.messages_on(self.rita)), 2, "imported once")

    def test_ews_big_mails_fetched_alone(self):
        user, remote = self.connected_user("ews", "bigews")
        self.big_mail(remote, 5)
        self.big_mail(remote, 6)
        self.drop(remote, mime("Small EWS", "rita@customer.test", remote.email, "<small-ews@customer.test>"))
        self.tenant.request_log.clear()
        self.sync_mails(user)
        get_items = [entry for entry in self.tenant.request_log.entries
                     if entry.get("operation") == "GetItem" and entry["status"] == 200]
        # The small mail, then each big mail in a GetItem of its own (the sizes come with the
        # listing: no GetItem of the page's envelopes).
        self.assertEqual(len(get_items), 3)
        for number in (5, 6):
            self.assertEqual(self.posted(f"Plans {number}").attachment_ids.raw, self.content)
        self.posted("Small EWS")

    def test_big_mail_waits_then_assigned(self):
        """A big mail from an unknown address keeps its source (stored from the file) until assigned."""
        user, remote = self.connected_user("graph", "bigqueue")
        self.big_mail(remote, 7, sender="nobody@unknown.test")
        self.sync_mails(user)
        waiting = self.mails_of(user, state="queued")
        self.assertEqual(len(waiting), 1)
        self.assertEqual(waiting.attachment_names, "plans7.pdf")
        self.assertGreater(len(waiting._exchange_source()), BIG)
        self.env["exchange.mail"].sudo()._exchange_post_chosen([(waiting, self.rita)])  # the wizard's call
        self.assertEqual(waiting.state, "posted")
        self.assertEqual(self.posted("Plans 7").attachment_ids.raw, self.content)
        self.assertFalse(waiting.with_context(bin_size=True).mime, "the source is dropped once posted")

    def test_big_mail_failing_keeps_its_source_for_the_retry(self):
        user, remote = self.connected_user("graph", "bigfail")
        source = attachment_mail("Poison", "<poison-big@customer.test>", "plans8.pdf", self.content,
                                 "application/pdf")
        self.drop(remote, source)
        with self.poisoned(), mute_logger(IMPORT_LOGGER):
            self.sync_mails(user)
        failed = self.mails_of(user, state="failed")
        self.assertEqual(len(failed), 1)
        self.assertEqual(failed._exchange_source(), source, "stored from the streamed file, as it came")
        self.tenant.request_log.clear()
        self.sync_mails(user)
        self.assertEqual(failed.state, "posted")
        self.assertEqual(self.posted("Poison").attachment_ids.raw, self.content)
        streamed, batches = self.fetches(remote)
        self.assertFalse(streamed or batches, "the retry reads the stored source")
