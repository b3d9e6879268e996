from odoo import api, fields, models
from odoo.exceptions import UserError

#: What Exchange leads on an imported meeting: Odoo shows these read-only and refuses to change them.
EXCHANGE_LED_FIELDS = (
    "name",
    "description",
    "location",
    "videocall_location",
    "start",
    "stop",
    "start_date",
    "stop_date",
    "allday",
    "duration",
    "user_id",
    "partner_ids",
    "attendee_ids",
    "privacy",
    "show_as",
    "categ_ids",
)


class CalendarEvent(models.Model):
    _inherit = "calendar.event"

    exchange_uid = fields.Char(
        "Exchange meeting key",
        copy=False,
        readonly=True,
        index="btree_not_null",
        help="The meeting's iCalUId and, for an occurrence of a series, its original start: the same "
        "in every mailbox that has the meeting. Set on meetings imported from Outlook.",
    )
    exchange_series_uid = fields.Char(
        "Exchange series",
        copy=False,
        readonly=True,
        index="btree_not_null",
        help="The iCalUId of the Outlook series this meeting is an occurrence of.",
    )
    exchange_imported = fields.Boolean(
        "Imported from Outlook",
        compute="_compute_exchange_imported",
        help="Outlook leads this meeting: change its subject, time, place and attendees in Outlook.",
    )
    exchange_in_series = fields.Boolean(
        "Occurrence of an Outlook series", compute="_compute_exchange_imported"
    )

    _exchange_uid_uniq = models.Constraint(
        "UNIQUE(exchange_uid)", "An Outlook meeting is imported into one Odoo event only."
    )

    @api.depends("exchange_uid", "exchange_series_uid")
    def _compute_exchange_imported(self):
        for event in self:
            event.exchange_imported = bool(event.exchange_uid)
            event.exchange_in_series = bool(event.exchange_series_uid)

    @api.depends("exchange_uid")
    def _compute_user_can_edit(self):
        # The form makes what Exchange leads read-only through this flag.
        result = super()._compute_user_can_edit()
        for event in self.filtered("exchange_uid"):
            event.user_can_edit = False
        return result

    def write(self, vals):
        if not self.env.su and not self.env.context.get("exchange_event_import"):
            led = [name for name in EXCHANGE_LED_FIELDS if name in vals]
            if led and any(self.mapped("exchange_uid")):
                raise UserError(
                    self.env._(
                        "This meeting comes from Outlook: change it in Outlook, the next synchronisation "
                        "brings the change here (%(fields)s).",
                        fields=", ".join(self._fields[name].string for name in led),
                    )
                )
        return super().write(vals)
