import signal
import subprocess
import sys
from pathlib import Path

from odoo import SUPERUSER_ID, api, release
from odoo.orm.environments import Transaction
from odoo.tests import TransactionCase, tagged
from odoo.tools import config

from .test_mail_import import MailImportMixin, mime

MAILS = 45
PAGE_SIZE = 10
#: The worker kills itself (SIGKILL) after preparing this many chatter messages: in the middle of
#: the third page, two pages being committed, with delete-after-import on.
KILL_AT = 25

WORKER_SCRIPT = """
import os, signal
from odoo.addons.exchange_connector.services.ews import EwsBackend

init = EwsBackend.__init__
def small_pages(backend, *args, **kwargs):
    init(backend, *args, **kwargs)
    backend.page_size = {page_size}
EwsBackend.__init__ = small_pages

Mail = type(env["exchange.mail"])
message_values = Mail._exchange_message_values
prepared = [0]
def prepare_then_die(mail, *args):
    values = message_values(mail, *args)
    prepared[0] += 1
    if prepared[0] == {kill_at}:
        os.kill(os.getpid(), signal.SIGKILL)
    return values
Mail._exchange_message_values = prepare_then_die

env["exchange.mailbox"].browse({mailbox_id})._exchange_sync()
print("NOT KILLED")
"""


@tagged("post_install", "-at_install")
class TestMailImportKilled(MailImportMixin, TransactionCase):
    """An Odoo process killed (SIGKILL) in the middle of an import loses and duplicates no mail.

    The users and partners are committed (a separate process must see them) and removed afterwards.
    """

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.start_tenant()  # an on-premises mailbox: no company settings to commit
        cls.addClassCleanup(cls.remove_committed_rows)
        with cls.registry.cursor() as cr:
            env = api.Environment(cr, SUPERUSER_ID, {})
            user, cls.remote = cls.ews_user(
                env, "killed", exchange_delete_after_import=True, exchange_sync_events=False,
                exchange_sync_contacts=False)
            cls.mailbox_id = user._exchange_mark_connected(cls.remote.email).id
            cls.user_id = user.id
            cls.partner_id = env["res.partner"].create({"name": "Kilian", "email": "kilian@customer.test"}).id
        for number in range(MAILS):
            cls.drop(cls.remote, mime(f"Kill {number}", "kilian@customer.test", cls.remote.email,
                                      f"<kill{number}@customer.test>"))

    @classmethod
    def remove_committed_rows(cls):
        with cls.registry.cursor() as cr:
            env = api.Environment(cr, SUPERUSER_ID, {})
            user = env["res.users"].browse(cls.user_id).exists()
            env["mail.message"].search(
                [("model", "=", "res.partner"), ("res_id", "=", cls.partner_id)]).unlink()
            env["exchange.mail"].search([("user_id", "=", cls.user_id)]).unlink()
            env["exchange.sync.run"].search([("user_id", "=", cls.user_id)]).unlink()
            env["exchange.mailbox"].browse(cls.mailbox_id).exists().unlink()
            partners = user.partner_id | env["res.partner"].browse(cls.partner_id).exists()
            user.unlink()
            partners.unlink()

    def worker_command(self):
        odoo_bin = Path(release.__file__).resolve().parent.parent / "odoo-bin"
        command = [sys.executable, str(odoo_bin), "--addons-path=" + ",".join(config["addons_path"]), "shell",
                   "-d", self.env.cr.dbname, f"--data-dir={config['data_dir']}", "--no-http",
                   "--log-level=warn"]
        for option in ("db_host", "db_port", "db_user", "db_password"):
            if config.get(option):
                command.append(f"--{option}={config[option]}")
        return command

    def committed_state(self):
        with self.registry.cursor() as cr:
            env = api.Environment(cr, SUPERUSER_ID, {})
            messages = env["mail.message"].search(
                [("model", "=", "res.partner"), ("res_id", "=", self.partner_id),
                 ("message_type", "=", "email")])
            mails = env["exchange.mail"].search([("user_id", "=", self.user_id)])
            return sorted(messages.mapped("message_id")), sorted(mails.mapped("state"))

    def test_killed_in_the_middle_of_an_import(self):
        script = WORKER_SCRIPT.format(page_size=PAGE_SIZE, kill_at=KILL_AT, mailbox_id=self.mailbox_id)
        worker = subprocess.run(self.worker_command(), input=script, capture_output=True, text=True,
                                timeout=240, check=False)
        self.assertEqual(worker.returncode, -signal.SIGKILL, worker.stdout[-2000:] + worker.stderr[-3000:])

        message_ids, states = self.committed_state()
        self.assertEqual(len(message_ids), 2 * PAGE_SIZE, "the pages committed before the kill stay")
        self.assertEqual(len(set(message_ids)), len(message_ids))
        folder = self.remote.folder_by_path("Inbox/Transfer In")
        self.assertEqual(len(self.remote.items_in(folder.id)), MAILS,
                         "nothing was deleted: the deletion comes after the commits of the whole run")

        # The next run (another worker) finishes the job.
        with self.registry.cursor() as cr:
            cr.transaction = Transaction(self.registry)
            env = api.Environment(cr, SUPERUSER_ID, {})
            env["exchange.mailbox"].browse(self.mailbox_id)._exchange_sync()

        message_ids, states = self.committed_state()
        self.assertEqual(message_ids, sorted(f"<kill{number}@customer.test>" for number in range(MAILS)),
                         "every mail exactly once")
        self.assertEqual(states, ["posted"] * MAILS)
        self.assertFalse(self.remote.items_in(folder.id), "all deleted after their import was committed")
