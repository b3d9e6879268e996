"""Contract tests of what a backend must never do: run a create twice, lose results, outrun Microsoft's hints.

They run against Graph and EWS on the local tenant, like test_backend_contract.py.
"""

import threading
import time
from datetime import datetime, timezone

import pytest
import requests

import services.ews
import services.graph
from services.backend import ContactChange, RemoteContact
from services.throttle import RunBudget

UTC = timezone.utc
#: Requests that create contacts, recognised on the wire: (protocol, is_create(prepared_request)).
_CREATE_REQUESTS = {
    "graph": lambda request: request.method == "POST" and request.url.endswith("/$batch"),
    "ews": lambda request: b"CreateItem" in (request.body or b""),
}
#: The tenant's request-log endpoint of those requests, logged once the tenant has finished them.
_CREATE_ENDPOINTS = {"graph": "/v1.0/$batch", "ews": "CreateItem"}


def person(number):
    return RemoteContact(
        given_name=f"Given{number}", display_name=f"Person {number}", emails=[f"p{number}@example.com"]
    )


def creates(count):
    return [ContactChange("create", local_ref=n, contact=person(n)) for n in range(count)]


@pytest.fixture
def small_chunks(monkeypatch):
    """Two contacts per $batch / CreateItem, so that a few contacts make several requests."""
    monkeypatch.setattr(services.graph, "BATCH_LIMIT", 2)
    monkeypatch.setattr(services.ews, "CONTACT_CHUNK", 2)


@pytest.fixture
def sent_creates(monkeypatch, kind):
    """The list of contact-creating requests the backend put on the wire (retries included)."""
    sent = []
    send = requests.adapters.HTTPAdapter.send
    is_create = _CREATE_REQUESTS[kind]

    def counting_send(adapter, request, *args, **kwargs):
        if is_create(request):
            sent.append(request.url)
        return send(adapter, request, *args, **kwargs)

    monkeypatch.setattr(requests.adapters.HTTPAdapter, "send", counting_send)
    return sent


def wait_for(condition, seconds=20):
    """Poll ``condition`` until true (the tenant finishes requests the client stopped waiting for)."""
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "the tenant did not finish in time"
        threading.Event().wait(0.05)


def before_request(backend, kind, number, action):
    """Run ``action()`` just before the backend sends its contact request number ``number`` (from 1)."""
    name = "_send_batch" if kind == "graph" else "_contact_request"
    original = getattr(backend, name)
    calls = []

    def wrapped(*args):
        calls.append(1)
        if len(calls) == number:
            action()
        return original(*args)

    setattr(backend, name, wrapped)


def test_push_under_read_timeouts_creates_each_contact_at_most_once(
    make_backend, mailbox, tenant, kind, small_chunks, sent_creates
):
    backend = make_backend(mailbox, timeout=(5, 0.5) if kind == "graph" else 0.5)
    folder = backend.ensure_contact_folder("Odoo")
    # From the second request on, the tenant answers after the client stopped waiting, but still creates.
    before_request(backend, kind, 2, lambda: tenant.knobs.set(mailbox.email, latency_ms=1200))
    tenant.request_log.clear()

    results = backend.push_contacts(folder, creates(5))

    assert [r.local_ref for r in results] == list(range(5))
    assert [r.ok for r in results] == [True, True, False, False, False]
    assert [r.error_code for r in results[2:]] == ["OutcomeUnknown", "OutcomeUnknown", "ConnectionProblem"]
    assert len(sent_creates) == 2, "the unanswered create must not be sent again"
    wait_for(lambda: tenant.request_log.count(endpoint=_CREATE_ENDPOINTS[kind]) == len(sent_creates))
    stored = [c.display_name for c in mailbox.items_in(folder.id)]
    assert sorted(stored) == ["Person 0", "Person 1", "Person 2", "Person 3"]
    for result in results[:2]:
        assert mailbox.item(result.remote_id).display_name == f"Person {result.local_ref}"


def test_push_under_503_storm_creates_each_contact_once(make_backend, mailbox, tenant, small_chunks):
    backend = make_backend(mailbox)
    folder = backend.ensure_contact_folder("Odoo")
    tenant.knobs.set(mailbox.email, error_rate_503=0.4, retry_after_seconds=0.05, seed=7)
    tenant.request_log.clear()

    results = backend.push_contacts(folder, creates(6))

    assert all(r.ok for r in results), [r for r in results if not r.ok]
    assert tenant.request_log.count(status=503), "the storm must have refused something"
    assert sorted(c.display_name for c in mailbox.items_in(folder.id)) == [f"Person {n}" for n in range(6)]
    assert {mailbox.item(r.remote_id).display_name for r in results} == {f"Person {n}" for n in range(6)}


