from odoo import fields, models


class MailMessage(models.Model):
    _inherit = "mail.message"

    exchange_user_ids = fields.Many2many(
        "res.users", "mail_message_exchange_user_rel", "message_id", "user_id",
        string="In the mailboxes of", readonly=True, copy=False,
        help="The users whose Exchange transfer folders held this mail: it is stored once for all of them.")
