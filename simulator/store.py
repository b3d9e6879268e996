"""One mailbox store behind both protocols of the local tenant.

Graph and EWS see the same folders, messages, events and contacts; every change
is written to a per-mailbox change log with sequence numbers, from which Graph
delta and EWS SyncFolderItems are answered.  Messages keep their RFC 5322
source as the source of truth and parse it lazily, so seeding ten thousand
mails costs no parsing at all.
"""

import base64
import calendar as _calendar
import email
import email.policy
import email.utils
import hashlib
import os
import re
import threading
import uuid
from dataclasses import dataclass, field
from dataclasses import fields as dataclass_fields
from datetime import date, datetime, time, timedelta, timezone
from typing import Optional

try:
    from zoneinfo import ZoneInfo
except ImportError:  # pragma: no cover - Python < 3.9 is not supported anyway
    ZoneInfo = None

UTC = timezone.utc

# Windows time zone names Exchange uses, mapped to IANA names for recurrence
# expansion (only the common ones; unknown names expand in UTC).
WINDOWS_TIME_ZONES = {
    "UTC": "UTC",
    "W. Europe Standard Time": "Europe/Berlin",
    "Central Europe Standard Time": "Europe/Budapest",
    "Romance Standard Time": "Europe/Paris",
    "GMT Standard Time": "Europe/London",
    "Eastern Standard Time": "America/New_York",
    "Central Standard Time": "America/Chicago",
    "Mountain Standard Time": "America/Denver",
    "Pacific Standard Time": "America/Los_Angeles",
    "Tokyo Standard Time": "Asia/Tokyo",
    "China Standard Time": "Asia/Shanghai",
    "India Standard Time": "Asia/Kolkata",
    "AUS Eastern Standard Time": "Australia/Sydney",
}

WEEKDAYS = ["monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday"]
WEEK_INDEXES = {"first": 0, "second": 1, "third": 2, "fourth": 3, "last": -1}

# Well-known folders created in every mailbox: (Graph well-known name, display name, class).
DEFAULT_FOLDERS = [
    ("inbox", "Inbox", "IPF.Note"),
    ("drafts", "Drafts", "IPF.Note"),
    ("sentitems", "Sent Items", "IPF.Note"),
    ("deleteditems", "Deleted Items", "IPF.Note"),
    ("junkemail", "Junk Email", "IPF.Note"),
    ("outbox", "Outbox", "IPF.Note"),
    ("archive", "Archive", "IPF.Note"),
    ("calendar", "Calendar", "IPF.Appointment"),
    ("contacts", "Contacts", "IPF.Contact"),
]
# EWS distinguished folder ids that differ from Graph's well-known names.
FOLDER_ALIASES = {"root": "msgfolderroot", "publicfoldersroot": "msgfolderroot"}


def tz_for(name):
    """Return a tzinfo for an IANA or Windows time zone name (UTC if unknown)."""
    if not name or ZoneInfo is None:
        return UTC
    name = WINDOWS_TIME_ZONES.get(name, name)
    try:
        return ZoneInfo(name)
    except Exception:
        return UTC


def utcnow():
    return datetime.now(UTC)


def as_utc(value):
    """Normalise a datetime (naive = UTC) or ISO string to an aware UTC datetime."""
    if value is None:
        return None
    if isinstance(value, str):
        value = datetime.fromisoformat(value.replace("Z", "+00:00"))
    elif isinstance(value, date) and not isinstance(value, datetime):
        value = datetime.combine(value, time(0))
    if value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value.astimezone(UTC)


def _b64(raw):
    return base64.urlsafe_b64encode(raw).decode("ascii")


def new_id(tag, mailbox_uuid, item_uuid=None):
    """A URL-safe base64 id (33 bytes → 44 chars, no padding) in the spirit of Exchange ids."""
    item_uuid = item_uuid or uuid.uuid4()
    return _b64(tag + mailbox_uuid.bytes + item_uuid.bytes)


_ID_PATTERN = re.compile(r"^[A-Za-z0-9+/_-]+={0,2}$")


def is_well_formed_id(value):
    """True for a string Exchange could decode as an id: base64 (URL-safe or not) of 16 bytes or more.

    Exchange answers ErrorInvalidIdMalformed (Graph: 400) for anything else, and
    ErrorItemNotFound (Graph: 404) only for a well-formed id of a missing item.
    """
    if not value or not _ID_PATTERN.match(value):
        return False
    digits = len(value.rstrip("="))
    return digits % 4 != 1 and digits * 3 // 4 >= 16


def new_change_key():
    return _b64(os.urandom(9))


@dataclass
class Change:
    """One coalesced change of an item (or folder) as reported to a sync client."""

    kind: str  # "created" | "updated" | "read_flag" (only is_read changed) | "deleted"
    item_id: str
    immutable_id: str
    seq: int
    folder_id: Optional[str] = None


@dataclass
class Folder:
    id: str
    immutable_id: str
    parent_id: Optional[str]
    display_name: str
    folder_class: str = "IPF.Note"
    well_known: Optional[str] = None
    change_key: str = field(default_factory=new_change_key)


@dataclass
class Item:
    id: str
    immutable_id: str
    folder_id: str
    change_key: str = field(default_factory=new_change_key)
    created: datetime = field(default_factory=utcnow)
    last_modified: datetime = field(default_factory=utcnow)
    kind: str = "item"
    categories: list = field(default_factory=list)


