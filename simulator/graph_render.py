"""Microsoft Graph v1.0 JSON shapes of the store's objects.

Pure functions: store objects in, dicts shaped like Graph's answers out.
Property names follow the v1.0 CSDL (microsoft.graph.message, event, contact,
mailFolder, contactFolder, fileAttachment).
"""
import base64
import datetime
import email.parser
import email.policy
import hashlib
import html
import re
import urllib.parse
import zoneinfo

from . import store

try:  # tzlocal comes with exchangelib; the simulator must not need it
    from tzlocal.windows_tz import tz_win as _IANA_TO_WINDOWS
    from tzlocal.windows_tz import win_tz as _WINDOWS_TO_IANA
except ImportError:  # pragma: no cover
    _WINDOWS_TO_IANA = {
        "UTC": "UTC",
        "GMT Standard Time": "Europe/London",
        "W. Europe Standard Time": "Europe/Berlin",
        "Romance Standard Time": "Europe/Paris",
        "Central Europe Standard Time": "Europe/Budapest",
        "Eastern Standard Time": "America/New_York",
        "Central Standard Time": "America/Chicago",
        "Mountain Standard Time": "America/Denver",
        "Pacific Standard Time": "America/Los_Angeles",
    }
    _IANA_TO_WINDOWS = {v: k for k, v in _WINDOWS_TO_IANA.items()}

UTC = datetime.timezone.utc
NEVER = "0001-01-01T00:00:00Z"


# ---------------------------------------------------------------- time zones

def resolve_time_zone(name):
    """Return a tzinfo for a Windows or IANA zone name, or None if unknown."""
    if not name:
        return None
    if name.upper() in ("UTC", "ETC/UTC", "GMT", "COORDINATED UNIVERSAL TIME"):
        return UTC
    iana = _WINDOWS_TO_IANA.get(name, name)
    try:
        return zoneinfo.ZoneInfo(iana)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        return None


def windows_zone_name(name):
    """Graph reports event zones with Windows names ("Pacific Standard Time")."""
    if not name:
        return "UTC"
    if name in _WINDOWS_TO_IANA or name == "UTC":
        return name
    return _IANA_TO_WINDOWS.get(name, name)


def iso_utc(value):
    """Edm.DateTimeOffset as Graph writes it: 2018-02-13T03:53:55Z."""
    if value is None:
        return None
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def date_time_time_zone(value, tz, tz_label):
    """microsoft.graph.dateTimeTimeZone: local wall time with 7 fractional digits."""
    local = value.astimezone(tz)
    return {
        "dateTime": local.strftime("%Y-%m-%dT%H:%M:%S") + f".{local.microsecond * 10:07d}",
        "timeZone": tz_label,
    }


def parse_graph_datetime(text):
    """Parse the ISO datetimes clients send ($filter, startDateTime); naive means UTC."""
    text = text.strip().strip("'")
    if text.endswith("Z") or text.endswith("z"):
        text = text[:-1] + "+00:00"
    # Graph accepts 7 fractional digits; Python's fromisoformat wants at most 6
    text = re.sub(r"(\.\d{6})\d+", r"\1", text)
    value = datetime.datetime.fromisoformat(text)
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.astimezone(UTC)


# ---------------------------------------------------------------- small shapes

def _name_address(value):
    """Store addresses are (name, address) tuples or objects with name/address."""
    if value is None:
        return None, None
    if isinstance(value, (tuple, list)):
        return (value[0] if value else None), (value[1] if len(value) > 1 else None)
    if isinstance(value, str):
        return value, value
    return getattr(value, "name", None), getattr(value, "address", None)


def email_address(value):
    """microsoft.graph.emailAddress."""
    name, address = _name_address(value)
    return {"name": name or address or "", "address": address or ""}


def recipient(value):
    """microsoft.graph.recipient, or None when the store has no address."""
    name, address = _name_address(value)
    if not name and not address:
        return None
    return {"emailAddress": email_address(value)}


def recipients(values):
    return [r for r in (recipient(v) for v in (values or [])) if r]


