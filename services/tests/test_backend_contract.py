"""One contract, two backends: every test runs against Graph and EWS on the local tenant over HTTPS.

Each test has a mailbox of its own; ids are compared with what the backend
itself returned (Graph immutable ids, EWS ids), never assumed equal.
"""

import base64
import email
import email.policy
import math
import threading
from datetime import datetime, timedelta, timezone

import pytest

from services.auth import GraphOAuth
from services.backend import ContactChange, RemoteContact
from services.errors import (
    AuthenticationError,
    ConnectionProblem,
    FolderNotFound,
    ItemNotFound,
    TimeBudgetExceeded,
)
from services.ews import EwsBackend
from services.graph import BATCH_LIMIT, GraphBackend
from services.throttle import RunBudget

UTC = timezone.utc


def add_mails(mailbox, folder_id, count, start=0):
    """Seed ``count`` small messages; returns their Message-IDs."""
    ids = []
    for number in range(start, start + count):
        message_id = f"<mail{number}.{mailbox.id[:8]}@example.com>"
        mailbox.add_message(
            folder_id,
            (
                f"From: Sender {number} <sender{number}@example.com>\r\n"
                f"To: {mailbox.display_name} <{mailbox.email}>\r\n"
                f"Cc: cc{number}@example.com\r\n"
                f"Subject: Mail {number}\r\n"
                f"Message-ID: {message_id}\r\n"
                f"Date: Mon, 06 May 2024 10:{number % 60:02d}:00 +0000\r\n"
                "Content-Type: text/plain; charset=utf-8\r\n\r\n"
                f"Body of mail {number}\r\n"
            ).encode(),
        )
        ids.append(message_id)
    return ids


def message_ids_in(mailbox, folder_id):
    return {item.internet_message_id for item in mailbox.items_in(folder_id)}


def transfer_folder(mailbox, name="Transfer In"):
    return mailbox.create_folder(mailbox.folder("inbox").id, name)


def drain(backend, folder, state=None):
    """Run a listing to its end; returns (pages, {internet_message_id: message}, removed ids)."""
    pages = list(backend.sync_messages(folder, state))
    messages = {m.internet_message_id: m for page in pages for m in page.items}
    removed = [i for page in pages for i in page.removed_ids]
    return pages, messages, removed


# -- folders -----------------------------------------------------------------


def test_find_folder_by_path_case_insensitive(backend, mailbox):
    store_folder = transfer_folder(mailbox)
    found = backend.find_folder("INBOX/transfer in")
    assert found is not None
    assert found.id == store_folder.id
    assert found.path == "Inbox/Transfer In"
    assert found.display_name == "Transfer In"
    assert backend.find_folder("Inbox/Nothing here") is None


def test_ensure_folder_creates_missing_components_once(backend, mailbox):
    created = backend.ensure_folder("Inbox/Imported/O'Brien's mails")
    store_folder = mailbox.folder_by_path("Inbox/Imported/O'Brien's mails")
    assert store_folder is not None and created.id == store_folder.id
    again = backend.ensure_folder("inbox/imported/o'brien's mails")
    assert again.id == created.id
    assert len(mailbox.child_folders(mailbox.folder_by_path("Inbox/Imported").id)) == 1


# -- messages ----------------------------------------------------------------


def test_full_then_incremental_listing(make_backend, mailbox):
    backend = make_backend(mailbox, page_size=10)
    store_folder = transfer_folder(mailbox)
    seeded = add_mails(mailbox, store_folder.id, 25)
    folder = backend.find_folder("Inbox/Transfer In")

    pages, messages, removed = drain(backend, folder)
    assert len(pages) >= 3
    assert [page.done for page in pages] == [False] * (len(pages) - 1) + [True]
    assert sorted(messages) == sorted(seeded)
    assert sum(len(page.items) for page in pages) == 25
    first = messages[seeded[3]]
    assert first.subject == "Mail 3"
    assert first.from_.address == "sender3@example.com"
    assert [a.address for a in first.to] == [mailbox.email]
    assert [a.address for a in first.cc] == ["cc3@example.com"]
    assert first.received.tzinfo is not None
    assert not removed

    # later changes: two new mails, one read elsewhere, one deleted
    store_ids = {mailbox.item(m.id).internet_message_id: mailbox.item(m.id) for m in messages.values()}
    new_ids = add_mails(mailbox, store_folder.id, 2, start=100)
    mailbox.update_item(store_ids[seeded[5]].id, is_read=True)
    mailbox.delete_item(store_ids[seeded[7]].id, soft=False)
    _pages, changed, removed = drain(backend, folder, pages[-1].state)
    assert set(changed) == set(new_ids) | {seeded[5]}
    assert changed[seeded[5]].is_read
    assert removed == [messages[seeded[7]].id]

    # nothing new: an empty page that keeps the state usable
    quiet_pages, quiet, quiet_removed = drain(backend, folder, _pages[-1].state)
    assert not quiet and not quiet_removed and quiet_pages[-1].done


