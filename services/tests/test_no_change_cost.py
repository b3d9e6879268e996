"""What a sync costs when nothing changed, counted in the tenant's request log.

A mailbox synced every few minutes is unchanged most of the time: its calendar
must cost one request whatever its size, and the next backend of the same user
in the process must neither probe the server version nor redo the NTLM handshake.
"""

from datetime import datetime, timedelta, timezone

from services import ews as ews_module
from services.errors import AuthenticationError

UTC = timezone.utc
WINDOW_START = datetime(2024, 6, 1, tzinfo=UTC)
WINDOW_END = datetime(2024, 7, 1, tzinfo=UTC)


def seed_events(mailbox, count):
    for number in range(count):
        start = WINDOW_START + timedelta(hours=3 * number + 1)
        mailbox.add_event(subject=f"Meeting {number}", start=start, end=start + timedelta(minutes=30))


def ews_requests(tenant, mailbox):
    return [
        (entry.get("operation"), entry["status"])
        for entry in tenant.request_log.entries
        if (entry.get("mailbox") or "").lower() == mailbox.email.lower()
        or entry.get("protocol") == "ews" and not entry.get("mailbox")
    ]


def test_unchanged_calendar_costs_one_request_whatever_its_size(make_ews_backend, mailbox, tenant):
    seed_events(mailbox, 220)
    backend = make_ews_backend(mailbox)
    first = list(backend.sync_events(WINDOW_START, WINDOW_END, None))
    assert len([event for page in first for event in page.items]) == 220
    state = first[-1].state

    tenant.request_log.clear()
    again = list(backend.sync_events(WINDOW_START, WINDOW_END, state))
    pages = [(page.items, page.removed_ids, page.state, page.done) for page in again]
    assert pages == [([], [], state, True)]
    assert ews_requests(tenant, mailbox) == [("SyncFolderItems", 200)]

    # A change anywhere in the calendar lists the window again, and reports only what changed.
    meeting = next(item for item in mailbox.items_in("calendar") if item.subject == "Meeting 7")
    mailbox.update_item(meeting.id, subject="Meeting 7 (moved)")
    changed = list(backend.sync_events(WINDOW_START, WINDOW_END, state))
    assert [event.subject for page in changed for event in page.items] == ["Meeting 7 (moved)"]
    assert changed[-1].state != state
    tenant.request_log.clear()
    saved = changed[-1].state
    assert list(backend.sync_events(WINDOW_START, WINDOW_END, saved))[-1].state == saved
    assert ews_requests(tenant, mailbox) == [("SyncFolderItems", 200)]


def test_a_deleted_event_is_reported_after_an_unchanged_run(make_ews_backend, mailbox):
    seed_events(mailbox, 3)
    backend = make_ews_backend(mailbox)
    state = list(backend.sync_events(WINDOW_START, WINDOW_END, None))[-1].state
    assert list(backend.sync_events(WINDOW_START, WINDOW_END, state))[-1].state == state
    gone = mailbox.items_in("calendar")[0]
    mailbox.delete_item(gone.id)
    removed = [i for page in backend.sync_events(WINDOW_START, WINDOW_END, state) for i in page.removed_ids]
    assert len(removed) == 1


def test_the_next_backend_of_a_user_reuses_version_and_connection(make_ews_backend, mailbox, tenant):
    folder = mailbox.create_folder(mailbox.folder("inbox").id, "Transfer In")
    first = make_ews_backend(mailbox)
    remote_folder = first.find_folder("Inbox/Transfer In")
    state = list(first.sync_messages(remote_folder, None))[-1].state
    first.close()

    tenant.request_log.clear()
    second = make_ews_backend(mailbox)
    pages = list(second.sync_messages(remote_folder, state))
    assert pages[-1].done and not pages[-1].items
    # No ConvertId (version probe), no 401 leg of an NTLM handshake, no GetFolder of the root.
    assert ews_requests(tenant, mailbox) == [("SyncFolderItems", 200)]
    assert folder.id == remote_folder.id


def test_a_refused_password_closes_the_kept_connections(make_ews_backend, mailbox):
    backend = make_ews_backend(mailbox, password="wrong")
    try:
        backend.whoami()
    except AuthenticationError:
        pass
    else:
        raise AssertionError("signed in with a wrong password")
    protocol = backend.account.protocol if backend._account else None
    backend.close()
    assert protocol is None or protocol not in ews_module._kept_protocols.values()


def test_responses_are_parsed_in_one_piece(make_ews_backend, mailbox, monkeypatch):
    """exchangelib's byte-by-byte path is never taken for an answered request."""

    def byte_by_byte(cls, response):
        raise AssertionError("iter_content() used to parse an answer")

    monkeypatch.setattr(ews_module, "_read_soap_parts_byte_by_byte", byte_by_byte)
    seed_events(mailbox, 5)
    pages = list(make_ews_backend(mailbox).sync_events(WINDOW_START, WINDOW_END, None))
    assert len([event for page in pages for event in page.items]) == 5


def test_openid_discovery_is_asked_once_per_process(tenant, oauth_client):
    tenant.request_log.clear()
    oauth_client()
    oauth_client()
    discoveries = [e for e in tenant.request_log.entries if e["path"].endswith("/openid-configuration")]
    assert len(discoveries) <= 1