@dataclass
class Attachment:
    id: str
    name: str
    content_type: str
    size: int
    content: bytes
    is_inline: bool = False
    content_id: Optional[str] = None


# Message fields parsed from the MIME source; update_item may override them.
PARSED_MESSAGE_FIELDS = (
    "subject",
    "sender",
    "from_",
    "to",
    "cc",
    "bcc",
    "reply_to",
    "internet_message_id",
    "sent",
    "body_html",
    "body_text",
    "attachments",
    "has_attachments",
    "in_reply_to",
    "references",
    "importance",
)


class Message(Item):
    """A mail message; ``mime`` is the truth, the rest is parsed on first access.

    Parsed attributes: subject, sender and from_ ((name, address) tuples), to, cc, bcc,
    reply_to (lists of tuples), internet_message_id, sent, body_html, body_text,
    attachments (list of Attachment), has_attachments, in_reply_to, references, importance.
    """

    def __init__(
        self,
        id,
        immutable_id,
        folder_id,
        mime,
        received=None,
        is_read=False,
        is_draft=False,
        flag_status="notFlagged",
        categories=None,
    ):
        super().__init__(
            id=id,
            immutable_id=immutable_id,
            folder_id=folder_id,
            kind="message",
            categories=list(categories or []),
        )
        self.mime = mime
        self.received = as_utc(received) or self.created
        self.is_read = is_read
        self.is_draft = is_draft
        self.flag_status = flag_status
        self._parsed = None
        self._overrides = {}

    def __repr__(self):
        return f"<Message {self.id[:12]} {self.subject!r} in {self.folder_id[:12]}>"

    def __getattr__(self, name):
        # Only called for attributes not set in __init__, i.e. the parsed ones.
        if name in PARSED_MESSAGE_FIELDS:
            overrides = self.__dict__.get("_overrides", {})
            if name in overrides:
                return overrides[name]
            if self.__dict__.get("_parsed") is None:
                self._parsed = parse_mime(self.mime, self.immutable_id)
            return self._parsed[name]
        raise AttributeError(name)

    def __setattr__(self, name, value):
        if name in PARSED_MESSAGE_FIELDS:
            self._overrides[name] = value
        else:
            object.__setattr__(self, name, value)
            if name == "mime":
                object.__setattr__(self, "_parsed", None)

    @property
    def conversation_id(self):
        """Stable per thread: hash of the first References id, else own Message-ID."""
        refs = (self.references or "").split()
        root = refs[0] if refs else (self.in_reply_to or self.internet_message_id or self.immutable_id)
        return _b64(hashlib.sha256(root.encode("utf-8", "replace")).digest()[:24])


@dataclass
class Attendee:
    name: str
    address: str
    type: str = "required"  # required | optional | resource
    response: str = "none"  # none | organizer | tentativelyAccepted | accepted | declined | notResponded
    response_time: Optional[datetime] = None


@dataclass
class Recurrence:
    """Graph's patternedRecurrence, flattened."""

    type: str = (
        "weekly"  # daily | weekly | absoluteMonthly | relativeMonthly | absoluteYearly | relativeYearly
    )
    interval: int = 1
    days_of_week: list = field(default_factory=list)  # ["monday", ...]
    day_of_month: int = 0
    month: int = 0
    index: str = "first"  # relative patterns: first | second | third | fourth | last
    first_day_of_week: str = "sunday"
    range_type: str = "noEnd"  # endDate | noEnd | numbered
    start_date: Optional[date] = None
    end_date: Optional[date] = None
    number_of_occurrences: int = 0
    recurrence_time_zone: Optional[str] = None


@dataclass
class Event(Item):
    subject: str = ""
    body_html: str = ""
    start: Optional[datetime] = None
    end: Optional[datetime] = None
    is_all_day: bool = False  # start and end are then midnight UTC of their dates, whatever time_zone says
    time_zone: str = "UTC"
    location: str = ""
    organizer: tuple = ("", "")
    attendees: list = field(default_factory=list)
    sensitivity: str = "normal"
    show_as: str = "busy"
    is_cancelled: bool = False
    ical_uid: str = ""
    importance: str = "normal"
    response_status: str = "organizer"  # this mailbox's own response
    is_reminder_on: bool = True
    reminder_minutes: int = 15
    online_meeting_url: str = ""
    recurrence: Optional[Recurrence] = None
    exceptions: dict = field(default_factory=dict)  # original_start -> {field: value}
    cancelled_occurrences: set = field(default_factory=set)

    @property
    def type(self):
        return "seriesMaster" if self.recurrence else "singleInstance"


@dataclass
class Address:
    street: str = ""
    city: str = ""
    state: str = ""
    postal_code: str = ""
    country: str = ""


@dataclass
class Contact(Item):
    given_name: str = ""
    surname: str = ""
    middle_name: str = ""
    display_name: str = ""
    company_name: str = ""
    department: str = ""
    job_title: str = ""
    email_addresses: list = field(default_factory=list)  # [(name, address)]
    business_phones: list = field(default_factory=list)
    mobile_phone: str = ""
    home_phones: list = field(default_factory=list)
    business_address: Address = field(default_factory=Address)
    home_address: Address = field(default_factory=Address)
    personal_notes: str = ""
    file_as: str = ""
    business_home_page: str = ""
    # Named MAPI properties: {"String {guid} Name X": value}, the key as Graph writes the id (see
    # extended_property_key), shared by Graph's singleValueExtendedProperties and EWS ExtendedProperty.
    extended_properties: dict = field(default_factory=dict)


