"""Benchmark of the event import: calendars of several users sharing meetings, into one Odoo database.

Starts a local tenant, fills the calendars of ``--users`` mailboxes with ``--events`` Odoo events'
worth of meetings (``--series`` daily series across the window, the rest single meetings; a
``--shared`` fraction of the meetings is in two or three of the mailboxes), then imports every
calendar through the connector (``exchange.mailbox._sync_events``) into an Odoo database and
prints: HTTP requests the tenant answered, wall time, SQL queries per imported event and the
process's peak RSS (tenant included: it runs in this process). A second, no-change run follows:
it should cost one listing per user (Graph: one delta request; EWS: one SyncFolderItems on the
calendar folder) and write nothing. A last run follows a change of the subject of ``--edits`` of the
single meetings (in every mailbox that has them): SQL queries per changed calendar entry.

    $VENV/bin/python bench/bench_event_import.py [--events 2000] [--series 20] [--users 5]
                                                 [--shared 0.3] [--kinds mixed|graph|ews] [--db ect_bench]
                                                 [--edits 0.2]

The database (default ``ect_bench``) is created with the addon installed the first time (a minute
or two); every run works in one transaction that is rolled back, so runs do not pile up.
``ODOO_SRC`` and ``EXCHANGE_CONNECTOR_HOME`` are read as by ``./dev/test``.
"""

import argparse
import os
import random
import time
from collections import Counter
from contextlib import ExitStack, contextmanager
from datetime import datetime, timedelta, timezone
from unittest.mock import patch

import connector_bench
from connector_bench import PASSWORD

connector_bench.put_odoo_on_path()

from simulator import Tenant  # noqa: E402
from simulator.scenario import add_meeting  # noqa: E402

UTC = timezone.utc
DAYS_BACK = 30
DAYS_AHEAD = 30
#: Models whose writes a no-change run must not cause.
WATCHED = ("calendar.event", "calendar.attendee", "exchange.binding", "res.partner", "calendar.event.type")


def seed(tenant, mailboxes, events, series, shared, rng):
    """Meetings whose occurrences in the window add up to about ``events`` Odoo events."""
    today = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    window_days = DAYS_BACK + DAYS_AHEAD + 1
    singles = max(0, events - series * window_days)
    guests = [f"guest{number}@customer{number % 40}.example" for number in range(200)]
    in_mailboxes = 0

    def spec(subject, start, recurrence=None):
        nonlocal in_mailboxes
        organizer, *others = rng.sample(mailboxes, k=len(mailboxes))
        colleagues = others[: rng.choice((1, 2))] if rng.random() < shared and others else []
        in_mailboxes += 1 + len(colleagues)
        attendees = [
            {"address": m.email, "response": rng.choice(("accepted", "tentativelyAccepted", "none"))}
            for m in colleagues
        ]
        attendees += [{"address": address, "response": "accepted"} for address in rng.sample(guests, k=2)]
        value = {
            "organizer": organizer.email,
            "subject": subject,
            "start": start.isoformat(),
            "duration": 30,
            "attendees": attendees,
            "body_html": f"<p>{subject}</p>",
            "categories": [rng.choice("ABC")],
        }
        if recurrence:
            value["recurrence"] = recurrence
        return value

    for number in range(series):
        start = (
            today - timedelta(days=DAYS_BACK + 1) + timedelta(hours=7 + number % 10, minutes=number % 4 * 15)
        )
        add_meeting(tenant.store, spec(f"Daily {number}", start, {"type": "daily", "interval": 1}))
    for number in range(singles):
        start = today + timedelta(days=rng.randrange(-DAYS_BACK, DAYS_AHEAD), hours=rng.randrange(7, 19))
        add_meeting(tenant.store, spec(f"Meeting {number}", start))
    return series + singles, in_mailboxes


def edit_meetings(mailboxes, share, rng):
    """Change the subject of ``share`` of the single meetings in every mailbox that has them, as
    their organizers would; returns (meetings, calendar entries) changed."""
    def singles(mailbox):
        return [item for item in mailbox.items.values() if item.kind == "event" and not item.recurrence]

    uids = sorted({item.ical_uid for mailbox in mailboxes for item in singles(mailbox)})
    chosen = set(rng.sample(uids, k=int(len(uids) * share)))
    entries = 0
    for mailbox in mailboxes:
        for item in singles(mailbox):
            if item.ical_uid in chosen:
                mailbox.update_item(item.id, subject=f"{item.subject} (changed)")
                entries += 1
    return len(chosen), entries


def make_users(env, tenant, mailboxes, kinds):
    connector_bench.configure_company(env, tenant)
    users = []
    for index, mailbox in enumerate(mailboxes):
        kind = kinds[index % len(kinds)]
        values = {
            "name": mailbox.display_name,
            "login": f"bench.{mailbox.email}",
            "email": mailbox.email,
            **connector_bench.mailbox_values(tenant, kind, mailbox.email),
            "exchange_event_days_back": DAYS_BACK,
            "exchange_event_days_ahead": DAYS_AHEAD,
            "exchange_sync_mails": False,
            "exchange_sync_contacts": False,
            "group_ids": [(6, 0, [env.ref("base.group_user").id])],
        }
        user = env["res.users"].with_context(no_reset_password=True).create(values)
        connector_bench.connect(user, tenant)
        users.append(user)
    return users


