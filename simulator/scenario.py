"""Scenario files: seed the tenant from YAML/JSON, and generate large mailboxes.

A scenario is a mapping::

    tenant_id: "3f2b...."              # fixed so configurations can point at it
    knobs: {latency_ms: 0}             # tenant-wide knobs
    apps: [{name, client_id, client_secret, redirect_uris, roles}]
    users:
      - email: anna@demo.example.com
        display_name: Anna Berger
        password: "..."
        time_zone: Europe/Berlin
        folders: ["Inbox/Transfer In", {path: "Contacts/Suppliers", class: IPF.Contact}]
        knobs: {throttle_rate: 0.1}
        mails: [MAIL, ...]             # into this mailbox (folder: default Inbox)
        events: [EVENT, ...]
        contacts: [CONTACT, ...]
        generate: {mails: 1000, events: 10, contacts: 10, folder: "Inbox/Transfer In", seed: 1}
    mails:                             # one MIME, delivered to several mailboxes
      - deliver: {anna@demo.example.com: "Inbox/Transfer In", marco@demo.example.com: Inbox}
        ...MAIL fields
    meetings:                          # organizer's calendar + every attendee with a mailbox
      - organizer: anna@demo.example.com
        attendees: [{address: marco@demo.example.com, response: accepted}]
        ...EVENT fields

MAIL: ``eml: file.eml`` (relative to the scenario file) or fields subject, from,
to, cc, message_id, in_reply_to, date, body_text, body_html, attachments
[{name, content_type, text | size}], inline_images [{cid, name}], headers;
plus folder, received, is_read, categories.
EVENT: subject, start, end | duration (minutes), all_day + days, time_zone,
location, body_html, sensitivity, show_as, is_cancelled, categories, ical_uid,
recurrence {type, interval, days_of_week, day_of_month, month, index,
range_type, number_of_occurrences, end_date}, exceptions [{occurrence: N, shift_days, at, ...fields}],
cancelled_occurrences [N, ...].
Times: ISO strings, or relative to now: "now", "-2d 10:15", "+3h", "today 09:00",
"mon 09:00" (this week), "wd+2 14:00" (2nd working day after today; wd+0 =
today or the next working day), interpreted in the user's time zone.
"""

import base64
import email.policy
import email.utils
import json
import os
import random
import re
import struct
import time
import uuid
import zlib
from datetime import date, datetime, timedelta
from email.message import EmailMessage

from .store import UTC, WEEKDAYS, as_utc, series_original_starts, tz_for

RELATIVE = re.compile(
    r"^(?P<base>now|today|wd[+-]\d+|[+-]\d+[dhm]|[a-z]{3,9})(?:\s+(?P<hh>\d{1,2}):(?P<mm>\d{2}))?$",
    re.IGNORECASE,
)


def load_scenario_data(scenario):
    """A scenario mapping from a dict, a .yaml/.json path or YAML/JSON text."""
    if isinstance(scenario, dict):
        return dict(scenario)
    text = str(scenario)
    base_dir = None
    if "\n" not in text and os.path.exists(text):
        base_dir = os.path.dirname(os.path.abspath(text))
        with open(text, encoding="utf-8") as handle:
            text = handle.read()
    try:
        data = json.loads(text)
    except ValueError:
        import yaml

        data = yaml.safe_load(text)
    if not isinstance(data, dict):
        raise ValueError("a scenario must be a mapping")
    data.setdefault("base_dir", base_dir)
    return data


