"""Unit tests of the retry policy, run budget and per-mailbox slots (no sleeping, injected clock/random)."""

import pytest

from services.errors import ConnectionProblem, ThrottledError, TimeBudgetExceeded
from services.throttle import (
    MAX_CONCURRENT_REQUESTS,
    Retryable,
    RetryPolicy,
    RunBudget,
    mailbox_slot,
    throttled,
)


class FakeClock:
    def __init__(self):
        self.now = 1000.0
        self.sleeps = []

    def __call__(self):
        return self.now

    def sleep(self, seconds):
        self.sleeps.append(seconds)
        self.now += seconds


def failing(times, retry=lambda: throttled("busy", "TooManyRequests", retry_after=None), result="ok"):
    calls = []

    def attempt():
        calls.append(1)
        if len(calls) <= times:
            raise retry()
        return result

    attempt.calls = calls
    return attempt


def test_backoff_is_full_jitter_capped():
    policy = RetryPolicy(base_delay=0.5, max_delay=4.0, rand=lambda: 1.0)
    assert [policy.delay(n) for n in range(5)] == [0.5, 1.0, 2.0, 4.0, 4.0]
    policy.rand = lambda: 0.25
    assert policy.delay(2) == 0.5
    policy.rand = lambda: 0.0
    assert policy.delay(3) == 0.0


def test_server_hint_wins_over_backoff():
    policy = RetryPolicy(base_delay=0.5, max_delay=30.0, rand=lambda: 0.0)
    assert policy.delay(0, retry_after=7) == 7
    policy.rand = lambda: 1.0
    assert policy.delay(5, retry_after=2) == pytest.approx(2.2)  # at most 10% jitter on a hint
    assert policy.delay(0, retry_after=300) >= 300  # max_delay caps backoff, never a hint


def test_a_long_hint_is_never_shortened():
    """Retry-After 120 s with the default policy: wait it all, or stop and leave it to the next run."""
    clock = FakeClock()
    policy = RetryPolicy(sleep=clock.sleep, rand=lambda: 0.0, max_total_wait=600)
    attempt = failing(1, retry=lambda: throttled("busy", "TooManyRequests", retry_after=120))
    assert policy.call(attempt) == "ok"
    assert clock.sleeps == [120]

    too_short = RetryPolicy(sleep=clock.sleep, rand=lambda: 0.0, max_total_wait=60)
    with pytest.raises(ThrottledError) as raised:
        too_short.call(failing(1, retry=lambda: throttled("busy", "TooManyRequests", retry_after=120)))
    assert raised.value.retry_after == 120
    assert clock.sleeps == [120]  # gave up without a shortened wait

    budget = RunBudget(100, clock=clock)
    with pytest.raises(TimeBudgetExceeded):
        policy.call(
            failing(1, retry=lambda: throttled("busy", "TooManyRequests", retry_after=120)), budget=budget
        )
    assert clock.sleeps == [120]


def test_retries_until_success_sleeping_the_hint():
    clock = FakeClock()
    policy = RetryPolicy(sleep=clock.sleep, rand=lambda: 0.0)
    attempt = failing(3, retry=lambda: throttled("busy", "ErrorServerBusy", retry_after=1.5))
    assert policy.call(attempt) == "ok"
    assert len(attempt.calls) == 4
    assert clock.sleeps == [1.5, 1.5, 1.5]


def test_gives_up_after_max_attempts_with_microsoft_code():
    clock = FakeClock()
    policy = RetryPolicy(max_attempts=3, sleep=clock.sleep, rand=lambda: 0.5)
    attempt = failing(10)
    with pytest.raises(ThrottledError) as raised:
        policy.call(attempt)
    assert raised.value.code == "TooManyRequests"
    assert len(attempt.calls) == 3
    assert len(clock.sleeps) == 2


def test_gives_up_when_total_wait_exceeded():
    clock = FakeClock()
    policy = RetryPolicy(max_attempts=100, max_total_wait=10, sleep=clock.sleep, rand=lambda: 0.0)
    attempt = failing(100, retry=lambda: throttled("busy", "TooManyRequests", retry_after=4))
    with pytest.raises(ThrottledError):
        policy.call(attempt)
    assert clock.sleeps == [4, 4]


def test_non_throttling_error_is_kept():
    clock = FakeClock()
    policy = RetryPolicy(max_attempts=2, sleep=clock.sleep, rand=lambda: 0.0)
    attempt = failing(5, retry=lambda: Retryable(ConnectionProblem("timed out", kind="timeout")))
    with pytest.raises(ConnectionProblem) as raised:
        policy.call(attempt)
    assert raised.value.kind == "timeout"


def test_budget_stops_instead_of_waiting_past_deadline():
    clock = FakeClock()
    budget = RunBudget(5, clock=clock)
    policy = RetryPolicy(sleep=clock.sleep, rand=lambda: 0.0)
    attempt = failing(10, retry=lambda: throttled("busy", "TooManyRequests", retry_after=2))
    with pytest.raises(TimeBudgetExceeded) as raised:
        policy.call(attempt, budget=budget)
    assert clock.sleeps == [2, 2]  # a third wait would end after the deadline
    assert raised.value.code == "TooManyRequests"


def test_run_budget():
    clock = FakeClock()
    budget = RunBudget(10, clock=clock)
    budget.check()
    assert budget.remaining() == 10
    clock.now += 9.5
    budget.check()
    clock.now += 0.5
    assert budget.expired
    with pytest.raises(TimeBudgetExceeded):
        budget.check()
    unlimited = RunBudget(None, clock=clock)
    assert unlimited.remaining() is None and not unlimited.expired


def test_mailbox_slot_is_shared_and_bounded():
    first = mailbox_slot("Slot.Test@Contoso.test")
    assert mailbox_slot("slot.test@contoso.test") is first
    assert mailbox_slot("other@contoso.test") is not first
    taken = [first.acquire(blocking=False) for _ in range(MAX_CONCURRENT_REQUESTS)]
    try:
        assert all(taken)
        assert not first.acquire(blocking=False)
    finally:
        for _ in taken:
            first.release()
