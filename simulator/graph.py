"""Microsoft Graph v1.0 (mail, calendar, contacts subset) of the local tenant.

``GraphApp(tenant)`` is the WSGI application server.py mounts under ``/v1.0``.
Every request becomes a ``GraphCall``; ``GraphApp.execute(call)`` answers it
with a ``GraphAnswer``; ``$batch`` runs its items through the same path, so
each item is authenticated, throttled and logged on its own, as in Exchange
Online.  JSON shapes live in graph_render.py, delta tokens in graph_delta.py.
"""
import base64
import binascii
import datetime
import json
import random
import re
import threading
import time
import urllib.parse
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from werkzeug.wrappers import Request, Response

from . import graph_render as render
from .graph_delta import DeltaTokens, SyncStateError
from .knobs import Refused, cut_body
from .store import is_well_formed_id, occurrence_ical_uid

UTC = datetime.timezone.utc
JSON_CONTENT_TYPE = ("application/json;odata.metadata=minimal;odata.streaming=true;IEEE754Compatible=false;"
                     "charset=utf-8")
DEFAULT_PAGE_SIZE = 10
MAX_TOP = 1000
MAX_BATCH_REQUESTS = 20
NOT_FOUND_MESSAGE = "The specified object was not found in the store."
WINDOW_REQUIRED_MESSAGE = ("This request requires a time window specified by the query string parameters "
                           "StartDateTime and EndDateTime.")
ACCESS_DENIED_MESSAGE = "Access is denied. Check credentials and try again."


class GraphError(Exception):
    """An error answer: HTTP status, Graph error code and message."""

    def __init__(self, status, code, message, headers=None):
        super().__init__(f"{status} {code}: {message}")
        self.status = status
        self.code = code
        self.message = message
        self.headers = dict(headers or {})


@dataclass
class GraphCall:
    """One Graph request, from HTTP or from a $batch item."""

    method: str
    path: str  # below /v1.0, e.g. "/me/mailFolders/inbox/messages"
    query: list  # [(name, value)] in request order
    headers: dict  # lower-case names
    body: bytes = b""
    request_id: str = ""
    client_request_id: str = ""

    def param(self, name, default=None):
        """Query parameter, case-insensitive as Graph's ($top, startDateTime...)."""
        wanted = name.lower().lstrip("$")
        for key, value in self.query:
            if key.lower().lstrip("$") == wanted:
                return value
        return default

    def json(self):
        if not self.body:
            return {}
        try:
            value = json.loads(self.body.decode("utf-8") if isinstance(self.body, bytes) else self.body)
        except (ValueError, UnicodeDecodeError):
            raise GraphError(400, "BadRequest", "Unable to read JSON request payload. Please ensure "
                                                "Content-Type header is set and payload is of valid JSON "
                                                "format.") from None
        if not isinstance(value, dict):
            raise GraphError(400, "BadRequest", "Unable to read JSON request payload.")
        return value


@dataclass
class GraphAnswer:
    """What execute() returns: status, JSON-able body (or bytes) and headers."""

    status: int
    body: object = None
    headers: dict = field(default_factory=dict)
    content_type: str = JSON_CONTENT_TYPE


def _normalised_path(path):
    try:
        from .server import normalise_endpoint
    except ImportError:  # pragma: no cover - server.py is S1's and always there
        return path
    return normalise_endpoint(path)


# ------------------------------------------------------------------ preferences

_PREFERENCE = re.compile(r'\s*([\w.\-]+)\s*(?:=\s*("([^"]*)"|[^,;\s]*))?')


def parse_prefer(values):
    """Prefer header(s) → {lower-case name: value}."""
    prefs = {}
    for value in values:
        for part in value.split(","):
            match = _PREFERENCE.match(part)
            if match and match.group(1):
                raw = match.group(3) if match.group(3) is not None else (match.group(2) or "")
                prefs[match.group(1).lower()] = raw
    return prefs


class Context:
    """Per-call state: mailbox, token, preferences and the preferences applied."""

    def __init__(self, app, call, token, mailbox, mailbox_segment):
        self.app = app
        self.tenant = app.tenant
        self.call = call
        self.token = token
        self.mailbox = mailbox
        self.mailbox_segment = mailbox_segment  # "me" or "users/<x>", kept in links we build
        self.prefs = parse_prefer([call.headers.get("prefer", "")])
        self.applied = []
        self.immutable_ids = self.prefs.get("idtype", "").lower() == "immutableid"
        if self.immutable_ids:
            self.applied.append('IdType="ImmutableId"')
        self.knobs = app.tenant.knobs.get(mailbox.email) if mailbox else None
        self._tz = None

    def item_id(self, item):
        return item.immutable_id if self.immutable_ids else item.id

    @property
    def want_text_body(self):
        wanted = self.prefs.get("outlook.body-content-type", "").lower() == "text"
        if wanted and 'outlook.body-content-type="text"' not in self.applied:
            self.applied.append('outlook.body-content-type="text"')
        return wanted

    def output_time_zone(self):
        """(tzinfo, label) from Prefer: outlook.timezone, UTC when absent or unknown."""
        if self._tz is None:
            name = self.prefs.get("outlook.timezone")
            tz = render.resolve_time_zone(name) if name else None
            if tz is None:
                self._tz = (UTC, "UTC")
            else:
                self._tz = (tz, name)
                self.applied.append(f'outlook.timezone="{name}"')
        return self._tz

    def max_page_size(self):
        value = self.prefs.get("odata.maxpagesize")
        if value and value.isdigit() and int(value) > 0:
            applied = f"odata.maxpagesize={value}"
            if applied not in self.applied:
                self.applied.append(applied)
            return int(value)
        return None

    def page_size(self, default=DEFAULT_PAGE_SIZE, allow_top=True):
        """$top, else Prefer odata.maxpagesize, else Microsoft's default; the page_size knob caps it."""
        top = self.call.param("$top") if allow_top else None
        size = None
        if top is not None:
            if not str(top).isdigit():
                raise GraphError(400, "BadRequest", f"Invalid value '{top}' for $top query option found.")
            size = int(top)
            if size > MAX_TOP:
                raise GraphError(400, "BadRequest", f"The limit of '{MAX_TOP}' for Top query has been "
                                                    "exceeded. The value from the incoming request is "
                                                    f"'{size}'.")
            if size < 1:
                raise GraphError(400, "BadRequest", f"Invalid value '{top}' for $top query option found.")
        size = size or self.max_page_size() or default
        knob = self.knobs.page_size if self.knobs else None
        if knob:
            size = min(size, knob) if top is not None else knob
        return size

    def url(self, path, params):
        """Absolute Graph URL below this mailbox, e.g. url("mailFolders/x/messages", [...])."""
        base = f"{self.tenant.graph_url}/{self.mailbox_segment}/{path}"
        if params:
            base += "?" + urllib.parse.urlencode(params, quote_via=urllib.parse.quote, safe="$,'():")
        return base

    def odata_context(self, fragment):
        return f"{self.tenant.graph_url}/$metadata#users('{self.mailbox.id}')/{fragment}"


# ------------------------------------------------------------------ routing

ROUTES = []


def route(method, template):
    """Register a mailbox route; template is below /me or /users/{id}."""
    def register(handler):
        ROUTES.append((method, [s for s in template.split("/") if s], handler, template))
        return handler
    return register


