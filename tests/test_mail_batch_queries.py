from unittest.mock import patch

from odoo.tests import TransactionCase, tagged

from .test_mail_import import MailImportMixin, mime


@tagged("post_install", "-at_install")
class TestMailBatchQueries(MailImportMixin, TransactionCase):
    """A page of mails costs the same SQL queries whether it holds 5 mails or 20.

    The pages mix what used to cost a query or more per mail: replies to an Odoo thread (is its
    document still there?), unknown senders (partners created, their domain's company looked
    up), known senders, Odoo's parse (bounce aliases, recipients' aliases).
    """

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.start_tenant(cls.env)
        cls.env.company.exchange_unknown_address = "create"
        Partner = cls.env["res.partner"]
        cls.senders = Partner.create(
            [{"name": f"Sender {number}", "email": f"sender{number}@customer.test"} for number in range(20)])
        cls.newco = Partner.create({"name": "Newco", "is_company": True, "email": "contact@newco.test"})
        cls.deals = Partner.create([{"name": f"Deal {number}", "is_company": True} for number in range(4)])
        cls.offers = [deal.message_post(body="Our offer", message_type="comment") for deal in cls.deals]

    def drop_page(self, remote, count, tag):
        for number in range(count):
            message_id = f"<{tag}-{number}@customer.test>"
            if number % 4 == 0:
                offer = self.offers[number // 4 % len(self.offers)]
                source = mime(f"Re: offer {number}", "someone@elsewhere.test", remote.email, message_id,
                              in_reply_to=offer.message_id)
            elif number % 4 == 1:
                source = mime(f"Hello {number}", f"New {tag} {number} <new-{tag}-{number}@newco.test>",
                              remote.email, message_id)
            else:
                source = mime(f"Order {number}", self.senders[number].email, remote.email, message_id)
            self.drop(remote, source)

    def queries_of_import(self, kind, count):
        tag = f"q{count}{kind}"
        user, remote = self.connected_user(kind, tag)
        self.drop_page(remote, count, tag)
        cursor_class = type(self.env.cr)
        execute = cursor_class.execute
        queries = []

        def counted(cursor, query, params=None, log_exceptions=True):
            queries.append(query.code if hasattr(query, "code") else str(query))
            return execute(cursor, query, params, log_exceptions)

        with patch.object(cursor_class, "execute", counted):
            run = self.sync_mails(user)
        self.assertEqual(run.count_created, count)
        return user, queries

    def check_queries_do_not_grow(self, kind):
        self.queries_of_import(kind, 2)  # once: what a first import of the process sets up
        _small_user, small = self.queries_of_import(kind, 5)
        user, large = self.queries_of_import(kind, 20)
        self.assertLessEqual(
            len(large) - len(small), 6,
            f"{len(small)} queries for 5 mails, {len(large)} for 20:\n" + "\n".join(large))
        # The page was imported as it should: replies on their deals, new partners author their mails.
        tag = f"q20{kind}"
        for number, deal in ((0, self.deals[0]), (12, self.deals[3])):
            self.assertEqual(len(self.messages_on(deal, message_id=f"<{tag}-{number}@customer.test>")), 1)
        created = self.env["res.partner"].search([("email", "=like", f"new-{tag}-%")])
        self.assertEqual(len(created), 5)
        self.assertEqual(created.parent_id, self.newco)
        for partner in created:
            posted = self.messages_on(partner)
            self.assertEqual(len(posted), 1)
            self.assertEqual(posted.author_id, partner, "a new partner is the author of its mail")
            # Created quietly: nobody follows it, no "contact created" note.
            self.assertFalse(partner.message_follower_ids)
            self.assertFalse(partner.message_ids - posted)
        self.assertEqual(len(self.mails_of(user, state="posted")), 20)

    def test_queries_per_page_graph(self):
        self.check_queries_do_not_grow("graph")

    def test_queries_per_page_ews(self):
        self.check_queries_do_not_grow("ews")
