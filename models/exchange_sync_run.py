import logging
from datetime import timedelta

from odoo import api, fields, models
from odoo.exceptions import UserError

from ..services import ExchangeError, TimeBudgetExceeded
from .exchange_mailbox import MailboxReleased

# Stops after which the next run simply resumes from the last committed page.
PARTIAL_STOPS = (TimeBudgetExceeded, MailboxReleased)

_logger = logging.getLogger(__name__)

SYNC_KINDS = [
    ("mails", "Mails"),
    ("events", "Events"),
    ("contacts", "Contacts"),
    ("connection", "Connection"),
]
DEFAULT_RUN_RETENTION_DAYS = 30


class ExchangeSyncRun(models.Model):
    """One sync of one kind for one user: what users and administrators look at.

    Shaped like ``queue.job`` in OCA/queue_job: a state, when it started and ended, what it did
    and, when it failed, the exception and Microsoft's own error code and request id.
    """

    _name = "exchange.sync.run"
    _description = "Exchange sync run"
    _order = "date_started desc, id desc"

    user_id = fields.Many2one(
        "res.users", required=True, ondelete="cascade", index=True, readonly=True)
    kind = fields.Selection(SYNC_KINDS, required=True, readonly=True)
    trigger = fields.Selection(
        [("cron", "Scheduled"), ("manual", "Manual")], required=True, default="cron", readonly=True)
    state = fields.Selection(
        [
            ("started", "Started"),
            ("done", "Done"),
            ("partial", "Partial"),
            ("failed", "Failed"),
            ("interrupted", "Interrupted"),
        ],
        required=True, default="started", index=True, readonly=True,
        help="Partial: the run's time budget ended; the next run continues where this one stopped. "
             "Interrupted: the worker running it stopped (killed, restarted); a later run continued.")
    date_started = fields.Datetime("Started", required=True, default=fields.Datetime.now, readonly=True)
    date_done = fields.Datetime("Ended", readonly=True)
    duration = fields.Float("Duration (s)", compute="_compute_duration", digits=(16, 1))
    count_created = fields.Integer("Created", readonly=True)
    count_updated = fields.Integer("Updated", readonly=True)
    count_deleted = fields.Integer("Deleted", readonly=True)
    count_skipped = fields.Integer("Skipped", readonly=True)
    count_failed = fields.Integer("Failed", readonly=True)
    exc_name = fields.Char("Exception", readonly=True)
    exc_message = fields.Text("Error message", readonly=True)
    error_code = fields.Char(
        "Microsoft error code", readonly=True,
        help="The code Microsoft answered with (Graph error.code, EWS ResponseCode or OAuth error).")
    request_id = fields.Char(
        "Microsoft request id", readonly=True,
        help="Give it to Microsoft support to find the request in their logs.")
    error_summary = fields.Text(
        "What went wrong", readonly=True,
        help="What stopped the run and what to do about it; the exception itself is under Details.")
    result = fields.Char(compute="_compute_result")
    failed_mail_ids = fields.Many2many(
        "exchange.mail", "exchange_mail_failed_run_rel", "run_id", "mail_id", "Failed mails",
        readonly=True, help="The mails that failed or were parked in this run; the reason is the latest.")

    @api.depends("date_started", "date_done")
    def _compute_duration(self):
        for run in self:
            if run.date_started and run.date_done:
                run.duration = (run.date_done - run.date_started).total_seconds()
            else:
                run.duration = 0.0

    @api.depends("state", "count_created", "count_updated", "count_deleted", "count_skipped", "count_failed")
    def _compute_result(self):
        """One line on what the run did: "Done: 0 imported" only when there was nothing to import."""
        for run in self:
            counts = [(run.count_created, self.env._("%(count)s imported")),
                      (run.count_updated, self.env._("%(count)s updated")),
                      (run.count_deleted, self.env._("%(count)s removed")),
                      (run.count_skipped, self.env._("%(count)s skipped")),
                      (run.count_failed, self.env._("%(count)s failed"))]
            done = [label % {"count": count} for count, label in counts if count]
            state = dict(run._fields["state"]._description_selection(self.env)).get(run.state, run.state)
            if not done:
                done = [self.env._("nothing new") if run.state != "started" else self.env._("nothing yet")]
            run.result = self.env._("%(state)s: %(what)s", state=state, what=", ".join(done))

    @api.depends("kind", "user_id", "date_started")
    def _compute_display_name(self):
        kinds = dict(self._fields["kind"]._description_selection(self.env))
        for run in self:
            run.display_name = f"{kinds.get(run.kind, run.kind)} — {run.user_id.name or ''}"

    @api.model
    def _start(self, user, kind, trigger="cron"):
        """Create the run record of a sync that begins now (as superuser: users only read their runs)."""
        return self.sudo().create({"user_id": user.id, "kind": kind, "trigger": trigger})

    def _count(self, **counts):
        """Add to the counters, e.g. ``run._count(skipped=len(page.items))``."""
        self.ensure_one()
        self.write({f"count_{name}": self[f"count_{name}"] + value for name, value in counts.items()})

    def _finish(self, error=None):
        """Close the run: done without ``error``; partial for a spent time budget; failed otherwise."""
        self.ensure_one()
        values = {"date_done": fields.Datetime.now(), "state": "done"}
        if error is not None:
            values.update(
                state="partial" if isinstance(error, PARTIAL_STOPS) else "failed",
                exc_name=type(error).__name__,
                exc_message=str(error),
                error_code=getattr(error, "code", None) or getattr(error, "kind", None) or False,
                request_id=getattr(error, "request_id", None) or False,
                error_summary=self._error_summary(error),
            )
        self.write(values)

    def _error_summary(self, error):
        """The sentence a user reads about ``error``: what happened and what to do."""
        self.ensure_one()
        if isinstance(error, PARTIAL_STOPS):
            return self.env._(
                "The run stopped at its time limit or because the mailbox changed meanwhile: the next run "
                "continues where it stopped. Nothing to do.")
        if isinstance(error, ExchangeError):
            return self.user_id.sudo()._exchange_describe_error(error)
        if isinstance(error, UserError):
            return str(error.args[0])
        return self.env._(
            "An unexpected error stopped this run; what was saved before it stays, and the next run tries "
            "again. If it happens again, give the details below to your administrator.")

    @api.model
    def _close_interrupted(self, user, worker_gone_at):
        """Close ``user``'s runs still "Started": their worker died (a new lease was just taken).

        ``worker_gone_at`` is when the dead worker's lease expired, the time by which it surely
        stopped; the runs end there, saying so.
        """
        ghosts = self.sudo().search([("user_id", "=", user.id), ("state", "=", "started")])
        for run in ghosts:
            run.write({
                "state": "interrupted",
                "date_done": max(worker_gone_at, run.date_started),
                "exc_name": "WorkerInterrupted",
                "exc_message": self.env._(
                    "The worker running this sync stopped before the end (killed or restarted, e.g. at "
                    "the server's time limit); its lease expired at %(expired)s UTC. The next sync "
                    "continued from the last saved page.", expired=fields.Datetime.to_string(worker_gone_at)),
            })
        if ghosts:
            _logger.info("Closed %d interrupted Exchange sync run(s) of user %s", len(ghosts), user.login)
        return ghosts

    @api.autovacuum
    def _gc_old_runs(self):
        """Forget runs older than ``exchange_connector.sync_run_retention_days`` (30 by default)."""
        days = self.env["res.users"]._exchange_param_int(
            "sync_run_retention_days", DEFAULT_RUN_RETENTION_DAYS)
        limit = fields.Datetime.now() - timedelta(days=days)
        self.sudo().search([("date_started", "<", limit), ("state", "!=", "started")]).unlink()

    @api.autovacuum
    def _gc_interrupted_runs(self):
        """Close the runs of dead workers whose mailbox no sync took since (disconnected, locked out)."""
        now = fields.Datetime.now()
        ghosts = self.sudo().search([
            ("state", "=", "started"), ("date_started", "<", now - timedelta(days=1))])
        mailboxes = self.env["exchange.mailbox"].sudo().search([("user_id", "in", ghosts.user_id.ids)])
        for mailbox in mailboxes:
            if not mailbox.sync_lease_until or mailbox.sync_lease_until < now:
                self._close_interrupted(mailbox.user_id, mailbox.sync_lease_until or now)
