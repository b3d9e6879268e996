"""The Tenant: HTTPS server, WSGI dispatcher, request log and admin API.

Routes: ``/{tenant}/v2.0/...``, ``/{tenant}/oauth2/v2.0/...``,
``/{tenant}/discovery/...`` → identity.py; ``/v1.0/...`` → graph.py
``GraphApp``; ``/EWS/Exchange.asmx`` → ews.py ``EwsApp``; ``/_admin/...`` →
JSON admin API.  graph.py and ews.py are imported lazily so the tenant runs
(and answers 501) while they do not exist yet.
"""

import collections
import html
import importlib
import io
import json
import logging
import re
import shutil
import socket
import ssl
import tempfile
import threading
import time
import uuid
from urllib.parse import parse_qsl, urlsplit

import requests
from werkzeug.serving import WSGIRequestHandler, make_server
from werkzeug.wrappers import Request, Response

from . import knobs as knobs_module
from .identity import Identity
from .knobs import KnobRegistry
from .store import Store
from .tls import server_ssl_context

_logger = logging.getLogger(__name__)

IDENTITY_PATH = re.compile(r"^/([^/]+)(/(?:v2\.0|oauth2|discovery)(?:/.*)?)$")
EWS_PATH = re.compile(r"^/ews/exchange\.asmx/?$", re.IGNORECASE)
SOAP_OPERATION = re.compile(rb"<(?:[\w-]+:)?Body\b[^>]*>\s*<(?:[\w-]+:)?([A-Za-z]+)")
ID_SEGMENT = re.compile(r"^(?:[A-Za-z0-9_=-]{24,}|[0-9a-fA-F-]{32,36}|[^/@]+@[^/]+|\{[^}]*\})$")
ODATA_KEY = re.compile(r"\('[^']*'\)")


class RequestLog:
    """Every request the tenant served.

    Entries are dicts: protocol, method, path, endpoint, operation, mailbox, app, status, ts, duration_ms.
    """

    def __init__(self):
        self._lock = threading.Lock()
        self.entries = []

    def add(self, entry):
        with self._lock:
            self.entries.append(entry)

    def clear(self):
        """Forget every entry."""
        with self._lock:
            self.entries = []

    def count(self, protocol=None, endpoint=None, mailbox=None, status=None):
        """Number of entries matching all given filters.

        ``endpoint`` matches the normalised path ("/v1.0/me/mailFolders/{id}/messages"),
        the EWS operation ("FindItem") or, with a trailing "*", a prefix of either.
        """
        with self._lock:
            entries = list(self.entries)
        return sum(1 for e in entries if _matches(e, protocol, endpoint, mailbox, status))

    def counts(self):
        """{(protocol, endpoint or operation): count}."""
        with self._lock:
            return collections.Counter(
                (e["protocol"], e.get("operation") or e["endpoint"]) for e in self.entries
            )


def _matches(entry, protocol, endpoint, mailbox, status):
    if protocol and entry["protocol"] != protocol:
        return False
    if mailbox and (entry.get("mailbox") or "").lower() != mailbox.lower():
        return False
    if status is not None and entry["status"] != status:
        return False
    if endpoint:
        names = (entry["endpoint"], entry.get("operation") or "", entry["path"])
        if endpoint.endswith("*"):
            return any(n.startswith(endpoint[:-1]) for n in names)
        return endpoint in names
    return True


def normalise_endpoint(path):
    """Replace ids, e-mail addresses and OData keys in a path by {id}."""
    path = ODATA_KEY.sub("({id})", path)
    return "/".join(
        "{id}" if ID_SEGMENT.match(part) and part not in ("v1.0",) else part for part in path.split("/")
    )


