from odoo.exceptions import UserError
from odoo.tests import TransactionCase, new_test_user, tagged

from .common import ConfiguredTenantMixin
from .test_mail_import import MailImportMixin, mime


@tagged("post_install", "-at_install")
class TestMailAssignment(MailImportMixin, ConfiguredTenantMixin, TransactionCase):
    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        Partner = cls.env["res.partner"]
        cls.acme = Partner.create({"name": "Acme", "is_company": True})
        cls.salesman = new_test_user(cls.env, login="salesman.test", name="Salesman")
        cls.anna_a = Partner.create({
            "name": "Anna (Acme)", "email": "anna@dup.test",
            "parent_id": cls.acme.id, "user_id": cls.salesman.id,
        })
        cls.anna_b = Partner.create({"name": "Anna (private)", "email": "ANNA@dup.test"})
        cls.anna_b.message_post(body="Earlier note", message_type="comment")

    def wizard_for(self, user, mails):
        return self.env["exchange.assign.partner"].with_user(user).with_context(
            active_model="exchange.mail", active_ids=mails.ids).create({})

    def check_assignment(self, kind):
        user, remote = self.connected_user(kind, f"assign{kind}")
        for number in range(2):
            self.drop(remote, mime(f"Question {number}", "Anna <anna@dup.test>", remote.email,
                                   f"<q{number}-{kind}@dup.test>"))
        self.drop(remote, mime("Reply", remote.email, "anna@dup.test, nobody@unknown.test",
                               f"<out-{kind}@dup.test>"), folder="Inbox/Transfer Out")
        run = self.sync_mails(user)

        waiting = self.mails_of(user, state="queued")
        self.assertEqual(len(waiting), 3)
        self.assertEqual(run.count_skipped, 3)
        self.assertIn("Several partners have anna@dup.test", waiting[0].reason)
        self.assertFalse(self.messages_on(self.anna_a) | self.messages_on(self.anna_b))
        self.assertTrue(all(mail.mime for mail in waiting), "a waiting mail keeps its source")

        # Both incoming questions at once: the wizard shows the mails and the candidates.
        questions = waiting.filtered(lambda mail: mail.folder_kind == "in").with_user(user)
        wizard = self.wizard_for(user, questions)
        self.assertEqual(wizard.mail_ids, questions)
        self.assertEqual(wizard.candidate_ids.partner_id, self.anna_a | self.anna_b)
        line_a = wizard.candidate_ids.filtered(lambda line: line.partner_id == self.anna_a)
        line_b = wizard.candidate_ids.filtered(lambda line: line.partner_id == self.anna_b)
        self.assertEqual((line_a.company_name, line_a.salesperson_id), ("Acme", self.salesman))
        self.assertTrue(line_b.last_activity)
        self.assertIn("Hello", questions[0].preview)
        with self.assertRaises(UserError):
            wizard.action_assign()
        line_b.selected = True
        wizard.remember = True
        wizard.action_assign()

        for question in questions:
            self.assertEqual(question.state, "posted")
            self.assertFalse(question.mime)
        on_b = self.messages_on(self.anna_b)
        self.assertEqual(len(on_b), 2)
        self.assertEqual(on_b.author_id, self.anna_b)
        self.assert_nothing_sent(on_b)
        self.assertFalse(self.messages_on(self.anna_a))
        choice = self.env["exchange.address.choice"].search([("user_id", "=", user.id)])
        self.assertEqual((choice.address, choice.partner_ids), ("anna@dup.test", self.anna_b))
        self.assertEqual(self.env["exchange.address.choice"].with_user(user).search([]), choice,
                         "the user finds their remembered choice in their list")

        # Remembered: the next mail of that address goes to Anna (private) at once.
        self.drop(remote, mime("Again", "anna@dup.test", remote.email, f"<again-{kind}@dup.test>"))
        self.sync_mails(user)
        self.assertEqual(len(self.messages_on(self.anna_b, subject="Again")), 1)

        # The outgoing mail: Anna is now remembered, the unknown address still waits; assign it elsewhere.
        outgoing = waiting.filtered(lambda mail: mail.folder_kind == "out").with_user(user)
        self.assertIn("No partner has nobody@unknown.test", outgoing.reason)
        wizard = self.wizard_for(user, outgoing)
        wizard.extra_partner_ids = self.acme
        wizard.action_assign()
        self.assertEqual(outgoing.state, "posted")
        self.assertEqual(self.messages_on(self.acme, subject="Reply").author_id, user.partner_id)

        # The user edits the list of remembered choices.
        choice.with_user(user).partner_ids = self.anna_a
        self.drop(remote, mime("Third", "anna@dup.test", remote.email, f"<third-{kind}@dup.test>"))
        self.sync_mails(user)
        self.assertEqual(len(self.messages_on(self.anna_a, subject="Third")), 1)
        return user

    def test_assignment_graph(self):
        self.check_assignment("graph")

    def test_assignment_ews(self):
        self.check_assignment("ews")

    def test_ignore_and_privacy_of_the_queue(self):
        user, remote = self.connected_user("ews", "ignorer", exchange_delete_after_import=True)
        other, _other_remote = self.connected_user("graph", "nosy")
        self.drop(remote, mime("Spam", "anna@dup.test", remote.email, "<spam@dup.test>"))
        self.sync_mails(user)
        waiting = self.mails_of(user, state="queued")
        self.assertFalse(self.env["exchange.mail"].with_user(other).search([("id", "=", waiting.id)]))
        own = self.env["exchange.mail"].with_user(user).search([("state", "=", "queued")])
        self.assertEqual(own, waiting)

        wizard = self.wizard_for(user, waiting.with_user(user))
        wizard.action_ignore()
        self.assertEqual(waiting.state, "ignored")
        self.assertTrue(waiting.delete_pending)
        folder = remote.folder_by_path("Inbox/Transfer In")
        self.assertEqual(len(remote.items_in(folder.id)), 1)
        self.sync_mails(user)
        self.assertFalse(remote.items_in(folder.id), "deleted at the next sync, once the decision is stored")

    def test_the_preview_is_the_text_alone(self):
        user, remote = self.connected_user("graph", "previewer")
        html = ('<p>Dear Anna,</p>\n\n<p>our <a href="https://shop.example/offer?id=7">offer</a> '
                'with our logo <img src="cid:logo@x" alt="logo">.</p>\n<p>\n\n\nRegards</p>')
        self.drop(remote, mime("Offer", '"Anna" <Anna@Dup.test>', f'"Me" <{remote.email}>',
                               "<preview@dup.test>", html=html))
        self.sync_mails(user)
        waiting = self.mails_of(user, state="queued")
        self.assertEqual(waiting.preview, "Dear Anna, our offer with our logo . Regards",
                         "the text as it reads, in one paragraph: no link targets, no image references")
        self.assertEqual((waiting.email_from, waiting.email_to),
                         ("Anna <anna@dup.test>", f"Me <{remote.email}>"),
                         "addresses as people read them, without the header's quotes")
