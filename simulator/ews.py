"""EWS of the local tenant: ``/EWS/Exchange.asmx`` as an on-premises Exchange 2016 serves it.

``EwsApp(tenant)`` is a WSGI application. It authenticates with Basic or NTLM (``ews_auth``), applies
the tenant's knobs (throttling → ``ErrorServerBusy`` SOAP fault with ``BackOffMilliseconds``, 503) and
answers the operations exchangelib uses for mail, calendar and contacts from the shared ``Store``.

Set ``tenant.ews_server_profile = "Exchange2010_SP2"`` to make the endpoint behave like an Exchange
2010 SP2 server (its ServerVersionInfo, and ErrorInvalidServerVersion for newer RequestServerVersion
values, which makes exchangelib negotiate down).
"""

import base64
import binascii
import collections
import email.message
import email.policy
import email.utils
import hashlib
import hmac
import json
import logging
import os
import threading
import time
from datetime import datetime, timezone

from lxml import etree

from . import ews_items as items_xml
from .ews_auth import AuthFailed, EwsAuthenticator
from .ews_items import Shape
from .ews_xml import (
    EXCHANGE_2010_SP2_VERSION,
    EXCHANGE_2016_VERSION,
    M_NS,
    REQUEST_VERSIONS,
    XSI_NS,
    SchemaError,
    envelope,
    fault,
    m,
    message_xml_values,
    parse_datetime,
    parse_request,
    response_message,
    response_root,
    sub,
    t,
    xml_bool,
)
from .knobs import Refused, cut_body
from .store import is_well_formed_id

_logger = logging.getLogger(__name__)

# Body size Exchange accepts by default (maxRequestLength in web.config is 64 MB on 2016); keep it modest.
MAX_REQUEST_BYTES = 64 * 1024 * 1024
# How many request/response bodies the app keeps for schema checks in tests.
RECORDED_BODIES = 2000
ROOT_ID_TAG = b"R"
KNOWN_DISTINGUISHED = set(items_xml.DISTINGUISHED_TO_STORE) | {"root"}


class EwsError(Exception):
    """An error answered in a ResponseMessage (ResponseClass="Error")."""

    def __init__(self, code, text=None):
        super().__init__(text or code)
        self.code = code
        self.text = text or code


class EwsFault(Exception):
    """An error answered as a SOAP fault (HTTP 500)."""

    def __init__(self, code, text, message_xml=None, status=500):
        super().__init__(text)
        self.code = code
        self.text = text
        self.message_xml = message_xml
        self.status = status


class RequestContext:
    """What an operation handler needs: the mailbox acted on, the parsed request, the app's settings."""

    def __init__(self, app, mailbox, request, knobs):
        self.app = app
        self.mailbox = mailbox
        self.request = request
        self.knobs = knobs


