"""How many requests per second the local tenant sustains on this machine.

Four threads, each with its own keep-alive HTTPS session, hammer a cheap
authenticated Graph endpoint (GET /v1.0/me/mailFolders/inbox) for ~5 seconds.
The concurrency limit is raised so the knobs measure nothing but the server.

    cd /work/main && /work/venv/bin/python bench/bench_tenant.py [--seconds 5] [--threads 4]
"""

import argparse
import os
import sys
import threading
import time

import msal
import requests

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir))

from simulator import Tenant  # noqa: E402 - the repo root is put on sys.path just above

CLIENT_ID, CLIENT_SECRET = "bench-client", "bench-secret"
USER = "bench@demo.example.com"


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--threads", type=int, default=4)
    parser.add_argument("--path", default=f"/v1.0/users/{USER}/mailFolders/inbox")
    args = parser.parse_args()

    tenant = Tenant.start(
        scenario={
            "apps": [{"client_id": CLIENT_ID, "client_secret": CLIENT_SECRET, "redirect_uris": []}],
            "users": [{"email": USER, "display_name": "Bench", "password": "x"}],
            "knobs": {"max_concurrency": 1000, "budget_per_10min": 10**9},
        }
    )
    try:
        session = requests.Session()
        session.verify, session.trust_env = tenant.ca_path, False
        app = msal.ConfidentialClientApplication(
            CLIENT_ID,
            client_credential=CLIENT_SECRET,
            authority=tenant.authority,
            http_client=session,
            instance_discovery=False,
        )
        token = app.acquire_token_for_client(["https://graph.microsoft.com/.default"])["access_token"]
        url = tenant.base_url + args.path
        headers = {"Authorization": "Bearer " + token}
        assert session.get(url, headers=headers).status_code == 200
        counts, failures = [0] * args.threads, [0] * args.threads
        deadline = time.perf_counter() + args.seconds

        def hammer(slot):
            with requests.Session() as own:
                own.verify, own.trust_env = tenant.ca_path, False
                while time.perf_counter() < deadline:
                    if own.get(url, headers=headers).status_code == 200:
                        counts[slot] += 1
                    else:
                        failures[slot] += 1

        began = time.perf_counter()
        threads = [threading.Thread(target=hammer, args=(slot,)) for slot in range(args.threads)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        elapsed = time.perf_counter() - began
        total = sum(counts)
        peak = tenant.knobs.peak_concurrency(CLIENT_ID, USER)
        print(
            f"{total} requests in {elapsed:.1f} s from {args.threads} threads: "
            f"{total / elapsed:.0f} requests/s "
            f"({sum(failures)} failed); peak concurrency {peak}"
        )
    finally:
        tenant.stop()


if __name__ == "__main__":
    main()
