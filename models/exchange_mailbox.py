import logging
from datetime import datetime, timedelta, timezone

import psycopg2.errors
from markupsafe import Markup

from odoo import api, fields, models
from odoo.exceptions import UserError

from ..services import AuthenticationError, ConnectionProblem, ExchangeError, RunBudget, TimeBudgetExceeded

_logger = logging.getLogger(__name__)

DEFAULT_MAX_AUTH_FAILURES = 3
#: Seconds one scheduled run may spend talking to Microsoft (``exchange_connector.cron_time_budget``).
DEFAULT_CRON_TIME_BUDGET = 120
#: The Outlook contact folder the connector pushes subscribed partners into.
CONTACT_FOLDER_NAME = "Odoo"
#: Sync states only make sense for the mailbox they were obtained from.
SYNC_STATE_FIELDS = (
    "mails_in_folder_id", "mails_in_state", "mails_out_folder_id", "mails_out_state",
    "events_state", "events_window_start", "events_window_end", "contact_folder_id",
)
MAILBOX_STATES = [
    ("not_connected", "Not connected"),
    ("connected", "Connected"),
    ("auth_failed", "Sign-in failed"),
]


class ExchangeMailbox(models.Model):
    """A user's Exchange / Office 365 mailbox as the connector sees it: connection state and sync states.

    Created on demand (``res.users._exchange_mailbox()``), one per user. The scheduled job
    ``_cron_sync`` syncs every connected mailbox that is due; the per-kind work is in
    ``_sync_mails``, ``_sync_events`` and ``_sync_contacts``, which reach Microsoft only through
    the backend handed to them by ``res.users._exchange_backend()``.
    """

    _name = "exchange.mailbox"
    _description = "Exchange mailbox"
    _order = "id"
    _rec_name = "user_id"

    user_id = fields.Many2one(
        "res.users", required=True, ondelete="cascade", index=True, readonly=True)
    state = fields.Selection(MAILBOX_STATES, required=True, default="not_connected", copy=False)
    auth_failures = fields.Integer(
        "Consecutive sign-in failures", copy=False, groups="base.group_system",
        help="At the limit (system parameter exchange_connector.max_auth_failures, 3 by default) the "
             "connector stops trying until the user reconnects, so that it never gets the account locked.")
    last_error = fields.Text(copy=False)
    last_error_code = fields.Char("Last Microsoft error code", copy=False)
    connected_email = fields.Char("Connected mailbox", copy=False)
    sync_requested = fields.Boolean(
        copy=False, help="The user asked for a sync: the next scheduled run does it whatever the interval.")
    last_sync_started = fields.Datetime(copy=False)
    last_sync_done = fields.Datetime(copy=False)
    next_sync = fields.Datetime(copy=False, index=True)
    # Opaque resume points handed back by the backends (delta links / EWS SyncStates).
    mails_in_folder_id = fields.Char(copy=False, groups="base.group_system")
    mails_in_state = fields.Text(copy=False, groups="base.group_system")
    mails_out_folder_id = fields.Char(copy=False, groups="base.group_system")
    mails_out_state = fields.Text(copy=False, groups="base.group_system")
    events_state = fields.Text(copy=False, groups="base.group_system")
    events_window_start = fields.Datetime(copy=False, groups="base.group_system")
    events_window_end = fields.Datetime(copy=False, groups="base.group_system")
    contact_folder_id = fields.Char(copy=False, groups="base.group_system")

    _user_uniq = models.Constraint("UNIQUE(user_id)", "A user has one Exchange mailbox.")

    # -- connection bookkeeping (called by the seam) --------------------------

    def _exchange_record_success(self):
        self.ensure_one()
        values = {}
        if self.auth_failures or self.last_error:
            values.update(auth_failures=0, last_error=False, last_error_code=False)
        if self.state == "not_connected":
            # The credentials work (e.g. an on-premises mailbox passed Test connection): sync it.
            values.update(state="connected", connected_email=self.user_id.exchange_email,
                          next_sync=fields.Datetime.now())
        if values:
            self.write(values)

    def _exchange_error_text(self, error):
        """What the user reads about ``error``: the sentence res.users gives for Microsoft's errors."""
        if isinstance(error, ExchangeError) and hasattr(self.user_id, "_exchange_describe_error"):
            return self.user_id._exchange_describe_error(error)
        return str(error.args[0]) if isinstance(error, UserError) else str(error)

    def _exchange_record_error(self, error):
        self.ensure_one()
        self.write({"last_error": self._exchange_error_text(error),
                    "last_error_code": getattr(error, "code", None) or False})

    def _exchange_record_auth_failure(self, error):
        """Count a refused sign-in; at the limit, stop using the credentials and tell the user."""
        self.ensure_one()
        failures = self.auth_failures + 1
        limit = self.env["res.users"]._exchange_param_int("max_auth_failures", DEFAULT_MAX_AUTH_FAILURES)
        values = {
            "auth_failures": failures,
            "last_error": self._exchange_error_text(error),
            "last_error_code": error.code or error.kind,
        }
        lock_out = failures >= limit and self.state != "auth_failed"
        if lock_out:
            values["state"] = "auth_failed"
        self.write(values)
        if lock_out:
            _logger.warning("Exchange mailbox of user %s locked after %d sign-in failures (%s)",
                            self.user_id.login, failures, error.code or error.kind)
            self._exchange_notify_user(error, self.env._(
                "The synchronisation of your mailbox is paused after %(count)s failed sign-ins.",
                count=failures))
        elif failures == 1 and error.kind == "invalid_grant":
            # Microsoft has said the refresh token is expired or revoked: no retry can succeed, so
            # the user hears it now rather than only once the lockout stops the synchronisation.
            self._exchange_notify_user(error, self.env._(
                "Microsoft no longer accepts the sign-in of your mailbox; the synchronisation stops "
                "after %(count)s failed attempts unless you reconnect.", count=limit))

    def _exchange_notify_user(self, error, situation):
        """An inbox notification to the mailbox's user: what happened and what to do about it."""
        body = Markup("<p>%s</p><p>%s</p><p><small>%s</small></p>") % (
            situation, self._exchange_error_text(error), str(error))
        self.env["mail.thread"].sudo().message_notify(
            model="res.users",
            res_id=self.user_id.id,
            partner_ids=self.user_id.partner_id.ids,
            author_id=self.env.ref("base.partner_root").id,
            subject=self.env._("Exchange: reconnect your mailbox"),
            body=body,
        )

    def action_reset_lockout(self):
        """Administrator button: let the connector try the stored credentials again."""
        self.user_id._exchange_reset_lockout()

    def action_sync_now(self):
        """Administrator button: sync these mailboxes at the next run of the scheduled job."""
        return self.user_id.action_exchange_sync_now()

    # -- scheduling -----------------------------------------------------------

    @api.model
    def _due_domain(self):
        now = fields.Datetime.now()
        return [
            ("state", "=", "connected"),
            ("user_id.active", "=", True),
            "|", "|", ("sync_requested", "=", True), ("next_sync", "=", False), ("next_sync", "<=", now),
        ]

    @api.model
    def _cron_sync(self, budget=None):
        """Scheduled job: sync every connected mailbox whose interval elapsed or whose user asked for it.

        One mailbox at a time, each in its own transaction: it is locked with
        ``try_lock_for_update`` (SKIP LOCKED), synced, its states saved and its runs logged, then
        ``_commit_progress`` commits and so releases the lock. The row lock therefore covers
        exactly the unit of work that is committed: a second cron worker skips a mailbox that
        is being synced, and after that commit it sees the new ``next_sync`` and finds it no
        longer due. The sync states commit together with what was imported from those pages, so
        a crash never leaves a state pointing past records that were not saved. Mailboxes not
        reached before ``budget`` (a :class:`RunBudget`) is spent stay due: the job reports them
        as remaining and Odoo runs it again soon.
        """
        if budget is None:
            budget = RunBudget(self.env["res.users"]._exchange_param_int("cron_time_budget",
                                                                         DEFAULT_CRON_TIME_BUDGET))
        due = self.sudo().search(self._due_domain(), order="sync_requested desc, next_sync asc, id")
        cron = self.env["ir.cron"]
        time_left = cron._commit_progress(remaining=len(due))
        for mailbox in due:
            if budget.expired or not time_left:
                break
            mailbox._sync_if_free(budget)
            time_left = cron._commit_progress(1)

    def _sync_if_free(self, budget):
        """Lock this mailbox and sync it if it is still due; skip it when another worker holds it.

        Must start a fresh transaction (right after a commit) so that the due check sees what a
        worker that synced the mailbox meanwhile committed.
        """
        self.ensure_one()
        try:
            with self.env.cr.savepoint(flush=False):
                locked = self.try_lock_for_update(allow_referencing=True)
        except psycopg2.errors.SerializationFailure:
            # Another worker committed a sync of this row after our snapshot began.
            _logger.info("Exchange mailbox %s was just synced by another worker", self.id)
            return False
        if not locked.filtered_domain(self._due_domain()):
            _logger.debug("Exchange mailbox %s busy or no longer due: skipped", self.id)
            return False
        trigger = "manual" if locked.sync_requested else "cron"
        try:
            # Rolling back to a savepoint keeps the row lock taken before it.
            with self.env.cr.savepoint():
                locked._exchange_sync(budget)
        except Exception as error:  # noqa: BLE001 - one user's failure never stops the others
            _logger.exception("Exchange sync of user %s failed", locked.user_id.login)
            self.env["exchange.sync.run"]._start(locked.user_id, "connection", trigger)._finish(error)
            locked.write({"sync_requested": False})
            locked._exchange_schedule_next([error])
        return True

    def _exchange_enabled_kinds(self):
        user = self.user_id
        return [kind for kind, enabled in (
            ("mails", user.exchange_sync_mails),
            ("events", user.exchange_sync_events),
            ("contacts", user.exchange_sync_contacts),
        ) if enabled]

    def _exchange_sync(self, budget=None):
        """Sync the enabled kinds of this (locked) mailbox; never raises, the runs tell what happened."""
        self.ensure_one()
        trigger = "manual" if self.sync_requested else "cron"
        self.write({"last_sync_started": fields.Datetime.now(), "sync_requested": False})
        runs = self.env["exchange.sync.run"]
        user = self.user_id
        current = runs
        errors = []
        try:
            with user._exchange_backend(budget=budget) as backend:
                for kind in self._exchange_enabled_kinds():
                    current = runs._start(user, kind, trigger)
                    error = self._exchange_sync_kind(kind, backend, current)
                    current._finish(error)
                    if error is not None:
                        errors.append(error)
                    if isinstance(error, (AuthenticationError, ConnectionProblem, TimeBudgetExceeded)):
                        # The other kinds would meet the same wall; a sign-in failure must
                        # also leave the block so that the seam counts it.
                        raise error
                    current = runs
        except (ExchangeError, UserError) as error:
            if not current:
                # The seam refused or could not build the backend: no kind run got the error.
                runs._start(user, "connection", trigger)._finish(error)
                errors.append(error)
        self._exchange_schedule_next(errors)

    def _exchange_sync_kind(self, kind, backend, run):
        """Run ``_sync_<kind>``; return the error that stopped it, or None.

        Microsoft's refusals keep what the earlier pages saved; any other exception (a bug, a
        database error) rolls this kind's work of this run back to the savepoint, so the saved
        states stay those of the last complete page before it.
        """
        try:
            with self.env.cr.savepoint():
                try:
                    getattr(self, f"_sync_{kind}")(backend, run)
                except ExchangeError as error:
                    return error
        except Exception as error:  # noqa: BLE001 - one user's failure never stops the others
            _logger.exception("Exchange %s sync of user %s failed", kind, self.user_id.login)
            return error
        return None

    def _exchange_schedule_next(self, errors):
        now = fields.Datetime.now()
        values = {"last_sync_done": now}
        if any(isinstance(error, TimeBudgetExceeded) for error in errors):
            # Continue at the next run, after the mailboxes that waited longer.
            values["next_sync"] = now
        else:
            values["next_sync"] = now + timedelta(minutes=max(self.user_id.exchange_sync_interval, 1))
        failures = [error for error in errors if not isinstance(error, TimeBudgetExceeded)]
        if failures:
            values.update(last_error=self._exchange_error_text(failures[-1]),
                          last_error_code=getattr(failures[-1], "code", None) or False)
        self.write(values)

    # -- the work per kind ----------------------------------------------------

    def _sync_mails(self, backend, run):
        """Walk the incoming and outgoing transfer folders ("Inbox/<folder>") incrementally.

        The folders are created when missing, so that users find them in Outlook. Each page
        goes to :meth:`_import_message_page`, then its state is saved: an interrupted run
        resumes after the last saved page. A folder that changed (renamed setting, recreated
        folder) starts over from the beginning.
        """
        self.ensure_one()
        user = self.user_id
        for folder_kind, folder_name in (("in", user.exchange_transfer_folder_in),
                                         ("out", user.exchange_transfer_folder_out)):
            if not folder_name:
                continue
            folder = backend.ensure_folder(f"Inbox/{folder_name}")
            id_field, state_field = f"mails_{folder_kind}_folder_id", f"mails_{folder_kind}_state"
            if self[id_field] != folder.id:
                self.write({id_field: folder.id, state_field: False})
            for page in backend.sync_messages(folder, self[state_field] or None):
                self._import_message_page(folder_kind, page, run)
                self.write({state_field: page.state})

    def _import_message_page(self, folder_kind, page, run):
        """Import one page of a transfer folder's messages (``folder_kind`` "in" or "out").

        The mail import feature overrides this hook: it receives the :class:`SyncPage` (new
        and changed :class:`RemoteMessage` items, removed ids) and counts on ``run``. The
        connector itself imports nothing yet, so the items are counted as skipped.
        """
        run._count(skipped=len(page.items))

    def _exchange_event_window(self):
        """The calendar window of this sync: whole UTC days, so that it moves once a day, not every run."""
        today = datetime.now(timezone.utc).replace(hour=0, minute=0, second=0, microsecond=0)
        user = self.user_id
        return (today - timedelta(days=user.exchange_event_days_back),
                today + timedelta(days=user.exchange_event_days_ahead + 1))

    def _sync_events(self, backend, run):
        """List the calendar in the user's window incrementally; a new window starts over."""
        self.ensure_one()
        start, end = self._exchange_event_window()
        naive_start, naive_end = start.replace(tzinfo=None), end.replace(tzinfo=None)
        if (self.events_window_start, self.events_window_end) != (naive_start, naive_end):
            self.write({
                "events_window_start": naive_start, "events_window_end": naive_end, "events_state": False,
            })
        for page in backend.sync_events(start, end, self.events_state or None):
            self._import_event_page(page, run)
            self.write({"events_state": page.state})

    def _import_event_page(self, page, run):
        """Import one page of calendar entries (:class:`RemoteEvent` items, removed ids).

        The event import feature overrides this hook; the connector itself imports nothing
        yet, so the items are counted as skipped.
        """
        run._count(skipped=len(page.items))

    def _sync_contacts(self, backend, run):
        """Make sure the connector's Outlook contact folder exists, then push the contact changes."""
        self.ensure_one()
        folder = backend.ensure_contact_folder(CONTACT_FOLDER_NAME)
        if self.contact_folder_id != folder.id:
            self.contact_folder_id = folder.id
        self._push_contacts(backend, folder, run)

    def _push_contacts(self, backend, folder, run):
        """Push the user's subscribed partners to ``folder`` with ``backend.push_contacts``.

        The contact feature overrides this hook; the connector itself has no subscriptions
        yet, so there is nothing to push.
        """
        return None

