"""HTTP Basic and NTLM authentication for the simulated EWS endpoint, as IIS does it before Exchange.

NTLM is verified here (NTLMv2 only, as an Exchange with LmCompatibilityLevel 5) rather than with
``spnego.server``: pyspnego's acceptor reads passwords from the process-wide ``NTLM_USER_FILE``, which
does not fit several in-process tenants with their own mailboxes. Message structures and primitives
come from pyspnego, which ``requests_ntlm`` (exchangelib's NTLM client) also uses.

Werkzeug's development server closes every connection after one response, although NTLM is
connection-oriented (IIS keeps the handshake per TCP connection). The challenge is therefore found
again through the server timestamp the client echoes in its NTLMv2 response (AV pair MsvAvTimestamp,
unique per challenge), and per connection as well when the server keeps connections alive.
"""

import base64
import binascii
import hmac
import os
import threading
import time
import weakref
from datetime import datetime, timezone

from spnego._ntlm_raw.crypto import hmac_md5, ntowfv1, ntowfv2
from spnego._ntlm_raw.messages import (
    Authenticate,
    AvId,
    Challenge,
    FileTime,
    Negotiate,
    NegotiateFlags,
    NTClientChallengeV2,
    TargetInfo,
    Version,
)

NETBIOS_DOMAIN = "CONTOSO"
SERVER_NAME = "EXCH01"
# A handshake left half-way is forgotten after this long.
_HANDSHAKE_TTL_SECONDS = 120


class AuthFailed(Exception):
    """Authentication did not (yet) succeed; ``challenges`` are the WWW-Authenticate values of the 401."""

    def __init__(self, challenges):
        super().__init__("401 Unauthorized")
        self.challenges = challenges


def find_mailbox(store, user_name, domain=None):
    """The mailbox a log-on name designates: e-mail address, ``DOMAIN\\user`` or the ``username``."""
    if domain is None and "\\" in user_name:
        domain, user_name = user_name.split("\\", 1)
    wanted = user_name.strip().lower()
    for mailbox in store.mailboxes():
        if mailbox.email.lower() == wanted:
            return mailbox
        username = (getattr(mailbox, "username", None) or "").lower()
        local_part = mailbox.email.split("@", 1)[0].lower()
        if wanted in (username, local_part) and (username or domain):
            return mailbox
    return None


