"""Realism knobs, each seen by a client (Graph over HTTPS) and through admit() directly."""

import threading
import time

import pytest

from simulator.knobs import KnobRegistry, Refused

INBOX = "/v1.0/me/mailFolders/inbox"


def test_admit_tracks_concurrency_and_refuses_over_the_limit():
    knobs = KnobRegistry()
    knobs.set("a@x.example", max_concurrency=2)
    with knobs.admit("graph", "app", "a@x.example"), knobs.admit("graph", "app", "A@x.example"):
        assert knobs.active("app", "a@x.example") == 2
        with pytest.raises(Refused) as refused, knobs.admit("graph", "app", "a@x.example"):
            pass
        assert refused.value.kind == "MailboxConcurrency" and refused.value.status == 429
        # Limits are per (app, mailbox): another app or mailbox is not affected.
        with knobs.admit("graph", "other-app", "a@x.example"), knobs.admit("graph", "app", "b@x.example"):
            pass
    assert knobs.active("app", "a@x.example") == 0
    assert knobs.peak_concurrency("app", "a@x.example") == 2


def test_settings_resolve_per_mailbox_over_tenant_wide():
    knobs = KnobRegistry()
    knobs.set(None, latency_ms=5, page_size=3)
    knobs.set("a@x.example", page_size=7)
    assert (knobs.get("A@x.example").page_size, knobs.get("A@x.example").latency_ms) == (7, 5)
    assert knobs.get("b@x.example").page_size == 3
    with pytest.raises(ValueError):
        knobs.set(None, no_such_knob=1)
    knobs.reset()
    assert knobs.get("a@x.example").page_size is None
    assert knobs.get("a@x.example").find_count_limit == 1000  # Exchange's default EwsFindCountLimit
    knobs.set("a@x.example", find_count_limit=None)
    assert knobs.get("a@x.example").find_count_limit is None


def test_throttle_rate_and_retry_after(tenant, oauth, alice_token):
    tenant.knobs.set(oauth.ALICE, throttle_rate=1.0, retry_after_seconds=7)
    answer = oauth.get(INBOX, alice_token)
    assert answer.status_code == 429 and answer.headers["Retry-After"] == "7"
    assert answer.json()["error"]["code"] == "TooManyRequests"
    tenant.knobs.set(oauth.ALICE, throttle_rate=0.0)
    assert oauth.get(INBOX, alice_token).status_code == 200


def test_seeded_throttle_storm_is_reproducible(tenant, oauth, alice_token):
    def storm():
        tenant.knobs.set(oauth.ALICE, throttle_rate=0.5, seed=42)
        return [oauth.get(INBOX, alice_token).status_code for _ in range(12)]

    first = storm()
    assert set(first) == {200, 429}
    assert storm() == first


def test_error_rate_503(tenant, oauth, alice_token):
    tenant.knobs.set(oauth.ALICE, error_rate_503=1.0)
    answer = oauth.get(INBOX, alice_token)
    assert answer.status_code == 503
    assert answer.json()["error"]["code"] == "ServiceUnavailable"


def test_budget_per_10_minutes(tenant, oauth, alice_token):
    tenant.knobs.set(oauth.ALICE, budget_per_10min=3)
    statuses = [oauth.get(INBOX, alice_token).status_code for _ in range(4)]
    assert statuses == [200, 200, 200, 429]
    assert int(oauth.get(INBOX, alice_token).headers["Retry-After"]) > 500


def test_max_concurrency_seen_by_client(tenant, oauth, alice_token):
    tenant.knobs.set(oauth.ALICE, max_concurrency=2)
    # Hold both slots of (app, alice) so the client's request is over the limit, deterministically.
    with (
        tenant.knobs.admit("graph", oauth.CLIENT_ID, oauth.ALICE),
        tenant.knobs.admit("graph", oauth.CLIENT_ID, oauth.ALICE),
    ):
        answer = oauth.get(INBOX, alice_token)
    assert answer.status_code == 429 and "Retry-After" in answer.headers
    assert oauth.get(INBOX, alice_token).status_code == 200


