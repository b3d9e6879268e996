"""Being a polite client: retries with backoff, a per-mailbox concurrency limit and a run time budget.

Microsoft throttles per application and mailbox: at most 4 concurrent
requests and 10,000 requests per 10 minutes (Graph answers 429 with
``Retry-After``; EWS answers ``ErrorServerBusy`` with ``BackOffMilliseconds``).
Both backends therefore

- send every HTTP request through :func:`mailbox_slot`, a process-wide
  ``BoundedSemaphore(4)`` per mailbox shared by all backends of that mailbox
  (a cron run and a user's button click in two threads share it);
- retry throttled (429, ``ErrorServerBusy``), unavailable (503) and
  transient network failures (timeouts, connection resets) with
  :class:`RetryPolicy`: the server's hint when it gives one, otherwise
  exponential backoff with full jitter (``uniform(0, min(cap, base * 2**n))``,
  the AWS "full jitter" scheme, so that many workers do not retry in step);
- check a :class:`RunBudget` between pages and before each wait, and raise
  :class:`~services.errors.TimeBudgetExceeded` when it is spent, so a cron run
  stops cleanly and the next run resumes from the last persisted sync state.

The clock, the sleep function and the random source are injectable so the
policy is tested without sleeping.
"""

import logging
import random
import threading
import time

from .errors import ThrottledError, TimeBudgetExceeded

_logger = logging.getLogger(__name__)

#: Microsoft's limit of concurrent requests per application and mailbox (Outlook resources).
MAX_CONCURRENT_REQUESTS = 4

_slots_lock = threading.Lock()
_slots = {}


def mailbox_slot(mailbox_key, limit=MAX_CONCURRENT_REQUESTS):
    """Return the process-wide semaphore limiting concurrent requests to one mailbox.

    ``mailbox_key`` is the mailbox's e-mail address (case-insensitive);
    backends acquire it around each HTTP request (``with mailbox_slot(email):``),
    never while sleeping between retries.
    """
    key = (mailbox_key or "").lower()
    with _slots_lock:
        slot = _slots.get(key)
        if slot is None:
            slot = _slots[key] = threading.BoundedSemaphore(limit)
        return slot


class RunBudget:
    """A deadline for one sync run; ``seconds=None`` means no limit.

    Pass one budget to every backend call of a run (backends keep it as
    ``backend.budget``); :meth:`check` raises
    :class:`~services.errors.TimeBudgetExceeded` once the time is spent.
    """

    def __init__(self, seconds=None, clock=time.monotonic):
        self.clock = clock
        self.deadline = None if seconds is None else clock() + seconds

    def remaining(self):
        """Seconds left (``None`` when unlimited, never negative)."""
        if self.deadline is None:
            return None
        return max(0.0, self.deadline - self.clock())

    @property
    def expired(self):
        remaining = self.remaining()
        return remaining is not None and remaining <= 0

    def check(self):
        """Raise TimeBudgetExceeded when the deadline has passed."""
        if self.expired:
            raise TimeBudgetExceeded(
                "The run's time budget is spent; it resumes from the saved state next time."
            )


class Retryable(Exception):
    """Raised inside a retried call: the attempt failed in a way worth retrying.

    ``retry_after`` is the server's hint in seconds (None: use backoff);
    ``error`` is the ExchangeError to raise when retries run out.
    """

    def __init__(self, error, retry_after=None):
        super().__init__(str(error))
        self.error = error
        self.retry_after = retry_after


class RetryPolicy:
    """Retry transient failures with the server's hint or exponential backoff with full jitter.

    :param max_attempts: attempts in total (first try included).
    :param base_delay: backoff base in seconds; attempt n (from 0) waits up to ``base * 2**n``.
    :param max_delay: cap of one backoff wait; never applied to server hints.
    :param max_total_wait: give up when the waits of one call would exceed this.

    A server hint (``Retry-After``, ``BackOffMilliseconds``) is never
    shortened: Microsoft counts a request sent earlier against the client
    and may throttle it longer.  When the hint does not fit in what this
    call may still wait (``max_total_wait``) the call stops with the
    :class:`~services.errors.ThrottledError` carrying the hint, and when it
    does not fit in the run's budget with
    :class:`~services.errors.TimeBudgetExceeded`: the next run resumes from
    the saved state.
    """

    def __init__(
        self,
        max_attempts=8,
        base_delay=0.5,
        max_delay=30.0,
        max_total_wait=300.0,
        sleep=time.sleep,
        rand=random.random,
    ):
        self.max_attempts = max_attempts
        self.base_delay = base_delay
        self.max_delay = max_delay
        self.max_total_wait = max_total_wait
        self.sleep = sleep
        self.rand = rand

    def delay(self, attempt, retry_after=None):
        """Seconds to wait after failed attempt number ``attempt`` (0-based)."""
        if retry_after is not None:
            # The server knows when it will accept us again; a little jitter
            # keeps parallel workers from coming back in the same millisecond.
            return max(0.0, float(retry_after)) * (1 + 0.1 * self.rand())
        return self.rand() * min(self.max_delay, self.base_delay * (2**attempt))

    def call(self, attempt_fn, budget=None, what="request"):
        """Run ``attempt_fn()`` until it returns, retrying on :class:`Retryable`.

        Raises the last error's ExchangeError when retries are exhausted
        (a :class:`~services.errors.ThrottledError` for throttling), or
        :class:`~services.errors.TimeBudgetExceeded` when the wait would pass
        the budget's deadline.
        """
        waited = 0.0
        attempt = 0
        while True:
            try:
                return attempt_fn()
            except Retryable as retry:
                error = retry.error
                if attempt + 1 >= self.max_attempts:
                    _logger.warning("%s failed after %d attempts: %s", what, attempt + 1, error)
                    raise error from None
                wait = self.delay(attempt, retry.retry_after)
                remaining = budget.remaining() if budget is not None else None
                if remaining is not None and wait >= remaining:
                    stop = TimeBudgetExceeded(
                        f"The run's time budget ends before Microsoft accepts more requests ({error})",
                        code=getattr(error, "code", None),
                    )
                    stop.retry_after = retry.retry_after
                    raise stop from None
                if waited + wait > self.max_total_wait:
                    _logger.warning("%s: giving up after waiting %.1fs: %s", what, waited, error)
                    raise error from None
                _logger.info(
                    "%s: %s, retrying in %.2fs (attempt %d)",
                    what,
                    getattr(error, "code", None) or error,
                    wait,
                    attempt + 1,
                )
                self.sleep(wait)
                waited += wait
                attempt += 1


def throttled(message, code, retry_after=None, status=None, request_id=None):
    """Build the Retryable for a throttling answer (429 / ErrorServerBusy)."""
    return Retryable(
        ThrottledError(message, retry_after=retry_after, code=code, status=status, request_id=request_id),
        retry_after=retry_after,
    )