def test_resume_from_a_middle_page(make_backend, mailbox):
    backend = make_backend(mailbox, page_size=10)
    store_folder = transfer_folder(mailbox)
    seeded = add_mails(mailbox, store_folder.id, 25)
    folder = backend.find_folder("Inbox/Transfer In")
    listing = backend.sync_messages(folder, None)
    first_page = next(listing)
    listing.close()
    assert not first_page.done and len(first_page.items) == 10
    _pages, rest, _removed = drain(backend, folder, first_page.state)
    seen = {m.internet_message_id for m in first_page.items} | set(rest)
    assert seen == set(seeded)


def test_expired_state_restarts_without_loss(make_backend, mailbox, tenant):
    backend = make_backend(mailbox, page_size=50)
    store_folder = transfer_folder(mailbox)
    seeded = add_mails(mailbox, store_folder.id, 5)
    folder = backend.find_folder("Inbox/Transfer In")
    pages, _messages, _removed = drain(backend, folder)
    tenant.knobs.set(mailbox.email, sync_state_ttl_seconds=0)
    seeded += add_mails(mailbox, store_folder.id, 1, start=50)
    again, messages, _removed = drain(backend, folder, pages[-1].state)
    assert again[0].reset
    assert again[-1].done
    assert sorted(messages) == sorted(seeded)


def test_mime_move_and_delete(make_backend, mailbox):
    backend = make_backend(mailbox)
    store_folder = transfer_folder(mailbox)
    seeded = add_mails(mailbox, store_folder.id, 3)
    folder = backend.find_folder("Inbox/Transfer In")
    _pages, messages, _removed = drain(backend, folder)

    mime = backend.get_mime(messages[seeded[0]].id)
    assert b"Subject: Mail 0" in mime and b"Body of mail 0" in mime
    assert seeded[0].encode() in mime

    done = backend.ensure_folder("Inbox/Transfer Done")
    moved_id = backend.move_message(messages[seeded[0]].id, done)
    assert mailbox.item(moved_id).folder_id == done.id
    assert b"Body of mail 0" in backend.get_mime(moved_id)

    backend.delete_message(messages[seeded[1]].id)
    assert seeded[1] in message_ids_in(mailbox, mailbox.folder("deleteditems").id)
    backend.delete_message(messages[seeded[2]].id, hard=True)
    everywhere = {item.internet_message_id for item in mailbox.items.values() if item.kind == "message"}
    assert seeded[2] not in everywhere
    backend.delete_message(messages[seeded[2]].id, hard=True)  # already gone: not an error

    _pages, changes, removed = drain(backend, folder, _pages[-1].state)
    assert not changes
    assert len(removed) == 3


