"""Store objects (folders, messages, events, contacts) rendered as EWS ``types.xsd`` elements, and back.

A response shape is a set of requested field URIs (``item:Subject``, ``calendar:Start``...). Each renderer
returns only the requested properties it knows; unknown ones are skipped, as Exchange does for properties a
given item type does not have.
"""

import base64
import email
import email.policy
from datetime import date, datetime, timezone

from lxml import etree

from .ews_xml import element, ordered, sub, t
from .graph_render import resolve_time_zone, windows_zone_name
from .store import as_utc, extended_property_key, occurrence_id

# Element order of the complex types we emit (subsets of types.xsd sequences, in schema order).
# fmt: off
ITEM_ORDER = (
    "MimeContent", "ItemId", "ParentFolderId", "ItemClass", "Subject", "Sensitivity", "Body", "Attachments",
    "DateTimeReceived", "Size", "Categories", "Importance", "InReplyTo", "IsSubmitted", "IsDraft",
    "IsFromMe", "IsResend", "IsUnmodified", "InternetMessageHeaders", "DateTimeSent", "DateTimeCreated",
    "ReminderDueBy", "ReminderIsSet", "ReminderMinutesBeforeStart", "DisplayCc", "DisplayTo", "DisplayBcc",
    "HasAttachments", "Culture", "LastModifiedName", "LastModifiedTime", "IsAssociated", "ConversationId",
    "UniqueBody", "Preview", "TextBody",
)

MESSAGE_ORDER = ITEM_ORDER + (
    "Sender", "ToRecipients", "CcRecipients", "BccRecipients", "IsReadReceiptRequested",
    "IsDeliveryReceiptRequested", "ConversationIndex", "ConversationTopic", "From", "InternetMessageId",
    "IsRead", "IsResponseRequested", "References", "ReplyTo",
)

CALENDAR_ORDER = ITEM_ORDER + (
    "UID", "RecurrenceId", "DateTimeStamp", "Start", "End", "OriginalStart", "IsAllDayEvent",
    "LegacyFreeBusyStatus", "Location", "When", "IsMeeting", "IsCancelled", "IsRecurring",
    "MeetingRequestWasSent", "IsResponseRequested", "CalendarItemType", "MyResponseType", "Organizer",
    "RequiredAttendees", "OptionalAttendees", "Resources", "ConflictingMeetingCount", "AdjacentMeetingCount",
    "Duration", "TimeZone", "AppointmentReplyTime", "AppointmentSequenceNumber", "AppointmentState",
    "Recurrence", "FirstOccurrence", "LastOccurrence", "ModifiedOccurrences", "DeletedOccurrences",
    "MeetingTimeZone", "StartTimeZone", "EndTimeZone", "ConferenceType", "AllowNewTimeProposal",
    "IsOnlineMeeting", "MeetingWorkspaceUrl", "NetShowUrl", "JoinOnlineMeetingUrl",
)

CONTACT_ORDER = ITEM_ORDER + (
    "FileAs", "FileAsMapping", "DisplayName", "GivenName", "Initials", "MiddleName", "Nickname",
    "CompleteName", "CompanyName", "EmailAddresses", "PhysicalAddresses", "PhoneNumbers", "AssistantName",
    "Birthday", "BusinessHomePage", "Children", "Companies", "ContactSource", "Department", "Generation",
    "ImAddresses", "JobTitle", "Manager", "Mileage", "OfficeLocation", "PostalAddressIndex", "Profession",
    "SpouseName", "Surname", "WeddingAnniversary", "HasPicture",
)

FOLDER_ORDER = (
    "FolderId", "ParentFolderId", "FolderClass", "DisplayName", "TotalCount", "ChildFolderCount",
    "EffectiveRights", "DistinguishedFolderId", "UnreadCount",
)

ATTACHMENT_ORDER = (
    "AttachmentId", "Name", "ContentType", "ContentId", "ContentLocation", "Size", "LastModifiedTime",
    "IsInline", "IsContactPhoto", "Content",
)
# fmt: on

# Graph-style well-known names (store) ↔ EWS DistinguishedFolderId values; most are spelled alike.
DISTINGUISHED_TO_STORE = {
    "msgfolderroot": "msgfolderroot",
    "root": "root",
    "inbox": "inbox",
    "sentitems": "sentitems",
    "deleteditems": "deleteditems",
    "drafts": "drafts",
    "outbox": "outbox",
    "junkemail": "junkemail",
    "calendar": "calendar",
    "contacts": "contacts",
}

# Base shape "Default" / "AllProperties" per item kind (MimeContent only when asked, as Exchange does).
DEFAULT_ITEM_FIELDS = {
    "item:ParentFolderId",
    "item:ItemClass",
    "item:Subject",
    "item:Sensitivity",
    "item:Body",
    "item:Attachments",
    "item:DateTimeReceived",
    "item:Size",
    "item:Categories",
    "item:Importance",
    "item:DateTimeSent",
    "item:DateTimeCreated",
    "item:DisplayCc",
    "item:DisplayTo",
    "item:HasAttachments",
    "item:LastModifiedTime",
    "message:Sender",
    "message:ToRecipients",
    "message:CcRecipients",
    "message:From",
    "message:InternetMessageId",
    "message:IsRead",
    "calendar:UID",
    "calendar:Start",
    "calendar:End",
    "calendar:IsAllDayEvent",
    "calendar:LegacyFreeBusyStatus",
    "calendar:Location",
    "calendar:IsCancelled",
    "calendar:IsRecurring",
    "calendar:CalendarItemType",
    "calendar:MyResponseType",
    "calendar:Organizer",
    "calendar:RequiredAttendees",
    "calendar:OptionalAttendees",
    "calendar:Resources",
    "calendar:Recurrence",
    "calendar:OriginalStart",
    "contacts:FileAs",
    "contacts:DisplayName",
    "contacts:GivenName",
    "contacts:CompanyName",
    "contacts:EmailAddresses",
    "contacts:PhysicalAddresses",
    "contacts:PhoneNumbers",
    "contacts:JobTitle",
    "contacts:Surname",
}
DEFAULT_FOLDER_FIELDS = {
    "folder:ParentFolderId",
    "folder:FolderClass",
    "folder:DisplayName",
    "folder:TotalCount",
    "folder:ChildFolderCount",
    "folder:UnreadCount",
}