def etag(change_key):
    return f'W/"{change_key}"'


def web_link(item_id, view="ReadMessageItem"):
    return "https://outlook.office365.com/owa/?ItemID={}&exvsurl=1&viewmodel={}".format(
        urllib.parse.quote(item_id, safe=""), view)


def html_to_text(markup):
    text = re.sub(r"(?is)<(script|style|head).*?</\1>", " ", markup or "")
    text = re.sub(r"(?i)<br\s*/?>|</p>|</div>", "\r\n", text)
    text = re.sub(r"<[^>]+>", "", text)
    return html.unescape(text)


def body_preview(text_or_html, is_html=False):
    text = html_to_text(text_or_html) if is_html else (text_or_html or "")
    return re.sub(r"[ \t]+", " ", text).strip()[:255]


def item_body(body_html, body_text, want_text=False):
    """microsoft.graph.itemBody; Outlook stores HTML and converts on request."""
    if want_text:
        return {"contentType": "text", "content": body_text or html_to_text(body_html).strip()}
    if body_html:
        return {"contentType": "html", "content": body_html}
    if body_text and not want_text:
        return {"contentType": "text", "content": body_text}
    return {"contentType": "text", "content": ""}


def physical_address(value):
    """microsoft.graph.physicalAddress; Graph sends {} when nothing is known."""
    if not value:
        return {}
    if isinstance(value, dict):
        get = value.get
    elif isinstance(value, (tuple, list)):
        fields = ("street", "city", "state", "postal_code", "country")
        mapping = dict(zip(fields, value, strict=False))
        get = mapping.get
    else:
        def get(key):
            return getattr(value, key, None)
    shape = {
        "street": get("street"),
        "city": get("city"),
        "state": get("state"),
        "countryOrRegion": get("country") or get("country_or_region") or get("countryOrRegion"),
        "postalCode": get("postal_code") or get("postalCode"),
    }
    return {k: v for k, v in shape.items() if v}


def physical_address_from_graph(value):
    """Graph physicalAddress → the store's dict (street, city, state, postal_code, country)."""
    if not value:
        return None
    return {
        "street": value.get("street"),
        "city": value.get("city"),
        "state": value.get("state"),
        "postal_code": value.get("postalCode"),
        "country": value.get("countryOrRegion"),
    }


# ---------------------------------------------------------------- folders

def mail_folder(folder, mailbox):
    children = mailbox.child_folders(folder.id)
    items = [i for i in mailbox.items_in(folder.id) if getattr(i, "kind", "message") == "message"]
    return {
        "id": folder.id,
        "displayName": folder.display_name,
        "parentFolderId": folder.parent_id,
        "childFolderCount": len(children),
        "unreadItemCount": sum(1 for i in items if not getattr(i, "is_read", False)),
        "totalItemCount": len(items),
        "isHidden": bool(getattr(folder, "is_hidden", False)),
    }


def contact_folder(folder):
    return {
        "id": folder.id,
        "displayName": folder.display_name,
        "parentFolderId": folder.parent_id,
    }


def calendar(folder, mailbox):
    return {
        "@odata.etag": etag(folder.change_key),
        "id": folder.id,
        "name": folder.display_name,
        "color": "auto",
        "hexColor": "",
        "isDefaultCalendar": getattr(folder, "well_known", None) == "calendar",
        "changeKey": folder.change_key,
        "canShare": True,
        "canViewPrivateItems": True,
        "canEdit": True,
        "isRemovable": getattr(folder, "well_known", None) != "calendar",
        "isTallyingResponses": True,
        "allowedOnlineMeetingProviders": ["teamsForBusiness"],
        "defaultOnlineMeetingProvider": "teamsForBusiness",
        "owner": {"name": mailbox.display_name, "address": mailbox.email},
    }


# ---------------------------------------------------------------- messages

def _mime_headers(mime):
    return email.parser.BytesHeaderParser(policy=email.policy.compat32).parsebytes(mime or b"")