def match_route(method, segments):
    """(handler, params, endpoint name) for a method and mailbox-relative path.

    Literal segments win over placeholders: ".../messages/delta" is the delta
    function, not a message whose id is "delta".
    """
    candidates = []
    for route_method, parts, handler, template in ROUTES:
        if len(parts) != len(segments):
            continue
        params = []
        for part, segment in zip(parts, segments, strict=True):
            if part.startswith("{"):
                params.append(urllib.parse.unquote(segment))
            elif part.lower() not in (segment.lower(), _function_name(segment)):
                break
        else:
            literals = sum(1 for p in parts if not p.startswith("{"))
            candidates.append((literals, route_method, handler, params, template))
    if not candidates:
        last = segments[-1] if segments else ""
        raise GraphError(400, "BadRequest", f"Resource not found for the segment '{last}'.")
    best = max(c[0] for c in candidates)
    for literals, route_method, handler, params, template in candidates:
        if literals == best and route_method == method:
            endpoint = "{} /{}".format(method, re.sub(r"\{\w+\}", "{id}", template))
            return handler, params, endpoint
    raise GraphError(405, "Request_BadRequest",
                     f"The HTTP method '{method}' is not allowed for this resource.")


def _function_name(segment):
    """"delta" for "delta()": Graph accepts a function with or without its (empty) parentheses,
    and the official SDKs send the parentheses."""
    name = segment.lower()
    return name[:-2] if name.endswith("()") and name[:-2] in FUNCTION_SEGMENTS else None


FUNCTION_SEGMENTS = ("delta",)


def _permission_family(segments):
    head = (segments[0] if segments else "").lower()
    if head in ("mailfolders", "messages"):
        return "Mail"
    if head in ("calendar", "calendars", "calendarview", "events"):
        return "Calendars"
    if head in ("contacts", "contactfolders"):
        return "Contacts"
    return None


def _check_permission(token, family, method):
    """Graph checks scp/roles per resource; tokens without Outlook permissions are let through.

    Being lenient there keeps the simulator usable with tokens whose scopes the
    identity platform does not spell out; a token that names Outlook permissions
    must name the right family (and ReadWrite for changes).
    """
    if family is None:
        return
    granted_names = list(getattr(token, "scopes", None) or []) + list(getattr(token, "roles", None) or [])
    names = [str(s).rsplit("/", 1)[-1] for s in granted_names]
    outlook = [n for n in names if n.split(".")[0] in ("Mail", "Calendars", "Contacts")]
    if not outlook:
        return
    granted = [n for n in outlook if n.split(".")[0] == family]
    if method != "GET":
        granted = [n for n in granted if "ReadWrite" in n]
    if not granted:
        raise GraphError(403, "ErrorAccessDenied", ACCESS_DENIED_MESSAGE)


# ------------------------------------------------------------------ the application