SENSITIVITY = {
    "normal": "Normal",
    "personal": "Personal",
    "private": "Private",
    "confidential": "Confidential",
}
IMPORTANCE = {"low": "Low", "normal": "Normal", "high": "High"}
FREE_BUSY = {
    "free": "Free",
    "tentative": "Tentative",
    "busy": "Busy",
    "oof": "OOF",
    "workingelsewhere": "WorkingElsewhere",
    "unknown": "NoData",
}
RESPONSE_TYPE = {
    "none": "Unknown",
    "organizer": "Organizer",
    "tentativelyaccepted": "Tentative",
    "accepted": "Accept",
    "declined": "Decline",
    "notresponded": "NoResponseReceived",
}
RESPONSE_TYPE_BACK = {v: k for k, v in RESPONSE_TYPE.items()}
OCCURRENCE_TYPE = {
    "singleInstance": "Single",
    "occurrence": "Occurrence",
    "exception": "Exception",
    "seriesMaster": "RecurringMaster",
}
WEEKDAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")
MONTHS = (
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
)
WEEK_INDEX = ("First", "Second", "Third", "Fourth", "Last")
PHONE_KEYS = {
    "business_phones": ("BusinessPhone", "BusinessPhone2"),
    "home_phones": ("HomePhone", "HomePhone2"),
    "mobile_phone": ("MobilePhone",),
}
ADDRESS_KEYS = {"business_address": "Business", "home_address": "Home"}
ADDRESS_PARTS = (
    ("Street", "street"),
    ("City", "city"),
    ("State", "state"),
    ("CountryOrRegion", "country"),
    ("PostalCode", "postal_code"),
)


# An IndexedFieldURI asks for some entries of a dictionary property (contacts:EmailAddress with
# FieldIndex="EmailAddress1" is one entry of contacts:EmailAddresses).
INDEXED_PARENTS = {
    "contacts:EmailAddress": "contacts:EmailAddresses",
    "contacts:PhoneNumber": "contacts:PhoneNumbers",
    **{f"contacts:PhysicalAddress:{tag}": "contacts:PhysicalAddresses" for tag, _part in ADDRESS_PARTS},
}


class Shape:
    """What a request's ItemShape/FolderShape asks for: base shape, extra field URIs, body type."""

    def __init__(self, shape_elem, default_fields):
        self.base = "IdOnly"
        self.fields = set()
        self.indexed = set()
        self.extended = []  # (key, ExtendedFieldURI element) of the named properties asked for
        self.body_type = "Best"
        if shape_elem is None:
            return
        base = shape_elem.find(t("BaseShape"))
        self.base = base.text.strip() if base is not None and base.text else "IdOnly"
        body_type = shape_elem.find(t("BodyType"))
        if body_type is not None and body_type.text:
            self.body_type = body_type.text.strip()
        if self.base in ("Default", "AllProperties"):
            self.fields |= default_fields
        extra = shape_elem.find(t("AdditionalProperties"))
        if extra is not None:
            for path in extra:
                uri = path.get("FieldURI")
                if etree.QName(path).localname == "ExtendedFieldURI":
                    key = extended_field_key(path)
                    if key:
                        self.extended.append((key, path))
                elif uri and etree.QName(path).localname == "IndexedFieldURI":
                    self.indexed.add((uri, path.get("FieldIndex")))
                    self.fields.add(uri)
                elif uri:
                    self.fields.add(uri)

    def wants(self, uri):
        """Whether ``uri`` (e.g. ``item:Subject``) belongs in the response, whole or some entries."""
        return uri in self.fields or any(INDEXED_PARENTS.get(u) == uri for u, _index in self.indexed)

    def entries(self, uri):
        """Entries asked of the dictionary property ``uri``: None for all of them, else a set of
        (indexed field URI, FieldIndex), e.g. ("contacts:PhysicalAddress:City", "Business")."""
        if uri in self.fields:
            return None
        return {(u, index) for u, index in self.indexed if INDEXED_PARENTS.get(u) == uri}


def item_id_element(item, tag="ItemId"):
    """``t:ItemId`` (or another ItemIdType element) for a store item."""
    return element(t(tag), Id=item.id, ChangeKey=item.change_key)


def folder_id_element(folder, tag="FolderId"):
    """``t:FolderId`` for a store folder."""
    return element(t(tag), Id=folder.id, ChangeKey=getattr(folder, "change_key", None) or "AQAAAA==")


def mailbox_element(tag, name, address):
    """An EmailAddressType element (``t:Mailbox`` and friends)."""
    elem = element(t(tag))
    if name:
        sub(elem, t("Name"), name)
    if address:
        sub(elem, t("EmailAddress"), address)
        sub(elem, t("RoutingType"), "SMTP")
        sub(elem, t("MailboxType"), "Mailbox")
    return elem


def _pair(value):
    """(name, address) from a tuple, a dataclass with name/address, or None."""
    if value is None:
        return None, None
    if isinstance(value, (tuple, list)):
        return (value[0] if len(value) > 0 else None), (value[1] if len(value) > 1 else None)
    return getattr(value, "name", None), getattr(value, "address", None)


