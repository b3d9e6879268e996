import logging

from odoo import api, models

from .exchange_mailbox import INTERRUPTIONS, retry_after_of

_logger = logging.getLogger(__name__)

#: The queue_job channel of the mailbox syncs; its capacity is set in the Odoo configuration
#: (``[queue_job] channels = root:8,root.exchange_connector:6``), else they share root's.
QUEUE_JOB_CHANNEL = "root.exchange_connector"


class ExchangeMailbox(models.Model):
    """The distributed mode: with OCA ``queue_job`` installed, one job per due mailbox.

    The scheduled job then only enqueues; queue_job's runner spreads the jobs over the workers
    of every Odoo server on the database, within the channel's capacity. Without queue_job the
    scheduled job syncs the mailboxes itself (see ``_cron_sync`` in exchange_mailbox.py).
    """

    _inherit = "exchange.mailbox"

    @api.model
    def _exchange_queue_job_installed(self):
        return "queue.job" in self.env and hasattr(self, "with_delay")

    @api.model
    def _cron_sync(self, budget=None):
        if not self._exchange_queue_job_installed():
            return super()._cron_sync(budget=budget)
        return self._exchange_enqueue_due()

    @api.model
    def _exchange_enqueue_due(self):
        """Enqueue a sync job for each due mailbox that has none waiting; returns how many are due."""
        due = self.sudo().search(self._due_domain(), order="sync_requested desc, next_sync asc, id")
        if due:
            self._exchange_queue_job_function()
        for mailbox in due:
            mailbox._exchange_enqueue()
        return len(due)

    @api.model
    def _exchange_queue_job_function(self):
        """queue_job's settings of the sync jobs, created on first use: their channel, and commits
        allowed (a sync commits page by page). An administrator may change them afterwards."""
        functions = self.env["queue.job.function"].sudo()
        name = functions.job_function_name(self._name, "_exchange_sync_job")
        function = functions.search([("name", "=", name)], limit=1)
        if function:
            return function
        channels = self.env["queue.job.channel"].sudo()
        channel = channels.search([("complete_name", "=", QUEUE_JOB_CHANNEL)], limit=1) or channels.create({
            "name": QUEUE_JOB_CHANNEL.rsplit(".", 1)[-1],
            "parent_id": self.env.ref("queue_job.channel_root").id,
        })
        return functions.create({
            "model_id": self.env["ir.model"]._get_id(self._name), "method": "_exchange_sync_job",
            "channel_id": channel.id, "allow_commit": True,
        })

    def _exchange_enqueue(self, eta=None):
        """The sync job of this mailbox; the identity key keeps a mailbox from waiting twice in the queue."""
        self.ensure_one()
        return self.with_delay(
            channel=QUEUE_JOB_CHANNEL,
            identity_key=f"exchange_connector.sync.{self.id}",
            description=self.env._("Exchange sync of %(user)s", user=self.user_id.name),
            eta=eta,
        )._exchange_sync_job()

    def _exchange_sync_job(self):
        """queue_job: sync this mailbox if it is still due (else nothing), as the scheduled job would.

        The lease and the advisory lock keep it from running twice, whichever worker or server
        runs the job. Throttled by Microsoft, the job is retried after Microsoft's Retry-After
        (the mailbox is due again at that moment); stopped by its time budget, it is enqueued
        again to continue from the saved states.
        """
        self.ensure_one()
        budget = self._exchange_run_budget()
        # A fresh snapshot before the lock: the due check must see the last worker's commit.
        self._exchange_commit()
        lease = self._exchange_take_lease(budget)
        if not lease:
            return self.env._("Not due: synced meanwhile, or being synced by another worker.")
        try:
            errors = self._exchange_leased(lease)._exchange_sync(budget, lease["trigger"])
        finally:
            self._exchange_release_lock()
        retry_after = retry_after_of(errors)
        if retry_after:
            from odoo.addons.queue_job.exception import RetryableJobError  # noqa: PLC0415 - optional addon

            raise RetryableJobError(
                self.env._("Microsoft throttles this mailbox: retry after %(seconds)s s",
                           seconds=f"{retry_after:g}"),
                seconds=retry_after)
        if any(isinstance(error, INTERRUPTIONS) for error in errors):
            self._exchange_enqueue()
            return self.env._("Stopped by its time budget: continues in a new job.")
        return self.env._("Synced.")
