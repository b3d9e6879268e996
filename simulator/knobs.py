"""Realism knobs: throttling, concurrency limits, budgets, errors, latency, lifetimes.

Knob values are resolved per mailbox: defaults, overridden by tenant-wide
settings (``set(None, ...)``), overridden by settings for that mailbox.
``admit()`` is called by graph.py and ews.py for every authenticated mailbox
request; it raises ``Refused`` or tracks the request while it runs.
"""

import collections
import contextlib
import random
import socket
import threading
import time
from dataclasses import asdict, dataclass, fields
from typing import Optional

BUDGET_WINDOW_SECONDS = 600


@dataclass
class Knobs:
    throttle_rate: float = 0.0  # fraction of requests refused with 429 / ErrorServerBusy
    retry_after_seconds: float = 1  # Retry-After (Graph) / BackOffMilliseconds (EWS)
    max_concurrency: int = 4  # per (app, mailbox), as Exchange Online
    budget_per_10min: int = 10000  # per (app, mailbox), as Exchange Online
    error_rate_503: float = 0.0  # fraction of requests answered 503
    latency_ms: int = 0  # added to every admitted request
    sync_state_ttl_seconds: Optional[float] = None  # older delta tokens / SyncStates are refused
    token_lifetime_seconds: int = 3600  # access tokens issued for the mailbox
    page_size: Optional[int] = None  # overrides the server's default page size
    # Exchange's EwsFindCountLimit (1000 by default): an EWS FindItem / FindFolder answers at most
    # this many items, with IncludesLastItemInRange="false" when it cut the list. None: no limit.
    find_count_limit: Optional[int] = 1000
    # Microsoft's identity platform keeps a refresh token valid after it is redeemed (it only hands
    # out a new one); some identity providers rotate strictly. True: a redeemed refresh token is
    # refused with AADSTS70008, so a client must persist every rotated token.
    refresh_token_single_use: bool = False
    # Graph's iCalUId of the occurrences and exceptions of a series: "per_occurrence" as the v1.0
    # documentation says (each differs), or "shared" (the series' one), as some mailboxes answer.
    occurrence_ical_uid: str = "per_occurrence"
    # A mail source (Graph GET .../$value, an EWS GetItem answer with MimeContent) announced whole
    # but cut off after this many bytes: the connection is closed in the middle of the body, as a
    # dropped link does. None: sent whole.
    cut_mime_after_bytes: Optional[int] = None
    seed: Optional[int] = None  # random seed for reproducible storms


KNOB_NAMES = tuple(f.name for f in fields(Knobs))
OCCURRENCE_ICAL_UIDS = ("per_occurrence", "shared")


class Refused(Exception):
    """A request the knobs refuse.

    kind: Graph error code ("TooManyRequests", "MailboxConcurrency",
    "ApplicationThrottled", "ServiceUnavailable"); status: 429 or 503;
    retry_after: seconds the client should wait.  EWS renders every kind as
    ErrorServerBusy (BackOffMilliseconds = retry_after * 1000) except
    ServiceUnavailable, which is a bare HTTP 503.
    """

    MESSAGES = {
        "TooManyRequests": "Application is over its resource limit.",
        "MailboxConcurrency": "Application is over its MailboxConcurrency limit.",
        "ApplicationThrottled": "Application is over its IncomingBytes or request budget limit.",
        "ServiceUnavailable": "The service is temporarily unavailable. Please retry later.",
    }

    def __init__(self, kind, retry_after, status=429):
        super().__init__(f"{kind}: {self.MESSAGES.get(kind, kind)}")
        self.kind = kind
        self.retry_after = retry_after
        self.status = status
        self.message = self.MESSAGES.get(kind, kind)