def _single_mailbox(tag, value):
    name, address = _pair(value)
    if not (name or address):
        return None
    wrapper = element(t(tag))
    wrapper.append(mailbox_element("Mailbox", name, address))
    return wrapper


def _recipients(tag, values):
    values = list(values or [])
    if not values:
        return None
    wrapper = element(t(tag))
    for value in values:
        wrapper.append(mailbox_element("Mailbox", *_pair(value)))
    return wrapper


def _display(values):
    return "; ".join((_pair(v)[0] or _pair(v)[1] or "") for v in values or [])


def _text(tag, value):
    if value is None or value == "":
        return None
    return element(t(tag), value)


def _body(tag, html, text, body_type):
    if body_type == "Text" or (body_type == "Best" and not html):
        content = text if text is not None else _html_to_text(html or "")
        return element(t(tag), content, BodyType="Text")
    content = html if html else _text_to_html(text or "")
    return element(t(tag), content, BodyType="HTML")


def _html_to_text(html):
    # Good enough for a simulator: strip tags; Exchange's converter is far richer.
    import re
    from html import unescape

    return unescape(re.sub(r"<[^>]+>", "", html)).strip()


def _text_to_html(text):
    from html import escape

    return "<html><body>" + escape(text).replace("\n", "<br>") + "</body></html>" if text else ""


def _categories(values):
    values = list(values or [])
    if not values:
        return None
    elem = element(t("Categories"))
    for value in values:
        sub(elem, t("String"), value)
    return elem


def attachment_element(item, attachment, include_content=False):
    """``t:FileAttachment`` for a message attachment; content only for GetAttachment."""
    elem = element(t("FileAttachment"))
    children = [
        element(t("AttachmentId"), Id=attachment_id(item, attachment)),
        element(t("Name"), attachment.name or "attachment"),
        element(t("ContentType"), attachment.content_type or "application/octet-stream"),
        element(
            t("Size"), attachment.size if attachment.size is not None else len(attachment.content or b"")
        ),
        element(t("IsInline"), bool(getattr(attachment, "is_inline", False))),
    ]
    if getattr(attachment, "content_id", None):
        children.append(element(t("ContentId"), attachment.content_id))
    if getattr(item, "last_modified", None):
        children.append(element(t("LastModifiedTime"), item.last_modified))
    if include_content:
        children.append(element(t("Content"), base64.b64encode(attachment.content or b"").decode("ascii")))
    return ordered(elem, children, ATTACHMENT_ORDER)


def attachment_id(item, attachment):
    """An AttachmentId that names the item and the attachment, so GetAttachment needs no other index."""
    raw = f"{item.immutable_id}\x00{attachment.id}".encode()
    return base64.urlsafe_b64encode(raw).decode("ascii")


def parse_attachment_id(value):
    """(item immutable id, attachment id) from ``attachment_id``; ValueError if malformed."""
    raw = base64.urlsafe_b64decode(value.encode("ascii") + b"==").decode()
    item_id, sep, att_id = raw.partition("\x00")
    if not sep:
        raise ValueError(value)
    return item_id, att_id


def _common_item_fields(item, shape, folder, item_class):
    """Fields of ItemType shared by all item kinds: [(uri, element-or-None)]."""
    created = getattr(item, "created", None)
    fields = [
        (
            "item:ParentFolderId",
            lambda: folder_id_element(folder, "ParentFolderId") if folder is not None else None,
        ),
        ("item:ItemClass", lambda: element(t("ItemClass"), item_class)),
        ("item:DateTimeCreated", lambda: element(t("DateTimeCreated"), created) if created else None),
        (
            "item:LastModifiedTime",
            lambda: (
                element(t("LastModifiedTime"), item.last_modified)
                if getattr(item, "last_modified", None)
                else None
            ),
        ),
        ("item:Categories", lambda: _categories(getattr(item, "categories", None))),
        (
            "item:Importance",
            lambda: element(
                t("Importance"),
                IMPORTANCE.get(str(getattr(item, "importance", None) or "normal").lower(), "Normal"),
            ),
        ),
        (
            "item:Sensitivity",
            lambda: element(
                t("Sensitivity"),
                SENSITIVITY.get(str(getattr(item, "sensitivity", None) or "normal").lower(), "Normal"),
            ),
        ),
        ("item:IsAssociated", lambda: element(t("IsAssociated"), False)),
        # Calendar items carry their reminder (messages have none set); as Exchange does, the minutes
        # are kept whether the reminder is on or not.
        (
            "item:ReminderIsSet",
            lambda: element(t("ReminderIsSet"), bool(getattr(item, "is_reminder_on", False))),
        ),
        (
            "item:ReminderMinutesBeforeStart",
            lambda: (
                element(t("ReminderMinutesBeforeStart"), int(item.reminder_minutes))
                if getattr(item, "reminder_minutes", None) is not None
                else None
            ),
        ),
        ("item:Culture", lambda: element(t("Culture"), "en-US")),
    ]
    return fields