class Occurrence:
    """One instance of a calendar item inside a window (what calendarView returns).

    Attributes not set here (subject, location, attendees, ...) come from the
    exception overrides, then from the series master or single event.
    """

    def __init__(self, event, type, original_start, start, end, overrides=None, id=None):
        self.event = event
        self.type = type
        self.original_start = original_start
        self.start = start
        self.end = end
        self.overrides = overrides or {}
        self.id = id or event.id
        self.series_master_id = event.id if type != "singleInstance" else None

    def __getattr__(self, name):
        overrides = self.__dict__.get("overrides", {})
        if name in overrides:
            return overrides[name]
        return getattr(self.__dict__["event"], name)

    def __repr__(self):
        return f"<Occurrence {self.type} {self.subject} {self.start.isoformat()}>"


def occurrence_id(master, original_start):
    """Stable id of one occurrence: master immutable id bytes + original start."""
    raw = base64.urlsafe_b64decode(master.immutable_id)
    stamp = int(as_utc(original_start).timestamp()).to_bytes(8, "big", signed=True)
    return _b64(b"\x07" + raw[1:] + stamp + b"\x00")


GLOBAL_OBJECT_ID_CLASS = "040000008200E00074C5B7101A82E008"


def occurrence_ical_uid(series_uid, original_start):
    """iCalUId of one occurrence as Graph v1.0 documents it ("different for each occurrence").

    Exchange derives it from the series' GlobalObjectId with the instance date
    (year: 2 bytes, month, day) in bytes 16-19, where the series has zeros.
    """
    day = as_utc(original_start).date()
    stamp = f"{day.year:04X}{day.month:02X}{day.day:02X}"
    if series_uid.upper().startswith(GLOBAL_OBJECT_ID_CLASS) and len(series_uid) >= 40:
        return series_uid[:32] + stamp + series_uid[40:]
    return series_uid + stamp


def parse_occurrence_id(value):
    """Return (master immutable id, original start) or None if not an occurrence id."""
    try:
        raw = base64.urlsafe_b64decode(value)
    except Exception:
        return None
    if len(raw) != 42 or raw[:1] != b"\x07":
        return None
    master_immutable = _b64(b"I" + raw[1:33])
    start = datetime.fromtimestamp(int.from_bytes(raw[33:41], "big", signed=True), UTC)
    return master_immutable, start


# ---------------------------------------------------------------- MIME parsing


def _decode_part(part):
    """Text of a MIME part; never raises (unknown charsets fall back to latin-1 / utf-8)."""
    try:
        return part.get_content()
    except Exception:
        pass
    try:
        payload = part.get_payload(decode=True) or b""
    except Exception:
        payload = str(part.get_payload()).encode("utf-8", "replace")
    charset = part.get_content_charset() or "utf-8"
    for candidate in (charset, "utf-8", "cp1252"):
        try:
            return payload.decode(candidate)
        except (LookupError, UnicodeDecodeError):
            continue
    return payload.decode("latin-1")


def _header(msg, name):
    try:
        value = msg.get(name)
        return None if value is None else str(value)
    except Exception:
        try:
            raw = msg.get_all(name, failobj=[None])[0]
        except Exception:
            return None
        return None if raw is None else str(raw)


def _addresses(msg, name):
    try:
        raw = [str(v) for v in (msg.get_all(name) or [])]
    except Exception:
        try:
            raw = [str(v) for k, v in msg.raw_items() if k.lower() == name.lower()]
        except Exception:
            raw = []
    try:
        return [(n, a) for n, a in email.utils.getaddresses(raw) if a or n]
    except Exception:
        return []


def _date(msg, name):
    value = _header(msg, name)
    if not value:
        return None
    try:
        parsed = email.utils.parsedate_to_datetime(value)
    except Exception:
        return None
    if parsed is None:
        return None
    return as_utc(parsed)


