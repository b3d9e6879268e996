from datetime import timedelta
from unittest.mock import patch

from odoo import fields
from odoo.exceptions import AccessError
from odoo.tests import HttpCase, TransactionCase, new_test_user, tagged

from odoo.addons.exchange_connector.models.exchange_mailbox import PendingRun
from odoo.addons.exchange_connector.services.backend import ContactResult
from odoo.addons.exchange_connector.services.contact_mapping import MARKER_GRAPH_ID, partner_marker
from odoo.addons.exchange_connector.services.errors import ExchangeError, TimeBudgetExceeded
from odoo.addons.exchange_connector.services.ews import EwsBackend
from odoo.addons.exchange_connector.services.graph import GraphBackend
from odoo.addons.exchange_connector.simulator.store import parse_extended_property_id

from .common import ExchangeTenantMixin, no_commit_progress

MARKER_KEY = parse_extended_property_id(MARKER_GRAPH_ID)
WRITE_OPERATIONS = {"CreateItem", "UpdateItem", "DeleteItem"}


class ContactPushMixin(ExchangeTenantMixin):
    """The contact push against the local tenant; ``make_user`` gives a Graph or an EWS mailbox."""

    account_type = None
    backend_class = None
    # The same tests run for Graph and EWS: Odoo's loader then needs to see inherited test methods.
    allow_inherited_tests_method = True
    _names = iter(range(1, 10_000))

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.start_tenant(cls.env)
        cls.uuid = cls.env["ir.config_parameter"].sudo().get_param("database.uuid")
        cls.tag = cls.env["res.partner.category"].create({"name": "VIP"})
        cls.company = cls.env["res.partner"].create({"name": "Contoso Ltd", "is_company": True})

    def make_user(self, **values):
        name = f"{self.account_type}{next(self._names)}"
        return self.connected_user(self.account_type, name, env=self.env, **values)

    def setUp(self):
        super().setUp()
        self.user, self.remote = self.make_user()
        self.anna = self.env["res.partner"].create({
            "name": "Anna Maria Berger", "parent_id": self.company.id, "function": "Buyer",
            "email": "anna@contoso.example", "phone": "+49 89 123", "street": "Hauptstraße 1",
            "street2": "3. OG", "zip": "80331", "city": "München", "website": "https://contoso.example",
            "category_id": [(6, 0, self.tag.ids)],
        })
        self.bo = self.env["res.partner"].create({"name": "王小明"})  # no e-mail at all

    def push(self, user=None, trigger="manual"):
        """One contact sync of ``user`` through the seam ("Sync now" by default); returns the run."""
        user = user or self.user
        run = PendingRun(self.env["exchange.sync.run"], user, "contacts", trigger)
        with no_commit_progress(self.env), user._exchange_backend() as backend:
            error = user._exchange_mailbox()._exchange_sync_kind("contacts", backend, run)
        self.assertIsNone(error)
        return run.record

    @staticmethod
    def counts(run):
        """(created, updated, deleted, failed) of a run record (a run that found nothing has none)."""
        if not run:
            return (0, 0, 0, 0)
        return (run.count_created, run.count_updated, run.count_deleted, run.count_failed)

    def contacts(self, remote=None):
        """{partner id: store contact} of the contacts carrying this database's marker."""
        remote = remote or self.remote
        found = {}
        for item in remote.items_in(remote.folder("contacts").id) + [
                i for f in remote.child_folders(remote.folder("contacts").id) for i in remote.items_in(f.id)]:
            marker = (getattr(item, "extended_properties", None) or {}).get(MARKER_KEY) or ""
            if marker.startswith(self.uuid + ":"):
                self.assertNotIn(int(marker.rsplit(":", 1)[1]), found, "a partner pushed twice")
                found[int(marker.rsplit(":", 1)[1])] = item
        return found

    def write_requests(self, remote=None):
        email = (remote or self.remote).email.lower()
        return [e for e in self.tenant.request_log.entries if (e.get("mailbox") or "").lower() == email and (
            e["method"] in ("POST", "PATCH", "DELETE") if e["protocol"] == "graph"
            else e.get("operation") in WRITE_OPERATIONS)]

    def subscribe(self, partners, user=None):
        partners.with_user(user or self.user).action_exchange_subscribe()

    def unsubscribe(self, partners, user=None):
        partners.with_user(user or self.user).action_exchange_unsubscribe()

    # -- the tests ---------------------------------------------------------------------------------

    def test_subscribe_push_update_and_nothing_when_nothing_changed(self):
        own = self.remote.add_contact(None, given_name="Own", surname="Friend", categories=["Odoo"])
        self.subscribe(self.anna | self.bo)
        self.assertTrue(self.anna.with_user(self.user).exchange_in_my_outlook)
        self.assertEqual(self.env["res.partner"].with_user(self.user).search(
            [("exchange_in_my_outlook", "=", True)]), self.anna | self.bo)
        self.assertEqual(self.anna.exchange_subscriber_ids, self.user)
        self.assertEqual(self.user.exchange_contact_count, 2)

        self.assertEqual(self.counts(self.push()), (2, 0, 0, 0))
        contacts = self.contacts()
        self.assertEqual(set(contacts), {self.anna.id, self.bo.id})
        anna = contacts[self.anna.id]
        self.assertEqual(anna.folder_id, self.remote.folder("contacts").id, "main Contacts folder by default")
        self.assertEqual((anna.given_name, anna.surname, anna.company_name, anna.job_title),
                         ("Anna Maria", "Berger", "Contoso Ltd", "Buyer"))
        self.assertEqual([a for _n, a in anna.email_addresses], ["anna@contoso.example"])
        self.assertEqual(anna.business_phones, ["+49 89 123"])
        self.assertEqual(anna.business_address.street, "Hauptstraße 1\n3. OG")
        address = anna.business_address
        self.assertEqual((address.city, address.postal_code), ("München", "80331"))
        self.assertEqual(anna.business_home_page, "https://contoso.example")
        self.assertEqual(anna.categories, ["Odoo", "VIP"])
        self.assertIn(f"/odoo/res.partner/{self.anna.id}", anna.personal_notes)
        self.assertEqual(contacts[self.bo.id].display_name, "王小明")
        self.assertEqual(contacts[self.bo.id].email_addresses, [])
        binding = self.anna.sudo().exchange_contact_binding_ids
        remote_id = self.remote.item(anna.id).immutable_id if self.account_type == "graph" else anna.id
        self.assertEqual((binding.user_id, binding.remote_id), (self.user, remote_id))

        self.tenant.request_log.clear()
        run = self.push()
        self.assertEqual(self.counts(run), (0, 0, 0, 0))
        self.assertEqual(self.write_requests(), [], "no write when nothing changed")

        self.anna.city = "Augsburg"
        self.assertEqual(self.counts(self.push()), (0, 1, 0, 0))
        self.assertEqual(self.contacts()[self.anna.id].business_address.city, "Augsburg")
        self.assertEqual(self.remote.item(own.id).change_key, own.change_key, "the user's own is untouched")

    def test_scheduled_runs_ask_nothing_until_something_changed(self):
        self.subscribe(self.anna | self.bo)
        self.push(trigger="cron")
        self.assertEqual(len(self.contacts()), 2)
        self.tenant.request_log.clear()
        self.assertFalse(self.push(trigger="cron"), "no run record: nothing to tell")
        self.assertEqual(self.tenant.request_log.entries, [], "not a single request")
        self.remote.delete_item(self.contacts()[self.anna.id].id, soft=False)
        self.push(trigger="cron")
        self.assertEqual(set(self.contacts()), {self.bo.id}, "noticed at the next comparison")
        self.bo.phone = "+86 10 1234 5678"
        self.assertEqual(self.counts(self.push(trigger="cron")), (1, 1, 0, 0), "a change compares as well")
        self.assertEqual(self.contacts()[self.bo.id].business_phones, ["+86 10 1234 5678"])
        self.unsubscribe(self.bo)
        self.user.exchange_delete_contact_on_unsubscribe = True
        self.assertEqual(self.counts(self.push(trigger="cron")), (0, 0, 1, 0))
        mailbox = self.env["exchange.mailbox"].sudo().search([("user_id", "=", self.user.id)])
        mailbox.contacts_checked_at = fields.Datetime.now() - timedelta(hours=7)
        self.remote.delete_item(self.contacts()[self.anna.id].id, soft=False)
        self.assertEqual(self.counts(self.push(trigger="cron")), (1, 0, 0, 0), "compared again after hours")
        mailbox.contacts_checked_at = fields.Datetime.now() - timedelta(hours=7)
        self.tenant.request_log.clear()
        self.assertEqual(self.counts(self.push(trigger="cron")), (0, 0, 0, 0))
        self.assertTrue(self.tenant.request_log.entries, "the folder is compared")
        self.assertEqual(self.write_requests(), [])

    def test_nothing_subscribed_lists_nothing(self):
        self.push()
        self.tenant.request_log.clear()
        self.assertEqual(self.counts(self.push()), (0, 0, 0, 0))
        listings = [e for e in self.tenant.request_log.entries if e.get("operation") == "FindItem"
                    or "/contacts" in e["endpoint"]]
        self.assertEqual(listings, [])

    def test_unsubscribe_leaves_or_deletes_as_the_user_chose(self):
        self.subscribe(self.anna | self.bo)
        self.push()
        self.unsubscribe(self.bo)
        self.assertEqual(self.counts(self.push()), (0, 0, 0, 0))
        left = self.contacts()[self.bo.id]
        self.bo.name = "王小明 (renamed)"
        self.push()
        self.assertEqual(self.remote.item(left.id).change_key, left.change_key, "left alone, no more updated")
        self.assertFalse(self.bo.sudo().exchange_contact_binding_ids)

        self.user.exchange_delete_contact_on_unsubscribe = True
        self.unsubscribe(self.anna)
        self.assertEqual(self.counts(self.push()), (0, 0, 1, 0))
        self.assertEqual(set(self.contacts()), {self.bo.id})

    def test_deleted_in_outlook_is_recreated_and_archived_partner_removed(self):
        self.subscribe(self.anna | self.bo)
        self.push()
        self.remote.delete_item(self.contacts()[self.anna.id].id, soft=False)
        self.assertEqual(self.counts(self.push()), (1, 0, 0, 0))
        self.assertIn(self.anna.id, self.contacts())
        self.bo.action_archive()
        self.assertEqual(self.counts(self.push()), (0, 0, 1, 0))
        self.assertEqual(set(self.contacts()), {self.anna.id})
        self.anna.unlink()
        self.assertEqual(self.counts(self.push()), (0, 0, 1, 0))
        self.assertEqual(self.contacts(), {})

    def test_other_database_and_own_contacts_untouched(self):
        other_marker = partner_marker("00000000-other-database", self.anna.id)
        foreign = self.remote.add_contact(
            None, given_name="Anna", surname="Elsewhere", categories=["Odoo"],
            extended_properties={MARKER_KEY: other_marker})
        own = self.remote.add_contact(None, given_name="Anna", surname="Berger",
                                      email_addresses=["anna@contoso.example"])
        self.user.exchange_delete_contact_on_unsubscribe = True
        self.subscribe(self.anna)
        self.push()
        self.anna.phone = "+49 89 999"
        self.push()
        self.unsubscribe(self.anna)
        self.assertEqual(self.counts(self.push()), (0, 0, 1, 0))
        for item in (foreign, own):
            self.assertEqual(self.remote.item(item.id).change_key, item.change_key)
        self.assertEqual(self.remote.item(foreign.id).extended_properties[MARKER_KEY], other_marker)

    def test_outcome_unknown_create_never_duplicates(self):
        self.subscribe(self.anna | self.bo)
        real_push = self.backend_class.push_contacts

        def lost_answers(backend, folder, changes):
            real_push(backend, folder, changes)  # Microsoft did it, the answer got lost
            return [ContactResult.outcome_unknown(change, ExchangeError("read timed out"))
                    for change in changes]

        with patch.object(self.backend_class, "push_contacts", lost_answers):
            run = self.push()
        self.assertEqual(run.count_created, 0)
        self.assertFalse(self.env["exchange.binding"].sudo().search([("user_id", "=", self.user.id)]))
        self.assertEqual(set(self.contacts()), {self.anna.id, self.bo.id})
        self.tenant.request_log.clear()
        run = self.push()  # adopts the two by their marker, creates nothing
        self.assertEqual((run.count_created, run.count_failed), (0, 0))
        self.assertEqual(set(self.contacts()), {self.anna.id, self.bo.id})
        self.assertEqual(len(self.anna.sudo().exchange_contact_binding_ids), 1)

    def test_budget_spent_mid_push_keeps_what_was_done(self):
        partners = self.anna | self.bo | self.company
        self.subscribe(partners)
        real_push = self.backend_class.push_contacts

        def budget_ends_after_one(backend, folder, changes):
            done = real_push(backend, folder, changes[:1])
            stop = TimeBudgetExceeded("the run's time budget is spent")
            return done + [ContactResult.not_applied(change, stop) for change in changes[1:]]

        run = PendingRun(self.env["exchange.sync.run"], self.user, "contacts", "manual")
        with no_commit_progress(self.env), \
                patch.object(self.backend_class, "push_contacts", budget_ends_after_one), \
                self.user._exchange_backend() as backend:
            error = self.user._exchange_mailbox()._exchange_sync_kind("contacts", backend, run)
        self.assertIsInstance(error, TimeBudgetExceeded, "the run is partial: the mailbox resumes soon")
        self.assertEqual((run.record.count_created, run.record.count_skipped), (1, 2))
        self.assertEqual(len(self.contacts()), 1)
        self.assertEqual(self.counts(self.push()), (2, 0, 0, 0), "the next run does the rest, once")
        self.assertEqual(set(self.contacts()), set(partners.ids))

    def test_access_rules(self):
        other_company = self.env["res.company"].create({"name": "Other Co"})
        hidden = self.env["res.partner"].create({"name": "Hidden Partner", "company_id": other_company.id})
        with self.assertRaises(AccessError):
            self.subscribe(hidden)
        self.subscribe(self.anna)
        self.push()
        self.anna.company_id = other_company  # the user can no longer read it
        self.assertEqual(self.counts(self.push()), (0, 0, 1, 0))
        self.assertEqual(self.contacts(), {})
        self.assertFalse(self.env["exchange.contact.subscription"].search([("user_id", "=", self.user.id)]))

    def test_salesperson_keeps_customers_subscribed(self):
        self.anna.user_id = self.user
        self.bo.user_id = self.user
        self.user.with_user(self.user).action_exchange_subscribe_my_customers()
        self.assertEqual(self.user.exchange_contact_count, 2)
        self.user.write({"exchange_keep_customers_subscribed": True,
                         "exchange_unsubscribe_reassigned_customers": True})
        colleague, _remote = self.make_user(exchange_keep_customers_subscribed=True)
        new = self.env["res.partner"].create({"name": "New Customer", "user_id": self.user.id})
        self.assertTrue(new.with_user(self.user).exchange_in_my_outlook)
        self.push()
        self.assertEqual(set(self.contacts()), {self.anna.id, self.bo.id, new.id})
        self.user.exchange_delete_contact_on_unsubscribe = True
        self.anna.user_id = colleague  # reassigned
        self.assertFalse(self.anna.with_user(self.user).exchange_in_my_outlook)
        self.assertTrue(self.anna.with_user(colleague).exchange_in_my_outlook)
        self.push()
        self.assertEqual(set(self.contacts()), {self.bo.id, new.id})

    def test_named_subfolder_and_every_subscriber_updated(self):
        self.subscribe(self.anna)
        self.push()
        self.user.exchange_contact_folder = "Odoo Leads"
        self.assertEqual(self.counts(self.push()), (1, 0, 1, 0))
        anna = self.contacts()[self.anna.id]
        self.assertEqual(self.remote.folder(anna.folder_id).display_name, "Odoo Leads")
        second, second_remote = self.make_user()
        self.subscribe(self.anna, second)
        self.push(second)
        self.anna.function = "Head of Purchasing"
        self.assertEqual(self.counts(self.push()), (0, 1, 0, 0))
        self.assertEqual(self.counts(self.push(second)), (0, 1, 0, 0))
        self.assertEqual(self.contacts()[self.anna.id].job_title, "Head of Purchasing")
        self.assertEqual(self.contacts(second_remote)[self.anna.id].job_title, "Head of Purchasing")