def test_results_of_applied_batches_survive_a_failing_one(make_backend, mailbox, tenant, kind, small_chunks):
    backend = make_backend(mailbox)
    folder = backend.ensure_contact_folder("Odoo")
    # The third request meets a throttling longer than a call may wait (the test policy's 60 s).
    before_request(
        backend, kind, 3, lambda: tenant.knobs.set(mailbox.email, throttle_rate=1.0, retry_after_seconds=120)
    )

    results = backend.push_contacts(folder, creates(6))

    assert [r.ok for r in results] == [True] * 4 + [False] * 2
    assert {r.error_code for r in results[4:]} == {"ThrottledError"}
    for result in results[:4]:
        assert mailbox.item(result.remote_id).display_name == f"Person {result.local_ref}"
    assert len(mailbox.items_in(folder.id)) == 4


def test_graph_contact_ids_are_immutable(make_graph_backend, mailbox):
    backend = make_graph_backend(mailbox)
    folder = backend.ensure_contact_folder("Odoo")
    [result] = backend.push_contacts(folder, creates(1))
    assert result.ok
    assert result.remote_id == mailbox.item(result.remote_id).immutable_id


def test_fresh_ews_backend_holds_one_slot_at_a_time(make_ews_backend, mailbox, monkeypatch):
    held = threading.local()
    most = [0]
    slot_of = services.ews.mailbox_slot

    class CountingSlot:
        def __init__(self, key):
            self.slot = slot_of(key)

        def __enter__(self):
            self.slot.acquire()
            held.count = getattr(held, "count", 0) + 1
            most[0] = max(most[0], held.count)

        def __exit__(self, *exc_info):
            held.count -= 1
            self.slot.release()

    monkeypatch.setattr(services.ews, "mailbox_slot", CountingSlot)
    backend = make_ews_backend(mailbox)
    folder = backend.ensure_contact_folder("Odoo")
    backend.push_contacts(folder, creates(1))
    assert most[0] == 1


def test_all_day_event_ends_at_the_next_midnight(backend, mailbox):
    mailbox.add_event(
        subject="Holiday",
        start=datetime(2024, 6, 5, tzinfo=UTC),
        end=datetime(2024, 6, 7, tzinfo=UTC),
        is_all_day=True,
    )
    pages = list(
        backend.sync_events(datetime(2024, 6, 1, tzinfo=UTC), datetime(2024, 6, 30, tzinfo=UTC), None)
    )
    [event] = [event for page in pages for event in page.items]
    assert event.is_all_day
    assert (event.start, event.end) == (datetime(2024, 6, 5, tzinfo=UTC), datetime(2024, 6, 7, tzinfo=UTC))


@pytest.mark.parametrize("zone", ["America/Los_Angeles", "Pacific Standard Time", "Asia/Tokyo"])
def test_all_day_event_keeps_its_dates_in_zones_west_and_east_of_utc(backend, mailbox, zone):
    # Graph gives midnights of the dates; EWS gives midnight in the event's zone with that zone.
    mailbox.add_event(
        subject="Holiday",
        start=datetime(2024, 6, 5, tzinfo=UTC),
        end=datetime(2024, 6, 7, tzinfo=UTC),
        is_all_day=True,
        time_zone=zone,
    )
    pages = list(
        backend.sync_events(datetime(2024, 6, 1, tzinfo=UTC), datetime(2024, 6, 30, tzinfo=UTC), None)
    )
    [event] = [event for page in pages for event in page.items]
    assert (event.start, event.end) == (datetime(2024, 6, 5, tzinfo=UTC), datetime(2024, 6, 7, tzinfo=UTC))


def test_long_retry_after_with_a_short_budget_stops_at_once(make_backend, mailbox, tenant, kind):
    backend = make_backend(mailbox)
    folder = backend.ensure_contact_folder("Odoo")
    backend.budget = RunBudget(20)
    tenant.knobs.set(mailbox.email, throttle_rate=1.0, retry_after_seconds=60)
    tenant.request_log.clear()
    started = time.monotonic()

    results = backend.push_contacts(folder, creates(3))

    assert time.monotonic() - started < 10
    assert {r.error_code for r in results} == {"TimeBudgetExceeded"}
    assert tenant.request_log.count(endpoint=_CREATE_ENDPOINTS[kind]) == 1
    assert mailbox.items_in(folder.id) == []


