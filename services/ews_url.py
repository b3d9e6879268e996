"""The EWS address a user typed, read the way the HTTP client will read it.

``urllib.parse.urlsplit`` and urllib3 (under requests and exchangelib) disagree on
some addresses: ``http://127.0.0.1:8477\\@mail.example.com/`` is mail.example.com to
the first and 127.0.0.1 to the second.  An address is accepted only when both
see the same host, and without anything that lets them disagree: user
information (``user:password@``), backslashes, whitespace, control or non-ASCII
characters.
"""

import ipaddress
import re
from dataclasses import dataclass
from typing import Optional
from urllib.parse import urlsplit

from urllib3.exceptions import LocationParseError
from urllib3.util import parse_url

#: Longer than any real endpoint; bounds the work every check of an address does.
MAX_EWS_URL_LENGTH = 2048

_LABEL = r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?"
_HOST_NAME = re.compile(rf"^{_LABEL}(?:\.{_LABEL})*$")


class InvalidEwsUrl(ValueError):
    """The address cannot be used; ``reason`` says why.

    - ``"length"``: longer than :data:`MAX_EWS_URL_LENGTH`;
    - ``"characters"``: whitespace, a backslash, a control or a non-ASCII character;
    - ``"credentials"``: a user name or password inside the address;
    - ``"not_web_address"``: no http(s) address with a host (``https://[::1``, ``mail.example.com``);
    - ``"host"``: a host name that is not one (``%``-escapes, ``_``) or that the HTTP client reads otherwise.
    """

    def __init__(self, reason):
        super().__init__(f"Unusable EWS URL ({reason})")
        self.reason = reason


@dataclass(frozen=True)
class EwsUrl:
    """An accepted address: ``host`` is the one the request will reach (lower case, IPv6 without brackets)."""

    url: str
    scheme: str
    host: str
    port: Optional[int]

    def host_matches(self, pattern):
        """Whether ``host`` is ``pattern`` ("mail.example.com") or below it ("*.example.com")."""
        pattern = pattern.strip().lower().rstrip(".")
        host = self.host.rstrip(".")
        if pattern.startswith("*."):
            return host.endswith(pattern[1:]) and len(host) > len(pattern) - 1
        return host == pattern


def parse_ews_url(url):
    """Return the :class:`EwsUrl` of ``url``, or raise :class:`InvalidEwsUrl`."""
    if len(url) > MAX_EWS_URL_LENGTH:
        raise InvalidEwsUrl("length")
    if any(not " " < char < "\x7f" or char == "\\" for char in url):
        raise InvalidEwsUrl("characters")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:  # "Invalid IPv6 URL", a port out of range
        raise InvalidEwsUrl("not_web_address") from exc
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https") or not parts.hostname:
        raise InvalidEwsUrl("not_web_address")
    if "@" in parts.netloc:
        raise InvalidEwsUrl("credentials")
    try:
        seen_by_client = parse_url(url)
    except LocationParseError as exc:
        raise InvalidEwsUrl("not_web_address") from exc
    if seen_by_client.auth:
        raise InvalidEwsUrl("credentials")
    host = parts.hostname.lower()
    if (seen_by_client.host or "").lower().strip("[]") != host:
        raise InvalidEwsUrl("host")
    if not (_is_ip_address(host) or _HOST_NAME.match(host.rstrip("."))):
        raise InvalidEwsUrl("host")
    return EwsUrl(url=url, scheme=scheme, host=host, port=port)


def _is_ip_address(host):
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True
