"""Benchmark of the two mailbox backends against a local tenant.

Starts a tenant, fills one folder with 10,000 mails, then for each backend
(Graph, EWS) measures a full listing of the folder and a push of 5,000 new
contacts: HTTP requests seen by the tenant and wall time.

    /work/venv/bin/python bench/bench_backends.py [--mails 10000] [--contacts 5000] [--page-size 100]

EWS with NTLM pays a three-leg handshake per request on the local tenant
(its HTTP server closes every connection; IIS keeps them), so EWS requests
are shown as "operations" (answered requests) and "with 401 legs".
"""

import argparse
import math
import os
import resource
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from services.auth import GraphOAuth  # noqa: E402
from services.backend import ContactChange, RemoteContact  # noqa: E402
from services.ews import EwsBackend  # noqa: E402
from services.graph import BATCH_LIMIT, GraphBackend  # noqa: E402
from simulator import Tenant  # noqa: E402

CLIENT_ID = "bench-client"
CLIENT_SECRET = "bench-secret"
REDIRECT_URI = "https://odoo.test/microsoft/callback"
PASSWORD = "Passw0rd!"


def seed_mails(mailbox, folder_id, count):
    for number in range(count):
        mailbox.add_message(
            folder_id,
            (
                f"From: Sender {number % 97} <sender{number % 97}@example.com>\r\n"
                f"To: {mailbox.email}\r\nSubject: Bench mail {number}\r\n"
                f"Message-ID: <bench{number}@example.com>\r\n"
                "Date: Mon, 06 May 2024 10:00:00 +0000\r\n\r\nHello\r\n"
            ).encode(),
        )


def graph_backend(tenant, mailbox, page_size):
    oauth = GraphOAuth(CLIENT_ID, CLIENT_SECRET, tenant.authority, verify=tenant.ca_path)
    flow = oauth.start_sign_in(REDIRECT_URI, login_hint=mailbox.email, response_mode="query")
    signed_in = oauth.finish_sign_in(flow, tenant.browser_sign_in(flow["auth_uri"], mailbox.email, PASSWORD))
    provider = oauth.delegated_token_provider(signed_in.email)
    return GraphBackend(
        mailbox.email, provider, graph_url=tenant.graph_url, verify=tenant.ca_path, page_size=page_size
    )


def ews_backend(tenant, mailbox, page_size):
    return EwsBackend(
        mailbox.email,
        mailbox.email,
        PASSWORD,
        tenant.ews_url,
        auth_type="ntlm",
        verify=tenant.ca_path,
        page_size=page_size,
    )


def measure(tenant, protocol, action):
    tenant.request_log.clear()
    started = time.perf_counter()
    result = action()
    elapsed = time.perf_counter() - started
    # $batch items are logged as entries of their own: they are not HTTP requests.
    entries = [e for e in tenant.request_log.entries if e["protocol"] == protocol and not e.get("batch_item")]
    answered = [e for e in entries if e["status"] != 401]
    return result, elapsed, len(answered), len(entries)


def contact(number):
    return RemoteContact(
        given_name=f"Given{number}",
        surname=f"Surname{number}",
        display_name=f"Given{number} Surname{number}",
        company_name="Bench Ltd",
        emails=[f"bench{number}@example.com"],
        business_phone="+32 2 000 00 00",
        city="Brussels",
    )


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mails", type=int, default=10000)
    parser.add_argument("--contacts", type=int, default=5000)
    parser.add_argument("--page-size", type=int, default=100)
    args = parser.parse_args()

    tenant = Tenant()
    tenant.serve()
    try:
        tenant.register_app(CLIENT_ID, CLIENT_SECRET, [REDIRECT_URI])
        rows = []
        for kind, factory, protocol in (("graph", graph_backend, "graph"), ("ews", ews_backend, "ews")):
            # One mailbox per backend: both push their contacts into an empty folder.
            mailbox = tenant.store.add_mailbox(
                f"bench-{kind}@contoso.test", f"Bench {kind}", password=PASSWORD
            )
            store_folder = mailbox.create_folder(mailbox.folder("inbox").id, "Bench")
            seed_mails(mailbox, store_folder.id, args.mails)
            backend = factory(tenant, mailbox, args.page_size)
            try:
                folder = backend.find_folder("Inbox/Bench")
                contact_folder = backend.ensure_contact_folder("Odoo bench")

                def listing(backend=backend, folder=folder):
                    pages = list(backend.sync_messages(folder, None))
                    return len({m.id for page in pages for m in page.items}), len(pages)

                (listed, pages), seconds, answered, total = measure(tenant, protocol, listing)
                assert listed == args.mails, f"{kind} listed {listed} of {args.mails}"
                rows.append((kind, f"list {args.mails} mails ({pages} pages)", answered, total, seconds))

                changes = [ContactChange("create", n, contact=contact(n)) for n in range(args.contacts)]
                results, seconds, answered, total = measure(
                    tenant,
                    protocol,
                    lambda backend=backend, folder=contact_folder, changes=changes: backend.push_contacts(
                        folder, changes
                    ),
                )
                failed = [r for r in results if not r.ok]
                assert not failed, f"{kind}: {len(failed)} contacts failed, first {failed[0]}"
                assert len(mailbox.items_in(contact_folder.id)) == args.contacts
                rows.append((kind, f"push {args.contacts} contacts", answered, total, seconds))
                if kind == "graph":
                    batches = tenant.request_log.count(protocol="graph", endpoint="/v1.0/$batch")
                    limit = math.ceil(args.contacts / BATCH_LIMIT)
                    print(f"graph $batch calls: {batches} (ceil({args.contacts}/{BATCH_LIMIT}) = {limit})")
                    assert batches <= limit + 3
            finally:
                backend.close()
        print(f"{'backend':8} {'operation':36} {'requests':>9} {'with 401 legs':>14} {'seconds':>9}")
        for kind, operation, answered, total, seconds in rows:
            print(f"{kind:8} {operation:36} {answered:9d} {total:14d} {seconds:9.2f}")
        # Tenant and clients share this process: an upper bound for the client side.
        peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(f"peak resident memory of the process (tenant + clients): {peak_mib:.0f} MiB")
    finally:
        tenant.stop()


if __name__ == "__main__":
    main()