def test_get_mimes_in_bulk_with_a_missing_one(make_backend, mailbox, tenant, kind):
    backend = make_backend(mailbox)
    store_folder = transfer_folder(mailbox)
    seeded = add_mails(mailbox, store_folder.id, 45)
    # A binary attachment survives the base64 of a $batch answer byte for byte.
    binary = bytes(range(256)) * 4
    attachment = base64.b64encode(binary).decode()
    mailbox.add_message(
        store_folder.id,
        (
            "From: a@example.com\r\nTo: b@example.com\r\nSubject: Binary\r\n"
            "Message-ID: <binary@example.com>\r\nMIME-Version: 1.0\r\n"
            'Content-Type: multipart/mixed; boundary="b"\r\n\r\n'
            "--b\r\nContent-Type: text/plain\r\n\r\nsee attached\r\n"
            "--b\r\nContent-Type: application/octet-stream\r\nContent-Transfer-Encoding: base64\r\n"
            f'Content-Disposition: attachment; filename="data.bin"\r\n\r\n{attachment}\r\n--b--\r\n'
        ).encode(),
    )
    folder = backend.find_folder("Inbox/Transfer In")
    _pages, messages, _removed = drain(backend, folder)
    ids = [messages[message_id].id for message_id in seeded] + [messages["<binary@example.com>"].id]
    gone = messages[seeded[7]].id
    backend.delete_message(gone, hard=True)
    tenant.request_log.clear()

    mimes = backend.get_mimes(ids)

    assert set(mimes) == set(ids)
    assert isinstance(mimes[gone], ItemNotFound)
    for number, message_id in enumerate(seeded):
        if number != 7:
            assert f"Body of mail {number}".encode() in mimes[messages[message_id].id]
    parsed = email.message_from_bytes(mimes[ids[-1]], policy=email.policy.default)
    assert [part.get_content() for part in parsed.iter_attachments()] == [binary]
    # Bulk: 46 mails in 3 $batch calls (Graph) or one GetItem per 50 ids (EWS), not one request each.
    outer = [e for e in tenant.request_log.entries if not e.get("batch_item")]
    assert len(outer) <= (4 if kind == "graph" else 2), [e["endpoint"] for e in outer]


def test_get_mimes_under_throttling_loses_nothing(make_backend, mailbox, tenant, kind):
    backend = make_backend(mailbox)
    store_folder = transfer_folder(mailbox)
    seeded = add_mails(mailbox, store_folder.id, 30)
    folder = backend.find_folder("Inbox/Transfer In")
    _pages, messages, _removed = drain(backend, folder)
    tenant.knobs.set(mailbox.email, throttle_rate=0.3, retry_after_seconds=1, seed=1)
    tenant.request_log.clear()

    mimes = backend.get_mimes([messages[message_id].id for message_id in seeded])

    assert all(isinstance(mime, bytes) and b"Body of mail" in mime for mime in mimes.values())
    assert len(mimes) == 30
    refused = [e for e in tenant.request_log.entries if e["status"] in (429, 500)]
    assert refused, "the storm must have throttled something"


def test_delete_messages_in_bulk(make_backend, mailbox, tenant, kind):
    backend = make_backend(mailbox)
    store_folder = transfer_folder(mailbox)
    seeded = add_mails(mailbox, store_folder.id, 25)
    folder = backend.find_folder("Inbox/Transfer In")
    _pages, messages, _removed = drain(backend, folder)
    ids = [messages[message_id].id for message_id in seeded]
    backend.delete_message(ids[3], hard=True)  # already gone: deleted all the same
    tenant.request_log.clear()

    results = backend.delete_messages(ids[:20])
    assert results == dict.fromkeys(ids[:20])
    assert message_ids_in(mailbox, store_folder.id) == set(seeded[20:])
    assert set(seeded[:20]) - {seeded[3]} <= message_ids_in(mailbox, mailbox.folder("deleteditems").id)
    assert backend.delete_messages(ids[20:], hard=True) == dict.fromkeys(ids[20:])
    assert not message_ids_in(mailbox, store_folder.id)
    outer = [e for e in tenant.request_log.entries if not e.get("batch_item") and e["status"] != 401]
    # Graph: the gone one breaks its dependsOn chain (424), whose rest goes in one more batch.
    assert len(outer) <= 3, [e["endpoint"] for e in outer]


# -- calendar ----------------------------------------------------------------

WINDOW_START = datetime(2024, 6, 1, tzinfo=UTC)
WINDOW_END = datetime(2024, 7, 1, tzinfo=UTC)


