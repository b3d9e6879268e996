from collections import defaultdict

from odoo import api, fields, models

from ..services.addresses import address_variants, normalize_address
from ..services.contact_mapping import partner_marker


class ResPartner(models.Model):
    _inherit = "res.partner"

    # -- address matching (mail and event import) -------------------------------

    @api.model
    def _exchange_match_addresses(self, addresses, user):
        """``{address: res.partner}`` for the normalized ``addresses``, as ``user``'s imports see them.

        ``user``'s remembered choice for an address wins (its partners that are still active);
        otherwise every active partner with that e-mail is returned: several means ambiguous (the
        user chooses), none means unknown. One search for all addresses, whatever their number.
        """
        addresses = {address for address in addresses if address}
        result = {address: self.browse() for address in addresses}
        if not addresses:
            return result
        choices = self.env["exchange.address.choice"].sudo().search([
            ("user_id", "=", user.id), ("address", "in", list(addresses)),
        ])
        for choice in choices:
            partners = choice.partner_ids.filtered("active")
            if partners:
                result[choice.address] = partners.with_env(self.env)
        pending = {address for address, partners in result.items() if not partners}
        by_variant = {variant: address for address in pending for variant in address_variants(address)}
        if not by_variant:
            return result
        partners = self.with_context(active_test=True).search(
            [("email_normalized", "in", list(by_variant))], order="id")
        for partner in partners:
            address = by_variant.get(partner.email_normalized)
            if address:
                result[address] |= partner
        return result

    @api.model
    def _exchange_company_addresses(self):
        """Normalized addresses that are the company's own: internal users and their mailboxes, aliases.

        Mail import never files a mail on these (a colleague in Cc is not a customer); event import
        maps them to the users themselves.
        """
        users = self.env["res.users"].sudo().with_context(active_test=False).search([("share", "=", False)])
        raw = set(users.mapped("email")) | set(users.mapped("exchange_email"))
        aliases = self.env["mail.alias"].sudo().search([("alias_full_name", "!=", False)])
        raw |= set(aliases.mapped("alias_full_name"))
        for domain in self.env["mail.alias.domain"].sudo().search([("name", "!=", False)]):
            raw |= {domain.bounce_email, domain.catchall_email, domain.default_from_email}
        return {normalized for normalized in map(normalize_address, raw) if normalized}

    # -- contact push: "In my Outlook" subscriptions ----------------------------

    exchange_in_my_outlook = fields.Boolean(
        "In my Outlook", compute="_compute_exchange_in_my_outlook", search="_search_exchange_in_my_outlook",
        help="The connector keeps this partner current in your Outlook contacts.")
    exchange_subscriber_ids = fields.Many2many(
        "res.users", string="In the Outlook of", compute="_compute_exchange_subscribers",
        help="The users who have this partner in their Outlook contacts.")
    exchange_subscriber_count = fields.Integer(
        "Outlook subscribers", compute="_compute_exchange_subscribers")
    exchange_contact_binding_ids = fields.Many2many(
        "exchange.binding", string="Outlook contacts", compute="_compute_exchange_contact_bindings",
        groups="base.group_system", help="The contact pushed for this partner in each user's mailbox.")

    def _exchange_subscriptions(self):
        return self.env["exchange.contact.subscription"].sudo().search([("partner_id", "in", self.ids)])

    @api.depends_context("uid")
    def _compute_exchange_in_my_outlook(self):
        mine = set(self.env["exchange.contact.subscription"].sudo().search([
            ("user_id", "=", self.env.uid), ("partner_id", "in", self.ids)]).partner_id.ids)
        for partner in self:
            partner.exchange_in_my_outlook = partner.id in mine

    def _search_exchange_in_my_outlook(self, operator, value):
        if operator not in ("=", "!=") or not isinstance(value, bool):
            return NotImplemented
        subscribed = self.env["exchange.contact.subscription"].sudo()._search(
            [("user_id", "=", self.env.uid)]).subselect("partner_id")
        positive = (operator == "=") == value
        return [("id", "in" if positive else "not in", subscribed)]

    def _compute_exchange_subscribers(self):
        by_partner = {}
        for subscription in self._exchange_subscriptions():
            by_partner.setdefault(subscription.partner_id.id, []).append(subscription.user_id.id)
        for partner in self:
            user_ids = by_partner.get(partner.id, [])
            partner.exchange_subscriber_ids = [fields.Command.set(user_ids)]
            partner.exchange_subscriber_count = len(user_ids)

    def _compute_exchange_contact_bindings(self):
        bindings = self.env["exchange.binding"].sudo().search([
            ("kind", "=", "contact"), ("res_model", "=", "res.partner"), ("res_id", "in", self.ids)])
        by_partner = {}
        for binding in bindings:
            by_partner.setdefault(binding.res_id, []).append(binding.id)
        for partner in self:
            partner.exchange_contact_binding_ids = [fields.Command.set(by_partner.get(partner.id, []))]

    def action_exchange_subscribe(self):
        """Put these partners in my Outlook contacts (pushed at my next sync)."""
        self.env["exchange.contact.subscription"]._subscribe(self, self.env.user)
        return True

    def action_exchange_unsubscribe(self):
        """Take these partners out of my Outlook contacts (removed there if my preferences say so)."""
        self.env["exchange.contact.subscription"]._unsubscribe(self, self.env.user)
        return True

    def _exchange_contact_values(self, database_uuid):
        """``{partner id: values for services.contact_mapping.contact_from_partner}``, read in bulk."""
        has_mobile = "mobile" in self._fields
        values = {}
        for partner in self:
            values[partner.id] = {
                "name": partner.name or partner.display_name or "",
                "is_company": partner.is_company,
                "function": partner.function,
                "parent_name": partner.parent_id.name or partner.company_name or "",
                "phone": partner.phone,
                "mobile": partner.mobile if has_mobile else "",
                "email": partner.email,
                "street": partner.street,
                "street2": partner.street2,
                "zip": partner.zip,
                "city": partner.city,
                "state": partner.state_id.name,
                "country": partner.country_id.name,
                "website": partner.website,
                "tags": partner.category_id.mapped("name"),
                "url": f"{partner.get_base_url()}/odoo/res.partner/{partner.id}",
                "marker": partner_marker(database_uuid, partner.id),
            }
        return values

    # -- contact push: salespeople keep their customers subscribed --------------

    @api.model_create_multi
    def create(self, vals_list):
        partners = super().create(vals_list)
        assigned = partners.filtered("user_id")
        if assigned:
            assigned._exchange_follow_salespeople()
        return partners

    def write(self, vals):
        previous = {}
        if "user_id" in vals:
            previous = {partner.id: partner.user_id for partner in self}
        result = super().write(vals)
        if previous:
            self._exchange_follow_salespeople(previous)
        return result

    def _exchange_follow_salespeople(self, previous=None):
        """Subscribe the new salesperson who keeps their customers subscribed; unsubscribe the previous
        one who asked for it. No request to Microsoft: the next push of each user does the work."""
        # A bulk reassignment is one pass per salesperson, not one per partner.
        to_subscribe, to_unsubscribe = defaultdict(list), defaultdict(list)
        for partner in self.sudo():
            old = (previous or {}).get(partner.id) or self.env["res.users"]
            new = partner.user_id
            if old == new:
                continue
            if new.exchange_keep_customers_subscribed:
                to_subscribe[new].append(partner.id)
            if old and old.exchange_unsubscribe_reassigned_customers:
                to_unsubscribe[old].append(partner.id)
        subscriptions = self.env["exchange.contact.subscription"].sudo()
        for user, partner_ids in to_subscribe.items():
            subscriptions._subscribe_readable(self.browse(partner_ids), user)
        for user, partner_ids in to_unsubscribe.items():
            subscriptions._unsubscribe(self.browse(partner_ids), user)