def parse_mime(mime, attachment_seed):
    """Parse RFC 5322 bytes into the Message's cached fields; tolerant of broken input."""
    result = {
        "subject": "",
        "sender": ("", ""),
        "from_": ("", ""),
        "to": [],
        "cc": [],
        "bcc": [],
        "reply_to": [],
        "internet_message_id": "",
        "sent": None,
        "body_html": "",
        "body_text": "",
        "attachments": [],
        "has_attachments": False,
        "in_reply_to": "",
        "references": "",
        "importance": "normal",
    }
    try:
        msg = email.message_from_bytes(mime, policy=email.policy.default)
    except Exception:
        result["body_text"] = mime.decode("utf-8", "replace")
        return result
    result["subject"] = (_header(msg, "Subject") or "").strip()
    froms = _addresses(msg, "From")
    result["from_"] = froms[0] if froms else ("", "")
    senders = _addresses(msg, "Sender")
    result["sender"] = senders[0] if senders else result["from_"]
    for key, header in (("to", "To"), ("cc", "Cc"), ("bcc", "Bcc"), ("reply_to", "Reply-To")):
        result[key] = _addresses(msg, header)
    result["internet_message_id"] = (_header(msg, "Message-ID") or "").strip()
    result["in_reply_to"] = (_header(msg, "In-Reply-To") or "").strip()
    result["references"] = (_header(msg, "References") or "").strip()
    result["sent"] = _date(msg, "Date")
    importance = (_header(msg, "Importance") or _header(msg, "X-Priority") or "").lower()
    if importance.startswith(("high", "1", "2")):
        result["importance"] = "high"
    elif importance.startswith(("low", "5", "4")):
        result["importance"] = "low"

    body_parts = set()
    try:
        html = msg.get_body(preferencelist=("html",))
        plain = msg.get_body(preferencelist=("plain",))
    except Exception:
        html = plain = None
    if html is not None:
        result["body_html"] = _decode_part(html)
        body_parts.add(id(html))
    if plain is not None:
        result["body_text"] = _decode_part(plain)
        body_parts.add(id(plain))
    if html is None and plain is None and not msg.is_multipart():
        result["body_text"] = _decode_part(msg)
        body_parts.add(id(msg))

    attachments = []
    try:
        parts = list(msg.walk())
    except Exception:
        parts = []
    for part in parts:
        try:
            if part.is_multipart() or id(part) in body_parts:
                continue
            disposition = (part.get_content_disposition() or "").lower()
            content_id = (_header(part, "Content-ID") or "").strip().strip("<>") or None
            name = part.get_filename()
            if (
                not name
                and not content_id
                and disposition != "attachment"
                and part.get_content_maintype() == "text"
            ):
                continue  # an alternative body we did not pick, not an attachment
            try:
                content = part.get_payload(decode=True) or b""
            except Exception:
                content = b""
            index = len(attachments)
            attachments.append(
                Attachment(
                    id=_b64(hashlib.sha256(f"{attachment_seed}/{index}".encode()).digest()[:30]),
                    name=name or f"attachment{index + 1}",
                    content_type=part.get_content_type(),
                    size=len(content),
                    content=content,
                    is_inline=bool(content_id) and disposition != "attachment",
                    content_id=content_id,
                )
            )
        except Exception:
            continue
    result["attachments"] = attachments
    result["has_attachments"] = any(not a.is_inline for a in attachments)
    return result


# ---------------------------------------------------------------- recurrence


def _month_add(year, month, months):
    total = year * 12 + (month - 1) + months
    return total // 12, total % 12 + 1


def _nth_weekday_dates(year, month, days_of_week, index):
    wanted = {WEEKDAYS.index(d.lower()) for d in days_of_week}
    days_in_month = _calendar.monthrange(year, month)[1]
    matches = [
        date(year, month, d) for d in range(1, days_in_month + 1) if date(year, month, d).weekday() in wanted
    ]
    if not matches:
        return []
    position = WEEK_INDEXES.get(index, 0)
    if position >= len(matches):
        return []
    return [matches[position]]


def recurrence_dates(rec, first_date, until_date):
    """Yield occurrence dates of the pattern, from the range start up to until_date.

    Numbered ranges count every generated date (cancelled occurrences included,
    as Exchange does); until_date only stops iteration early.
    """
    start = rec.start_date or first_date
    end = rec.end_date if rec.range_type == "endDate" else None
    limit = rec.number_of_occurrences if rec.range_type == "numbered" else None
    interval = max(int(rec.interval or 1), 1)
    count = 0

    def emit(day):
        nonlocal count
        if day < start:
            return "skip"
        if end and day > end:
            return "stop"
        if limit is not None and count >= limit:
            return "stop"
        if day > until_date:
            return "stop"
        count += 1
        return "emit"

    kind = rec.type
    if kind == "daily":
        day = start
        while True:
            verdict = emit(day)
            if verdict == "stop":
                return
            if verdict == "emit":
                yield day
            day += timedelta(days=interval)
    elif kind == "weekly":
        days = sorted({WEEKDAYS.index(d.lower()) for d in (rec.days_of_week or [WEEKDAYS[start.weekday()]])})
        first_dow = WEEKDAYS.index((rec.first_day_of_week or "sunday").lower())
        week_start = start - timedelta(days=(start.weekday() - first_dow) % 7)
        while True:
            week_days = sorted(week_start + timedelta(days=(d - first_dow) % 7) for d in days)
            for day in week_days:
                verdict = emit(day)
                if verdict == "stop":
                    return
                if verdict == "emit":
                    yield day
            week_start += timedelta(weeks=interval)
    elif kind in ("absoluteMonthly", "relativeMonthly", "absoluteYearly", "relativeYearly"):
        yearly = kind.endswith("Yearly")
        step = interval * 12 if yearly else interval
        year, month = start.year, (rec.month or start.month) if yearly else start.month
        if yearly and date(year, month, 1) < date(start.year, start.month, 1):
            year += 1
        while True:
            if kind.startswith("absolute"):
                day_of_month = rec.day_of_month or start.day
                last = _calendar.monthrange(year, month)[1]
                candidates = [date(year, month, min(day_of_month, last))]
            else:
                candidates = _nth_weekday_dates(
                    year, month, rec.days_of_week or [WEEKDAYS[start.weekday()]], rec.index
                )
            if date(year, month, 1) > until_date:
                return
            for day in candidates:
                verdict = emit(day)
                if verdict == "stop":
                    return
                if verdict == "emit":
                    yield day
            year, month = _month_add(year, month, step)
    else:
        raise ValueError(f"unknown recurrence pattern {kind!r}")


