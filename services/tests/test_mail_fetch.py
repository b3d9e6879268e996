"""What fetching mails costs and how their sources are read: requests per mail over the tenant,
Graph ``$batch`` bodies, and the parse policy of mail import against ``email.policy.SMTP``."""

import base64
import email
import email.policy

import pytest

from services.errors import BatchBodyNotBase64
from services.graph import _batch_binary, _batch_mime
from services.mail_content import PARSE_POLICY

MAILS = 230
#: How the import fetches: pages of the listing, MIME sources in chunks of this many (FETCH_COUNT).
FETCH_COUNT = 100


def source(number, sender="Rita <rita@customer.test>"):
    return (
        f"From: {sender}\r\nTo: Sales <sales@ourcompany.test>\r\nSubject: Mail {number}\r\n"
        f"Message-ID: <fetch{number}@customer.test>\r\nDate: Mon, 02 Nov 2026 10:00:00 +0000\r\n"
        "MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nHello\r\n"
    ).encode()


def served(tenant, mailbox):
    """(protocol, endpoint or EWS operation) of the HTTP requests answered for ``mailbox``.

    ``$batch`` items are not requests of their own; the 401 leg of an NTLM handshake is none either.
    """
    return [
        (entry["protocol"], entry.get("operation") or entry["endpoint"])
        for entry in tenant.request_log.entries
        if (entry.get("mailbox") or "").lower() == mailbox.email.lower()
        and not entry.get("batch_item")
        and entry["status"] != 401
    ]


