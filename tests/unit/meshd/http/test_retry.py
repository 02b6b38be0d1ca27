"""Retry conditions and backoff, with values."""

from __future__ import annotations

import random

import pytest

from meshcore.model.policy import RetryPolicy
from meshd.http.retry import (
    CONNECT_FAILURE,
    RESET,
    TIMEOUT,
    backoff_s,
    failure_condition,
    status_condition,
)

pytestmark = pytest.mark.timeout(30)


def test_status_conditions() -> None:
    policy = RetryPolicy(retry_on=("gateway-error",), retriable_status_codes=(429,))
    assert [status_condition(policy, s) for s in (200, 500, 502, 503, 504, 409, 429)] == [
        None,
        None,
        "gateway-error",
        "gateway-error",
        "gateway-error",
        None,
        "status",
    ]
    every = RetryPolicy(retry_on=("5xx", "retriable-4xx"))
    assert status_condition(every, 500) == "5xx"
    assert status_condition(every, 503) == "5xx"
    assert status_condition(every, 409) == "retriable-4xx"
    assert status_condition(every, 404) is None


def test_failure_conditions() -> None:
    connect = RetryPolicy(retry_on=("connect-failure",))
    assert failure_condition(connect, CONNECT_FAILURE) == "connect-failure"
    assert failure_condition(connect, RESET) is None
    assert failure_condition(connect, TIMEOUT) is None
    reset = RetryPolicy(retry_on=("reset",))
    assert failure_condition(reset, CONNECT_FAILURE) == "reset"
    assert failure_condition(reset, RESET) == "reset"
    assert failure_condition(reset, TIMEOUT) is None
    gateway = RetryPolicy(retry_on=("gateway-error",))
    assert failure_condition(gateway, TIMEOUT) == "gateway-error"
    assert failure_condition(gateway, RESET) == "gateway-error"
    assert failure_condition(RetryPolicy(retry_on=("retriable-4xx",)), RESET) is None


class _Top(random.Random):
    def random(self) -> float:
        return 0.999999


def test_backoff_is_jittered_exponential_and_capped() -> None:
    policy = RetryPolicy(backoff_base_s=0.1, backoff_max_s=0.35)
    top = _Top()
    assert [round(backoff_s(policy, n, top), 3) for n in (1, 2, 3, 4)] == [0.1, 0.2, 0.35, 0.35]
    rng = random.Random(3)
    draws = [backoff_s(policy, 2, rng) for _ in range(200)]
    assert all(0 <= d <= 0.2 for d in draws)
    assert max(draws) - min(draws) > 0.1  # full jitter, not a fixed wait
