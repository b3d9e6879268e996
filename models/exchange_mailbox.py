import contextlib
import logging
import uuid
from datetime import datetime, timedelta, timezone

import psycopg2.errors
from markupsafe import Markup

from odoo import api, fields, models
from odoo.exceptions import UserError

from ..services import AuthenticationError, ConnectionProblem, ExchangeError, RunBudget, TimeBudgetExceeded
from ..services.auth import TokenStore
from .res_config_settings import DEFAULT_MIN_SYNC_INTERVAL

_logger = logging.getLogger(__name__)

DEFAULT_MAX_AUTH_FAILURES = 3
#: Seconds one call of the scheduled job may spend syncing (``exchange_connector.cron_time_budget``),
#: well below Odoo's default ``limit_time_real`` (120 s) so that a request's timeout still fits.
DEFAULT_CRON_TIME_BUDGET = 60
#: A mailbox is not started with less time left: it would only get as far as its first request.
MIN_SECONDS_PER_MAILBOX = 5
#: Seconds a lease outlives the budget: the last request's timeout and the closing bookkeeping fit
#: in it, so that it expires only when its worker is gone (killed at limit_time_real at the latest).
LEASE_MARGIN = 120
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


#: pg_advisory_lock(namespace, user id) serializes the token refreshes of one user's mailbox.
TOKEN_REFRESH_LOCK = 0x45584354


class StoredTokenCache(TokenStore):
    """The Office 365 token cache of one user (``res_users.exchange_token_cache``), shared by all workers.

    Each refresh holds a session advisory lock in a cursor of its own; the newest stored cache
    is read, and a rotated one written and committed, in short transactions of that cursor, so
    that neither a rollback nor a crash of the caller's transaction loses a redeemed refresh
    token. A user whose row the caller's transaction has not committed yet (a test) is not
    seen there: the seam then saves the cache in the caller's transaction, as before.
    """

    def __init__(self, registry, user_id):
        self.registry = registry
        self.user_id = user_id
        self._cr = None

    @contextlib.contextmanager
    def refreshing(self):
        with self.registry.cursor() as cr:
            locked = False
            try:
                cr.execute("SET LOCAL lock_timeout = '20s'")  # another worker's refresh: one request
                cr.execute("SELECT pg_advisory_lock(%s, %s)", (TOKEN_REFRESH_LOCK, self.user_id))
                locked = True
            except psycopg2.errors.LockNotAvailable:
                _logger.warning("Token refresh of user %s did not wait longer for another worker's",
                                self.user_id)
                cr.rollback()
            # The reads start after the lock: they see what its last holder stored. Commits of this
            # cursor of its own, never of the caller's transaction.
            cr.commit()  # pylint: disable=invalid-commit
            self._cr = cr
            try:
                yield self.newest()
            finally:
                self._cr = None
                cr.rollback()
                if locked:
                    cr.execute("SELECT pg_advisory_unlock(%s, %s)", (TOKEN_REFRESH_LOCK, self.user_id))
                    cr.commit()  # pylint: disable=invalid-commit

    def newest(self):
        self._cr.execute("SELECT exchange_token_cache FROM res_users WHERE id = %s", (self.user_id,))
        row = self._cr.fetchone()
        self._cr.commit()  # pylint: disable=invalid-commit
        return row[0] if row else None

    def save(self, cache_blob, replaces):
        cr = self._cr
        try:
            cr.execute("SET LOCAL lock_timeout = '20s'")  # a user's own write of the row
            # Not over a Disconnect or a new sign-in that happened meanwhile.
            cr.execute(
                "UPDATE res_users SET exchange_token_cache = %s WHERE id = %s "
                "AND exchange_token_cache IS NOT DISTINCT FROM %s",
                (cache_blob, self.user_id, replaces))
            saved = cr.rowcount == 1
            cr.commit()  # pylint: disable=invalid-commit
        except psycopg2.errors.LockNotAvailable:
            cr.rollback()
            saved = False
        if saved:
            _logger.debug("Rotated Office 365 token cache of user %s saved", self.user_id)
        return saved


