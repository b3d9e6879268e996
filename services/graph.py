"""Microsoft Graph v1.0 backend (Office 365 mailboxes).

One ``requests.Session`` per backend, ``trust_env`` off so ``verify`` (a CA
bundle path or True) is what is used, a timeout on every call and always
``Prefer: IdType="ImmutableId"`` so that ids survive moves between folders.

- Access tokens come from an injected ``token_provider(force_refresh=False) -> str``
  (see :mod:`services.auth`); after a 401 ``InvalidAuthenticationToken`` the
  backend asks once for a fresh token, then raises
  :class:`~services.errors.AuthenticationError`.
- Messages are listed with ``/mailFolders/{id}/messages/delta``: the state is
  the ``@odata.nextLink`` (in the middle) or ``@odata.deltaLink`` (at the end),
  both opaque URLs that resume where the listing stopped; 410 Gone
  (``syncStateNotFound``/``resyncRequired``) restarts from scratch with ``reset``.
- Events are listed with ``/calendarView/delta`` (which takes no ``$select``)
  in UTC; the state is a small JSON document holding the window and the link,
  because a delta link only covers the window it was started with.
- Contacts are pushed with ``$batch`` (at most 20 requests each), chained with
  ``dependsOn`` so the mailbox never runs more than one of them at a time;
  items answered 429/503 (or 424 because an earlier link of the chain failed)
  are sent again, and only those; a batch item has its own ``Prefer`` header,
  the outer one does not reach it.
- A POST (``$batch``, folder create, move) is never sent again once it may
  have reached Microsoft (read timeout, dropped connection, 502/504): the
  error then has ``outcome_unknown`` set.
"""

import base64
import binascii
import json
import logging
import re
from datetime import datetime, timezone
from urllib.parse import quote

import requests

from .auth import new_http_session
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
from .contact_mapping import MARKER_GRAPH_ID, split_street, street_lines
from .errors import (
    AuthenticationError,
    BatchBodyNotBase64,
    ConnectionProblem,
    ExchangeError,
    FolderNotFound,
    ItemNotFound,
    SyncStateExpired,
    ThrottledError,
    TimeBudgetExceeded,
    connection_problem,
)
from .throttle import Retryable, RetryPolicy, mailbox_slot, throttled

_logger = logging.getLogger(__name__)

GRAPH_URL = "https://graph.microsoft.com/v1.0"
BATCH_LIMIT = 20
MESSAGE_FIELDS = (
    "id,internetMessageId,subject,sender,from,toRecipients,ccRecipients,bccRecipients,"
    "receivedDateTime,sentDateTime,hasAttachments,isRead,changeKey,parentFolderId"
)
#: MAPI's PR_MESSAGE_SIZE (PidTagMessageSize): Graph v1.0 has no ``size`` on a message, the listing
#: asks for this property so that big mails are known before their source is fetched.
MESSAGE_SIZE_PROPERTY = "Integer 0x0E08"
#: Chunks in which a streamed source is read from the connection.
STREAM_CHUNK = 1024 * 1024
#: First path components that name well-known folders: reached by name, whatever the mailbox's language.
WELL_KNOWN_FOLDERS = {
    "inbox": "inbox",
    "sent items": "sentitems",
    "sentitems": "sentitems",
    "deleted items": "deleteditems",
    "deleteditems": "deleteditems",
    "drafts": "drafts",
    "archive": "archive",
    "junk email": "junkemail",
    "junkemail": "junkemail",
    "outbox": "outbox",
}
#: Answers after which any request may be sent again: Microsoft did not run it.
_NOT_EXECUTED_STATUS = {429, 503}
#: Gateway answers: the request may have run behind the gateway, so only idempotent ones are sent again.
_GATEWAY_STATUS = {502, 504}
_IDEMPOTENT_METHODS = {"GET", "HEAD", "PUT", "PATCH", "DELETE"}
_GRAPH_DATETIME = re.compile(r"^(\d{4}-\d\d-\d\dT\d\d:\d\d(?::\d\d)?)(?:\.(\d+))?(Z|[+-]\d\d:?\d\d)?$")
_ATTENDEE_RESPONSES = {
    "accepted": "accepted",
    "declined": "declined",
    "tentativelyaccepted": "tentative",
    "organizer": "organizer",
}
_EVENT_TYPES = {
    "singleinstance": "single",
    "occurrence": "occurrence",
    "exception": "exception",
    "seriesmaster": "series_master",
}


def odata_quote(value):
    """A string literal for ``$filter``: single quotes doubled, as OData requires."""
    return "'" + value.replace("'", "''") + "'"


def _url_id(item_id):
    return quote(item_id, safe="=")