def message_element(item, shape, folder):
    """``t:Message`` with the requested properties."""
    mime = item.mime or b""

    def attachments():
        return list(getattr(item, "attachments", None) or [])

    fields = _common_item_fields(item, shape, folder, "IPM.Note")
    fields += [
        (
            "item:MimeContent",
            lambda: element(t("MimeContent"), base64.b64encode(mime).decode("ascii"), CharacterSet="UTF-8"),
        ),
        ("item:Subject", lambda: _text("Subject", item.subject)),
        (
            "item:Body",
            lambda: _body(
                "Body", getattr(item, "body_html", None), getattr(item, "body_text", None), shape.body_type
            ),
        ),
        (
            "item:TextBody",
            lambda: _body(
                "TextBody",
                None,
                getattr(item, "body_text", None) or _html_to_text(getattr(item, "body_html", None) or ""),
                "Text",
            ),
        ),
        ("item:Attachments", lambda: _attachments(item, attachments())),
        (
            "item:DateTimeReceived",
            lambda: element(t("DateTimeReceived"), item.received) if item.received else None,
        ),
        (
            "item:DateTimeSent",
            lambda: element(t("DateTimeSent"), item.sent) if getattr(item, "sent", None) else None,
        ),
        ("item:Size", lambda: element(t("Size"), len(mime))),
        ("item:DisplayTo", lambda: element(t("DisplayTo"), _display(item.to))),
        ("item:DisplayCc", lambda: element(t("DisplayCc"), _display(item.cc))),
        ("item:HasAttachments", lambda: element(t("HasAttachments"), bool(attachments()))),
        ("item:IsDraft", lambda: element(t("IsDraft"), False)),
        ("item:IsSubmitted", lambda: element(t("IsSubmitted"), False)),
        ("item:IsFromMe", lambda: element(t("IsFromMe"), False)),
        ("item:IsResend", lambda: element(t("IsResend"), False)),
        ("item:IsUnmodified", lambda: element(t("IsUnmodified"), True)),
        ("item:InternetMessageHeaders", lambda: _headers(mime)),
        ("message:Sender", lambda: _single_mailbox("Sender", getattr(item, "sender", None))),
        (
            "message:From",
            lambda: _single_mailbox("From", getattr(item, "from_", None) or getattr(item, "sender", None)),
        ),
        ("message:ToRecipients", lambda: _recipients("ToRecipients", item.to)),
        ("message:CcRecipients", lambda: _recipients("CcRecipients", item.cc)),
        ("message:BccRecipients", lambda: _recipients("BccRecipients", getattr(item, "bcc", None))),
        (
            "message:InternetMessageId",
            lambda: _text("InternetMessageId", getattr(item, "internet_message_id", None)),
        ),
        ("message:IsRead", lambda: element(t("IsRead"), bool(getattr(item, "is_read", False)))),
        ("message:ConversationTopic", lambda: _text("ConversationTopic", item.subject)),
        ("message:IsReadReceiptRequested", lambda: element(t("IsReadReceiptRequested"), False)),
        ("message:IsDeliveryReceiptRequested", lambda: element(t("IsDeliveryReceiptRequested"), False)),
        ("message:IsResponseRequested", lambda: element(t("IsResponseRequested"), False)),
    ]
    return _assemble("Message", item, shape, fields, MESSAGE_ORDER)


def _attachments(item, attachments):
    if not attachments:
        return None
    wrapper = element(t("Attachments"))
    for attachment in attachments:
        wrapper.append(attachment_element(item, attachment))
    return wrapper


def _headers(mime):
    if not mime:
        return None
    parsed = email.message_from_bytes(mime, policy=email.policy.compat32)
    if not parsed.items():
        return None
    wrapper = element(t("InternetMessageHeaders"))
    for name, value in parsed.items():
        sub(
            wrapper,
            t("InternetMessageHeader"),
            str(value).replace("\r", "").replace("\n", " "),
            HeaderName=name,
        )
    return wrapper


def _assemble(tag, item, shape, fields, order, item_id=None):
    elem = element(t(tag))
    children = [item_id if item_id is not None else item_id_element(item)]
    # Values are built lazily: IdOnly listings of thousands of messages must not parse their MIME.
    for uri, build in fields:
        if shape.wants(uri):
            child = build()
            if child is not None:
                children.append(child)
    return ordered(elem, children, order)


def _windows_zone(name):
    # Exchange names zones by their Windows ids, which exchangelib maps; "UTC" stands in for the unknown.
    name = windows_zone_name(name)
    return name if name and "/" not in name else "UTC"


def _all_day_edge(value, zone):
    """An all-day edge as Exchange keeps it: midnight of its date in the event's zone (``StartTimeZone``).

    The store keeps all-day events as midnight UTC of their dates; a client finds the dates again by
    reading the instant in the zone the item names.
    """
    day = as_utc(value).date()
    return datetime(day.year, day.month, day.day, tzinfo=resolve_time_zone(zone) or timezone.utc)