class EwsApp:
    """WSGI application serving ``/EWS/Exchange.asmx`` for one tenant."""

    def __init__(self, tenant):
        self.tenant = tenant
        self.authenticator = EwsAuthenticator(tenant.store)
        # Recent (operation, request bytes, response bytes, status) for schema validation in tests.
        self.recorded = collections.deque(maxlen=RECORDED_BODIES)
        self._recorded_lock = threading.Lock()
        self._sync_secret = os.urandom(32)
        self._operations = {
            "ConvertId": self.convert_id,
            "GetFolder": self.get_folder,
            "FindFolder": self.find_folder,
            "CreateFolder": self.create_folder,
            "FindItem": self.find_item,
            "GetItem": self.get_item,
            "SyncFolderItems": self.sync_folder_items,
            "CreateItem": self.create_item,
            "UpdateItem": self.update_item,
            "DeleteItem": self.delete_item,
            "MoveItem": self.move_item,
            "CopyItem": self.copy_item,
            "GetAttachment": self.get_attachment,
        }

    # ------------------------------------------------------------------------------------- HTTP layer
    @property
    def server_profile(self):
        """ "Exchange2016" (default) or "Exchange2010_SP2", read from the tenant so tests can switch it."""
        return getattr(self.tenant, "ews_server_profile", None) or "Exchange2016"

    def _version_info(self):
        return (
            EXCHANGE_2010_SP2_VERSION if self.server_profile == "Exchange2010_SP2" else EXCHANGE_2016_VERSION
        )

    def __call__(self, environ, start_response):
        body = self._read_body(environ)
        status, headers, payload, operation, mailbox_email = self._handle(environ, body)
        headers = list(headers) + [("Content-Length", str(len(payload)))]
        start_response(status, headers)
        code = int(status.split(" ", 1)[0])
        self._record(operation, body, payload, code)
        self._log(environ, operation, mailbox_email, code)
        knobs = self.tenant.knobs.get(mailbox_email) if mailbox_email else None
        if (knobs and knobs.cut_mime_after_bytes is not None and operation == "GetItem"
                and b"MimeContent" in payload):
            return cut_body(environ, payload, knobs.cut_mime_after_bytes)
        return [payload]

    @staticmethod
    def _read_body(environ):
        try:
            length = int(environ.get("CONTENT_LENGTH") or 0)
        except ValueError:
            length = 0
        stream = environ.get("wsgi.input")
        if stream is None or length <= 0:
            return b""
        # Always drain the body, also for a 401: the connection must stay usable for the NTLM handshake.
        return stream.read(min(length, MAX_REQUEST_BYTES))

    def _handle(self, environ, body):
        if environ.get("REQUEST_METHOD") != "POST":
            return (
                "405 Method Not Allowed",
                [("Allow", "POST"), ("Content-Type", "text/plain")],
                b"",
                None,
                None,
            )
        try:
            mailbox, _ = self.authenticator.authenticate(environ)
        except AuthFailed as exc:
            headers = [("WWW-Authenticate", value) for value in exc.challenges]
            headers.append(("Content-Type", "text/html"))
            return "401 Unauthorized", headers, b"", None, None
        try:
            request = parse_request(body)
        except SchemaError as exc:
            return self._fault_response(EwsFault("ErrorSchemaValidation", str(exc))) + (None, mailbox.email)
        operation = request.operation_name
        try:
            self._check_version(request)
            target = self._target_mailbox(mailbox, request)
            with self.tenant.knobs.admit("ews", "ews", target.email) as knobs:
                handler = self._operations.get(operation)
                if handler is None or etree.QName(request.operation).namespace != M_NS:
                    raise EwsFault(
                        "ErrorInvalidRequest", f"The request is invalid: unknown operation {operation}."
                    )
                context = RequestContext(self, target, request, knobs)
                with self.tenant.store.lock:
                    try:
                        result = handler(context, request.operation)
                    except (EwsFault, Refused):
                        raise
                    except Exception as exc:
                        # A simulator bug must still look like Exchange to the client under test.
                        _logger.exception("EWS %s failed", operation)
                        raise EwsFault(
                            "ErrorInternalServerError", f"An internal server error occurred: {exc}"
                        ) from exc
            payload = envelope(result, self._version_info())
            return "200 OK", [("Content-Type", "text/xml; charset=utf-8")], payload, operation, target.email
        except EwsFault as exc:
            return self._fault_response(exc) + (operation, mailbox.email)
        except Refused as refused:
            if refused.status == 503:
                return (
                    "503 Service Unavailable",
                    [("Content-Type", "text/html"), ("Retry-After", str(int(refused.retry_after)))],
                    b"<html><body>Service Unavailable</body></html>",
                    operation,
                    mailbox.email,
                )
            busy = EwsFault(
                "ErrorServerBusy",
                "The server cannot service this request right now. Try again later.",
                message_xml=message_xml_values(
                    t("MessageXml"), {"BackOffMilliseconds": int(float(refused.retry_after) * 1000)}
                ),
            )
            return self._fault_response(busy) + (operation, mailbox.email)

    def _fault_response(self, exc):
        payload = envelope(fault(exc.code, exc.text, exc.message_xml), self._version_info())
        return f"{exc.status} Internal Server Error", [("Content-Type", "text/xml; charset=utf-8")], payload

    def _check_version(self, request):
        requested = request.request_version
        if requested is None:
            return
        if requested not in REQUEST_VERSIONS:
            raise EwsFault("ErrorInvalidServerVersion", "The specified server version is invalid.")
        if self.server_profile == "Exchange2010_SP2" and (
            REQUEST_VERSIONS.index(requested) > REQUEST_VERSIONS.index("Exchange2010_SP2")
        ):
            raise EwsFault("ErrorInvalidServerVersion", "The specified server version is invalid.")

    def _target_mailbox(self, mailbox, request):
        # Without impersonation rights every caller works in its own mailbox, as a plain Exchange user does.
        if request.impersonated_smtp and request.impersonated_smtp.lower() != mailbox.email.lower():
            raise EwsFault(
                "ErrorImpersonateUserDenied",
                "The account does not have permission to impersonate the requested user.",
            )
        return mailbox

    def _record(self, operation, request_body, response_body, status):
        with self._recorded_lock:
            self.recorded.append((operation, request_body, response_body, status))

    @staticmethod
    def _log(environ, operation, mailbox_email, status):
        # server.py writes one request-log entry per request; EWS fills in what only it knows.
        entry = environ.get("simulator.log_entry")
        if entry is None:
            return
        entry["protocol"] = "ews"
        if operation:
            entry["operation"] = operation
            entry["endpoint"] = operation
        if mailbox_email:
            entry["mailbox"] = mailbox_email
            entry["app"] = "ews"

    # ------------------------------------------------------------------------------------- id helpers
    def root_id(self, mailbox):
        """Id of the mailbox's non-IPM root ("root"), parent of msgfolderroot."""
        return base64.urlsafe_b64encode(ROOT_ID_TAG + mailbox.uuid.bytes).decode("ascii").rstrip("=") + "AA"

    @staticmethod
    def check_id_format(value):
        """Raise ErrorInvalidIdMalformed for strings that cannot be EWS ids."""
        if not is_well_formed_id(value):
            raise EwsError("ErrorInvalidIdMalformed", "Id is malformed.")

    def resolve_folder(self, mailbox, folder_id_elem):
        """Store Folder (or the string "root") for a t:FolderId / t:DistinguishedFolderId element."""
        name = etree.QName(folder_id_elem).localname
        if name == "DistinguishedFolderId":
            mailbox_elem = folder_id_elem.find(f"{t('Mailbox')}/{t('EmailAddress')}")
            if (
                mailbox_elem is not None
                and mailbox_elem.text
                and mailbox_elem.text.strip().lower() != mailbox.email.lower()
            ):
                raise EwsError("ErrorAccessDenied", "Access is denied. Check credentials and try again.")
            distinguished = folder_id_elem.get("Id", "")
            if distinguished == "root":
                return "root"
            if distinguished not in items_xml.DISTINGUISHED_TO_STORE:
                raise EwsError("ErrorFolderNotFound", "The specified folder could not be found in the store.")
            try:
                return mailbox.folder(items_xml.DISTINGUISHED_TO_STORE[distinguished])
            except KeyError:
                raise EwsError(
                    "ErrorFolderNotFound", "The specified folder could not be found in the store."
                ) from None
        folder_id = folder_id_elem.get("Id", "")
        if folder_id == self.root_id(mailbox):
            return "root"
        self.check_id_format(folder_id)
        folder = mailbox.folders.get(folder_id)
        if folder is None:
            raise EwsError("ErrorFolderNotFound", "The specified folder could not be found in the store.")
        return folder

    def resolve_item(self, mailbox, item_id_elem):
        """Store item (or calendar Occurrence) for a t:ItemId / t:OccurrenceItemId element."""
        name = etree.QName(item_id_elem).localname
        if name == "OccurrenceItemId":
            master = self._item_or_error(mailbox, item_id_elem.get("RecurringMasterId", ""))
            index = int(item_id_elem.get("InstanceIndex", "1"))
            return self._occurrence_by_index(mailbox, master, index)
        if name == "RecurringMasterItemId":
            occurrence = self._item_or_error(mailbox, item_id_elem.get("OccurrenceId", ""))
            return getattr(occurrence, "event", occurrence)
        return self._item_or_error(mailbox, item_id_elem.get("Id", ""))

    def _item_or_error(self, mailbox, item_id):
        self.check_id_format(item_id)
        try:
            return mailbox.item(item_id)
        except KeyError:
            pass
        try:
            return mailbox.occurrence(item_id)
        except (KeyError, AttributeError):
            raise EwsError("ErrorItemNotFound", "The specified object was not found in the store.") from None

    @staticmethod
    def _occurrence_by_index(mailbox, master, index):
        recurrence = getattr(master, "recurrence", None)
        if recurrence is None or index < 1:
            raise EwsError(
                "ErrorCalendarOccurrenceIndexIsOutOfRecurrenceRange",
                "Occurrence index is out of recurrence range.",
            )
        from .store import occurrence_id, recurrence_dates, tz_for

        tz = timezone.utc if master.is_all_day else tz_for(master.time_zone)
        local_start = master.start.astimezone(tz)
        far = local_start.date().replace(year=local_start.year + 50)
        for position, day in enumerate(recurrence_dates(recurrence, local_start.date(), far), start=1):
            if position == index:
                original = datetime.combine(day, local_start.timetz().replace(tzinfo=None)).replace(tzinfo=tz)
                return mailbox.occurrence(occurrence_id(master, original.astimezone(timezone.utc)))
        raise EwsError(
            "ErrorCalendarOccurrenceIndexIsOutOfRecurrenceRange",
            "Occurrence index is out of recurrence range.",
        )

    # -------------------------------------------------------------------------------------- rendering
    def folder_xml(self, mailbox, folder, shape):
        """Folder element for a store Folder or the virtual "root"."""
        if folder == "root":
            root = _RootFolder(self.root_id(mailbox))
            children = 1
            return items_xml.folder_element(root, shape, (0, children, 0), distinguished="root")
        total, unread = mailbox.folder_counts(folder.id)
        children = len(mailbox.child_folders(folder.id))
        parent_id = folder.parent_id or self.root_id(mailbox)
        view = _FolderView(folder, parent_id)
        return items_xml.folder_element(
            view, shape, (total, children, unread), distinguished=folder.well_known
        )

    def item_xml(self, mailbox, item, shape):
        """Item element for a store item or an Occurrence."""
        folder = mailbox.folders.get(getattr(item, "folder_id", None))
        kind = getattr(item, "kind", None)
        if isinstance(item, _occurrence_class()) or kind == "event":
            master = item.event if isinstance(item, _occurrence_class()) else None
            return items_xml.calendar_item_element(item, shape, folder, master=master)
        if kind == "contact":
            return items_xml.contact_element(item, shape, folder)
        return items_xml.message_element(item, shape, folder)

    # ------------------------------------------------------------------------------------- operations
    def convert_id(self, ctx, op):
        """ConvertId: every format maps to the same id string (the store keeps one id format)."""
        root, messages = response_root("ConvertId")
        destination = op.get("DestinationFormat", "EwsId")
        source_ids = op.find(m("SourceIds"))
        for alternate in source_ids if source_ids is not None else []:
            value = alternate.get("Id", "")
            try:
                self.check_id_format(value)
                self._item_or_folder_exists(ctx.mailbox, value)
            except EwsError as exc:
                response_message(messages, "ConvertId", exc.code, exc.text)
                continue
            message = response_message(messages, "ConvertId")
            sub(
                message,
                m("AlternateId"),
                **{
                    f"{{{XSI_NS}}}type": "t:AlternateIdType",
                    "Format": destination,
                    "Id": value,
                    "Mailbox": alternate.get("Mailbox") or ctx.mailbox.email,
                },
            )
        return root

    def _item_or_folder_exists(self, mailbox, value):
        if value in mailbox.folders or value == self.root_id(mailbox):
            return
        self._item_or_error(mailbox, value)

    def get_folder(self, ctx, op):
        """GetFolder on FolderId / DistinguishedFolderId, one response message per id."""
        root, messages = response_root("GetFolder")
        shape = Shape(op.find(m("FolderShape")), items_xml.DEFAULT_FOLDER_FIELDS)
        for folder_id_elem in _children(op.find(m("FolderIds"))):
            try:
                folder = self.resolve_folder(ctx.mailbox, folder_id_elem)
            except EwsError as exc:
                response_message(messages, "GetFolder", exc.code, exc.text)
                continue
            message = response_message(messages, "GetFolder")
            sub(message, m("Folders")).append(self.folder_xml(ctx.mailbox, folder, shape))
        return root

    def _subfolders(self, mailbox, folder, deep):
        if folder == "root":
            top = mailbox.folder("msgfolderroot")
            return [top] + (self._subfolders(mailbox, top, True) if deep else [])
        result = []
        for child in mailbox.child_folders(folder.id):
            result.append(child)
            if deep:
                result.extend(self._subfolders(mailbox, child, True))
        return result

    def find_folder(self, ctx, op):
        """FindFolder with Shallow/Deep traversal, a Restriction and IndexedPageFolderView paging."""
        root, messages = response_root("FindFolder")
        shape = Shape(op.find(m("FolderShape")), items_xml.DEFAULT_FOLDER_FIELDS)
        deep = op.get("Traversal", "Shallow") == "Deep"
        restriction = op.find(m("Restriction"))
        view = op.find(m("IndexedPageFolderView"))
        for folder_id_elem in _children(op.find(m("ParentFolderIds"))):
            try:
                parent = self.resolve_folder(ctx.mailbox, folder_id_elem)
            except EwsError as exc:
                response_message(messages, "FindFolder", exc.code, exc.text)
                continue
            found = self._subfolders(ctx.mailbox, parent, deep)
            if restriction is not None and len(restriction):
                found = [
                    f
                    for f in found
                    if _matches(restriction[0], lambda uri, f=f: _folder_property(ctx.mailbox, f, uri))
                ]
            message = response_message(messages, "FindFolder")
            parent_elem, page = _paged_root_folder(message, found, view, ctx.knobs)
            folders_elem = sub(parent_elem, t("Folders"))
            for folder in page:
                folders_elem.append(self.folder_xml(ctx.mailbox, folder, shape))
        return root

    def create_folder(self, ctx, op):
        """CreateFolder below a parent; ErrorFolderExists for a duplicate sibling name."""
        root, messages = response_root("CreateFolder")
        parent_elem = op.find(m("ParentFolderId"))
        try:
            parent = self.resolve_folder(ctx.mailbox, parent_elem[0])
            if parent == "root":
                raise EwsError("ErrorAccessDenied", "Access is denied.")
        except EwsError as exc:
            for _ in _children(op.find(m("Folders"))):
                response_message(messages, "CreateFolder", exc.code, exc.text)
            return root
        for folder_elem in _children(op.find(m("Folders"))):
            name_elem = folder_elem.find(t("DisplayName"))
            class_elem = folder_elem.find(t("FolderClass"))
            default_class = {
                "CalendarFolder": "IPF.Appointment",
                "ContactsFolder": "IPF.Contact",
                "TasksFolder": "IPF.Task",
            }.get(etree.QName(folder_elem).localname, "IPF.Note")
            folder_class = class_elem.text if class_elem is not None and class_elem.text else default_class
            try:
                folder = ctx.mailbox.create_folder(
                    parent.id, (name_elem.text or "") if name_elem is not None else "", folder_class
                )
            except ValueError:
                response_message(
                    messages,
                    "CreateFolder",
                    "ErrorFolderExists",
                    "A folder with the specified name already exists.",
                )
                continue
            message = response_message(messages, "CreateFolder")
            created = sub(sub(message, m("Folders")), t(items_xml.FOLDER_TAGS.get(folder_class, "Folder")))
            created.append(items_xml.folder_id_element(folder))
        return root

    def find_item(self, ctx, op):
        """FindItem: IndexedPageItemView paging or CalendarView expansion, Restriction and SortOrder."""
        root, messages = response_root("FindItem")
        shape = Shape(op.find(m("ItemShape")), items_xml.DEFAULT_ITEM_FIELDS)
        associated = op.get("Traversal", "Shallow") == "Associated"
        restriction = op.find(m("Restriction"))
        sort_order = op.find(m("SortOrder"))
        calendar_view = op.find(m("CalendarView"))
        view = op.find(m("IndexedPageItemView"))
        for folder_id_elem in _children(op.find(m("ParentFolderIds"))):
            try:
                folder = self.resolve_folder(ctx.mailbox, folder_id_elem)
                if calendar_view is not None and (
                    folder == "root" or folder.folder_class != "IPF.Appointment"
                ):
                    raise EwsError(
                        "ErrorCalendarViewForNonCalendarFolder" if False else "ErrorInvalidOperation",
                        "CalendarView can only be used on calendar folders.",
                    )
            except EwsError as exc:
                response_message(messages, "FindItem", exc.code, exc.text)
                continue
            if folder == "root" or associated:
                found = []
            elif calendar_view is not None:
                start = parse_datetime(calendar_view.get("StartDate"))
                end = parse_datetime(calendar_view.get("EndDate"))
                if end < start:
                    response_message(
                        messages,
                        "FindItem",
                        "ErrorCalendarEndDateIsEarlierThanStartDate",
                        "The end date is earlier than the start date.",
                    )
                    continue
                found = ctx.mailbox.expand_calendar(folder.id, start, end)
            else:
                found = sorted(ctx.mailbox.items_in(folder.id), key=_default_sort_key, reverse=True)
            if restriction is not None and len(restriction):
                found = [
                    i for i in found if _matches(restriction[0], lambda uri, i=i: _item_property(i, uri))
                ]
            if sort_order is not None and calendar_view is None:
                found = _sorted(found, sort_order)
            if calendar_view is not None:
                limits = [int(limit) for limit in (calendar_view.get("MaxEntriesReturned"),) if limit]
                if ctx.knobs.find_count_limit:
                    limits.append(int(ctx.knobs.find_count_limit))
                page = found[: min(limits)] if limits else found
                last = len(page) == len(found)
                message = response_message(messages, "FindItem")
                parent_elem = sub(
                    message, m("RootFolder"), TotalItemsInView=len(page), IncludesLastItemInRange=last
                )
            else:
                message = response_message(messages, "FindItem")
                parent_elem, page = _paged_root_folder(message, found, view, ctx.knobs)
            items_elem = sub(parent_elem, t("Items"))
            for item in page:
                items_elem.append(self.item_xml(ctx.mailbox, item, shape))
        return root

    def get_item(self, ctx, op):
        """GetItem with ItemShape (AdditionalProperties, MimeContent, BodyType)."""
        root, messages = response_root("GetItem")
        shape = Shape(op.find(m("ItemShape")), items_xml.DEFAULT_ITEM_FIELDS)
        for item_id_elem in _children(op.find(m("ItemIds"))):
            try:
                item = self.resolve_item(ctx.mailbox, item_id_elem)
            except EwsError as exc:
                response_message(messages, "GetItem", exc.code, exc.text)
                continue
            message = response_message(messages, "GetItem")
            sub(message, m("Items")).append(self.item_xml(ctx.mailbox, item, shape))
        return root

    # -- SyncFolderItems
    def _encode_sync_state(self, mailbox, folder, position):
        base, upper, cursor = position
        payload = json.dumps(
            {"m": mailbox.id, "f": folder.id, "b": base, "u": upper, "c": cursor, "t": time.time()},
            separators=(",", ":"),
        ).encode()
        signature = hmac.new(self._sync_secret, payload, hashlib.sha256).digest()[:16]
        return base64.b64encode(signature + payload).decode("ascii")

    def _decode_sync_state(self, mailbox, folder, value, ttl):
        try:
            raw = base64.b64decode(value, validate=True)
            signature, payload = raw[:16], raw[16:]
            if not hmac.compare_digest(
                signature, hmac.new(self._sync_secret, payload, hashlib.sha256).digest()[:16]
            ):
                raise ValueError("bad signature")
            state = json.loads(payload)
            position = (int(state["b"]), state["u"], int(state["c"]))
        except (ValueError, binascii.Error, KeyError, TypeError):
            raise EwsError(
                "ErrorInvalidSyncStateData", "Synchronization state data is corrupt or otherwise invalid."
            ) from None
        if state.get("m") != mailbox.id or state.get("f") != folder.id:
            raise EwsError(
                "ErrorInvalidSyncStateData", "Synchronization state data is corrupt or otherwise invalid."
            )
        if ttl is not None and time.time() - state["t"] >= ttl:
            raise EwsError(
                "ErrorInvalidSyncStateData", "Synchronization state data is corrupt or otherwise invalid."
            )
        return position

    def sync_folder_items(self, ctx, op):
        """SyncFolderItems: changes since the SyncState's sequence number, MaxChangesReturned per call.

        The state is an HMAC-signed token holding (mailbox, folder, round, issued at); states older than
        the ``sync_state_ttl_seconds`` knob are refused with ErrorInvalidSyncStateData.  A round reports
        the changes between two sequence numbers (base, upper], coalesced once, page after page (cursor):
        paging never re-coalesces, so a client only hears of deletions of items it was given, and a
        fresh sync (base 0) reports only what is there.
        """
        root, messages = response_root("SyncFolderItems")
        shape = Shape(op.find(m("ItemShape")), items_xml.DEFAULT_ITEM_FIELDS)
        try:
            folder = self.resolve_folder(ctx.mailbox, op.find(m("SyncFolderId"))[0])
            if folder == "root":
                raise EwsError("ErrorInvalidOperation", "Items of this folder cannot be synchronised.")
            state_elem = op.find(m("SyncState"))
            base, upper, cursor = 0, None, 0
            if state_elem is not None and (state_elem.text or "").strip():
                base, upper, cursor = self._decode_sync_state(
                    ctx.mailbox, folder, state_elem.text.strip(), ctx.knobs.sync_state_ttl_seconds
                )
        except EwsError as exc:
            response_message(messages, "SyncFolderItems", exc.code, exc.text)
            return root
        max_changes = int((op.findtext(m("MaxChangesReturned")) or "100").strip())
        if not 1 <= max_changes <= 512:
            response_message(
                messages,
                "SyncFolderItems",
                "ErrorInvalidArgument",
                "MaxChangesReturned must be between 1 and 512.",
            )
            return root
        ignored = {e.get("Id") for e in _children(op.find(m("Ignore")))}
        if upper is None:
            upper = ctx.mailbox.current_seq
        changes, _high_water = ctx.mailbox.changes_since(folder.id, base, upto=upper)
        changes = sorted((c for c in changes if c.seq > cursor), key=lambda c: c.seq)
        if not base:
            changes = [c for c in changes if c.kind != "deleted"]
        page = changes[:max_changes]
        last = len(page) == len(changes)
        position = (upper, None, upper) if last else (base, upper, page[-1].seq)
        message = response_message(messages, "SyncFolderItems")
        sub(message, m("SyncState"), self._encode_sync_state(ctx.mailbox, folder, position))
        sub(message, m("IncludesLastItemInRange"), last)
        changes_elem = sub(message, m("Changes"))
        for change in page:
            if change.item_id in ignored:
                continue
            if change.kind == "deleted":
                sub(sub(changes_elem, t("Delete")), t("ItemId"), Id=change.item_id)
                continue
            try:
                item = ctx.mailbox.item(change.item_id)
            except KeyError:
                continue  # moved away again after the change was logged: its "deleted" comes later
            if change.kind == "read_flag" and base:
                flag_change = sub(changes_elem, t("ReadFlagChange"))
                sub(flag_change, t("ItemId"), Id=item.id, ChangeKey=item.change_key)
                sub(flag_change, t("IsRead"), item.is_read)
                continue
            wrapper = sub(changes_elem, t("Create" if change.kind == "created" else "Update"))
            wrapper.append(self.item_xml(ctx.mailbox, item, shape))
        return root

    # -- CreateItem
    def create_item(self, ctx, op):
        """CreateItem: contacts, calendar items, and messages (SaveOnly, SendOnly, SendAndSaveCopy)."""
        root, messages = response_root("CreateItem")
        disposition = op.get("MessageDisposition")
        saved_folder_elem = op.find(m("SavedItemFolderId"))
        for item_elem in _children(op.find(m("Items"))):
            kind = etree.QName(item_elem).localname
            try:
                folder = None
                if saved_folder_elem is not None and len(saved_folder_elem):
                    folder = self.resolve_folder(ctx.mailbox, saved_folder_elem[0])
                    if folder == "root":
                        raise EwsError("ErrorAccessDenied", "Access is denied.")
                created = self._create_one(ctx, kind, item_elem, folder, disposition)
            except EwsError as exc:
                response_message(messages, "CreateItem", exc.code, exc.text)
                continue
            message = response_message(messages, "CreateItem")
            items_elem = sub(message, m("Items"))
            if created is not None:
                sub(items_elem, t(kind)).append(items_xml.item_id_element(created))
        return root

    def _create_one(self, ctx, kind, item_elem, folder, disposition):
        mailbox = ctx.mailbox
        if kind == "Contact":
            fields = items_xml.contact_fields_from_xml(item_elem)
            return mailbox.add_contact(folder.id if folder else None, **fields)
        if kind == "CalendarItem":
            return mailbox.add_event(folder.id if folder else None, **_event_fields(item_elem))
        if kind == "Message":
            if disposition is None:
                raise EwsError(
                    "ErrorMessageDispositionRequired", "MessageDisposition is required for messages."
                )
            mime = _message_mime(item_elem, mailbox)
            is_read = xml_bool(item_elem.findtext(t("IsRead")))
            if disposition == "SaveOnly":
                target = folder or mailbox.folder("drafts")
                return mailbox.add_message(target.id, mime, is_read=is_read)
            self._deliver(mailbox, mime)
            if disposition == "SendAndSaveCopy":
                mailbox.add_message((folder or mailbox.folder("sentitems")).id, mime, is_read=True)
            return None
        raise EwsError("ErrorInvalidRequest", f"Creating items of type {kind} is not supported.")

    def _deliver(self, sender_mailbox, mime):
        parsed = email.message_from_bytes(mime, policy=email.policy.default)
        recipients = email.utils.getaddresses(
            [str(v) for h in ("To", "Cc", "Bcc") for v in (parsed.get_all(h) or [])]
        )
        for _, address in recipients:
            try:
                recipient = self.tenant.store.mailbox(address)
            except KeyError:
                continue  # external recipients leave the simulated organisation
            recipient.add_message(recipient.folder("inbox").id, mime, received=datetime.now(timezone.utc))

    # -- UpdateItem
    def update_item(self, ctx, op):
        """UpdateItem: SetItemField / AppendToItemField / DeleteItemField, ChangeKey conflict detection."""
        root, messages = response_root("UpdateItem")
        resolution = op.get("ConflictResolution", "AutoResolve")
        for change in _children(op.find(m("ItemChanges"))):
            id_elem = next(
                (
                    c
                    for c in change
                    if etree.QName(c).localname in ("ItemId", "OccurrenceItemId", "RecurringMasterItemId")
                ),
                None,
            )
            try:
                if id_elem is None:
                    raise EwsError("ErrorInvalidIdEmpty", "The item id is empty.")
                item = self.resolve_item(ctx.mailbox, id_elem)
                if (
                    getattr(item, "event", None) is not None
                    and getattr(item, "type", None) != "singleInstance"
                ):
                    raise EwsError("ErrorInvalidOperation", "Updating single occurrences is not supported.")
                change_key = id_elem.get("ChangeKey")
                if change_key and change_key != item.change_key and resolution != "AlwaysOverwrite":
                    raise EwsError(
                        "ErrorIrresolvableConflict",
                        "The send or update operation could not be "
                        "performed because the change key passed in the request does not match the "
                        "current change key for the item.",
                    )
                fields = self._update_fields(item, change.find(t("Updates")))
                updated = ctx.mailbox.update_item(item.id, **fields) if fields else item
            except EwsError as exc:
                response_message(messages, "UpdateItem", exc.code, exc.text)
                continue
            message = response_message(messages, "UpdateItem")
            tag = {"contact": "Contact", "event": "CalendarItem"}.get(updated.kind, "Message")
            sub(sub(message, m("Items")), t(tag)).append(items_xml.item_id_element(updated))
            sub(sub(message, m("ConflictResults")), t("Count"), 0)
        return root

    def _update_fields(self, item, updates):
        fields = {}
        for update in _children(updates):
            action = etree.QName(update).localname
            path = update[0]
            if action == "DeleteItemField":
                if item.kind == "contact":
                    fields.update(items_xml.deleted_contact_fields(path, _Merged(item, fields)))
                else:
                    fields.update(_deleted_generic_field(item, path.get("FieldURI")))
                continue
            value_elem = update[1] if len(update) > 1 else None
            if value_elem is None:
                raise EwsError(
                    "ErrorIncorrectUpdatePropertyCount",
                    "An object within a change description must contain one and only one property to modify.",
                )
            if item.kind == "contact":
                fields.update(items_xml.contact_fields_from_xml(value_elem, _Merged(item, fields)))
            elif item.kind == "event":
                fields.update(_event_fields(value_elem))
            else:
                fields.update(_message_fields(value_elem))
        return fields

    # -- DeleteItem / MoveItem / CopyItem
    def delete_item(self, ctx, op):
        """DeleteItem: Hard/SoftDelete remove from view; MoveToDeletedItems moves to Deleted Items."""
        root, messages = response_root("DeleteItem")
        delete_type = op.get("DeleteType", "MoveToDeletedItems")
        for item_id_elem in _children(op.find(m("ItemIds"))):
            try:
                item = self.resolve_item(ctx.mailbox, item_id_elem)
                if (
                    getattr(item, "event", None) is not None
                    and getattr(item, "type", None) != "singleInstance"
                ):
                    raise EwsError("ErrorInvalidOperation", "Deleting single occurrences is not supported.")
                deleted_items = ctx.mailbox.folder("deleteditems")
                if delete_type == "MoveToDeletedItems" and item.folder_id != deleted_items.id:
                    ctx.mailbox.move_item(item.id, deleted_items.id)
                else:
                    ctx.mailbox.delete_item(item.id, soft=False)
            except EwsError as exc:
                response_message(messages, "DeleteItem", exc.code, exc.text)
                continue
            response_message(messages, "DeleteItem")
        return root

    def move_item(self, ctx, op):
        """MoveItem: the moved item gets a new ItemId, as on Exchange."""
        return self._move_or_copy(ctx, op, "MoveItem", ctx.mailbox.move_item)

    def copy_item(self, ctx, op):
        """CopyItem into another folder."""
        return self._move_or_copy(ctx, op, "CopyItem", ctx.mailbox.copy_item)

    def _move_or_copy(self, ctx, op, operation, action):
        root, messages = response_root(operation)
        return_new_ids = xml_bool(op.findtext(m("ReturnNewItemIds")), default=True)
        try:
            destination = self.resolve_folder(ctx.mailbox, op.find(m("ToFolderId"))[0])
            if destination == "root":
                raise EwsError("ErrorAccessDenied", "Access is denied.")
        except EwsError as exc:
            for _ in _children(op.find(m("ItemIds"))):
                response_message(messages, operation, exc.code, exc.text)
            return root
        for item_id_elem in _children(op.find(m("ItemIds"))):
            try:
                item = self.resolve_item(ctx.mailbox, item_id_elem)
                if getattr(item, "event", None) is not None:
                    item = item.event
                result = action(item.id, destination.id)
            except EwsError as exc:
                response_message(messages, operation, exc.code, exc.text)
                continue
            message = response_message(messages, operation)
            items_elem = sub(message, m("Items"))
            if return_new_ids:
                tag = {"contact": "Contact", "event": "CalendarItem"}.get(result.kind, "Message")
                sub(items_elem, t(tag)).append(items_xml.item_id_element(result))
        return root

    def get_attachment(self, ctx, op):
        """GetAttachment for file attachments of messages (content base64 in t:Content)."""
        root, messages = response_root("GetAttachment")
        for attachment_id_elem in _children(op.find(m("AttachmentIds"))):
            try:
                try:
                    item_key, attachment_key = items_xml.parse_attachment_id(attachment_id_elem.get("Id", ""))
                except (ValueError, binascii.Error, UnicodeDecodeError):
                    raise EwsError("ErrorInvalidIdMalformed", "Id is malformed.") from None
                try:
                    item = ctx.mailbox.item(item_key)
                except KeyError:
                    raise EwsError(
                        "ErrorItemNotFound", "The specified object was not found in the store."
                    ) from None
                attachment = next(
                    (a for a in getattr(item, "attachments", None) or [] if a.id == attachment_key), None
                )
                if attachment is None:
                    raise EwsError("ErrorItemNotFound", "The specified object was not found in the store.")
            except EwsError as exc:
                response_message(messages, "GetAttachment", exc.code, exc.text)
                continue
            message = response_message(messages, "GetAttachment")
            sub(message, m("Attachments")).append(
                items_xml.attachment_element(item, attachment, include_content=True)
            )
        return root