class _QuietHandler(WSGIRequestHandler):
    """Werkzeug's handler with HTTP/1.1 keep-alive, as IIS serves Exchange.

    Werkzeug's development server closes every connection because http.server cannot drain
    an unread request body; Tenant.wsgi_app always reads the whole body first, so the
    connection can stay open. NTLM depends on it: its handshake is bound to the connection.
    """

    def setup(self):
        super().setup()
        # Headers and body leave in separate writes; on a kept-alive connection Nagle's algorithm
        # would hold the second one back until the client's delayed ACK (40 ms a request).
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def handle(self):
        # The TLS handshake, here in the connection's thread rather than in the accept thread (see
        # tls.DeferredHandshakeContext), bounded: a client that never starts TLS holds only itself.
        if isinstance(self.connection, ssl.SSLSocket):
            try:
                self.connection.settimeout(self.server.tls_handshake_timeout)
                self.connection.do_handshake()
            except OSError as error:  # ssl.SSLError and socket timeouts among them
                _logger.debug("TLS handshake with %s failed: %s", self.client_address, error)
                self.close_connection = True
                return
            self.connection.settimeout(None)
        super().handle()

    def send_header(self, keyword, value):
        if (keyword.lower() == "connection" and value.lower() == "close"
                and self.request_version == "HTTP/1.1"
                and self.headers.get("Connection", "").lower() != "close"
                and "chunked" not in self.headers.get("Transfer-Encoding", "").lower()):
            return
        super().send_header(keyword, value)

    def log_request(self, code="-", size="-"):
        _logger.debug("%s %s %s", self.command, self.path, code)

    def log_error(self, format, *args):  # noqa: A002 - werkzeug's signature
        _logger.debug(format, *args)