class GraphApp:
    """WSGI application for /v1.0 of the local tenant."""

    def __init__(self, tenant):
        self.tenant = tenant
        self.delta_tokens = DeltaTokens()
        self._random = random.Random()
        self._batch_pool = ThreadPoolExecutor(max_workers=MAX_BATCH_REQUESTS,
                                              thread_name_prefix="graph-batch")
        self._lock = threading.Lock()

    def __call__(self, environ, start_response):
        request = Request(environ)
        call = self._call_from_request(request)
        answer = self.execute(call, environ.get("simulator.log_entry"))
        cut_after = getattr(answer, "cut_after", None)
        if cut_after is not None and isinstance(answer.body, bytes):
            return self._cut_response(environ, start_response, call, answer, cut_after)
        return self._response(call, answer)(environ, start_response)

    def _cut_response(self, environ, start_response, call, answer, cut_after):
        """Announce the whole body, send ``cut_after`` bytes of it, then drop the connection."""
        body = answer.body
        answer.body = b""
        response = self._response(call, answer)
        response.headers["Content-Length"] = str(len(body))
        start_response(response.status, list(response.headers.items()))
        return cut_body(environ, body, cut_after)

    # -- HTTP in and out
    def _call_from_request(self, request):
        path = request.path
        if path.lower().startswith("/v1.0"):
            path = path[len("/v1.0"):]
        request_id = str(uuid.uuid4())
        headers = {k.lower(): v for k, v in request.headers.items()}
        prefer = request.headers.getlist("Prefer")
        if prefer:
            headers["prefer"] = ", ".join(prefer)
        query = self._raw_query(request.environ.get("QUERY_STRING", ""))
        return GraphCall(method=request.method.upper(), path=path or "/", query=query, headers=headers,
                         body=request.get_data(), request_id=request_id,
                         client_request_id=headers.get("client-request-id") or request_id)

    @staticmethod
    def _raw_query(query_string):
        # '+' decodes to a space as in Graph: an unencoded "+02:00" offset breaks there too.
        pairs = []
        for part in query_string.split("&"):
            if not part:
                continue
            key, _, value = part.partition("=")
            pairs.append((urllib.parse.unquote_plus(key), urllib.parse.unquote_plus(value)))
        return pairs

    def _response(self, call, answer):
        headers = {
            "request-id": call.request_id,
            "client-request-id": call.client_request_id,
            "x-ms-ags-diagnostic": json.dumps({"ServerInfo": {"DataCenter": "Local Simulator",
                                                              "Slice": "E", "Ring": "5", "ScaleUnit": "000",
                                                              "RoleInstance": "SIM"}}),
            "OData-Version": "4.0",
        }
        headers.update(answer.headers)
        if answer.body is None:
            return Response(b"", status=answer.status, headers=headers)
        if isinstance(answer.body, (bytes, str)):
            return Response(answer.body, status=answer.status, headers=headers,
                            content_type=answer.content_type)
        return Response(json.dumps(answer.body), status=answer.status, headers=headers,
                        content_type=answer.content_type)

    def error_answer(self, call, error):
        body = {"error": {"code": error.code, "message": error.message, "innerError": {
            "date": datetime.datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S"),
            "request-id": call.request_id,
            "client-request-id": call.client_request_id,
        }}}
        return GraphAnswer(error.status, body, dict(error.headers))

    # -- one call
    def execute(self, call, log_entry=None):
        """Answer one call (HTTP or $batch item): auth, admission, routing, logging."""
        endpoint = f"{call.method} {call.path}"
        mailbox = None
        token = None
        try:
            segments = [s for s in call.path.split("/") if s]
            if segments and segments[0] == "$batch":
                endpoint = "POST /$batch"
                if call.method != "POST":
                    raise GraphError(405, "BadRequest", f"The HTTP method '{call.method}' is not allowed.")
                token = self._authenticate(call)
                answer = self._batch(call)
            else:
                token = self._authenticate(call)
                mailbox, segment, rest = self._resolve_mailbox(token, segments)
                handler, params, endpoint = match_route(call.method, rest)
                _check_permission(token, _permission_family(rest), call.method)
                answer = self._admitted(call, token, mailbox, segment, handler, params)
        except GraphError as error:
            answer = self.error_answer(call, error)
        self._log(call, endpoint, mailbox, token, answer.status, log_entry)
        return answer

    def _admitted(self, call, token, mailbox, segment, handler, params):
        app = getattr(token, "app", None)
        try:
            with self.tenant.knobs.admit("graph", app, mailbox.email):
                ctx = Context(self, call, token, mailbox, segment)
                answer = handler(ctx, *params)
                if isinstance(answer, tuple):
                    answer = GraphAnswer(*answer)
                if ctx.applied:
                    answer.headers["Preference-Applied"] = ", ".join(ctx.applied)
                return answer
        except Refused as refused:
            code = refused.kind
            if code == "MailboxConcurrency":
                # Exchange Online names the limit in the message, the code is ApplicationThrottled.
                code = "ApplicationThrottled"
            retry = str(max(1, int(round(refused.retry_after or 1))))
            raise GraphError(refused.status, code, refused.message, {"Retry-After": retry}) from None

    def _authenticate(self, call):
        from .identity import (
            TokenError,  # identity.py imports nothing from here; late import keeps the order free
        )
        header = call.headers.get("authorization", "")
        if not header.strip():
            raise GraphError(401, "InvalidAuthenticationToken", "Access token is empty.",
                             self._challenge())
        try:
            return self.tenant.identity.validate_bearer(header)
        except TokenError as error:
            raise GraphError(401, getattr(error, "code", None) or "InvalidAuthenticationToken",
                             getattr(error, "message", None) or str(error),
                             self._challenge()) from None

    def _challenge(self):
        authorize = f"{self.tenant.authority}/oauth2/authorize"
        return {"WWW-Authenticate": f'Bearer realm="", authorization_uri="{authorize}"'}

    def _resolve_mailbox(self, token, segments):
        if not segments:
            raise GraphError(400, "BadRequest", "Invalid request.")
        own = getattr(token, "mailbox", None)
        head = segments[0].lower()
        if head == "me":
            if own is None:
                raise GraphError(400, "BadRequest",
                                 "/me request is only valid with delegated authentication flow.")
            return own, "me", segments[1:]
        if head == "users" and len(segments) >= 2:
            reference = urllib.parse.unquote(segments[1])
            try:
                mailbox = self.tenant.store.mailbox(reference)
            except KeyError:
                raise GraphError(404, "ErrorInvalidUser",
                                 f"The requested user '{reference}' is invalid.") from None
            if own is not None and own.id != mailbox.id:
                raise GraphError(403, "ErrorAccessDenied", ACCESS_DENIED_MESSAGE)
            return mailbox, "users/{}".format(urllib.parse.quote(reference, safe="@")), segments[2:]
        raise GraphError(400, "BadRequest", f"Resource not found for the segment '{segments[0]}'.")

    def _log(self, call, endpoint, mailbox, token, status, environ_entry=None):
        """Name the request in the tenant's log: ``operation`` is the Graph route name.

        server.py logs every HTTP request itself (endpoint = normalised path);
        batch items never reach it, so they are added here as entries of their own.
        """
        log = getattr(self.tenant, "request_log", None)
        if log is None:
            return
        entry = environ_entry
        if entry is None:
            entry = {"protocol": "graph", "method": call.method, "path": "/v1.0" + call.path,
                     "endpoint": _normalised_path("/v1.0" + call.path), "ts": time.time(), "batch_item": True}
        entry["operation"] = endpoint
        entry["mailbox"] = mailbox.email if mailbox else entry.get("mailbox")
        entry["app"] = getattr(token, "app", None) or entry.get("app")
        if environ_entry is None:
            entry["status"] = status
            log.add(entry)

    # -- $batch
    def _batch(self, call):
        payload = call.json()
        requests_ = payload.get("requests")
        if not isinstance(requests_, list) or not requests_:
            raise GraphError(400, "BadRequest", "Invalid batch payload format.")
        if len(requests_) > MAX_BATCH_REQUESTS:
            raise GraphError(400, "BadRequest", "The number of batch requests in the payload exceeds the "
                                                f"limit of {MAX_BATCH_REQUESTS}.")
        by_id = {}
        for item in requests_:
            if not isinstance(item, dict) or not all(item.get(k) for k in ("id", "method", "url")):
                raise GraphError(400, "BadRequest", "Invalid batch payload format.")
            item_id = str(item["id"])
            if item_id in by_id:
                raise GraphError(400, "BadRequest",
                                 f"Batch request ids must be unique; '{item_id}' is repeated.")
            by_id[item_id] = item
        for item_id, item in by_id.items():
            for dependency in item.get("dependsOn") or []:
                if str(dependency) not in by_id:
                    raise GraphError(400, "BadRequest", f"Request with Id '{item_id}' depends on an unknown "
                                                        f"request '{dependency}'.")
            _check_batch_write(item_id, item)
        # Graph's known issues (JSON batching): a batch is fully parallel (no dependsOn) or fully
        # sequential (every request but the first depends on another); a mix is refused.
        independent = [i for i, item in by_id.items() if not item.get("dependsOn")]
        sequential = len(independent) < len(by_id)
        if sequential and independent != [str(requests_[0]["id"])]:
            raise GraphError(400, "BadRequest", "Batch should be either fully sequential or fully parallel")
        answers = {}
        pending = dict(by_id)
        while pending:
            ready = [i for i, item in pending.items()
                     if all(str(d) in answers for d in item.get("dependsOn") or [])]
            if not ready:
                raise GraphError(400, "BadRequest", "Batch request dependencies form a cycle.")
            runnable = []
            for item_id in ready:
                item = pending.pop(item_id)
                failed = [str(d) for d in item.get("dependsOn") or [] if answers[str(d)][0] >= 400]
                if failed:
                    sub_call = self._batch_item_call(call, item)
                    answers[item_id] = (424, self.error_answer(sub_call, GraphError(
                        424, "BadRequest", f"Failed dependency: request '{failed[0]}' failed.")))
                else:
                    runnable.append((item_id, item))
            if sequential:
                for item_id, item in runnable:
                    answer = self._run_batch_item(call, item)
                    answers[item_id] = (answer.status, answer)
                continue
            # Exchange Online runs independent batch items in parallel: that is what
            # makes a 20-request batch hit the 4-per-mailbox concurrency limit.
            futures = [(item_id, self._batch_pool.submit(self._run_batch_item, call, item))
                       for item_id, item in runnable]
            for item_id, future in futures:
                answer = future.result()
                answers[item_id] = (answer.status, answer)
        responses = []
        for item_id, (_status, answer) in answers.items():
            responses.append(self._batch_response(item_id, answer))
        self._random.shuffle(responses)
        return GraphAnswer(200, {"responses": responses})

    def _batch_item_call(self, outer, item):
        url = str(item["url"])
        if url.lstrip("/").lower().startswith(("$batch", "v1.0/$batch")):
            raise GraphError(400, "BadRequest", "Nested batch requests are not supported.")
        if url.lower().startswith("http"):
            raise GraphError(400, "BadRequest", "Batch request urls must be relative.")
        if url.lower().startswith("/v1.0/"):
            url = url[len("/v1.0"):]
        if not url.startswith("/"):
            url = "/" + url
        path, _, query_string = url.partition("?")
        headers = {k.lower(): str(v) for k, v in (item.get("headers") or {}).items()}
        headers.setdefault("authorization", outer.headers.get("authorization", ""))
        body = item.get("body")
        if body is None:
            raw = b""
        elif isinstance(body, (dict, list)):
            raw = json.dumps(body).encode()
        else:
            try:
                raw = base64.b64decode(body)
            except (binascii.Error, ValueError):
                raw = str(body).encode()
        request_id = str(uuid.uuid4())
        return GraphCall(method=str(item["method"]).upper(), path=path, query=self._raw_query(query_string),
                         headers=headers, body=raw, request_id=request_id,
                         client_request_id=headers.get("client-request-id") or request_id)

    def _run_batch_item(self, outer, item):
        try:
            sub_call = self._batch_item_call(outer, item)
        except GraphError as error:
            return self.error_answer(outer, error)
        return self.execute(sub_call)

    @staticmethod
    def _batch_response(item_id, answer):
        headers = dict(answer.headers)
        shaped = {"id": item_id, "status": answer.status, "headers": headers}
        if answer.body is not None:
            if isinstance(answer.body, (bytes, str)):
                raw = answer.body.encode() if isinstance(answer.body, str) else answer.body
                headers["Content-Type"] = answer.content_type
                shaped["body"] = base64.b64encode(raw).decode()
            else:
                headers.setdefault("Content-Type", "application/json")
                shaped["body"] = answer.body
        return shaped


def _check_batch_write(item_id, item):
    """A write item (POST, PUT, PATCH) needs a body and its Content-Type, else Graph refuses the batch."""
    if str(item.get("method", "")).upper() not in ("POST", "PUT", "PATCH"):
        return
    headers = {str(k).lower() for k in (item.get("headers") or {})}
    if "content-type" not in headers or "body" not in item:
        raise GraphError(400, "BadRequest",
                         f"Write request id : {item_id} does not contain Content-Type header or body.")


# ------------------------------------------------------------------ helpers for handlers

MAIL_WELL_KNOWN = {"msgfolderroot", "inbox", "drafts", "sentitems", "deleteditems", "junkemail", "outbox",
                   "archive"}