class KnobRegistry:
    """Knobs per mailbox plus the runtime state (concurrency, budgets) they act on."""

    def __init__(self):
        self._lock = threading.Lock()
        self._tenant_wide = {}
        self._per_mailbox = {}
        self._random = {}
        self._active = collections.Counter()
        self._peak = collections.Counter()
        self._budget = collections.defaultdict(collections.deque)

    # -- settings
    def set(self, mailbox_email=None, **values):
        """Set knobs for one mailbox, or tenant-wide when mailbox_email is None."""
        unknown = set(values) - set(KNOB_NAMES)
        if unknown:
            raise ValueError("unknown knobs: {}".format(", ".join(sorted(unknown))))
        if values.get("occurrence_ical_uid", "shared") not in OCCURRENCE_ICAL_UIDS:
            raise ValueError("occurrence_ical_uid is one of: " + ", ".join(OCCURRENCE_ICAL_UIDS))
        with self._lock:
            target = (
                self._tenant_wide
                if mailbox_email is None
                else self._per_mailbox.setdefault(mailbox_email.lower(), {})
            )
            target.update(values)
            if "seed" in values:
                # A new seed restarts the random sequence of every affected mailbox.
                if mailbox_email is None:
                    self._random.clear()
                else:
                    self._random.pop(mailbox_email.lower(), None)

    def get(self, mailbox_email=None):
        """Effective Knobs for a mailbox (or the tenant-wide ones for None)."""
        with self._lock:
            values = dict(self._tenant_wide)
            if mailbox_email:
                values.update(self._per_mailbox.get(mailbox_email.lower(), {}))
            return Knobs(**values)

    def reset(self):
        """Back to defaults; forget concurrency peaks, budgets and random state."""
        with self._lock:
            self._tenant_wide.clear()
            self._per_mailbox.clear()
            self._random.clear()
            self._peak.clear()
            self._budget.clear()

    def as_dict(self):
        """JSON-able view: defaults, tenant-wide and per-mailbox overrides."""
        with self._lock:
            return {
                "defaults": asdict(Knobs()),
                "tenant": dict(self._tenant_wide),
                "mailboxes": {k: dict(v) for k, v in self._per_mailbox.items()},
            }

    # -- runtime
    def peak_concurrency(self, app=None, mailbox_email=None):
        """Highest number of simultaneous admitted requests seen for (app, mailbox).

        With app or mailbox None, the highest over all matching pairs.
        """
        with self._lock:
            values = [
                peak
                for (peak_app, peak_mailbox), peak in self._peak.items()
                if (app is None or peak_app == app)
                and (mailbox_email is None or peak_mailbox == mailbox_email.lower())
            ]
            return max(values, default=0)

    def active(self, app, mailbox_email):
        """Requests of (app, mailbox) being served right now."""
        with self._lock:
            return self._active[(app, (mailbox_email or "").lower())]

    def _rng(self, mailbox_key, knobs):
        rng = self._random.get(mailbox_key)
        if rng is None:
            rng = self._random[mailbox_key] = random.Random(knobs.seed)
        return rng

    def check(self, protocol, app, mailbox_email):
        """Decide on a request without tracking it; raise Refused, else return the Knobs."""
        knobs = self.get(mailbox_email)
        key = (app, (mailbox_email or "").lower())
        now = time.monotonic()
        with self._lock:
            window = self._budget[key]
            while window and window[0] <= now - BUDGET_WINDOW_SECONDS:
                window.popleft()
            if len(window) >= knobs.budget_per_10min:
                retry = max(1, int(window[0] + BUDGET_WINDOW_SECONDS - now) + 1)
                raise Refused("ApplicationThrottled", retry)
            window.append(now)
            if self._active[key] >= knobs.max_concurrency:
                raise Refused("MailboxConcurrency", knobs.retry_after_seconds)
            rng = self._rng(key[1], knobs)
            if knobs.throttle_rate and rng.random() < knobs.throttle_rate:
                raise Refused("TooManyRequests", knobs.retry_after_seconds)
            if knobs.error_rate_503 and rng.random() < knobs.error_rate_503:
                raise Refused("ServiceUnavailable", knobs.retry_after_seconds, status=503)
        return knobs

    @contextlib.contextmanager
    def admit(self, protocol, app, mailbox_email):
        """Context manager around serving one request of ``app`` on ``mailbox_email``.

        Raises Refused (throttle, concurrency, budget, 503) before the body runs;
        otherwise counts the request as active for its duration and sleeps
        ``latency_ms`` inside that slot, so latency raises real concurrency.
        """
        _last_admitted.value = (protocol, app, mailbox_email)
        knobs = self.check(protocol, app, mailbox_email)
        key = (app, (mailbox_email or "").lower())
        with self._lock:
            # Re-check under the same lock that increments: check() released it.
            if self._active[key] >= knobs.max_concurrency:
                raise Refused("MailboxConcurrency", knobs.retry_after_seconds)
            self._active[key] += 1
            self._peak[key] = max(self._peak[key], self._active[key])
        try:
            if knobs.latency_ms:
                time.sleep(knobs.latency_ms / 1000.0)
            yield knobs
        finally:
            with self._lock:
                self._active[key] -= 1


_last_admitted = threading.local()


def last_admitted():
    """(protocol, app, mailbox) of the last admit() on this thread, for the request log."""
    return getattr(_last_admitted, "value", None)


def clear_last_admitted():
    _last_admitted.value = None


def cut_body(environ, body, cut_after):
    """A WSGI body iterable that sends ``cut_after`` bytes of ``body``, then drops the connection.

    The caller has announced ``len(body)`` as the Content-Length (knob ``cut_mime_after_bytes``).
    """
    connection = environ.get("werkzeug.socket")

    def cut():
        yield body[:cut_after]
        if connection is not None:
            connection.shutdown(socket.SHUT_RDWR)
        raise ConnectionAbortedError("the simulator cut the body (knob cut_mime_after_bytes)")

    return cut()