def resolve_time(value, now=None, time_zone="UTC"):
    """An aware UTC datetime from an ISO value or a relative expression (see module doc)."""
    now = now or datetime.now(UTC)
    if isinstance(value, (datetime, date)):
        if not isinstance(value, datetime) or value.tzinfo is not None:
            return as_utc(value)
        return value.replace(tzinfo=tz_for(time_zone)).astimezone(UTC)
    text = str(value).strip()
    match = RELATIVE.match(text)
    if not match:
        parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
        if parsed.tzinfo is None:
            parsed = parsed.replace(tzinfo=tz_for(time_zone))
        return parsed.astimezone(UTC)
    tz = tz_for(time_zone)
    local_now = now.astimezone(tz)
    base = match.group("base").lower()
    if base == "now":
        moment = local_now
    elif base == "today":
        moment = local_now.replace(hour=0, minute=0, second=0, microsecond=0)
    elif base.startswith("wd"):
        moment = local_now.replace(hour=0, minute=0, second=0, microsecond=0)
        while moment.weekday() >= 5:
            moment += timedelta(days=1)
        steps = int(base[2:])
        direction = 1 if steps >= 0 else -1
        for _ in range(abs(steps)):
            moment += timedelta(days=direction)
            while moment.weekday() >= 5:
                moment += timedelta(days=direction)
    elif base[0] in "+-":
        amount = int(base[:-1])
        unit = {"d": "days", "h": "hours", "m": "minutes"}[base[-1]]
        moment = local_now + timedelta(**{unit: amount})
        if unit == "days" and match.group("hh"):
            moment = moment.replace(second=0, microsecond=0)
    else:
        names = [d for d in WEEKDAYS if d.startswith(base)]
        if not names:
            raise ValueError(f"cannot read time {value!r}")
        monday = local_now - timedelta(days=local_now.weekday())
        moment = (monday + timedelta(days=WEEKDAYS.index(names[0]))).replace(
            hour=0, minute=0, second=0, microsecond=0
        )
    if match.group("hh"):
        moment = moment.replace(
            hour=int(match.group("hh")), minute=int(match.group("mm")), second=0, microsecond=0
        )
    # Re-attach the zone so a date across a DST change keeps its wall-clock time.
    return moment.replace(tzinfo=None).replace(tzinfo=tz).astimezone(UTC)


# ---------------------------------------------------------------- MIME building


def tiny_png(rgb=(0, 103, 184), size=8, width=None):
    """A valid PNG for inline images in demo mails: a solid ``size`` square, or a ``width`` ×
    ``size`` banner in that colour with a white band, as a letterhead logo would be."""

    def chunk(kind, data):
        return (
            struct.pack(">I", len(data))
            + kind
            + data
            + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
        )

    width = width or size
    row = b"\x00" + bytes(rgb) * width
    band = b"\x00" + bytes(rgb) * (width // 4) + b"\xff\xff\xff" * (width - width // 4)
    rows = [band if width != size and size // 3 <= y < size - size // 3 else row for y in range(size)]
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", struct.pack(">IIBBBBB", width, size, 8, 2, 0, 0, 0))
        + chunk(b"IDAT", zlib.compress(b"".join(rows)))
        + chunk(b"IEND", b"")
    )


def tiny_pdf(text):
    """A small, valid one-page PDF showing ``text``."""
    safe = text.encode("latin-1", "replace").replace(b"(", b"[").replace(b")", b"]")
    stream = b"BT /F1 18 Tf 72 720 Td (" + safe + b") Tj ET"
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 595 842] /Contents 4 0 R "
        b"/Resources << /Font << /F1 5 0 R >> >> >>",
        b"<< /Length %d >>\nstream\n" % len(stream) + stream + b"\nendstream",
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
    ]
    out = b"%PDF-1.4\n"
    offsets = []
    for number, body in enumerate(objects, 1):
        offsets.append(len(out))
        out += b"%d 0 obj\n" % number + body + b"\nendobj\n"
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    out += b"".join(b"%010d 00000 n \n" % o for o in offsets)
    out += b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (len(objects) + 1, xref)
    return out


def _address_list(value):
    if not value:
        return []
    return [value] if isinstance(value, str) else list(value)