def _check_id(value):
    if not is_well_formed_id(value):
        raise GraphError(400, "ErrorInvalidIdMalformed", "Id is malformed.")


def find_folder(ctx, reference):
    """Folder by id or well-known name (case-insensitive); 404/400 as Graph."""
    try:
        return ctx.mailbox.folder(reference)
    except KeyError:
        pass
    try:
        return ctx.mailbox.folder(reference.lower())
    except KeyError:
        pass
    _check_id(reference)
    raise GraphError(404, "ErrorItemNotFound", NOT_FOUND_MESSAGE)


def find_item(ctx, reference, kind):
    """Item by id or immutable id, of the given kind; 404/400 as Graph."""
    _check_id(reference)
    try:
        item = ctx.mailbox.item(reference)
    except KeyError:
        raise GraphError(404, "ErrorItemNotFound", NOT_FOUND_MESSAGE) from None
    if item.kind != kind:
        raise GraphError(404, "ErrorItemNotFound", NOT_FOUND_MESSAGE)
    return item


def check_if_match(ctx, item):
    """If-Match: W/"<changeKey>" (or "*") must match, else 412 as Exchange."""
    wanted = ctx.call.headers.get("if-match")
    if not wanted or wanted.strip() == "*":
        return
    candidates = {c.strip() for c in wanted.split(",")}
    normalized = {c[2:] if c.startswith("W/") else c for c in candidates}
    normalized = {c.strip('"') for c in normalized}
    if item.change_key not in normalized:
        raise GraphError(412, "ErrorIrresolvableConflict",
                         "The send or update operation could not be performed because the change key passed "
                         "in the request does not match the current change key for the item.")


def parse_select(ctx):
    value = ctx.call.param("$select")
    if not value:
        return None
    return [s.strip() for s in value.split(",") if s.strip()]


def apply_select(shape, select, type_name, extra=None):
    """Keep id, @odata.* and the selected properties; unknown names → 400 as Graph."""
    if not select:
        return shape
    result = {k: v for k, v in shape.items() if k.startswith("@odata.")}
    if "id" in shape:
        result["id"] = shape["id"]
    for name in select:
        matched = [k for k in shape if k.lower() == name.lower()]
        if matched:
            result[matched[0]] = shape[matched[0]]
        elif extra and name in extra:
            result[name] = extra[name]()
        else:
            raise GraphError(400, "RequestBroker--ParseUri",
                             f"Could not find a property named '{name}' on type "
                             f"'microsoft.graph.{type_name}'.")
    return result


def paged(ctx, rows, path, default_size=DEFAULT_PAGE_SIZE):
    """A page of rows and the @odata.nextLink ($skip, as Outlook resources do)."""
    size = ctx.page_size(default_size)
    skip_text = ctx.call.param("$skip") or "0"
    if not skip_text.isdigit():
        raise GraphError(400, "BadRequest", f"Invalid value '{skip_text}' for $skip query option found.")
    skip = int(skip_text)
    page = rows[skip:skip + size]
    next_link = None
    if skip + size < len(rows):
        params = [(k, v) for k, v in ctx.call.query if k.lower() not in ("$skip", "$top")]
        params.append(("$top", str(size)))
        params.append(("$skip", str(skip + size)))
        next_link = ctx.url(path, params)
    return page, next_link


def collection(context, rows, next_link=None, **extra):
    body = {"@odata.context": context}
    body.update(extra)
    body["value"] = rows
    if next_link:
        body["@odata.nextLink"] = next_link
    return GraphAnswer(200, body)


def context_with_select(base, select):
    return "{}({})".format(base, ",".join(select)) if select else base


# ------------------------------------------------------------------ $filter / $orderby

_CLAUSE = re.compile(r"^\s*([\w/]+)\s+(eq|ne|ge|gt|le|lt)\s+(.+?)\s*$", re.IGNORECASE)


def parse_filter(text):
    """'a ge X and b lt Y' → [(property, operator, raw value)]; only 'and' is supported."""
    if not text:
        return []
    clauses = []
    for part in re.split(r"\s+and\s+", text.strip(), flags=re.IGNORECASE):
        part = part.strip()
        while part.startswith("(") and part.endswith(")"):
            part = part[1:-1].strip()
        match = _CLAUSE.match(part)
        if not match:
            raise GraphError(400, "BadRequest", f"Invalid filter clause: {part}")
        clauses.append((match.group(1), match.group(2).lower(), match.group(3)))
    return clauses


_COMPARE = {
    "eq": lambda a, b: a == b, "ne": lambda a, b: a != b, "ge": lambda a, b: a >= b,
    "gt": lambda a, b: a > b, "le": lambda a, b: a <= b, "lt": lambda a, b: a < b,
}


def filter_messages(ctx, messages):
    clauses = parse_filter(ctx.call.param("$filter"))
    for prop, op, raw in clauses:
        if prop.lower() in ("receiveddatetime", "sentdatetime", "lastmodifieddatetime", "createddatetime"):
            try:
                value = render.parse_graph_datetime(raw)
            except ValueError:
                raise GraphError(400, "BadRequest", f"The DateTimeOffset text '{raw}' should be in format "
                                                    "'yyyy-mm-ddThh:mm:ss('.'s+)?(zzzzzz)?'.") from None
            attribute = {"receiveddatetime": "received", "sentdatetime": "sent",
                         "lastmodifieddatetime": "last_modified", "createddatetime": "created"}[prop.lower()]
            messages = [m for m in messages
                        if getattr(m, attribute, None) is not None
                        and _COMPARE[op](getattr(m, attribute), value)]
        elif prop.lower() == "isread":
            wanted = raw.strip().lower() == "true"
            messages = [m for m in messages if _COMPARE[op](bool(m.is_read), wanted)]
        elif prop.lower() == "subject" and op in ("eq", "ne"):
            wanted = raw.strip().strip("'").replace("''", "'")
            messages = [m for m in messages if _COMPARE[op](m.subject or "", wanted)]
        else:
            raise GraphError(400, "ErrorInvalidProperty",
                             f"The property '{prop}' does not support filtering.")
    return messages, [c[0].lower() for c in clauses]


def order_messages(ctx, messages, filtered_properties):
    orderby = (ctx.call.param("$orderby") or "receivedDateTime desc").strip()
    parts = orderby.split()
    prop = parts[0]
    descending = len(parts) > 1 and parts[1].lower() == "desc"
    attribute = {"receiveddatetime": "received", "sentdatetime": "sent", "subject": "subject",
                 "lastmodifieddatetime": "last_modified", "createddatetime": "created"}.get(prop.lower())
    if attribute is None:
        raise GraphError(400, "BadRequest", f"Could not find a property named '{prop}' on type "
                                            "'microsoft.graph.message'.")
    if filtered_properties and ctx.call.param("$orderby") and filtered_properties[0] != prop.lower():
        # Exchange refuses sorts it cannot serve from the filter's index.
        raise GraphError(400, "InefficientFilter", "The restriction or sort order is too complex for this "
                                                   "operation.")

    def key(message):
        value = getattr(message, attribute, None)
        if value is None:
            value = "" if attribute == "subject" else datetime.datetime.min.replace(tzinfo=UTC)
        return value, message.immutable_id
    return sorted(messages, key=key, reverse=descending)


def time_window(ctx):
    start = ctx.call.param("startDateTime")
    end = ctx.call.param("endDateTime")
    if not start or not end:
        raise GraphError(400, "ErrorInvalidParameter", WINDOW_REQUIRED_MESSAGE)
    try:
        return render.parse_graph_datetime(start), render.parse_graph_datetime(end)
    except ValueError:
        raise GraphError(400, "ErrorInvalidParameter", WINDOW_REQUIRED_MESSAGE) from None


# ------------------------------------------------------------------ user

