from unittest.mock import patch

from odoo.tests import TransactionCase, tagged
from odoo.tools import mute_logger

from .test_mail_import import IMPORT_LOGGER, MailImportMixin, mime


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
        self.drop(remote, mime("Fine", "rita@customer.test", remote.email, "<fine@customer.test>"))
        self.drop(remote, mime("Poison", "rita@customer.test", remote.email, "<poison@customer.test>"))
        mail_class = type(self.env["exchange.mail"])
        message_values = mail_class._exchange_message_values

        def fail_on_poison(mail, user, parsed, model, res_id, author):
            if parsed["subject"] == "Poison":
                raise ValueError("cannot store this one")
            return message_values(mail, user, parsed, model, res_id, author)

        with patch.object(mail_class, "_exchange_message_values", fail_on_poison):
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
