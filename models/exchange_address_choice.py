from odoo import api, fields, models
from odoo.exceptions import ValidationError

from ..services.addresses import normalize_address


class ExchangeAddressChoice(models.Model):
    """A user's standing answer to "which partner is this address?" when several partners share it.

    Written by the assignment wizard ("always use this partner for this address") and editable in
    the user's list; mail and event import apply it before looking at the partners' addresses.
    """

    _name = "exchange.address.choice"
    _description = "Remembered partner for an e-mail address"
    _order = "address"
    _rec_name = "address"

    user_id = fields.Many2one(
        "res.users", required=True, ondelete="cascade", index=True, default=lambda self: self.env.user)
    address = fields.Char(
        "E-mail address", required=True,
        help="Mails and meetings from or to this address go to the chosen partners.")
    partner_ids = fields.Many2many(
        "res.partner", string="Partners", required=True,
        help="The partners that mails and meetings of this address are filed on.")

    _user_address_uniq = models.Constraint(
        "UNIQUE(user_id, address)", "You already have a remembered choice for this address.")

    @api.model_create_multi
    def create(self, vals_list):
        for vals in vals_list:
            if vals.get("address"):
                vals["address"] = normalize_address(vals["address"]) or vals["address"]
        return super().create(vals_list)

    def write(self, vals):
        if vals.get("address"):
            vals["address"] = normalize_address(vals["address"]) or vals["address"]
        return super().write(vals)

    @api.constrains("address")
    def _check_address(self):
        for choice in self:
            if normalize_address(choice.address) != choice.address:
                raise ValidationError(self.env._(
                    "“%(address)s” is not a single e-mail address.", address=choice.address))
