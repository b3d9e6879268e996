from datetime import timedelta
from unittest.mock import patch

from odoo import fields
from odoo.tests import TransactionCase, tagged

from .test_scheduler import SchedulerMixin, _no_commit_progress


@tagged("post_install", "-at_install")
class TestInterruptedRuns(SchedulerMixin, TransactionCase):
    """Runs a killed worker left "Started" (its commits are those of TestSchedulerLease)."""

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.start_tenant(cls.env)
        cls.Run = cls.env["exchange.sync.run"]

    def run_cron(self):
        with patch.object(type(self.env["ir.cron"]), "_commit_progress", _no_commit_progress):
            self.env["exchange.mailbox"]._cron_sync()

    def ghost_run(self, user, mailbox, minutes_ago):
        """What a worker killed mid-sync leaves: a run "Started", and a lease nobody releases."""
        started = fields.Datetime.now() - timedelta(minutes=minutes_ago)
        run = self.Run._start(user, "mails")
        run.date_started = started
        mailbox.write({"sync_lease_until": started + timedelta(minutes=3), "sync_lease_token": "dead-worker"})
        return run

    def test_the_next_run_closes_a_dead_workers_run(self):
        user, _remote, mailbox = self.connected_ews_user(self.env, "gustav", due_in=timedelta(minutes=-5))
        ghost = self.ghost_run(user, mailbox, minutes_ago=10)
        lease_expired = mailbox.sync_lease_until
        other_user, _other_remote, other_mailbox = self.connected_ews_user(self.env, "greta",
                                                                          due_in=timedelta(hours=1))
        other_ghost = self.ghost_run(other_user, other_mailbox, minutes_ago=1)
        other_mailbox.sync_lease_until = fields.Datetime.now() + timedelta(minutes=2)

        self.run_cron()

        self.assertEqual(ghost.state, "interrupted")
        self.assertEqual(ghost.date_done, lease_expired, "closed when the dead worker's lease ended")
        self.assertEqual(ghost.exc_name, "WorkerInterrupted")
        self.assertIn("stopped before the end", ghost.exc_message)
        new_runs = self.Run.search([("user_id", "=", user.id), ("id", "!=", ghost.id)])
        self.assertEqual(set(new_runs.mapped("state")), {"done"})
        self.assertEqual(other_ghost.state, "started", "a live lease: its worker may still be running")

    def test_runs_of_mailboxes_no_sync_takes_any_more_are_closed_by_the_autovacuum(self):
        user, _remote, mailbox = self.connected_ews_user(self.env, "gisela", due_in=timedelta(hours=1))
        ghost = self.ghost_run(user, mailbox, minutes_ago=2 * 24 * 60)
        user._exchange_mark_disconnected()
        recent = self.ghost_run(*self.connected_ews_user(self.env, "gino", due_in=timedelta(hours=1))[::2],
                                minutes_ago=5)
        self.Run._gc_interrupted_runs()
        self.assertEqual(ghost.state, "interrupted")
        self.assertEqual(recent.state, "started", "left to the next sync of its mailbox")