@route("GET", "")
def get_user(ctx):
    select = parse_select(ctx)
    body = {"@odata.context": "{}/$metadata#{}".format(
        ctx.tenant.graph_url, context_with_select("users", select) + "/$entity")}
    body.update(apply_select(render.user(ctx.mailbox), select, "user"))
    return GraphAnswer(200, body)


# ------------------------------------------------------------------ mail folders

def _is_mail_folder(folder):
    return (folder.folder_class or "IPF.Note").startswith("IPF.Note")


def filter_by_display_name(ctx, rows):
    """$filter=displayName eq '...' (the only folder and contact filter the connector needs)."""
    for prop, op, raw in parse_filter(ctx.call.param("$filter")):
        if prop.lower() != "displayname" or op not in ("eq", "ne"):
            raise GraphError(400, "ErrorInvalidProperty",
                             f"The property '{prop}' does not support filtering.")
        wanted = raw.strip()
        if wanted.startswith("'") and wanted.endswith("'"):
            wanted = wanted[1:-1]
        wanted = wanted.replace("''", "'").lower()
        rows = [r for r in rows if _COMPARE[op]((r.display_name or "").lower(), wanted)]
    return rows


def _mail_folder_list(ctx, folders, path, context):
    folders = filter_by_display_name(ctx, [f for f in folders if _is_mail_folder(f)])
    select = parse_select(ctx)
    rows = [apply_select(render.mail_folder(f, ctx.mailbox), select, "mailFolder") for f in folders]
    page, next_link = paged(ctx, rows, path)
    return collection(ctx.odata_context(context_with_select(context, select)), page, next_link)


@route("GET", "mailFolders")
def list_mail_folders(ctx):
    root = ctx.mailbox.folder("msgfolderroot")
    return _mail_folder_list(ctx, ctx.mailbox.child_folders(root.id), "mailFolders", "mailFolders")


@route("GET", "mailFolders/{folder}")
def get_mail_folder(ctx, reference):
    folder = find_folder(ctx, reference)
    body = {"@odata.context": ctx.odata_context("mailFolders/$entity")}
    body.update(apply_select(render.mail_folder(folder, ctx.mailbox), parse_select(ctx), "mailFolder"))
    return GraphAnswer(200, body)


@route("GET", "mailFolders/{folder}/childFolders")
def list_child_mail_folders(ctx, reference):
    folder = find_folder(ctx, reference)
    return _mail_folder_list(ctx, ctx.mailbox.child_folders(folder.id),
                             f"mailFolders/{reference}/childFolders",
                             f"mailFolders('{folder.id}')/childFolders")


def _create_folder(ctx, parent, folder_class):
    payload = ctx.call.json()
    name = (payload.get("displayName") or "").strip()
    if not name:
        raise GraphError(400, "ErrorInvalidParameter", "The value of the parameter 'DisplayName' is empty.")
    try:
        return ctx.mailbox.create_folder(parent.id, name, folder_class)
    except ValueError:
        raise GraphError(409, "ErrorFolderExists",
                         "A folder with the specified name already exists.") from None


@route("POST", "mailFolders")
def create_mail_folder(ctx):
    folder = _create_folder(ctx, ctx.mailbox.folder("msgfolderroot"), "IPF.Note")
    body = {"@odata.context": ctx.odata_context("mailFolders/$entity")}
    body.update(render.mail_folder(folder, ctx.mailbox))
    return GraphAnswer(201, body)


@route("POST", "mailFolders/{folder}/childFolders")
def create_child_mail_folder(ctx, reference):
    parent = find_folder(ctx, reference)
    folder = _create_folder(ctx, parent, "IPF.Note")
    body = {"@odata.context": ctx.odata_context(f"mailFolders('{parent.id}')/childFolders/$entity")}
    body.update(render.mail_folder(folder, ctx.mailbox))
    return GraphAnswer(201, body)


# ------------------------------------------------------------------ messages

def _message_shape(ctx, message, select):
    shape = render.message(message, ctx.item_id(message), message.folder_id, ctx.want_text_body)
    extra = {name: (lambda name=name: render.message_select_only(message, name, ctx.want_text_body))
             for name in render.MESSAGE_ON_SELECT_ONLY}
    return apply_select(shape, select, "message", extra)


def _message_list(ctx, messages, path, context):
    messages, filtered = filter_messages(ctx, messages)
    messages = order_messages(ctx, messages, filtered)
    select = parse_select(ctx)
    page, next_link = paged(ctx, messages, path)
    rows = [_message_shape(ctx, m, select) for m in page]
    return collection(ctx.odata_context(context_with_select(context, select)), rows, next_link)


@route("GET", "mailFolders/{folder}/messages")
def list_folder_messages(ctx, reference):
    folder = find_folder(ctx, reference)
    messages = [i for i in ctx.mailbox.items_in(folder.id) if i.kind == "message"]
    return _message_list(ctx, messages, f"mailFolders/{reference}/messages",
                         f"mailFolders('{folder.id}')/messages")


@route("GET", "messages")
def list_messages(ctx):
    with ctx.tenant.store.lock:
        messages = [i for i in ctx.mailbox.items.values() if i.kind == "message"]
    return _message_list(ctx, messages, "messages", "messages")


def _get_message(ctx, reference):
    message = find_item(ctx, reference, "message")
    body = {"@odata.context": ctx.odata_context("messages/$entity")}
    body.update(_message_shape(ctx, message, parse_select(ctx)))
    return GraphAnswer(200, body)


@route("GET", "messages/{item}")
def get_message(ctx, reference):
    return _get_message(ctx, reference)


@route("GET", "mailFolders/{folder}/messages/{item}")
def get_folder_message(ctx, folder_reference, reference):
    find_folder(ctx, folder_reference)
    return _get_message(ctx, reference)


@route("GET", "messages/{item}/$value")
def get_message_mime(ctx, reference):
    message = find_item(ctx, reference, "message")
    # The documentation example answers the MIME source with Content-Type text/plain.
    answer = GraphAnswer(200, bytes(message.mime), content_type="text/plain")
    if ctx.knobs and ctx.knobs.cut_mime_after_bytes is not None:
        answer.cut_after = ctx.knobs.cut_mime_after_bytes
    return answer


@route("PATCH", "messages/{item}")
def update_message(ctx, reference):
    message = find_item(ctx, reference, "message")
    check_if_match(ctx, message)
    payload = ctx.call.json()
    fields = {}
    if "isRead" in payload:
        fields["is_read"] = bool(payload["isRead"])
    if "categories" in payload:
        fields["categories"] = list(payload["categories"] or [])
    if "flag" in payload and isinstance(payload["flag"], dict):
        fields["flag_status"] = payload["flag"].get("flagStatus") or "notFlagged"
    if "importance" in payload:
        fields["importance"] = payload["importance"]
    if "subject" in payload and message.is_draft:
        fields["subject"] = payload["subject"]
    message = ctx.mailbox.update_item(message.id, **fields)
    body = {"@odata.context": ctx.odata_context("messages/$entity")}
    body.update(_message_shape(ctx, message, None))
    return GraphAnswer(200, body)


@route("DELETE", "messages/{item}")
def delete_message(ctx, reference):
    message = find_item(ctx, reference, "message")
    check_if_match(ctx, message)
    # Graph's DELETE moves the message to Deleted Items (hard delete when already there).
    ctx.mailbox.delete_item(message.id, soft=True)
    return GraphAnswer(204)


@route("POST", "messages/{item}/permanentDelete")
def permanently_delete_message(ctx, reference):
    message = find_item(ctx, reference, "message")
    ctx.mailbox.delete_item(message.id, soft=False)
    return GraphAnswer(204)


def _destination(ctx):
    payload = ctx.call.json()
    destination = payload.get("destinationId") or payload.get("DestinationId")
    if not destination:
        raise GraphError(400, "ErrorInvalidParameter", "The value of the parameter 'DestinationId' is empty.")
    return find_folder(ctx, destination)