# ------------------------------------------------------------------------------------------- helpers
class _RootFolder:
    """The non-IPM root folder, which the store does not model."""

    def __init__(self, folder_id):
        self.id = folder_id
        self.change_key = "AQAAAA=="
        self.parent_id = None
        self.display_name = ""
        self.folder_class = None
        self.well_known = "root"


class _FolderView:
    """A store Folder seen with its EWS parent (msgfolderroot's parent is the virtual root)."""

    def __init__(self, folder, parent_id):
        self._folder = folder
        self.parent_id = parent_id

    def __getattr__(self, name):
        return getattr(self._folder, name)


class _Merged:
    """An item with pending field changes applied, so several updates of one collection compose."""

    def __init__(self, item, fields):
        self._item = item
        self._fields = fields

    def __getattr__(self, name):
        if name in self._fields:
            return self._fields[name]
        return getattr(self._item, name)


def _occurrence_class():
    from .store import Occurrence

    return Occurrence


def _children(elem):
    return list(elem) if elem is not None else []


def _default_sort_key(item):
    return getattr(item, "received", None) or item.created


def _page(found, view, knobs):
    """Slice for an IndexedPage*View: (page, offset, includes last item)."""
    offset = 0
    limit = None
    if view is not None:
        limit = int(view.get("MaxEntriesReturned")) if view.get("MaxEntriesReturned") else None
        offset = int(view.get("Offset", "0"))
        if view.get("BasePoint") == "End":
            offset = max(len(found) - offset - (limit or 0), 0)
    if knobs is not None and getattr(knobs, "page_size", None):
        limit = min(limit, knobs.page_size) if limit else knobs.page_size
    if knobs is not None and knobs.find_count_limit:
        # EWSFindCountLimit caps every answer, whatever MaxEntriesReturned asked for.
        limit = min(limit, knobs.find_count_limit) if limit else knobs.find_count_limit
    page = found[offset : offset + limit] if limit else found[offset:]
    return page, offset, offset + len(page) >= len(found)