def conversation_id(message, headers):
    """Stable per thread: the first References id, else In-Reply-To, else own id."""
    refs = (headers.get("References") or "").split()
    root = refs[0] if refs else (headers.get("In-Reply-To") or message.internet_message_id or message.id)
    digest = hashlib.sha256(str(root).strip().encode()).digest()[:24]
    return "AAQk" + base64.urlsafe_b64encode(digest).decode()


def message(msg, item_id, parent_folder_id, want_text_body=False):
    """microsoft.graph.message for a store Message (all default properties)."""
    headers = _mime_headers(msg.mime)
    is_html = bool(getattr(msg, "body_html", None))
    sender = recipient(getattr(msg, "sender", None))
    from_ = recipient(getattr(msg, "from_", None)) or sender
    importance = (getattr(msg, "importance", None) or "normal").lower()
    shape = {
        "@odata.etag": etag(msg.change_key),
        "id": item_id,
        "createdDateTime": iso_utc(msg.created),
        "lastModifiedDateTime": iso_utc(msg.last_modified),
        "changeKey": msg.change_key,
        "categories": list(getattr(msg, "categories", None) or []),
        "receivedDateTime": iso_utc(getattr(msg, "received", None) or msg.created),
        "sentDateTime": iso_utc(getattr(msg, "sent", None) or getattr(msg, "received", None)),
        "hasAttachments": bool(getattr(msg, "has_attachments", False)),
        "internetMessageId": getattr(msg, "internet_message_id", None),
        "subject": getattr(msg, "subject", None) or "",
        "bodyPreview": body_preview(msg.body_html if is_html else getattr(msg, "body_text", ""), is_html),
        "importance": importance,
        "parentFolderId": parent_folder_id,
        "conversationId": "AAQk" + msg.conversation_id,
        "conversationIndex": base64.b64encode(
            hashlib.sha1(str(headers.get("Message-ID") or msg.id).encode()).digest()[:22]).decode(),
        "isDeliveryReceiptRequested": False,
        "isReadReceiptRequested": False,
        "isRead": bool(getattr(msg, "is_read", False)),
        "isDraft": bool(getattr(msg, "is_draft", False)),
        "webLink": web_link(item_id),
        "inferenceClassification": "focused",
        "body": item_body(getattr(msg, "body_html", None), getattr(msg, "body_text", None), want_text_body),
        "sender": sender,
        "from": from_,
        "toRecipients": recipients(getattr(msg, "to", None)),
        "ccRecipients": recipients(getattr(msg, "cc", None)),
        "bccRecipients": recipients(getattr(msg, "bcc", None)),
        "replyTo": recipients(getattr(msg, "reply_to", None)),
        "flag": {"flagStatus": getattr(msg, "flag_status", None) or "notFlagged"},
    }
    return shape


MESSAGE_ON_SELECT_ONLY = ("uniqueBody", "internetMessageHeaders")


def message_select_only(msg, name, want_text_body=False):
    """Properties Graph returns only when $select names them."""
    if name == "uniqueBody":
        return item_body(getattr(msg, "body_html", None), getattr(msg, "body_text", None), want_text_body)
    if name == "internetMessageHeaders":
        headers = _mime_headers(msg.mime)
        return [{"name": k, "value": str(v)} for k, v in headers.items()]
    raise KeyError(name)


def file_attachment(attachment, last_modified):
    content = getattr(attachment, "content", b"") or b""
    return {
        "@odata.type": "#microsoft.graph.fileAttachment",
        "@odata.mediaContentType": attachment.content_type,
        "id": attachment.id,
        "lastModifiedDateTime": iso_utc(last_modified),
        "name": attachment.name,
        "contentType": attachment.content_type,
        "size": getattr(attachment, "size", None) or len(content),
        "isInline": bool(getattr(attachment, "is_inline", False)),
        "contentId": getattr(attachment, "content_id", None),
        "contentLocation": None,
        "contentBytes": base64.b64encode(content).decode(),
    }


# ---------------------------------------------------------------- contacts