def test_fetch_costs_a_listing_per_page_and_a_bulk_call_per_chunk(make_backend, mailbox, tenant, kind):
    folder = mailbox.ensure_folder_path("Inbox/Transfer In")
    sources = {}
    for number in range(MAILS):
        stored = mailbox.add_message(folder.id, source(number))
        sources[stored.internet_message_id] = source(number)
    backend = make_backend(mailbox)
    remote_folder = backend.find_folder("Inbox/Transfer In")
    tenant.request_log.clear()

    pages = list(backend.sync_messages(remote_folder, None, recipients=False))
    listing = served(tenant, mailbox)
    items = [item for page in pages for item in page.items]
    assert len(items) == MAILS
    # What the import reads from the listing: ids, Message-ID, sender, date, size (big mails).
    first = next(item for item in items if item.internet_message_id == "<fetch0@customer.test>")
    assert (first.subject, first.from_.address) == ("Mail 0", "rita@customer.test")
    assert first.sent and first.size and first.change_key
    # One request per page: EWS no longer asks GetItem for the envelopes.
    assert len(listing) == len(pages)
    listed_by = "SyncFolderItems" if kind == "ews" else "/messages/delta"
    assert all(endpoint.endswith(listed_by) for _protocol, endpoint in listing), listing

    tenant.request_log.clear()
    fetched = {}
    for start in range(0, MAILS, FETCH_COUNT):
        fetched.update(backend.get_mimes([item.id for item in items[start : start + FETCH_COUNT]]))
    fetches = served(tenant, mailbox)
    by_message_id = {item.internet_message_id: fetched[item.id] for item in items}
    assert by_message_id == sources
    # Graph: $batch of 20 GETs; EWS: GetItem of 50 MimeContents.
    per_call = 20 if kind == "graph" else 50
    chunks = [min(FETCH_COUNT, MAILS - start) for start in range(0, MAILS, FETCH_COUNT)]
    assert len(fetches) == sum(-(-chunk // per_call) for chunk in chunks)
    assert (len(listing) + len(fetches)) / MAILS <= 0.1


def test_ews_listing_with_recipients_still_fetches_them(make_ews_backend, mailbox):
    folder = mailbox.ensure_folder_path("Inbox/Transfer In")
    mailbox.add_message(folder.id, source(1))
    backend = make_ews_backend(mailbox)
    remote_folder = backend.find_folder("Inbox/Transfer In")
    with_recipients = [i for page in backend.sync_messages(remote_folder, None) for i in page.items]
    without = [i for page in backend.sync_messages(remote_folder, None, recipients=False) for i in page.items]
    assert [a.address for a in with_recipients[0].to] == ["sales@ourcompany.test"]
    assert without[0].to == []
    assert (without[0].id, without[0].subject, without[0].size) == (
        with_recipients[0].id, with_recipients[0].subject, with_recipients[0].size)


# -- Graph $batch bodies ---------------------------------------------------------


def test_batch_body_base64_is_decoded():
    raw = source(1)
    item = {"status": 200, "headers": {"Content-Type": "text/plain"}, "body": base64.b64encode(raw).decode()}
    assert _batch_binary(item) == raw


def test_batch_body_that_is_text_is_used_as_text():
    raw = source(2).decode()
    item = {"status": 200, "headers": {"content-type": "message/rfc822"}, "body": raw}
    assert _batch_binary(item) == raw.encode()


def test_batch_body_neither_base64_nor_text_is_a_clear_error():
    item = {"status": 200, "headers": {"Content-Type": "application/octet-stream"}, "body": "not base64 !"}
    with pytest.raises(BatchBodyNotBase64) as raised:
        _batch_binary(item)
    assert raised.value.code == "BatchBodyNotBase64"
    # get_mimes makes it the error of that one mail, not of the whole call.
    assert isinstance(_batch_mime(item), BatchBodyNotBase64)


def test_batch_json_and_empty_bodies():
    assert _batch_binary({"status": 200, "body": {"a": 1}}) == b'{"a": 1}'
    assert _batch_binary({"status": 204}) == b""


# -- the parse policy --------------------------------------------------------------

ODD_SOURCES = [
    # Encoded words in several charsets, folded, with an unknown charset and a broken one.
    b"From: =?iso-8859-1?q?Ren=E9_M=FCller?= <rene@example.com>\r\n"
    b"To: =?utf-8?b?SsO8cmdlbg==?= <j@example.com>, \"Doe, Jane\" <jane@example.com>\r\n"
    b"Cc: undisclosed-recipients:;\r\n"
    b"Subject: =?windows-1252?q?Offre_=80_100?= =?utf-8?q?_=E2=9C=93?=\r\n"
    b" folded =?x-unknown?q?abc?= =?utf-8?b?broken?=\r\n"
    b"Date: Tue, 3 Nov 2026 08:30:00 +0100\r\n"
    b"Message-ID: <odd1@example.com>\r\n"
    b"Content-Type: text/plain; charset=\"iso-8859-1\"; format=flowed\r\n\r\nCaf\xe9\r\n",
    # Raw 8-bit headers, a date without a zone, garbage in address lists, a long References.
    b"From: J\xc3\xbcrgen <jurgen@example.com>\r\n"
    b"To: <broken@, @example.com>, plain@example.com\r\n"
    b"Subject: Gr\xc3\xbc\xc3\x9fe\r\n"
    b"Date: 03/11/2026 8:30\r\n"
    b"References: " + b" ".join(b"<r%d@example.com>" % n for n in range(60)) + b"\r\n"
    b"Content-Type: multipart/mixed; boundary=\"b\"\r\n\r\n"
    b"--b\r\nContent-Type: text/html; charset=utf-8\r\n\r\n<p>Hi</p>\r\n"
    b"--b\r\nContent-Type: application/pdf; name=\"=?utf-8?q?Angebot_=C3=BC.pdf?=\"\r\n"
    b"Content-Disposition: attachment; filename*=utf-8''Angebot%20%C3%BC.pdf\r\n"
    b"Content-Transfer-Encoding: base64\r\n\r\nJVBERg==\r\n--b--\r\n",
    # No headers worth the name.
    b"Subject:\r\nFrom:\r\nDate: not a date\r\n\r\nbody\r\n",
]


def header_view(message):
    """What a parser reads of a message: every header of every part, decoded, and their details."""
    view = []
    for part in message.walk():
        for name, value in part.items():
            view.append((name, str(value), sorted(getattr(value, "params", {}).items())))
        for name in ("From", "To", "Cc"):
            for value in part.get_all(name) or []:
                view.append((name, [(a.display_name, a.addr_spec) for a in value.addresses]))
        date = part.get("Date")
        view.append(("Date", getattr(date, "datetime", None)))
        view.append((part.get_content_type(), part.get_param("charset"), part.get_filename()))
    return view


@pytest.mark.parametrize("raw", ODD_SOURCES)
def test_parse_policy_reads_headers_as_smtp_does(raw):
    expected = header_view(email.message_from_bytes(raw, policy=email.policy.SMTP))
    # Twice: the second parse reads header objects made by the first one.
    assert header_view(email.message_from_bytes(raw, policy=PARSE_POLICY)) == expected
    assert header_view(email.message_from_bytes(raw, policy=PARSE_POLICY)) == expected


def test_parse_policy_writes_as_smtp_does():
    message = email.message_from_bytes(ODD_SOURCES[0], policy=PARSE_POLICY)
    message.replace_header("Subject", "Changed Ü")
    reference = email.message_from_bytes(ODD_SOURCES[0], policy=email.policy.SMTP)
    reference.replace_header("Subject", "Changed Ü")
    assert message.as_bytes() == reference.as_bytes()
