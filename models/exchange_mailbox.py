import collections
import contextlib
import logging
import math
import threading
import uuid
from datetime import datetime, timedelta, timezone

import psycopg2.errors

from odoo import SUPERUSER_ID, api, fields, models
from odoo.exceptions import UserError
from odoo.orm.environments import Transaction

from ..services import (
    AuthenticationError,
    ConnectionProblem,
    ExchangeError,
    FolderNotFound,
    RemoteFolder,
    RunBudget,
    TimeBudgetExceeded,
)
from ..services.auth import TokenStore
from .res_config_settings import DEFAULT_MIN_SYNC_INTERVAL, DEFAULT_SYNC_CONCURRENCY

_logger = logging.getLogger(__name__)

DEFAULT_MAX_AUTH_FAILURES = 3
#: Seconds one call of the scheduled job may spend syncing (``exchange_connector.cron_time_budget``),
#: well below Odoo's default ``limit_time_real`` (120 s) so that a request's timeout still fits.
DEFAULT_CRON_TIME_BUDGET = 60
#: A mailbox is not started with less time left: it would only get as far as its first request.
#: A mailbox without news takes three round trips (well under a second with 200 ms latency).
MIN_SECONDS_PER_MAILBOX = 2
#: Seconds a lease outlives the run's budget: the last request's timeout and the closing bookkeeping
#: fit in it, so that it expires only when its worker is gone (killed at limit_time_real at the latest).
LEASE_MARGIN = 120
#: First key of the PostgreSQL advisory locks that keep two workers from syncing one mailbox.
SYNC_LOCK_NAMESPACE = 0x45584348  # "EXCH"
#: Sync states only make sense for the mailbox they were obtained from.
SYNC_STATE_FIELDS = (
    "mails_in_folder_id", "mails_in_state", "mails_out_folder_id", "mails_out_state",
    "events_state", "events_window_start", "events_window_end", "contact_folder_id",
    "mails_in_folder_path", "mails_out_folder_path",
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


class MailboxWrittenMeanwhile(MailboxReleased):
    """A user's write of the mailbox row (e.g. "Sync now") landed while a page was being imported:
    saving the page's state would have overwritten it (PostgreSQL refused: serialization failure).
    A listing's page is then redone once in a fresh transaction (``_exchange_save_page``)."""


#: What stops a sync without anything being wrong: it continues from the saved states at once.
INTERRUPTIONS = (TimeBudgetExceeded, MailboxReleased)


def retry_after_of(errors):
    """The seconds Microsoft asked to wait before this mailbox's next request (the longest of the
    throttling hints among ``errors``), or None. The scheduled job and the queue_job mode both obey it."""
    return max((error.retry_after for error in errors if getattr(error, "retry_after", None)), default=None)


class PendingRun:
    """The sync run of one kind of one mailbox, created only once there is something to tell.

    A run that finds nothing new leaves no ``exchange.sync.run`` row (the mailbox's "last
    checked" says it happened), unless a user asked for the sync. :meth:`started` creates
    the record, before the page that needs it; the hooks receive that record. Code written for
    a record (``run._count(...)``) starts it as well.
    """

    def __init__(self, runs, user, kind, trigger):
        self._runs = runs
        self.user, self.kind, self.trigger = user, kind, trigger
        self.record = runs

    def started(self):
        """The run record, created on first use."""
        if not self.record:
            self.record = self._runs._start(self.user, self.kind, self.trigger)
        return self.record

    def finish(self, error=None):
        """Close the run; a run without record nor error stays unwritten."""
        if error is not None or self.record:
            self.started()._finish(error)

    def __getattr__(self, name):
        return getattr(self.started(), name)


class ExchangeMailbox(models.Model):
    """A user's Exchange / Office 365 mailbox as the connector sees it: connection state and sync states.

    Created on demand (``res.users._exchange_mailbox()``), one per user. The scheduled job
    ``_cron_sync`` syncs every connected mailbox that is due; the per-kind work is in
    ``_sync_mails``, ``_sync_events`` and ``_sync_contacts``, which reach Microsoft only through
    the backend handed to them by ``_exchange_backend()``, the seam of the connection
    (``exchange_mailbox_connection.py``: sign-in, backend, lockout).
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
    connected_email = fields.Char("Mailbox address", copy=False)
    sync_requested = fields.Boolean(
        copy=False, help="The user asked for a sync: the next scheduled run does it whatever the interval.")
    sync_requested_kinds = fields.Char(
        copy=False, help="The kinds asked for (comma-separated, e.g. \"mails\"); empty: every enabled kind.")
    last_sync_started = fields.Datetime(copy=False)
    last_sync_done = fields.Datetime(
        "Last checked", copy=False,
        help="When the connector last asked Microsoft for changes. A sync that found none leaves no "
             "sync log entry.")
    next_sync = fields.Datetime(copy=False, index=True)
    # Set while a worker syncs the mailbox (see _exchange_take_lease); past, the worker died.
    sync_lease_until = fields.Datetime(copy=False, readonly=True)
    sync_lease_token = fields.Char(copy=False, readonly=True, groups="base.group_system")
    # Opaque resume points handed back by the backends (delta links / EWS SyncStates).
    mails_in_folder_id = fields.Char(copy=False, groups="base.group_system")
    mails_in_state = fields.Text(copy=False, groups="base.group_system")
    mails_out_folder_id = fields.Char(copy=False, groups="base.group_system")
    mails_out_state = fields.Text(copy=False, groups="base.group_system")
    # The path each remembered folder id was found at: another path (a renamed setting) is looked up.
    mails_in_folder_path = fields.Char(copy=False, groups="base.group_system")
    mails_out_folder_path = fields.Char(copy=False, groups="base.group_system")
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
        if self.state == "not_connected" and self._exchange_has_credentials():
            # The credentials work (e.g. an on-premises mailbox passed Test connection): sync it.
            # Not after a Disconnect that happened during this use.
            values.update(state="connected", connected_email=self.user_id.exchange_email,
                          next_sync=fields.Datetime.now())
        if values:
            self.write(values)

    def _exchange_error_text(self, error):
        """What the user reads about ``error``: the sentence :meth:`_exchange_describe_error` gives for
        Microsoft's errors."""
        if isinstance(error, ExchangeError):
            return self._exchange_describe_error(error)
        return str(error.args[0]) if isinstance(error, UserError) else str(error)

    def _exchange_record_error(self, error):
        self.ensure_one()
        self.write({"last_error": self._exchange_error_text(error),
                    "last_error_kind": self._exchange_error_kind(error),
                    "last_error_code": getattr(error, "code", None) or False})

    def _exchange_record_auth_failure(self, error):
        """Count a refused sign-in; at the limit, stop using the credentials and tell the user
        (``_exchange_notify_user``, in exchange_mailbox_status.py with the other texts for users)."""
        self.ensure_one()
        failures = self.auth_failures + 1
        limit = self.env["res.users"]._exchange_param_int("max_auth_failures", DEFAULT_MAX_AUTH_FAILURES)
        values = {
            "auth_failures": failures,
            "last_error": self._exchange_error_text(error),
            "last_error_kind": self._exchange_error_kind(error),
            "last_error_code": error.code or error.kind,
        }
        lock_out = failures >= limit and self.state != "auth_failed"
        if lock_out:
            values["state"] = "auth_failed"
        self.write(values)
        # The notice is written in its reader's language, whoever's run met the error.
        notice = self.with_context(lang=self.user_id.lang or self.env.lang)
        if lock_out:
            _logger.warning("Exchange mailbox of user %s locked after %d sign-in failures (%s)",
                            self.user_id.login, failures, error.code or error.kind)
            notice._exchange_notify_user(error, notice.env._(
                "The synchronisation of your mailbox is paused after %(count)s failed sign-ins.",
                count=failures))
        elif failures == 1 and error.kind == "invalid_grant":
            # Microsoft has said the refresh token is expired or revoked: no retry can succeed, so
            # the user hears it now rather than only once the lockout stops the synchronisation.
            notice._exchange_notify_user(error, notice.env._(
                "Microsoft no longer accepts the sign-in of your mailbox; the synchronisation stops "
                "after %(count)s failed attempts unless you reconnect.", count=limit))

    def action_reset_lockout(self):
        """Administrator button: let the connector try the stored credentials again."""
        self._exchange_reset_lockout()

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
    def _exchange_run_budget(self, cron_time_left=math.inf):
        """The deadline of one call of the scheduled job (or of one queue_job job): the configured
        budget, cut to what the cron allows. The one reading of ``exchange_connector.cron_time_budget``:
        the leases of the run end with its deadline (see :meth:`_exchange_take_lease`).

        ``cron_time_left`` is what ``ir.cron._commit_progress`` returned (infinite outside a
        cron run). Odoo calls the job again while it reports remaining work, each call
        getting what is left of the cron run, so one deadline per call keeps the whole job
        inside the run and far from the worker's ``limit_time_real``.
        """
        configured = self.env["res.users"]._exchange_param_int("cron_time_budget", DEFAULT_CRON_TIME_BUDGET)
        return RunBudget(max(0, min(cron_time_left, configured)))

    @api.model
    def _exchange_sync_concurrency(self):
        """Mailboxes synced at once by one call of the job (``exchange_connector.sync_concurrency``, 4)."""
        return max(1, self.env["res.users"]._exchange_param_int("sync_concurrency", DEFAULT_SYNC_CONCURRENCY))

    @api.model
    def _cron_sync(self, budget=None):
        """Scheduled job: sync every connected mailbox whose interval elapsed or whose user asked for it.

        Up to :meth:`_exchange_sync_concurrency` mailboxes at once, each in a thread with a
        cursor and a backend of its own (one at a time in this cursor when set to 1). A mailbox
        is taken with :meth:`_exchange_take_lease`, then synced page by page, each page's
        imports committed together with its sync state, so that a killed worker loses at most
        one page and no row stays locked while Microsoft is being asked. A mailbox is started
        only while ``MIN_SECONDS_PER_MAILBOX`` of ``budget`` remain (a :class:`RunBudget`; by
        default :meth:`_exchange_run_budget`); the others stay due, the job reports them as
        remaining and triggers itself again at once.
        """
        due_ids = self.sudo().search(self._due_domain(), order="sync_requested desc, next_sync asc, id").ids
        concurrency = min(self._exchange_sync_concurrency(), len(due_ids))
        cron = self.env["ir.cron"]
        # Committed: the next statement sees the other workers' commits, and this cursor holds no
        # snapshot while the threads work (the parameters read below come from the registry's cache).
        time_left = cron._commit_progress(remaining=len(due_ids))
        if budget is None:
            budget = self._exchange_run_budget(time_left)
        if concurrency > 1:
            synced = self._exchange_sync_in_threads(due_ids, budget, concurrency)
        else:
            synced = self.with_context(ir_cron_progress_id=False)._exchange_sync_queue(
                collections.deque(due_ids), budget)
        remaining = self.sudo().search_count(self._due_domain())
        if remaining and synced:
            # Odoo would wait for its next poll: a trigger due now wakes the cron workers at once.
            self.env.ref("exchange_connector.ir_cron_exchange_sync")._trigger()
        cron._commit_progress(synced, remaining=remaining)

    @api.model
    def _exchange_sync_queue(self, queue, budget, lock=None):
        """Take mailbox ids from ``queue`` and sync them in this cursor until it is empty or time is short.

        Each mailbox is browsed on its own, so that what is read after a commit is that row
        only, not every due mailbox (the prefetch set). Returns the number synced.
        """
        synced = 0
        lock = lock or contextlib.nullcontext()
        while True:
            remaining = budget.remaining()
            if remaining is not None and remaining < MIN_SECONDS_PER_MAILBOX:
                return synced
            with lock:
                if not queue:
                    return synced
                mailbox_id = queue.popleft()
            mailbox = self.browse(mailbox_id)
            lease = mailbox._exchange_take_lease(budget)
            if not lease:
                continue
            try:
                mailbox._exchange_leased(lease)._exchange_sync(budget, lease["trigger"])
                synced += 1
            finally:
                mailbox._exchange_release_lock()
            self.env.invalidate_all()

    @api.model
    def _exchange_sync_in_threads(self, due_ids, budget, concurrency):
        """Sync ``due_ids`` with ``concurrency`` threads, each with a cursor of its own; returns how many.

        The threads share the queue of ids and the budget; the leases keep one mailbox in one
        thread, and each backend keeps to Microsoft's limit of concurrent requests per mailbox.
        """
        queue, lock, synced = collections.deque(due_ids), threading.Lock(), []
        registry, dbname = self.env.registry, self.env.cr.dbname
        parent = threading.current_thread().name

        def work():
            threading.current_thread().dbname = dbname  # the log lines name the database
            try:
                with registry.cursor() as cr:
                    # Environment() would look the registry up by name, under the registry lock.
                    cr.transaction = Transaction(registry)
                    mailboxes = api.Environment(cr, SUPERUSER_ID, {})["exchange.mailbox"]
                    count = mailboxes._exchange_sync_queue(queue, budget, lock)
                with lock:
                    synced.append(count)
            except Exception:  # noqa: BLE001 - the other threads go on; the mailbox stays due
                _logger.exception("Exchange sync thread failed")

        threads = [threading.Thread(target=work, name=f"{parent}/exchange-{number}", daemon=True)
                   for number in range(concurrency)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        return sum(synced)

    def _exchange_lock_args(self):
        return (SYNC_LOCK_NAMESPACE, self.id)

    def _exchange_try_lock(self):
        """Take the mailbox's advisory lock for this database session; False when another worker has it.

        The lock keeps other workers (of every Odoo server on the database) away from the
        mailbox without writing anything, and it dies with its connection: a killed worker's
        mailbox is free at once unless its written lease still holds.
        """
        self.env.cr.execute("SELECT pg_try_advisory_lock(%s, %s)", self._exchange_lock_args())
        return self.env.cr.fetchone()[0]

    def _exchange_release_lock(self):
        """Release the advisory lock of :meth:`_exchange_try_lock`, then commit (a fresh snapshot follows)."""
        self.env.cr.execute("SELECT pg_advisory_unlock(%s, %s)", self._exchange_lock_args())
        self._exchange_commit()

    def _exchange_take_lease(self, budget):
        """Take this mailbox for a sync if it is still due; None when another worker holds or just synced it.

        Returns ``{"token", "trigger", "kinds", "until"}`` (see :meth:`_exchange_leased`); the lease
        lasts until ``budget``'s deadline plus ``LEASE_MARGIN``. The mailbox's advisory lock is held
        from here until :meth:`_exchange_release_lock`; the lease itself (``sync_lease_until``,
        ``sync_lease_token``) is written by the first page that changes something
        (:meth:`_exchange_check_lease`), so that a sync that finds nothing costs one UPDATE of
        the row, at its end. A "Sync now" is taken at once: the request is cleared with the
        lease written, and one clicked during the sync sets it again. Must start a fresh
        transaction (right after a commit), so that the due check sees what other workers
        committed before they released the lock.
        """
        self.ensure_one()
        if not self._exchange_try_lock():
            _logger.debug("Exchange mailbox %s is being synced by another worker: skipped", self.id)
            return None
        try:
            self.invalidate_recordset()
            if not self.filtered_domain(self._due_domain()):
                _logger.debug("Exchange mailbox %s busy or no longer due: skipped", self.id)
                self._exchange_release_lock()
                return None
            if self.sync_lease_token:
                # A lease left behind while the lock is free: its worker died, and its runs still
                # "Started" are ghosts, closed now with the time its lease expired.
                self.env["exchange.sync.run"]._close_interrupted(
                    self.user_id, self.sync_lease_until or fields.Datetime.now())
            seconds = budget.remaining()
            if seconds is None:  # an unlimited budget (a shell): the configured one bounds the lease
                seconds = self._exchange_run_budget().remaining()
            lease = {"token": uuid.uuid4().hex, "trigger": "manual" if self.sync_requested else "cron",
                     "kinds": self._exchange_requested_kinds(),
                     "until": fields.Datetime.now() + timedelta(seconds=seconds + LEASE_MARGIN)}
            if self.sync_requested:
                self._exchange_write_lease(lease["token"], lease["until"],
                                           sync_requested=False, sync_requested_kinds=False)
            return lease
        except BaseException:
            self._exchange_release_lock()
            raise

    def _exchange_leased(self, lease):
        """This mailbox as the sync holding ``lease`` (of :meth:`_exchange_take_lease`) sees it."""
        return self.with_context(exchange_sync_lease=lease["token"], exchange_sync_lease_until=lease["until"],
                                 exchange_sync_kinds=lease.get("kinds"))

    def _exchange_commit(self):
        """Commit the work done so far: the cron's progress API, a plain commit outside a cron run."""
        return self.env["ir.cron"]._commit_progress()

    def _exchange_check_lease(self):
        """Raise :class:`MailboxReleased` unless this sync may write: the mailbox is still connected
        and the lease is this sync's, written now if it is not yet.

        Reads the row afresh, in a fresh transaction: the user may have disconnected since the last
        commit, and the lease written next must not meet a "Sync now" committed after a snapshot
        that spanned requests to Microsoft (PostgreSQL would refuse the write). The lease is
        written on the first page that changes something and committed at once, so that users
        and other workers see who syncs the mailbox; a lease of another token that is still
        live means another worker took the mailbox over (the advisory lock keeps workers of this
        version away, so only an expired lease of a dead worker is replaced).
        """
        self.ensure_one()
        token = self.env.context.get("exchange_sync_lease")
        if not token:
            return  # a sync outside the scheduler (tests, shell): nobody to share the mailbox with
        self._exchange_commit()  # the reads of the sync so far held an old snapshot: a fresh one
        self.invalidate_recordset(["state", "sync_lease_token", "sync_lease_until", "sync_requested"])
        if self.state != "connected":
            raise MailboxReleased(f"Exchange mailbox {self.id} was disconnected or taken over meanwhile")
        if self.sync_lease_token == token:
            return
        if self.sync_lease_token and self.sync_lease_until and self.sync_lease_until > fields.Datetime.now():
            raise MailboxReleased(f"Exchange mailbox {self.id} was taken over by another worker")
        self._exchange_write_lease(token, self.env.context["exchange_sync_lease_until"])

    def _exchange_write_lease(self, token, until, **values):
        """Write and commit this sync's lease (with ``values``, e.g. the cleared "Sync now")."""
        try:
            with self.env.cr.savepoint():
                self.write(dict(values, sync_lease_until=until, sync_lease_token=token,
                                last_sync_started=fields.Datetime.now()))
        except psycopg2.errors.SerializationFailure as error:
            raise MailboxReleased(f"Exchange mailbox {self.id} was changed during its sync") from error
        self._exchange_commit()

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
            raise MailboxWrittenMeanwhile(
                f"Exchange mailbox {self.id} was changed during its sync") from error
        self._exchange_commit()

    def _exchange_save_page(self, state_values, import_page, *args):
        """``import_page(*args)``, then ``state_values`` written on the mailbox, as one page
        (:meth:`_exchange_page`).

        A page whose state lost to a write of the user's (a "Sync now" clicked meanwhile) is redone
        once: the retry's lease check, in a fresh transaction, still stops the sync if the write was
        a Disconnect or another worker took the mailbox over. A page only reads from Microsoft, so
        doing it again asks the same again.
        """
        try:
            with self._exchange_page():
                import_page(*args)
                self.write(state_values)
        except MailboxWrittenMeanwhile:
            _logger.info("Exchange mailbox %s was written during a page of its sync: page redone", self.id)
            with self._exchange_page():
                import_page(*args)
                self.write(state_values)

    def _exchange_enabled_kinds(self):
        """The kinds this sync does: those the user enabled, only the ones asked for by a per-kind request."""
        user = self.user_id
        only = self.env.context.get("exchange_sync_kinds")
        return [kind for kind, enabled in (
            ("mails", user.exchange_sync_mails),
            ("events", user.exchange_sync_events),
            ("contacts", user.exchange_sync_contacts),
        ) if enabled and (not only or kind in only)]

    def _exchange_request_sync(self, kind=None):
        """Ask for a sync of this mailbox now, of one ``kind`` or (None) of every enabled kind.

        Only the request is written and the scheduled job triggered: the job does the work in
        the background. A running sync holds a lease, not the row: the request waits for nothing,
        and it makes the mailbox due again as soon as that sync ends. A request for one kind adds
        to one already pending; one for all replaces it.
        """
        for mailbox in self:
            if mailbox.state == "auth_failed":
                raise UserError(mailbox._exchange_lockout_sentence())
            if mailbox.state != "connected":
                if mailbox.user_id == self.env.user:
                    raise UserError(self.env._("Connect your mailbox first."))
                raise UserError(self.env._(
                    "Connect the mailbox of %(user)s first.", user=mailbox.user_id.name))
            if kind is None:
                mailbox.write({"sync_requested": True, "sync_requested_kinds": False})
            elif not mailbox.sync_requested:
                mailbox.write({"sync_requested": True, "sync_requested_kinds": kind})
            elif mailbox.sync_requested_kinds and kind not in mailbox.sync_requested_kinds.split(","):
                mailbox.sync_requested_kinds = f"{mailbox.sync_requested_kinds},{kind}"
            # else: already asked for (or "Sync all" is pending, which includes it)
        self.env.ref("exchange_connector.ir_cron_exchange_sync").sudo()._trigger()

    def _exchange_requested_kinds(self):
        """The kinds a per-kind request asked for (None: all of them, or no request)."""
        if not self.sync_requested or not self.sync_requested_kinds:
            return None
        return self.sync_requested_kinds.split(",")

    def _exchange_sync(self, budget=None, trigger="cron"):
        """Sync the enabled kinds of this (leased) mailbox; never raises for one mailbox's failure.

        Returns the errors that stopped kinds (also recorded on their runs).

        The runs tell what happened (a kind that found nothing leaves none, see
        :class:`PendingRun`); the lease is released and the next sync scheduled at the end, in
        a short transaction of their own.
        """
        self.ensure_one()
        if self.user_id.lang and self.env.lang != self.user_id.lang:
            # What the runs and the mailbox keep is read by their user: in the user's language,
            # whoever runs the sync (the scheduled job's environment has no language).
            return self.with_context(lang=self.user_id.lang)._exchange_sync(budget, trigger)
        runs = self.env["exchange.sync.run"]
        user = self.user_id
        current = None
        errors = []
        try:
            with self._exchange_backend(budget=budget) as backend:
                for kind in self._exchange_enabled_kinds():
                    current = PendingRun(runs, user, kind, trigger)
                    if trigger == "manual":
                        current.started()  # who clicked "Sync now" finds its outcome in the log
                    error = self._exchange_sync_kind(kind, backend, current)
                    current.finish(error)
                    if current.record:
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
                    current = None
                # The seam writes the outcome on the mailbox row as the block ends: in a fresh
                # transaction, which a "Sync now" clicked during the last requests cannot conflict with.
                self._exchange_commit()
        except MailboxReleased:
            _logger.info("Exchange sync of user %s stopped: the mailbox changed meanwhile", user.login)
        except (ExchangeError, UserError) as error:
            if current is None:
                # The seam refused or could not build the backend: no kind run got the error.
                runs._start(user, "connection", trigger)._finish(error)
                errors.append(error)
        except Exception as error:  # noqa: BLE001 - one user's failure never stops the others
            _logger.exception("Exchange sync of user %s failed", user.login)
            runs._start(user, "connection", trigger)._finish(error)
            errors.append(error)
        self._exchange_schedule_next(errors)
        return errors

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
        now = fields.Datetime.now()
        if token and self.sync_lease_token not in (False, token) and self.sync_lease_until \
                and self.sync_lease_until > now:
            return  # the lease expired and another worker owns the mailbox now
        values = {"last_sync_done": now}
        if not token or self.sync_lease_token:
            values.update(sync_lease_until=False, sync_lease_token=False)
        # Without a lease, no page changed anything: this write is the sync's only one.
        if self.state == "connected":  # not when disconnected or locked out meanwhile
            retry_after = retry_after_of(errors)
            if retry_after:
                # Microsoft named the moment it accepts this mailbox again: not a request before.
                values["next_sync"] = now + timedelta(seconds=retry_after)
            elif any(isinstance(error, INTERRUPTIONS) for error in errors):
                # Continue at the next run, after the mailboxes that waited longer.
                values["next_sync"] = now
            elif self.env.context.get("exchange_sync_kinds"):
                pass  # one kind was asked for: the others keep their scheduled sync
            else:
                values["next_sync"] = now + timedelta(minutes=self._exchange_sync_interval())
        failures = [error for error in errors if not isinstance(error, INTERRUPTIONS)]
        if failures:
            values.update(last_error=self._exchange_error_text(failures[-1]),
                          last_error_kind=self._exchange_error_kind(failures[-1]),
                          last_error_code=getattr(failures[-1], "code", None) or False)
        self.write(values)
        if self.sync_requested:
            # "Sync now" was clicked during this sync, while the mailbox was not due for the job.
            self.env.ref("exchange_connector.ir_cron_exchange_sync")._trigger()
        self._exchange_commit()

    # -- the work per kind ----------------------------------------------------

    def _sync_mails(self, backend, run):
        """Walk the incoming and outgoing transfer folders ("Inbox/<folder>") incrementally.

        The folders are created when missing, so that users find them in Outlook, and their
        ids remembered: they are looked up again only when the remembered one is gone or the
        setting names another path. Each page goes to :meth:`_import_message_page`, then its
        state is saved and both are committed (:meth:`_exchange_page`): an interrupted run
        resumes after the last committed page. A folder that changed (renamed setting,
        recreated folder) starts over from the beginning. A folder without news costs its one
        listing request and no write.
        """
        self.ensure_one()
        user = self.user_id
        for folder_kind, folder_name in (("in", user.exchange_transfer_folder_in),
                                         ("out", user.exchange_transfer_folder_out)):
            if not folder_name:
                continue
            path = f"Inbox/{folder_name}"
            folder = self._exchange_remembered_folder(folder_kind, path)
            try:
                listed = folder or self._exchange_find_folder(backend, folder_kind, path)
                self._exchange_list_transfer_folder(backend, folder_kind, listed, run)
            except FolderNotFound:
                if folder is None:
                    raise
                # Deleted or moved since it was remembered: found (or created) again, listed from scratch.
                self._exchange_list_transfer_folder(
                    backend, folder_kind, self._exchange_find_folder(backend, folder_kind, path), run)

    def _exchange_remembered_folder(self, folder_kind, path):
        """The transfer folder remembered for ``path``, without asking Microsoft; None if none is."""
        folder_id = self[f"mails_{folder_kind}_folder_id"]
        if not folder_id or self[f"mails_{folder_kind}_folder_path"] != path:
            return None
        return RemoteFolder(id=folder_id, display_name=path.rsplit("/", 1)[-1], path=path)

    def _exchange_find_folder(self, backend, folder_kind, path):
        """Find (or create) the transfer folder at ``path`` and remember it; a new one starts over."""
        folder = backend.ensure_folder(path)
        id_field, path_field = f"mails_{folder_kind}_folder_id", f"mails_{folder_kind}_folder_path"
        if (self[id_field], self[path_field]) != (folder.id, path):
            with self._exchange_page():
                values = {id_field: folder.id, path_field: path}
                if self[id_field] != folder.id:
                    values[f"mails_{folder_kind}_state"] = False
                self.write(values)
        return folder

    def _exchange_start_run(self, run):
        """The record of ``run`` (a :class:`PendingRun`), created after the lease is written and
        before the page that needs it: a page rolled back keeps its run, and no run is left
        "started" without a lease that tells whether its worker is alive. A run record given
        directly (a sync called outside the scheduler) is used as it is."""
        self._exchange_check_lease()
        return run.started() if isinstance(run, PendingRun) else run

    def _exchange_list_transfer_folder(self, backend, folder_kind, folder, run):
        state_field = f"mails_{folder_kind}_state"
        saved = self[state_field] or None
        # The import reads the recipients from the MIME source: the listing need not fetch them.
        for number, page in enumerate(backend.sync_messages(folder, saved, recipients=False)):
            if self._exchange_page_is_news(page, number, saved):
                record = self._exchange_start_run(run)
                self._exchange_save_page(
                    {state_field: page.state}, self._import_message_page, folder_kind, page, record)

    @staticmethod
    def _exchange_page_is_news(page, number, saved):
        """Whether ``page`` must be imported and its state saved.

        Not the first page of a listing resumed from ``saved`` when it brings nothing and ends
        the listing: the saved state resumes from the same point (Graph hands out a new delta
        link each time, with nothing behind it).
        """
        return bool(number or not saved or page.items or page.removed_ids or page.reset or not page.done)

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
        saved = self.events_state or None
        for number, page in enumerate(backend.sync_events(start, end, saved)):
            if self._exchange_page_is_news(page, number, saved):
                record = self._exchange_start_run(run)
                self._exchange_save_page({"events_state": page.state}, self._import_event_page, page, record)

    def _import_event_page(self, page, run):
        """Import one page of calendar entries (:class:`RemoteEvent` items, removed ids).

        The event import feature overrides this hook; the connector itself imports nothing
        yet, so the items are counted as skipped.
        """
        run._count(skipped=len(page.items))

    def _sync_contacts(self, backend, run):
        """Make sure the user's Outlook contact folder exists, then push the contact changes.

        The folder is the user's setting: the main Contacts folder (empty) or a named subfolder.
        When it changed, :meth:`_sync_contacts_folder_changed` first cleans up the old one.
        Nothing is asked of Microsoft when the folder is known and :meth:`_contacts_pending`
        finds nothing to push. Returns True once the push compared the folder, None otherwise.
        """
        self.ensure_one()
        if self.contact_folder_id and not self._contacts_pending():
            return None
        folder = backend.ensure_contact_folder(self.user_id.exchange_contact_folder or "")
        if self.contact_folder_id != folder.id:
            if self.contact_folder_id:
                old = RemoteFolder(id=self.contact_folder_id, display_name="", path="")
                with self.env.cr.savepoint():
                    self._sync_contacts_folder_changed(backend, old, run)
            with self._exchange_page():
                self.contact_folder_id = folder.id
        # Not a page: the push talks to Microsoft, and the mailbox row stays free meanwhile.
        run = self._exchange_start_run(run)
        with self.env.cr.savepoint():
            stop = self._push_contacts(backend, folder, run)
        self._exchange_commit()
        if stop is not None:
            raise stop
        return True

    def _sync_contacts_folder_changed(self, backend, old_folder, run):
        """The user chose another contact folder; the contact feature cleans up ``old_folder``."""
        return None

    def _push_contacts(self, backend, folder, run):
        """Push the user's subscribed partners to ``folder`` with ``backend.push_contacts``.

        The contact feature overrides this hook; the connector itself has no subscriptions
        yet, so there is nothing to push. It runs in one savepoint, committed after it: a crash
        rolls back the bindings it wrote, and the push is redone next time. It may return an
        error (e.g. TimeBudgetExceeded) to raise once what it did is committed.
        """
        return None

    def _contacts_pending(self):
        """Whether the contact push has anything to send; False spares the contact sync every request.

        The contact feature overrides it with a cheap check of its own records (e.g. a
        subscription or a partner changed since the last push); the connector itself has no
        subscriptions yet, so nothing is ever pending.
        """
        return False