@route("POST", "messages/{item}/move")
def move_message(ctx, reference):
    message = find_item(ctx, reference, "message")
    destination = _destination(ctx)
    moved = ctx.mailbox.move_item(message.id, destination.id)
    body = {"@odata.context": f"{ctx.tenant.graph_url}/$metadata#message",
            "@odata.type": "#microsoft.graph.message"}
    body.update(_message_shape(ctx, moved, None))
    return GraphAnswer(201, body)


@route("POST", "messages/{item}/copy")
def copy_message(ctx, reference):
    message = find_item(ctx, reference, "message")
    destination = _destination(ctx)
    copied = ctx.mailbox.copy_item(message.id, destination.id)
    body = {"@odata.context": f"{ctx.tenant.graph_url}/$metadata#message",
            "@odata.type": "#microsoft.graph.message"}
    body.update(_message_shape(ctx, copied, None))
    return GraphAnswer(201, body)


@route("GET", "messages/{item}/attachments")
def list_attachments(ctx, reference):
    message = find_item(ctx, reference, "message")
    rows = [render.file_attachment(a, message.last_modified) for a in message.attachments or []]
    rows = [apply_select(r, parse_select(ctx), "fileAttachment") for r in rows]
    return collection(ctx.odata_context(f"messages('{ctx.item_id(message)}')/attachments"), rows)


@route("GET", "messages/{item}/attachments/{attachment}")
def get_attachment(ctx, reference, attachment_id):
    message = find_item(ctx, reference, "message")
    for attachment in message.attachments or []:
        if attachment.id == attachment_id:
            context = f"messages('{ctx.item_id(message)}')/attachments/$entity"
            body = {"@odata.context": ctx.odata_context(context)}
            shape = render.file_attachment(attachment, message.last_modified)
            body.update(apply_select(shape, parse_select(ctx), "fileAttachment"))
            return GraphAnswer(200, body)
    _check_id(attachment_id)
    raise GraphError(404, "ErrorItemNotFound", NOT_FOUND_MESSAGE)


# ------------------------------------------------------------------ message delta

@route("GET", "mailFolders/{folder}/messages/delta")
def messages_delta(ctx, reference):
    """Incremental sync of one folder's messages, from the store's change log.

    Tokens carry (base seq, upper seq, cursor seq): a round reports the changes
    with base < seq <= upper in seq order, so an item touched again while the
    client pages is reported in the next round instead of being skipped.
    """
    folder = find_folder(ctx, reference)
    ttl = ctx.knobs.sync_state_ttl_seconds if ctx.knobs else None
    skip_token = ctx.call.param("$skiptoken")
    delta_token = ctx.call.param("$deltatoken")
    try:
        if skip_token:
            state = ctx.app.delta_tokens.read(skip_token, "messages", ctx.mailbox.id, folder.id, ttl)
        elif delta_token:
            state = ctx.app.delta_tokens.read(delta_token, "messages", ctx.mailbox.id, folder.id, ttl)
            state = {"base": state["upper"], "upper": None, "cursor": state["upper"],
                     "select": state.get("select"), "size": state.get("size"), "expand": state.get("expand")}
        else:
            state = {"base": 0, "upper": None, "cursor": 0, "select": ctx.call.param("$select"),
                     "size": None, "expand": expanded_property_ids(ctx)}
    except SyncStateError as error:
        raise GraphError(410, "syncStateNotFound", str(error)) from None
    if state["upper"] is None:
        state["upper"] = ctx.mailbox.current_seq
    if ctx.call.param("$top") or ctx.max_page_size():
        state["size"] = ctx.page_size()
    size = state.get("size") or (ctx.knobs and ctx.knobs.page_size) or DEFAULT_PAGE_SIZE
    select = [s.strip() for s in (state.get("select") or "").split(",") if s.strip()] or None
    initial = state["base"] == 0
    changes, _ = ctx.mailbox.changes_since(folder.id, state["base"], upto=state["upper"])
    changes = sorted((c for c in changes if state["cursor"] < c.seq <= state["upper"]), key=lambda c: c.seq)
    if initial:
        changes = [c for c in changes if c.kind != "deleted"]
    rows = []
    last_seq = state["cursor"]
    consumed = 0
    for change in changes:
        if len(rows) >= size:
            break
        consumed += 1
        last_seq = change.seq
        if change.kind == "deleted":
            rows.append({"@odata.type": "#microsoft.graph.message",
                         "id": change.immutable_id if ctx.immutable_ids else change.item_id,
                         "@removed": {"reason": "deleted"}})
            continue
        try:
            message = ctx.mailbox.item(change.immutable_id)
        except KeyError:
            continue  # deleted after this round's upper bound: reported next round
        if message.folder_id != folder.id or message.kind != "message":
            continue
        shape = _message_shape(ctx, message, select)
        rows_expanded = render.message_extended_properties(message, state.get("expand") or ())
        if rows_expanded:
            shape["singleValueExtendedProperties"] = rows_expanded
        shape["@odata.type"] = "#microsoft.graph.message"
        rows.append(shape)
    body = {"@odata.context": ctx.odata_context(context_with_select(
        f"mailFolders('{folder.id}')/messages", select) + "/$delta"), "value": rows}
    token_state = {"base": state["base"], "upper": state["upper"], "select": state.get("select"),
                   "size": state.get("size"), "expand": state.get("expand")}
    path = f"mailFolders/{reference}/messages/delta"
    if consumed < len(changes):
        token_state["cursor"] = last_seq
        token = ctx.app.delta_tokens.issue("messages", ctx.mailbox.id, folder.id, token_state)
        body["@odata.nextLink"] = ctx.url(path, [("$skiptoken", token)])
    else:
        token = ctx.app.delta_tokens.issue("messages", ctx.mailbox.id, folder.id, token_state)
        body["@odata.deltaLink"] = ctx.url(path, [("$deltatoken", token)])
    return GraphAnswer(200, body)


# ------------------------------------------------------------------ calendar

def _calendar_folder(ctx, reference=None):
    if reference is None:
        return ctx.mailbox.folder("calendar")
    folder = find_folder(ctx, reference)
    if not (folder.folder_class or "").startswith("IPF.Appointment"):
        raise GraphError(404, "ErrorItemNotFound", NOT_FOUND_MESSAGE)
    return folder


def _event_shape(ctx, event_or_occurrence, select=None, tz=None):
    tz, label = tz or ctx.output_time_zone()
    if hasattr(event_or_occurrence, "event"):  # an Occurrence from expand_calendar
        occ = event_or_occurrence
        master = occ.event
        kind = occ.type
        if kind == "singleInstance":
            item_id = ctx.item_id(master)
            series_id = None
        else:
            item_id = occ.id
            series_id = ctx.item_id(master)
        shape = render.event(occ, item_id, ctx.mailbox.email, tz, label, kind, series_id,
                             occ.original_start, ctx.want_text_body)
        per_occurrence = not ctx.knobs or ctx.knobs.occurrence_ical_uid == "per_occurrence"
        if series_id and per_occurrence and shape.get("iCalUId"):
            shape["iCalUId"] = occurrence_ical_uid(shape["iCalUId"], occ.original_start)
    else:
        event = event_or_occurrence
        shape = render.event(event, ctx.item_id(event), ctx.mailbox.email, tz, label,
                             "seriesMaster" if event.recurrence else "singleInstance", None, None,
                             ctx.want_text_body)
    return apply_select(shape, select, "event")


@route("GET", "calendars")
def list_calendars(ctx):
    folders = [f for f in ctx.mailbox.folders.values()
               if (f.folder_class or "").startswith("IPF.Appointment")]
    rows = [apply_select(render.calendar(f, ctx.mailbox), parse_select(ctx), "calendar") for f in folders]
    page, next_link = paged(ctx, rows, "calendars")
    return collection(ctx.odata_context("calendars"), page, next_link)


