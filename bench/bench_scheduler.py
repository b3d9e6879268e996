"""Scheduler benchmark: no-change syncs of many mailboxes, in plain-cron mode and with OCA queue_job.

Creates a database with the connector (and one with queue_job too), N users whose mailboxes live
on a local tenant (half Office 365 through Graph, half on-premises Exchange through EWS), syncs
them all once, then measures a pass over the first N mailboxes made due, with nothing new in
them and ``latency_ms`` on every request to a mailbox. Prints, per mode and N: no-change
mailboxes per second, then requests, SQL statements and writes (INSERT/UPDATE/DELETE) per
mailbox.

    export EXCHANGE_CONNECTOR_HOME=...   # the state dir of dev/lib.sh (venv with queue_job, data)
    bash -c 'source dev/lib.sh; setup_all; ensure_test_requirements; "$VENV/bin/python" \\
        bench/bench_scheduler.py --odoo "$ODOO_SRC" --addons-path "$(ADDONS_PATH)" --data-dir "$STATE/data"'

Options: --mailboxes 1000 --sizes 200,1000 --latency-ms 200 --concurrency 4 --modes cron,queue_job.
The queue_job mode runs the jobs the way queue_job's runner has them run (its controller code,
without the HTTP hop), ``--concurrency`` at a time, as a channel of that capacity would.
"""

import argparse
import collections
import os
import re
import subprocess
import sys
import threading
import time

import connector_bench
from connector_bench import PASSWORD, REPO

sys.path.insert(0, REPO)

from simulator import Tenant  # noqa: E402 - the repo root is put on sys.path just above

WRITE = re.compile(rb"^\s*(INSERT|UPDATE|DELETE)\b", re.IGNORECASE)


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--odoo", required=True, help="Odoo 19 source folder (odoo-bin)")
    parser.add_argument("--addons-path", required=True)
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--db", default="bench_scheduler")
    parser.add_argument("--mailboxes", type=int, default=1000)
    parser.add_argument("--sizes", default="200,1000", help="N: how many mailboxes are due in a pass")
    parser.add_argument("--latency-ms", type=int, default=200)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--modes", default="cron,queue_job")
    return parser.parse_args()


def create_database(args, db, modules):
    """A fresh database with ``modules``, made by odoo-bin."""
    subprocess.run(["dropdb", "--if-exists", db], check=True)
    subprocess.run(
        [sys.executable, os.path.join(args.odoo, "odoo-bin"), "--addons-path", args.addons_path,
         "--data-dir", args.data_dir, "-d", db, "-i", modules, "--without-demo", "--stop-after-init",
         "--log-level", "warn", "--http-port", "0"],
        check=True,
    )


class SqlCounter:
    """Every statement the process sends to PostgreSQL (all threads), and the writes among them."""

    def __init__(self, cursor_class):
        self.cursor_class = cursor_class
        self.original = cursor_class.execute
        self.statements = self.writes = 0
        self.lock = threading.Lock()

    def __enter__(self):
        counter, original = self, self.original

        def execute(cursor, query, params=None, log_exceptions=True):
            code = query.code if hasattr(query, "code") else query
            text = code.encode() if isinstance(code, str) else bytes(code)
            with counter.lock:
                counter.statements += 1
                counter.writes += bool(WRITE.match(text))
            return original(cursor, query, params, log_exceptions)

        self.cursor_class.execute = execute
        return self

    def __exit__(self, *exc_info):
        self.cursor_class.execute = self.original