def contact(item, item_id, parent_folder_id):
    """microsoft.graph.contact with every default property, as the docs example."""
    return {
        "@odata.etag": etag(item.change_key),
        "id": item_id,
        "createdDateTime": iso_utc(item.created),
        "lastModifiedDateTime": iso_utc(item.last_modified),
        "changeKey": item.change_key,
        "categories": list(getattr(item, "categories", None) or []),
        "parentFolderId": parent_folder_id,
        "birthday": None,
        "fileAs": getattr(item, "file_as", None) or "",
        "displayName": getattr(item, "display_name", None) or "",
        "givenName": getattr(item, "given_name", None),
        "initials": None,
        "middleName": None,
        "nickName": None,
        "surname": getattr(item, "surname", None),
        "title": None,
        "yomiGivenName": None,
        "yomiSurname": None,
        "yomiCompanyName": None,
        "generation": None,
        "imAddresses": [],
        "jobTitle": getattr(item, "job_title", None),
        "companyName": getattr(item, "company_name", None),
        "department": None,
        "officeLocation": None,
        "profession": None,
        "businessHomePage": getattr(item, "business_home_page", None) or None,
        "assistantName": None,
        "manager": None,
        "homePhones": list(getattr(item, "home_phones", None) or []),
        "mobilePhone": getattr(item, "mobile_phone", None),
        "businessPhones": list(getattr(item, "business_phones", None) or []),
        "spouseName": None,
        "personalNotes": getattr(item, "personal_notes", None) or "",
        "children": [],
        "emailAddresses": [email_address(a) for a in (getattr(item, "email_addresses", None) or [])],
        "homeAddress": physical_address(getattr(item, "home_address", None)),
        "businessAddress": physical_address(getattr(item, "business_address", None)),
        "otherAddress": {},
    }


CONTACT_FIELDS_FROM_GRAPH = {
    "givenName": "given_name",
    "surname": "surname",
    "displayName": "display_name",
    "companyName": "company_name",
    "jobTitle": "job_title",
    "businessPhones": "business_phones",
    "mobilePhone": "mobile_phone",
    "homePhones": "home_phones",
    "categories": "categories",
    "personalNotes": "personal_notes",
    "fileAs": "file_as",
    "businessHomePage": "business_home_page",
}


def contact_fields_from_graph(payload):
    """Graph contact JSON (POST/PATCH body) → keyword arguments for the store."""
    fields = {}
    for graph_name, store_name in CONTACT_FIELDS_FROM_GRAPH.items():
        if graph_name in payload:
            fields[store_name] = payload[graph_name]
    if "emailAddresses" in payload:
        fields["email_addresses"] = [
            (a.get("name") or a.get("address"), a.get("address"))
            for a in payload["emailAddresses"] or [] if a.get("address")]
    for graph_name, store_name in (("businessAddress", "business_address"), ("homeAddress", "home_address")):
        if graph_name in payload:
            fields[store_name] = physical_address_from_graph(payload[graph_name])
    extended = payload.get("singleValueExtendedProperties")
    if extended:
        fields["extended_properties"] = extended_properties_from_graph(extended)
    return fields


def extended_properties_from_graph(values):
    """``singleValueExtendedProperties`` of a POST/PATCH body → {key: value} (store.extended_property_key)."""
    found = {}
    for prop in values or []:
        key = store.parse_extended_property_id(prop.get("id"))
        if key is None:
            raise ValueError(f"Invalid extended property id {prop.get('id')!r}")
        found[key] = prop.get("value")
    return found


def expanded_extended_properties(item, wanted_ids):
    """The item's ``singleValueExtendedProperties`` among ``wanted_ids`` (Graph ids), as Graph lists them."""
    have = getattr(item, "extended_properties", None) or {}
    rows = []
    for wanted in wanted_ids:
        key = store.parse_extended_property_id(wanted)
        if key in have:
            rows.append({"id": wanted, "value": have[key]})
    return rows


#: Tagged MAPI properties a message answers when asked by ``$expand`` (PidTagMessageSize).
_MESSAGE_TAGS = {("integer", 0x0E08): lambda message: str(len(message.mime))}