@route("GET", "calendar")
def get_default_calendar(ctx):
    body = {"@odata.context": ctx.odata_context("calendars/$entity")}
    shape = render.calendar(_calendar_folder(ctx), ctx.mailbox)
    body.update(apply_select(shape, parse_select(ctx), "calendar"))
    return GraphAnswer(200, body)


@route("GET", "calendars/{folder}")
def get_calendar(ctx, reference):
    body = {"@odata.context": ctx.odata_context("calendars/$entity")}
    shape = render.calendar(_calendar_folder(ctx, reference), ctx.mailbox)
    body.update(apply_select(shape, parse_select(ctx), "calendar"))
    return GraphAnswer(200, body)


def _calendar_view(ctx, folder, path):
    start, end = time_window(ctx)
    select = parse_select(ctx)
    occurrences = ctx.mailbox.expand_calendar(folder.id, start, end)
    page, next_link = paged(ctx, occurrences, path)
    rows = [_event_shape(ctx, o, select) for o in page]
    return collection(ctx.odata_context(context_with_select("calendarView", select)), rows, next_link)


@route("GET", "calendarView")
def calendar_view(ctx):
    return _calendar_view(ctx, _calendar_folder(ctx), "calendarView")


@route("GET", "calendar/calendarView")
def default_calendar_view(ctx):
    return _calendar_view(ctx, _calendar_folder(ctx), "calendar/calendarView")


@route("GET", "calendars/{folder}/calendarView")
def calendar_view_of(ctx, reference):
    return _calendar_view(ctx, _calendar_folder(ctx, reference), f"calendars/{reference}/calendarView")


_CALENDAR_DELTA_REFUSED = ("$select", "$filter", "$orderby", "$expand", "$search", "$top")


def _calendar_view_delta(ctx, folder, path):
    refused = [p for p in _CALENDAR_DELTA_REFUSED if ctx.call.param(p) is not None]
    if refused:
        raise GraphError(400, "ErrorInvalidUrlQuery",
                         "The following parameters are not supported with change tracking over the "
                         "'CalendarView' resource: '$orderby, $filter, $select, $expand, $search, $top'.")
    ttl = ctx.knobs.sync_state_ttl_seconds if ctx.knobs else None
    size = ctx.page_size(allow_top=False)
    skip_token = ctx.call.param("$skiptoken")
    delta_token = ctx.call.param("$deltatoken")
    tokens = ctx.app.delta_tokens
    try:
        if skip_token:
            state = tokens.read(skip_token, "calendarView", ctx.mailbox.id, folder.id, ttl)
            rows, snapshot, window = tokens.pending_page(state["round"])
            offset = state["offset"]
        else:
            if delta_token:
                state = tokens.read(delta_token, "calendarView", ctx.mailbox.id, folder.id, ttl)
                window = (render.parse_graph_datetime(state["start"]),
                          render.parse_graph_datetime(state["end"]))
                previous = tokens.snapshot(state["snapshot"])
            else:
                window = time_window(ctx)
                previous = {}
            rows, snapshot = _calendar_round(ctx, folder, window, previous)
            offset = 0
    except SyncStateError as error:
        raise GraphError(410, "syncStateNotFound", str(error)) from None
    page = rows[offset:offset + size]
    body = {"@odata.context": ctx.odata_context("calendarView/$delta"), "value": page}
    if offset + size < len(rows):
        round_id = tokens.keep_round(rows, snapshot, window) if not skip_token else state["round"]
        token = tokens.issue("calendarView", ctx.mailbox.id, folder.id,
                             {"round": round_id, "offset": offset + size})
        body["@odata.nextLink"] = ctx.url(path, [("$skiptoken", token)])
    else:
        snapshot_id = tokens.keep_snapshot(snapshot)
        token = tokens.issue("calendarView", ctx.mailbox.id, folder.id, {
            "snapshot": snapshot_id, "start": render.iso_utc(window[0]), "end": render.iso_utc(window[1])})
        body["@odata.deltaLink"] = ctx.url(path, [("$deltatoken", token)])
    return GraphAnswer(200, body)


def _calendar_round(ctx, folder, window, previous):
    """Compare the window now with what the client was told; (rows to send, new snapshot)."""
    occurrences = ctx.mailbox.expand_calendar(folder.id, window[0], window[1])
    snapshot = {}
    rows = []
    for occ in occurrences:
        if occ.is_cancelled:
            continue  # cancelled meetings leave the view: reported as removed
        fingerprint = json.dumps(_event_shape(ctx, occ, None, (UTC, "UTC")), sort_keys=True)
        shape = _event_shape(ctx, occ, None)
        snapshot[shape["id"]] = fingerprint
        if previous.get(shape["id"]) != fingerprint:
            shape["@odata.type"] = "#microsoft.graph.event"
            rows.append(shape)
    for gone in sorted(set(previous) - set(snapshot)):
        rows.append({"@odata.type": "#microsoft.graph.event", "id": gone, "@removed": {"reason": "deleted"}})
    return rows, snapshot


@route("GET", "calendarView/delta")
def calendar_view_delta(ctx):
    return _calendar_view_delta(ctx, _calendar_folder(ctx), "calendarView/delta")


@route("GET", "calendar/calendarView/delta")
def default_calendar_view_delta(ctx):
    return _calendar_view_delta(ctx, _calendar_folder(ctx), "calendar/calendarView/delta")


@route("GET", "calendars/{folder}/calendarView/delta")
def calendar_view_delta_of(ctx, reference):
    return _calendar_view_delta(ctx, _calendar_folder(ctx, reference),
                                f"calendars/{reference}/calendarView/delta")


def _event_list(ctx, folder, path):
    select = parse_select(ctx)
    events = sorted((i for i in ctx.mailbox.items_in(folder.id) if i.kind == "event"),
                    key=lambda e: (e.start, e.immutable_id))
    page, next_link = paged(ctx, events, path)
    rows = [_event_shape(ctx, e, select) for e in page]
    return collection(ctx.odata_context(context_with_select("events", select)), rows, next_link)


@route("GET", "events")
def list_events(ctx):
    return _event_list(ctx, _calendar_folder(ctx), "events")


@route("GET", "calendar/events")
def list_default_calendar_events(ctx):
    return _event_list(ctx, _calendar_folder(ctx), "calendar/events")


@route("GET", "calendars/{folder}/events")
def list_calendar_events(ctx, reference):
    return _event_list(ctx, _calendar_folder(ctx, reference), f"calendars/{reference}/events")


def _find_event(ctx, reference):
    _check_id(reference)
    try:
        item = ctx.mailbox.item(reference)
    except KeyError:
        try:
            return ctx.mailbox.occurrence(reference)
        except KeyError:
            raise GraphError(404, "ErrorItemNotFound", NOT_FOUND_MESSAGE) from None
    if item.kind != "event":
        raise GraphError(404, "ErrorItemNotFound", NOT_FOUND_MESSAGE)
    return item


@route("GET", "events/{item}")
def get_event(ctx, reference):
    event = _find_event(ctx, reference)
    body = {"@odata.context": ctx.odata_context("events/$entity")}
    body.update(_event_shape(ctx, event, parse_select(ctx)))
    return GraphAnswer(200, body)


@route("GET", "events/{item}/instances")
def list_event_instances(ctx, reference):
    master = _find_event(ctx, reference)
    start, end = time_window(ctx)
    select = parse_select(ctx)
    occurrences = [o for o in ctx.mailbox.expand_calendar(master.folder_id, start, end)
                   if o.event.immutable_id == master.immutable_id]
    page, next_link = paged(ctx, occurrences, f"events/{reference}/instances")
    rows = [_event_shape(ctx, o, select) for o in page]
    return collection(ctx.odata_context(context_with_select(
        f"events('{ctx.item_id(master)}')/instances", select)), rows, next_link)


# ------------------------------------------------------------------ contacts

