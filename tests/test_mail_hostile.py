import base64
from datetime import timezone

from odoo.tests import TransactionCase, tagged
from odoo.tools import mute_logger

from .test_mail_import import IMPORT_LOGGER, MailImportMixin, mime


def raw(*lines, body=b"Hello\r\n"):
    """A mail source from header lines given as bytes or str (bytes keep 8-bit headers as they are)."""
    head = b"\r\n".join(line if isinstance(line, bytes) else line.encode() for line in lines)
    return head + b"\r\n\r\n" + body


def attachment_mail(subject, message_id, filename, content, content_type="application/octet-stream"):
    data = base64.encodebytes(content).replace(b"\n", b"\r\n")
    return raw(
        "From: rita@customer.test", "To: me@ourcompany.test", f"Subject: {subject}",
        f"Message-ID: {message_id}", "MIME-Version: 1.0", 'Content-Type: multipart/mixed; boundary="b"',
        body=(b'--b\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nSee the attachment\r\n'
              b"--b\r\nContent-Type: " + content_type.encode() + b"\r\nContent-Transfer-Encoding: base64\r\n"
              b'Content-Disposition: attachment; filename="' + filename.encode() + b'"\r\n\r\n'
              + data + b"--b--\r\n"),
    )


#: name -> (source, what the test checks); every mail is from or to Rita, a known partner.
def corpus():
    many = ", ".join([f"r{number}@mass.test" for number in range(5000)] + ["rita@customer.test"])
    return {
        "broken": raw(
            "From: rita@customer.test", "To: me@ourcompany.test", "Subject: Broken MIME",
            "Message-ID: <broken@odd.test>", "MIME-Version: 1.0",
            'Content-Type: multipart/mixed; boundary="never-closed"',
            body=b"preamble\r\n--never-closed\r\nContent-Type: text/plain\r\n\r\nTruncated bod"),
        "unknown_charset": raw(
            "From: rita@customer.test", "To: me@ourcompany.test", "Subject: Unknown charset",
            "Message-ID: <charset@odd.test>", "Content-Type: text/plain; charset=x-klingon",
            body="Grüße aus Köln\r\n".encode("latin-1")),
        "wrong_charset": raw(
            "From: rita@customer.test", "To: me@ourcompany.test", "Subject: Wrong charset",
            "Message-ID: <wrong@odd.test>", "Content-Type: text/plain; charset=utf-8",
            body="Fa\xe7ade \xe0 r\xe9nover\r\n".encode("latin-1")),
        "eight_bit_headers": raw(
            "From: Jos\xe9 <rita@customer.test>".encode("latin-1"), "To: me@ourcompany.test",
            "Subject: Prüfbericht für Köln".encode(), "Message-ID: <8bit@odd.test>",
            "Content-Type: text/plain; charset=utf-8", body="Inhalt äöü\r\n".encode()),
        "no_headers": raw("To: me@ourcompany.test", "Content-Type: text/plain", body=b"Who sent this?\r\n"),
        "no_date_no_id": raw(
            "From: rita@customer.test", "To: me@ourcompany.test", "Subject: No date, no id",
            "Content-Type: text/plain", body=b"Undated\r\n"),
        "tnef": attachment_mail("Rich text", "<tnef@odd.test>", "winmail.dat",
                                b"\x78\x9f\x3e\x22" + b"\x00" * 64, "application/ms-tnef"),
        "smime": raw(
            "From: rita@customer.test", "To: me@ourcompany.test", "Subject: Signed",
            "Message-ID: <smime@odd.test>", "MIME-Version: 1.0",
            'Content-Type: multipart/signed; protocol="application/pkcs7-signature"; micalg=sha-256; '
            'boundary="s"',
            body=(b"--s\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nSigned content\r\n"
                  b"--s\r\nContent-Type: application/pkcs7-signature; name=smime.p7s\r\n"
                  b"Content-Transfer-Encoding: base64\r\n"
                  b"Content-Disposition: attachment; filename=smime.p7s\r\n\r\n"
                  b"MIAGCSqGSIb3DQEHAqCAMIACAQExDzANBglghkgBZQMEAgEFADCABgkqhkiG9w0BBwEAAKCAMIIDdjCC\r\n--s--\r\n")),
        "too_large": attachment_mail("Large", "<large@odd.test>", "scan.tif",
                                     b"\x00" * (2 * 1024 * 1024 + 10)),
        "html_attacks": mime(
            "Scripts", "rita@customer.test", "me@ourcompany.test", "<html@odd.test>",
            html='<p onmouseover="steal()">Hi<script>steal()</script><img src="http://t.test/o.gif">'
                 '<iframe src="https://evil.test"></iframe><a href="javascript:steal()">x</a></p>'),
        "many_recipients": mime("Newsletter", "me@ourcompany.test", many, "<many@odd.test>"),
    }