def test_peak_concurrency_never_exceeds_the_limit_under_load(tenant, oauth, alice_token):
    tenant.knobs.set(oauth.ALICE, latency_ms=150, max_concurrency=4)
    statuses = []
    lock = threading.Lock()

    def hit():
        from requests import Session

        with Session() as own:
            own.verify, own.trust_env = tenant.ca_path, False
            status = own.get(
                tenant.base_url + INBOX, headers={"Authorization": "Bearer " + alice_token}
            ).status_code
        with lock:
            statuses.append(status)

    threads = [threading.Thread(target=hit) for _ in range(10)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert set(statuses) <= {200, 429} and 200 in statuses
    assert 1 <= tenant.knobs.peak_concurrency(oauth.CLIENT_ID, oauth.ALICE) <= 4
    assert statuses.count(429) == 10 - statuses.count(200)


def test_latency(tenant, oauth, alice_token):
    tenant.knobs.set(oauth.ALICE, latency_ms=300)
    began = time.perf_counter()
    assert oauth.get(INBOX, alice_token).status_code == 200
    assert time.perf_counter() - began >= 0.3


def test_page_size(tenant, oauth, alice_token):
    alice = tenant.store.mailbox(oauth.ALICE)
    for number in range(5):
        alice.add_message("inbox", b"Subject: m%d\r\n\r\nx" % number)
    tenant.knobs.set(oauth.ALICE, page_size=2)
    page = oauth.get(INBOX + "/messages", alice_token).json()
    assert len(page["value"]) == 2 and "@odata.nextLink" in page


def test_sync_state_ttl(tenant, oauth, alice_token):
    tenant.store.mailbox(oauth.ALICE).add_message("inbox", b"Subject: x\r\n\r\nx")
    page = oauth.get(INBOX + "/messages/delta", alice_token).json()
    while "@odata.nextLink" in page:
        page = oauth.session.get(
            page["@odata.nextLink"], headers={"Authorization": "Bearer " + alice_token}
        ).json()
    delta_link = page["@odata.deltaLink"]
    tenant.knobs.set(oauth.ALICE, sync_state_ttl_seconds=0)
    answer = oauth.session.get(delta_link, headers={"Authorization": "Bearer " + alice_token})
    assert answer.status_code == 410 and answer.json()["error"]["code"] == "syncStateNotFound"


def test_token_lifetime_knob(tenant, oauth):
    tenant.knobs.set(None, token_lifetime_seconds=1200)
    result = oauth.msal_app().acquire_token_for_client(["https://graph.microsoft.com/.default"])
    assert result["expires_in"] == 1200


def test_admin_api_sets_knobs_and_reads_log(tenant, oauth, alice_token):
    answer = oauth.session.post(
        tenant.base_url + "/_admin/knobs",
        json={"mailbox": oauth.ALICE, "throttle_rate": 1.0, "retry_after_seconds": 3},
    )
    assert answer.json()["mailboxes"][oauth.ALICE]["throttle_rate"] == 1.0
    assert oauth.get(INBOX, alice_token).status_code == 429
    oauth.session.post(tenant.base_url + "/_admin/knobs", json={"reset": True})
    assert oauth.get(INBOX, alice_token).status_code == 200
    log = oauth.session.get(tenant.base_url + "/_admin/log").json()
    graph_entries = [e for e in log["entries"] if e["protocol"] == "graph"]
    assert [e["status"] for e in graph_entries] == [429, 200]
    assert graph_entries[0]["mailbox"] == oauth.ALICE and graph_entries[0]["app"] == oauth.CLIENT_ID
    assert tenant.request_log.count(protocol="graph", mailbox=oauth.ALICE) == 2
    assert tenant.request_log.count(protocol="identity", endpoint="/{tenant}/oauth2/v2.0/token") == 1
