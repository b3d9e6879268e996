"""E-mail addresses as the connector compares them: one normalized form for mails, events and partners.

Odoo stores a partner's address in ``email_normalized``: the domain in lower case and in Unicode,
the local part in lower case when it is ASCII (SMTP-UTF8 local parts are case-sensitive). Microsoft
hands out addresses as typed, with display names, and sometimes with an IDNA ("xn--") domain.
:func:`normalize_address` turns any of those into Odoo's form, and :func:`address_variants` gives
the forms under which a partner may have been stored, so that one search finds it whichever way
it was typed.
"""

import contextlib
import email.errors
import email.header
import email.utils
import re
from typing import List, Optional, Set

from .backend import RemoteAddress

# One address: something@something, no spaces, no second "@" in the domain.
_ADDRESS_RE = re.compile(r"^[^@\s<>,;]+@[^@\s<>,;]+$")
_CONTROL_RE = re.compile(r"[\x00-\x1f\x7f]")


def _decode_domain(domain):
    """The Unicode form of ``domain`` (lower case); an undecodable IDNA label is kept as it is."""
    labels = []
    for label in domain.strip(".").lower().split("."):
        if label.startswith("xn--"):
            with contextlib.suppress(UnicodeError):
                label = label.encode("ascii").decode("idna")
        labels.append(label)
    return ".".join(labels)


def _encode_domain(domain):
    """The ASCII (IDNA) form of ``domain``, or None when it cannot be encoded."""
    try:
        return domain.encode("idna").decode("ascii")
    except UnicodeError:
        return None


def normalize_address(value) -> Optional[str]:
    """Odoo's ``email_normalized`` form of one address ("Name <NaMe@DoMaIn.com>" → "name@domain.com").

    IDNA domains are decoded to Unicode (Odoo keeps them so); None when ``value`` is empty, holds
    control characters or is not exactly one address.
    """
    if not value or not isinstance(value, str) or _CONTROL_RE.search(value):
        return None
    value = value.strip()
    if "<" in value or '"' in value:
        parsed = email.utils.getaddresses([value])
        if len(parsed) != 1:
            return None
        value = parsed[0][1]
    value = value.strip().strip("<>").strip()
    if not _ADDRESS_RE.match(value):
        return None
    local, domain = value.rsplit("@", 1)
    if local.isascii():
        local = local.lower()
    domain = _decode_domain(domain)
    if not local or not domain:
        return None
    return f"{local}@{domain}"


def address_variants(normalized) -> Set[str]:
    """The forms a partner's ``email_normalized`` may hold for ``normalized``: Unicode and IDNA domain."""
    if not normalized:
        return set()
    variants = {normalized}
    local, domain = normalized.rsplit("@", 1)
    ascii_domain = _encode_domain(domain)
    if ascii_domain and ascii_domain != domain:
        variants.add(f"{local}@{ascii_domain}")
    return variants


def _decode_header(value):
    """A header value with its RFC 2047 encoded words decoded; undecodable parts are replaced."""
    if "=?" not in value:
        return value
    parts = []
    try:
        chunks = email.header.decode_header(value)
    except (email.errors.HeaderParseError, ValueError):
        return value
    for chunk, charset in chunks:
        if isinstance(chunk, bytes):
            try:
                chunk = chunk.decode(charset or "ascii", errors="replace")
            except LookupError:  # an unknown charset name
                chunk = chunk.decode("latin-1")
        parts.append(chunk)
    return "".join(parts)


def parse_address_header(value) -> List[RemoteAddress]:
    """The addresses of a header value ("To", "Cc", ...) as normalized :class:`RemoteAddress`, in order.

    Handles encoded words, several addresses, groups ("team: a@x, b@y;") and bytes; duplicates and
    entries that are not addresses are dropped.
    """
    if not value:
        return []
    if isinstance(value, bytes):
        value = value.decode("utf-8", errors="replace")
    value = _CONTROL_RE.sub(" ", str(value))
    result, seen = [], set()
    for name, address in email.utils.getaddresses([value]):
        normalized = normalize_address(_decode_header(address))
        if not normalized or normalized in seen:
            continue
        seen.add(normalized)
        result.append(RemoteAddress(normalized, _decode_header(name).strip()))
    return result


def readable_addresses(value) -> str:
    """A header's addresses as a person reads them: ``Name <address>, address``.

    Without the quotes, encoded words and comments of the raw header; the value as it came (as
    text) when no address in it can be read, so that nothing shown is lost.
    """
    addresses = parse_address_header(value)
    if not addresses:
        if isinstance(value, bytes):
            value = value.decode("utf-8", errors="replace")
        return str(value or "")
    return ", ".join(f"{remote.name} <{remote.address}>" if remote.name else remote.address
                     for remote in addresses)