def seed_calendar(mailbox):
    """A weekly series (4 Mondays in June, one moved, one cancelled) and a single meeting."""
    series = mailbox.add_event(
        subject="Weekly sync",
        start=datetime(2024, 6, 3, 9, tzinfo=UTC),
        end=datetime(2024, 6, 3, 10, tzinfo=UTC),
        organizer=("Boss", "boss@example.com"),
        attendees=[
            {"name": mailbox.display_name, "address": mailbox.email, "response": "accepted"},
            {
                "name": "Guest",
                "address": "guest@example.com",
                "type": "optional",
                "response": "tentativelyAccepted",
            },
        ],
        recurrence={
            "type": "weekly",
            "interval": 1,
            "days_of_week": ["monday"],
            "range_type": "numbered",
            "start_date": "2024-06-03",
            "number_of_occurrences": 4,
        },
        exceptions={
            datetime(2024, 6, 10, 9, tzinfo=UTC): {
                "subject": "Weekly sync (moved)",
                "start": datetime(2024, 6, 11, 14, tzinfo=UTC),
                "end": datetime(2024, 6, 11, 15, tzinfo=UTC),
            }
        },
        cancelled_occurrences=[datetime(2024, 6, 17, 9, tzinfo=UTC)],
    )
    single = mailbox.add_event(
        subject="Lunch",
        start=datetime(2024, 6, 5, 12, tzinfo=UTC),
        end=datetime(2024, 6, 5, 13, tzinfo=UTC),
        location="Canteen",
        sensitivity="private",
    )
    mailbox.add_event(
        subject="Outside", start=datetime(2024, 8, 1, 9, tzinfo=UTC), end=datetime(2024, 8, 1, 10, tzinfo=UTC)
    )
    return series, single


def test_calendar_window_with_recurring_series(backend, mailbox):
    series, _single = seed_calendar(mailbox)
    pages = list(backend.sync_events(WINDOW_START, WINDOW_END, None))
    assert pages[-1].done
    events = [event for page in pages for event in page.items]
    by_subject = {}
    for event in events:
        by_subject.setdefault(event.subject, []).append(event)
    assert sorted(by_subject) == ["Lunch", "Weekly sync", "Weekly sync (moved)"]
    occurrences = by_subject["Weekly sync"]
    assert sorted(e.start for e in occurrences) == [
        datetime(2024, 6, 3, 9, tzinfo=UTC),
        datetime(2024, 6, 24, 9, tzinfo=UTC),
    ]
    assert {e.type for e in occurrences} == {"occurrence"}
    # Graph documents one iCalUId per occurrence, some mailboxes share the series' one (and EWS's UID
    # is the series'): the contract is only that the series' uids are its own.
    series_uids = {e.ical_uid for e in occurrences + by_subject["Weekly sync (moved)"]}
    assert all(series_uids) and by_subject["Lunch"][0].ical_uid not in series_uids
    attendees = {a.address: a for a in occurrences[0].attendees}
    assert attendees["guest@example.com"].response == "tentative"
    assert attendees["guest@example.com"].type == "optional"
    moved = by_subject["Weekly sync (moved)"][0]
    assert moved.type == "exception"
    assert moved.start == datetime(2024, 6, 11, 14, tzinfo=UTC)
    lunch = by_subject["Lunch"][0]
    assert lunch.type == "single" and lunch.location == "Canteen" and lunch.sensitivity == "private"
    assert lunch.end - lunch.start == timedelta(hours=1)

    # cancel one more occurrence, rename the lunch: one change, one removal
    mailbox.update_item(
        series.id,
        cancelled_occurrences=[datetime(2024, 6, 17, 9, tzinfo=UTC), datetime(2024, 6, 24, 9, tzinfo=UTC)],
    )
    mailbox.update_item(_single.id, subject="Long lunch")
    later = list(backend.sync_events(WINDOW_START, WINDOW_END, pages[-1].state))
    changed = [event for page in later for event in page.items]
    removed = [event_id for page in later for event_id in page.removed_ids]
    cancelled = next(e for e in occurrences if e.start.day == 24)
    assert cancelled.id in removed or any(e.id == cancelled.id and e.is_cancelled for e in changed)
    assert "Long lunch" in {e.subject for e in changed}
    assert not later[0].reset

    # another window: the state does not apply, the listing starts over
    other = list(backend.sync_events(WINDOW_START, WINDOW_END + timedelta(days=62), later[-1].state))
    assert other[0].reset
    assert "Outside" in {e.subject for page in other for e in page.items}


# -- contacts ----------------------------------------------------------------