@tagged("post_install", "-at_install")
class TestContactPushGraph(ContactPushMixin, TransactionCase):
    account_type = "graph"
    backend_class = GraphBackend


@tagged("post_install", "-at_install")
class TestContactPushEws(ContactPushMixin, TransactionCase):
    account_type = "ews"
    backend_class = EwsBackend


@tagged("post_install", "-at_install")
class TestContactSubscriptionUi(TransactionCase):
    """The subscription as users meet it: form, filter, bulk actions, preferences, who sees what."""

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.user = new_test_user(cls.env, login="outlook.user", name="Outlook User")
        cls.other = new_test_user(cls.env, login="outlook.other", name="Outlook Other")
        cls.partners = cls.env["res.partner"].create([{"name": "First"}, {"name": "Second"}])

    def run_action(self, xmlid, partners, user):
        action = self.env.ref(xmlid).with_user(user).with_context(
            active_model="res.partner", active_ids=partners.ids, active_id=partners[:1].id)
        action.run()

    def test_bulk_actions_filter_and_preferences(self):
        self.run_action("exchange_connector.action_partner_exchange_subscribe", self.partners, self.user)
        self.partners[:1].with_user(self.other).action_exchange_subscribe()
        Partner = self.env["res.partner"].with_user(self.user)
        self.assertEqual(Partner.search([("exchange_in_my_outlook", "=", True)]), self.partners)
        unsubscribed = [("exchange_in_my_outlook", "=", False), ("id", "in", self.partners.ids)]
        self.assertFalse(Partner.search(unsubscribed))
        self.assertEqual(self.partners[0].exchange_subscriber_ids, self.user | self.other)
        self.assertEqual(self.user.with_user(self.user).read(["exchange_contact_count"])[0]
                         ["exchange_contact_count"], 2)
        action = self.user.with_user(self.user).action_exchange_my_outlook_contacts()
        self.assertEqual(action["context"], {"search_default_exchange_in_my_outlook": 1})
        Subscription = self.env["exchange.contact.subscription"].with_user(self.user)
        self.assertEqual(Subscription.search([]).user_id, self.user, "each user sees only their own")
        hidden = self.env["res.partner"].create({
            "name": "Hidden", "company_id": self.env["res.company"].create({"name": "Other Co"}).id})
        with self.assertRaises(AccessError):  # not around the check of _subscribe
            Subscription.create({"user_id": self.user.id, "partner_id": hidden.id})
        self.run_action("exchange_connector.action_partner_exchange_unsubscribe", self.partners, self.user)
        self.assertFalse(Partner.search([("exchange_in_my_outlook", "=", True)]))
        self.assertTrue(self.partners[0].with_user(self.other).exchange_in_my_outlook)

    def test_bulk_reassignment_is_one_pass_whatever_the_number_of_customers(self):
        leaving = new_test_user(self.env, login="outlook.leaving", name="Leaving Salesperson")
        taking = new_test_user(self.env, login="outlook.taking", name="Taking Salesperson")
        leaving.write({"exchange_keep_customers_subscribed": True,
                       "exchange_unsubscribe_reassigned_customers": True})
        taking.exchange_keep_customers_subscribed = True
        Subscription = self.env["exchange.contact.subscription"]

        def reassign(count):
            """Queries of moving ``count`` customers from one salesperson to the other at once."""
            customers = self.env["res.partner"].create(
                [{"name": f"Customer {count}.{number}", "user_id": leaving.id} for number in range(count)])
            self.assertEqual(Subscription.search([("partner_id", "in", customers.ids)]).user_id, leaving)
            # Odoo's own write works partner by partner (commercial fields): only the connector's
            # follow-up is counted.
            with patch.object(type(customers), "_exchange_follow_salespeople"):
                customers.write({"user_id": taking.id})
            self.env.flush_all()
            before = self.env.cr.sql_log_count
            customers._exchange_follow_salespeople(dict.fromkeys(customers.ids, leaving))
            self.env.flush_all()
            queries = self.env.cr.sql_log_count - before
            subscribed = Subscription.search([("partner_id", "in", customers.ids)])
            self.assertEqual((subscribed.user_id, len(subscribed)), (taking, count))
            return queries

        reassign(2)  # caches warm
        self.assertEqual(reassign(5), reassign(25), "the same queries for 5 or 25 customers")

    def test_views(self):
        views = self.env["res.partner"].with_user(self.user).get_views(
            [(False, "form"), (False, "search")])["views"]
        self.assertIn('name="exchange_subscriber_ids"', views["form"]["arch"])
        self.assertNotIn("exchange_contact_binding_ids", views["form"]["arch"], "remote ids: admins only")
        self.assertIn('name="exchange_in_my_outlook"', views["search"]["arch"])
        admin_form = self.env["res.partner"].get_views([(False, "form")])["views"]["form"]["arch"]
        self.assertIn("exchange_contact_binding_ids", admin_form)
        preferences = self.env.ref("base.view_users_form_simple_modif")
        views = self.env["res.users"].with_user(self.user).get_views([(preferences.id, "form")])["views"]
        arch = views["form"]["arch"]
        for name in ("exchange_contact_folder", "exchange_keep_customers_subscribed",
                     "action_exchange_subscribe_my_customers", "action_exchange_my_outlook_contacts"):
            self.assertIn(name, arch)


@tagged("post_install", "-at_install")
class TestOutlookToggleTour(HttpCase):
    def test_toggle_in_the_chatter(self):
        user = new_test_user(self.env, login="outlook.toggle", name="Outlook Toggle")
        partner = self.env["res.partner"].create({"name": "Toggled Partner"})
        url = f"/odoo/res.partner/{partner.id}"
        self.start_tour(url, "exchange_connector_outlook_toggle", login=user.login)
        self.assertFalse(partner.with_user(user).exchange_in_my_outlook)
        self.assertFalse(self.env["exchange.contact.subscription"].search([("partner_id", "=", partner.id)]))