def _contact_folder(ctx, reference=None):
    if reference is None:
        return ctx.mailbox.folder("contacts")
    folder = find_folder(ctx, reference)
    if not (folder.folder_class or "").startswith("IPF.Contact"):
        raise GraphError(404, "ErrorItemNotFound", NOT_FOUND_MESSAGE)
    return folder


_EXPAND_EXTENDED = re.compile(r"^singleValueExtendedProperties\(\$filter=(.*)\)$", re.IGNORECASE)
_EXTENDED_ID_TERM = re.compile(r"^\s*id\s+eq\s+'((?:[^']|'')*)'\s*$", re.IGNORECASE)


def expanded_property_ids(ctx):
    """The ids asked by ``$expand=singleValueExtendedProperties($filter=id eq '...' [or id eq '...'])``.

    None without such an ``$expand``; any other expansion is refused as Graph does for contacts.
    """
    value = ctx.call.param("$expand")
    if not value:
        return None
    match = _EXPAND_EXTENDED.match(value.strip())
    if not match:
        raise GraphError(400, "BadRequest",
                         f"Parsing OData Select and Expand failed: '{value}' is not supported.")
    ids = []
    for term in re.split(r"\s+or\s+", match.group(1), flags=re.IGNORECASE):
        found = _EXTENDED_ID_TERM.match(term)
        if not found:
            raise GraphError(400, "ErrorInvalidProperty",
                             "The filter of extended properties must compare id.")
        ids.append(found.group(1).replace("''", "'"))
    return ids


def _contact_shape(ctx, contact, select=None):
    shape = apply_select(render.contact(contact, ctx.item_id(contact), contact.folder_id), select, "contact")
    wanted = expanded_property_ids(ctx)
    if wanted:
        rows = render.expanded_extended_properties(contact, wanted)
        if rows:  # Graph leaves the collection out when the item has none of them
            shape["singleValueExtendedProperties"] = rows
    return shape


def _contact_fields(ctx, current=None):
    try:
        fields = render.contact_fields_from_graph(ctx.call.json())
    except ValueError as error:
        raise GraphError(400, "ErrorInvalidProperty", str(error)) from None
    if current is not None and "extended_properties" in fields:
        fields["extended_properties"] = dict(current.extended_properties, **fields["extended_properties"])
    return fields


def _contact_folders(ctx, parent, path, context):
    folders = filter_by_display_name(ctx, [f for f in ctx.mailbox.child_folders(parent.id)
                                           if (f.folder_class or "").startswith("IPF.Contact")])
    select = parse_select(ctx)
    rows = [apply_select(render.contact_folder(f), select, "contactFolder") for f in folders]
    page, next_link = paged(ctx, rows, path)
    return collection(ctx.odata_context(context_with_select(context, select)), page, next_link)


@route("GET", "contactFolders")
def list_contact_folders(ctx):
    # /contactFolders lists the folders below the default Contacts folder, as Outlook does.
    return _contact_folders(ctx, _contact_folder(ctx), "contactFolders", "contactFolders")


@route("POST", "contactFolders")
def create_contact_folder(ctx):
    payload = ctx.call.json()
    parent = _contact_folder(ctx, payload.get("parentFolderId") or None)
    folder = _create_folder(ctx, parent, "IPF.Contact")
    body = {"@odata.context": ctx.odata_context("contactFolders/$entity")}
    body.update(render.contact_folder(folder))
    return GraphAnswer(201, body)


@route("GET", "contactFolders/{folder}")
def get_contact_folder(ctx, reference):
    folder = _contact_folder(ctx, reference)
    body = {"@odata.context": ctx.odata_context("contactFolders/$entity")}
    body.update(apply_select(render.contact_folder(folder), parse_select(ctx), "contactFolder"))
    return GraphAnswer(200, body)


@route("GET", "contactFolders/{folder}/childFolders")
def list_child_contact_folders(ctx, reference):
    folder = _contact_folder(ctx, reference)
    return _contact_folders(ctx, folder, f"contactFolders/{reference}/childFolders",
                            f"contactFolders('{folder.id}')/childFolders")


@route("POST", "contactFolders/{folder}/childFolders")
def create_child_contact_folder(ctx, reference):
    parent = _contact_folder(ctx, reference)
    folder = _create_folder(ctx, parent, "IPF.Contact")
    body = {"@odata.context": ctx.odata_context(f"contactFolders('{parent.id}')/childFolders/$entity")}
    body.update(render.contact_folder(folder))
    return GraphAnswer(201, body)


def _list_contacts(ctx, folder, path):
    select = parse_select(ctx)
    contacts = sorted((i for i in ctx.mailbox.items_in(folder.id) if i.kind == "contact"),
                      key=lambda c: ((c.display_name or "").lower(), c.immutable_id))
    contacts = filter_by_display_name(ctx, contacts)
    page, next_link = paged(ctx, contacts, path)
    rows = [_contact_shape(ctx, c, select) for c in page]
    return collection(ctx.odata_context(context_with_select("contacts", select)), rows, next_link)


def _create_contact(ctx, folder):
    fields = _contact_fields(ctx)
    contact = ctx.mailbox.add_contact(folder.id, **fields)
    body = {"@odata.context": ctx.odata_context("contacts/$entity")}
    body.update(_contact_shape(ctx, contact))
    return GraphAnswer(201, body)


def _get_contact(ctx, reference):
    contact = find_item(ctx, reference, "contact")
    body = {"@odata.context": ctx.odata_context("contacts/$entity")}
    body.update(_contact_shape(ctx, contact, parse_select(ctx)))
    return GraphAnswer(200, body)


def _update_contact(ctx, reference):
    contact = find_item(ctx, reference, "contact")
    check_if_match(ctx, contact)
    fields = _contact_fields(ctx, contact)
    contact = ctx.mailbox.update_item(contact.id, **fields)
    body = {"@odata.context": ctx.odata_context("contacts/$entity")}
    body.update(_contact_shape(ctx, contact))
    return GraphAnswer(200, body)


def _delete_contact(ctx, reference):
    contact = find_item(ctx, reference, "contact")
    check_if_match(ctx, contact)
    ctx.mailbox.delete_item(contact.id, soft=True)
    return GraphAnswer(204)


@route("GET", "contacts")
def list_contacts(ctx):
    return _list_contacts(ctx, _contact_folder(ctx), "contacts")


@route("POST", "contacts")
def create_contact(ctx):
    return _create_contact(ctx, _contact_folder(ctx))


@route("GET", "contacts/{item}")
def get_contact(ctx, reference):
    return _get_contact(ctx, reference)


@route("PATCH", "contacts/{item}")
def update_contact(ctx, reference):
    return _update_contact(ctx, reference)


@route("DELETE", "contacts/{item}")
def delete_contact(ctx, reference):
    return _delete_contact(ctx, reference)


@route("GET", "contactFolders/{folder}/contacts")
def list_folder_contacts(ctx, folder_reference):
    return _list_contacts(ctx, _contact_folder(ctx, folder_reference),
                          f"contactFolders/{folder_reference}/contacts")


@route("POST", "contactFolders/{folder}/contacts")
def create_folder_contact(ctx, folder_reference):
    return _create_contact(ctx, _contact_folder(ctx, folder_reference))


@route("GET", "contactFolders/{folder}/contacts/{item}")
def get_folder_contact(ctx, folder_reference, reference):
    _contact_folder(ctx, folder_reference)
    return _get_contact(ctx, reference)


@route("PATCH", "contactFolders/{folder}/contacts/{item}")
def update_folder_contact(ctx, folder_reference, reference):
    _contact_folder(ctx, folder_reference)
    return _update_contact(ctx, reference)


@route("DELETE", "contactFolders/{folder}/contacts/{item}")
def delete_folder_contact(ctx, folder_reference, reference):
    _contact_folder(ctx, folder_reference)
    return _delete_contact(ctx, reference)