class EwsAuthenticator:
    """Checks the Authorization header of EWS requests; NTLM state is kept per TCP connection.

    A connection that finished an NTLM handshake stays authenticated (IIS behaviour), so later requests on the
    same connection may come without an Authorization header.
    """

    def __init__(self, store):
        self._store = store
        self._lock = threading.Lock()
        # socket object (weakly held, so a closed connection drops its state) or (addr, port) → state
        self._pending_by_socket = weakref.WeakKeyDictionary()
        self._pending_by_address = {}
        self._authenticated_by_socket = weakref.WeakKeyDictionary()
        self._authenticated_by_address = {}
        self._challenges_by_timestamp = {}  # packed MsvAvTimestamp → (Challenge, issued monotonic)

    # -- connection-keyed state ----------------------------------------------------------------------------
    @staticmethod
    def _connection(environ):
        sock = environ.get("werkzeug.socket")
        if sock is not None:
            try:
                weakref.ref(sock)
                return sock, True
            except TypeError:
                pass
        return (environ.get("REMOTE_ADDR"), environ.get("REMOTE_PORT")), False

    def _get(self, table, environ):
        key, weak = self._connection(environ)
        mapping = getattr(self, f"_{table}_by_socket" if weak else f"_{table}_by_address")
        with self._lock:
            return mapping.get(key)

    def _set(self, table, environ, value):
        key, weak = self._connection(environ)
        mapping = getattr(self, f"_{table}_by_socket" if weak else f"_{table}_by_address")
        with self._lock:
            if value is None:
                mapping.pop(key, None)
            else:
                mapping[key] = value

    # -- entry point --------------------------------------------------------------------------------------
    def authenticate(self, environ):
        """Return ``(mailbox, response_headers)`` or raise ``AuthFailed`` with the challenges for a 401."""
        header = environ.get("HTTP_AUTHORIZATION", "")
        scheme, _, credentials = header.partition(" ")
        scheme = scheme.lower()
        if scheme == "basic":
            return self._basic(credentials.strip()), []
        if scheme in ("ntlm", "negotiate"):
            return self._ntlm(environ, scheme, credentials.strip())
        mailbox_email = self._get("authenticated", environ)
        if mailbox_email:
            try:
                return self._store.mailbox(mailbox_email), []
            except KeyError:
                self._set("authenticated", environ, None)
        raise AuthFailed(["NTLM", 'Basic realm="' + environ.get("HTTP_HOST", "localhost") + '"'])

    def _basic(self, credentials):
        try:
            user_pass = base64.b64decode(credentials, validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError):
            raise AuthFailed(["NTLM", 'Basic realm=""']) from None
        user_name, _, password = user_pass.partition(":")
        mailbox = find_mailbox(self._store, user_name)
        if mailbox is None or not hmac.compare_digest(mailbox.password.encode(), password.encode()):
            raise AuthFailed(["NTLM", 'Basic realm=""'])
        return mailbox

    def _ntlm(self, environ, scheme, credentials):
        scheme_name = "NTLM" if scheme == "ntlm" else "Negotiate"
        try:
            token = base64.b64decode(credentials, validate=True)
        except binascii.Error:
            raise AuthFailed([scheme_name]) from None
        if len(token) < 12 or not token.startswith(b"NTLMSSP\x00"):
            raise AuthFailed([scheme_name])
        message_type = int.from_bytes(token[8:12], "little")
        if message_type == 1:
            challenge = self._challenge_for(Negotiate.unpack(token))
            self._set("pending", environ, (challenge, time.monotonic()))
            with self._lock:
                self._forget_old_challenges()
                self._challenges_by_timestamp[challenge.target_info[AvId.timestamp].pack()] = (
                    challenge,
                    time.monotonic(),
                )
            self._set("authenticated", environ, None)
            raise AuthFailed([f"{scheme_name} {base64.b64encode(challenge.pack()).decode()}"])
        if message_type == 3:
            auth = Authenticate.unpack(token)
            pending = self._get("pending", environ) or self._challenge_echoed_in(auth)
            self._set("pending", environ, None)
            if not pending or time.monotonic() - pending[1] > _HANDSHAKE_TTL_SECONDS:
                raise AuthFailed([scheme_name])
            with self._lock:
                self._challenges_by_timestamp.pop(pending[0].target_info[AvId.timestamp].pack(), None)
            mailbox = self._verify(pending[0], auth)
            if mailbox is None:
                raise AuthFailed([scheme_name])
            self._set("authenticated", environ, mailbox.email)
            return mailbox, []
        raise AuthFailed([scheme_name])

    def _forget_old_challenges(self):
        now = time.monotonic()
        for key, (_, issued) in list(self._challenges_by_timestamp.items()):
            if now - issued > _HANDSHAKE_TTL_SECONDS:
                del self._challenges_by_timestamp[key]

    def _challenge_echoed_in(self, auth):
        nt_response = auth.nt_challenge_response or b""
        if len(nt_response) <= 24:
            return None
        try:
            echoed = NTClientChallengeV2.unpack(nt_response[16:]).av_pairs
            key = echoed[AvId.timestamp].pack()
        except (ValueError, KeyError, TypeError):
            return None
        with self._lock:
            return self._challenges_by_timestamp.get(key)

    def _unique_timestamp(self):
        stamp = FileTime.now()
        with self._lock:
            nanoseconds = 0
            while stamp.pack() in self._challenges_by_timestamp:
                nanoseconds += 100
                stamp = FileTime.from_datetime(datetime.now(timezone.utc), ns=nanoseconds % 1000)
        return stamp

    def _challenge_for(self, negotiate):
        flags = (
            negotiate.flags
            | NegotiateFlags.request_target
            | NegotiateFlags.ntlm
            | NegotiateFlags.always_sign
            | NegotiateFlags.target_info
            | NegotiateFlags.target_type_domain
        )
        if flags & NegotiateFlags.unicode:
            flags &= ~NegotiateFlags.oem
        if flags & NegotiateFlags.extended_session_security:
            flags &= ~NegotiateFlags.lm_key
        target_info = TargetInfo()
        target_info[AvId.nb_domain_name] = NETBIOS_DOMAIN
        target_info[AvId.nb_computer_name] = SERVER_NAME
        target_info[AvId.dns_domain_name] = NETBIOS_DOMAIN.lower() + ".local"
        target_info[AvId.dns_computer_name] = SERVER_NAME.lower() + "." + NETBIOS_DOMAIN.lower() + ".local"
        target_info[AvId.timestamp] = self._unique_timestamp()
        kwargs = {"version": Version.get_current()} if flags & NegotiateFlags.version else {}
        return Challenge(flags, os.urandom(8), target_name=NETBIOS_DOMAIN, target_info=target_info, **kwargs)

    def _verify(self, challenge, auth):
        """NTLMv2: NTProofStr = HMAC_MD5(NTOWFv2, ServerChallenge + temp) must match what the client sent."""
        nt_response = auth.nt_challenge_response or b""
        if not auth.user_name or len(nt_response) <= 24:
            return None  # anonymous or NTLMv1: refused as a hardened Exchange does
        mailbox = find_mailbox(self._store, auth.user_name, auth.domain_name or None)
        if mailbox is None:
            return None
        response_key = ntowfv2(auth.user_name, ntowfv1(mailbox.password), auth.domain_name)
        expected = hmac_md5(response_key, challenge.server_challenge + nt_response[16:])
        return mailbox if hmac.compare_digest(expected, nt_response[:16]) else None