def test_ews_calendar_beyond_the_find_count_limit(make_ews_backend, mailbox, tenant):
    """Exchange cuts a CalendarView at EwsFindCountLimit: the backend splits the window, never loops."""
    for day in range(12):
        mailbox.add_event(
            subject=f"Meeting {day}",
            start=datetime(2024, 6, 3 + day, 9, tzinfo=UTC),
            end=datetime(2024, 6, 3 + day, 10, tzinfo=UTC),
        )
    backend = make_ews_backend(mailbox, calendar_max_entries=5)
    tenant.knobs.set(mailbox.email, find_count_limit=5)
    window = (datetime(2024, 6, 1, tzinfo=UTC), datetime(2024, 7, 31, tzinfo=UTC))
    outcome = {}

    def sync(state):
        pages = list(backend.sync_events(*window, state))
        outcome["events"] = [event for page in pages for event in page.items]
        outcome["removed"] = [removed for page in pages for removed in page.removed_ids]
        outcome["state"] = pages[-1].state

    worker = threading.Thread(target=sync, args=(None,), daemon=True)
    worker.start()
    worker.join(30)
    assert not worker.is_alive(), "the calendar listing did not end"
    assert sorted(event.subject for event in outcome["events"]) == sorted(f"Meeting {d}" for d in range(12))
    assert tenant.request_log.count(endpoint="FindItem") < 20

    first_state = outcome["state"]
    gone = next(
        event for event in mailbox.items_in(mailbox.folder("calendar").id) if event.subject == "Meeting 4"
    )
    mailbox.delete_item(gone.id)
    sync(first_state)
    assert outcome["events"] == []
    assert len(outcome["removed"]) == 1


def test_reminders_and_online_meeting_urls_of_events(backend, mailbox):
    window = (datetime(2024, 6, 1, tzinfo=UTC), datetime(2024, 6, 30, tzinfo=UTC))
    mailbox.add_event(
        subject="Call",
        start=datetime(2024, 6, 5, 9, tzinfo=UTC),
        end=datetime(2024, 6, 5, 10, tzinfo=UTC),
        reminder_minutes=30,
        is_reminder_on=True,
        online_meeting_url="https://teams.example.com/l/meetup-join/1",
    )
    mailbox.add_event(
        subject="Quiet",
        start=datetime(2024, 6, 6, 9, tzinfo=UTC),
        end=datetime(2024, 6, 6, 10, tzinfo=UTC),
        reminder_minutes=30,
        is_reminder_on=False,
    )
    events = {event.subject: event for page in backend.sync_events(*window, None) for event in page.items}
    assert (events["Call"].reminder_minutes, events["Call"].online_meeting_url) == (
        30,
        "https://teams.example.com/l/meetup-join/1",
    )
    assert (events["Quiet"].reminder_minutes, events["Quiet"].online_meeting_url) == (None, "")


def test_exchange_2010_has_no_join_urls_and_is_not_asked_for_them(tenant, mailbox):
    tenant.ews_server_profile = "Exchange2010_SP2"
    try:
        mailbox.add_event(
            subject="Call",
            start=datetime(2024, 6, 5, 9, tzinfo=UTC),
            end=datetime(2024, 6, 5, 10, tzinfo=UTC),
            reminder_minutes=10,
            online_meeting_url="https://teams.example.com/l/meetup-join/1",
        )
        backend = services.ews.EwsBackend(
            mailbox.email, mailbox.email, mailbox.password, tenant.ews_url, auth_type="basic",
            verify=tenant.ca_path,
        )
        with backend:
            pages = list(
                backend.sync_events(datetime(2024, 6, 1, tzinfo=UTC), datetime(2024, 6, 30, tzinfo=UTC), None)
            )
        [event] = [event for page in pages for event in page.items]
        assert (event.reminder_minutes, event.online_meeting_url) == (10, "")
        views = [body for operation, body, _answer, _status in tenant._protocol_app("ews", "EwsApp").recorded
                 if operation == "FindItem"]
        assert views and all(b"JoinOnlineMeetingUrl" not in body for body in views)
    finally:
        tenant.ews_server_profile = None