def _paged_root_folder(message, found, view, knobs):
    """The RootFolder element of an indexed-paged FindFolder / FindItem answer, and its page."""
    page, offset, last = _page(found, view, knobs)
    root = sub(message, m("RootFolder"), IndexedPagingOffset=offset + len(page),
               TotalItemsInView=len(found), IncludesLastItemInRange=last)
    return root, page


# Property getters for restrictions and sorting: field URI → comparable Python value.
def _item_property(item, uri):
    simple = {
        "item:Subject": lambda: (
            getattr(item, "subject", None) if item.kind != "contact" else item.display_name
        ),
        "item:DateTimeReceived": lambda: getattr(item, "received", None) or item.created,
        "item:DateTimeCreated": lambda: item.created,
        "item:DateTimeSent": lambda: getattr(item, "sent", None),
        "item:LastModifiedTime": lambda: item.last_modified,
        "item:ItemClass": lambda: {
            "message": "IPM.Note",
            "event": "IPM.Appointment",
            "contact": "IPM.Contact",
        }.get(item.kind),
        "item:Categories": lambda: list(getattr(item, "categories", None) or []),
        "item:HasAttachments": lambda: bool(getattr(item, "has_attachments", False)),
        "item:Importance": lambda: str(getattr(item, "importance", "normal")).capitalize(),
        "message:IsRead": lambda: bool(getattr(item, "is_read", False)),
        "message:InternetMessageId": lambda: getattr(item, "internet_message_id", None),
        "message:From": lambda: (getattr(item, "from_", None) or ("", ""))[1],
        "message:Sender": lambda: (getattr(item, "sender", None) or ("", ""))[1],
        "calendar:Start": lambda: getattr(item, "start", None),
        "calendar:End": lambda: getattr(item, "end", None),
        "calendar:UID": lambda: getattr(item, "ical_uid", None),
        "calendar:Location": lambda: getattr(item, "location", None),
        "contacts:DisplayName": lambda: getattr(item, "display_name", None),
        "contacts:GivenName": lambda: getattr(item, "given_name", None),
        "contacts:Surname": lambda: getattr(item, "surname", None),
        "contacts:CompanyName": lambda: getattr(item, "company_name", None),
    }
    getter = simple.get(uri)
    return getter() if getter else _MISSING