def build_mime(spec, now=None, time_zone="UTC", default_to=None):
    """RFC 5322 bytes from MAIL fields (see module doc)."""
    message = EmailMessage(policy=email.policy.SMTP)
    message["From"] = spec.get("from", "sender@example.com")
    to = _address_list(spec.get("to")) or _address_list(default_to)
    if to:
        message["To"] = ", ".join(to)
    if spec.get("cc"):
        message["Cc"] = ", ".join(_address_list(spec["cc"]))
    message["Subject"] = spec.get("subject", "")
    sent = resolve_time(spec.get("date") or spec.get("received") or "now", now, time_zone)
    message["Date"] = email.utils.format_datetime(sent.astimezone(tz_for(time_zone)))
    domain = _address_list(spec.get("from", "x@example.com"))[0].rsplit("@", 1)[-1].strip(">")
    message["Message-ID"] = spec.get("message_id") or f"<{uuid.uuid4().hex}@{domain}>"
    if spec.get("in_reply_to"):
        message["In-Reply-To"] = spec["in_reply_to"]
        message["References"] = spec.get("references", spec["in_reply_to"])
    if spec.get("importance"):
        message["Importance"] = spec["importance"]
    for name, value in (spec.get("headers") or {}).items():
        message[name] = value
    text = spec.get("body_text")
    body_html = spec.get("body_html")
    if text is None and body_html is None:
        text = ""
    if text is not None:
        message.set_content(text)
    if body_html is not None:
        if text is None:
            message.set_content(body_html, subtype="html")
        else:
            message.add_alternative(body_html, subtype="html")
        html_part = message.get_body(preferencelist=("html",))
        for image in spec.get("inline_images") or []:
            html_part.add_related(
                tiny_png(tuple(image.get("rgb", (0, 103, 184))), image.get("height", 8), image.get("width")),
                "image",
                "png",
                cid="<{}>".format(image["cid"]),
                filename=image.get("name", image["cid"] + ".png"),
                disposition="inline",
            )
    for attachment in spec.get("attachments") or []:
        name = attachment["name"]
        content_type = attachment.get("content_type", "application/octet-stream")
        if content_type == "application/pdf" and "text" in attachment:
            content = tiny_pdf(attachment["text"])
        elif "text" in attachment:
            content = attachment["text"].encode("utf-8")
        elif "base64" in attachment:
            content = base64.b64decode(attachment["base64"])
        else:
            content = os.urandom(int(attachment.get("size", 1024)))
        maintype, subtype = content_type.split("/", 1)
        message.add_attachment(content, maintype=maintype, subtype=subtype, filename=name)
    return message.as_bytes()


# ---------------------------------------------------------------- applying


def apply_scenario(tenant, data):
    """Seed a running (or not yet serving) tenant from scenario data."""
    now = datetime.now(UTC)
    base_dir = data.get("base_dir") or os.getcwd()
    if data.get("knobs"):
        tenant.knobs.set(None, **data["knobs"])
    for app in data.get("apps") or []:
        tenant.register_app(
            app["client_id"],
            app.get("client_secret"),
            app.get("redirect_uris") or [],
            name=app.get("name", "App"),
            roles=app.get("roles"),
        )
    zones = {}
    for user in data.get("users") or []:
        try:
            mailbox = tenant.store.mailbox(user["email"])
        except KeyError:
            mailbox = tenant.store.add_mailbox(
                user["email"],
                user.get("display_name") or user["email"],
                password=user.get("password", "Passw0rd!"),
                username=user.get("username"),
            )
        time_zone = user.get("time_zone", "UTC")
        zones[mailbox.email.lower()] = time_zone
        for folder in user.get("folders") or []:
            if isinstance(folder, str):
                mailbox.ensure_folder_path(folder)
            else:
                mailbox.ensure_folder_path(folder["path"], folder.get("class"))
        if user.get("knobs"):
            tenant.knobs.set(mailbox.email, **user["knobs"])
        for mail in user.get("mails") or []:
            _deliver(mailbox, mail, mail.get("folder", "Inbox"), now, time_zone, base_dir)
        for event in user.get("events") or []:
            add_scenario_event(mailbox, event, now, time_zone)
        for contact in user.get("contacts") or []:
            add_scenario_contact(mailbox, contact)
        if user.get("generate"):
            generate(mailbox, **user["generate"])
    for mail in data.get("mails") or []:
        mime = None
        for address, folder in (mail.get("deliver") or {}).items():
            mailbox = tenant.store.mailbox(address)
            time_zone = zones.get(mailbox.email.lower(), "UTC")
            mime = mime or _mail_source(mail, now, time_zone, base_dir)
            _deliver(mailbox, mail, folder, now, time_zone, base_dir, mime=mime)
    for meeting in data.get("meetings") or []:
        add_meeting(tenant.store, meeting, now, zones)


def _mail_source(spec, now, time_zone, base_dir):
    if spec.get("eml"):
        with open(os.path.join(base_dir, spec["eml"]), "rb") as handle:
            return handle.read()
    return build_mime(spec, now, time_zone)


