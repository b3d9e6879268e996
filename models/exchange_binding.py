from odoo import api, fields, models

# The Odoo model a binding kind points to by default: _for_remote() returns it, empty, when nothing is bound.
KIND_MODELS = {
    "message": "mail.message",
    "event": "calendar.event",
    "contact": "res.partner",
}


class ExchangeBinding(models.Model):
    """The remote id of an Odoo record in one user's mailbox (OCA/connector's external.binding idea).

    One row per (user, kind, record): the same partner pushed to two users' Outlook contacts has
    two bindings, one per mailbox. Remote ids are unique per (user, kind) too, so an item seen
    again in a mailbox always resolves to the one record it was imported into.
    """

    _name = "exchange.binding"
    _description = "Exchange remote id binding"
    _order = "id"
    _rec_name = "remote_id"

    user_id = fields.Many2one("res.users", required=True, ondelete="cascade", index=True)
    kind = fields.Selection(
        [("message", "Message"), ("event", "Event"), ("contact", "Contact")], required=True)
    res_model = fields.Char("Odoo model", required=True, index=True)
    res_id = fields.Many2oneReference("Odoo record id", model_field="res_model", required=True, index=True)
    remote_id = fields.Char(
        "Remote id", required=True,
        help="The Graph immutable id or the EWS item id of the item in the user's mailbox.")
    change_key = fields.Char(
        help="Microsoft's version stamp of the remote item when it was last imported or pushed.")
    remote_uid = fields.Char(
        "Remote UID", index=True,
        help="The iCalUId of an event or the Internet Message-ID of a mail: the same in every mailbox.")

    _record_uniq = models.Constraint(
        "UNIQUE(user_id, kind, res_model, res_id)",
        "An Odoo record can be bound to only one item of the same kind in a user's mailbox.",
    )
    _remote_uniq = models.Constraint(
        "UNIQUE(user_id, kind, remote_id)",
        "A mailbox item can be bound to only one Odoo record.",
    )

    @api.model
    def _bind(self, user, record, kind, remote_id, change_key=None, remote_uid=None):
        """Record that ``record`` is the item ``remote_id`` in ``user``'s mailbox; return the binding.

        An existing binding of the record is updated (EWS ids change when an item moves). A
        binding of the same remote id to another record (one deleted since, or imported twice
        before the binding existed) is replaced: a remote item maps to exactly one record.
        """
        record.ensure_one()
        bindings = self.sudo()
        binding = bindings.search([
            ("user_id", "=", user.id), ("kind", "=", kind),
            ("res_model", "=", record._name), ("res_id", "=", record.id),
        ])
        bindings.search([
            ("user_id", "=", user.id), ("kind", "=", kind), ("remote_id", "=", remote_id),
            ("id", "not in", binding.ids),
        ]).unlink()
        values = {"remote_id": remote_id, "change_key": change_key}
        if remote_uid is not None:
            values["remote_uid"] = remote_uid
        if binding:
            binding.write(values)
            return binding
        return bindings.create(dict(
            values, user_id=user.id, kind=kind, res_model=record._name, res_id=record.id))

    @api.model
    def _for_remote(self, user, kind, remote_id):
        """The record bound to ``remote_id`` in ``user``'s mailbox; an empty recordset when none or gone."""
        binding = self.sudo().search([
            ("user_id", "=", user.id), ("kind", "=", kind), ("remote_id", "=", remote_id),
        ], limit=1)
        if not binding:
            return self.env[KIND_MODELS[kind]]
        return self.env[binding.res_model].browse(binding.res_id).exists()

    @api.model
    def _remote_id(self, user, record, kind):
        """The remote id of ``record`` in ``user``'s mailbox, or None when it is not bound."""
        record.ensure_one()
        binding = self.sudo().search([
            ("user_id", "=", user.id), ("kind", "=", kind),
            ("res_model", "=", record._name), ("res_id", "=", record.id),
        ], limit=1)
        return binding.remote_id or None
