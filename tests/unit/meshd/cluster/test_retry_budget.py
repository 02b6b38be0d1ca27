"""The retry budget's sliding window, with the time given."""

from __future__ import annotations

import pytest

from meshcore.model.policy import RetryBudget
from meshd.cluster.budget import RetryBudgetWindow

pytestmark = pytest.mark.timeout(30)


def test_floor_alone_allows_min_retries_per_second_times_ttl() -> None:
    window = RetryBudgetWindow(RetryBudget(percent=0, min_retries_per_second=2, ttl_s=5))
    taken = sum(window.try_retry(1.0) for _ in range(100))
    assert taken == 10
    assert window.remaining(1.0) == 0


def test_percent_of_requests_in_the_window() -> None:
    window = RetryBudgetWindow(RetryBudget(percent=20, min_retries_per_second=0, ttl_s=10))
    for _ in range(50):
        window.record_request(0.5)
    assert window.remaining(0.5) == pytest.approx(10)
    assert sum(window.try_retry(0.6) for _ in range(20)) == 10
    assert not window.try_retry(0.7)


def test_requests_and_retries_leave_the_window_after_ttl() -> None:
    window = RetryBudgetWindow(RetryBudget(percent=100, min_retries_per_second=0, ttl_s=3))
    for _ in range(4):
        window.record_request(0.0)
    for _ in range(4):
        assert window.try_retry(0.0)
    assert not window.try_retry(1.5)
    window.record_request(2.0)
    assert window.try_retry(2.5)
    # At 3.0 the first second's requests and retries leave; 2.0's stay.
    assert (window.requests, window.retries) == (5, 5)
    assert window.remaining(3.0) == 0
    assert (window.requests, window.retries) == (1, 1)
    assert window.remaining(5.5) == 0
    assert (window.requests, window.retries) == (0, 0)
    # A long quiet spell clears everything at once.
    window.record_request(100.0)
    assert window.remaining(100.0) == 1


def test_small_ttl_uses_one_bucket() -> None:
    window = RetryBudgetWindow(RetryBudget(percent=100, min_retries_per_second=0, ttl_s=0.2))
    window.record_request(0.05)
    assert window.try_retry(0.1)
    assert not window.try_retry(0.15)
    assert window.remaining(0.25) == 0  # the next window
    window.record_request(0.25)
    assert window.try_retry(0.25)


@pytest.mark.parametrize("attempts", [2, 5, 10])
def test_a_total_outage_sends_at_most_requests_times_one_plus_budget(attempts: int) -> None:
    budget = RetryBudget(percent=20, min_retries_per_second=1, ttl_s=10)
    window = RetryBudgetWindow(budget)
    requests = 1000
    sent = 0
    # 100 requests a second for 10 s, every try failing, each retried up to attempts - 1 times.
    for i in range(requests):
        now = i / 100
        window.record_request(now)
        sent += 1
        for _ in range(attempts - 1):
            if not window.try_retry(now):
                break
            sent += 1
    floor = budget.min_retries_per_second * budget.ttl_s
    assert sent <= requests * (1 + budget.percent / 100) + floor
    # ... and the budget is used, not refused wholesale.
    assert sent >= requests * (1 + budget.percent / 100)
