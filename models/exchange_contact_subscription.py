from odoo import api, fields, models


class ExchangeContactSubscription(models.Model):
    """A user wants a partner in their Outlook contacts ("In my Outlook"), as they follow a record.

    The contact push (``exchange.mailbox._push_contacts``) keeps exactly these partners current in
    the user's mailbox. ``fingerprint`` is the digest of the values last written to Outlook: a run
    writes only when it differs. Only partners the user may read can be subscribed; a subscription
    whose partner the user can no longer read ends at the next push. Users only read their own
    rows: subscribing and unsubscribing go through :meth:`_subscribe` / :meth:`_unsubscribe`, which
    check the access to the partner first.
    """

    _name = "exchange.contact.subscription"
    _description = "Partner in a user's Outlook contacts"
    _order = "id"
    _rec_name = "partner_id"

    user_id = fields.Many2one(
        "res.users", required=True, ondelete="cascade", index=True, default=lambda self: self.env.user)
    partner_id = fields.Many2one("res.partner", required=True, ondelete="cascade", index=True)
    fingerprint = fields.Char(
        copy=False, groups="base.group_system",
        help="Digest of the contact values last written to Outlook (empty: write at the next push).")

    _user_partner_uniq = models.Constraint(
        "UNIQUE(user_id, partner_id)", "The partner is already in this user's Outlook contacts.")

    @api.model
    def _subscribe(self, partners, user):
        """Subscribe ``user`` to ``partners`` (those not subscribed yet); the user must be able to read them.

        Raises AccessError when one of them is not readable by ``user``: subscribing must not
        disclose a partner's data to someone who may not see it.
        """
        partners = partners.with_user(user).with_context(active_test=False)
        partners.check_access("read")
        existing = self.sudo().search([("user_id", "=", user.id), ("partner_id", "in", partners.ids)])
        missing = partners - existing.partner_id
        return self.sudo().create([{"user_id": user.id, "partner_id": partner.id} for partner in missing])

    @api.model
    def _unsubscribe(self, partners, user):
        """End ``user``'s subscriptions to ``partners``: the next push deletes or leaves their contacts."""
        self.sudo().search([("user_id", "=", user.id), ("partner_id", "in", partners.ids)]).unlink()

    @api.model
    def _subscribe_readable(self, partners, user):
        """Subscribe ``user`` to those of ``partners`` it may read; return how many were added."""
        readable = partners.with_user(user).with_context(active_test=False)._filtered_access("read")
        return len(self._subscribe(readable, user))