@tagged("post_install", "-at_install")
class TestMailHostileInput(MailImportMixin, TransactionCase):
    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.start_tenant(cls.env)
        cls.rita = cls.env["res.partner"].create({"name": "Rita", "email": "rita@customer.test"})
        cls.env.company.exchange_attachment_limit_mb = 2

    def check_corpus(self, kind):
        user, remote = self.connected_user(kind, f"odd{kind}")
        sources = corpus()
        for name, source in sources.items():
            folder = "Inbox/Transfer Out" if name == "many_recipients" else "Inbox/Transfer In"
            self.drop(remote, source.replace(b"me@ourcompany.test", remote.email.encode()), folder=folder)
        with mute_logger(IMPORT_LOGGER):
            run = self.sync_mails(user)
        mails = self.mails_of(user)
        self.assertEqual(len(mails), len(sources), "every mail has an outcome")
        self.assertFalse(mails.filtered(lambda mail: mail.state in ("failed", "parked")),
                         [(m.subject, m.reason) for m in mails if m.state in ("failed", "parked")])
        self.assertEqual(run.count_failed, 0)
        on_rita = self.messages_on(self.rita)

        def posted(subject):
            message = on_rita.filtered(lambda m: m.subject == subject)
            self.assertEqual(len(message), 1, subject)
            return message

        self.assertIn("Truncated", str(posted("Broken MIME").body))
        self.assertIn("Gr", str(posted("Unknown charset").body))
        self.assertIn("ade", str(posted("Wrong charset").body))
        self.assertEqual(posted("Prüfbericht für Köln").author_id, self.rita)
        undated = posted("No date, no id")
        received = self.remote_received(remote, "No date, no id")
        self.assertEqual(undated.date, received, "Exchange's date of the mail stands in for a missing Date")
        self.assertTrue(undated.message_id.endswith("@content-key.exchange-connector.invalid>"))
        nobody = mails.filtered(lambda mail: "Who sent this" in (mail.preview or ""))
        self.assertEqual(nobody.state, "ignored")
        self.assertIn("no sender address", nobody.reason)
        tnef = posted("Rich text")
        self.assertEqual(tnef.attachment_ids.mapped("name"), ["winmail.dat"])
        self.assertIn("winmail.dat", str(tnef.body))
        self.assertIn("Signed content", str(posted("Signed").body))
        large = posted("Large")
        self.assertFalse(large.attachment_ids)
        self.assertIn("scan.tif", str(large.body))
        self.assertIn("limit of 2 MB", str(large.body))
        attacks = str(posted("Scripts").body)
        for dangerous in ("<script", "onmouseover", "t.test", "<iframe", "javascript:"):
            self.assertNotIn(dangerous, attacks)
        newsletter = posted("Newsletter")
        self.assertEqual(newsletter.author_id, user.partner_id)
        self.assertEqual(mails.filtered(lambda mail: mail.subject == "Newsletter").state, "posted",
                         "the 5,000 unknown recipients do not hold the mail in the queue")
        self.assert_no_partner_created("r1@mass.test")
        return run

    @staticmethod
    def remote_received(remote, subject):
        """When the mailbox received the mail (as Odoo stores datetimes: naive UTC, whole seconds)."""
        item = next(item for item in remote.items.values()
                    if item.kind == "message" and item.subject == subject)
        when = item.sent or item.received
        return when.astimezone(timezone.utc).replace(tzinfo=None, microsecond=0)

    def assert_no_partner_created(self, address):
        self.assertFalse(self.env["res.partner"].search([("email_normalized", "=", address)]))

    def test_corpus_graph(self):
        self.check_corpus("graph")

    def test_corpus_ews(self):
        self.check_corpus("ews")
