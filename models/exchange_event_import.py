import logging
from collections import Counter

import psycopg2.errors

from odoo import Command, fields, models
from odoo.tools import html_sanitize

from ..services.addresses import normalize_address
from ..services.event_mapping import (
    attendee_state,
    event_match_key,
    event_times,
    is_private,
    series_uid,
    show_as,
)
from .exchange_mailbox import MailboxReleased

_logger = logging.getLogger(__name__)

#: An import tells nobody anything: Exchange already invited, updated and cancelled.
IMPORT_CONTEXT = {
    "exchange_event_import": True,
    "active_test": False,
    "no_mail_to_attendees": True,  # calendar.attendee._send_invitation_emails on create
    "skip_attendee_notification": True,  # calendar.event.write: invitation and date-change mails
    "skip_contact_description": True,  # create: no organizer contact details appended to the body
    "mail_create_nolog": True,
    "mail_create_nosubscribe": True,
    "mail_notrack": True,
    "tracking_disable": True,
    "mail_auto_subscribe_no_notify": True,
}
#: Fields compared before writing, so that a copy seen again (another mailbox's) writes nothing.
COMPARED_FIELDS = (
    "name",
    "description",
    "location",
    "videocall_location",
    "allday",
    "start",
    "stop",
    "user_id",
    "privacy",
    "show_as",
    "exchange_series_uid",
)


