"""Benchmark of mail import through each backend, against Odoo's own mail gateway on the same MIME.

Starts a local tenant, opens an Odoo database in which exchange_connector is installed and, in one
transaction that is rolled back at the end (nothing stays in the database), builds: 5,000
partners, 10,000 mails (20 % with an attachment, 5 % replies to Odoo threads) spread over the
"Transfer In" folders of 3 users, 10 % of them in all three. For Graph users, then EWS users:

1. Odoo's gateway: ``mail.thread.message_process`` on each distinct MIME (in a savepoint rolled
   back afterwards), the processing alone, no HTTP;
2. the import: ``exchange.mailbox._sync_mails`` of the 3 users (HTTP fetch + route + dedupe +
   post), with HTTP requests, SQL queries and writes counted;
3. a re-run without change: requests per folder and writes.

    EXCHANGE_CONNECTOR_HOME=... $VENV/bin/python bench/bench_mail_import.py --db DB [--mails 10000]
        [--partners 5000] [--backends graph,ews]

``--mails 500`` gives a quick run. The process's peak RSS includes the tenant (same process).
"""

import argparse
import base64
import cProfile
import os
import pstats
import random
import time
from contextlib import contextmanager
from unittest.mock import patch

import connector_bench
from connector_bench import PASSWORD

connector_bench.put_odoo_on_path()

from simulator import Tenant  # noqa: E402

USERS = 3
SHARED = 0.10
WITH_ATTACHMENT = 0.20
REPLIES = 0.05
THREADS = 50


def build_mime(number, sender, attachment, reply_to):
    headers = [
        f"From: {sender.name} <{sender.email}>",
        "To: Sales <sales@ourcompany.bench>",
        f"Subject: Bench mail {number}",
        f"Message-ID: <bench{number}@customer.bench>",
        "Date: Mon, 02 Nov 2026 10:00:00 +0000",
        "MIME-Version: 1.0",
    ]
    if reply_to:
        headers += [f"In-Reply-To: {reply_to}", f"References: {reply_to}"]
    html = f"<p>Hello, this is mail {number}.</p><p>{'Some text. ' * 40}</p>"
    if not attachment:
        headers.append("Content-Type: text/html; charset=utf-8")
        return ("\r\n".join(headers) + "\r\n\r\n" + html + "\r\n").encode()
    data = base64.encodebytes(attachment).decode().replace("\n", "\r\n")
    headers.append('Content-Type: multipart/mixed; boundary="bench"')
    return (
        "\r\n".join(headers) + "\r\n\r\n"
        f"--bench\r\nContent-Type: text/html; charset=utf-8\r\n\r\n{html}\r\n"
        "--bench\r\nContent-Type: application/pdf\r\nContent-Transfer-Encoding: base64\r\n"
        f'Content-Disposition: attachment; filename="offer{number}.pdf"\r\n\r\n{data}--bench--\r\n'
    ).encode()


class Counter:
    """SQL statements run by the cursor, and how many of them write."""

    def __init__(self):
        self.queries = 0
        self.writes = 0
        self.written_tables = {}

    @contextmanager
    def counting(self, cursor_class):
        execute = cursor_class.execute
        counter = self

        def counted(cursor, query, params=None, log_exceptions=True):
            counter.queries += 1
            text = str(getattr(query, "code", query)).lstrip().upper()
            if text.startswith(("INSERT", "UPDATE", "DELETE")):
                counter.writes += 1
                words = text.replace('"', " ").split()
                table = words[2] if words[0] in ("INSERT", "DELETE") else words[1]
                counter.written_tables[table.lower()] = counter.written_tables.get(table.lower(), 0) + 1
            return execute(cursor, query, params, log_exceptions)

        with patch.object(cursor_class, "execute", counted):
            yield self


def http_requests(tenant, protocol):
    """Requests the tenant answered: ``$batch`` items are no HTTP requests, NTLM 401 legs not counted."""
    return [
        e
        for e in tenant.request_log.entries
        if e["protocol"] == protocol and not e.get("batch_item") and e["status"] != 401
    ]


def make_users(env, tenant, kind):
    from odoo.tests import new_test_user  # noqa: PLC0415

    users = []
    for number in range(USERS):
        remote = tenant.store.add_mailbox(
            f"bench-{kind}-{number}@contoso.test", f"Bench {number}", password=PASSWORD
        )
        values = dict(
            connector_bench.mailbox_values(tenant, kind, remote.email),
            exchange_sync_events=False,
            exchange_sync_contacts=False,
        )
        user = new_test_user(env, login=f"bench.{kind}.{number}", name=f"Bench {kind} {number}", **values)
        connector_bench.connect(user, tenant)
        users.append((user, remote))
    return users


