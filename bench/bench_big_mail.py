"""Peak memory of importing one big mail (a 30 MB attachment) through each backend.

The tenant runs in this process; each import runs in a child process of its own (the same script
with ``--child``), so that what the child measures is the import alone: its resident memory before
the import (Odoo loaded, one small mail imported to warm the code paths), its peak (``VmHWM``) and
the peak of Python's own allocations during the import (``tracemalloc``, which does not see
libxml2's trees nor C buffers). The child checks that the attachment arrived byte-identical and
rolls back; the parent removes the users it created.

    EXCHANGE_CONNECTOR_HOME=... $VENV/bin/python bench/bench_big_mail.py --db DB [--big-mail-mb 30]
        [--backends graph,ews]
"""

import argparse
import base64
import hashlib
import os
import random
import subprocess
import sys
import time
import tracemalloc
import uuid

import connector_bench

connector_bench.put_odoo_on_path()

from simulator import Tenant  # noqa: E402


def big_mime(number, size_mb, seed=30):
    """A mail with ``size_mb`` MB of random bytes attached (and the attachment's SHA-256)."""
    content = random.Random(seed + number).randbytes(size_mb * 1024 * 1024)
    data = base64.encodebytes(content).replace(b"\n", b"\r\n")
    head = (
        "From: Big Customer <big.customer@customer.bench>\r\nTo: Sales <sales@ourcompany.bench>\r\n"
        f"Subject: Big mail {number}\r\nMessage-ID: <big{number}-{uuid.uuid4().hex}@customer.bench>\r\n"
        "Date: Mon, 02 Nov 2026 10:00:00 +0000\r\nMIME-Version: 1.0\r\n"
        'Content-Type: multipart/mixed; boundary="big"\r\n\r\n'
        "--big\r\nContent-Type: text/html; charset=utf-8\r\n\r\n<p>The plans, attached.</p>\r\n"
        "--big\r\nContent-Type: application/pdf\r\nContent-Transfer-Encoding: base64\r\n"
        f'Content-Disposition: attachment; filename="plans{number}.pdf"\r\n\r\n'
    ).encode()
    return head + data + b"--big--\r\n", hashlib.sha256(content).hexdigest()


def small_mime(number):
    return (
        "From: Big Customer <big.customer@customer.bench>\r\nTo: Sales <sales@ourcompany.bench>\r\n"
        f"Subject: Warm-up {number}\r\nMessage-ID: <warm{number}-{uuid.uuid4().hex}@customer.bench>\r\n"
        "Content-Type: text/plain; charset=utf-8\r\n\r\nHello\r\n"
    ).encode()


def memory_kib(field):
    with open("/proc/self/status", encoding="ascii") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def reset_peak():
    """Start ``VmHWM`` over from the current RSS (Linux 4.0+: write 5 to clear_refs)."""
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as handle:
            handle.write("5")
        return True
    except OSError:
        return False


def child(args):
    registry = connector_bench.open_registry(args.db)
    from odoo import SUPERUSER_ID, api  # noqa: PLC0415

    from odoo.addons.exchange_connector.models.exchange_mailbox import PendingRun  # noqa: PLC0415

    with registry.cursor() as cr:
        env = api.Environment(cr, SUPERUSER_ID, {})
        user = env["res.users"].search([("login", "=", args.login)])
        runs = env["exchange.sync.run"]
        mailbox = user._exchange_mailbox()
        with connector_bench.no_commit_progress(env):
            # Warm-up: the folder listing and a small mail, so that the import code is loaded.
            with user._exchange_backend() as backend:
                mailbox._sync_mails(backend, PendingRun(runs, user, "mails", "cron"))
            env.flush_all()
            print(f"DROP {args.login}", flush=True)
            sys.stdin.readline()  # the parent drops the big mail now
            baseline = memory_kib("VmRSS")
            exact_peak = reset_peak()
            if not args.no_tracemalloc:
                tracemalloc.start()
            started = time.perf_counter()
            with user._exchange_backend() as backend:
                mailbox._sync_mails(backend, PendingRun(runs, user, "mails", "cron"))
            env.flush_all()
            seconds = time.perf_counter() - started
            _current, traced_peak = tracemalloc.get_traced_memory()
            tracemalloc.stop()
            peak = memory_kib("VmHWM")
        attachment = env["ir.attachment"].search(
            [("name", "=like", "plans%.pdf"), ("create_uid", "=", SUPERUSER_ID)], order="id desc", limit=1)
        digest = hashlib.sha256(attachment.raw or b"").hexdigest() if attachment else None
        size = attachment.file_size if attachment else 0
        cr.rollback()
    print(
        f"RESULT {baseline} {peak} {traced_peak} {int(exact_peak)} {seconds:.2f} "
        f"{digest} {size}",
        flush=True,
    )


