"""Big mails: the listing tells their size, the source streams into a file, big parts spool out."""

import base64
import io
import random

import pytest

from services.errors import ConnectionProblem, ItemNotFound
from services.mime_spool import MARKER_PREFIX, spool_large_parts, spooled_content

from .test_backend_contract import drain, transfer_folder

BIG = 3 * 1024 * 1024


def big_source(content, extra_parts=b""):
    data = base64.encodebytes(content).replace(b"\n", b"\r\n")
    return (
        b"From: a@example.com\r\nTo: b@example.com\r\nSubject: Big\r\nMessage-ID: <big@example.com>\r\n"
        b'MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary="outer"\r\n\r\npreamble\r\n'
        b'--outer\r\nContent-Type: multipart/alternative; boundary="inner"\r\n\r\n'
        b"--inner\r\nContent-Type: text/plain\r\n\r\nsee attached\r\n"
        b"--inner\r\nContent-Type: text/html\r\n\r\n<p>see attached</p>\r\n--inner--\r\n"
        b"--outer\r\nContent-Type: application/pdf\r\nContent-Transfer-Encoding: base64\r\n"
        b'Content-Disposition: attachment; filename="big.pdf"\r\n\r\n' + data + extra_parts
        + b"--outer--\r\nepilogue\r\n"
    )


def test_listing_gives_size_and_source_streams_into_a_file(make_backend, mailbox, kind, tenant):
    content = random.Random(1).randbytes(BIG)
    source = big_source(content)
    mailbox.add_message(transfer_folder(mailbox).id, source)
    backend = make_backend(mailbox)
    _pages, messages, _removed = drain(backend, backend.find_folder("Inbox/Transfer In"))
    item = messages["<big@example.com>"]
    assert item.size is not None and item.size >= len(source) * 0.9
    tenant.request_log.clear()
    with backend.get_mime_file(item.id) as spool:
        assert spool.read() == source
    answered = [entry for entry in tenant.request_log.entries if entry["status"] == 200]
    assert len(answered) == 1, "one request (EWS: the streamed GetItem, not exchangelib's again)"
    with pytest.raises(ItemNotFound):
        backend.get_mime_file(item.id[:-4] + ("AAAA" if not item.id.endswith("AAAA") else "BBBB"))


def test_connection_cut_mid_stream_raises(make_backend, mailbox, tenant):
    mailbox.add_message(transfer_folder(mailbox).id, big_source(b"x" * BIG))
    backend = make_backend(mailbox)
    _pages, messages, _removed = drain(backend, backend.find_folder("Inbox/Transfer In"))
    tenant.knobs.set(mailbox.email, cut_mime_after_bytes=BIG // 2)
    with pytest.raises(ConnectionProblem):
        backend.get_mime_file(messages["<big@example.com>"].id)
    tenant.knobs.reset()
    with backend.get_mime_file(messages["<big@example.com>"].id) as spool:
        assert len(spool.read()) > BIG, "the next request works"


def test_spool_large_parts_splits_only_big_base64_attachments():
    content = random.Random(2).randbytes(BIG + 5)
    inline = (b"--outer\r\nContent-Type: image/png\r\nContent-Transfer-Encoding: base64\r\n"
              b"Content-ID: <logo>\r\n\r\n" + base64.encodebytes(b"\x89PNG" * 400_000) +
              b"--outer\r\nContent-Type: application/zip\r\nContent-Transfer-Encoding: base64\r\n"
              b'Content-Disposition: attachment; filename="small.zip"\r\n\r\n' + base64.encodebytes(b"small"))
    source = big_source(content, inline)
    with spool_large_parts(io.BytesIO(source), threshold=1024 * 1024) as spooled:
        assert len(spooled.parts) == 1, "the inline image (Content-ID) and the small part stay"
        assert len(spooled.skeleton) < len(source) - BIG
        part = next(iter(spooled.parts.values()))
        assert (part.size, part.filename, part.content_type) == (len(content), "big.pdf", "application/pdf")
        assert part.read() == content
        import email  # noqa: PLC0415
        import email.policy  # noqa: PLC0415

        message = email.message_from_bytes(spooled.skeleton, policy=email.policy.SMTP)
        contents = [p.get_content() for p in message.walk() if not p.is_multipart()]
        assert contents[0].strip() == "see attached"
        assert spooled_content(contents[2], spooled.parts) is part
        assert contents[3] == b"\x89PNG" * 400_000
        assert contents[4] == b"small"
        assert b"epilogue" in spooled.skeleton and b"preamble" in spooled.skeleton


def test_spool_survives_broken_sources():
    content = random.Random(3).randbytes(BIG)
    data = base64.encodebytes(content)
    never_closed = (b'Content-Type: multipart/mixed; boundary="b"\r\n\r\n--b\r\n'
                    b"Content-Type: application/octet-stream\r\nContent-Transfer-Encoding: base64\r\n\r\n"
                    + data[:-3])  # cut inside the last base64 quantum, no closing delimiter
    with spool_large_parts(io.BytesIO(never_closed), threshold=1024) as spooled:
        part = next(iter(spooled.parts.values()))
        assert content.startswith(part.read())
        assert part.size >= len(content) - 3
    single = (b"Content-Type: application/pdf\r\nContent-Transfer-Encoding: base64\r\n\r\n" + data)
    with spool_large_parts(io.BytesIO(single), threshold=1024) as spooled:
        assert spooled.skeleton.endswith(base64.b64encode(MARKER_PREFIX + b"0") + b"\r\n")
        assert next(iter(spooled.parts.values())).read() == content
