"""EWS backend (Exchange 2010 SP2 and later, on premises) built on exchangelib 5.x.

- Credentials: Basic or NTLM (``auth_type`` "basic"/"ntlm"), user name as
  e-mail address, ``DOMAIN\\user`` or UPN.  ``version=None`` lets exchangelib
  probe the server version, or give a build string such as "14.2".
- TLS: exchangelib only has a class-level ``BaseProtocol.HTTP_ADAPTER_CLS``.
  This module installs :class:`AccountVerifyAdapter`, and each backend sets
  its ``verify`` (CA bundle path, True or False) on the adapters of the
  sessions of its own account, so two accounts with different CAs work in
  one process, even against the same server.
- exchangelib runs with its ``FailFast`` retry policy: throttling
  (``ErrorServerBusy`` with ``BackOffMilliseconds``, HTTP 503) and
  timeouts reach :class:`services.throttle.RetryPolicy`, which also
  enforces the run's time budget, and every call holds one of the
  mailbox's concurrency slots.
- Messages: ``SyncFolderItems`` one page per request, then ``GetItem`` for
  the envelope of the created/changed items of the page, because Exchange
  does not return recipient lists in sync or find results.  A listing
  without recipients (``recipients=False``, what mail import asks for) gets
  the other envelope fields from ``SyncFolderItems`` itself: one request a page.
  The state is the page's ``SyncState``.  EWS ids change when an item
  moves: use the id :meth:`EwsBackend.move_message` returns.
- Calendar: EWS has no calendar-view delta.  ``sync_events`` lists the
  window with CalendarViews (occurrences and exceptions expanded) of
  sub-windows small enough for Exchange's EwsFindCountLimit, and the
  state is a fingerprint: JSON ``{"window": [start, end], "seen": {id: change_key}}``.
  Items whose change key differs from the fingerprint are returned, ids in
  the fingerprint missing from the window are reported as removed (deleted
  or cancelled occurrences, events moved out of the window).
"""

import base64
import collections
import json
import logging
import re
import threading
import xml.parsers.expat
from datetime import date, datetime, timedelta, timezone

import requests
from exchangelib import (
    BASIC,
    NTLM,
    UTC,
    Account,
    Body,
    Build,
    Configuration,
    Contact,
    Credentials,
    EWSDateTime,
    ExtendedProperty,
    FailFast,
    Folder,
    HTMLBody,
    Message,
    Version,
)
from exchangelib import errors as ews_errors
from exchangelib.fields import FieldPath, URIField
from exchangelib.folders import Calendar, Root
from exchangelib.folders.queryset import SHALLOW as SHALLOW_FOLDERS
from exchangelib.folders.queryset import SingleFolderQuerySet
from exchangelib.indexed_properties import EmailAddress, PhoneNumber, PhysicalAddress
from exchangelib.items import HARD_DELETE, ID_ONLY, MOVE_TO_DELETED_ITEMS, CalendarItem
from exchangelib.protocol import BaseProtocol, Protocol
from exchangelib.services import FindItem, GetItem, SyncFolderItems
from exchangelib.services.common import EWSService
from exchangelib.util import MNS, SOAPNS, TNS, ParseError, to_xml
from exchangelib.version import EXCHANGE_2013

from .backend import (
    ContactResult,
    MailboxBackend,
    MarkedContact,
    RemoteAddress,
    RemoteAttendee,
    RemoteContact,
    RemoteEvent,
    RemoteFolder,
    RemoteMailbox,
    RemoteMessage,
    SyncPage,
    new_spool,
    saved_window_state,
    window_bounds,
)
from .contact_mapping import MARKER_PROPERTY_NAME, MARKER_PROPERTY_SET_ID, split_street, street_lines
from .errors import (
    AuthenticationError,
    ConnectionProblem,
    ExchangeError,
    FolderNotFound,
    ItemNotFound,
    SyncStateExpired,
    connection_problem,
)
from .throttle import MAX_CONCURRENT_REQUESTS, Retryable, RetryPolicy, mailbox_slot, throttled

_logger = logging.getLogger(__name__)

MESSAGE_FIELDS = [
    "subject",
    "sender",
    "author",
    "to_recipients",
    "cc_recipients",
    "bcc_recipients",
    "datetime_received",
    "datetime_sent",
    "has_attachments",
    "is_read",
    "message_id",
    "size",
    "parent_folder_id",
]
#: What a listing without recipients asks SyncFolderItems for: Exchange returns these in sync
#: results, but never the recipient lists (they take a GetItem).
LISTING_FIELDS = [name for name in MESSAGE_FIELDS if not name.endswith("_recipients")]
EVENT_FIELDS = [
    "uid",
    "type",
    "subject",
    "body",
    "start",
    "end",
    "is_all_day",
    "location",
    "organizer",
    "required_attendees",
    "optional_attendees",
    "resources",
    "sensitivity",
    "legacy_free_busy_status",
    "is_cancelled",
    "categories",
    "recurrence",
    "original_start",
    "my_response_type",
    "reminder_is_set",
    "reminder_minutes_before_start",
]
#: The meeting's join link, Exchange 2013 and later only (``JoinOnlineMeetingUrl`` of ``CalendarItemType``
#: in types.xsd); Exchange 2010 has no such property, and exchangelib no field for it.
JOIN_URL_FIELD = "join_online_meeting_url"
if JOIN_URL_FIELD not in {field.name for field in CalendarItem.FIELDS}:
    CalendarItem.add_field(
        URIField(
            JOIN_URL_FIELD,
            field_uri="calendar:JoinOnlineMeetingUrl",
            supported_from=EXCHANGE_2013,
            is_read_only=True,
        ),
        insert_after="net_show_url",
    )
#: Exchange refuses a SyncFolderItems MaxChangesReturned above 512.
MAX_SYNC_CHANGES = 512
#: Messages per GetItem for their MIME: few HTTP requests, yet a bounded answer to hold in memory.
MIME_BATCH = 50
#: Contacts per CreateItem/UpdateItem/DeleteItem request.
CONTACT_CHUNK = 100
#: Calendar windows are listed in sub-windows of this size (each one CalendarView request).
CALENDAR_SUBWINDOW = timedelta(days=31)
#: A sub-window answering this many entries may be cut: it is split in two and asked again.
CALENDAR_MAX_ENTRIES = 500
#: exchangelib protocols (connection pools of one endpoint and user) kept open between backends.
KEPT_PROTOCOLS = 64
WELL_KNOWN_FOLDERS = {
    "inbox": "inbox",
    "sent items": "sent",
    "deleted items": "trash",
    "drafts": "drafts",
    "junk email": "junk",
    "outbox": "outbox",
}
_RESPONSES = {"accept": "accepted", "decline": "declined", "tentative": "tentative", "organizer": "organizer"}
_EVENT_TYPES = {
    "single": "single",
    "occurrence": "occurrence",
    "exception": "exception",
    "recurringmaster": "series_master",
}
_SHOW_AS = {
    "free": "free",
    "tentative": "tentative",
    "busy": "busy",
    "oof": "oof",
    "workingelsewhere": "workingElsewhere",
    "nodata": "unknown",
}