def _folder_property(mailbox, folder, uri):
    if folder == "root":
        return _MISSING
    getters = {
        "folder:DisplayName": lambda: folder.display_name,
        "folder:FolderClass": lambda: folder.folder_class,
        "folder:TotalCount": lambda: mailbox.folder_counts(folder.id)[0],
        "folder:UnreadCount": lambda: mailbox.folder_counts(folder.id)[1],
        "folder:ChildFolderCount": lambda: len(mailbox.child_folders(folder.id)),
    }
    getter = getters.get(uri)
    return getter() if getter else _MISSING


_MISSING = object()


def _constant(comparison, value_like):
    """The right-hand side of a comparison, converted to the type of the property value."""
    holder = comparison.find(t("FieldURIOrConstant"))
    constant = holder.find(t("Constant")) if holder is not None else comparison.find(t("Constant"))
    raw = constant.get("Value", "") if constant is not None else ""
    if isinstance(value_like, bool):
        return xml_bool(raw)
    if isinstance(value_like, datetime):
        return parse_datetime(raw)
    if isinstance(value_like, int):
        return int(raw)
    return raw


def _matches(node, get_property):
    """Evaluate a restriction SearchExpression against one object."""
    name = etree.QName(node).localname
    if name == "And":
        return all(_matches(child, get_property) for child in node)
    if name == "Or":
        return any(_matches(child, get_property) for child in node)
    if name == "Not":
        return not _matches(node[0], get_property)
    path = node[0] if len(node) else None
    uri = path.get("FieldURI") if path is not None else None
    value = get_property(uri) if uri else _MISSING
    if name == "Exists":
        return value is not _MISSING and value not in (None, "", [])
    if value is _MISSING or value is None:
        return name == "IsNotEqualTo"
    if name == "Contains":
        constant = node.find(t("Constant"))
        needle = constant.get("Value", "") if constant is not None else ""
        mode = node.get("ContainmentMode", "Substring")
        ignore_case = "IgnoreCase" in node.get("ContainmentComparison", "Exact")
        values = value if isinstance(value, list) else [str(value)]
        for candidate in values:
            haystack, probe = (candidate.lower(), needle.lower()) if ignore_case else (candidate, needle)
            if (
                (mode == "FullString" and haystack == probe)
                or (mode == "Prefixed" and haystack.startswith(probe))
                or (mode in ("Substring", "PrefixOnWords", "ExactPhrase") and probe in haystack)
            ):
                return True
        return False
    if isinstance(value, list):
        other = _constant(node, "")
        return (
            (other in value)
            if name == "IsEqualTo"
            else (other not in value)
            if name == "IsNotEqualTo"
            else False
        )
    other = _constant(node, value)
    if isinstance(value, str) and isinstance(other, str):
        value, other = value.lower(), other.lower()  # Exchange compares strings case-insensitively
    comparisons = {
        "IsEqualTo": lambda: value == other,
        "IsNotEqualTo": lambda: value != other,
        "IsGreaterThan": lambda: value > other,
        "IsGreaterThanOrEqualTo": lambda: value >= other,
        "IsLessThan": lambda: value < other,
        "IsLessThanOrEqualTo": lambda: value <= other,
    }
    compare = comparisons.get(name)
    if compare is None:
        raise EwsFault("ErrorUnsupportedQueryFilter", f"The restriction {name} is not supported.")
    return compare()