def parse_graph_datetime(value):
    """Parse Graph's ``2024-05-01T09:00:00.0000000`` (7 fraction digits), a ``dateTimeTimeZone`` dict
    or an ISO string with ``Z``/offset, as an aware UTC datetime.

    Naive values are UTC: every call that reads events asks ``outlook.timezone="UTC"``.
    """
    if isinstance(value, dict):
        value = value.get("dateTime")
    if not value:
        return None
    match = _GRAPH_DATETIME.match(value.strip())
    if not match:
        raise ValueError(f"Unexpected Graph date/time {value!r}")
    main, fraction, offset = match.groups()
    parsed = datetime.fromisoformat(main + ("." + fraction[:6].ljust(6, "0") if fraction else ""))
    if offset and offset != "Z":
        parsed = parsed.replace(tzinfo=datetime.strptime(offset.replace(":", ""), "%z").tzinfo)
    else:
        parsed = parsed.replace(tzinfo=timezone.utc)
    return parsed.astimezone(timezone.utc)


def _address(node):
    email = (node or {}).get("emailAddress") or {}
    if not email.get("address") and not email.get("name"):
        return None
    return RemoteAddress(address=email.get("address") or "", name=email.get("name") or "")


def _addresses(nodes):
    return [address for address in map(_address, nodes or []) if address]


def message_from_graph(node):
    """Map a Graph ``message`` resource to :class:`RemoteMessage`."""
    return RemoteMessage(
        id=node["id"],
        internet_message_id=node.get("internetMessageId"),
        subject=node.get("subject") or "",
        sender=_address(node.get("sender")),
        from_=_address(node.get("from")),
        to=_addresses(node.get("toRecipients")),
        cc=_addresses(node.get("ccRecipients")),
        bcc=_addresses(node.get("bccRecipients")),
        received=parse_graph_datetime(node.get("receivedDateTime")),
        sent=parse_graph_datetime(node.get("sentDateTime")),
        has_attachments=bool(node.get("hasAttachments")),
        is_read=bool(node.get("isRead")),
        change_key=node.get("changeKey"),
        folder_id=node.get("parentFolderId"),
        size=_message_size(node),
    )


def _property_tag(property_id):
    """``("integer", 0xe08)`` of a tagged extended property id ("Integer 0x0E08"); None for others."""
    kind, _, tag = (property_id or "").strip().partition(" ")
    try:
        return kind.casefold(), int(tag.strip(), 16)
    except ValueError:
        return None


def _message_size(node):
    """The size Exchange gives the message (``PidTagMessageSize``, when expanded), None if absent."""
    wanted = _property_tag(MESSAGE_SIZE_PROPERTY)
    for prop in node.get("singleValueExtendedProperties") or []:
        if _property_tag(prop.get("id")) == wanted:
            try:
                return int(prop.get("value"))
            except (TypeError, ValueError):
                return None
    return None


def _recurrence_from_graph(node):
    if not node:
        return None
    pattern = node.get("pattern") or {}
    rrange = node.get("range") or {}
    return {
        "type": pattern.get("type"),
        "interval": pattern.get("interval") or 1,
        "days_of_week": pattern.get("daysOfWeek") or [],
        "day_of_month": pattern.get("dayOfMonth") or None,
        "month": pattern.get("month") or None,
        "index": pattern.get("index"),
        "first_day_of_week": pattern.get("firstDayOfWeek"),
        "range_type": rrange.get("type"),
        "start_date": rrange.get("startDate"),
        "end_date": rrange.get("endDate") if rrange.get("type") == "endDate" else None,
        "count": rrange.get("numberOfOccurrences") if rrange.get("type") == "numbered" else None,
    }


def event_from_graph(node):
    """Map a Graph ``event`` resource (read with ``outlook.timezone="UTC"``) to :class:`RemoteEvent`."""
    attendees = []
    for attendee in node.get("attendees") or []:
        email = attendee.get("emailAddress") or {}
        status = ((attendee.get("status") or {}).get("response") or "none").lower()
        attendees.append(
            RemoteAttendee(
                address=email.get("address") or "",
                name=email.get("name") or "",
                response=_ATTENDEE_RESPONSES.get(status, "none"),
                type=(attendee.get("type") or "required").lower(),
            )
        )
    return RemoteEvent(
        id=node["id"],
        ical_uid=node.get("iCalUId"),
        series_master_id=node.get("seriesMasterId"),
        type=_EVENT_TYPES.get((node.get("type") or "singleInstance").lower(), "single"),
        subject=node.get("subject") or "",
        body_html=(node.get("body") or {}).get("content") or "",
        start=parse_graph_datetime(node.get("start")),
        end=parse_graph_datetime(node.get("end")),
        is_all_day=bool(node.get("isAllDay")),
        location=(node.get("location") or {}).get("displayName") or "",
        organizer=_address(node.get("organizer")),
        attendees=attendees,
        sensitivity=(node.get("sensitivity") or "normal").lower(),
        show_as=node.get("showAs") or "busy",
        is_cancelled=bool(node.get("isCancelled")),
        categories=list(node.get("categories") or []),
        change_key=node.get("changeKey"),
        recurrence=_recurrence_from_graph(node.get("recurrence")),
        original_start=parse_graph_datetime(node.get("originalStart")),
        online_meeting_url=(
            node.get("onlineMeetingUrl") or (node.get("onlineMeeting") or {}).get("joinUrl") or ""
        ),
        reminder_minutes=node.get("reminderMinutesBeforeStart") if node.get("isReminderOn") else None,
        my_response=_ATTENDEE_RESPONSES.get(
            ((node.get("responseStatus") or {}).get("response") or "none").lower(), "none"),
    )