def contact(number):
    return RemoteContact(
        given_name=f"Given{number}",
        surname=f"Surname{number}",
        display_name=f"Given{number} Surname{number}",
        company_name="Odoo SA",
        job_title="Buyer",
        emails=[f"contact{number}@example.com"],
        business_phone="+32 2 000",
        mobile_phone="+32 475 000",
        street="Rue 1",
        city="Brussels",
        zip="1000",
        country="Belgium",
        website="https://example.com",
        notes=f"note {number}",
    )


def test_contact_bulk_create_update_delete(make_backend, mailbox, tenant, kind):
    backend = make_backend(mailbox)
    folder = backend.ensure_contact_folder("Odoo")
    assert backend.ensure_contact_folder("odoo").id == folder.id

    tenant.request_log.clear()
    creates = [ContactChange("create", local_ref=n, contact=contact(n)) for n in range(45)]
    results = backend.push_contacts(folder, creates)
    assert [r.local_ref for r in results] == list(range(45))
    assert all(r.ok and r.remote_id for r in results), [r for r in results if not r.ok][:3]
    stored = {c.display_name: c for c in mailbox.items_in(folder.id)}
    assert len(stored) == 45
    assert stored["Given7 Surname7"].company_name == "Odoo SA"
    assert [a for _n, a in stored["Given7 Surname7"].email_addresses] == ["contact7@example.com"]
    assert stored["Given7 Surname7"].business_address.city == "Brussels"
    if kind == "graph":
        assert tenant.request_log.count(protocol="graph", endpoint="/v1.0/$batch") == math.ceil(
            45 / BATCH_LIMIT
        )

    updated = contact(3)
    updated.job_title = "Head of purchase"
    changes = [
        ContactChange(
            "update",
            local_ref=3,
            remote_id=results[3].remote_id,
            change_key=results[3].change_key,
            contact=updated,
        )
    ]
    changes += [ContactChange("delete", local_ref=n, remote_id=results[n].remote_id) for n in range(10, 15)]
    changes.append(
        ContactChange("update", local_ref="gone", remote_id=results[10].remote_id, contact=contact(10))
    )
    outcome = backend.push_contacts(folder, changes)
    assert [r.ok for r in outcome] == [True] * 6 + [False]
    assert outcome[-1].error_code  # Microsoft's code, e.g. ErrorItemNotFound
    assert mailbox.item(results[3].remote_id).job_title == "Head of purchase"
    assert outcome[0].change_key and outcome[0].change_key != results[3].change_key
    assert len(mailbox.items_in(folder.id)) == 40
    again = backend.push_contacts(
        folder, [ContactChange("delete", local_ref=10, remote_id=results[10].remote_id)]
    )
    assert again[0].ok


# -- throttling, concurrency, time budget --------------------------------------


def test_throttling_storm_completes_without_loss(make_backend, mailbox, tenant, kind):
    backend = make_backend(mailbox, page_size=10)
    store_folder = transfer_folder(mailbox)
    seeded = add_mails(mailbox, store_folder.id, 20)
    folder = backend.find_folder("Inbox/Transfer In")
    contact_folder = backend.ensure_contact_folder("Odoo")
    tenant.knobs.set(mailbox.email, throttle_rate=0.3, retry_after_seconds=1, seed=4)
    tenant.request_log.clear()

    _pages, messages, _removed = drain(backend, folder)
    results = backend.push_contacts(
        contact_folder, [ContactChange("create", n, contact=contact(n)) for n in range(12)]
    )
    # Graph answers 429 (also per $batch item); EWS answers ErrorServerBusy in an HTTP 500 SOAP fault.
    refused = [
        e
        for e in tenant.request_log.entries
        if e["status"] == 429 or (e["protocol"] == "ews" and e["status"] == 500)
    ]
    assert sorted(messages) == sorted(seeded)
    assert all(r.ok for r in results)
    assert len(mailbox.items_in(contact_folder.id)) == 12
    assert refused, "the storm must have throttled something"


