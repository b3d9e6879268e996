from odoo import api, models

from ..services.addresses import address_variants, normalize_address


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