def bench_backend(env, tenant, kind, args):
    from odoo.sql_db import Cursor  # noqa: PLC0415

    from odoo.addons.exchange_connector.models.exchange_mailbox import PendingRun  # noqa: PLC0415

    rng = random.Random(8)
    connector_bench.configure_company(env, tenant)
    partners = env["res.partner"].create(
        [
            {"name": f"Customer {number}", "email": f"customer{number}@customer{number % 300}.bench"}
            for number in range(args.partners)
        ]
    )
    threads = env["res.partner"].create(
        [{"name": f"Deal {number}", "is_company": True} for number in range(THREADS)]
    )
    thread_messages = env["mail.message"].create(
        [
            {
                "model": "res.partner",
                "res_id": thread.id,
                "message_type": "comment",
                "body": "Our offer",
                "message_id": f"<thread{thread.id}-{kind}@odoo.bench>",
            }
            for thread in threads
        ]
    )
    users = make_users(env, tenant, kind)
    sources = []
    for number in range(args.mails):
        sender = partners[number % len(partners)]
        attachment = rng.randbytes(20 * 1024) if rng.random() < WITH_ATTACHMENT else None
        reply_to = rng.choice(thread_messages).message_id if rng.random() < REPLIES else None
        sources.append((sender, reply_to, build_mime(number, sender, attachment, reply_to)))
    delivered = 0
    folders = {user.id: remote.ensure_folder_path("Inbox/Transfer In") for user, remote in users}
    for number, (_sender, _reply, source) in enumerate(sources):
        targets = users if number < args.mails * SHARED else [users[number % USERS]]
        for user, remote in targets:
            remote.add_message(folders[user.id].id, source)
            delivered += 1
    env.flush_all()

    # 1. Odoo's gateway on the same MIME, processing only (no HTTP), rolled back afterwards.
    thread = env["mail.thread"]
    started = time.perf_counter()
    with env.cr.savepoint() as savepoint:
        for sender, reply_to, source in sources:
            thread.message_process("res.partner", source, thread_id=None if reply_to else sender.id)
        env.flush_all()
        gateway_seconds = time.perf_counter() - started
        savepoint.close(rollback=True)
    env.invalidate_all()

    # 2. The import of the 3 users' folders.
    runs = env["exchange.sync.run"]
    counter = Counter()
    tenant.request_log.clear()
    rss_before = connector_bench.peak_rss_mib()
    no_commit = connector_bench.no_commit_progress(env)
    profiler = cProfile.Profile() if args.profile else None
    started = time.perf_counter()
    with no_commit, counter.counting(Cursor):
        if profiler:
            profiler.enable()
        for user, _remote in users:
            run = PendingRun(runs, user, "mails", "cron")
            with user._exchange_backend() as backend:
                user._exchange_mailbox()._sync_mails(backend, run)
        env.flush_all()
        if profiler:
            profiler.disable()
    import_seconds = time.perf_counter() - started
    if profiler:
        if args.profile_file:
            profiler.dump_stats(f"{args.profile_file}.{kind}")
        pstats.Stats(profiler).sort_stats("cumulative").print_stats(args.profile)
    rss_after = connector_bench.peak_rss_mib()
    requests = http_requests(tenant, kind)
    imported = env["exchange.mail"].search_count([("user_id", "in", [u.id for u, _r in users])])
    posted = env["mail.message"].search_count([("exchange_user_ids", "in", [u.id for u, _r in users])])
    assert imported == delivered, f"{imported} of {delivered} mails imported"

    # 3. A re-run without change.
    rerun = Counter()
    tenant.request_log.clear()
    with no_commit, rerun.counting(Cursor):
        for user, _remote in users:
            with user._exchange_backend() as backend:
                user._exchange_mailbox()._sync_mails(backend, PendingRun(runs, user, "mails", "cron"))
        env.flush_all()
    rerun_requests = http_requests(tenant, kind)
    listings = [
        e
        for e in rerun_requests
        if "delta" in e.get("path", "")
        or e.get("endpoint") == "SyncFolderItems"
        or e.get("operation") == "SyncFolderItems"
    ]

    print(
        f"--- {kind}: {args.mails} mails, {delivered} in the folders of {USERS} users, "
        f"{args.partners} partners; {posted} chatter messages"
    )
    print(
        f"gateway (message_process, processing only): {gateway_seconds:8.2f} s  "
        f"{args.mails / gateway_seconds:8.1f} mails/s"
    )
    print(
        f"import (HTTP + route + dedupe + post):      {import_seconds:8.2f} s  "
        f"{delivered / import_seconds:8.1f} mails/s  ratio to gateway {import_seconds / gateway_seconds:.2f}"
    )
    print(f"HTTP requests per mail: {len(requests) / delivered:.3f} ({len(requests)} requests)")
    print(
        f"SQL queries per mail:   {counter.queries / delivered:.1f} ({counter.writes / delivered:.1f} writes)"
    )
    print(
        f"peak RSS: {rss_after:.0f} MiB "
        f"(grew {rss_after - rss_before:.0f} MiB during the import)"
    )
    print(
        f"re-run without change: {len(rerun_requests)} requests ({len(listings)} listings for "
        f"{2 * USERS} folders), {rerun.writes} writes: {rerun.written_tables}"
    )


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--db",
        default=os.environ.get("TEST_DB", "exchange_connector_test"),
        help="a database with exchange_connector installed (nothing is kept in it)",
    )
    parser.add_argument("--mails", type=int, default=10000)
    parser.add_argument("--partners", type=int, default=5000)
    parser.add_argument("--backends", default="graph,ews")
    parser.add_argument(
        "--profile", type=int, default=0, help="print this many lines of a profile of the import"
    )
    parser.add_argument(
        "--profile-file", help="also save the profile to this file (one per backend: FILE.graph, FILE.ews)"
    )
    args = parser.parse_args()

    from odoo import SUPERUSER_ID, api  # noqa: PLC0415

    registry = connector_bench.open_registry(args.db)
    tenant = Tenant.start()
    connector_bench.register_app(tenant)
    try:
        for kind in args.backends.split(","):
            with registry.cursor() as cr:
                env = api.Environment(cr, SUPERUSER_ID, {})
                try:
                    bench_backend(env, tenant, kind.strip(), args)
                finally:
                    cr.rollback()
    finally:
        tenant.stop()


if __name__ == "__main__":
    main()
