"""What mail import needs to know about a mail's content, without Odoo: thread references, a stable
key for mails without a Message-ID, and the removal of remote content (trackers) from HTML bodies.

Odoo's own parser (``mail.thread.message_parse``) does the MIME work; these helpers only look at
what it extracted.
"""

import codecs
import email.policy
import functools
import hashlib
import re
from typing import List, Optional, Tuple

import lxml.html
from lxml import etree

_MESSAGE_ID_RE = re.compile(r"<[^<>\s]+>")
#: Synthesized Message-IDs of mails that came without one: the same content gives the same id.
CONTENT_KEY_DOMAIN = "content-key.exchange-connector.invalid"
#: Attributes through which an HTML body fetches remote content when it is displayed.
_REMOTE_ATTRIBUTES = ("src", "background", "srcset", "poster", "data")


#: Header values longer than this are parsed each time they are read, not kept in the cache.
_CACHED_HEADER_CHARS = 4096


# Small: a header object keeps its parse tree (some 30 kB for an address list), and what is
# worth keeping is a mail's own headers, read again and again while it is parsed, and the few
# lines that many mails share.
@functools.lru_cache(maxsize=256)
def _parsed_header(factory, name, value):
    # What EmailPolicy.header_fetch_parse does, with the splitter it uses (only CR and LF).
    return factory(name, "".join(email.policy.linesep_splitter.split(value)))


class _CachedHeaderPolicy(email.policy.EmailPolicy):
    """``email.policy.SMTP`` whose header objects are made once per (name, value), not per read.

    The modern email API parses a structured header (addresses, Content-Type, dates) every time it
    is read, and Odoo's ``message_parse`` reads Content-Type alone some twenty times per mail
    (``get_content_type``, ``get_param``, ``walk``): most of a mail's parse time. The header
    objects are immutable strings, so the same value gives back the same object; many mails of a
    page share Content-Type, To or Date lines as well.
    """

    def header_fetch_parse(self, name, value):
        if hasattr(value, "name"):
            return value
        if len(value) > _CACHED_HEADER_CHARS:
            return super().header_fetch_parse(name, value)
        return _parsed_header(self.header_factory, name, value)


#: The policy mail import parses with: SMTP's (what Odoo's gateway uses), headers parsed once.
PARSE_POLICY = _CachedHeaderPolicy(linesep="\r\n")


def thread_references(in_reply_to: Optional[str], references: Optional[str]) -> List[str]:
    """The Message-IDs a mail answers, the closest first: In-Reply-To, then References from the end."""
    found = _MESSAGE_ID_RE.findall(in_reply_to or "")
    found += reversed(_MESSAGE_ID_RE.findall(references or ""))
    return list(dict.fromkeys(found))


def clean_message_id(value: Optional[str]) -> Optional[str]:
    """The ``<id@host>`` of a Message-ID header value; None when it holds none (missing or garbage)."""
    found = _MESSAGE_ID_RE.findall(value or "")
    return found[0] if found else None


def content_key(email_from, date, subject, body) -> str:
    """A Message-ID for a mail that has none: a hash of who sent what when, equal in every mailbox."""
    digest = hashlib.sha256()
    for part in (email_from, date, subject, body):
        digest.update(str(part or "").strip().encode("utf-8", "replace"))
        digest.update(b"\x00")
    return f"<{digest.hexdigest()[:40]}@{CONTENT_KEY_DOMAIN}>"


def repair_charsets(message):
    """Replace the charsets Python does not know in ``message``'s text parts (in place); return how many.

    A text part declared in an unknown charset ("x-klingon", a typo) would make its decoding fail:
    it is read as UTF-8 when its bytes are valid UTF-8, else as Windows-1252, which accepts any byte.
    """
    repaired = 0
    for part in message.walk():
        charset = part.get_param("charset")
        if not charset or part.get_content_maintype() != "text":
            continue
        try:
            codecs.lookup(str(charset))
            continue
        except (LookupError, ValueError):
            pass
        payload = part.get_payload(decode=True) or b""
        try:
            payload.decode("utf-8")
            fallback = "utf-8"
        except UnicodeDecodeError:
            fallback = "windows-1252"
        part.set_param("charset", fallback)
        repaired += 1
    return repaired


def _is_remote(url):
    url = (url or "").strip().lower()
    return url.startswith(("http:", "https:", "//", "ftp:"))


def strip_remote_content(html: str) -> Tuple[str, int]:
    """``html`` without the images and other references that would load remote content when read.

    Remote images are how senders track who opened a mail (and when, and from where): an imported
    mail must not report its readers in Odoo. Inline images (``cid:``, ``data:``) stay. Returns the
    cleaned HTML and the number of references removed.
    """
    if not html or not html.strip():
        return html, 0
    try:
        root = lxml.html.fromstring(html)
    except (etree.ParserError, ValueError):
        return html, 0
    removed = 0
    for node in list(root.iter()):
        if not isinstance(node.tag, str):
            continue
        if node.tag == "img" and _is_remote(node.get("src")):
            parent = node.getparent()
            if parent is not None:
                # keep the text that followed the image
                if node.tail:
                    previous = node.getprevious()
                    if previous is not None:
                        previous.tail = (previous.tail or "") + node.tail
                    else:
                        parent.text = (parent.text or "") + node.tail
                parent.remove(node)
                removed += 1
                continue
        for attribute in _REMOTE_ATTRIBUTES:
            if attribute in node.attrib and _is_remote(node.get(attribute)):
                del node.attrib[attribute]
                removed += 1
        style = node.get("style")
        if style and "url(" in style.lower():
            cleaned = re.sub(r"url\([^)]*\)", "none", style, flags=re.IGNORECASE)
            if cleaned != style:
                node.set("style", cleaned)
                removed += 1
    if not removed:
        return html, 0
    return etree.tostring(root, encoding="unicode", method="html"), removed
