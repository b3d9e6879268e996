"""Benchmark of the contact push: one user with 5,000 subscribed partners, on Graph and on EWS.

Runs the real push (``exchange.mailbox._sync_contacts``) of an Odoo database that has the addon
installed, against a local tenant, in one transaction that is rolled back at the end (the database
is left as it was). For each protocol it prints the requests the tenant answered, the write
requests among them, Graph ``$batch`` calls, database writes, SQL statements, partners mapped to
contact values and wall time for:

- the first push (every partner created),
- a run with no change (target: 0 write requests, no database write besides the sync log): a
  scheduled run finds nothing pending and asks nothing; "Sync now" compares the folder anyway,
- a run after 50 partner edits (target: at most 3 ``$batch`` calls on Graph).

"operations" are the mailbox requests the tenant answered (a ``$batch`` item counts as one, EWS's
NTLM handshake legs do not count); "writes" the creates, updates and deletes among them.

    EXCHANGE_CONNECTOR_HOME=... python bench/bench_contact_push.py --database ect_contacts \\
        [--partners 5000] [--edits 50]

The database must exist with exchange_connector installed (``./dev/test`` or an Odoo test run
leaves one behind: ``$TEST_DB``).
"""

import argparse
import collections
import os
import time
from unittest.mock import patch

import connector_bench
from connector_bench import PASSWORD

connector_bench.put_odoo_on_path()

import odoo  # noqa: E402
from odoo import SUPERUSER_ID, api  # noqa: E402

from simulator import Tenant  # noqa: E402

GRAPH_WRITES = {"POST", "PATCH", "DELETE"}
EWS_WRITES = {"CreateItem", "UpdateItem", "DeleteItem"}
WRITE_VERBS = ("INSERT", "UPDATE", "DELETE")


class WriteCounter:
    """Counts the SQL statements, and those that write by table, while active."""

    def __init__(self):
        self.tables = collections.Counter()
        self.statements = 0

    def wrap(self, execute):
        counter = self

        def counting(cursor, query, params=None, log_exceptions=True):
            counter.statements += 1
            text = str(getattr(query, "code", query)).lstrip().upper()
            if text.startswith(WRITE_VERBS):
                words = text.replace('"', " ").split()
                table = words[2] if words[0] in ("INSERT", "DELETE") else words[1]
                counter.tables[table.lower()] += 1
            return execute(cursor, query, params, log_exceptions)

        return counting


def is_batch(entry):
    return "$batch" in (entry.get("endpoint") or entry["path"])


def tenant_operations(tenant, email):
    """The mailbox's answered operations: $batch items one by one, no NTLM 401 legs, no $batch itself."""
    email = email.lower()
    return [e for e in tenant.request_log.entries
            if (e.get("mailbox") or "").lower() == email and e["status"] != 401 and not is_batch(e)]


def measure(env, tenant, user, label, trigger="cron"):
    """One contact sync of ``user`` (scheduled, or "Sync now" when ``trigger`` is "manual")."""
    from odoo.addons.exchange_connector.models.exchange_mailbox import PendingRun  # noqa: PLC0415

    tenant.request_log.clear()
    counter = WriteCounter()
    cursor_class = type(env.cr)
    partner_class = type(env["res.partner"])
    contact_values = partner_class._exchange_contact_values
    mapped = []

    def counting_values(partners, database_uuid):
        mapped.append(len(partners))
        return contact_values(partners, database_uuid)

    pending = PendingRun(env["exchange.sync.run"], user, "contacts", trigger)
    env.flush_all()
    started = time.perf_counter()
    with patch.object(cursor_class, "execute", counter.wrap(cursor_class.execute)), \
            patch.object(partner_class, "_exchange_contact_values", counting_values), \
            user._exchange_backend() as backend:
        error = user._exchange_mailbox()._exchange_sync_kind("contacts", backend, pending)
        env.flush_all()
    elapsed = time.perf_counter() - started
    if error is not None:
        raise error
    run = pending.record
    entries = tenant_operations(tenant, user.exchange_email)
    writes = [e for e in entries if (e["method"] in GRAPH_WRITES if e["protocol"] == "graph"
                                     else e.get("operation") in EWS_WRITES)]
    batches = sum(1 for e in tenant.request_log.entries if is_batch(e))
    db_writes = sum(n for table, n in counter.tables.items()
                    if table not in ("exchange_sync_run", "exchange_mailbox"))
    print(f"  {label:<22} {len(entries):>6} operations {len(writes):>6} writes {batches:>5} $batch "
          f"{db_writes:>6} db writes {counter.statements:>6} SQL {sum(mapped):>6} mapped  {elapsed:7.2f} s   "
          f"created {run.count_created or 0} "
          f"updated {run.count_updated or 0} failed {run.count_failed or 0}")
    return {"requests": len(entries), "writes": len(writes), "batches": batches, "db_writes": db_writes,
            "statements": counter.statements, "mapped": sum(mapped)}


def make_partners(env, count):
    tags = env["res.partner.category"].create([{"name": f"Bench tag {n}"} for n in range(5)])
    company = env["res.partner"].create({"name": "Bench Holding", "is_company": True})
    return env["res.partner"].create([{
        "name": f"Bench Person {number}",
        "parent_id": company.id,
        "function": "Buyer",
        "email": f"person{number}@bench.example" if number % 10 else False,
        "phone": f"+49 89 {number:06d}",
        "street": f"Street {number}",
        "zip": f"{10000 + number}",
        "city": "München",
        "category_id": [(6, 0, tags[number % 5].ids)],
    } for number in range(count)])


def make_user(env, tenant, kind):
    remote = tenant.store.add_mailbox(f"bench.{kind}@contoso.test", f"Bench {kind}", password=PASSWORD)
    values = {"name": f"Bench {kind}", "login": f"bench.{kind}",
              "group_ids": [(6, 0, env.ref("base.group_user").ids)],
              **connector_bench.mailbox_values(tenant, kind, remote.email)}
    user = env["res.users"].with_context(no_reset_password=True).create(values)
    connector_bench.connect(user, tenant)
    return user


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    database = os.environ.get("TEST_DB")
    parser.add_argument("--database", default=database, required=not database)
    parser.add_argument("--partners", type=int, default=5000)
    parser.add_argument("--edits", type=int, default=50)
    args = parser.parse_args()
    registry = connector_bench.open_registry(args.database)
    with Tenant.start() as tenant, registry.cursor() as cr:
        connector_bench.register_app(tenant)
        env = api.Environment(cr, SUPERUSER_ID, {})
        connector_bench.configure_company(env, tenant)
        print(f"Contact push of {args.partners} subscribed partners, then {args.edits} edits "
              f"(Odoo database {args.database}, rolled back at the end)")
        try:
            with connector_bench.no_commit_progress(env):
                partners = make_partners(env, args.partners)
                for kind in ("graph", "ews"):
                    user = make_user(env, tenant, kind)
                    env["exchange.contact.subscription"].sudo().create(
                        [{"user_id": user.id, "partner_id": partner.id} for partner in partners])
                    print(f"{kind}:")
                    measure(env, tenant, user, "first push")
                    measure(env, tenant, user, "no-change re-run")
                    measure(env, tenant, user, "no-change Sync now", trigger="manual")
                    # Not an address field: Odoo copies a contact's address to its company and siblings.
                    for number, partner in enumerate(partners[: args.edits]):
                        partner.phone = f"+49 30 {kind} {number:06d}"
                    measure(env, tenant, user, f"after {args.edits} edits")
        finally:
            cr.rollback()


if __name__ == "__main__":
    odoo.tools.config["workers"] = 0
    main()