def original_starts(event, until):
    """Yield the original starts (UTC) of a recurring event's occurrences up to the local date ``until``.

    The wall-clock time of the master start is kept in the event's zone, so a
    09:00 Berlin series stays at 09:00 across daylight-saving changes.
    """
    tz = UTC if event.is_all_day else tz_for(event.time_zone)
    local_start = event.start.astimezone(tz)
    wall_clock = local_start.timetz().replace(tzinfo=None)
    for day in recurrence_dates(event.recurrence, local_start.date(), until):
        yield datetime.combine(day, wall_clock).replace(tzinfo=tz).astimezone(UTC)


def series_original_starts(event, limit):
    """The first ``limit`` original starts (UTC) of a recurring event's series."""
    until = event.start.date() + timedelta(days=366 * 30)
    starts = []
    for start in original_starts(event, until):
        starts.append(start)
        if len(starts) >= limit:
            break
    return starts


# ---------------------------------------------------------------- mailbox


class Mailbox:
    """One user's mailbox: folders, items and the change log (see module doc)."""

    def __init__(self, store, email_address, display_name, password="Passw0rd!", username=None):
        self._store = store
        self._lock = store.lock
        self.uuid = uuid.uuid4()
        self.id = str(self.uuid)
        self.email = email_address
        self.display_name = display_name
        self.username = username or email_address.split("@")[0]
        self.password = password
        self.folders = {}
        self.items = {}
        self._immutable_index = {}  # immutable_id -> current id
        self._log = []  # list of (seq, kind, item_id, immutable_id, folder_id, is_folder)
        self._seq = 0
        self._well_known = {}
        root = self._new_folder(None, "Top of Information Store", "IPF.Note", "msgfolderroot")
        for well_known, name, folder_class in DEFAULT_FOLDERS:
            self._new_folder(root.id, name, folder_class, well_known)

    def __repr__(self):
        return f"<Mailbox {self.email}>"

    # -- internals
    def _next_seq(self):
        self._seq += 1
        return self._seq

    def _record(self, kind, item_id, immutable_id, folder_id, is_folder=False):
        self._log.append((self._next_seq(), kind, item_id, immutable_id, folder_id, is_folder))

    def _new_folder(self, parent_id, display_name, folder_class, well_known=None):
        immutable = new_id(b"F", self.uuid)
        folder = Folder(
            id=immutable,
            immutable_id=immutable,
            parent_id=parent_id,
            display_name=display_name,
            folder_class=folder_class,
            well_known=well_known,
        )
        self.folders[folder.id] = folder
        if well_known:
            self._well_known[well_known] = folder.id
        self._record("created", folder.id, folder.immutable_id, parent_id, is_folder=True)
        return folder

    def _add_item(self, item):
        self.items[item.id] = item
        self._immutable_index[item.immutable_id] = item.id
        self._record("created", item.id, item.immutable_id, item.folder_id)
        return item

    def _new_item_ids(self):
        item_uuid = uuid.uuid4()
        return new_id(b"M", self.uuid), new_id(b"I", self.uuid, item_uuid)

    # -- folders
    @property
    def current_seq(self):
        """Highest sequence number written to this mailbox's change log."""
        return self._seq

    def folder(self, well_known_or_id):
        """Folder by id, immutable id or well-known name; KeyError if none."""
        with self._lock:
            if well_known_or_id in self.folders:
                return self.folders[well_known_or_id]
            name = str(well_known_or_id).lower()
            name = FOLDER_ALIASES.get(name, name)
            if name in self._well_known:
                return self.folders[self._well_known[name]]
            raise KeyError(well_known_or_id)

    def child_folders(self, folder_id):
        """Direct children of a folder, sorted by display name."""
        with self._lock:
            parent = self.folder(folder_id).id
            return sorted(
                (f for f in self.folders.values() if f.parent_id == parent),
                key=lambda f: f.display_name.lower(),
            )

    def folder_by_path(self, path):
        """Folder at a display-name path below msgfolderroot ("Inbox/Transfer In"), or None."""
        with self._lock:
            current = self.folder("msgfolderroot")
            for part in [p for p in path.strip("/").split("/") if p]:
                matches = [
                    f
                    for f in self.folders.values()
                    if f.parent_id == current.id and f.display_name.lower() == part.lower()
                ]
                if not matches:
                    return None
                current = matches[0]
            return current

    def ensure_folder_path(self, path, folder_class=None):
        """folder_by_path, creating missing folders (class inherited from the parent)."""
        with self._lock:
            current = self.folder("msgfolderroot")
            for part in [p for p in path.strip("/").split("/") if p]:
                matches = [
                    f
                    for f in self.folders.values()
                    if f.parent_id == current.id and f.display_name.lower() == part.lower()
                ]
                if matches:
                    current = matches[0]
                else:
                    klass = folder_class or (current.folder_class if current.parent_id else "IPF.Note")
                    current = self.create_folder(current.id, part, klass)
            return current

    def create_folder(self, parent_id, display_name, folder_class="IPF.Note"):
        """Create a child folder; ValueError if a sibling already has that name (as Exchange)."""
        with self._lock:
            parent = self.folder(parent_id)
            for sibling in self.child_folders(parent.id):
                if sibling.display_name.lower() == display_name.lower():
                    raise ValueError("A folder with the specified name already exists.")
            folder = self._new_folder(parent.id, display_name, folder_class)
            parent.change_key = new_change_key()
            return folder

    def update_folder(self, folder_id, **fields):
        """Rename/move a folder (display_name, parent_id); bumps its change key."""
        with self._lock:
            folder = self.folder(folder_id)
            for key, value in fields.items():
                if not hasattr(folder, key):
                    raise AttributeError(key)
                setattr(folder, key, value)
            folder.change_key = new_change_key()
            self._record("updated", folder.id, folder.immutable_id, folder.parent_id, is_folder=True)
            return folder

    def delete_folder(self, folder_id):
        """Hard-delete a folder with its sub-folders and items."""
        with self._lock:
            folder = self.folder(folder_id)
            if folder.well_known:
                raise ValueError("Distinguished folders cannot be deleted.")
            for child in self.child_folders(folder.id):
                self.delete_folder(child.id)
            for item in self.items_in(folder.id):
                self.delete_item(item.id, soft=False)
            del self.folders[folder.id]
            self._record("deleted", folder.id, folder.immutable_id, folder.parent_id, is_folder=True)

    def folder_counts(self, folder_id):
        """(total items, unread messages) in a folder."""
        with self._lock:
            items = self.items_in(folder_id)
            return len(items), sum(1 for i in items if i.kind == "message" and not i.is_read)

    # -- items
    def add_message(self, folder_id, mime, received=None, is_read=False, **fields):
        """Store a message from its RFC 5322 bytes (never parsed here, see Message)."""
        with self._lock:
            folder = self.folder(folder_id)
            item_id, immutable_id = self._new_item_ids()
            message = Message(
                item_id, immutable_id, folder.id, bytes(mime), received=received, is_read=is_read, **fields
            )
            return self._add_item(message)

    def add_event(self, folder_id=None, **fields):
        """Store a calendar item; recurrence may be a Recurrence or a dict of its fields."""
        with self._lock:
            folder = self.folder(folder_id or "calendar")
            item_id, immutable_id = self._new_item_ids()
            fields = _normalise_event_fields(fields)
            # A series' GlobalObjectId has no instance date (zeros in bytes 16-19).
            fields.setdefault("ical_uid", GLOBAL_OBJECT_ID_CLASS + "00000000" + uuid.uuid4().hex.upper())
            event = Event(id=item_id, immutable_id=immutable_id, folder_id=folder.id, kind="event", **fields)
            return self._add_item(event)

    def add_contact(self, folder_id=None, **fields):
        """Store a contact; display_name defaults to "given surname"."""
        with self._lock:
            folder = self.folder(folder_id or "contacts")
            item_id, immutable_id = self._new_item_ids()
            fields = _normalise_contact_fields(fields)
            if not fields.get("display_name"):
                fields["display_name"] = " ".join(
                    p for p in (fields.get("given_name"), fields.get("surname")) if p
                )
            contact = Contact(
                id=item_id, immutable_id=immutable_id, folder_id=folder.id, kind="contact", **fields
            )
            return self._add_item(contact)

    def item(self, id_or_immutable_id):
        """Item by current id or immutable id; KeyError if gone."""
        with self._lock:
            if id_or_immutable_id in self.items:
                return self.items[id_or_immutable_id]
            current = self._immutable_index.get(id_or_immutable_id)
            if current is None:
                raise KeyError(id_or_immutable_id)
            return self.items[current]

    def occurrence(self, occurrence_id_value):
        """The Occurrence behind an occurrence id from expand_calendar; KeyError if none."""
        parsed = parse_occurrence_id(occurrence_id_value)
        if not parsed:
            raise KeyError(occurrence_id_value)
        master_immutable, original_start = parsed
        with self._lock:
            master = self.item(master_immutable)
            span = timedelta(days=1)
            for occ in self._expand_event(
                master, original_start - span, original_start + span, include_exceptions_outside=True
            ):
                if occ.id == occurrence_id_value:
                    return occ
        raise KeyError(occurrence_id_value)

    def items_in(self, folder_id):
        """Items of a folder, in the order they were added."""
        with self._lock:
            folder_id = self.folder(folder_id).id
            return [i for i in self.items.values() if i.folder_id == folder_id]

    def update_item(self, item_id, **fields):
        """Change fields of an item; bumps change_key and last_modified and logs "updated"."""
        with self._lock:
            item = self.item(item_id)
            if item.kind == "event":
                fields = _normalise_event_fields(fields)
            elif item.kind == "contact":
                fields = _normalise_contact_fields(fields)
            for key, value in fields.items():
                if item.kind != "message" and not hasattr(item, key):
                    raise AttributeError(f"{item.kind} has no field {key!r}")
                setattr(item, key, value)
            item.change_key = new_change_key()
            item.last_modified = utcnow()
            # Exchange tells a change of the read flag alone apart (EWS ReadFlagChange).
            kind = "read_flag" if item.kind == "message" and set(fields) == {"is_read"} else "updated"
            self._record(kind, item.id, item.immutable_id, item.folder_id)
            return item

    def move_item(self, item_id, dest_folder_id):
        """Move an item: it gets a NEW id (as Exchange), keeps its immutable_id."""
        with self._lock:
            item = self.item(item_id)
            dest = self.folder(dest_folder_id)
            if dest.id == item.folder_id:
                return item
            self._record("deleted", item.id, item.immutable_id, item.folder_id)
            del self.items[item.id]
            item.id = new_id(b"M", self.uuid)
            item.folder_id = dest.id
            item.change_key = new_change_key()
            item.last_modified = utcnow()
            return self._add_item(item)

    def copy_item(self, item_id, dest_folder_id):
        """Copy an item into another folder (new id and new immutable id)."""
        with self._lock:
            item = self.item(item_id)
            dest = self.folder(dest_folder_id)
            new_item_id, new_immutable = self._new_item_ids()
            if item.kind == "message":
                copy = Message(
                    new_item_id,
                    new_immutable,
                    dest.id,
                    item.mime,
                    received=item.received,
                    is_read=item.is_read,
                    is_draft=item.is_draft,
                    flag_status=item.flag_status,
                    categories=item.categories,
                )
                copy._overrides = dict(item._overrides)
            else:
                values = {f.name: getattr(item, f.name) for f in dataclass_fields(item)}
                values.update(
                    id=new_item_id,
                    immutable_id=new_immutable,
                    folder_id=dest.id,
                    change_key=new_change_key(),
                    created=utcnow(),
                    last_modified=utcnow(),
                )
                copy = type(item)(**values)
            return self._add_item(copy)

    def delete_item(self, item_id, soft=True):
        """Delete: soft moves messages to Deleted Items (hard delete if already there)."""
        with self._lock:
            item = self.item(item_id)
            deleted_items = self.folder("deleteditems")
            if soft and item.kind == "message" and item.folder_id != deleted_items.id:
                return self.move_item(item.id, deleted_items.id)
            del self.items[item.id]
            self._immutable_index.pop(item.immutable_id, None)
            self._record("deleted", item.id, item.immutable_id, item.folder_id)
            return None

    # -- sync
    def changes_since(self, folder_id, seq, upto=None):
        """Coalesced item changes in a folder after ``seq`` (and up to ``upto`` when given);
        returns (changes, new high-water seq).

        One Change per item id: created then updated stays "created", anything then
        deleted is "deleted", created then deleted inside the window is omitted;
        "read_flag" stays so only while nothing else changed.
        """
        with self._lock:
            folder_id = self.folder(folder_id).id
            return self._coalesce(folder_id, seq, is_folder=False, upto=upto), self._seq

    def folder_changes_since(self, seq):
        """Coalesced folder-hierarchy changes after ``seq``: (changes, new high-water seq)."""
        with self._lock:
            return self._coalesce(None, seq, is_folder=True), self._seq

    def _coalesce(self, folder_id, seq, is_folder, upto=None):
        merged = {}
        order = []
        for entry_seq, kind, item_id, immutable_id, entry_folder, entry_is_folder in self._log_after(seq):
            if upto is not None and entry_seq > upto:
                break
            if entry_is_folder != is_folder or (folder_id is not None and entry_folder != folder_id):
                continue
            if item_id not in merged:
                merged[item_id] = Change(kind, item_id, immutable_id, entry_seq, entry_folder)
                order.append(item_id)
                continue
            previous = merged[item_id]
            if previous is None:  # created and deleted, then back again (a move back under the same id)
                merged[item_id] = Change(kind, item_id, immutable_id, entry_seq, entry_folder)
            elif kind == "deleted":
                merged[item_id] = (
                    None
                    if previous.kind == "created"
                    else Change("deleted", item_id, immutable_id, entry_seq, entry_folder)
                )
            else:
                previous.seq = entry_seq
                if previous.kind == "deleted" or (previous.kind == "read_flag" and kind != "read_flag"):
                    previous.kind = "updated"
        return [merged[i] for i in order if merged[i] is not None]

    def _log_after(self, seq):
        # The log is ordered by seq: bisect instead of scanning ten thousand entries.
        low, high = 0, len(self._log)
        while low < high:
            middle = (low + high) // 2
            if self._log[middle][0] <= seq:
                low = middle + 1
            else:
                high = middle
        return self._log[low:]

    # -- calendar
    def expand_calendar(self, folder_id, window_start, window_end):
        """Singles, occurrences and exceptions overlapping [window_start, window_end), by start."""
        window_start, window_end = as_utc(window_start), as_utc(window_end)
        result = []
        with self._lock:
            for item in self.items_in(folder_id or "calendar"):
                if item.kind == "event":
                    result.extend(self._expand_event(item, window_start, window_end))
        result.sort(key=lambda o: (o.start, o.id))
        return result

    def _expand_event(self, event, window_start, window_end, include_exceptions_outside=False):
        if not event.recurrence:
            if event.start < window_end and (
                event.end > window_start or event.start == event.end >= window_start
            ):
                yield Occurrence(event, "singleInstance", None, event.start, event.end)
            return
        tz = UTC if event.is_all_day else tz_for(event.time_zone)
        duration = event.end - event.start
        exceptions = {as_utc(k): v for k, v in event.exceptions.items()}
        cancelled = {as_utc(k) for k in event.cancelled_occurrences}
        # Exceptions may be moved into the window from anywhere: look a bit further.
        slack = max((abs(as_utc(v.get("start", k)) - k) for k, v in exceptions.items()), default=timedelta(0))
        until = (window_end + slack).astimezone(tz).date()
        for original in original_starts(event, until):
            if original in cancelled:
                continue
            overrides = exceptions.get(original)
            if overrides is not None:
                start = as_utc(overrides.get("start", original))
                end = as_utc(overrides.get("end", start + duration))
                kind = "exception"
            else:
                start, end = original, original + duration
                kind = "occurrence"
            if (start < window_end and end > window_start) or include_exceptions_outside:
                yield Occurrence(
                    event,
                    kind,
                    original,
                    start,
                    end,
                    overrides={k: v for k, v in (overrides or {}).items() if k not in ("start", "end")},
                    id=occurrence_id(event, original),
                )


