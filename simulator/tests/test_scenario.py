"""Scenario loading (demo.yaml), the large-mailbox generator and the CLI."""

import json
import os
import signal
import subprocess
import sys
import time
from datetime import datetime, timedelta, timezone

import pytest

from simulator import Store, Tenant
from simulator.scenario import generate, resolve_time

DEMO = os.path.join(os.path.dirname(__file__), os.pardir, "scenarios", "demo.yaml")
ANNA, MARCO = "anna@demo.example.com", "marco@demo.example.com"


@pytest.fixture(scope="module")
def demo():
    tenant = Tenant.start(scenario=DEMO)
    yield tenant
    tenant.stop()


def test_demo_tenant_and_app_are_fixed(demo):
    assert demo.tenant_id == "7d3c2b1a-4e5f-4a6b-8c9d-0e1f2a3b4c5d"
    app = demo.apps["0d00c0de-5eed-4c0a-9b1e-000000000001"]
    assert "http://127.0.0.1:8069/exchange_connector/oauth/callback" in app.redirect_uris
    assert "http://localhost:8069/exchange_connector/oauth/callback" in app.redirect_uris
    assert demo.store.mailbox(ANNA).display_name == "Anna Berger"
    assert demo.store.mailbox(MARCO).display_name == "Marco Rossi"


def test_demo_mails(demo):
    for address in (ANNA, MARCO):
        mailbox = demo.store.mailbox(address)
        for path in ("Inbox/Transfer In", "Inbox/Transfer Out"):
            assert mailbox.items_in(mailbox.folder_by_path(path).id), (address, path)
        assert mailbox.items_in("contacts") == []
        assert mailbox.folder_by_path("Contacts/Odoo") is None
    anna_ids = {m.internet_message_id for m in demo.store.mailbox(ANNA).items.values() if m.kind == "message"}
    marco_ids = {
        m.internet_message_id for m in demo.store.mailbox(MARCO).items.values() if m.kind == "message"
    }
    assert "<angebot-2024-117@schulz-bau.example>" in anna_ids & marco_ids
    anna = demo.store.mailbox(ANNA)
    messages = [m for m in anna.items.values() if m.kind == "message"]
    schulz = [m for m in messages if m.from_[1] == "info@schulz-bau.example"]
    assert {m.from_[0] for m in schulz} == {"Schulz Bau GmbH", "Schulz Bau Montage GmbH"}
    offer = [m for m in schulz if m.internet_message_id == "<angebot-2024-117@schulz-bau.example>"][0]
    assert any(a.is_inline and a.content_type == "image/png" for a in offer.attachments)
    assert any(a.name.endswith(".pdf") and not a.is_inline for a in offer.attachments)
    reminder = [m for m in messages if "Zahlungserinnerung" in m.subject][0]
    assert "über 12.480,00 €" in reminder.body_text  # windows-1252 source decoded
    now = datetime.now(timezone.utc)
    assert all(now - timedelta(days=8) < m.received <= now + timedelta(days=1) for m in messages)


def test_demo_meetings(demo):
    now = datetime.now(timezone.utc)
    window = (now - timedelta(days=7), now + timedelta(days=21))
    anna = demo.store.mailbox(ANNA).expand_calendar(None, *window)
    marco = demo.store.mailbox(MARCO).expand_calendar(None, *window)
    assert {o.ical_uid for o in anna} == {o.ical_uid for o in marco}
    assert {o.type for o in anna} >= {"singleInstance", "occurrence", "exception"}
    assert any(o.sensitivity == "private" for o in anna)
    assert any(o.is_cancelled for o in anna)
    assert any(o.is_all_day for o in anna)
    sync = [o for o in marco if o.subject.startswith("Weekly Sales Sync")]
    assert sync and sync[0].response_status == "accepted" and sync[0].organizer[1] == ANNA
    site_visit = [o for o in anna if o.subject.startswith("Baustellenbesichtigung")][0]
    assert {(a.address, a.response) for a in site_visit.attendees} == {
        (MARCO, "tentativelyAccepted"),
        ("info@schulz-bau.example", "accepted"),
    }


def test_resolve_time_relative_expressions():
    now = datetime(2024, 6, 14, 12, 0, tzinfo=timezone.utc)  # a Friday
    assert resolve_time("wd+1 10:00", now, "Europe/Berlin") == datetime(
        2024, 6, 17, 8, 0, tzinfo=timezone.utc
    )
    assert resolve_time("mon 09:30", now, "UTC") == datetime(2024, 6, 10, 9, 30, tzinfo=timezone.utc)
    assert resolve_time("-2d", now) == now - timedelta(days=2)
    assert resolve_time("2024-01-02T03:04:05Z") == datetime(2024, 1, 2, 3, 4, 5, tzinfo=timezone.utc)


def test_generator_is_fast():
    mailbox = Store().add_mailbox("big@demo.example.com", "Big Mailbox")
    began = time.perf_counter()
    generate(mailbox, mails=10000, events=2000, contacts=5000, folder="Inbox/Transfer In", seed=1)
    seconds = time.perf_counter() - began
    print(f"\ngenerate(10000 mails, 2000 events, 5000 contacts): {seconds:.2f} s")
    folder = mailbox.folder_by_path("Inbox/Transfer In")
    assert len(mailbox.items_in(folder.id)) == 10000
    assert len(mailbox.items_in("calendar")) == 2000 and len(mailbox.items_in("contacts")) == 5000
    sample = mailbox.items_in(folder.id)[1234]
    assert sample.subject and sample.from_[1].endswith(".example") and sample.internet_message_id
    assert seconds < 10
    # Same seed, same mailbox content.
    again = Store().add_mailbox("big@demo.example.com", "Big Mailbox")
    generate(again, mails=50, events=0, contacts=0, seed=1)
    assert [m.subject for m in again.items_in(again.folder_by_path("Inbox/Transfer In").id)] == [
        m.subject for m in mailbox.items_in(folder.id)[:50]
    ]


def test_cli_starts_writes_tenant_json_and_stops_on_sigterm(tmp_path):
    root = os.path.abspath(os.path.join(os.path.dirname(__file__), os.pardir, os.pardir))
    process = subprocess.Popen(
        [sys.executable, "-m", "simulator", "--port", "0", "--state-dir", str(tmp_path)],
        cwd=root,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        lines = []
        for line in process.stdout:
            lines.append(line)
            if line.strip().startswith("state"):
                break
        output = "".join(lines)
        info = json.loads((tmp_path / "tenant.json").read_text())
        assert info["tenant_id"] == "7d3c2b1a-4e5f-4a6b-8c9d-0e1f2a3b4c5d"
        assert info["authority"] in output and info["ca_path"] == str(tmp_path / "ca.pem")
        assert info["apps"][0]["client_secret"] in output
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=20) == 0
    finally:
        if process.poll() is None:
            process.kill()
        process.stdout.close()
