from datetime import timedelta

from odoo import fields
from odoo.tests import TransactionCase, tagged

from .common import ConfiguredTenantMixin
from .test_scheduler import SchedulerMixin


# Not a standard test: it needs OCA queue_job installed in the database. ./dev/test runs it in a
# database of its own with queue_job (see dev/test, "queue_job mode").
@tagged("-standard", "exchange_queue_job", "post_install", "-at_install")
class TestQueueJobMode(SchedulerMixin, ConfiguredTenantMixin, TransactionCase):
    def jobs_of(self, mailboxes):
        keys = [f"exchange_connector.sync.{mailbox.id}" for mailbox in mailboxes]
        return self.env["queue.job"].search([("identity_key", "in", keys)], order="id")

    def perform(self, job):
        """Run ``job`` as queue_job's runner does; returns its result or the exception it raised.

        The job may commit (one commit per page): queue_job runs it in a cursor of its own,
        which the registry's test mode makes one on the test transaction.
        """
        from odoo.addons.queue_job.job import Job  # noqa: PLC0415 - only with queue_job installed

        with self.enter_registry_test_mode():
            try:
                return Job.load(self.env, job.uuid).perform()
            except Exception as error:  # noqa: BLE001 - assertRaises would roll the job's writes back
                return error

    def test_each_due_mailbox_is_enqueued_once_and_synced_by_its_job(self):
        due = [self.connected_ews_user(self.env, f"queued{number}", due_in=timedelta(minutes=-number))
               for number in range(3)]
        _idle_user, _idle_remote, idle = self.connected_ews_user(self.env, "idle", due_in=timedelta(hours=1))
        for _user, remote, _mailbox in due:
            self.add_mails(remote, 1)
        mailboxes = self.Mailbox.browse([mailbox.id for _user, _remote, mailbox in due])

        self.run_cron()
        self.run_cron()  # the jobs still wait: none is added
        jobs = self.jobs_of(mailboxes)
        self.assertEqual(len(jobs), 3, "one job per due mailbox, whatever the number of cron runs")
        self.assertEqual(set(jobs.mapped("channel")), {"root.exchange_connector"})
        function = jobs[0].job_function_id
        self.assertTrue(function.allow_commit, "a sync commits page by page")
        self.assertEqual(function.channel, "root.exchange_connector")
        self.assertEqual(set(jobs.mapped("state")), {"pending"})
        self.assertFalse(self.jobs_of(idle))
        self.assertEqual(len(self.tenant.request_log.entries), 0, "the scheduled job only enqueues")

        for job in jobs:
            self.assertEqual(self.perform(job), "Synced.")
        runs = self.env["exchange.sync.run"].search(
            [("user_id", "in", mailboxes.user_id.ids), ("kind", "=", "mails")])
        self.assertEqual(sorted(runs.user_id.ids), sorted(mailboxes.user_id.ids))
        self.assertEqual(set(runs.mapped("count_skipped")), {1})
        for mailbox in mailboxes:
            self.assertGreater(mailbox.next_sync, fields.Datetime.now() + timedelta(minutes=14))
            self.assertFalse(mailbox.sync_lease_token)

        # A job that comes too late (the mailbox was synced meanwhile) asks Microsoft nothing.
        served = len(self.tenant.request_log.entries)
        self.assertTrue(self.perform(jobs[0]).startswith("Not due"))
        self.assertEqual(len(self.tenant.request_log.entries), served)

    def test_a_throttled_mailbox_is_retried_after_microsofts_retry_after(self):
        from odoo.addons.queue_job.exception import RetryableJobError  # noqa: PLC0415

        _user, remote, mailbox = self.connected_ews_user(self.env, "throttled")
        self.tenant.knobs.set(remote.email, throttle_rate=1.0, retry_after_seconds=90)
        self.run_cron()
        outcome = self.perform(self.jobs_of(mailbox))
        self.assertIsInstance(outcome, RetryableJobError)
        self.assertGreaterEqual(outcome.seconds, 90)
        self.assertGreater(mailbox.next_sync, fields.Datetime.now() + timedelta(seconds=80),
                           "due again when Microsoft accepts the mailbox, not before")
        self.assertNotIn(mailbox, self.Mailbox.search(self.Mailbox._due_domain()))