def _property_tag(property_id):
    kind, _, tag = (property_id or "").strip().partition(" ")
    try:
        return kind.casefold(), int(tag.strip(), 16)
    except ValueError:
        return None


def message_extended_properties(message, wanted_ids):
    """The tagged ``singleValueExtendedProperties`` of a message among ``wanted_ids``.

    Exchange names a tagged property by its type and the tag in lower-case hex without leading
    zeros ("Integer 0xe08") and gives every value as a string.
    """
    rows = []
    for wanted in wanted_ids:
        tag = _property_tag(wanted)
        if tag in _MESSAGE_TAGS:
            rows.append({"id": f"{wanted.split()[0]} {hex(tag[1])}", "value": _MESSAGE_TAGS[tag](message)})
    return rows


# ---------------------------------------------------------------- events

_WEEKDAYS = ["monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday"]


def _date_text(value):
    if value is None:
        return "0001-01-01"
    if isinstance(value, datetime.datetime):
        value = value.date()
    return value.isoformat()


def patterned_recurrence(rec, tz_name):
    """microsoft.graph.patternedRecurrence from the store's Recurrence."""
    if rec is None:
        return None
    days = getattr(rec, "days_of_week", None) or []
    days = [_WEEKDAYS[d] if isinstance(d, int) else str(d).lower() for d in days]
    pattern_type = getattr(rec, "type", None) or "daily"
    range_type = getattr(rec, "range_type", None) or "noEnd"
    return {
        "pattern": {
            "type": pattern_type,
            "interval": getattr(rec, "interval", 1) or 1,
            "month": getattr(rec, "month", None) or 0,
            "dayOfMonth": getattr(rec, "day_of_month", None) or 0,
            "daysOfWeek": days,
            "firstDayOfWeek": (getattr(rec, "first_day_of_week", None) or "sunday").lower(),
            "index": getattr(rec, "index", None) or "first",
        },
        "range": {
            "type": range_type,
            "startDate": _date_text(getattr(rec, "start_date", None)),
            "endDate": _date_text(getattr(rec, "end_date", None)),
            "recurrenceTimeZone": windows_zone_name(getattr(rec, "recurrence_time_zone", None) or tz_name),
            "numberOfOccurrences": getattr(rec, "number_of_occurrences", None) or 0,
        },
    }


def _response_of_owner(event, mailbox_email):
    organizer_name, organizer_address = _name_address(getattr(event, "organizer", None))
    if not organizer_address or organizer_address.lower() == mailbox_email.lower():
        return "organizer", True
    own = getattr(event, "response_status", None)
    if own and own != "organizer":
        return own, False
    for attendee in getattr(event, "attendees", None) or []:
        if (getattr(attendee, "address", "") or "").lower() == mailbox_email.lower():
            return getattr(attendee, "response", None) or "none", False
    return "none", False


def attendee(value):
    return {
        "type": getattr(value, "type", None) or "required",
        "status": {"response": getattr(value, "response", None) or "none", "time": NEVER},
        "emailAddress": email_address(value),
    }


def location(value):
    if not value:
        return {"displayName": "", "locationType": "default", "uniqueIdType": "unknown",
                "address": {}, "coordinates": {}}
    name = value if isinstance(value, str) else getattr(value, "display_name", str(value))
    return {"displayName": name, "locationType": "default", "uniqueId": name,
            "uniqueIdType": "private", "address": {}, "coordinates": {}}


def _all_day_edge(value, out_label):
    """All-day events are floating dates: midnight, whatever zone the client asked for.

    The store keeps them as midnight UTC of their dates, whatever the event's own zone: read in
    that zone, a date west of UTC would come out one day early.
    """
    day = value.astimezone(UTC)
    return {"dateTime": day.strftime("%Y-%m-%dT00:00:00.0000000"), "timeZone": out_label}


