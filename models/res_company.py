from odoo import fields, models

from .exchange_mail import DEFAULT_ATTACHMENT_LIMIT_MB


class ResCompany(models.Model):
    _inherit = "res.company"

    exchange_unknown_address = fields.Selection(
        [
            ("queue", "Wait in the assignment queue"),
            ("create", "Create a partner"),
            ("ignore", "Ignore the address"),
        ],
        "Unknown addresses in imported mails", default="queue", required=True,
        help="What mail import does with an address no partner has: leave the mail waiting for a user "
             "to choose, create a partner (under the company partner of its domain when there is one), "
             "or leave the address out.")
    exchange_attachment_limit_mb = fields.Integer(
        "Largest imported attachment (MB)", default=DEFAULT_ATTACHMENT_LIMIT_MB,
        help="Larger attachments of imported mails are left out; the chatter message says so.")
    exchange_event_create_partners = fields.Boolean(
        "Create partners for unknown meeting attendees", default=True,
        help="When a meeting imported from Outlook has an attendee whose address no contact has, "
             "create a contact for it. Otherwise that attendee is left out of the Odoo event.")
