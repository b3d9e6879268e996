"""Big attachments out of a mail source before it is parsed: each goes, decoded, to a file of its own.

Python's ``email`` parser keeps every part of a mail in memory (a 30 MB attachment as 40 MB of
base64 text, then 30 MB of bytes once decoded). :func:`spool_large_parts` reads a source from a
binary file line by line and copies it to a *skeleton* in which the body of each big base64 leaf
part (not text, no Content-ID: an attachment, not an inline image) is replaced by a short marker;
the part's decoded bytes go to a spooled temporary file as they are read. The skeleton, a few
kilobytes, is what Odoo's parser then reads; the import recognizes the marker among the parsed
attachments and stores the file's bytes directly. A part below the threshold, or one that is not
base64, is copied as it is.
"""

import binascii
import email.parser
import email.policy
import re
from dataclasses import dataclass, field
from typing import BinaryIO, Dict, List, Optional

from .backend import new_spool

#: Decoded bytes above which a part's body is spooled rather than kept in the skeleton.
SPOOL_PART_BYTES = 1024 * 1024
MARKER_PREFIX = b"exchange-connector-spooled-part:"
_NOT_BASE64 = re.compile(rb"[^A-Za-z0-9+/=]")
#: Base64 lines decoded at once while spooling (about 76 bytes each).
_LINES_PER_WRITE = 4096


@dataclass
class SpooledPart:
    """The decoded body of one big part, in ``file`` (``size`` bytes), named by ``marker`` in the skeleton."""

    marker: bytes
    file: BinaryIO
    size: int
    filename: Optional[str] = None
    content_type: str = "application/octet-stream"

    def read(self) -> bytes:
        self.file.seek(0)
        return self.file.read()


@dataclass
class SpooledSource:
    """A mail source split in a small ``skeleton`` and its big parts; close it to drop their files."""

    skeleton: bytes
    parts: Dict[bytes, SpooledPart] = field(default_factory=dict)

    def close(self):
        for part in self.parts.values():
            part.file.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class _Lines:
    """The lines of a binary file with one line of look-ahead."""

    def __init__(self, fp):
        self._iter = iter(fp)
        self._next = None

    def peek(self):
        if self._next is None:
            self._next = next(self._iter, b"")
        return self._next

    def take(self):
        line = self.peek()
        self._next = None
        return line

    def until_boundary(self, boundaries):
        """Yield the lines up to (not including) the next delimiter of ``boundaries``, fast."""
        if self._next is not None:
            if self._next == b"" or _boundary_of(self._next, boundaries):
                return
            yield self.take()
        for line in self._iter:
            if line[:2] == b"--" and _boundary_of(line, boundaries):
                self._next = line
                return
            yield line
        self._next = b""


def _boundary_of(line, boundaries):
    """``(boundary, closing)`` when ``line`` is a delimiter of one of ``boundaries``, else None."""
    if not line.startswith(b"--"):
        return None
    text = line.rstrip(b"\r\n").rstrip(b" \t")
    for boundary in reversed(boundaries):
        delimiter = b"--" + boundary
        if text == delimiter:
            return boundary, False
        if text == delimiter + b"--":
            return boundary, True
    return None


def spool_large_parts(fp: BinaryIO, threshold: int = SPOOL_PART_BYTES) -> SpooledSource:
    """Split the mail source read from ``fp`` (binary, at its start) as described in the module."""
    source = SpooledSource(skeleton=b"")
    out: List[bytes] = []
    try:
        _copy_entity(_Lines(fp), out, [], source, threshold)
    except BaseException:
        source.close()
        raise
    source.skeleton = b"".join(out)
    return source


def _read_headers(lines, out):
    """Copy the header lines (and the blank line after them); return them parsed."""
    head = []
    while True:
        line = lines.take()
        if not line:
            break
        out.append(line)
        if line in (b"\r\n", b"\n"):
            break
        head.append(line)
    return email.parser.BytesHeaderParser(policy=email.policy.compat32).parsebytes(b"".join(head) + b"\r\n")


def _copy_until_boundary(lines, out, boundaries):
    """Copy lines up to (not including) the next delimiter of ``boundaries``; return that delimiter."""
    while True:
        line = lines.peek()
        if not line:
            return None
        found = _boundary_of(line, boundaries)
        if found:
            return found
        out.append(lines.take())


def _copy_entity(lines, out, boundaries, source, threshold):
    headers = _read_headers(lines, out)
    boundary = headers.get_param("boundary") if headers.get_content_maintype() == "multipart" else None
    if boundary:
        boundary = str(boundary).encode("ascii", "replace")
        inner = boundaries + [boundary]
        found = _copy_until_boundary(lines, out, inner)  # the preamble
        while found and found[0] == boundary and not found[1]:
            out.append(lines.take())
            _copy_entity(lines, out, inner, source, threshold)
            found = _copy_until_boundary(lines, out, inner)
        if found and found[0] == boundary:  # the closing delimiter, then the epilogue
            out.append(lines.take())
            _copy_until_boundary(lines, out, boundaries)
        return
    encoding = str(headers.get("Content-Transfer-Encoding", "")).strip().lower()
    if (encoding != "base64" or headers.get_content_maintype() in ("text", "multipart", "message")
            or headers.get("Content-ID")):
        _copy_until_boundary(lines, out, boundaries)
        return
    _spool_body(lines, out, boundaries, source, threshold, headers)


def _spool_body(lines, out, boundaries, source, threshold, headers):
    """Keep a small base64 body in the skeleton; decode a big one into a file and leave a marker."""
    kept, kept_size = [], 0
    spool, pending, size = None, b"", 0
    batch = []

    def decode(chunk):
        nonlocal pending, size
        data = pending + _NOT_BASE64.sub(b"", chunk)
        cut = len(data) - len(data) % 4
        pending = data[cut:]
        if cut:
            decoded = binascii.a2b_base64(data[:cut])
            spool.write(decoded)
            size += len(decoded)

    body = lines.until_boundary(boundaries)
    for line in body:
        kept.append(line)
        kept_size += len(line)
        if kept_size * 3 // 4 > threshold:
            spool = new_spool()
            batch, kept = kept, []
            break
    if spool is not None:
        for line in body:
            batch.append(line)
            if len(batch) >= _LINES_PER_WRITE:
                decode(b"".join(batch))
                batch = []
    if spool is None:
        out.extend(kept)
        return
    decode(b"".join(batch))
    if pending.strip(b"="):
        try:
            tail = binascii.a2b_base64(pending + b"=" * (-len(pending) % 4))
        except binascii.Error:
            tail = b""  # a broken tail: what decoded is kept, as the email package does
        spool.write(tail)
        size += len(tail)
    spool.seek(0)
    marker = MARKER_PREFIX + str(len(source.parts)).encode()
    source.parts[marker] = SpooledPart(
        marker=marker, file=spool, size=size, filename=headers.get_filename(),
        content_type=headers.get_content_type())
    out.append(binascii.b2a_base64(marker).rstrip(b"\n") + b"\r\n")


def spooled_content(content, parts: Dict[bytes, SpooledPart]) -> Optional[SpooledPart]:
    """The :class:`SpooledPart` that a parsed attachment's ``content`` stands for, None if it is none."""
    if isinstance(content, bytes) and content.startswith(MARKER_PREFIX):
        return parts.get(content)
    return None