def event(ev, item_id, mailbox_email, out_tz, out_tz_label, event_type="singleInstance",
          series_master_id=None, original_start=None, want_text_body=False):
    """microsoft.graph.event for a store Event or a calendar-view Occurrence."""
    tz_name = getattr(ev, "time_zone", None) or "UTC"
    response, is_organizer = _response_of_owner(ev, mailbox_email)
    body_html = getattr(ev, "body_html", None) or ""
    if getattr(ev, "is_all_day", False):
        start = _all_day_edge(ev.start, out_tz_label)
        end = _all_day_edge(ev.end, out_tz_label)
    else:
        start = date_time_time_zone(ev.start, out_tz, out_tz_label)
        end = date_time_time_zone(ev.end, out_tz, out_tz_label)
    loc = location(getattr(ev, "location", None))
    organizer = recipient(getattr(ev, "organizer", None)) or {
        "emailAddress": {"name": "", "address": mailbox_email}}
    shape = {
        "@odata.etag": etag(ev.change_key),
        "id": item_id,
        "createdDateTime": iso_utc(ev.created),
        "lastModifiedDateTime": iso_utc(ev.last_modified),
        "changeKey": ev.change_key,
        "categories": list(getattr(ev, "categories", None) or []),
        "transactionId": None,
        "originalStartTimeZone": windows_zone_name(tz_name),
        "originalEndTimeZone": windows_zone_name(tz_name),
        "iCalUId": getattr(ev, "ical_uid", None),
        "uid": None,
        "reminderMinutesBeforeStart": getattr(ev, "reminder_minutes", 15),
        "isReminderOn": bool(getattr(ev, "is_reminder_on", True)),
        "hasAttachments": False,
        "subject": getattr(ev, "subject", None) or "",
        "bodyPreview": body_preview(body_html, True),
        "importance": (getattr(ev, "importance", None) or "normal").lower(),
        "sensitivity": (getattr(ev, "sensitivity", None) or "normal").lower(),
        "isAllDay": bool(getattr(ev, "is_all_day", False)),
        "isCancelled": bool(getattr(ev, "is_cancelled", False)),
        "isOrganizer": is_organizer,
        "responseRequested": True,
        "seriesMasterId": series_master_id,
        "showAs": getattr(ev, "show_as", None) or "busy",
        "type": event_type,
        "webLink": web_link(item_id, "ReadCalendarItem"),
        "onlineMeetingUrl": getattr(ev, "online_meeting_url", None) or None,
        "isOnlineMeeting": bool(getattr(ev, "online_meeting_url", None)),
        "onlineMeetingProvider": "unknown",
        "allowNewTimeProposals": True,
        "isDraft": False,
        "hideAttendees": False,
        "responseStatus": {"response": response, "time": NEVER},
        "body": item_body(body_html, None, want_text_body),
        "start": start,
        "end": end,
        "location": loc,
        "locations": [loc] if loc.get("displayName") else [],
        "recurrence": patterned_recurrence(getattr(ev, "recurrence", None), tz_name)
        if event_type == "seriesMaster" else None,
        "attendees": [attendee(a) for a in getattr(ev, "attendees", None) or []],
        "organizer": organizer,
        "onlineMeeting": None,
    }
    del shape["uid"]  # beta-only property; keeps the v1.0 shape honest
    if event_type in ("occurrence", "exception") and original_start is not None:
        shape["originalStart"] = iso_utc(original_start)
    if event_type == "seriesMaster":
        cancelled = getattr(ev, "cancelled_occurrences", None) or set()
        shape["cancelledOccurrences"] = sorted(
            f"OID.{item_id}.{iso_utc(c)[:10]}" for c in cancelled)
    return shape


# ---------------------------------------------------------------- user

def user(mailbox):
    """microsoft.graph.user, the default property set."""
    given, _, surname = (mailbox.display_name or "").partition(" ")
    return {
        "businessPhones": [],
        "displayName": mailbox.display_name,
        "givenName": given or None,
        "jobTitle": None,
        "mail": mailbox.email,
        "mobilePhone": None,
        "officeLocation": None,
        "preferredLanguage": "en-US",
        "surname": surname or None,
        "userPrincipalName": getattr(mailbox, "username", None) if "@" in (
            getattr(mailbox, "username", None) or "") else mailbox.email,
        "id": mailbox.id,
    }