def contact_to_graph(contact):
    """Map :class:`RemoteContact` to a Graph ``contact`` body (empty values clear the remote ones).

    The marker, when set, goes in ``singleValueExtendedProperties`` (it never changes, so writing
    it again on an update is harmless).
    """
    body = {
        "givenName": contact.given_name or None,
        "surname": contact.surname or None,
        "displayName": contact.display_name or None,
        "companyName": contact.company_name or None,
        "jobTitle": contact.job_title or None,
        "emailAddresses": [
            {"address": email, "name": contact.display_name or email} for email in contact.emails[:3]
        ],
        "businessPhones": [contact.business_phone] if contact.business_phone else [],
        "mobilePhone": contact.mobile_phone or None,
        "businessAddress": {
            "street": street_lines(contact) or None,
            "city": contact.city or None,
            "state": contact.state or None,
            "postalCode": contact.zip or None,
            "countryOrRegion": contact.country or None,
        },
        "businessHomePage": contact.website or None,
        "personalNotes": contact.notes or None,
        "categories": list(contact.categories),
    }
    if contact.marker:
        body["singleValueExtendedProperties"] = [{"id": MARKER_GRAPH_ID, "value": contact.marker}]
    return body


def _marker_of(node):
    for prop in node.get("singleValueExtendedProperties") or []:
        if (prop.get("id") or "").casefold() == MARKER_GRAPH_ID.casefold():
            return prop.get("value") or None
    return None


def contact_from_graph(node):
    """Map a Graph ``contact`` (with the marker expanded) to :class:`RemoteContact`."""
    address = node.get("businessAddress") or {}
    street, street2 = split_street(address.get("street"))
    phones = node.get("businessPhones") or []
    return RemoteContact(
        id=node.get("id"),
        change_key=node.get("changeKey"),
        given_name=node.get("givenName") or "",
        surname=node.get("surname") or "",
        display_name=node.get("displayName") or "",
        company_name=node.get("companyName") or "",
        job_title=node.get("jobTitle") or "",
        emails=[a.get("address") for a in node.get("emailAddresses") or [] if a.get("address")],
        business_phone=phones[0] if phones else "",
        mobile_phone=node.get("mobilePhone") or "",
        street=street,
        street2=street2,
        city=address.get("city") or "",
        zip=address.get("postalCode") or "",
        state=address.get("state") or "",
        country=address.get("countryOrRegion") or "",
        website=node.get("businessHomePage") or "",
        notes=node.get("personalNotes") or "",
        categories=list(node.get("categories") or []),
        marker=_marker_of(node),
    )


#: ``$expand`` that brings the marker property along with a contact.
_EXPAND_MARKER = quote(
    f"singleValueExtendedProperties($filter=id eq {odata_quote(MARKER_GRAPH_ID)})", safe="()'=$"
)
#: ``$expand`` that brings the message size along with a listed message.
_EXPAND_MESSAGE_SIZE = quote(
    f"singleValueExtendedProperties($filter=id eq {odata_quote(MESSAGE_SIZE_PROPERTY)})", safe="()'=$"
)
#: The id the default Contacts folder goes by (Graph reaches it as ``/contacts``).
DEFAULT_CONTACT_FOLDER = "contacts"


def _batch_binary(item):
    """The bytes of a ``$batch`` answer: binary ones come base64 in ``body``, JSON ones as objects.

    A text answer (``text/*``, ``message/*``) may come as the text itself: strict base64 (no line
    breaks, which every mail source has) tells the two apart. Anything else that is no base64
    raises :class:`BatchBodyNotBase64` rather than return garbage as a mail.
    """
    body = item.get("body")
    if body is None:
        return b""
    if not isinstance(body, str):
        return json.dumps(body).encode()
    try:
        return base64.b64decode(body, validate=True)
    except binascii.Error:
        headers = {str(name).lower(): str(value) for name, value in (item.get("headers") or {}).items()}
        if headers.get("content-type", "").lower().startswith(("text/", "message/")):
            return body.encode("utf-8", "surrogateescape")
        raise BatchBodyNotBase64(
            f"A $batch answer of type {headers.get('content-type') or 'unknown'} is neither base64 nor text.",
            code="BatchBodyNotBase64", status=item.get("status"),
        ) from None


def _batch_mime(item):
    """The MIME source of a ``$batch`` answer, or the error that makes this one mail fail."""
    try:
        return _batch_binary(item)
    except BatchBodyNotBase64 as error:
        return error


def _batch_error(item):
    """The :class:`ExchangeError` of a failed ``$batch`` item, with Graph's code."""
    status = item["status"]
    body = item.get("body")
    error = body.get("error") if isinstance(body, dict) else None
    error = error if isinstance(error, dict) else {}
    inner = error.get("innerError") if isinstance(error.get("innerError"), dict) else {}
    kind = ItemNotFound if status == 404 else ExchangeError
    return kind(
        error.get("message") or f"Graph error {status}",
        code=error.get("code") or f"HTTP{status}",
        status=status,
        request_id=inner.get("request-id"),
    )