def _sorted(found, sort_order):
    # Stable sorts applied from the least to the most significant key.
    for field_order in reversed(list(sort_order)):
        uri = field_order[0].get("FieldURI") if len(field_order) else None
        descending = field_order.get("Order", "Ascending") == "Descending"

        def key(item, uri=uri):
            value = _item_property(item, uri)
            if value is _MISSING or value is None:
                return (0, "")
            return (1, value.lower() if isinstance(value, str) else value)

        found = sorted(found, key=key, reverse=descending)
    return found


def _mailbox_pair(elem):
    if elem is None:
        return None
    mailbox = elem.find(t("Mailbox"))
    if mailbox is None:
        return None
    return (mailbox.findtext(t("Name")) or "", mailbox.findtext(t("EmailAddress")) or "")


def _recipient_pairs(elem):
    if elem is None:
        return []
    return [
        (mb.findtext(t("Name")) or "", mb.findtext(t("EmailAddress")) or "")
        for mb in elem.findall(t("Mailbox"))
    ]


def _message_mime(item_elem, mailbox):
    """RFC 5322 bytes for a t:Message: its MimeContent, or built from Subject/Body/recipients."""
    mime_elem = item_elem.find(t("MimeContent"))
    if mime_elem is not None and (mime_elem.text or "").strip():
        try:
            return base64.b64decode(mime_elem.text.strip(), validate=False)
        except binascii.Error:
            raise EwsError(
                "ErrorMimeContentInvalidBase64String", "Invalid base64 string for MIME content."
            ) from None
    msg = email.message.EmailMessage(policy=email.policy.SMTP)
    sender = _mailbox_pair(item_elem.find(t("From"))) or (mailbox.display_name, mailbox.email)
    msg["From"] = email.utils.formataddr(sender)
    for header, tag in (("To", "ToRecipients"), ("Cc", "CcRecipients"), ("Bcc", "BccRecipients")):
        pairs = _recipient_pairs(item_elem.find(t(tag)))
        if pairs:
            msg[header] = ", ".join(email.utils.formataddr(p) for p in pairs)
    msg["Subject"] = item_elem.findtext(t("Subject")) or ""
    msg["Date"] = email.utils.format_datetime(datetime.now(timezone.utc))
    msg["Message-ID"] = email.utils.make_msgid(domain=mailbox.email.split("@")[-1])
    body = item_elem.find(t("Body"))
    if body is not None and body.get("BodyType") == "HTML":
        msg.set_content(body.text or "", subtype="html")
    else:
        msg.set_content(body.text if body is not None and body.text else "")
    return msg.as_bytes()