def calendar_item_element(occurrence, shape, folder, master=None):
    """``t:CalendarItem`` for an event or one expanded occurrence (``master`` = its series master, if any)."""
    source = occurrence
    occ_type = getattr(occurrence, "type", None) or (
        "seriesMaster" if getattr(source, "recurrence", None) else "singleInstance"
    )
    is_master = occ_type == "seriesMaster"
    recurrence = getattr(master or source, "recurrence", None)
    start, end = source.start, source.end
    zone = _windows_zone(getattr(source, "time_zone", None))
    if getattr(source, "is_all_day", False):
        start, end = _all_day_edge(start, zone), _all_day_edge(end, zone)
    organizer = getattr(source, "organizer", None)
    attendees = list(getattr(source, "attendees", None) or [])
    fields = _common_item_fields(source, shape, folder, "IPM.Appointment")
    fields += [
        ("item:Subject", lambda: _text("Subject", source.subject)),
        (
            "item:Body",
            lambda: (
                _body("Body", getattr(source, "body_html", None), None, shape.body_type)
                if getattr(source, "body_html", None)
                else None
            ),
        ),
        ("item:HasAttachments", lambda: element(t("HasAttachments"), False)),
        (
            "item:DateTimeReceived",
            lambda: (
                element(t("DateTimeReceived"), source.created) if getattr(source, "created", None) else None
            ),
        ),
        ("item:DisplayTo", lambda: element(t("DisplayTo"), _display(_attendee_pairs(attendees, "required")))),
        ("item:DisplayCc", lambda: element(t("DisplayCc"), _display(_attendee_pairs(attendees, "optional")))),
        ("calendar:UID", lambda: _text("UID", getattr(source, "ical_uid", None))),
        ("calendar:Start", lambda: element(t("Start"), start)),
        ("calendar:End", lambda: element(t("End"), end)),
        (
            "calendar:OriginalStart",
            lambda: (
                element(t("OriginalStart"), occurrence.original_start)
                if occ_type in ("occurrence", "exception") and getattr(occurrence, "original_start", None)
                else None
            ),
        ),
        (
            "calendar:IsAllDayEvent",
            lambda: element(t("IsAllDayEvent"), bool(getattr(source, "is_all_day", False))),
        ),
        (
            "calendar:LegacyFreeBusyStatus",
            lambda: element(
                t("LegacyFreeBusyStatus"),
                FREE_BUSY.get(str(getattr(source, "show_as", None) or "busy").lower(), "Busy"),
            ),
        ),
        ("calendar:Location", lambda: _text("Location", getattr(source, "location", None))),
        ("calendar:IsMeeting", lambda: element(t("IsMeeting"), bool(attendees))),
        (
            "calendar:IsCancelled",
            lambda: element(t("IsCancelled"), bool(getattr(source, "is_cancelled", False))),
        ),
        ("calendar:IsRecurring", lambda: element(t("IsRecurring"), occ_type in ("occurrence", "exception"))),
        ("calendar:MeetingRequestWasSent", lambda: element(t("MeetingRequestWasSent"), bool(attendees))),
        ("calendar:IsResponseRequested", lambda: element(t("IsResponseRequested"), bool(attendees))),
        (
            "calendar:CalendarItemType",
            lambda: element(t("CalendarItemType"), OCCURRENCE_TYPE.get(occ_type, "Single")),
        ),
        ("calendar:MyResponseType", lambda: element(t("MyResponseType"), "Organizer")),
        ("calendar:Organizer", lambda: _single_mailbox("Organizer", organizer)),
        ("calendar:RequiredAttendees", lambda: _attendees("RequiredAttendees", attendees, "required")),
        ("calendar:OptionalAttendees", lambda: _attendees("OptionalAttendees", attendees, "optional")),
        ("calendar:Resources", lambda: _attendees("Resources", attendees, "resource")),
        ("calendar:Duration", lambda: element(t("Duration"), _duration(end - start))),
        ("calendar:TimeZone", lambda: element(t("TimeZone"), zone)),
        ("calendar:AppointmentSequenceNumber", lambda: element(t("AppointmentSequenceNumber"), 0)),
        ("calendar:AppointmentState", lambda: element(t("AppointmentState"), 1 if attendees else 0)),
        ("calendar:Recurrence", lambda: recurrence_element(recurrence) if is_master and recurrence else None),
        ("calendar:ModifiedOccurrences", lambda: _modified_occurrences(source) if is_master else None),
        ("calendar:DeletedOccurrences", lambda: _deleted_occurrences(source) if is_master else None),
        ("calendar:StartTimeZone", lambda: element(t("StartTimeZone"), Id=zone)),
        ("calendar:EndTimeZone", lambda: element(t("EndTimeZone"), Id=zone)),
        ("calendar:ConferenceType", lambda: element(t("ConferenceType"), 0)),
        ("calendar:AllowNewTimeProposal", lambda: element(t("AllowNewTimeProposal"), True)),
        (
            "calendar:IsOnlineMeeting",
            lambda: element(t("IsOnlineMeeting"), bool(getattr(source, "online_meeting_url", None))),
        ),
        # Exchange 2013 and later (types.xsd CalendarItemType): the meeting's join link.
        (
            "calendar:JoinOnlineMeetingUrl",
            lambda: _text("JoinOnlineMeetingUrl", getattr(source, "online_meeting_url", None)),
        ),
    ]
    return _assemble(
        "CalendarItem",
        source,
        shape,
        fields,
        CALENDAR_ORDER,
        item_id=element(t("ItemId"), Id=occurrence.id, ChangeKey=_change_key(occurrence, master)),
    )


def _change_key(occurrence, master):
    return getattr(occurrence, "change_key", None) or getattr(master, "change_key", None) or "AQAAAA=="


def _attendee_pairs(attendees, kind):
    return [(a.name, a.address) for a in attendees if (getattr(a, "type", "required") or "required") == kind]


def _attendees(tag, attendees, kind):
    chosen = [a for a in attendees if (getattr(a, "type", "required") or "required") == kind]
    if not chosen:
        return None
    wrapper = element(t(tag))
    for attendee in chosen:
        entry = sub(wrapper, t("Attendee"))
        entry.append(mailbox_element("Mailbox", attendee.name, attendee.address))
        sub(
            entry,
            t("ResponseType"),
            RESPONSE_TYPE.get(str(getattr(attendee, "response", "none")).lower(), "Unknown"),
        )
    return wrapper


def _duration(delta):
    seconds = int(delta.total_seconds())
    days, rest = divmod(max(seconds, 0), 86400)
    hours, rest = divmod(rest, 3600)
    minutes, seconds = divmod(rest, 60)
    return f"P{days}DT{hours}H{minutes}M{seconds}S"


def _modified_occurrences(event):
    """``t:ModifiedOccurrences`` of a series master: each exception's id, start, end and original start."""
    cancelled = {as_utc(value) for value in getattr(event, "cancelled_occurrences", None) or []}
    exceptions = {as_utc(original): overrides for original, overrides in (event.exceptions or {}).items()}
    wrapper = element(t("ModifiedOccurrences"))
    for original in sorted(set(exceptions) - cancelled):
        overrides = exceptions[original]
        start = as_utc(overrides.get("start", original))
        end = as_utc(overrides.get("end", start + (event.end - event.start)))
        entry = sub(wrapper, t("Occurrence"))
        sub(entry, t("ItemId"), Id=occurrence_id(event, original), ChangeKey=event.change_key)
        sub(entry, t("Start"), start)
        sub(entry, t("End"), end)
        sub(entry, t("OriginalStart"), original)
    return wrapper if len(wrapper) else None