class MailboxReleased(Exception):
    """The mailbox changed under a running sync: its user disconnected it or wrote it while a page
    was being saved, or its lease expired and another worker took it. The sync stops there (that
    page is rolled back) and resumes from the last committed page at the next run."""


#: What stops a sync without anything being wrong: it continues from the saved states at once.
INTERRUPTIONS = (TimeBudgetExceeded, MailboxReleased)


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
    # Set while a worker syncs the mailbox (see _exchange_take_lease); past, the worker died.
    sync_lease_until = fields.Datetime(copy=False, readonly=True)
    sync_lease_token = fields.Char(copy=False, readonly=True, groups="base.group_system")
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
        if self.state == "not_connected" and self.user_id._exchange_has_credentials():
            # The credentials work (e.g. an on-premises mailbox passed Test connection): sync it.
            # Not after a Disconnect that happened during this use.
            values.update(state="connected", connected_email=self.user_id.exchange_email,
                          next_sync=fields.Datetime.now())
        if values:
            self.write(values)

    def _exchange_error_text(self, error):
        """What the user reads about ``error``: the sentence res.users gives for Microsoft's errors."""
        if isinstance(error, ExchangeError):
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
            # A live lease means a worker is syncing it; an expired one, a worker that died.
            "|", ("sync_lease_until", "=", False), ("sync_lease_until", "<", now),
            "|", "|", ("sync_requested", "=", True), ("next_sync", "=", False), ("next_sync", "<=", now),
        ]

    @api.model
    def _exchange_run_budget(self, cron_time_left):
        """The deadline of one call of the scheduled job: the configured budget, cut to what the cron allows.

        ``cron_time_left`` is what ``ir.cron._commit_progress`` returned (infinite outside a
        cron run). Odoo calls the job again while it reports remaining work, each call
        getting what is left of the cron run, so one deadline per call keeps the whole job
        inside the run and far from the worker's ``limit_time_real``.
        """
        configured = self.env["res.users"]._exchange_param_int("cron_time_budget", DEFAULT_CRON_TIME_BUDGET)
        return RunBudget(max(0, min(cron_time_left, configured)))

    @api.model
    def _cron_sync(self, budget=None):
        """Scheduled job: sync every connected mailbox whose interval elapsed or whose user asked for it.

        One mailbox at a time. A mailbox is taken with a lease committed in a short
        transaction (:meth:`_exchange_take_lease`), then synced page by page, each page's
        imports committed together with its sync state, so that a killed worker loses at
        most one page and no row stays locked while Microsoft is being asked. A mailbox is
        started only while ``MIN_SECONDS_PER_MAILBOX`` of ``budget`` remain (a
        :class:`RunBudget`; by default :meth:`_exchange_run_budget`); the others stay due,
        the job reports them as remaining and Odoo runs it again soon.
        """
        due = self.sudo().search(self._due_domain(), order="sync_requested desc, next_sync asc, id")
        cron = self.env["ir.cron"]
        time_left = cron._commit_progress(remaining=len(due))
        if budget is None:
            budget = self._exchange_run_budget(time_left)
        for mailbox in due:
            remaining = budget.remaining()
            if remaining is not None and remaining < MIN_SECONDS_PER_MAILBOX:
                break
            lease = mailbox._exchange_take_lease(budget)
            if lease:
                leased = mailbox.with_context(exchange_sync_lease=lease["token"])
                leased._exchange_sync(budget, lease["trigger"])
            cron._commit_progress(1)

    def _exchange_take_lease(self, budget):
        """Lease this mailbox for a sync if it is still due, in a transaction of its own.

        Returns ``{"token", "trigger"}``, or None when another worker holds or just synced
        it. The row lock lasts only this short transaction; the lease (``sync_lease_until``,
        ``sync_lease_token``) then keeps other workers away until the sync ends or the lease
        expires, ``LEASE_MARGIN`` after the budget (a worker that died meanwhile). A "Sync
        now" clicked after this point sets ``sync_requested`` again: the mailbox is due once
        more at the end of this sync. Must start a fresh transaction (right after a commit)
        so that the due check sees what other workers committed.
        """
        self.ensure_one()
        try:
            with self.env.cr.savepoint(flush=False):
                locked = self.try_lock_for_update(allow_referencing=True)
        except psycopg2.errors.SerializationFailure:
            # Another worker committed a lease or a sync of this row after our snapshot began.
            _logger.info("Exchange mailbox %s was just taken by another worker", self.id)
            return None
        locked.invalidate_recordset()
        if not locked.filtered_domain(self._due_domain()):
            _logger.debug("Exchange mailbox %s busy or no longer due: skipped", self.id)
            return None
        now = fields.Datetime.now()
        remaining = budget.remaining()
        seconds = (DEFAULT_CRON_TIME_BUDGET if remaining is None else remaining) + LEASE_MARGIN
        lease = {"token": uuid.uuid4().hex, "trigger": "manual" if locked.sync_requested else "cron"}
        expired_lease = locked.sync_lease_until
        locked.write({
            "sync_lease_until": now + timedelta(seconds=seconds), "sync_lease_token": lease["token"],
            "sync_requested": False, "last_sync_started": now,
        })
        # Nobody else syncs this mailbox now: a run still "Started" is a dead worker's.
        self.env["exchange.sync.run"]._close_interrupted(locked.user_id, expired_lease or now)
        self._exchange_commit()
        return lease

    def _exchange_commit(self):
        """Commit the work done so far: the cron's progress API, a plain commit outside a cron run."""
        return self.env["ir.cron"]._commit_progress()

    def _exchange_check_lease(self):
        """Raise :class:`MailboxReleased` unless this sync still holds the lease of a connected mailbox.

        Reads the row afresh: the user may have disconnected, or the lease may have expired
        and been taken by another worker, since the last commit.
        """
        self.ensure_one()
        token = self.env.context.get("exchange_sync_lease")
        if not token:
            return  # a sync outside the scheduler (tests, shell): nobody to share the mailbox with
        self.invalidate_recordset(["state", "sync_lease_token"])
        if self.state != "connected" or self.sync_lease_token != token:
            raise MailboxReleased(f"Exchange mailbox {self.id} was disconnected or taken over meanwhile")

    @contextlib.contextmanager
    def _exchange_page(self):
        """One page of a sync: its imports and its saved state are kept or lost together, then committed.

        An exception rolls the page back to the savepoint and propagates; the pages
        committed before it stay. The mailbox row is locked only while a page is saved, so its
        user's writes never wait for a sync; one that lands while a page is being saved wins,
        and the sync stops (:class:`MailboxReleased`) rather than overwrite it.
        """
        # A fresh snapshot: the one the last reads opened may have spanned a request to Microsoft.
        self._exchange_commit()
        self._exchange_check_lease()
        try:
            with self.env.cr.savepoint():
                yield
        except psycopg2.errors.SerializationFailure as error:
            raise MailboxReleased(f"Exchange mailbox {self.id} was changed during its sync") from error
        self._exchange_commit()

    def _exchange_enabled_kinds(self):
        user = self.user_id
        return [kind for kind, enabled in (
            ("mails", user.exchange_sync_mails),
            ("events", user.exchange_sync_events),
            ("contacts", user.exchange_sync_contacts),
        ) if enabled]

    def _exchange_sync(self, budget=None, trigger="cron"):
        """Sync the enabled kinds of this (leased) mailbox; never raises for one mailbox's failure.

        The runs tell what happened; the lease is released and the next sync scheduled at
        the end, in a short transaction of their own.
        """
        self.ensure_one()
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
                    # Whatever the seam records next (a failed sign-in, the rotated token cache)
                    # goes in a fresh transaction, which no user write made meanwhile conflicts with.
                    self._exchange_commit()
                    if error is not None:
                        errors.append(error)
                    if isinstance(error, (AuthenticationError, ConnectionProblem, TimeBudgetExceeded,
                                          MailboxReleased)):
                        # The other kinds would meet the same wall; a sign-in failure must
                        # also leave the block so that the seam counts it.
                        raise error
                    current = runs
        except MailboxReleased:
            _logger.info("Exchange sync of user %s stopped: the mailbox changed meanwhile", user.login)
        except (ExchangeError, UserError) as error:
            if not current:
                # The seam refused or could not build the backend: no kind run got the error.
                runs._start(user, "connection", trigger)._finish(error)
                errors.append(error)
        except Exception as error:  # noqa: BLE001 - one user's failure never stops the others
            _logger.exception("Exchange sync of user %s failed", user.login)
            runs._start(user, "connection", trigger)._finish(error)
            errors.append(error)
        self._exchange_schedule_next(errors)

    def _exchange_sync_kind(self, kind, backend, run):
        """Run ``_sync_<kind>``; return the error that stopped it, or None.

        The pages committed before the error stay: Microsoft's refusals and any other
        exception (a bug, a database error) lose only the page they interrupted, so the saved
        states stay those of the last complete page.
        """
        try:
            getattr(self, f"_sync_{kind}")(backend, run)
        except (ExchangeError, MailboxReleased) as error:
            return error
        except Exception as error:  # noqa: BLE001 - one user's failure never stops the others
            _logger.exception("Exchange %s sync of user %s failed", kind, self.user_id.login)
            return error
        return None

    def _exchange_sync_interval(self):
        """Minutes between two syncs: the user's interval, never below the administrator's minimum."""
        minimum = self.env["res.users"]._exchange_param_int("min_sync_interval", DEFAULT_MIN_SYNC_INTERVAL)
        return max(self.user_id.exchange_sync_interval, minimum, 1)

    def _exchange_schedule_next(self, errors):
        """Release the lease and set the next sync, in a fresh transaction, then commit."""
        # A fresh snapshot: what the user changed during the sync (Disconnect, Sync now) is seen
        # and kept, and the write cannot conflict with it.
        self._exchange_commit()
        self.invalidate_recordset()
        token = self.env.context.get("exchange_sync_lease")
        if token and self.sync_lease_token != token:
            return  # the lease expired and another worker owns the mailbox now
        now = fields.Datetime.now()
        values = {"last_sync_done": now, "sync_lease_until": False, "sync_lease_token": False}
        if self.state == "connected":  # not when disconnected or locked out meanwhile
            if any(isinstance(error, INTERRUPTIONS) for error in errors):
                # Continue at the next run, after the mailboxes that waited longer.
                values["next_sync"] = now
            else:
                values["next_sync"] = now + timedelta(minutes=self._exchange_sync_interval())
        failures = [error for error in errors if not isinstance(error, INTERRUPTIONS)]
        if failures:
            values.update(last_error=self._exchange_error_text(failures[-1]),
                          last_error_code=getattr(failures[-1], "code", None) or False)
        self.write(values)
        if self.sync_requested:
            # "Sync now" was clicked during this sync, while the mailbox was not due for the job.
            self.env.ref("exchange_connector.ir_cron_exchange_sync")._trigger()
        self._exchange_commit()

    # -- the work per kind ----------------------------------------------------

    def _sync_mails(self, backend, run):
        """Walk the incoming and outgoing transfer folders ("Inbox/<folder>") incrementally.

        The folders are created when missing, so that users find them in Outlook. Each page
        goes to :meth:`_import_message_page`, then its state is saved and both are committed
        (:meth:`_exchange_page`): an interrupted run resumes after the last committed page. A
        folder that changed (renamed setting, recreated folder) starts over from the beginning.
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
                with self._exchange_page():
                    self.write({id_field: folder.id, state_field: False})
            for page in backend.sync_messages(folder, self[state_field] or None):
                with self._exchange_page():
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
            with self._exchange_page():
                self.write({
                    "events_window_start": naive_start, "events_window_end": naive_end, "events_state": False,
                })
        for page in backend.sync_events(start, end, self.events_state or None):
            with self._exchange_page():
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
            with self._exchange_page():
                self.contact_folder_id = folder.id
        # Not a page: the push talks to Microsoft, and the mailbox row stays free meanwhile.
        with self.env.cr.savepoint():
            self._push_contacts(backend, folder, run)
        self._exchange_commit()

    def _push_contacts(self, backend, folder, run):
        """Push the user's subscribed partners to ``folder`` with ``backend.push_contacts``.

        The contact feature overrides this hook; the connector itself has no subscriptions
        yet, so there is nothing to push. It runs in one savepoint, committed after it: a crash
        rolls back the bindings it wrote, and the push is redone next time.
        """
        return None