def _message_fields(value_elem):
    fields = {}
    for child in value_elem:
        name = etree.QName(child).localname
        if name == "IsRead":
            fields["is_read"] = xml_bool(child.text)
        elif name == "Subject":
            fields["subject"] = child.text or ""
        elif name == "Categories":
            fields["categories"] = [s.text or "" for s in child]
        elif name == "Importance":
            fields["importance"] = (child.text or "Normal").lower()
    return fields


def _deleted_generic_field(item, uri):
    return {
        "item:Categories": {"categories": []},
        "calendar:Location": {"location": ""},
        "item:Body": {"body_html": ""} if item.kind == "event" else {},
    }.get(uri, {})


def _event_fields(elem):
    """Store event fields from a t:CalendarItem (the properties clients set on appointments)."""
    fields = {}
    for child in elem:
        name = etree.QName(child).localname
        text = child.text or ""
        if name == "Subject":
            fields["subject"] = text
        elif name == "Body":
            fields["body_html"] = text if child.get("BodyType") == "HTML" else items_xml._text_to_html(text)
        elif name == "Start":
            fields["start"] = parse_datetime(text)
        elif name == "End":
            fields["end"] = parse_datetime(text)
        elif name == "IsAllDayEvent":
            fields["is_all_day"] = xml_bool(text)
        elif name == "Location":
            fields["location"] = text
        elif name == "Categories":
            fields["categories"] = [s.text or "" for s in child]
        elif name == "LegacyFreeBusyStatus":
            fields["show_as"] = {"NoData": "unknown"}.get(text, text[:1].lower() + text[1:])
        elif name == "Sensitivity":
            fields["sensitivity"] = text.lower()
        elif name in ("RequiredAttendees", "OptionalAttendees", "Resources"):
            kind = {"RequiredAttendees": "required", "OptionalAttendees": "optional"}.get(name, "resource")
            attendees = fields.setdefault("attendees", [])
            for attendee in child.findall(t("Attendee")):
                pair = _mailbox_pair(attendee) or ("", "")
                attendees.append({"name": pair[0], "address": pair[1], "type": kind})
        elif name == "StartTimeZone" and child.get("Id"):
            fields["time_zone"] = child.get("Id")
    return fields