def _deleted_occurrences(event):
    cancelled = sorted(getattr(event, "cancelled_occurrences", None) or [])
    if not cancelled:
        return None
    wrapper = element(t("DeletedOccurrences"))
    for start in cancelled:
        sub(sub(wrapper, t("DeletedOccurrence")), t("Start"), start)
    return wrapper


def _as_date(value):
    if isinstance(value, datetime):
        return value.date()
    if isinstance(value, str):
        return date.fromisoformat(value[:10])
    return value


def recurrence_element(recurrence):
    """``t:Recurrence``: one pattern element then one range element (types.xsd RecurrenceType)."""
    elem = element(t("Recurrence"))
    kind = (
        recurrence.pattern_type
        if hasattr(recurrence, "pattern_type")
        else getattr(recurrence, "type", "daily")
    )
    interval = getattr(recurrence, "interval", 1) or 1
    days = " ".join(_weekday_name(d) for d in (getattr(recurrence, "days_of_week", None) or []))
    start_date = _as_date(recurrence.start_date)
    if kind == "daily":
        pattern = sub(elem, t("DailyRecurrence"))
        sub(pattern, t("Interval"), interval)
    elif kind == "weekly":
        pattern = sub(elem, t("WeeklyRecurrence"))
        sub(pattern, t("Interval"), interval)
        sub(pattern, t("DaysOfWeek"), days or WEEKDAYS[start_date.weekday()])
        sub(
            pattern,
            t("FirstDayOfWeek"),
            _weekday_name(getattr(recurrence, "first_day_of_week", None) or "sunday"),
        )
    elif kind == "absoluteMonthly":
        pattern = sub(elem, t("AbsoluteMonthlyRecurrence"))
        sub(pattern, t("Interval"), interval)
        sub(pattern, t("DayOfMonth"), getattr(recurrence, "day_of_month", None) or start_date.day)
    elif kind == "relativeMonthly":
        pattern = sub(elem, t("RelativeMonthlyRecurrence"))
        sub(pattern, t("Interval"), interval)
        sub(pattern, t("DaysOfWeek"), days or WEEKDAYS[start_date.weekday()])
        sub(pattern, t("DayOfWeekIndex"), _week_index(recurrence, start_date))
    elif kind == "absoluteYearly":
        pattern = sub(elem, t("AbsoluteYearlyRecurrence"))
        sub(pattern, t("DayOfMonth"), getattr(recurrence, "day_of_month", None) or start_date.day)
        sub(pattern, t("Month"), MONTHS[(getattr(recurrence, "month", None) or start_date.month) - 1])
    else:  # relativeYearly
        pattern = sub(elem, t("RelativeYearlyRecurrence"))
        sub(pattern, t("DaysOfWeek"), days or WEEKDAYS[start_date.weekday()])
        sub(pattern, t("DayOfWeekIndex"), _week_index(recurrence, start_date))
        sub(pattern, t("Month"), MONTHS[(getattr(recurrence, "month", None) or start_date.month) - 1])
    range_type = getattr(recurrence, "range_type", None) or "noEnd"
    if range_type == "endDate" and getattr(recurrence, "end_date", None):
        rng = sub(elem, t("EndDateRecurrence"))
        sub(rng, t("StartDate"), start_date.isoformat())
        sub(rng, t("EndDate"), _as_date(recurrence.end_date).isoformat())
    elif range_type == "numbered" and getattr(recurrence, "number_of_occurrences", None):
        rng = sub(elem, t("NumberedRecurrence"))
        sub(rng, t("StartDate"), start_date.isoformat())
        sub(rng, t("NumberOfOccurrences"), recurrence.number_of_occurrences)
    else:
        rng = sub(elem, t("NoEndRecurrence"))
        sub(rng, t("StartDate"), start_date.isoformat())
    return elem


def _weekday_name(value):
    if isinstance(value, int):
        return WEEKDAYS[value % 7]
    return str(value)[:1].upper() + str(value)[1:].lower()