def test_never_more_than_four_concurrent_requests(make_backend, mailbox, tenant, kind):
    store_folder = transfer_folder(mailbox)
    add_mails(mailbox, store_folder.id, 8)
    tenant.knobs.set(mailbox.email, latency_ms=40, max_concurrency=100)
    backends = [make_backend(mailbox) for _ in range(8)]
    folder = backends[0].find_folder("Inbox/Transfer In")
    _pages, messages, _removed = drain(backends[0], folder)
    ids = [m.id for m in messages.values()]
    errors = []

    def work(backend):
        try:
            for message_id in ids:
                backend.get_mime(message_id)
        except Exception as error:  # noqa: BLE001 - reported by the assertion below
            errors.append(error)

    threads = [threading.Thread(target=work, args=(b,)) for b in backends]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not errors
    peak = tenant.knobs.peak_concurrency(None, mailbox.email)
    assert 2 <= peak <= 4


def test_time_budget_stops_between_pages_and_resumes(make_backend, mailbox):
    now = [0.0]
    budget = RunBudget(60, clock=lambda: now[0])
    backend = make_backend(mailbox, page_size=10, budget=budget)
    store_folder = transfer_folder(mailbox)
    seeded = add_mails(mailbox, store_folder.id, 25)
    folder = backend.find_folder("Inbox/Transfer In")
    saved, seen = None, set()
    with pytest.raises(TimeBudgetExceeded):
        for page in backend.sync_messages(folder, saved):
            seen |= {m.internet_message_id for m in page.items}
            saved = page.state
            now[0] += 61  # this page took the whole budget
    assert len(seen) == 10
    backend.budget = RunBudget(60)
    _pages, rest, _removed = drain(backend, folder, saved)
    assert seen | set(rest) == set(seeded)
    assert not seen & set(rest)


# -- authentication and connection failures ------------------------------------


def test_auth_failure_has_a_kind(kind, tenant, mailbox, make_graph_backend, make_ews_backend):
    if kind == "ews":
        backend = make_ews_backend(mailbox, password="wrong password")
        expected = "password"
    else:
        backend = make_graph_backend(mailbox)
        backend.whoami()
        tenant.identity.revoke(mailbox.email)
        expected = "invalid_grant"
    with pytest.raises(AuthenticationError) as raised:
        backend.find_folder("Inbox")
    assert raised.value.kind == expected
    assert "wrong password" not in str(raised.value)


def test_expired_access_token_is_refreshed_and_rotated(tenant, mailbox, sign_in, oauth_client):
    tenant.knobs.set(mailbox.email, token_lifetime_seconds=600)
    client = oauth_client(sign_in(mailbox.email).cache_blob)
    provider = client.delegated_token_provider(mailbox.email)
    with GraphBackend(mailbox.email, provider, graph_url=tenant.graph_url, verify=tenant.ca_path) as backend:
        assert backend.whoami().email == mailbox.email
        assert client.cache_blob  # persisted: the "changed" flag starts over
        tenant.identity.advance_clock(3600)
        assert backend.whoami().email == mailbox.email  # 401 → refresh → retry
        assert provider.cache_changed  # the rotated refresh token must be persisted


def test_untrusted_certificate_is_a_tls_problem(tenant, mailbox, kind, make_backend):
    # Two accounts on the same server in one process: one trusts the tenant's CA, the other does not.
    transfer_folder(mailbox)
    trusted = make_backend(mailbox)
    assert trusted.find_folder("Inbox/Transfer In") is not None
    other = tenant.store.add_mailbox(f"tls-{mailbox.email}", "No CA", password=mailbox.password)
    if kind == "ews":
        untrusted = EwsBackend(other.email, other.email, other.password, tenant.ews_url, verify=True)
    else:
        untrusted = GraphBackend(
            other.email, lambda force_refresh=False: "token", graph_url=tenant.graph_url, verify=True
        )
    with untrusted, pytest.raises(ConnectionProblem) as raised:
        untrusted.find_folder("Inbox")
    assert raised.value.kind == "tls"
    tenant.request_log.clear()
    assert trusted.find_folder("Inbox/Transfer In") is not None
    assert tenant.request_log.count(mailbox=mailbox.email) >= 1  # a real request, not a cached answer