def parent(args):
    registry = connector_bench.open_registry(args.db)
    from odoo import SUPERUSER_ID, api  # noqa: PLC0415
    from odoo.tests import new_test_user  # noqa: PLC0415

    tenant = Tenant.start()
    connector_bench.register_app(tenant)
    created = []
    try:
        with registry.cursor() as cr:
            env = api.Environment(cr, SUPERUSER_ID, {})
            connector_bench.configure_company(env, tenant)
            env.company.exchange_attachment_limit_mb = max(env.company.exchange_attachment_limit_mb,
                                                           args.big_mail_mb + 5)
            partner = env["res.partner"].search([("email", "=", "big.customer@customer.bench")], limit=1)
            if not partner:
                env["res.partner"].create({"name": "Big Customer", "email": "big.customer@customer.bench"})
            users = {}
            for number, kind in enumerate(args.backends.split(",")):
                tag = uuid.uuid4().hex[:8]
                remote = tenant.store.add_mailbox(f"big-{kind}-{tag}@contoso.test", f"Big {kind}",
                                                  password=connector_bench.PASSWORD)
                values = dict(connector_bench.mailbox_values(tenant, kind, remote.email),
                              exchange_sync_events=False, exchange_sync_contacts=False)
                user = new_test_user(env, login=f"big.{kind}.{tag}", name=f"Big {kind}", **values)
                connector_bench.connect(user, tenant)
                folder = remote.ensure_folder_path("Inbox/Transfer In")
                remote.add_message(folder.id, small_mime(number))
                users[kind] = (user.login, remote, folder)
                created.append(user.id)
            cr.commit()
        print(f"one mail with a {args.big_mail_mb} MB attachment, imported alone in a child process")
        print("backend | RSS before | peak RSS over it | Python allocations peak | seconds | attachment | "
              "fetched by")
        for number, (kind, (login, remote, folder)) in enumerate(users.items()):
            mime, digest = big_mime(number, args.big_mail_mb)
            process = subprocess.Popen(
                [sys.executable, os.path.abspath(__file__), "--child", "--db", args.db, "--login", login]
                + (["--no-tracemalloc"] if args.no_tracemalloc else []),
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
            )
            result = None
            started = time.time()
            for line in process.stdout:
                if line.startswith("DROP"):
                    started = time.time()
                    remote.add_message(folder.id, mime)
                    del mime
                    process.stdin.write("go\n")
                    process.stdin.flush()
                elif line.startswith("RESULT"):
                    result = line.split()
                else:
                    print(line, end="")
            process.wait()
            fetches = [e for e in tenant.request_log.entries
                       if e.get("ts", 0) >= started and not e.get("batch_item") and e["status"] != 401
                       and ("$value" in e["path"] or "$batch" in e["path"]
                            or e.get("operation") == "GetItem")]
            if not result:
                print(f"{kind}: the child failed ({process.returncode})")
                continue
            baseline, peak, traced, exact, seconds, got, size = result[1:]
            same = "byte-identical" if got == digest else f"DIFFERENT ({size} bytes)"
            how = ", ".join(sorted({"GET $value" if "$value" in e["path"] else
                                    "$batch" if "$batch" in e["path"] else "GetItem" for e in fetches}))
            over = (int(peak) - int(baseline)) / 1024
            # (*): the kernel could not restart the peak; it may then be the warm-up's.
            mark = "" if exact == "1" else " (*)"
            print(f"{kind:7} | {int(baseline) / 1024:7.0f} MiB | {over:7.0f} MiB{mark} "
                  f"| {'not traced' if args.no_tracemalloc else f'{int(traced) / 1048576:7.0f} MiB'} "
                  f"| {seconds} | {same} | {how}")
    finally:
        tenant.stop()
        if created:
            with registry.cursor() as cr:
                env = api.Environment(cr, SUPERUSER_ID, {})
                users = env["res.users"].browse(created)
                env["exchange.mail"].search([("user_id", "in", created)]).unlink()
                try:
                    with cr.savepoint():
                        users.unlink()
                except Exception:  # noqa: BLE001 - a bench leaves archived users at worst
                    users.action_archive()


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--db", default=os.environ.get("TEST_DB", "exchange_connector_test"))
    parser.add_argument("--big-mail-mb", type=int, default=30)
    parser.add_argument("--backends", default="graph,ews")
    parser.add_argument("--no-tracemalloc", action="store_true",
                        help="time the import without tracemalloc, which slows it down")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--login", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args)
    else:
        parent(args)


if __name__ == "__main__":
    main()