class AccountVerifyAdapter(requests.adapters.HTTPAdapter):
    """The HTTPAdapter exchangelib mounts on each of its sessions, with a ``verify`` of its own.

    exchangelib builds one adapter per session from the class-level
    ``BaseProtocol.HTTP_ADAPTER_CLS`` and its sessions trust the environment
    (REQUESTS_CA_BUNDLE would win over ``session.verify``).
    :class:`EwsBackend` sets ``verify`` on the adapters of its account's
    sessions, so each account keeps its own CA bundle or switch; an adapter
    left alone (``verify = None``) behaves as requests' own.
    """

    verify = None
    _last_answer = threading.local()

    @classmethod
    def last_status(cls):
        """HTTP status of the last answer this thread received (exchangelib sometimes hides it)."""
        return getattr(cls._last_answer, "status", None)

    def send(self, request, stream=False, timeout=None, verify=True, cert=None, proxies=None):
        if self.verify is not None:
            verify = self.verify
        self._last_answer.status = None
        response = super().send(
            request, stream=stream, timeout=timeout, verify=verify, cert=cert, proxies=proxies
        )
        self._last_answer.status = response.status_code
        return response


def _bind_verify(protocol, verify):
    """Make every session ``protocol`` creates from now on verify TLS with ``verify``."""
    create_session = protocol.create_session

    def create_session_with_verify():
        session = create_session()
        for adapter in session.adapters.values():
            if isinstance(adapter, AccountVerifyAdapter):
                adapter.verify = verify
        return session

    protocol.create_session = create_session_with_verify


BaseProtocol.HTTP_ADAPTER_CLS = AccountVerifyAdapter

_read_soap_parts_byte_by_byte = EWSService._get_soap_parts.__func__


@classmethod
def _get_soap_parts_from_content(cls, response):
    """exchangelib's ``_get_soap_parts``, parsing the body requests already holds in one piece.

    exchangelib hands lxml ``response.iter_content()``, which yields one byte per call:
    a million calls for a megabyte. Streaming answers (not read yet) still go that way.
    """
    content = getattr(response, "_content", None)
    if not (getattr(response, "_content_consumed", False) and isinstance(content, bytes)):
        return _read_soap_parts_byte_by_byte(cls, response)
    try:
        root = to_xml(content)
    except ParseError as error:
        raise ews_errors.SOAPError(f"Bad SOAP response: {error}") from error
    header = root.find(f"{{{SOAPNS}}}Header")
    body = root.find(f"{{{SOAPNS}}}Body")
    if body is None:
        raise ews_errors.MalformedResponseError("No Body element in SOAP response")
    return header, body


EWSService._get_soap_parts = _get_soap_parts_from_content

#: Server version per EWS URL, found once per process (exchangelib would probe it with ConvertId).
_server_versions = {}
#: Protocols kept open after their backend closed, most recently used last: {cache key: protocol}.
_kept_protocols = collections.OrderedDict()
_kept_protocols_lock = threading.Lock()
_UNBOUND = object()


def _keep_protocol(protocol):
    """Keep ``protocol`` (and its authenticated connections) for the next backend of the same user."""
    key = Protocol._cache_key(protocol.config)
    evicted = []
    with _kept_protocols_lock:
        _kept_protocols[key] = protocol
        _kept_protocols.move_to_end(key)
        while len(_kept_protocols) > KEPT_PROTOCOLS:
            evicted.append(_kept_protocols.popitem(last=False)[1])
    for old in evicted:
        _drop_protocol(old)


def _drop_protocol(protocol):
    """Close ``protocol``'s connections and forget it, in exchangelib's cache and ours."""
    key = Protocol._cache_key(protocol.config)
    with _kept_protocols_lock:
        if _kept_protocols.get(key) is protocol:
            del _kept_protocols[key]
    with Protocol._protocol_cache_lock:
        cached = Protocol._protocol_cache.get(key)
        if cached and cached[0] is protocol:
            del Protocol._protocol_cache[key]
    protocol.close()


def _utc(value):
    """exchangelib EWSDateTime/EWSDate → aware UTC datetime (dates are all-day starts at midnight UTC)."""
    if value is None:
        return None
    if isinstance(value, datetime):
        return datetime.fromtimestamp(value.timestamp(), tz=timezone.utc)
    if isinstance(value, date):
        return datetime(value.year, value.month, value.day, tzinfo=timezone.utc)
    return value


def _all_day_end(value):
    """The exclusive end of an all-day event (midnight after its last day), as Graph gives it.

    exchangelib turns an all-day event's End into the date of its last day
    (one day less than what Exchange sends).
    """
    end = _utc(value)
    if isinstance(value, date) and not isinstance(value, datetime):
        end += timedelta(days=1)
    return end


def _address(mailbox):
    if mailbox is None or not (mailbox.email_address or mailbox.name):
        return None
    return RemoteAddress(address=mailbox.email_address or "", name=mailbox.name or "")


def _addresses(mailboxes):
    return [address for address in map(_address, mailboxes or []) if address]


def message_from_ews(item):
    """Map an exchangelib Message to :class:`RemoteMessage`."""
    return RemoteMessage(
        id=item.id,
        internet_message_id=item.message_id,
        subject=item.subject or "",
        sender=_address(item.sender),
        from_=_address(item.author),
        to=_addresses(item.to_recipients),
        cc=_addresses(item.cc_recipients),
        bcc=_addresses(item.bcc_recipients),
        received=_utc(item.datetime_received),
        sent=_utc(item.datetime_sent),
        has_attachments=bool(item.has_attachments),
        is_read=bool(item.is_read),
        change_key=item.changekey,
        folder_id=item.parent_folder_id.id if item.parent_folder_id else None,
        size=item.size,
    )