def _deliver(mailbox, spec, folder_path, now, time_zone, base_dir, mime=None):
    folder = mailbox.ensure_folder_path(folder_path)
    mime = mime or _mail_source(spec, now, time_zone, base_dir)
    received = resolve_time(spec.get("received") or spec.get("date") or "now", now, time_zone)
    return mailbox.add_message(
        folder.id,
        mime,
        received=received,
        is_read=bool(spec.get("is_read")),
        categories=spec.get("categories"),
    )


EVENT_KEYS = (
    "subject",
    "body_html",
    "location",
    "sensitivity",
    "show_as",
    "is_cancelled",
    "categories",
    "importance",
    "ical_uid",
    "online_meeting_url",
    "reminder_minutes",
    "is_reminder_on",
)


def _event_fields(spec, now, time_zone):
    time_zone = spec.get("time_zone", time_zone)
    fields = {k: spec[k] for k in EVENT_KEYS if k in spec}
    fields["time_zone"] = time_zone
    if spec.get("all_day"):
        local = resolve_time(spec["start"], now, time_zone).astimezone(tz_for(time_zone)).date()
        start = datetime(local.year, local.month, local.day, tzinfo=UTC)
        fields.update(is_all_day=True, start=start, end=start + timedelta(days=int(spec.get("days", 1))))
    else:
        start = resolve_time(spec["start"], now, time_zone)
        end = (
            resolve_time(spec["end"], now, time_zone)
            if spec.get("end")
            else (start + timedelta(minutes=int(spec.get("duration", 60))))
        )
        fields.update(start=start, end=end)
    if spec.get("recurrence"):
        recurrence = dict(spec["recurrence"])
        local_start = fields["start"].astimezone(UTC if fields.get("is_all_day") else tz_for(time_zone))
        recurrence.setdefault("start_date", local_start.date())
        if recurrence.get("end_date") and not isinstance(recurrence["end_date"], date):
            recurrence["end_date"] = (
                resolve_time(recurrence["end_date"], now, time_zone).astimezone(tz_for(time_zone)).date()
            )
        if recurrence.get("number_of_occurrences") and "range_type" not in recurrence:
            recurrence["range_type"] = "numbered"
        elif recurrence.get("end_date") and "range_type" not in recurrence:
            recurrence["range_type"] = "endDate"
        fields["recurrence"] = recurrence
    return fields


def _apply_exceptions(mailbox, event, spec, now, time_zone):
    if not event.recurrence or not (spec.get("exceptions") or spec.get("cancelled_occurrences")):
        return event
    wanted = [e["occurrence"] for e in spec.get("exceptions") or []] + list(
        spec.get("cancelled_occurrences") or []
    )
    starts = series_original_starts(event, max(wanted) + 1)
    exceptions = {}
    for exception in spec.get("exceptions") or []:
        changes = {k: v for k, v in exception.items() if k not in ("occurrence", "shift_days", "at")}
        original = starts[exception["occurrence"]]
        if "shift_days" in exception or "at" in exception:
            # Moved relative to the occurrence it replaces, in the event's own zone.
            local = original.astimezone(tz_for(time_zone)) + timedelta(
                days=int(exception.get("shift_days", 0))
            )
            if exception.get("at"):
                hour, minute = (int(p) for p in str(exception["at"]).split(":"))
                local = local.replace(hour=hour, minute=minute)
            changes["start"] = local.replace(tzinfo=None).replace(tzinfo=tz_for(time_zone)).astimezone(UTC)
        for key in ("start", "end"):
            if key in changes:
                changes[key] = resolve_time(changes[key], now, time_zone)
        if "start" in changes and "end" not in changes:
            changes["end"] = changes["start"] + (event.end - event.start)
        exceptions[original] = changes
    cancelled = {starts[n] for n in spec.get("cancelled_occurrences") or []}
    return mailbox.update_item(event.id, exceptions=exceptions, cancelled_occurrences=cancelled)


def add_scenario_event(mailbox, spec, now=None, time_zone="UTC", **extra):
    """Add one EVENT (see module doc) to a mailbox's calendar."""
    now = now or datetime.now(UTC)
    fields = _event_fields(spec, now, time_zone)
    fields.setdefault("organizer", (mailbox.display_name, mailbox.email))
    fields.update(extra)
    folder = mailbox.ensure_folder_path(spec["folder"], "IPF.Appointment") if spec.get("folder") else None
    event = mailbox.add_event(folder.id if folder else None, **fields)
    return _apply_exceptions(mailbox, event, spec, now, spec.get("time_zone", time_zone))


