"""A partner as an Outlook contact: the pure mapping, the ownership marker and the fingerprint.

The models hand :func:`contact_from_partner` a plain dict of the partner's values (no record, no
ORM), so that what reaches Outlook is decided here, tested with plain pytest, and the same for
Graph and EWS. :func:`contact_fingerprint` digests the mapped values: a push only writes a contact
whose fingerprint changed since its last successful write.

Every contact the connector creates carries a marker: the category "Odoo", which users see, and
an extended property holding ``"<database uuid>:<partner id>"``, which they do not. The property
is how the connector recognises its own contacts (never touching the others), finds a contact whose
create went unanswered, and leaves alone those of another database pushing into the same mailbox.
"""

import email.utils
import hashlib
import json
import re
from dataclasses import asdict
from typing import List, Optional, Tuple

from .backend import RemoteContact

#: The category every contact created by the connector carries (shown in Outlook).
MARKER_CATEGORY = "Odoo"
#: The named MAPI property that holds the marker (a property set of the connector's own).
MARKER_PROPERTY_SET_ID = "8f6b2a4e-3c1d-4e5f-9a7b-0d1c2e3f4a5b"
MARKER_PROPERTY_NAME = "OdooPartner"
#: The same property as Graph names it in ``singleValueExtendedProperties``.
MARKER_GRAPH_ID = f"String {{{MARKER_PROPERTY_SET_ID}}} Name {MARKER_PROPERTY_NAME}"
#: Bump when the mapping changes: every contact is then written once more with the new mapping.
MAPPING_VERSION = 1
#: Outlook keeps three e-mail addresses per contact.
MAX_EMAILS = 3
#: Single-line Exchange contact properties are cut by the server beyond this; cut here, visibly.
MAX_LINE_LENGTH = 255

_EMAIL_SEPARATORS = re.compile(r"[,;\s]+")


def partner_marker(database_uuid, partner_id):
    """The marker of a partner's contact: ``"<database uuid>:<partner id>"``."""
    return f"{database_uuid}:{int(partner_id)}"


def parse_marker(marker) -> Optional[Tuple[str, int]]:
    """``(database uuid, partner id)`` of a marker, None when it is not one."""
    if not marker or ":" not in marker:
        return None
    database_uuid, _sep, partner_id = marker.rpartition(":")
    if not database_uuid or not partner_id.isdigit():
        return None
    return database_uuid, int(partner_id)


def _line(value):
    """One line of text: whitespace runs (newlines included) become one space, cut at the limit."""
    text = " ".join(str(value or "").split())
    return text[:MAX_LINE_LENGTH]


def split_person_name(name) -> Tuple[str, str]:
    """(given name, surname) of a person's full name: the surname is the last word.

    A name of one word (or written without spaces, as in Chinese or Japanese) is all given name,
    so that Outlook shows it whole.
    """
    words = _line(name).split(" ")
    if len(words) < 2:
        return words[0] if words else "", ""
    return " ".join(words[:-1]), words[-1]


def partner_emails(value) -> List[str]:
    """Up to three distinct addresses from a partner's e-mail field ("a@x.com, B <b@y.com>; c@z.com")."""
    found, seen = [], set()
    for chunk in re.split(r"[,;]", value or ""):
        # "Name <address>" gives its address; anything else may be addresses separated by spaces.
        address = email.utils.parseaddr(chunk.strip())[1] if "<" in chunk else chunk
        for candidate in _EMAIL_SEPARATORS.split(address or ""):
            if "@" in candidate and candidate.casefold() not in seen:
                seen.add(candidate.casefold())
                found.append(candidate)
    return found[:MAX_EMAILS]


def contact_from_partner(values) -> RemoteContact:
    """The Outlook contact of a partner, from a dict of its values.

    Keys (all optional): ``name``, ``is_company``, ``function`` (job position), ``parent_name``
    (the company of a person), ``phone``, ``mobile``, ``email`` (one or several addresses),
    ``street``, ``street2``, ``zip``, ``city``, ``state``, ``country``, ``website``, ``tags``
    (names), ``url`` (the partner in Odoo, for the note) and ``marker``
    (:func:`partner_marker`). A person gets a given name and surname, a company a company name;
    a partner without e-mail is a contact like any other.
    """
    name = _line(values.get("name"))
    if values.get("is_company"):
        given_name, surname, company = "", "", name
    else:
        given_name, surname = split_person_name(name)
        company = _line(values.get("parent_name"))
    categories = [MARKER_CATEGORY]
    for tag in values.get("tags") or ():
        tag = _line(tag)
        if tag and tag.casefold() not in {c.casefold() for c in categories}:
            categories.append(tag)
    url = values.get("url")
    return RemoteContact(
        given_name=given_name,
        surname=surname,
        display_name=name or company,
        company_name=company,
        job_title="" if values.get("is_company") else _line(values.get("function")),
        emails=partner_emails(values.get("email")),
        business_phone=_line(values.get("phone")),
        mobile_phone=_line(values.get("mobile")),
        street=_line(values.get("street")),
        street2=_line(values.get("street2")),
        city=_line(values.get("city")),
        zip=_line(values.get("zip")),
        state=_line(values.get("state")),
        country=_line(values.get("country")),
        website=_line(values.get("website")),
        notes=f"Odoo: {url}" if url else "",
        categories=categories,
        marker=values.get("marker") or None,
    )


def contact_fingerprint(contact: RemoteContact) -> str:
    """A digest of everything the push writes into the contact (not its remote id or change key)."""
    values = asdict(contact)
    values.pop("id", None)
    values.pop("change_key", None)
    values["mapping_version"] = MAPPING_VERSION
    document = json.dumps(values, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(document.encode("utf-8")).hexdigest()


def street_lines(contact: RemoteContact) -> str:
    """The contact's street as Outlook keeps it: street and street2 on two lines of one field."""
    return "\n".join(line for line in (contact.street, contact.street2) if line)


def split_street(value) -> Tuple[str, str]:
    """(street, street2) from Outlook's multi-line street field."""
    first, _sep, rest = (value or "").replace("\r\n", "\n").partition("\n")
    return first, " ".join(rest.split("\n")).strip()