def _recurrence_from_ews(recurrence):
    if recurrence is None or recurrence.pattern is None:
        return None
    pattern = recurrence.pattern
    boundary = recurrence.boundary
    kind = type(pattern).__name__
    types = {
        "DailyPattern": "daily",
        "WeeklyPattern": "weekly",
        "AbsoluteMonthlyPattern": "absoluteMonthly",
        "RelativeMonthlyPattern": "relativeMonthly",
        "AbsoluteYearlyPattern": "absoluteYearly",
        "RelativeYearlyPattern": "relativeYearly",
    }
    ranges = {"NoEndPattern": "noEnd", "EndDatePattern": "endDate", "NumberedPattern": "numbered"}
    weekdays = getattr(pattern, "weekdays", None) or []
    return {
        "type": types.get(kind, kind),
        "interval": getattr(pattern, "interval", None) or 1,
        "days_of_week": [str(day).lower() for day in weekdays],
        "day_of_month": getattr(pattern, "day_of_month", None),
        "month": getattr(pattern, "month", None),
        "index": None,
        "first_day_of_week": None,
        "range_type": ranges.get(type(boundary).__name__),
        "start_date": boundary.start.isoformat() if getattr(boundary, "start", None) else None,
        "end_date": boundary.end.isoformat() if getattr(boundary, "end", None) else None,
        "count": getattr(boundary, "number", None),
    }


def event_from_ews(item):
    """Map an exchangelib CalendarItem (from a CalendarView) to :class:`RemoteEvent`."""
    attendees = []
    for kind, group in (
        ("required", item.required_attendees),
        ("optional", item.optional_attendees),
        ("resource", item.resources),
    ):
        for attendee in group or []:
            address = _address(attendee.mailbox)
            if address:
                attendees.append(
                    RemoteAttendee(
                        address=address.address,
                        name=address.name,
                        response=_RESPONSES.get((attendee.response_type or "").lower(), "none"),
                        type=kind,
                    )
                )
    body = item.body or ""
    if body and not isinstance(body, HTMLBody):
        body = "<pre>" + body.replace("&", "&amp;").replace("<", "&lt;") + "</pre>"
    return RemoteEvent(
        id=item.id,
        ical_uid=item.uid,
        series_master_id=None,
        type=_EVENT_TYPES.get((item.type or "Single").lower(), "single"),
        subject=item.subject or "",
        body_html=str(body),
        start=_utc(item.start),
        end=_all_day_end(item.end) if item.is_all_day else _utc(item.end),
        is_all_day=bool(item.is_all_day),
        location=item.location or "",
        organizer=_address(item.organizer),
        attendees=attendees,
        sensitivity=(item.sensitivity or "Normal").lower(),
        show_as=_SHOW_AS.get((item.legacy_free_busy_status or "Busy").lower(), "busy"),
        is_cancelled=bool(item.is_cancelled),
        categories=list(item.categories or []),
        change_key=item.changekey,
        recurrence=_recurrence_from_ews(item.recurrence),
        original_start=_utc(item.original_start) if item.type in ("Occurrence", "Exception") else None,
        reminder_minutes=item.reminder_minutes_before_start if item.reminder_is_set else None,
        my_response=_RESPONSES.get((item.my_response_type or "").lower(), "none"),
        online_meeting_url=getattr(item, JOIN_URL_FIELD, None) or "",
    )


class OdooPartnerMarker(ExtendedProperty):
    """The connector's ownership marker on a contact (see :mod:`services.contact_mapping`)."""

    property_set_id = MARKER_PROPERTY_SET_ID
    property_name = MARKER_PROPERTY_NAME
    property_type = "String"


#: The Contact attribute exchangelib reads and writes the marker through (registered once per process).
MARKER_FIELD = "odoo_partner_marker"
if MARKER_FIELD not in {f.name for f in Contact.FIELDS}:
    Contact.register(MARKER_FIELD, OdooPartnerMarker)
#: Contacts per FindItem page when listing the marked contacts.
CONTACT_LIST_PAGE = 1000


def _fill_contact(item, contact):
    """Copy :class:`RemoteContact` fields onto an exchangelib Contact (empty values clear)."""
    item.given_name = contact.given_name or None
    item.surname = contact.surname or None
    item.display_name = (
        contact.display_name
        or " ".join(part for part in (contact.given_name, contact.surname) if part)
        or (contact.emails or [""])[0]
        or "?"
    )
    item.company_name = contact.company_name or None
    item.job_title = contact.job_title or None
    item.email_addresses = [
        EmailAddress(email=email, label=label)
        for email, label in zip(contact.emails[:3], EmailAddress.LABEL_CHOICES, strict=False)
    ] or None
    phones = (
        [PhoneNumber(label="BusinessPhone", phone_number=contact.business_phone)]
        if contact.business_phone
        else []
    )
    if contact.mobile_phone:
        phones.append(PhoneNumber(label="MobilePhone", phone_number=contact.mobile_phone))
    item.phone_numbers = phones or None
    if any((contact.street, contact.street2, contact.city, contact.zip, contact.state, contact.country)):
        item.physical_addresses = [
            PhysicalAddress(
                label="Business",
                street=street_lines(contact) or None,
                city=contact.city or None,
                state=contact.state or None,
                country=contact.country or None,
                zipcode=contact.zip or None,
            )
        ]
    else:
        item.physical_addresses = None
    item.business_homepage = contact.website or None
    item.body = Body(contact.notes) if contact.notes else None
    item.categories = list(contact.categories) or None
    if contact.marker:
        setattr(item, MARKER_FIELD, contact.marker)
    return item


def contact_from_ews(item):
    """Map an exchangelib Contact to :class:`RemoteContact`."""
    emails = sorted(item.email_addresses or [], key=lambda e: e.label or "")
    phones = {p.label: p.phone_number for p in item.phone_numbers or [] if p.phone_number}
    address = next((a for a in item.physical_addresses or [] if a.label == "Business"), None)
    street, street2 = split_street(address.street if address else "")
    return RemoteContact(
        id=item.id,
        change_key=item.changekey,
        given_name=item.given_name or "",
        surname=item.surname or "",
        display_name=item.display_name or "",
        company_name=item.company_name or "",
        job_title=item.job_title or "",
        emails=[e.email for e in emails if e.email],
        business_phone=phones.get("BusinessPhone", ""),
        mobile_phone=phones.get("MobilePhone", ""),
        street=street,
        street2=street2,
        city=(address.city if address else "") or "",
        zip=(address.zipcode if address else "") or "",
        state=(address.state if address else "") or "",
        country=(address.country if address else "") or "",
        website=item.business_homepage or "",
        notes=str(item.body or ""),
        categories=list(item.categories or []),
        marker=getattr(item, MARKER_FIELD, None) or None,
    )


_CONTACT_UPDATE_FIELDS = [
    "given_name",
    "surname",
    "display_name",
    "company_name",
    "job_title",
    "email_addresses",
    "phone_numbers",
    "physical_addresses",
    "business_homepage",
    "body",
    "categories",
]


def _error_code(exc):
    """Microsoft's ResponseCode: exchangelib names its exception classes after them."""
    return type(exc).__name__