def add_meeting(store, spec, now=None, zones=None):
    """Put one meeting into the organizer's and every attendee mailbox's calendar (same iCalUId)."""
    now = now or datetime.now(UTC)
    zones = zones or {}
    organizer = store.mailbox(spec["organizer"])
    attendees = []
    for attendee in spec.get("attendees") or []:
        address = attendee if isinstance(attendee, str) else attendee["address"]
        name = attendee.get("name") if isinstance(attendee, dict) else None
        try:
            name = name or store.mailbox(address).display_name
        except KeyError:
            name = name or address
        attendees.append(
            {
                "name": name,
                "address": address,
                "type": (attendee.get("type", "required") if isinstance(attendee, dict) else "required"),
                "response": (attendee.get("response", "none") if isinstance(attendee, dict) else "none"),
            }
        )
    ical_uid = spec.get("ical_uid") or "040000008200E00074C5B7101A82E008" + uuid.uuid4().hex.upper()
    common = dict(organizer=(organizer.display_name, organizer.email), attendees=attendees, ical_uid=ical_uid)
    time_zone = zones.get(organizer.email.lower(), "UTC")
    events = [add_scenario_event(organizer, spec, now, time_zone, response_status="organizer", **common)]
    for attendee in attendees:
        try:
            mailbox = store.mailbox(attendee["address"])
        except KeyError:
            continue
        response = attendee["response"]
        events.append(
            add_scenario_event(
                mailbox,
                spec,
                now,
                time_zone,
                response_status=response if response != "none" else "notResponded",
                **common,
            )
        )
    return events


CONTACT_KEYS = (
    "given_name",
    "surname",
    "middle_name",
    "display_name",
    "company_name",
    "department",
    "job_title",
    "email_addresses",
    "business_phones",
    "mobile_phone",
    "home_phones",
    "business_address",
    "home_address",
    "personal_notes",
    "file_as",
    "categories",
)


def add_scenario_contact(mailbox, spec):
    """Add one CONTACT (fields as Contact; folder: a path below msgfolderroot)."""
    folder = mailbox.ensure_folder_path(spec["folder"], "IPF.Contact") if spec.get("folder") else None
    return mailbox.add_contact(
        folder.id if folder else None, **{k: spec[k] for k in CONTACT_KEYS if k in spec}
    )


# ---------------------------------------------------------------- generator

FIRST_NAMES = [
    "Anna",
    "Marco",
    "Lukas",
    "Giulia",
    "Sophie",
    "Paul",
    "Chiara",
    "Jonas",
    "Elena",
    "Felix",
    "Laura",
    "Matteo",
    "Emma",
    "Leon",
    "Sara",
    "David",
    "Mia",
    "Luca",
    "Hannah",
    "Tom",
]
LAST_NAMES = [
    "Schulz",
    "Rossi",
    "Müller",
    "Bianchi",
    "Weber",
    "Ferrari",
    "Fischer",
    "Romano",
    "Wagner",
    "Colombo",
    "Becker",
    "Ricci",
    "Hoffmann",
    "Marino",
    "Koch",
    "Greco",
    "Richter",
    "Bruno",
]
COMPANIES = [
    "Schulz Bau GmbH",
    "Rossi Logistica S.r.l.",
    "Weber Maschinenbau AG",
    "Ferrari Imballaggi SpA",
    "Fischer & Co. KG",
    "Northwind Traders Ltd",
    "Contoso Ltd",
    "Fabrikam Inc.",
]
SUBJECTS = [
    "Angebot {n}",
    "Rechnung {n}",
    "Offerta {n}",
    "Ordine {n}",
    "Quote {n}",
    "Delivery note {n}",
    "Lieferung KW {w}",
    "Re: Termin {n}",
    "Conferma d'ordine {n}",
    "Invoice {n} overdue",
]