def _error_of(response):
    """(code, message, request_id) from a Graph error answer (JSON or not)."""
    try:
        error = response.json().get("error") or {}
    except ValueError:
        error = {}
    if not isinstance(error, dict):
        error = {"code": str(error)}
    inner = error.get("innerError") or error.get("innererror") or {}
    request_id = inner.get("request-id") or response.headers.get("request-id")
    return error.get("code"), error.get("message") or response.reason or "", request_id


def _retry_after(headers):
    value = (headers or {}).get("Retry-After") or (headers or {}).get("retry-after")
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None


class GraphBackend(MailboxBackend):
    """A mailbox reached through Microsoft Graph.

    :param account_email: the mailbox's SMTP address (also the concurrency-limit key).
    :param token_provider: ``callable(force_refresh=False) -> str`` returning an access token.
    :param graph_url: ``https://graph.microsoft.com/v1.0`` or a local tenant's ``graph_url``.
    :param verify: CA bundle path or True.
    :param app_only: the token is an application token: address ``/users/{account_email}`` instead of ``/me``.
    :param budget: a :class:`~services.throttle.RunBudget` for the run (may be replaced between runs).
    :param page_size: ``odata.maxpagesize`` asked for listings (Graph may send less).
    """

    def __init__(
        self,
        account_email,
        token_provider,
        graph_url=GRAPH_URL,
        verify=True,
        app_only=False,
        budget=None,
        retry_policy=None,
        timeout=(10, 60),
        page_size=100,
    ):
        self.account_email = account_email
        self.token_provider = token_provider
        self.graph_url = graph_url.rstrip("/")
        self.root = f"/users/{quote(account_email, safe='@')}" if app_only else "/me"
        self.budget = budget
        self.retry_policy = retry_policy or RetryPolicy()
        self.timeout = timeout
        self.page_size = page_size
        self.session = new_http_session(verify)
        self.session.headers.update({"Accept": "application/json", "Prefer": 'IdType="ImmutableId"'})
        self._token = None

    # -- HTTP ---------------------------------------------------------------

    def _url(self, path):
        if path.startswith("https://") or path.startswith("http://"):
            return path
        return f"{self.graph_url}{self.root}{path}"

    def _bearer(self, force_refresh=False):
        if self._token is None or force_refresh:
            self._token = self.token_provider(force_refresh=force_refresh)
        return self._token

    def _request(
        self, method, path, json_body=None, prefer=(), not_found=ItemNotFound, raw=False, idempotent=None,
        consume=None,
    ):
        """Send one request with retries; return the parsed JSON (or the response when ``raw``).

        ``consume(response)`` reads a successful answer's body as it arrives, within the
        request's slot of the mailbox (a body being received is a request in flight); what it
        returns is returned.

        ``idempotent`` (default: by method, POST is not) decides what is
        retried: a request that may have reached Microsoft (read timeout,
        dropped connection, 502/504) is sent again only when idempotent, so
        that a create never runs twice; a non-idempotent one then raises
        with ``outcome_unknown`` set.  Connection failures before sending,
        429 and 503 (Microsoft did not run the request) are always retried.
        """
        url = self._url(path)
        if idempotent is None:
            idempotent = method.upper() in _IDEMPOTENT_METHODS
        headers = {}
        if prefer:
            headers["Prefer"] = ", ".join(('IdType="ImmutableId"',) + tuple(prefer))
        refreshed = [False]
        what = f"Graph {method} {url.split('?')[0]}"

        def attempt():
            headers["Authorization"] = "Bearer " + self._bearer()
            try:
                with mailbox_slot(self.account_email):
                    response = self.session.request(
                        method, url, json=json_body, headers=headers, timeout=self.timeout,
                        stream=consume is not None,
                    )
                    if consume is not None and response.status_code < 400:
                        return (consume(response),)
            except (requests.exceptions.Timeout, requests.exceptions.ConnectionError) as exc:
                problem = connection_problem(exc, self.graph_url)
                if isinstance(exc, requests.exceptions.ConnectTimeout):
                    raise Retryable(problem) from exc  # nothing was sent
                if problem.transient and idempotent:
                    raise Retryable(problem) from exc
                problem.outcome_unknown = problem.transient
                raise problem from exc
            status = response.status_code
            if status < 400:
                return response
            code, message, request_id = _error_of(response)
            _logger.info("%s answered %s %s (request-id %s)", what, status, code, request_id)
            if status == 401:
                if not refreshed[0]:
                    refreshed[0] = True
                    self._bearer(force_refresh=True)
                    return attempt()
                raise AuthenticationError(
                    f"Microsoft Graph refused the access token: {message}",
                    kind="token",
                    code=code,
                    status=status,
                    request_id=request_id,
                )
            if status == 403:
                raise AuthenticationError(
                    f"Access denied by Microsoft Graph: {message}",
                    kind="consent",
                    code=code,
                    status=status,
                    request_id=request_id,
                )
            if status == 429:
                raise throttled(
                    message or "Too many requests",
                    code or "TooManyRequests",
                    _retry_after(response.headers),
                    status,
                    request_id,
                )
            if status == 503 or (status in _GATEWAY_STATUS and idempotent):
                raise Retryable(
                    ExchangeError(
                        message or "Service unavailable", code=code, status=status, request_id=request_id
                    ),
                    _retry_after(response.headers),
                )
            if status in _GATEWAY_STATUS:
                error = ExchangeError(
                    message or "Bad gateway", code=code, status=status, request_id=request_id
                )
                error.outcome_unknown = True
                raise error
            if status == 404:
                raise not_found(message or "Not found", code=code, status=status, request_id=request_id)
            if status == 410:
                raise SyncStateExpired(
                    message or "Sync state expired", code=code, status=status, request_id=request_id
                )
            raise ExchangeError(
                message or f"Graph error {status}", code=code, status=status, request_id=request_id
            )

        response = self.retry_policy.call(attempt, budget=self.budget, what=what)
        if consume is not None:
            return response[0]
        if raw:
            return response
        if response.status_code == 204 or not response.content:
            return {}
        return response.json()

    # -- mailbox and folders ------------------------------------------------

    def whoami(self):
        """Return the signed-in (or addressed) mailbox."""
        node = self._request("GET", "?$select=mail,userPrincipalName,displayName")
        return RemoteMailbox(
            email=node.get("mail") or node.get("userPrincipalName") or self.account_email,
            display_name=node.get("displayName") or "",
        )

    def _child_folder(self, parent_id, name):
        query = quote(f"displayName eq {odata_quote(name)}", safe="'")
        found = (
            self._request(
                "GET",
                f"/mailFolders/{_url_id(parent_id)}/childFolders?$filter={query}",
                not_found=FolderNotFound,
            ).get("value")
            or []
        )
        wanted = name.casefold()
        return next((node for node in found if (node.get("displayName") or "").casefold() == wanted), None)

    def _walk(self, names, create):
        if not names:
            raise FolderNotFound("Empty folder path")
        well_known = WELL_KNOWN_FOLDERS.get(names[0].casefold())
        if well_known:
            node = self._request("GET", f"/mailFolders/{well_known}", not_found=FolderNotFound)
        else:
            node = self._find_or_create("msgfolderroot", names[0], create)
        if node is None:
            return None
        parts = [node.get("displayName") or names[0]]
        for name in names[1:]:
            parent_id = node["id"]
            node = self._find_or_create(parent_id, name, create)
            if node is None:
                return None
            parts.append(node.get("displayName") or name)
        return RemoteFolder(
            id=node["id"], display_name=parts[-1], path="/".join(parts), parent_id=node.get("parentFolderId")
        )

    def _find_or_create(self, parent_id, name, create):
        node = self._child_folder(parent_id, name)
        if node is None and create:
            try:
                node = self._request(
                    "POST",
                    f"/mailFolders/{_url_id(parent_id)}/childFolders",
                    json_body={"displayName": name},
                    not_found=FolderNotFound,
                )
            except ExchangeError as error:
                if error.code != "ErrorFolderExists" and not error.outcome_unknown:
                    raise
                # Created meanwhile by another worker, or by our own unanswered request.
                node = self._child_folder(parent_id, name)
                if node is None:
                    raise
        return node

    # -- messages -----------------------------------------------------------

    def _delta_pages(self, first_url, state, parse, prefer, wrap_state=lambda link: link):
        """Follow a delta listing from ``state`` (or ``first_url``), restarting on 410."""
        url = state or first_url
        reset = False
        if not url.startswith(self.graph_url + "/"):
            # Never send the mailbox's token elsewhere: a link for another endpoint is a lost state.
            _logger.warning("Ignoring a saved delta link of another endpoint for %s", self.account_email)
            url, reset = first_url, True
        while True:
            self._check_budget()
            try:
                page = self._request("GET", url, prefer=prefer, not_found=FolderNotFound)
            except SyncStateExpired as expired:
                if url == first_url or reset:
                    raise  # a fresh listing expiring again: leave it to the next run
                _logger.info(
                    "Graph sync state expired (%s) for %s: full resync", expired.code, self.account_email
                )
                url, reset = first_url, True
                continue
            items, removed = [], []
            for node in page.get("value") or []:
                if "@removed" in node:
                    removed.append(node["id"])
                else:
                    items.append(parse(node))
            next_link = page.get("@odata.nextLink")
            delta_link = page.get("@odata.deltaLink")
            if not next_link and not delta_link:
                raise ExchangeError("Graph delta page without nextLink or deltaLink", code="InvalidDeltaPage")
            yield SyncPage(
                items=items,
                removed_ids=removed,
                state=wrap_state(next_link or delta_link),
                done=not next_link,
                reset=reset,
            )
            if not next_link:
                return
            url = next_link

    def sync_messages(self, folder, state, recipients=True):
        """Delta listing of ``folder``; ``state`` is the last page's nextLink / deltaLink.

        The recipients come with the listing at no extra request: ``recipients`` changes nothing.
        """
        first = (f"/mailFolders/{_url_id(folder.id)}/messages/delta?$select={MESSAGE_FIELDS}"
                 f"&$expand={_EXPAND_MESSAGE_SIZE}")
        return self._delta_pages(
            self._url(first), state, message_from_graph, prefer=(f"odata.maxpagesize={self.page_size}",)
        )

    def get_mime(self, message_id):
        """Return the message's MIME source (``/messages/{id}/$value``)."""
        return self._request("GET", f"/messages/{_url_id(message_id)}/$value", raw=True).content

    def get_mime_file(self, message_id):
        """Stream the message's MIME source (``/messages/{id}/$value``) into a spooled file.

        A connection that breaks in the middle raises :class:`~services.errors.ConnectionProblem`
        (nothing of the source is returned): the message stays to be fetched by the next run.
        """
        return self._request("GET", f"/messages/{_url_id(message_id)}/$value", consume=self._spool_body)

    def _spool_body(self, response):
        spool = new_spool()
        try:
            with response:
                for chunk in response.iter_content(STREAM_CHUNK):
                    spool.write(chunk)
            # urllib3 1.x does not check that the body is as long as announced: a connection
            # closed in the middle would otherwise look like a complete (truncated) source.
            announced = response.headers.get("Content-Length")
            received = spool.tell()
            if announced and not response.headers.get("Content-Encoding") and received != int(announced):
                raise ConnectionProblem(
                    f"The connection to Microsoft Graph broke after {received} of the {announced} bytes "
                    "of a mail's source.", kind="refused", transient=True, code="IncompleteRead")
            spool.seek(0)
        except ConnectionProblem:
            spool.close()
            raise
        except (requests.exceptions.RequestException, OSError) as exc:
            spool.close()
            problem = connection_problem(exc, self.graph_url)
            problem.transient = True
            raise problem from exc
        except BaseException:
            spool.close()
            raise
        return spool

    def get_mimes(self, message_ids):
        """Return ``{id: MIME bytes | ExchangeError}`` with ``$batch`` calls of at most 20 ``$value`` GETs.

        Binary answers come back base64-encoded in the batch; a missing message maps to
        :class:`~services.errors.ItemNotFound`.
        """
        answers = self._batch_per_message(
            message_ids, lambda message_id: ("GET", f"/messages/{_url_id(message_id)}/$value")
        )
        return {
            message_id: _batch_mime(item) if 200 <= item["status"] < 300 else _batch_error(item)
            for message_id, item in answers.items()
        }

    def delete_messages(self, message_ids, hard=False):
        """Delete messages with $batch calls of at most 20: ``{id: None | ExchangeError}``, gone = deleted."""

        def request(message_id):
            if hard:
                return ("POST", f"/messages/{_url_id(message_id)}/permanentDelete")
            return ("DELETE", f"/messages/{_url_id(message_id)}")

        answers = self._batch_per_message(message_ids, request)
        return {
            message_id: None if 200 <= item["status"] < 300 or item["status"] == 404 else _batch_error(item)
            for message_id, item in answers.items()
        }

    def _batch_per_message(self, message_ids, request_for):
        """Run ``request_for(id) -> (method, path)`` for each id in ``$batch`` calls: ``{id: answer item}``.

        The items of a batch are chained with ``dependsOn`` (Graph runs a batch fully parallel
        or fully sequential; in parallel, 20 requests would meet the mailbox's limit of four
        concurrent ones), so one batch holds one of the mailbox's request slots. An item throttled
        (429/503), answered by a gateway (502/504, the requests are idempotent) or skipped because
        its chain broke (424) is sent again in a later batch, within the retry policy.
        """
        results = {}
        attempts = {}
        pending = list(dict.fromkeys(message_ids))
        policy = self.retry_policy
        waited = 0.0
        while pending:
            batch, pending = pending[:BATCH_LIMIT], pending[BATCH_LIMIT:]
            self._check_budget()
            requests_ = []
            for index, message_id in enumerate(batch):
                method, path = request_for(message_id)
                request = {
                    "id": str(index),
                    "method": method,
                    "url": f"{self.root}{path}",
                    "headers": {"Prefer": 'IdType="ImmutableId"'},
                }
                if method == "POST":
                    # Graph refuses a batch whose write item has no body or no Content-Type.
                    request["body"] = {}
                    request["headers"]["Content-Type"] = "application/json"
                if index:
                    request["dependsOn"] = [str(index - 1)]
                requests_.append(request)
            # Its items are idempotent: sending the batch again cannot do anything twice.
            answer = self._request(
                "POST", f"{self.graph_url}/$batch", json_body={"requests": requests_}, idempotent=True
            )
            answers = {str(r.get("id")): r for r in answer.get("responses") or []}
            retry, hints = [], []
            for index, message_id in enumerate(batch):
                item = dict(answers.get(str(index)) or {"status": 424})
                item["status"] = status = int(item.get("status") or 0)
                attempts[message_id] = attempts.get(message_id, 0) + (status != 424)
                resendable = status == 424 or status in _NOT_EXECUTED_STATUS or status in _GATEWAY_STATUS
                if resendable and attempts[message_id] < policy.max_attempts:
                    retry.append(message_id)
                    if status != 424:
                        hints.append(_retry_after(item.get("headers") or {}))
                    continue
                results[message_id] = item
            pending = retry + pending
            if hints:
                known = [hint for hint in hints if hint is not None]
                wait = policy.delay(max(attempts[m] for m in retry) - 1, max(known) if known else None)
                remaining = self.budget.remaining() if self.budget is not None else None
                if remaining is not None and wait >= remaining:
                    raise TimeBudgetExceeded(
                        "The run's time budget ends before Microsoft answers more requests."
                    )
                if waited + wait > policy.max_total_wait:
                    raise ThrottledError(
                        "Microsoft keeps throttling the requests",
                        retry_after=wait,
                        code="TooManyRequests",
                    )
                policy.sleep(wait)
                waited += wait
        return results

    def move_message(self, message_id, dest):
        """Move the message; with immutable ids the returned id equals ``message_id``."""
        node = self._request(
            "POST", f"/messages/{_url_id(message_id)}/move", json_body={"destinationId": dest.id}
        )
        return node.get("id") or message_id

    def delete_message(self, message_id, hard=False):
        """Move the message to Deleted Items, or delete it for good (``permanentDelete``) when ``hard``."""
        try:
            if hard:
                # Sent twice, the second finds nothing (404), which is the expected end state.
                self._request("POST", f"/messages/{_url_id(message_id)}/permanentDelete", idempotent=True)
            else:
                self._request("DELETE", f"/messages/{_url_id(message_id)}")
        except ItemNotFound:
            _logger.debug("message already gone")

    # -- calendar -----------------------------------------------------------

    def sync_events(self, window_start, window_end, state):
        """Delta listing of the calendar view in the window (UTC).

        The state is JSON ``{"window": [start, end], "link": nextLink|deltaLink}``;
        a state for another window is dropped and the listing starts over with ``reset``.
        """
        window = window_bounds(window_start, window_end)
        saved, reset_window = saved_window_state(state, window)
        link = saved.get("link")
        first = self._url(
            f"/calendarView/delta?startDateTime={quote(window[0])}&endDateTime={quote(window[1])}"
        )

        def wrap(next_or_delta):
            return json.dumps({"window": window, "link": next_or_delta})

        for page in self._delta_pages(
            first,
            link,
            event_from_graph,
            wrap_state=wrap,
            prefer=(f"odata.maxpagesize={self.page_size}", 'outlook.timezone="UTC"'),
        ):
            page.reset = page.reset or reset_window
            yield page

    # -- contacts -----------------------------------------------------------

    def ensure_contact_folder(self, name):
        """Return the contact folder ``name`` (below Contacts), creating it if missing.

        An empty ``name`` is the default Contacts folder (id ``"contacts"``: Graph reaches it as
        ``/contacts``).
        """
        if not name:
            return RemoteFolder(id=DEFAULT_CONTACT_FOLDER, display_name="Contacts", path="Contacts")
        node = self._contact_folder(name)
        if node is None:
            try:
                node = self._request("POST", "/contactFolders", json_body={"displayName": name})
            except ExchangeError as error:
                # Our unanswered create may have worked: look before the caller tries again.
                node = self._contact_folder(name) if error.outcome_unknown else None
                if node is None:
                    raise
        return RemoteFolder(
            id=node["id"],
            display_name=node.get("displayName") or name,
            path=node.get("displayName") or name,
            parent_id=node.get("parentFolderId"),
        )

    def _contact_folder(self, name):
        query = quote(f"displayName eq {odata_quote(name)}", safe="'")
        found = self._request("GET", f"/contactFolders?$filter={query}").get("value") or []
        return next((n for n in found if (n.get("displayName") or "").casefold() == name.casefold()), None)

    def _contacts_of(self, folder):
        if folder.id == DEFAULT_CONTACT_FOLDER:
            return "/contacts"
        return f"/contactFolders/{_url_id(folder.id)}/contacts"

    def list_marked_contacts(self, folder):
        """The folder's contacts with the marker, listed by pages of 1000 (id, change key, marker only)."""
        path = f"{self._contacts_of(folder)}?$select=id,changeKey&$expand={_EXPAND_MARKER}&$top=1000"
        found = []
        while path:
            self._check_budget()
            answer = self._request("GET", path)
            for node in answer.get("value") or []:
                marker = _marker_of(node)
                if marker:
                    found.append(MarkedContact(node["id"], marker, node.get("changeKey")))
            path = answer.get("@odata.nextLink")
        return found

    def get_contact(self, contact_id):
        """Read one contact with its marker."""
        path = f"/contacts/{_url_id(contact_id)}?$expand={_EXPAND_MARKER}"
        return contact_from_graph(self._request("GET", path))

    def _contact_request(self, folder, change):
        if change.op == "create":
            return {
                "method": "POST",
                "url": f"{self.root}{self._contacts_of(folder)}",
                "headers": {"Content-Type": "application/json"},
                "body": contact_to_graph(change.contact),
            }
        if change.op == "update":
            return {
                "method": "PATCH",
                "url": f"{self.root}/contacts/{_url_id(change.remote_id)}",
                "headers": {"Content-Type": "application/json"},
                "body": contact_to_graph(change.contact),
            }
        if change.op == "delete":
            return {"method": "DELETE", "url": f"{self.root}/contacts/{_url_id(change.remote_id)}"}
        raise ValueError(f"Unknown contact operation {change.op!r}")

    def push_contacts(self, folder, changes):
        """Apply contact changes with ``$batch`` calls of at most 20 requests.

        Requests in one batch are chained with ``dependsOn`` (the mailbox
        runs them one after the other, within Microsoft's concurrency
        limit); a request throttled (429) or skipped because an earlier
        link failed (424) is sent again in a later batch.  When the run's
        time budget ends, the changes not yet applied come back with
        ``error_code="TimeBudgetExceeded"`` rather than losing the results
        of those that were.
        """
        results = [None] * len(changes)
        attempts = [0] * len(changes)
        pending = list(range(len(changes)))
        policy = self.retry_policy
        waited = 0.0
        while pending:
            batch, pending = pending[:BATCH_LIMIT], pending[BATCH_LIMIT:]
            try:
                self._check_budget()
                answers = self._send_batch(folder, changes, batch)
            except ExchangeError as stop:
                # Keep what earlier batches did: the caller must store those ids.
                _logger.warning("contact batch for %s stopped: %s", self.account_email, stop)
                for index in batch:
                    if stop.outcome_unknown:
                        results[index] = ContactResult.outcome_unknown(changes[index], stop)
                    else:
                        results[index] = ContactResult.not_applied(changes[index], stop)
                for index in pending:
                    results[index] = ContactResult.not_applied(changes[index], stop)
                break
            retry, throttled_hints = [], []
            for index in batch:
                status, headers, body = answers.get(str(index), (424, {}, {}))
                if status == 424:
                    # Only an earlier link of the chain failed; the head of every
                    # batch depends on nothing, so each batch makes progress.
                    retry.append(index)
                    continue
                if (
                    self._item_may_be_resent(changes[index], status)
                    and attempts[index] + 1 < policy.max_attempts
                ):
                    attempts[index] += 1
                    retry.append(index)
                    throttled_hints.append(_retry_after(headers))
                    continue
                results[index] = self._contact_result(changes[index], status, body)
            pending = retry + pending
            if throttled_hints:
                hints = [hint for hint in throttled_hints if hint is not None]
                hint = max(hints) if hints else None
                wait = policy.delay(max(attempts[i] for i in retry) - 1, hint)
                remaining = self.budget.remaining() if self.budget is not None else None
                # Sending before Retry-After ends only prolongs the throttling: leave them to the next run.
                stop = None
                if remaining is not None and wait >= remaining:
                    stop = TimeBudgetExceeded(
                        "The run's time budget ends before Microsoft accepts more contact changes."
                    )
                elif waited + wait > policy.max_total_wait:
                    stop = ThrottledError(
                        "Microsoft keeps throttling the contact changes",
                        retry_after=hint,
                        code="TooManyRequests",
                    )
                if stop is not None:
                    for index in pending:
                        results[index] = ContactResult.not_applied(changes[index], stop)
                    break
                policy.sleep(wait)
                waited += wait
        return results

    @staticmethod
    def _item_may_be_resent(change, status):
        """A batch item answered ``status`` can be sent again without running twice."""
        if status in _NOT_EXECUTED_STATUS:
            return True
        return status in _GATEWAY_STATUS and change.op != "create"

    def _send_batch(self, folder, changes, indexes):
        requests_ = []
        previous = None
        for index in indexes:
            request = dict(self._contact_request(folder, changes[index]), id=str(index))
            # The outer Prefer does not reach batch items (on Graph as well): ask for immutable ids here.
            request["headers"] = dict(request.get("headers") or {}, Prefer='IdType="ImmutableId"')
            if previous is not None:
                request["dependsOn"] = [previous]
            requests_.append(request)
            previous = str(index)
        answer = self._request("POST", f"{self.graph_url}/$batch", json_body={"requests": requests_})
        return {
            str(r.get("id")): (int(r.get("status") or 0), r.get("headers") or {}, r.get("body") or {})
            for r in answer.get("responses") or []
        }

    @staticmethod
    def _contact_result(change, status, body):
        if 200 <= status < 300 or (change.op == "delete" and status == 404):
            body = body if isinstance(body, dict) else {}
            remote_id = body.get("id") or change.remote_id
            return ContactResult(
                change.local_ref,
                change.op,
                True,
                remote_id,
                None if change.op == "delete" else body.get("changeKey"),
            )
        error = (body or {}).get("error") if isinstance(body, dict) else None
        error = error if isinstance(error, dict) else {}
        _logger.warning("contact %s failed: %s %s", change.op, status, error.get("code"))
        return ContactResult(
            change.local_ref,
            change.op,
            False,
            change.remote_id,
            error_code=error.get("code") or f"HTTP{status}",
            error_message=error.get("message") or "",
        )

    def close(self):
        """Close the HTTP session."""
        self.session.close()