class Bench:
    def __init__(self, args, db, with_queue_job):
        import odoo  # noqa: PLC0415 - only once Odoo's source is on sys.path
        from odoo.modules.registry import Registry  # noqa: PLC0415
        from odoo.sql_db import Cursor  # noqa: PLC0415

        self.odoo, self.args, self.with_queue_job = odoo, args, with_queue_job
        self.cursor_class = Cursor
        self.registry = Registry(db)
        self.tenant = Tenant.start(scenario={"knobs": {"budget_per_10min": 10**9}})
        connector_bench.register_app(self.tenant)

    def env(self, cr):
        from odoo import SUPERUSER_ID, api  # noqa: PLC0415

        return api.Environment(cr, SUPERUSER_ID, {})

    def setup_users(self):
        tenant = self.tenant
        with self.registry.cursor() as cr:
            connector_bench.configure_company(self.env(cr), tenant, sync_concurrency=self.args.concurrency)
        values = []
        for number in range(self.args.mailboxes):
            remote = tenant.store.add_mailbox(
                f"bench{number}@contoso.test", f"Bench {number}", password=PASSWORD)
            kind = "graph" if number % 2 else "ews"
            user = {"name": f"Bench {number}", "login": f"bench{number}", "exchange_sync_interval": 15,
                    **connector_bench.mailbox_values(tenant, kind, remote.email)}
            if kind == "graph":
                user["exchange_token_cache"] = connector_bench.sign_in(tenant, remote.email)
            values.append(user)
        with self.registry.cursor() as cr:
            env = self.env(cr)
            users = env["res.users"].with_context(no_reset_password=True).create(values)
            for user in users:
                # Benchmarked users have seen their first-sync preview: the job syncs them.
                user._exchange_mark_connected(user.exchange_email).first_sync_pending = False
            self.mailbox_ids = env["exchange.mailbox"].search([("user_id", "in", users.ids)], order="id").ids

    def drain(self, ids):
        """Run the scheduled job (or its queue) until none of ``ids`` is due; returns the seconds it took."""
        began = time.perf_counter()
        while True:
            with self.registry.cursor() as cr:
                mailboxes = self.env(cr)["exchange.mailbox"]
                if not mailboxes.search_count(mailboxes._due_domain() + [("id", "in", ids)]):
                    break
                mailboxes._cron_sync()
                cr.commit()
            if self.with_queue_job:
                self.run_jobs()
        return time.perf_counter() - began

    def run_jobs(self):
        """What queue_job's runner has its workers do: acquire a job, then run it; ``concurrency`` at once."""
        from odoo.addons.queue_job.controllers.main import RunJobController  # noqa: PLC0415

        with self.registry.cursor() as cr:
            cr.execute("UPDATE queue_job SET state = 'enqueued' WHERE state = 'pending' "
                       "AND channel = 'root.exchange_connector' RETURNING uuid")
            uuids = collections.deque(uuid for (uuid,) in cr.fetchall())
        lock = threading.Lock()

        def worker():
            from odoo.orm.environments import Transaction  # noqa: PLC0415

            while True:
                with lock:
                    if not uuids:
                        return
                    uuid = uuids.popleft()
                with self.registry.cursor() as cr:
                    cr.transaction = Transaction(self.registry)
                    env = self.env(cr)
                    job = RunJobController._acquire_job(env, uuid)
                    if job:
                        RunJobController._runjob(env, job)

        threads = [threading.Thread(target=worker) for _ in range(self.args.concurrency)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()

    def make_due(self, ids):
        with self.registry.cursor() as cr:
            cr.execute("UPDATE exchange_mailbox SET next_sync = (now() at time zone 'utc') - interval '1s'"
                       " WHERE id IN %s", [tuple(ids)])

    def measure(self, size):
        # Half Graph, half EWS: the users alternate.
        ids = self.mailbox_ids[:size]
        self.make_due(ids)
        self.tenant.knobs.set(None, latency_ms=self.args.latency_ms)
        self.tenant.request_log.clear()
        with SqlCounter(self.cursor_class) as sql:
            seconds = self.drain(ids)
        requests = len(self.tenant.request_log.entries)
        self.tenant.knobs.set(None, latency_ms=0)
        return {"size": size, "seconds": seconds, "per_second": size / seconds, "requests": requests / size,
                "statements": sql.statements / size, "writes": sql.writes / size}


def run_mode(args, mode):
    db = f"{args.db}_{mode}"
    modules = "exchange_connector,queue_job" if mode == "queue_job" else "exchange_connector"
    print(f"[{mode}] creating database {db} ({modules})", flush=True)
    create_database(args, db, modules)
    bench = Bench(args, db, with_queue_job=mode == "queue_job")
    try:
        began = time.perf_counter()
        bench.setup_users()
        print(f"[{mode}] {args.mailboxes} users in {time.perf_counter() - began:.0f} s", flush=True)
        began = time.perf_counter()
        bench.drain(bench.mailbox_ids)  # the first sync: folders, states (not measured, no latency)
        print(f"[{mode}] first sync of {args.mailboxes} mailboxes in {time.perf_counter() - began:.0f} s",
              flush=True)
        return [bench.measure(int(size)) for size in args.sizes.split(",")]
    finally:
        bench.tenant.stop()


def main():
    args = parse_args()
    sys.path.insert(0, args.odoo)
    from odoo.tools import config  # noqa: PLC0415

    config.parse_config(
        ["--addons-path", args.addons_path, "--data-dir", args.data_dir, "--log-level", "warn"])
    from odoo.modules.module import initialize_sys_path  # noqa: PLC0415

    initialize_sys_path()
    results = {mode: run_mode(args, mode) for mode in args.modes.split(",")}
    print(f"\nNo-change syncs, latency {args.latency_ms} ms per request, "
          f"{args.concurrency} mailboxes at once, half Graph / half EWS:")
    print(f"{'mode':<10} {'N':>6} {'mailboxes/s':>12} {'requests':>9} {'SQL':>7} {'writes':>7}"
          "  (per mailbox)")
    for mode, rows in results.items():
        for row in rows:
            print(f"{mode:<10} {row['size']:>6} {row['per_second']:>12.1f} {row['requests']:>9.2f} "
                  f"{row['statements']:>7.1f} {row['writes']:>7.2f}")
        if len(rows) > 1:
            first, last = rows[0], rows[-1]
            print(f"{mode:<10} SQL per mailbox at N={last['size']} vs N={first['size']}: "
                  f"{100 * (last['statements'] / first['statements'] - 1):+.1f} %")


if __name__ == "__main__":
    main()