def _week_index(recurrence, start_date):
    index = getattr(recurrence, "index", None) or getattr(recurrence, "week_index", None)
    if isinstance(index, str) and index.capitalize() in WEEK_INDEX:
        return index.capitalize()
    return WEEK_INDEX[min((start_date.day - 1) // 7, 4)]


def extended_field_key(uri_elem):
    """The store key of an ``ExtendedFieldURI`` naming a property by set id and name (None otherwise)."""
    set_id = uri_elem.get("PropertySetId") or uri_elem.get("DistinguishedPropertySetId")
    name = uri_elem.get("PropertyName")
    if not set_id or not name:
        return None
    return extended_property_key(uri_elem.get("PropertyType") or "String", set_id, name)


def _extended_elements(item, shape):
    have = getattr(item, "extended_properties", None) or {}
    found = []
    for key, uri_elem in shape.extended:
        if key in have:
            prop = element(t("ExtendedProperty"))
            prop.append(element(t("ExtendedFieldURI"), **dict(uri_elem.attrib)))
            sub(prop, t("Value"), have[key])
            found.append(prop)
    return found


#: A contact's elements in schema order, named properties where ItemType puts them.
CONTACT_ORDER_EXTENDED = ITEM_ORDER[: ITEM_ORDER.index("Culture")] + ("ExtendedProperty",) + CONTACT_ORDER[
    ITEM_ORDER.index("Culture"):]


def contact_element(item, shape, folder):
    """``t:Contact`` with the requested properties (phones, addresses and e-mails as indexed entries)."""
    fields = _common_item_fields(item, shape, folder, "IPM.Contact")
    display = item.display_name or " ".join(p for p in (item.given_name, item.surname) if p)
    notes = getattr(item, "personal_notes", None)
    fields += [
        ("item:Subject", lambda: _text("Subject", display)),
        ("item:Body", lambda: element(t("Body"), notes, BodyType="Text") if notes else None),
        ("item:HasAttachments", lambda: element(t("HasAttachments"), False)),
        ("contacts:FileAs", lambda: _text("FileAs", getattr(item, "file_as", None) or display)),
        ("contacts:DisplayName", lambda: _text("DisplayName", display)),
        ("contacts:GivenName", lambda: _text("GivenName", item.given_name)),
        ("contacts:CompanyName", lambda: _text("CompanyName", getattr(item, "company_name", None))),
        (
            "contacts:EmailAddresses",
            lambda: _email_entries(
                getattr(item, "email_addresses", None), shape.entries("contacts:EmailAddresses")
            ),
        ),
        (
            "contacts:PhysicalAddresses",
            lambda: _address_entries(item, shape.entries("contacts:PhysicalAddresses")),
        ),
        ("contacts:PhoneNumbers", lambda: _phone_entries(item, shape.entries("contacts:PhoneNumbers"))),
        ("contacts:JobTitle", lambda: _text("JobTitle", getattr(item, "job_title", None))),
        ("contacts:Surname", lambda: _text("Surname", item.surname)),
        ("contacts:BusinessHomePage",
         lambda: _text("BusinessHomePage", getattr(item, "business_home_page", None))),
    ]
    contact = _assemble("Contact", item, shape, fields, CONTACT_ORDER)
    extended = _extended_elements(item, shape)
    if extended:
        children = list(contact)
        for child in children:
            contact.remove(child)
        ordered(contact, children + extended, CONTACT_ORDER_EXTENDED)
    return contact


def _email_entries(values, wanted=None):
    """``wanted``: None for every entry, else the (URI, FieldIndex) pairs asked for (Shape.entries)."""
    values = list(values or [])[:3]
    if not values:
        return None
    wrapper = element(t("EmailAddresses"))
    for index, value in enumerate(values, start=1):
        name, address = _pair(value)
        key = f"EmailAddress{index}"
        if address and (wanted is None or ("contacts:EmailAddress", key) in wanted):
            sub(wrapper, t("Entry"), address, Key=key, Name=name or None)
    return wrapper if len(wrapper) else None


def _phone_entries(item, wanted=None):
    wrapper = element(t("PhoneNumbers"))
    for attr, keys in PHONE_KEYS.items():
        value = getattr(item, attr, None)
        numbers = [value] if isinstance(value, str) else list(value or [])
        for key, number in zip(keys, numbers[: len(keys)], strict=False):
            if number and (wanted is None or ("contacts:PhoneNumber", key) in wanted):
                sub(wrapper, t("Entry"), number, Key=key)
    return wrapper if len(wrapper) else None


def _address_part(address, name):
    if isinstance(address, dict):
        return address.get(name)
    return getattr(address, name, None)


def _address_entries(item, wanted=None):
    wrapper = element(t("PhysicalAddresses"))
    for attr, key in ADDRESS_KEYS.items():
        address = getattr(item, attr, None)
        if not address:
            continue
        entry = element(t("Entry"), Key=key)
        for tag, part in ADDRESS_PARTS:
            value = _address_part(address, part)
            if value and (wanted is None or (f"contacts:PhysicalAddress:{tag}", key) in wanted):
                sub(entry, t(tag), value)
        if len(entry):
            wrapper.append(entry)
    return wrapper if len(wrapper) else None


FOLDER_TAGS = {
    "IPF.Appointment": "CalendarFolder",
    "IPF.Contact": "ContactsFolder",
    "IPF.Task": "TasksFolder",
}


def folder_element(folder, shape, counts, distinguished=None):
    """``t:Folder`` / ``t:CalendarFolder`` / ``t:ContactsFolder`` with the requested properties.

    ``counts`` is (total, child folders, unread).
    """
    folder_class = folder.folder_class or "IPF.Note"
    tag = FOLDER_TAGS.get(folder_class, "Folder")
    total, children, unread = counts
    fields = [
        (
            "folder:ParentFolderId",
            lambda: folder_id_element_by_id(folder.parent_id, "ParentFolderId") if folder.parent_id else None,
        ),
        ("folder:FolderClass", lambda: element(t("FolderClass"), folder_class)),
        ("folder:DisplayName", lambda: element(t("DisplayName"), folder.display_name or "")),
        ("folder:TotalCount", lambda: element(t("TotalCount"), total)),
        ("folder:ChildFolderCount", lambda: element(t("ChildFolderCount"), children)),
        (
            "folder:DistinguishedFolderId",
            lambda: (
                element(t("DistinguishedFolderId"), distinguished)
                if distinguished in DISTINGUISHED_TO_STORE
                else None
            ),
        ),
        ("folder:EffectiveRights", lambda: _effective_rights()),
    ]
    if tag == "Folder":
        fields.append(("folder:UnreadCount", lambda: element(t("UnreadCount"), unread)))
    elem = element(t(tag))
    children_elems = [folder_id_element(folder)]
    children_elems += [
        child for child in (build() for uri, build in fields if shape.wants(uri)) if child is not None
    ]
    return ordered(elem, children_elems, FOLDER_ORDER)


def _effective_rights():
    rights = element(t("EffectiveRights"))
    for name in ("CreateAssociated", "CreateContents", "CreateHierarchy", "Delete", "Modify", "Read"):
        sub(rights, t(name), True)
    return rights


def folder_id_element_by_id(folder_id, tag):
    """FolderIdType element when only the id is known (change key of a folder is not tracked by clients)."""
    return element(t(tag), Id=folder_id, ChangeKey="AQAAAA==")


# --------------------------------------------------------------------------------------------------
# Parsing client-sent items (CreateItem / UpdateItem)
# ----------------------------------------------------------------------------------------------------
CONTACT_SIMPLE_FIELDS = {
    "GivenName": "given_name",
    "Surname": "surname",
    "DisplayName": "display_name",
    "CompanyName": "company_name",
    "JobTitle": "job_title",
    "FileAs": "file_as",
    "BusinessHomePage": "business_home_page",
}
CONTACT_URI_TO_ATTR = {f"contacts:{tag}": attr for tag, attr in CONTACT_SIMPLE_FIELDS.items()}
CONTACT_URI_TO_ATTR.update({"item:Body": "personal_notes", "item:Categories": "categories"})


def contact_fields_from_xml(contact_elem, current=None):
    """Store field values from a ``t:Contact`` element; ``current`` (a Contact) seeds indexed collections."""
    fields = {}
    for child in contact_elem:
        name = etree.QName(child).localname
        if name in CONTACT_SIMPLE_FIELDS:
            fields[CONTACT_SIMPLE_FIELDS[name]] = child.text or ""
        elif name == "Body":
            fields["personal_notes"] = child.text or ""
        elif name == "Categories":
            fields["categories"] = [s.text or "" for s in child]
        elif name == "EmailAddresses":
            existing = list(getattr(current, "email_addresses", None) or []) if current is not None else []
            fields["email_addresses"] = _merge_email_entries(existing, child)
        elif name == "PhoneNumbers":
            fields.update(_phone_fields(child, current))
        elif name == "PhysicalAddresses":
            fields.update(_address_fields(child, current))
        elif name == "ExtendedProperty":
            uri_elem = child.find(t("ExtendedFieldURI"))
            key = extended_field_key(uri_elem) if uri_elem is not None else None
            if key:
                if "extended_properties" not in fields:
                    fields["extended_properties"] = dict(getattr(current, "extended_properties", None) or {})
                fields["extended_properties"][key] = child.findtext(t("Value")) or ""
    return fields


def _merge_email_entries(existing, entries_elem):
    slots = [_pair(v) for v in existing] + [(None, None)] * 3
    slots = slots[:3]
    for entry in entries_elem:
        key = entry.get("Key", "EmailAddress1")
        index = int(key[-1]) - 1 if key[-1:].isdigit() else 0
        address = (entry.text or "").strip()
        if address.lower().startswith("smtp:"):
            address = address[5:]
        slots[index] = (entry.get("Name") or slots[index][0], address or None)
    return [(name, address) for name, address in slots if address]


def _phone_fields(numbers_elem, current):
    fields = {}
    for attr, keys in PHONE_KEYS.items():
        value = getattr(current, attr, None) if current is not None else None
        values = [value] if isinstance(value, str) else list(value or [])
        values += [None] * (len(keys) - len(values))
        changed = False
        for entry in numbers_elem:
            if entry.get("Key") in keys:
                values[keys.index(entry.get("Key"))] = (entry.text or "").strip() or None
                changed = True
        if changed:
            cleaned = [v for v in values if v]
            fields[attr] = (cleaned[0] if cleaned else None) if attr == "mobile_phone" else cleaned
    return fields


def _address_fields(addresses_elem, current):
    fields = {}
    for entry in addresses_elem:
        attr = {v: k for k, v in ADDRESS_KEYS.items()}.get(entry.get("Key"))
        if not attr:
            continue
        existing = getattr(current, attr, None) if current is not None else None
        values = {part: _address_part(existing, part) for _, part in ADDRESS_PARTS} if existing else {}
        for child in entry:
            for tag, part in ADDRESS_PARTS:
                if etree.QName(child).localname == tag:
                    values[part] = child.text or ""
        fields[attr] = values
    return fields


def deleted_contact_fields(path_elem, current):
    """Field values that clear what a ``DeleteItemField`` path designates on a contact."""
    uri = path_elem.get("FieldURI")
    index = path_elem.get("FieldIndex")
    if etree.QName(path_elem).localname == "ExtendedFieldURI":
        key = extended_field_key(path_elem)
        kept = dict(getattr(current, "extended_properties", None) or {})
        kept.pop(key, None)
        return {"extended_properties": kept}
    if uri in CONTACT_URI_TO_ATTR:
        attr = CONTACT_URI_TO_ATTR[uri]
        return {attr: [] if attr == "categories" else None}
    if uri == "contacts:EmailAddress" and index:
        existing = [_pair(v) for v in (getattr(current, "email_addresses", None) or [])]
        position = int(index[-1]) - 1 if index[-1:].isdigit() else 0
        return {"email_addresses": [v for i, v in enumerate(existing) if i != position]}
    if uri == "contacts:PhoneNumber" and index:
        for attr, keys in PHONE_KEYS.items():
            if index in keys:
                if attr == "mobile_phone":
                    return {attr: None}
                values = list(getattr(current, attr, None) or [])
                position = keys.index(index)
                return {attr: [v for i, v in enumerate(values) if i != position]}
    if uri and uri.startswith("contacts:PhysicalAddress:") and index:
        attr = {v: k for k, v in ADDRESS_KEYS.items()}.get(index)
        if attr:
            existing = getattr(current, attr, None)
            part = {tag: p for tag, p in ADDRESS_PARTS}.get(uri.rsplit(":", 1)[1])
            if existing and part:
                values = {p: _address_part(existing, p) for _, p in ADDRESS_PARTS}
                values[part] = None
                return {attr: values}
    return {}


def utc(value):
    """An aware UTC datetime (naive values are taken as UTC)."""
    if value.tzinfo is None:
        return value.replace(tzinfo=timezone.utc)
    return value.astimezone(timezone.utc)