@contextmanager
def counting_writes(env):
    """Count create/write/unlink calls on the models a no-change run must leave alone."""
    calls = Counter()
    with ExitStack() as stack:
        for model in WATCHED:
            cls = type(env[model])
            for method in ("create", "write", "unlink"):
                original = getattr(cls, method)

                def spy(records, *args, _original=original, _name=f"{model}.{method}", **kwargs):
                    calls[_name] += 1
                    return _original(records, *args, **kwargs)

                stack.enter_context(patch.object(cls, method, spy))
        yield calls


def sync_all(env, users, tenant):
    """Import every user's calendar; ``(seconds, queries, requests by protocol, per user requests)``."""
    runs = env["exchange.sync.run"]
    cr = env.cr
    tenant.request_log.clear()
    queries = cr.sql_log_count
    started = time.perf_counter()
    per_user = []
    for user in users:
        before = len(tenant.request_log.entries)
        run = runs._start(user, "events", "manual")
        with user._exchange_backend() as backend:
            user._exchange_mailbox()._sync_events(backend, run)
        entries = list(tenant.request_log.entries)[before:]
        per_user.append(
            (
                user.exchange_account_type,
                Counter(e.get("operation") or e["endpoint"] for e in entries if e["protocol"] != "identity"),
            )
        )
    seconds = time.perf_counter() - started
    protocols = Counter(e["protocol"] for e in tenant.request_log.entries)
    return seconds, cr.sql_log_count - queries, protocols, per_user


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--events", type=int, default=2000, help="Odoo events the calendars make (default 2000)"
    )
    parser.add_argument("--series", type=int, default=20, help="daily series across the window (default 20)")
    parser.add_argument("--users", type=int, default=5)
    parser.add_argument("--shared", type=float, default=0.3, help="fraction of meetings in 2-3 mailboxes")
    parser.add_argument("--kinds", default="mixed", choices=("mixed", "graph", "ews"))
    parser.add_argument("--db", default=os.environ.get("BENCH_DB", "ect_bench"))
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--edits", type=float, default=0.2,
                        help="fraction of the single meetings changed before the last run (default 0.2)")
    args = parser.parse_args()
    kinds = ["graph", "ews"] if args.kinds == "mixed" else [args.kinds]

    registry = connector_bench.open_registry(args.db, create=True)
    from odoo import SUPERUSER_ID, api  # noqa: PLC0415

    rng = random.Random(args.seed)
    with Tenant.start() as tenant, registry.cursor() as cr:
        connector_bench.register_app(tenant)
        mailboxes = [
            tenant.store.add_mailbox(f"bench{n}@contoso.test", f"Bench User {n}", password=PASSWORD)
            for n in range(args.users)
        ]
        meetings, copies = seed(tenant, mailboxes, args.events, args.series, args.shared, rng)
        env = api.Environment(cr, SUPERUSER_ID, {})
        try:
            users = make_users(env, tenant, mailboxes, kinds)
            env.flush_all()
            # One transaction, rolled back at the end: the per-page commits do nothing here.
            with connector_bench.no_commit_progress(env):
                seconds, queries, protocols, _per_user = sync_all(env, users, tenant)
                env.flush_all()
                imported = env["exchange.binding"].search_count(
                    [("kind", "=", "event"), ("user_id", "in", [u.id for u in users])]
                )
                events = len(
                    set(
                        env["exchange.binding"]
                        .search([("kind", "=", "event"), ("user_id", "in", [u.id for u in users])])
                        .mapped("res_id")
                    )
                )
                rss = connector_bench.peak_rss_mib()
                print(
                    f"calendars: {args.users} users ({args.kinds}), {meetings} meetings "
                    f"({args.series} daily series), {copies} meeting copies in mailboxes, "
                    f"window {DAYS_BACK} days back / {DAYS_AHEAD} ahead"
                )
                print(
                    f"first import : {events} Odoo events from {imported} calendar entries "
                    f"in {seconds:.1f} s ({events / seconds:.0f} events/s)"
                )
                print(
                    f"               HTTP requests {sum(protocols.values())} ({dict(protocols)}), "
                    f"SQL queries {queries} ({queries / max(events, 1):.1f} per event, "
                    f"{queries / max(imported, 1):.1f} per entry), peak RSS {rss:.0f} MB"
                )
                with counting_writes(env) as writes:
                    seconds, queries, protocols, per_user = sync_all(env, users, tenant)
                    env.flush_all()
                print(
                    f"no-change run: {seconds:.2f} s, SQL queries {queries}, writes {sum(writes.values())} "
                    f"{dict(writes) if writes else ''}"
                )
                for kind, asked in per_user:
                    print(f"               {kind}: {sum(asked.values())} requests {dict(asked)}")
                changed, entries = edit_meetings(mailboxes, args.edits, rng)
                seconds, queries, protocols, _per_user = sync_all(env, users, tenant)
                env.flush_all()
                print(
                    f"after edits  : {changed} meetings changed ({entries} calendar entries) "
                    f"in {seconds:.2f} s, HTTP requests {sum(protocols.values())}, SQL queries {queries} "
                    f"({queries / max(entries, 1):.1f} per changed entry)"
                )
        finally:
            cr.rollback()


if __name__ == "__main__":
    main()
