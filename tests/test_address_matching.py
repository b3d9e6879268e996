from odoo.exceptions import ValidationError
from odoo.tests import TransactionCase, new_test_user, tagged


@tagged("post_install", "-at_install")
class TestAddressMatching(TransactionCase):
    """The partner lookup that mail and event import share."""

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.user = new_test_user(cls.env, login="matcher", name="Matcher", exchange_email="me@ours.example")
        cls.other_user = new_test_user(cls.env, login="other.matcher", name="Other")
        Partner = cls.env["res.partner"]
        cls.single = Partner.create({"name": "Single", "email": "Single@Client.example"})
        cls.twin_a = Partner.create({"name": "Twin A", "email": "twins@client.example"})
        cls.twin_b = Partner.create({"name": "Twin B", "email": "TWINS@client.example"})
        cls.idn = Partner.create({"name": "Müller", "email": "info@xn--mller-kva.de"})
        cls.archived = Partner.create({"name": "Gone", "email": "gone@client.example", "active": False})

    def match(self, *addresses, user=None):
        return self.env["res.partner"]._exchange_match_addresses(addresses, user or self.user)

    def test_single_ambiguous_unknown_archived(self):
        found = self.match("single@client.example", "twins@client.example", "nobody@client.example",
                           "gone@client.example")
        self.assertEqual(found["single@client.example"], self.single)
        self.assertEqual(found["twins@client.example"], self.twin_a | self.twin_b)
        self.assertFalse(found["nobody@client.example"])
        self.assertFalse(found["gone@client.example"], "an archived partner is nobody to file on")

    def test_idn_stored_as_punycode_matches_unicode(self):
        self.assertEqual(self.match("info@müller.de")["info@müller.de"], self.idn)

    def test_remembered_choice_is_per_user(self):
        self.env["exchange.address.choice"].create({
            "user_id": self.user.id, "address": "Twins <TWINS@Client.example>",
            "partner_ids": self.twin_b.ids,
        })
        self.assertEqual(self.match("twins@client.example")["twins@client.example"], self.twin_b)
        other = self.match("twins@client.example", user=self.other_user)["twins@client.example"]
        self.assertEqual(other, self.twin_a | self.twin_b)
        # A remembered partner archived since: the address is open again.
        self.twin_b.active = False
        self.assertEqual(self.match("twins@client.example")["twins@client.example"], self.twin_a)

    def test_choice_needs_one_address_and_is_private(self):
        Choice = self.env["exchange.address.choice"]
        values = {"user_id": self.user.id, "partner_ids": self.single.ids}
        with self.assertRaises(ValidationError):
            Choice.create(dict(values, address="a@x.com, b@y.com"))
        Choice.create(dict(values, address="single@client.example"))
        self.assertFalse(Choice.with_user(self.other_user).search([]))
        self.assertEqual(len(Choice.with_user(self.user).search([])), 1)

    def test_company_addresses(self):
        own = self.env["res.partner"]._exchange_company_addresses()
        self.assertIn("me@ours.example", own, "a user's mailbox address")
        self.assertIn(self.other_user.email.lower(), own, "an internal user's e-mail")
        self.assertNotIn("single@client.example", own)
        alias_domain = self.env["mail.alias.domain"].create({"name": "Ours.Example"})
        self.assertIn(alias_domain.catchall_email.lower(),
                      self.env["res.partner"]._exchange_company_addresses())