def generate(
    mailbox, mails=10000, events=2000, contacts=5000, folder="Inbox/Transfer In", seed=1, start=None
):
    """Fill a mailbox quickly with believable mails, events and contacts; returns counts.

    MIME is assembled from templates (no email package) so 10,000 mails take a
    fraction of a second; the store parses each one only when it is read.
    """
    rng = random.Random(seed)
    start = start or datetime.now(UTC)
    target = mailbox.ensure_folder_path(folder)
    own = mailbox.email
    for number in range(mails):
        first, last = rng.choice(FIRST_NAMES), rng.choice(LAST_NAMES)
        company = rng.choice(COMPANIES)
        domain = re.sub(r"[^a-z]", "", company.split()[0].lower()) + ".example"
        sender = "{}.{}@{}".format(first.lower(), re.sub(r"[^a-z]", "", last.lower()), domain)
        received = start - timedelta(minutes=number * 7 + rng.randint(0, 6))
        subject = rng.choice(SUBJECTS).format(n=rng.randint(10000, 99999), w=rng.randint(1, 52))
        body = (
            f"Guten Tag,\r\n\r\nanbei die Unterlagen zu {subject}.\r\n\r\n"
            f"Mit freundlichen Grüßen\r\n{first} {last}\r\n{company}\r\n"
        )
        boundary = f"=_gen_{seed}_{number}"
        parts = [
            f"--{boundary}\r\nContent-Type: text/plain; charset=utf-8\r\n"
            f"Content-Transfer-Encoding: 8bit\r\n\r\n{body}\r\n",
        ]
        if number % 10 == 0:
            payload = base64.b64encode((f"{subject} {company}\n").encode() * 4).decode()
            parts.append(
                f'--{boundary}\r\nContent-Type: application/pdf; name="{subject}.pdf"\r\n'
                f'Content-Disposition: attachment; filename="{subject}.pdf"\r\n'
                f"Content-Transfer-Encoding: base64\r\n\r\n{payload}\r\n"
            )
        mime = (
            f"Message-ID: <gen.{seed}.{number}.{mailbox.id[:8]}@{domain}>\r\n"
            f"Date: {email.utils.format_datetime(received)}\r\n"
            f'From: "{first} {last}" <{sender}>\r\nTo: "{mailbox.display_name}" <{own}>\r\n'
            f"Subject: {_encode_header(subject)}\r\nMIME-Version: 1.0\r\n"
            f'Content-Type: multipart/mixed; boundary="{boundary}"\r\n\r\n{"".join(parts)}--{boundary}--\r\n'
        ).encode()
        mailbox.add_message(target.id, mime, received=received, is_read=rng.random() < 0.6)
    for number in range(events):
        day = start + timedelta(days=rng.randint(-180, 180))
        begin = day.replace(hour=rng.randint(7, 16), minute=rng.choice((0, 30)), second=0, microsecond=0)
        fields = {
            "subject": f"Meeting {number}",
            "start": begin,
            "end": begin + timedelta(minutes=rng.choice((30, 60, 90))),
            "time_zone": "Europe/Berlin",
            "location": rng.choice(["Room 1", "Teams", "Milano", "München"]),
            "organizer": (mailbox.display_name, own),
        }
        if number % 20 == 0:
            fields["recurrence"] = {
                "type": "weekly",
                "days_of_week": [WEEKDAYS[begin.weekday() % 5]],
                "range_type": "numbered",
                "number_of_occurrences": rng.randint(3, 20),
            }
        mailbox.add_event(None, **fields)
    for number in range(contacts):
        first, last = rng.choice(FIRST_NAMES), rng.choice(LAST_NAMES)
        company = rng.choice(COMPANIES)
        mailbox.add_contact(
            None,
            given_name=first,
            surname=last,
            company_name=company,
            email_addresses=[
                (
                    f"{first} {last}",
                    f"{first.lower()}.{re.sub(r'[^a-z]', '', last.lower())}.{number}@contacts.example",
                )
            ],
            business_phones=[f"+49 30 {rng.randint(0, 9999999):07d}"],
        )
    return {"mails": mails, "events": events, "contacts": contacts}


def _encode_header(text):
    try:
        text.encode("ascii")
        return text
    except UnicodeEncodeError:
        return "=?utf-8?b?{}?=".format(base64.b64encode(text.encode("utf-8")).decode())


def timed_generate(mailbox, **kwargs):
    """generate() plus the seconds it took (the tests print it)."""
    began = time.perf_counter()
    counts = generate(mailbox, **kwargs)
    return counts, time.perf_counter() - began