class EwsBackend(MailboxBackend):
    """A mailbox reached through Exchange Web Services.

    :param account_email: the mailbox's primary SMTP address.
    :param username: "user@domain", "DOMAIN\\\\user" or the account name.
    :param ews_url: the EWS endpoint, ``https://mail.example.com/EWS/Exchange.asmx``.
    :param auth_type: "ntlm" or "basic".
    :param version: None to let exchangelib probe, or a build such as "14.2" (Exchange 2010 SP2).
    :param verify: CA bundle path, True (system CAs) or False (no check, for tests only).
    :param calendar_max_entries: MaxEntriesReturned of each CalendarView; must not exceed the
        server's EwsFindCountLimit (1000 by default), else exchangelib asks the same view forever.
    """

    def __init__(
        self,
        account_email,
        username,
        password,
        ews_url,
        auth_type="ntlm",
        version=None,
        verify=True,
        budget=None,
        retry_policy=None,
        timeout=60,
        page_size=100,
        calendar_max_entries=CALENDAR_MAX_ENTRIES,
    ):
        self.account_email = account_email
        self.ews_url = ews_url
        self.calendar_max_entries = calendar_max_entries
        self.budget = budget
        self.retry_policy = retry_policy or RetryPolicy()
        self.page_size = page_size
        self.verify = verify
        config_version = _server_versions.get(ews_url)
        if version:
            config_version = Version(build=Build(*[int(part) for part in str(version).split(".")]))
        self.config = Configuration(
            service_endpoint=ews_url,
            credentials=Credentials(username=username, password=password),
            auth_type=NTLM if str(auth_type).lower() == "ntlm" else BASIC,
            version=config_version,
            retry_policy=FailFast(),
            max_connections=MAX_CONCURRENT_REQUESTS,
        )
        self.timeout = timeout
        self._account = None
        # A sign-in refused or a connection lost: its protocol is not kept for the next backend.
        self._protocol_suspect = False

    # -- plumbing -----------------------------------------------------------

    @property
    def account(self):
        """The exchangelib Account (created on first use)."""
        if self._account is None:
            # exchangelib shares one protocol per (endpoint, credentials): bind it before Account() uses it.
            protocol = Protocol(config=self.config)
            bound = getattr(protocol, "_exchange_verify", _UNBOUND)
            if bound is not _UNBOUND and bound != self.verify:
                # Kept from a backend that trusted other certificates: its connections go too.
                _drop_protocol(protocol)
                protocol = Protocol(config=self.config)
                bound = _UNBOUND
            if bound is _UNBOUND:
                _bind_verify(protocol, self.verify)
                protocol._exchange_verify = self.verify
            account = self._call(
                lambda: Account(
                    primary_smtp_address=self.account_email,
                    config=self.config,
                    autodiscover=False,
                    default_timezone=UTC,
                ),
                "EWS connect",
            )
            account.protocol.TIMEOUT = self.timeout  # exchangelib's default is 120 s per request
            if account.protocol.config.version and account.protocol.config.version.build:
                _server_versions.setdefault(self.ews_url, account.protocol.config.version)
            self._account = account
        return self._account

    def _call(self, fn, what, idempotent=True):
        """Run ``fn()`` (consuming its results) in a concurrency slot, with retries and error mapping.

        ``fn`` must not itself call ``_call`` (read ``self.account`` before):
        a nested call would hold two of the mailbox's slots in one thread.
        A non-``idempotent`` request (CreateItem, CreateFolder, MoveItem) is
        sent again only when Exchange surely did not run it (ErrorServerBusy,
        HTTP 503, no connection); after a read timeout or a dropped
        connection it raises with ``outcome_unknown`` set.
        """

        def unanswered(error, exc):
            """Retry ``error`` when allowed; otherwise raise it marked as possibly carried out."""
            if idempotent:
                raise Retryable(error) from exc
            error.outcome_unknown = True
            raise error from exc

        def timed_out(exc):
            # exchangelib re-raises every connection error as ErrorTimeoutExpired.
            problem = connection_problem(exc, self.ews_url)
            if not problem.transient:
                raise problem from exc
            if isinstance(exc.__context__, requests.exceptions.ConnectTimeout):
                raise Retryable(problem) from exc  # nothing was sent
            unanswered(problem, exc)

        def transient(exc, retry_after=None):
            error = ExchangeError(f"{what}: {exc}", code=_error_code(exc))
            if AccountVerifyAdapter.last_status() == 503:
                raise Retryable(error, retry_after) from exc  # refused before Exchange ran it
            unanswered(error, exc)

        def attempt():
            try:
                with mailbox_slot(self.account_email):
                    return fn()
            except ews_errors.ErrorServerBusy as exc:
                if AccountVerifyAdapter.last_status() == 401:
                    # exchangelib reads "Connection: close" before the 401 status and calls it busy.
                    raise self._bad_credentials() from exc
                # exchangelib's services turn timeouts and transient errors into ErrorServerBusy
                # ("Reraised from ...") with a back-off of their own invention; a 503 with
                # Retry-After becomes one too: judge them by what really happened.
                cause = exc.__context__
                invented = "Reraised from" in str(exc)
                if isinstance(cause, ews_errors.ErrorTimeoutExpired):
                    timed_out(cause)
                if isinstance(
                    cause,
                    (ews_errors.ErrorInternalServerTransientError, ews_errors.ErrorTooManyObjectsOpened),
                ):
                    transient(cause, None if invented else exc.back_off)
                raise throttled(str(exc) or "Server busy", "ErrorServerBusy", exc.back_off) from exc
            except ews_errors.ErrorTimeoutExpired as exc:
                timed_out(exc)
            except ews_errors.ErrorInternalServerTransientError as exc:
                transient(exc)
            except ews_errors.UnauthorizedError as exc:
                raise self._bad_credentials() from exc
            except PermissionError as exc:
                if "NTLM" not in str(exc):
                    raise
                # requests_ntlm: a 401 that offers no NTLM (Kerberos or Basic only).
                raise AuthenticationError(
                    f"{self.ews_url} does not offer NTLM: {exc}", kind="auth_method", code="NtlmNotOffered",
                    status=401,
                ) from exc
            except (
                ews_errors.ErrorFolderNotFound,
                ews_errors.ErrorItemNotFound,
                ews_errors.ErrorInvalidSyncStateData,
            ) as exc:
                raise _translate(exc) from exc
            except ews_errors.ResponseMessageError as exc:
                _logger.warning("%s: %s %s", what, _error_code(exc), exc)
                raise ExchangeError(f"{what}: {exc}", code=_error_code(exc)) from exc
            except ews_errors.TransportError as exc:
                text = str(exc)
                if AccountVerifyAdapter.last_status() == 401:
                    raise self._bad_credentials() from exc
                if AccountVerifyAdapter.last_status() == 503:
                    # The server answered, unable to serve (version detection gives up on it this way).
                    raise ConnectionProblem(
                        f"EWS at {self.ews_url} is unavailable: {text[:200]}", kind="unavailable",
                        transient=True, status=503,
                    ) from exc
                # exchangelib re-raises requests' errors (an unknown host among them) as TransportError.
                kind = "tls" if ("CERTIFICATE" in text or "SSL" in text) else connection_problem(exc).kind
                raise ConnectionProblem(
                    f"EWS at {self.ews_url} unreachable ({kind}): {text[:200]}", kind=kind
                ) from exc
            except requests.exceptions.RequestException as exc:
                problem = connection_problem(exc, self.ews_url)
                if not problem.transient:
                    raise problem from exc
                if isinstance(exc, requests.exceptions.ConnectTimeout):
                    raise Retryable(problem) from exc
                unanswered(problem, exc)

        try:
            return self.retry_policy.call(attempt, budget=self.budget, what=what)
        except (AuthenticationError, ConnectionProblem):
            self._protocol_suspect = True
            raise

    def _bad_credentials(self):
        return AuthenticationError(
            f"Exchange rejected the user name or password for {self.account_email}",
            kind="password",
            code="Unauthorized",
            status=401,
        )

    @property
    def _root(self):
        account = self.account
        return self._call(lambda: account.root, "EWS GetFolder root")

    def _root_by_name(self):
        """The mailbox's root folder addressed by its distinguished name: no GetFolder."""
        return Root(account=self.account)

    def _folder(self, folder_id=None):
        """An exchangelib Folder standing for ``folder_id`` (no request); None: any folder type."""
        return Folder(root=self._root_by_name(), id=folder_id)

    def _calendar(self):
        """The default calendar addressed by its distinguished name (no request; not for CalendarViews)."""
        return Calendar(root=self._root_by_name())

    # -- mailbox and folders ------------------------------------------------

    def whoami(self):
        """Open the mailbox's root folder (checks credentials and endpoint); the display name stays empty.

        EWS has no "me": the mailbox is the one named at construction, and
        its display name would need ResolveNames, which a mailbox user may
        not be allowed to run.
        """
        self._root  # noqa: B018 - the request is the check
        return RemoteMailbox(email=self.account.primary_smtp_address, display_name="")

    def _children(self, parent):
        account = self.account
        return self._call(
            lambda: list(SingleFolderQuerySet(account=account, folder=parent).depth(SHALLOW_FOLDERS).all()),
            "EWS FindFolder",
        )

    def _walk(self, names, create):
        if not names:
            raise FolderNotFound("Empty folder path")
        well_known = WELL_KNOWN_FOLDERS.get(names[0].casefold())
        account = self.account
        if well_known:
            node = self._call(lambda: getattr(account, well_known), f"EWS GetFolder {well_known}")
            rest = names[1:]
        else:
            node = self._call(lambda: account.msg_folder_root, "EWS GetFolder msgfolderroot")
            rest = names
        parts = [node.name] if well_known else []
        for name in rest:
            wanted = name.casefold()
            child = next((c for c in self._children(node) if (c.name or "").casefold() == wanted), None)
            if child is None:
                if not create:
                    return None
                child = Folder(parent=node, name=name, folder_class="IPF.Note")
                try:
                    self._call(child.save, "EWS CreateFolder", idempotent=False)
                except ExchangeError as error:
                    if error.code != "ErrorFolderExists" and not error.outcome_unknown:
                        raise
                    # Created meanwhile by another worker, or by our own unanswered request.
                    child = next(
                        (c for c in self._children(node) if (c.name or "").casefold() == wanted), None
                    )
                    if child is None:
                        raise
            node = child
            parts.append(node.name or name)
        return RemoteFolder(
            id=node.id,
            display_name=parts[-1],
            path="/".join(parts),
            parent_id=node.parent_folder_id.id if node.parent_folder_id else None,
        )

    # -- messages -----------------------------------------------------------

    def _sync_page(self, account, folder, state, max_changes=None, fields=()):
        service = SyncFolderItems(account=account)
        changes = list(
            service.call(
                folder=folder,
                shape=ID_ONLY,
                additional_fields={FieldPath(field=Message.get_field_by_fieldname(name)) for name in fields},
                sync_state=state,
                ignore=None,
                max_changes_returned=max_changes or min(self.page_size, MAX_SYNC_CHANGES),
                sync_scope=None,
            )
        )
        return changes, service.sync_state, service.includes_last_item_in_range

    def _fetch_envelopes(self, ids, fields=MESSAGE_FIELDS):
        if not ids:
            return []
        folder = self._folder()
        account = self.account
        return self._call(
            lambda: list(
                # One GetItem per sync page (exchangelib would split at 100 ids).
                account.fetch(
                    [(item_id, None) for item_id in ids],
                    folder=folder,
                    only_fields=fields,
                    chunk_size=len(ids),
                )
            ),
            "EWS GetItem envelopes",
        )

    def sync_messages(self, folder, state, recipients=True):
        """SyncFolderItems listing of ``folder``; ``state`` is the last page's SyncState.

        Exchange leaves recipient lists out of sync results: with ``recipients`` they come from
        one GetItem per page. Without, the listing alone says what there is (one request per
        page) and the messages' ``to``/``cc``/``bcc`` stay empty; only items whose read flag
        changed, listed by id alone, are still fetched.
        """
        ews_folder = self._folder(folder.id)
        account = self.account
        listed_fields = () if recipients else LISTING_FIELDS
        reset = False
        while True:
            self._check_budget()
            try:
                changes, new_state, last = self._call(
                    lambda state=state: self._sync_page(account, ews_folder, state, fields=listed_fields),
                    "EWS SyncFolderItems",
                )
            except SyncStateExpired as expired:
                if not state or reset:
                    raise  # a fresh listing expiring again: leave it to the next run
                _logger.info(
                    "EWS sync state rejected (%s) for %s: full resync", expired.code, self.account_email
                )
                state, reset = None, True
                continue
            changed_ids, removed, listed = [], [], {}
            for change_type, item in changes:
                if change_type == SyncFolderItems.DELETE:
                    removed.append(item.id)
                elif change_type == SyncFolderItems.READ_FLAG_CHANGE:
                    changed_ids.append(item[0].id)
                else:
                    changed_ids.append(item.id)
                    if not recipients:
                        listed[item.id] = item
            changed_ids = list(dict.fromkeys(changed_ids))
            to_fetch = [item_id for item_id in changed_ids if item_id not in listed]
            fetched = self._fetch_envelopes(to_fetch, MESSAGE_FIELDS if recipients else LISTING_FIELDS)
            # GetItem answers in the order of the ids asked for, errors in place.
            listed.update(zip(to_fetch, fetched, strict=True))
            items = []
            for item_id in changed_ids:
                envelope = listed[item_id]
                if isinstance(envelope, ews_errors.ErrorItemNotFound):
                    continue  # deleted meanwhile: the next page or sync reports it
                if isinstance(envelope, Exception):
                    raise _translate(envelope)
                items.append(message_from_ews(envelope))
            done = bool(last) or new_state == state
            yield SyncPage(items=items, removed_ids=removed, state=new_state, done=done, reset=reset)
            if done:
                return
            state = new_state

    def get_mime(self, message_id):
        """Return the message's MIME source (GetItem MimeContent)."""
        folder = self._folder()
        account = self.account
        result = self._call(
            lambda: list(account.fetch([(message_id, None)], folder=folder, only_fields=["mime_content"])),
            "EWS GetItem mime",
        )
        if isinstance(result[0], Exception):
            raise _translate(result[0])
        return bytes(result[0].mime_content or b"")

    def get_mime_file(self, message_id):
        """Stream one message's MimeContent into a spooled file, decoded from base64 as it arrives.

        exchangelib would read the whole GetItem answer, build its XML tree and decode the base64
        text at once (a 30 MB mail: over 150 MB); here exchangelib sends the GetItem it would send
        and the answer is read with a streaming XML parser. A connection that breaks in the middle
        raises :class:`~services.errors.ConnectionProblem`; an answer that is not a success (a
        SOAP fault, a busy server) is asked again through exchangelib, which judges it.
        """
        account = self.account

        def fetch():
            service = GetItem(account=account)
            service.streaming = True
            payload = service.get_payload(
                items=[(message_id, None)], additional_fields={_MIME_CONTENT_PATH}, shape=ID_ONLY)
            reader = _MimeContentReader()
            try:
                response = service._get_response(payload=payload, api_version=account.version.api_version)
                for chunk in response.iter_content(STREAM_CHUNK):
                    reader.feed(chunk)
                reader.close()
            except (xml.parsers.expat.ExpatError, requests.exceptions.RequestException, OSError) as exc:
                reader.spool.close()
                problem = connection_problem(exc, self.ews_url)
                problem.transient = True
                raise problem from exc
            except BaseException:
                reader.spool.close()
                raise
            finally:
                service.stop_streaming()
            return reader

        reader = self._call(fetch, "EWS GetItem mime (streamed)")
        if reader.response_class == "Success" and reader.found:
            reader.spool.seek(0)
            return reader.spool
        reader.spool.close()
        if reader.response_code == "ErrorItemNotFound":
            raise ItemNotFound(f"EWS item {message_id} not found", code=reader.response_code)
        return super().get_mime_file(message_id)

    def get_mimes(self, message_ids):
        """Return ``{id: MIME bytes | ExchangeError}``: one GetItem (MimeContent) per ``MIME_BATCH`` ids."""
        ids = list(dict.fromkeys(message_ids))
        results = {}
        if not ids:
            return results
        folder = self._folder()
        account = self.account
        for start in range(0, len(ids), MIME_BATCH):
            self._check_budget()
            chunk = ids[start : start + MIME_BATCH]
            fetched = self._call(
                lambda chunk=chunk: list(
                    account.fetch(
                        [(item_id, None) for item_id in chunk],
                        folder=folder,
                        only_fields=["mime_content"],
                        chunk_size=len(chunk),
                    )
                ),
                "EWS GetItem mime",
            )
            # GetItem answers in the order of the ids asked for, errors in place.
            for item_id, item in zip(chunk, fetched, strict=False):
                if isinstance(item, Exception):
                    results[item_id] = _translate(item)
                else:
                    results[item_id] = bytes(item.mime_content or b"")
        return results

    def move_message(self, message_id, dest):
        """Move the message; returns its new EWS id."""
        target = self._folder(dest.id)
        account = self.account
        # Sent twice, a move would fail on the id the first one retired: never resend it.
        result = self._call(
            lambda: account.bulk_move([(message_id, None)], to_folder=target),
            "EWS MoveItem",
            idempotent=False,
        )
        if result and isinstance(result[0], Exception):
            raise _translate(result[0])
        return result[0][0] if result else message_id

    def delete_message(self, message_id, hard=False):
        """Move the message to Deleted Items, or delete it for good when ``hard``."""
        delete_type = HARD_DELETE if hard else MOVE_TO_DELETED_ITEMS
        account = self.account
        result = self._call(
            lambda: account.bulk_delete([(message_id, None)], delete_type=delete_type), "EWS DeleteItem"
        )
        if (
            result
            and isinstance(result[0], Exception)
            and not isinstance(result[0], ews_errors.ErrorItemNotFound)
        ):
            raise _translate(result[0])

    def delete_messages(self, message_ids, hard=False):
        """Delete messages with one DeleteItem per ``MIME_BATCH`` ids: ``{id: None | ExchangeError}``."""
        ids = list(dict.fromkeys(message_ids))
        results = {}
        if not ids:
            return results
        delete_type = HARD_DELETE if hard else MOVE_TO_DELETED_ITEMS
        account = self.account
        for start in range(0, len(ids), MIME_BATCH):
            self._check_budget()
            chunk = ids[start : start + MIME_BATCH]
            answers = self._call(
                lambda chunk=chunk: account.bulk_delete(
                    [(item_id, None) for item_id in chunk], delete_type=delete_type, chunk_size=len(chunk)
                ),
                "EWS DeleteItem",
            )
            for item_id, answer in zip(chunk, answers, strict=False):
                gone = isinstance(answer, ews_errors.ErrorItemNotFound)
                results[item_id] = _translate(answer) if isinstance(answer, Exception) and not gone else None
        return results

    # -- calendar -----------------------------------------------------------

    def sync_events(self, window_start, window_end, state):
        """CalendarView listing compared with the fingerprint in ``state`` (see the module docstring).

        A calendar folder without a change since the state's ``folder_state`` costs one
        SyncFolderItems and yields a single done page with ``state`` itself.
        """
        window = window_bounds(window_start, window_end)
        saved, reset = saved_window_state(state, window)
        seen = dict(saved.get("seen") or {})
        self._check_budget()
        changed_folder, folder_state = self._calendar_changes(saved.get("folder_state"))
        if saved and not changed_folder:
            yield SyncPage(items=[], removed_ids=[], state=state, done=True, reset=False)
            return
        self._check_budget()
        events = self._calendar_entries(window_start, window_end)
        current = {event.id: event.changekey for event in events}
        changed = [event for event in events if seen.get(event.id) != event.changekey]
        reported = dict(seen)
        for start in range(0, len(changed), self.page_size):
            self._check_budget()
            chunk = changed[start : start + self.page_size]
            reported.update((event.id, event.changekey) for event in chunk)
            yield SyncPage(
                items=[event_from_ews(event) for event in chunk],
                removed_ids=[],
                # No folder state yet: resuming from here lists the window again.
                state=json.dumps({"window": window, "seen": reported}),
                done=False,
                reset=reset,
            )
        removed = [event_id for event_id in seen if event_id not in current]
        yield SyncPage(
            items=[],
            removed_ids=removed,
            state=json.dumps({"window": window, "seen": current, "folder_state": folder_state}),
            done=True,
            reset=reset,
        )

    def _calendar_changes(self, folder_state):
        """``(changed, new folder state)`` of the calendar folder since ``folder_state`` (None: since ever).

        Read before the CalendarView: a change made during the listing is seen at the next
        run. The ids are not used (the view's change keys tell what changed in the window),
        only whether there is any change; an expired state counts as a change.
        """
        account = self.account
        calendar = self._calendar()
        changed = folder_state is None
        while True:
            try:
                changes, folder_state, last = self._call(
                    lambda state=folder_state: self._sync_page(
                        account, calendar, state, MAX_SYNC_CHANGES
                    ),
                    "EWS SyncFolderItems calendar",
                )
            except SyncStateExpired:
                if folder_state is None:
                    raise
                folder_state, changed = None, True
                continue
            changed = changed or bool(changes)
            if last:
                return changed, folder_state
            self._check_budget()

    def _calendar_entries(self, window_start, window_end):
        """Every calendar entry overlapping the window, listed sub-window by sub-window.

        Exchange answers a CalendarView with at most EwsFindCountLimit
        entries and no way to page on, so each sub-window asks for
        ``calendar_max_entries`` (at most the limit); a full answer may be
        cut, and its sub-window is split in two and asked again.  The budget
        is checked between sub-windows: a run that stops computes nothing
        from a partial listing (removals especially).
        """
        account = self.account
        calendar = self._call(lambda: account.calendar, "EWS GetFolder calendar")
        limit = self.calendar_max_entries
        fields = list(EVENT_FIELDS)
        if account.version.build >= EXCHANGE_2013:
            fields.append(JOIN_URL_FIELD)
        todo = []
        start = window_start
        while start < window_end:
            todo.append((start, min(window_end, start + CALENDAR_SUBWINDOW)))
            start = todo[-1][1]
        todo.reverse()
        entries = {}
        while todo:
            self._check_budget()
            start, end = todo.pop()
            view = calendar.view(start=_ews_datetime(start), end=_ews_datetime(end), max_items=limit)
            view = view.only(*fields)
            view.page_size = limit
            found = self._call(lambda view=view: list(view), "EWS FindItem CalendarView")
            if len(found) >= limit:
                if end - start <= timedelta(minutes=1):
                    raise ExchangeError(
                        f"More than {limit} calendar entries between {start} and {end}",
                        code="ErrorExceededFindCountLimit",
                    )
                middle = start + timedelta(seconds=(end - start).total_seconds() // 2)
                todo += [(middle, end), (start, middle)]
                continue
            for event in found:
                # An entry spanning sub-windows is listed in each of them.
                entries.setdefault(event.id, event)
        return sorted(entries.values(), key=lambda event: (_utc(event.start), event.id))

    # -- contacts -----------------------------------------------------------

    def ensure_contact_folder(self, name):
        """Return the contact folder ``name`` below Contacts, creating it if missing (empty: Contacts)."""
        account = self.account
        contacts = self._call(lambda: account.contacts, "EWS GetFolder contacts")
        if not name:
            return RemoteFolder(id=contacts.id, display_name=contacts.name or "Contacts",
                                path=contacts.name or "Contacts")
        wanted = name.casefold()

        def existing():
            return next((c for c in self._children(contacts) if (c.name or "").casefold() == wanted), None)

        node = existing()
        if node is None:
            node = Folder(parent=contacts, name=name, folder_class="IPF.Contact")
            try:
                self._call(node.save, "EWS CreateFolder", idempotent=False)
            except ExchangeError as error:
                # Our unanswered create may have worked: look before the caller tries again.
                node = existing() if error.outcome_unknown else None
                if node is None:
                    raise
        return RemoteFolder(
            id=node.id,
            display_name=node.name or name,
            path=f"{contacts.name}/{node.name or name}",
            parent_id=contacts.id,
        )

    def list_marked_contacts(self, folder):
        """The folder's contacts with the marker: FindItem pages of 1000 asking only for the marker."""
        target = self._folder(folder.id)
        marker_path = FieldPath(field=Contact.get_field_by_fieldname(MARKER_FIELD))

        def listing():
            # FindItem returns short string properties: no GetItem per 100 contacts, as a
            # QuerySet would do for any extended property (exchangelib counts them as complex).
            items = FindItem(account=target.account, page_size=CONTACT_LIST_PAGE).call(
                folders=[target], additional_fields={marker_path}, restriction=None, order_fields=None,
                shape=ID_ONLY, query_string=None, depth="Shallow", calendar_view=None, max_items=None,
                offset=0,
            )
            return [
                MarkedContact(item.id, getattr(item, MARKER_FIELD), item.changekey)
                for item in items
                if isinstance(item, Contact) and getattr(item, MARKER_FIELD, None)
            ]

        return self._call(listing, "EWS FindItem contacts")

    def get_contact(self, contact_id):
        """Read one contact (GetItem of every contact field and the marker)."""
        account = self.account
        found = self._call(lambda: list(account.fetch(ids=[(contact_id, None)])), "EWS GetItem contact")
        item = found[0] if found else None
        if item is None or isinstance(item, Exception):
            raise _translate(item) if isinstance(item, Exception) else ItemNotFound(contact_id)
        return contact_from_ews(item)

    def push_contacts(self, folder, changes):
        """Apply contact changes in order with CreateItem/UpdateItem/DeleteItem, 100 contacts per request.

        Each request is retried as a whole when Exchange is busy (it then
        processed none of it); per-contact errors come back as ``ok=False``.
        A CreateItem left without an answer is not sent again: its contacts
        come back with ``error_code="OutcomeUnknown"``.  When a request fails
        (time budget spent, ...) the results already obtained are kept and
        the remaining changes come back ``ok=False`` with the error's name
        (``"TimeBudgetExceeded"``...).
        """
        results = [None] * len(changes)
        target = self._folder(folder.id)
        account = self.account
        runs = list(_runs_of_same_op(changes, CONTACT_CHUNK))
        for number, (op, chunk) in enumerate(runs):
            try:
                self._check_budget()
                answers = self._call(
                    lambda op=op, chunk=chunk: self._contact_request(
                        account, op, target, [changes[i] for i in chunk]
                    ),
                    f"EWS contacts {op}",
                    idempotent=op != "create",
                )
            except ExchangeError as stop:
                # Keep what earlier requests did: the caller must store those ids.
                _logger.warning("contact %s for %s stopped: %s", op, self.account_email, stop)
                for index in chunk:
                    if stop.outcome_unknown:
                        results[index] = ContactResult.outcome_unknown(changes[index], stop)
                    else:
                        results[index] = ContactResult.not_applied(changes[index], stop)
                for _op, rest in runs[number + 1 :]:
                    for index in rest:
                        results[index] = ContactResult.not_applied(changes[index], stop)
                break
            for index, answer in zip(chunk, answers, strict=True):
                results[index] = _contact_result(changes[index], answer)
        return results

    @staticmethod
    def _contact_request(account, op, target, chunk):
        if op == "create":
            items = [
                _fill_contact(Contact(account=account, folder=target), change.contact) for change in chunk
            ]
            return list(account.bulk_create(folder=target, items=items, chunk_size=CONTACT_CHUNK))
        if op == "update":
            items = [
                (
                    _fill_contact(
                        Contact(
                            account=account, folder=target, id=change.remote_id, changekey=change.change_key
                        ),
                        change.contact,
                    ),
                    _CONTACT_UPDATE_FIELDS,
                )
                for change in chunk
            ]
            return list(account.bulk_update(items=items, chunk_size=CONTACT_CHUNK))
        return list(
            account.bulk_delete(
                ids=[(change.remote_id, None) for change in chunk],
                delete_type=HARD_DELETE,
                chunk_size=CONTACT_CHUNK,
            )
        )

    def close(self):
        """Release the backend; its protocol stays open for the user's next backend in this process.

        A protocol whose sign-in was refused or whose connection failed is closed and forgotten.
        """
        if self._account is None:
            return
        if self._protocol_suspect:
            _drop_protocol(self._account.protocol)
        else:
            # The next backend of this user in this process reuses its authenticated connections.
            _keep_protocol(self._account.protocol)
        self._account = None


_MIME_CONTENT_PATH = FieldPath(field=Message.get_field_by_fieldname("mime_content"))
#: Chunks in which a streamed answer is read from the connection.
STREAM_CHUNK = 1024 * 1024
_NOT_BASE64 = re.compile(rb"[^A-Za-z0-9+/=]")
_MIME_CONTENT = f"{TNS} MimeContent"
_RESPONSE_MESSAGE = f"{MNS} GetItemResponseMessage"
_RESPONSE_CODE = f"{MNS} ResponseCode"


class _MimeContentReader:
    """A GetItem answer read as it arrives: MimeContent decoded into ``spool``, the response code kept."""

    def __init__(self):
        self.spool = new_spool()
        self.found = False
        self.response_class = None
        self.response_code = None
        self._pending = bytearray()
        self._in = None
        self._code = []
        parser = xml.parsers.expat.ParserCreate(namespace_separator=" ")
        parser.StartElementHandler = self._start
        parser.EndElementHandler = self._end
        parser.CharacterDataHandler = self._data
        self._parser = parser

    def feed(self, chunk):
        self._parser.Parse(chunk, False)

    def close(self):
        self._parser.Parse(b"", True)  # an answer cut short is no complete document: ExpatError

    def _start(self, name, attrs):
        if name == _RESPONSE_MESSAGE:
            self.response_class = attrs.get("ResponseClass")
        elif name in (_MIME_CONTENT, _RESPONSE_CODE):
            self._in = name
            self.found = self.found or name == _MIME_CONTENT

    def _end(self, name):
        if name == _MIME_CONTENT:
            self._decode(final=True)
        elif name == _RESPONSE_CODE:
            self.response_code = "".join(self._code).strip()
        if name == self._in:
            self._in = None

    def _data(self, text):
        if self._in == _MIME_CONTENT:
            self._pending += _NOT_BASE64.sub(b"", text.encode("ascii", "ignore"))
            if len(self._pending) >= 1 << 16:
                self._decode()
        elif self._in == _RESPONSE_CODE:
            self._code.append(text)

    def _decode(self, final=False):
        pending = self._pending
        cut = len(pending) if final else len(pending) - len(pending) % 4
        if cut:
            self.spool.write(base64.b64decode(bytes(pending[:cut])))
            del pending[:cut]


def _runs_of_same_op(changes, size):
    """(op, [indexes]) chunks of consecutive changes with the same op: the given order is kept."""
    run_op, run = None, []
    for index, change in enumerate(changes):
        if change.op not in ("create", "update", "delete"):
            raise ValueError(f"Unknown contact operation {change.op!r}")
        if run and (change.op != run_op or len(run) == size):
            yield run_op, run
            run = []
        run_op = change.op
        run.append(index)
    if run:
        yield run_op, run


def _contact_result(change, answer):
    if isinstance(answer, Exception):
        if change.op == "delete" and isinstance(answer, ews_errors.ErrorItemNotFound):
            return ContactResult(change.local_ref, change.op, True, change.remote_id)
        return ContactResult(
            change.local_ref,
            change.op,
            False,
            change.remote_id,
            error_code=_error_code(answer),
            error_message=str(answer),
        )
    if change.op == "delete":
        return ContactResult(change.local_ref, change.op, True, change.remote_id)
    item_id, changekey = (answer.id, answer.changekey) if hasattr(answer, "id") else answer
    return ContactResult(change.local_ref, change.op, True, item_id, changekey)


def _translate(exc):
    """Map an exchangelib per-item/per-request error to our exception types (keeping the code)."""
    code = _error_code(exc)
    if isinstance(exc, ews_errors.ErrorFolderNotFound):
        return FolderNotFound(str(exc), code=code)
    if isinstance(exc, ews_errors.ErrorItemNotFound):
        return ItemNotFound(str(exc), code=code)
    if isinstance(exc, ews_errors.ErrorInvalidSyncStateData):
        return SyncStateExpired(str(exc), code=code)
    return ExchangeError(str(exc), code=code)


def _ews_datetime(value):
    if value.tzinfo is None:
        raise ValueError("Calendar windows need timezone-aware datetimes")
    return EWSDateTime.from_datetime(value.astimezone(timezone.utc)).astimezone(UTC)
