"""Calendar entries as Odoo sees them: the key of a meeting across mailboxes, its times and its answers.

Pure functions over :class:`~services.backend.RemoteEvent` (no ``odoo`` here): the event import
(``models/exchange_event_import.py``) turns their results into ``calendar.event`` values.
"""

from datetime import datetime, time, timedelta, timezone
from typing import Optional

#: The class id that starts Outlook's GlobalObjectId, the form Exchange gives iCalUIds in (hex).
OUTLOOK_UID_CLASS = "040000008200E00074C5B7101A82E008"
#: The instance date (year, month, day) sits right after the class id: 4 bytes, 8 hex digits.
_INSTANCE_DATE = slice(len(OUTLOOK_UID_CLASS), len(OUTLOOK_UID_CLASS) + 8)

#: A remote answer (see :class:`~services.backend.RemoteAttendee`) as a ``calendar.attendee`` state.
ATTENDEE_STATES = {
    "organizer": "accepted",
    "accepted": "accepted",
    "tentative": "tentative",
    "declined": "declined",
    "none": "needsAction",
}

#: Busy and free as Odoo knows them; tentative, away and elsewhere keep the time taken.
SHOW_AS_FREE = {"free"}


def _date_stamp(day):
    return f"{day.year:04X}{day.month:02X}{day.day:02X}"


def series_uid(ical_uid, original_start=None):
    """The iCalUId of the whole series an occurrence belongs to.

    Graph documents a different iCalUId for each occurrence of a series: Exchange writes the
    occurrence's date into the instance-date bytes of its GlobalObjectId, which are zero for the
    series itself (the "clean" id, the one EWS gives as UID). Zeroing them gives one id whichever
    form a mailbox shows. An id of another form that ends with the occurrence's date stamp (given
    ``original_start``) loses it. Other ids are kept as they are.
    """
    if not ical_uid:
        return ical_uid
    outlook_form = ical_uid[: len(OUTLOOK_UID_CLASS)].upper() == OUTLOOK_UID_CLASS
    if outlook_form and len(ical_uid) > _INSTANCE_DATE.stop:
        return ical_uid[: _INSTANCE_DATE.start] + "00000000" + ical_uid[_INSTANCE_DATE.stop :]
    if original_start is not None:
        stamp = _date_stamp(original_start.astimezone(timezone.utc).date())
        if len(ical_uid) > len(stamp) and ical_uid.upper().endswith(stamp):
            return ical_uid[: -len(stamp)]
    return ical_uid


def _utc_text(value):
    return value.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def event_match_key(event) -> Optional[str]:
    """The key of one real meeting (or one occurrence of a series), the same in every mailbox.

    The series' iCalUId plus the occurrence's original start: the iCalUId alone is shared by a
    whole series in some mailboxes and per occurrence in others, and the start may have been moved.
    None when the entry has no iCalUId (it then matches nothing but itself).
    """
    uid = series_uid(event.ical_uid, event.original_start)
    if not uid:
        return None
    if event.original_start is not None:
        return f"{uid}@{_utc_text(event.original_start)}"
    return uid


def _nearest_midnight(value):
    """The date whose midnight is closest to ``value``: an all-day edge written in any zone within ±12 h."""
    return (value.astimezone(timezone.utc) + timedelta(hours=12)).date()


def event_times(event):
    """``{"allday", "start", "stop"}`` for ``calendar.event`` (naive UTC, as Odoo stores datetimes).

    All-day events are dates, the same for every user whatever their time zone: Odoo keeps them as
    the first day at 08:00 and the last day at 18:00 (what its own ``_inverse_dates`` writes).
    Exchange gives their edges as midnights, possibly seen from another zone, so each edge is
    rounded to the nearest midnight; the end is exclusive.
    """
    if event.is_all_day:
        first = _nearest_midnight(event.start)
        last = max(first, _nearest_midnight(event.end) - timedelta(days=1))
        return {
            "allday": True,
            "start": datetime.combine(first, time(8)),
            "stop": datetime.combine(last, time(18)),
        }
    start = event.start.astimezone(timezone.utc).replace(tzinfo=None)
    stop = event.end.astimezone(timezone.utc).replace(tzinfo=None) if event.end else start
    return {"allday": False, "start": start, "stop": max(start, stop)}


def attendee_state(response):
    """The ``calendar.attendee`` state of a remote answer ("none" and unknown ones: needs action)."""
    return ATTENDEE_STATES.get(response or "none", "needsAction")


def show_as(event):
    """Odoo's ``show_as`` ("free" or "busy") for Outlook's free/busy status."""
    return "free" if (event.show_as or "").lower() in SHOW_AS_FREE else "busy"


def is_private(event):
    """Private and confidential entries are the owner's: Outlook hides them from delegates alike."""
    return (event.sensitivity or "normal").lower() in ("private", "confidential")