def _normalise_event_fields(fields):
    fields = dict(fields)
    for key in ("start", "end"):
        if key in fields and fields[key] is not None:
            fields[key] = as_utc(fields[key])
    recurrence = fields.get("recurrence")
    if isinstance(recurrence, dict):
        recurrence = dict(recurrence)
        for key in ("start_date", "end_date"):
            if isinstance(recurrence.get(key), str):
                recurrence[key] = date.fromisoformat(recurrence[key])
        fields["recurrence"] = Recurrence(**recurrence)
    if "attendees" in fields:
        fields["attendees"] = [a if isinstance(a, Attendee) else Attendee(**a) for a in fields["attendees"]]
    if "organizer" in fields and isinstance(fields["organizer"], list):
        fields["organizer"] = tuple(fields["organizer"])
    if "exceptions" in fields:
        fields["exceptions"] = {as_utc(k): _normalise_exception(v) for k, v in fields["exceptions"].items()}
    if "cancelled_occurrences" in fields:
        fields["cancelled_occurrences"] = {as_utc(v) for v in fields["cancelled_occurrences"]}
    return fields


def _normalise_exception(overrides):
    overrides = dict(overrides)
    for key in ("start", "end"):
        if key in overrides:
            overrides[key] = as_utc(overrides[key])
    return overrides


