"""The standalone tenant (``python -m simulator``) as ./dev/run starts it."""

import json
import os
import pathlib
import signal
import subprocess
import sys
import time

import pytest

from simulator import Tenant

REPO = pathlib.Path(__file__).resolve().parents[2]


@pytest.fixture
def standalone(tmp_path):
    """Start ``python -m simulator`` with the demo scenario; yields a function returning tenant.json."""
    processes = []

    def start(*extra):
        (tmp_path / "tenant.json").unlink(missing_ok=True)
        process = subprocess.Popen(
            [sys.executable, "-m", "simulator", "--port", "0", "--state-dir", str(tmp_path), *extra],
            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        )
        processes.append(process)
        process.stdout.readline()  # "Local Microsoft tenant running", printed once tenant.json is written
        for _ in range(100):
            if (tmp_path / "tenant.json").exists():
                break
            time.sleep(0.05)
        info = json.loads((tmp_path / "tenant.json").read_text())
        process.send_signal(signal.SIGTERM)
        process.wait(10)
        return info

    yield start
    for process in processes:
        if process.poll() is None:
            process.kill()


def test_demo_app_accepts_the_redirect_uri_of_any_port(standalone):
    uri = "http://127.0.0.1:18069/exchange_connector/oauth/callback"
    info = standalone("--redirect-uri", uri)
    assert uri in info["apps"][0]["redirect_uris"]
    assert "http://127.0.0.1:8069/exchange_connector/oauth/callback" in info["apps"][0]["redirect_uris"]


def test_demo_mailboxes_say_their_time_zone(standalone):
    zones = {user["email"]: user["time_zone"] for user in standalone()["users"]}
    assert zones["anna@demo.example.com"] == "Europe/Berlin"
    assert "Europe/Rome" in zones.values()


def test_restarted_tenant_keeps_its_certificate_authority(standalone, tmp_path):
    # Two processes: each would otherwise make a CA of its own.
    ca_before = pathlib.Path(standalone()["ca_path"]).read_bytes()
    assert pathlib.Path(standalone()["ca_path"]).read_bytes() == ca_before
    # A damaged key is replaced rather than served.
    (tmp_path / "server.key").write_text("not a key")
    with Tenant(state_dir=str(tmp_path)) as tenant:
        assert os.path.getsize(tmp_path / "server.key") > 100
        assert tenant.base_url.startswith("https://")