class Tenant:
    """A local Microsoft tenant (identity platform, Graph v1.0, EWS) over HTTPS on 127.0.0.1."""

    #: Seconds a client has, once connected, to complete the TLS handshake.
    tls_handshake_timeout = 10

    def __init__(self, host="127.0.0.1", port=0, state_dir=None, tenant_id=None):
        self.host = host
        self.requested_port = port
        self._own_state_dir = state_dir is None
        self.state_dir = state_dir or tempfile.mkdtemp(prefix="exchange-tenant-")
        self.tenant_id = tenant_id or str(uuid.uuid4())
        self.store = Store()
        self.knobs = KnobRegistry()
        self.identity = Identity(self)
        self.request_log = RequestLog()
        self.apps = self.identity.apps
        self.scenario = None
        self._protocol_apps = {}
        self._protocol_lock = threading.Lock()
        self._server = None
        self._thread = None
        self.base_url = None
        self.ca_path = None

    # -- lifecycle
    @classmethod
    def start(cls, scenario=None, host="127.0.0.1", port=0, state_dir=None):
        """Create, seed (scenario: path or dict) and serve a tenant; returns it running."""
        from .scenario import load_scenario_data

        data = load_scenario_data(scenario) if scenario is not None else None
        tenant = cls(host=host, port=port, state_dir=state_dir, tenant_id=(data or {}).get("tenant_id"))
        tenant.serve()
        if data is not None:
            tenant.seed(data)
        return tenant

    def serve(self):
        """Bind and serve in a daemon thread (idempotent)."""
        if self._server is not None:
            return
        ssl_context, self.ca_path = server_ssl_context(self.state_dir)
        self._server = make_server(
            self.host,
            self.requested_port,
            self.wsgi_app,
            threaded=True,
            ssl_context=ssl_context,
            request_handler=_QuietHandler,
        )
        self._server.tls_handshake_timeout = self.tls_handshake_timeout
        port = self._server.server_port
        host = f"[{self.host}]" if ":" in self.host else self.host
        self.base_url = f"https://{host}:{port}"
        self._thread = threading.Thread(target=self._server.serve_forever, name=f"tenant-{port}", daemon=True)
        self._thread.start()

    def stop(self):
        """Stop serving and remove a state dir the tenant created itself."""
        if self._server is None:
            return
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)
        self._server = None
        if self._own_state_dir:
            shutil.rmtree(self.state_dir, ignore_errors=True)

    def __enter__(self):
        self.serve()
        return self

    def __exit__(self, *exc):
        self.stop()

    # -- conveniences
    @property
    def port(self):
        return self._server.server_port if self._server else None

    @property
    def authority(self):
        return f"{self.base_url}/{self.tenant_id}"

    @property
    def graph_url(self):
        return self.base_url + "/v1.0"

    @property
    def ews_url(self):
        return self.base_url + "/EWS/Exchange.asmx"

    def register_app(self, client_id, client_secret, redirect_uris, name="App", roles=None):
        """Register an application with the identity platform; returns the App."""
        return self.identity.register_app(client_id, client_secret, redirect_uris, name=name, roles=roles)

    def browser_sign_in(self, auth_uri, login, password):
        """Fill this tenant's sign-in page as a browser would; return what it sends back to the app.

        ``auth_uri`` is the authorize URL a client built (msal's ``flow["auth_uri"]``). The answer
        parameters (``code``, ``state``, ...) come from the redirect's query string, or, with
        ``response_mode=form_post``, from the auto-submitting form. AssertionError, with the
        page's text, when the sign-in was refused.
        """
        answer = self._post_sign_in_form(auth_uri, login, password)
        if answer.status_code in (302, 303):
            return dict(parse_qsl(urlsplit(answer.headers["Location"]).query))
        fields = {name: html.unescape(value) for name, value in
                  re.findall(r'<input type="hidden" name="([^"]*)" value="([^"]*)"', answer.text)}
        assert "code" in fields, answer.text[:500]
        return fields

    def browser_sign_in_redirect(self, auth_uri, login, password):
        """Like :meth:`browser_sign_in` (``response_mode=query``); return the URL the browser is sent to."""
        answer = self._post_sign_in_form(auth_uri, login, password)
        assert answer.status_code in (302, 303), answer.text[:500]
        return answer.headers["Location"]

    def _post_sign_in_form(self, auth_uri, login, password):
        with requests.Session() as browser:
            browser.trust_env = False  # REQUESTS_CA_BUNDLE would replace verify
            browser.verify = self.ca_path
            return browser.post(auth_uri, data={"login": login, "password": password},
                                allow_redirects=False, timeout=30)

    def seed(self, scenario):
        """Add a scenario (path, YAML/JSON text or dict) to the running tenant."""
        from .scenario import apply_scenario, load_scenario_data

        data = load_scenario_data(scenario)
        apply_scenario(self, data)
        self.scenario = data
        return data

    def info(self):
        """What a client needs to connect (written to tenant.json by the CLI)."""
        apps = [
            {
                "name": a.name,
                "client_id": a.client_id,
                "client_secret": a.client_secret,
                "redirect_uris": a.redirect_uris,
            }
            for a in self.apps.values()
        ]
        zones = {
            str(user.get("email", "")).lower(): user.get("time_zone", "UTC")
            for user in (self.scenario or {}).get("users", [])
        }
        return {
            "tenant_id": self.tenant_id,
            "base_url": self.base_url,
            "authority": self.authority,
            "graph_url": self.graph_url,
            "ews_url": self.ews_url,
            "ca_path": self.ca_path,
            "state_dir": self.state_dir,
            "apps": apps,
            "users": [
                {
                    "email": m.email,
                    "display_name": m.display_name,
                    "username": m.username,
                    "password": m.password,
                    "time_zone": zones.get(m.email.lower(), "UTC"),
                }
                for m in self.store.mailboxes()
            ],
        }

    # -- WSGI
    def _protocol_app(self, module_name, class_name):
        with self._protocol_lock:
            app = self._protocol_apps.get(module_name)
            if app is None:
                try:
                    module = importlib.import_module("." + module_name, __package__)
                except ImportError as error:
                    if getattr(error, "name", "") != f"{__package__}.{module_name}":
                        raise
                    return None
                app = self._protocol_apps[module_name] = getattr(module, class_name)(self)
            return app

    def wsgi_app(self, environ, start_response):
        """Dispatch one request to identity / Graph / EWS / admin and log it."""
        started = time.time()
        path = environ.get("PATH_INFO", "") or "/"
        entry = {
            "protocol": "other",
            "method": environ.get("REQUEST_METHOD"),
            "path": path,
            "endpoint": path,
            "operation": None,
            "mailbox": None,
            "app": None,
            "status": None,
            "ts": started,
        }
        environ["simulator.log_entry"] = entry
        # Read the whole body up front: the connection is kept alive (see _QuietHandler), so
        # no byte of this request may be left for the next request line.
        length = int(environ.get("CONTENT_LENGTH") or 0)
        environ["wsgi.input"] = io.BytesIO(environ["wsgi.input"].read(length) if length > 0 else b"")
        knobs_module.clear_last_admitted()
        status_holder = {}

        def recording_start_response(status, headers, exc_info=None):
            status_holder["status"] = int(status.split(" ", 1)[0])
            return start_response(status, headers, exc_info)

        try:
            body = self._dispatch(environ, recording_start_response, entry, path)
        except Exception:
            _logger.exception("simulator error on %s %s", entry["method"], path)
            body = Response(
                json.dumps(
                    {
                        "error": {
                            "code": "InternalServerError",
                            "message": "The simulator failed on this request.",
                        }
                    }
                ),
                status=500,
                content_type="application/json",
            )(environ, recording_start_response)
        admitted = knobs_module.last_admitted()
        if admitted:
            entry["app"] = entry["app"] or admitted[1]
            entry["mailbox"] = entry["mailbox"] or admitted[2]
        entry["status"] = status_holder.get("status")
        entry["duration_ms"] = round((time.time() - started) * 1000, 1)
        self.request_log.add(entry)
        return body

    def _dispatch(self, environ, start_response, entry, path):
        if path.startswith("/v1.0/") or path == "/v1.0":
            entry["protocol"] = "graph"
            entry["endpoint"] = normalise_endpoint(path)
            return self._call_protocol("graph", "GraphApp", environ, start_response)
        if EWS_PATH.match(path):
            entry["protocol"] = "ews"
            entry["endpoint"] = "/EWS/Exchange.asmx"
            body = environ["wsgi.input"].getvalue()
            match = SOAP_OPERATION.search(body)
            entry["operation"] = match.group(1).decode() if match else None
            return self._call_protocol("ews", "EwsApp", environ, start_response)
        if path.startswith("/_admin/"):
            entry["protocol"] = "admin"
            return self._admin(Request(environ), path)(environ, start_response)
        match = IDENTITY_PATH.match(path)
        if match:
            entry["protocol"] = "identity"
            entry["endpoint"] = "/{tenant}" + match.group(2)
            response = self.identity.handle(Request(environ), match.group(1), match.group(2))
            return response(environ, start_response)
        return Response(
            json.dumps({"error": {"code": "BadRequest", "message": f"Unknown path {path}"}}),
            status=404,
            content_type="application/json",
        )(environ, start_response)

    def _call_protocol(self, module_name, class_name, environ, start_response):
        app = self._protocol_app(module_name, class_name)
        if app is None:
            return Response(
                json.dumps(
                    {
                        "error": {
                            "code": "NotImplemented",
                            "message": f"{module_name}.py is not available yet.",
                        }
                    }
                ),
                status=501,
                content_type="application/json",
            )(environ, start_response)
        if hasattr(app, "handle") and not callable(app):
            return app.handle(Request(environ))(environ, start_response)
        return app(environ, start_response)

    # -- admin API
    def _admin(self, request, path):
        try:
            if path == "/_admin/knobs":
                if request.method == "POST":
                    payload = request.get_json(force=True) or {}
                    if payload.pop("reset", False):
                        self.knobs.reset()
                    mailbox = payload.pop("mailbox", None)
                    if payload:
                        self.knobs.set(mailbox, **payload)
                return _json(self.knobs.as_dict())
            if path == "/_admin/log":
                if request.method in ("DELETE", "POST"):
                    self.request_log.clear()
                counts = {"{} {}".format(*key): value for key, value in self.request_log.counts().items()}
                return _json({"counts": counts, "entries": list(self.request_log.entries)})
            if path == "/_admin/seed" and request.method == "POST":
                payload = request.get_json(force=True) or {}
                self.seed(payload)
                return _json(self.store.summary())
            if path == "/_admin/store":
                return _json(self.store.summary())
            if path == "/_admin/info":
                return _json(self.info())
            if path == "/_admin/revoke" and request.method == "POST":
                self.identity.revoke((request.get_json(force=True) or {})["email"])
                return _json({"revoked": True})
            if path == "/_admin/clock" and request.method == "POST":
                self.identity.advance_clock(float((request.get_json(force=True) or {}).get("advance", 0)))
                return _json({"clock_offset": self.identity.clock_offset})
        except (ValueError, KeyError, TypeError) as error:
            return _json({"error": str(error)}, status=400)
        return _json({"error": f"unknown admin endpoint {request.method} {path}"}, status=404)


def _json(body, status=200):
    return Response(json.dumps(body, default=str), status=status, content_type="application/json")
