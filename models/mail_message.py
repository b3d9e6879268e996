from odoo import fields, models

from odoo.addons.mail.tools.discuss import Store


class MailMessage(models.Model):
    _inherit = "mail.message"

    exchange_user_ids = fields.Many2many(
        "res.users", "mail_message_exchange_user_rel", "message_id", "user_id",
        string="In the mailboxes of", readonly=True, copy=False,
        help="The users whose Exchange transfer folders held this mail: it is stored once for all of them.")

    def _to_store_defaults(self, target):
        # The chatter shows, to internal users, whose mailboxes an imported mail came from.
        field_names = super()._to_store_defaults(target)
        if target.is_internal(self.env):
            field_names.append(Store.Attr(
                "exchange_mailbox_names",
                # sudo: res.users - the names of colleagues are shown on a message one may read
                value=lambda message: ", ".join(message.sudo().exchange_user_ids.mapped("name")),
            ))
        return field_names