class ExchangeMailbox(models.Model):
    _inherit = "exchange.mailbox"

    # The window moves forward by itself every day; only these tell that the user made it smaller.
    events_days_back = fields.Integer(
        copy=False,
        groups="base.group_system",
        help="The user's days back when the calendar was last listed.",
    )
    events_days_ahead = fields.Integer(
        copy=False,
        groups="base.group_system",
        help="The user's days ahead when the calendar was last listed.",
    )

    # -- the listing ------------------------------------------------------------

    def _sync_events(self, backend, run):
        """Remember which entries a full listing showed, to let go of the others at its end.

        A listing is full when it starts without a state (first sync, a new window, the upgrade)
        or when the backend restarts it (``reset``: an expired state). Its pages are imported in
        this one call unless the time budget ends it early; then the next run resumes an
        incremental listing, and only the entries reported removed are let go of.
        """
        self.ensure_one()
        start, end = self._exchange_event_window()
        window = (start.replace(tzinfo=None), end.replace(tzinfo=None))
        listing = {
            "full": not self.events_state or (self.events_window_start, self.events_window_end) != window,
            "seen": set(),
            "window": window,
        }
        if self.user_id._exchange_outlook_calendar_syncs():
            # Odoo's own Outlook Calendar brings this user's meetings already: a second copy of
            # each would follow from importing them here too (see the preferences).
            _logger.info("Event import of %s left to Odoo's Outlook Calendar", self.user_id.login)
            return None
        self._exchange_shrink_event_window(run, window)
        return super(ExchangeMailbox, self.with_context(exchange_event_listing=listing))._sync_events(
            backend, run
        )

    def _import_event_page(self, page, run):
        """Import one page of the user's calendar into Odoo events shared across mailboxes.

        Each entry is bound to its event for this user (``exchange.binding``, kind "event",
        ``remote_uid`` = the meeting key of :func:`~services.event_mapping.event_match_key`);
        an entry another mailbox brought already joins that event. An entry whose change key
        is the one imported is not looked at again. Nothing is sent to anybody.
        """
        self.ensure_one()
        listing = self.env.context.get("exchange_event_listing") or {"full": False, "seen": set()}
        listing["full"] = listing["full"] or page.reset
        counts = Counter()
        items = [item for item in page.items if item.type != "series_master"]
        counts["skipped"] += len(page.items) - len(items)
        listing["seen"].update(item.id for item in items)
        bindings = self._exchange_event_bindings([item.id for item in items] + list(page.removed_ids))
        cache = self._exchange_event_page_cache(items, bindings)
        try:
            for remote in items:
                counts[self._exchange_import_event(remote, bindings.get(remote.id), cache)] += 1
        except psycopg2.errors.UniqueViolation as error:
            # Another user's sync, in another worker, imported one of these meetings after this
            # page began: the page is rolled back and redone at once, then it joins that event.
            raise MailboxReleased(f"A meeting of mailbox {self.id} was imported meanwhile") from error
        removed = self.env["exchange.binding"].sudo()
        for remote_id in page.removed_ids:
            if remote_id in bindings:
                removed |= bindings[remote_id]
            else:
                counts["skipped"] += 1
        counts.update(self._exchange_release_events(removed))
        if page.done and listing["full"] and listing.get("window"):
            counts.update(self._exchange_release_events(
                self._exchange_unseen_event_bindings(listing["seen"], listing["window"])))
        counts = {name: count for name, count in counts.items() if count and name != "unchanged"}
        if counts:
            run._count(**counts)

    def _exchange_shrink_event_window(self, run, window):
        """Let go of the events a window the user made smaller no longer covers, as if removed.

        Fewer days back lets go of the user's events that ended before the new start, fewer days
        ahead of those that start after the new end; nothing is asked of Microsoft. The days the
        window moves forward by itself let go of nothing: past meetings stay in Odoo.
        """
        user = self.user_id
        days = {
            "events_days_back": user.exchange_event_days_back,
            "events_days_ahead": user.exchange_event_days_ahead,
        }
        if all(self[name] == value for name, value in days.items()):
            return
        fewer_back = days["events_days_back"] < self.events_days_back
        fewer_ahead = days["events_days_ahead"] < self.events_days_ahead
        # The run is there before the page, as for the listing's pages: a page rolled back keeps it.
        record = self._exchange_start_run(run) if fewer_back or fewer_ahead else None
        with self._exchange_page():
            released = self.env["exchange.binding"]
            if fewer_back or fewer_ahead:
                bindings = self._exchange_event_bindings_where(("res_model", "=", "calendar.event"))
                events = self._exchange_events().browse(bindings.mapped("res_id")).exists()
                outside = events.filtered(
                    lambda event: (
                        (fewer_back and event.stop < window[0]) or (fewer_ahead and event.start >= window[1])
                    )
                )
                released = bindings.filtered(lambda binding: binding.res_id in outside.ids)
            if released:
                record._count(**self._exchange_release_events(released))
            self.write(days)

    def _exchange_event_bindings_where(self, *terms):
        """This user's event bindings that match the domain ``terms`` as well."""
        return (
            self.env["exchange.binding"]
            .sudo()
            .search([("user_id", "=", self.user_id.id), ("kind", "=", "event"), *terms])
        )

    def _exchange_event_bindings(self, remote_ids):
        """``{remote id: exchange.binding}`` of this user's calendar entries among ``remote_ids``."""
        if not remote_ids:
            return {}
        bindings = self._exchange_event_bindings_where(("remote_id", "in", remote_ids))
        return {binding.remote_id: binding for binding in bindings}

    def _exchange_unseen_event_bindings(self, seen, window):
        """This user's bindings of events in ``window`` that a full listing did not show: gone since."""
        bindings = self._exchange_event_bindings_where(
            ("res_model", "=", "calendar.event"), ("remote_id", "not in", list(seen))
        )
        if not bindings:
            return bindings
        events = self._exchange_events().browse(bindings.mapped("res_id")).exists()
        inside = events.filtered(lambda event: event.start < window[1] and event.stop >= window[0])
        return bindings.filtered(
            lambda binding: binding.res_id in inside.ids or binding.res_id not in events.ids
        )

    def _exchange_events(self):
        return self.env["calendar.event"].sudo().with_context(**IMPORT_CONTEXT)

    # -- one entry --------------------------------------------------------------

    def _exchange_import_event(self, remote, binding, cache):
        """Create, update or leave the event of one calendar entry; return what was counted."""
        user = self.user_id
        Events = self._exchange_events()
        private = is_private(remote)
        if private and user.exchange_event_private == "skip":
            return self._exchange_release_event(binding) if binding else "skipped"
        event = cache["bound"].get(binding.res_id, Events) if binding else Events
        if not event and remote.ical_uid in cache["outlook_calendar"]:
            return "skipped"  # Odoo's Outlook Calendar brought this meeting already, for another user
        if event and binding.change_key and binding.change_key == remote.change_key:
            return "unchanged"
        as_busy = private and user.exchange_event_private == "busy"
        key = self._exchange_event_key(remote)
        if event and key and event.exchange_uid != key:
            # Imported otherwise before (the private setting changed): the user moves to the other event.
            self._exchange_release_event(binding)
            event, binding = Events, None
        if not event and key:
            # The page's cache holds every event of the page's keys, and those created since.
            event = cache["events"].get(key, Events)
        if remote.is_cancelled:
            if not event:
                return "skipped"
            if event.active:
                event.write({"active": False})
            self._exchange_bind_event(binding, event, remote, key)
            return "deleted"
        values = self._exchange_event_values(remote, key, as_busy, cache)
        attendees = self._exchange_event_attendees(remote, as_busy, cache)
        if event:
            result = self._exchange_update_event(event, values, attendees, cache["bound_users"])
        else:
            values.update(
                partner_ids=[Command.set([partner.id for partner in attendees])],
                attendee_ids=[
                    Command.create({"partner_id": partner.id, "state": state})
                    for partner, state in attendees.items()
                ],
                alarm_ids=[Command.set(cache["alarms"].get(remote.reminder_minutes, []))],
            )
            event = Events.create(values)
            result = "created"
        if key:
            cache["events"][key] = event
        self._exchange_bind_event(binding, event, remote, key)
        return result

    def _exchange_event_key(self, remote):
        """The ``exchange_uid`` of the event an entry goes to: the meeting's key, or the user's own
        "Busy" placeholder's for a private entry imported as busy (no detail is shared)."""
        key = event_match_key(remote)
        if key and is_private(remote) and self.user_id.exchange_event_private == "busy":
            key = f"{key}#busy-{self.user_id.id}"
        return key

    def _exchange_bind_event(self, binding, event, remote, key):
        """Bind the entry ``remote`` to ``event``; ``binding`` is the entry's binding read with the page.

        The entry already bound to this event (an update) only gets its change key written: no
        other binding can hold the event or the remote id (both are unique per user).
        """
        if binding and binding.res_id == event.id:
            values = {"change_key": remote.change_key or False}
            if key is not None:
                values["remote_uid"] = key
            changed = {name: value for name, value in values.items() if binding[name] != value}
            if changed:
                binding.write(changed)
            return binding
        return self.env["exchange.binding"]._bind(
            self.user_id, event, "event", remote.id, remote.change_key, key)

    def _exchange_event_values(self, remote, key, as_busy, cache):
        """The ``calendar.event`` values of an entry (without attendees and reminders)."""
        values = dict(
            event_times(remote),
            exchange_uid=key or False,
            exchange_series_uid=series_uid(remote.ical_uid, remote.original_start)
            if remote.type in ("occurrence", "exception")
            else False,
            show_as=show_as(remote),
            privacy="private" if is_private(remote) else False,
        )
        if as_busy:
            values.update(
                name=self.env._("Busy"),
                description=False,
                location=False,
                videocall_location=False,
                user_id=self.user_id.id,
                categ_ids=[Command.clear()],
            )
            return values
        organizer = cache["partners"].get(
            normalize_address(remote.organizer.address) if remote.organizer else None
        )
        values.update(
            name=remote.subject or self.env._("(no subject)"),
            description=html_sanitize(remote.body_html) if remote.body_html else False,
            location=remote.location or False,
            videocall_location=remote.online_meeting_url or False,
            user_id=cache["users_by_partner"].get(organizer.id, False) if organizer else False,
            categ_ids=[
                Command.set([cache["tags"][name].id for name in remote.categories if name in cache["tags"]])
            ],
        )
        return values

    def _exchange_event_attendees(self, remote, as_busy, cache):
        """``{res.partner: attendee state}`` this copy of the meeting tells about.

        The organizer has accepted. The user's own answer comes from their copy (Graph's
        ``responseStatus``), unless the server calls everyone the organizer (some EWS servers do
        in calendar views): then the attendee list says it. Resources (rooms) are no attendees.
        """
        user_partner = self.user_id.partner_id
        result = {}
        if not as_busy:
            partners = cache["partners"]
            for attendee in remote.attendees:
                partner = partners.get(normalize_address(attendee.address))
                if partner and attendee.type != "resource":
                    result[partner] = attendee_state(attendee.response)
            organizer = (
                partners.get(normalize_address(remote.organizer.address)) if remote.organizer else None
            )
            if organizer:
                result[organizer] = "accepted"
        own = remote.my_response
        own_address = normalize_address(self.connected_email or self.user_id.exchange_email)
        organizer_address = normalize_address(remote.organizer.address) if remote.organizer else None
        if own == "organizer" and organizer_address and organizer_address != own_address:
            own = "none"
        if own != "none" or user_partner not in result:
            result[user_partner] = attendee_state(own)
        return result

    def _exchange_update_event(self, event, values, attendees, bound_users):
        """Write what differs on an existing event; return "updated" or "unchanged".

        ``bound_users`` is ``{event id: res.users}``: the users whose mailboxes have the event, as
        read with the page.
        """
        changes = {}
        for name in COMPARED_FIELDS:
            if name in values and self._exchange_differs(event, name, values[name]):
                changes[name] = values[name]
        tags = values.get("categ_ids")
        if tags and set(tags[0][2] if tags[0][0] == Command.SET else []) != set(event.categ_ids.ids):
            changes["categ_ids"] = tags
        if not event.active:
            changes["active"] = True
        # The attendees are those of this copy plus the users who have the meeting in their calendar.
        others = bound_users.get(event.id, self.env["res.users"]) - self.user_id
        wanted = set(attendees) | set(others.partner_id)
        current = {attendee.partner_id: attendee for attendee in event.attendee_ids}
        commands = [Command.link(partner.id) for partner in wanted if partner not in current]
        commands += [Command.unlink(partner.id) for partner in current if partner not in wanted]
        if commands:
            changes["partner_ids"] = commands
        if changes:
            event.write(changes)
        states = False
        for attendee in event.attendee_ids:
            state = attendees.get(attendee.partner_id)
            if (
                state
                and attendee.state != state
                and (state != "needsAction" or attendee.partner_id not in current)
            ):
                attendee.state = state
                states = True
        return "updated" if changes or states else "unchanged"

    @staticmethod
    def _exchange_differs(event, name, value):
        field = event._fields[name]
        if field.type == "many2one":
            return event[name].id != (value or False)
        if field.type == "html":
            # Compare what would be stored: the field sanitizes what it is given.
            return str(event[name] or "") != str(
                field.convert_to_record(field.convert_to_cache(value, event), event) or ""
            )
        return (event[name] or False) != (value or False)

    # -- letting go ---------------------------------------------------------------

    def _exchange_restart_events(self):
        """Look at every calendar entry again at the next sync: a setting changed how they are imported.

        The listing starts over and no entry counts as already imported; what is still the same
        writes nothing.
        """
        self.sudo().write({"events_state": False})
        self.env["exchange.binding"].sudo().search(
            [
                ("user_id", "in", self.user_id.ids),
                ("kind", "=", "event"),
            ]
        ).write({"change_key": False})

    def _exchange_release_event(self, binding):
        """:meth:`_exchange_release_events` of one binding; returns what was counted."""
        return next(iter(self._exchange_release_events(binding)))

    def _exchange_release_events(self, bindings):
        """This user's calendar no longer has the entries of ``bindings``: take the user out of their events.

        An event itself goes when no mailbox has it any more, unless someone added something to
        it in Odoo (a message, a file, an activity, notes): then it is archived. Looked up once for
        all the bindings (a window made smaller lets go of hundreds at once). Returns the counts,
        one per binding.
        """
        counts = Counter()
        if not bindings:
            return counts
        res_ids = [binding.res_id for binding in bindings]  # one count per binding
        events = self._exchange_events().browse(set(res_ids)).exists()
        bindings.unlink()
        others = self.env["exchange.binding"].sudo().search([
            ("kind", "=", "event"), ("res_model", "=", "calendar.event"), ("res_id", "in", events.ids),
        ])
        kept = events.browse(set(others.mapped("res_id")))
        partner = self.user_id.partner_id
        kept.filtered(lambda event: partner in event.partner_ids).write(
            {"partner_ids": [Command.unlink(partner.id)]})
        gone = events - kept
        archived = self._exchange_events_with_odoo_content(gone)
        archived.write({"active": False})
        (gone - archived).unlink()
        kept_ids, gone_ids = set(kept.ids), set(gone.ids)
        for res_id in res_ids:
            if res_id in kept_ids:
                counts["updated"] += 1
            elif res_id in gone_ids:
                counts["deleted"] += 1
            else:
                counts["skipped"] += 1
        return counts

    def _exchange_events_with_odoo_content(self, events):
        """The ``events`` to which someone added something in Odoo that would be lost with them."""
        flagged = events.filtered(lambda event: event.notes or event.activity_ids or event.res_id)
        rest = events - flagged
        if not rest:
            return flagged
        env = self.env
        with_content = set(env["mail.message"].sudo().search([
            ("model", "=", "calendar.event"), ("res_id", "in", rest.ids),
            ("message_type", "in", ("comment", "email")),
        ]).mapped("res_id"))
        with_content.update(env["ir.attachment"].sudo().search([
            ("res_model", "=", "calendar.event"), ("res_id", "in", rest.ids),
        ]).mapped("res_id"))
        return flagged | rest.filtered(lambda event: event.id in with_content)

    # -- what a page needs, looked up once ----------------------------------------

    def _exchange_event_page_cache(self, items, bindings):
        """What the page's entries refer to, read once for the page: partners, tags, reminders, the
        events already bound to them (``bindings``) or imported under their keys, and the users
        who have those events in their calendars."""
        Events = self._exchange_events()
        keys = {key for key in map(self._exchange_event_key, items) if key}
        events = Events.search([("exchange_uid", "in", list(keys))]) if keys else Events
        bound = Events.browse([binding.res_id for binding in bindings.values()]).exists()
        names = {}
        for item in items:
            for attendee in list(item.attendees) + ([item.organizer] if item.organizer else []):
                address = normalize_address(attendee.address)
                if address and (attendee.name or address not in names):
                    names[address] = attendee.name or names.get(address) or ""
        partners, users_by_partner = self._exchange_event_partners(names)
        categories = {name for item in items for name in item.categories if name}
        return {
            "events": {event.exchange_uid: event for event in events},
            "bound": {event.id: event for event in bound},
            "bound_users": self._exchange_event_users(events | bound),
            "partners": partners,
            "users_by_partner": users_by_partner,
            "tags": self._exchange_event_tags(categories),
            "alarms": self._exchange_notification_alarms(),
            "outlook_calendar": self._exchange_outlook_calendar_uids(items),
        }

    def _exchange_event_users(self, events):
        """``{event id: res.users}``: every mailbox's users that have each of ``events`` in their calendar."""
        if not events:
            return {}
        bindings = self.env["exchange.binding"].sudo().search([
            ("kind", "=", "event"), ("res_model", "=", "calendar.event"), ("res_id", "in", events.ids),
        ])
        users = {}
        for binding in bindings:
            users[binding.res_id] = users.get(binding.res_id, self.env["res.users"]) | binding.user_id
        return users

    def _exchange_outlook_calendar_uids(self, items):
        """The iCalUIds among ``items`` of meetings that Odoo's Outlook Calendar brought already."""
        Events = self._exchange_events()
        if "ms_universal_event_id" not in Events._fields:
            return set()
        uids = [item.ical_uid for item in items if item.ical_uid]
        if not uids:
            return set()
        return set(Events.search([("ms_universal_event_id", "in", uids)]).mapped("ms_universal_event_id"))

    def _exchange_event_partners(self, names):
        """``({address: res.partner}, {partner id: user id})`` for the page's addresses.

        Internal users by their mailbox or e-mail address; the other addresses as mail import
        matches them (the user's remembered choice, else the partners with that e-mail: the
        oldest when several); unknown ones are created when the company wants it.
        """
        internal, users_by_partner = self._exchange_internal_addresses()
        Partners = self.env["res.partner"].sudo()
        result = {address: Partners.browse(internal[address]) for address in names if address in internal}
        others = [address for address in names if address not in result]
        matched = Partners._exchange_match_addresses(others, self.user_id)
        for address, partners in matched.items():
            if partners:
                result[address] = partners.sorted("id")[:1]
        unknown = [address for address in others if address not in result]
        if unknown and self.user_id.company_id.exchange_event_create_partners:
            own = Partners._exchange_company_addresses()
            unknown = [address for address in unknown if address not in own]
            created = Partners.with_context(**IMPORT_CONTEXT).create(
                [{"name": names[address] or address, "email": address} for address in unknown]
            )
            result.update(zip(unknown, created, strict=True))
        return result, users_by_partner

    def _exchange_internal_addresses(self):
        """``({address: partner id}, {partner id: user id})`` of the internal users, by their mailbox
        and e-mail addresses; read once per listing (kept in its context), not once per page."""
        listing = self.env.context.get("exchange_event_listing")
        if listing and "internal" in listing:
            return listing["internal"]
        users = self.env["res.users"].sudo().search([("share", "=", False)])
        internal = {}
        for user in users:
            for raw in (user.exchange_email, user.email):
                address = normalize_address(raw or "")
                if address:
                    internal.setdefault(address, user.partner_id.id)
        result = (internal, {user.partner_id.id: user.id for user in users})
        if listing is not None:
            listing["internal"] = result
        return result

    def _exchange_event_tags(self, names):
        """``{category: calendar.event.type}``, creating the tags Outlook's categories need."""
        if not names:
            return {}
        Tags = self.env["calendar.event.type"].sudo()
        tags = {tag.name: tag for tag in Tags.search([("name", "in", list(names))])}
        missing = [name for name in names if name not in tags]
        if missing:
            tags.update(zip(missing, Tags.create([{"name": name} for name in missing]), strict=True))
        return tags

    def _exchange_notification_alarms(self):
        """``{minutes: [calendar.alarm id]}``: the notification reminders Odoo has, by their delay."""
        alarms = self.env["calendar.alarm"].sudo().search([("alarm_type", "=", "notification")], order="id")
        result = {}
        for alarm in alarms:
            result.setdefault(alarm.duration_minutes, [alarm.id])
        return result