def test_ews_basic_auth_with_a_fixed_version(tenant, mailbox):
    backend = EwsBackend(
        mailbox.email,
        mailbox.email,
        mailbox.password,
        tenant.ews_url,
        auth_type="basic",
        version="14.2",
        verify=tenant.ca_path,
    )
    with backend:
        assert backend.whoami().email == mailbox.email
        assert backend.find_folder("Inbox").display_name == "Inbox"
    ews = [e for e in tenant.request_log.entries if e["protocol"] == "ews"]
    assert ews and all(e["status"] == 200 for e in ews)  # Basic: no 401 round trips, no version probing
    assert "ConvertId" not in {e["operation"] for e in ews}


def test_app_only_access_to_a_mailbox(tenant, mailbox, oauth_client):
    transfer_folder(mailbox)
    provider = oauth_client().app_token_provider()
    with GraphBackend(
        mailbox.email, provider, graph_url=tenant.graph_url, verify=tenant.ca_path, app_only=True
    ) as backend:
        assert backend.find_folder("Inbox/Transfer In") is not None
    paths = [e["path"] for e in tenant.request_log.entries if e["protocol"] == "graph"]
    assert paths and all(p.startswith(f"/v1.0/users/{mailbox.email}/") for p in paths)


def test_gone_folder_and_message_raise_their_own_errors(backend, mailbox):
    store_folder = transfer_folder(mailbox)
    seeded = add_mails(mailbox, store_folder.id, 1)
    folder = backend.find_folder("Inbox/Transfer In")
    _pages, messages, _removed = drain(backend, folder)
    mailbox.delete_item(mailbox.items_in(store_folder.id)[0].id, soft=False)
    with pytest.raises(ItemNotFound):
        backend.get_mime(messages[seeded[0]].id)
    mailbox.delete_folder(store_folder.id)
    with pytest.raises(FolderNotFound):
        list(backend.sync_messages(folder, None))


def test_wrong_client_secret_is_a_client_error(tenant):
    client_id = next(iter(tenant.apps))
    oauth = GraphOAuth(client_id, "not the secret", tenant.authority, verify=tenant.ca_path)
    with pytest.raises(AuthenticationError) as raised:
        oauth.app_token_provider()()
    assert raised.value.kind == "client"
    assert raised.value.code == "invalid_client"
    assert "not the secret" not in str(raised.value)


def test_graph_never_follows_a_link_to_another_host(make_graph_backend, mailbox):
    backend = make_graph_backend(mailbox)
    seeded = add_mails(mailbox, transfer_folder(mailbox).id, 2)
    folder = backend.find_folder("Inbox/Transfer In")
    stolen = "https://attacker.invalid/v1.0/me/mailFolders/x/messages/delta?$deltatoken=abc"
    pages, messages, _removed = drain(backend, folder, stolen)
    assert pages[0].reset
    assert sorted(messages) == sorted(seeded)


def test_occurrences_name_their_original_start(backend, mailbox):
    """The key that matches an occurrence across mailboxes: iCalUId plus the start in its pattern."""
    seed_calendar(mailbox)
    mailbox.add_event(
        subject="Call", start=datetime(2024, 6, 6, 8, tzinfo=UTC), end=datetime(2024, 6, 6, 9, tzinfo=UTC),
        online_meeting_url="https://meet.example.com/call", is_reminder_on=True, reminder_minutes=30,
    )
    events = [event for page in backend.sync_events(WINDOW_START, WINDOW_END, None) for event in page.items]
    by_subject = {}
    for event in events:
        by_subject.setdefault(event.subject, []).append(event)
    assert sorted(e.original_start for e in by_subject["Weekly sync"]) == [
        datetime(2024, 6, 3, 9, tzinfo=UTC),
        datetime(2024, 6, 24, 9, tzinfo=UTC),
    ]
    moved = by_subject["Weekly sync (moved)"][0]
    assert moved.original_start == datetime(2024, 6, 10, 9, tzinfo=UTC)
    assert by_subject["Lunch"][0].original_start is None
    assert by_subject["Lunch"][0].my_response == "organizer"
    call = by_subject["Call"][0]
    if isinstance(backend, GraphBackend):
        # The simulated EWS has no online meeting URL and reports every reminder as off.
        assert call.online_meeting_url == "https://meet.example.com/call"
        assert call.reminder_minutes == 30