def extended_property_key(property_type, property_set_id, property_name):
    """The one spelling of a named property's id: Graph's ``"String {guid} Name X"``, guid in lower case."""
    return f"{property_type} {{{property_set_id.strip('{}').lower()}}} Name {property_name}"


def parse_extended_property_id(value):
    """The key of a Graph ``singleValueExtendedProperties`` id; None when it is not a named property."""
    parts = (value or "").split(" ", 3)
    if len(parts) != 4 or parts[2].lower() != "name":
        return None
    return extended_property_key(parts[0], parts[1], parts[3])


def _normalise_contact_fields(fields):
    fields = dict(fields)
    for key in ("business_address", "home_address"):
        if isinstance(fields.get(key), dict):
            fields[key] = Address(**fields[key])
    if "email_addresses" in fields:
        fields["email_addresses"] = [
            (a, a) if isinstance(a, str) else tuple(a) for a in fields["email_addresses"]
        ]
    return fields


class Store:
    """All mailboxes of the tenant, guarded by one re-entrant lock (``store.lock``)."""

    def __init__(self):
        self.lock = threading.RLock()
        self._mailboxes = {}

    def add_mailbox(self, email_address, display_name, password="Passw0rd!", username=None):
        """Create a mailbox with the default folders; ValueError if the address exists."""
        with self.lock:
            key = email_address.lower()
            if key in self._mailboxes:
                raise ValueError(f"mailbox {email_address} exists")
            mailbox = Mailbox(self, email_address, display_name, password=password, username=username)
            self._mailboxes[key] = mailbox
            return mailbox

    def mailbox(self, email_or_id):
        """Mailbox by e-mail (case-insensitive), id or username; KeyError if none."""
        with self.lock:
            key = str(email_or_id).lower()
            if key in self._mailboxes:
                return self._mailboxes[key]
            for mailbox in self._mailboxes.values():
                if mailbox.id == key or mailbox.username.lower() == key:
                    return mailbox
            raise KeyError(email_or_id)

    def mailboxes(self):
        """All mailboxes in creation order."""
        with self.lock:
            return list(self._mailboxes.values())

    def summary(self):
        """A JSON-able overview (mailboxes, folders with counts, sequence numbers)."""
        with self.lock:
            result = []
            for mailbox in self._mailboxes.values():
                counts = {}
                for item in mailbox.items.values():
                    counts[item.folder_id] = counts.get(item.folder_id, 0) + 1
                folders = []
                for folder in mailbox.folders.values():
                    path = []
                    current = folder
                    while current.parent_id:
                        path.append(current.display_name)
                        current = mailbox.folders[current.parent_id]
                    folders.append(
                        {
                            "id": folder.id,
                            "path": "/".join(reversed(path)),
                            "class": folder.folder_class,
                            "well_known": folder.well_known,
                            "items": counts.get(folder.id, 0),
                        }
                    )
                folders.sort(key=lambda f: f["path"].lower())
                result.append(
                    {
                        "id": mailbox.id,
                        "email": mailbox.email,
                        "display_name": mailbox.display_name,
                        "username": mailbox.username,
                        "seq": mailbox.current_seq,
                        "items": len(mailbox.items),
                        "folders": folders,
                    }
                )
            return {"mailboxes": result}
