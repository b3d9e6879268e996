"""Delta tokens of the Graph simulator ($skiptoken / $deltatoken).

Message delta tokens are self-contained: signed JSON with the store sequence
numbers of the round (see graph.messages_delta).  Calendar-view delta needs
to know which occurrences the client was told about, so its tokens point at
server-side snapshots kept in a bounded cache; like Exchange's sync-state
cache, an evicted or expired state answers 410 and the client resyncs.
"""
import base64
import binascii
import collections
import hashlib
import hmac
import json
import os
import threading
import time
import uuid

MAX_KEPT_STATES = 5000


class SyncStateError(Exception):
    """The token is unknown, tampered with, for another folder, or expired."""


class DeltaTokens:
    """Issues and checks delta tokens; keeps calendar-view snapshots."""

    def __init__(self, secret=None):
        self._secret = secret or os.urandom(32)
        self._lock = threading.Lock()
        self._kept = collections.OrderedDict()

    def _sign(self, raw):
        return hmac.new(self._secret, raw, hashlib.sha256).digest()[:12]

    def issue(self, kind, mailbox_id, folder_id, state):
        """A URL-safe opaque token for this state."""
        payload = dict(state, k=kind, m=mailbox_id, f=folder_id, t=time.time())
        raw = json.dumps(payload, separators=(",", ":"), sort_keys=True).encode()
        token = base64.urlsafe_b64encode(raw + self._sign(raw)).decode()
        return token.rstrip("=")

    def read(self, token, kind, mailbox_id, folder_id, ttl_seconds=None):
        """The state inside a token; SyncStateError when it cannot be honoured."""
        try:
            blob = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        except (binascii.Error, ValueError):
            raise SyncStateError("The sync state could not be found.") from None
        raw, signature = blob[:-12], blob[-12:]
        if len(blob) < 13 or not hmac.compare_digest(signature, self._sign(raw)):
            raise SyncStateError("The sync state could not be found.")
        state = json.loads(raw)
        if state.get("k") != kind or state.get("m") != mailbox_id or state.get("f") != folder_id:
            raise SyncStateError("The sync state does not belong to this folder.")
        if ttl_seconds is not None and time.time() - state["t"] > ttl_seconds:
            raise SyncStateError("The sync state has expired; a full synchronization is required.")
        return state

    # -- server-side calendar-view state
    def _keep(self, value):
        key = uuid.uuid4().hex
        with self._lock:
            self._kept[key] = value
            while len(self._kept) > MAX_KEPT_STATES:
                self._kept.popitem(last=False)
        return key

    def _get(self, key):
        with self._lock:
            if key not in self._kept:
                raise SyncStateError("The sync state could not be found.")
            return self._kept[key]

    def keep_snapshot(self, snapshot):
        """Remember {event id: fingerprint} the client now knows; returns its key."""
        return self._keep(("snapshot", snapshot))

    def snapshot(self, key):
        kind, value = self._get(key)
        return value

    def keep_round(self, rows, snapshot, window):
        """Remember a computed delta round being paged through."""
        return self._keep(("round", (rows, snapshot, window)))

    def pending_page(self, key):
        """(rows, snapshot, window) of a round kept by keep_round."""
        kind, value = self._get(key)
        return value
