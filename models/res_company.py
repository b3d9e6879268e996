from odoo import fields, models


class ResCompany(models.Model):
    _inherit = "res.company"

    exchange_event_create_partners = fields.Boolean(
        "Create partners for unknown meeting attendees", default=True,
        help="When a meeting imported from Outlook has an attendee whose address no contact has, "
             "create a contact for it. Otherwise that attendee is left out of the Odoo event.")
