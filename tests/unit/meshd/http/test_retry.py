"""Retry conditions and backoff, with values."""

from __future__ import annotations

import itertools
import random

import pytest

from meshcore.model.policy import RetryOn, RetryPolicy
from meshd.http.retry import (
    CONNECT_FAILURE,
    RESET,
    TIMEOUT,
    RetryRule,
    backoff_s,
    failure_condition,
    status_condition,
)

pytestmark = pytest.mark.timeout(30)


def test_status_conditions() -> None:
    policy = RetryRule(RetryPolicy(retry_on=("gateway-error",), retriable_status_codes=(429,)))
    assert [status_condition(policy, s) for s in (200, 500, 502, 503, 504, 409, 429)] == [
        None,
        None,
        "gateway-error",
        "gateway-error",
        "gateway-error",
        None,
        "status",
    ]
    every = RetryRule(RetryPolicy(retry_on=("5xx", "retriable-4xx")))
    assert status_condition(every, 500) == "5xx"
    assert status_condition(every, 503) == "5xx"
    assert status_condition(every, 409) == "retriable-4xx"
    assert status_condition(every, 404) is None


def _reference(policy: RetryPolicy, status: int) -> str | None:
    """The conditions in the order the module's docstring gives them."""
    if 502 <= status <= 504 and "gateway-error" in policy.retry_on:
        return "gateway-error"
    if 500 <= status <= 599 and "5xx" in policy.retry_on:
        return "5xx"
    if status == 409 and "retriable-4xx" in policy.retry_on:
        return "retriable-4xx"
    return "status" if status in policy.retriable_status_codes else None


def test_the_compiled_status_table_answers_as_the_conditions_in_order() -> None:
    names: tuple[RetryOn, ...] = ("connect-failure", "reset", "gateway-error", "5xx")
    names += ("retriable-4xx",)
    listed = ((), (429,), (409, 503, 500, 404))
    for n in range(len(names) + 1):
        for retry_on in itertools.combinations(names, n):
            for codes in listed:
                policy = RetryPolicy(retry_on=retry_on, retriable_status_codes=codes)
                rule = RetryRule(policy)
                for status in range(100, 600):
                    assert status_condition(rule, status) == _reference(policy, status), (
                        retry_on,
                        codes,
                        status,
                    )


def test_failure_conditions() -> None:
    connect = RetryRule(RetryPolicy(retry_on=("connect-failure",)))
    assert failure_condition(connect, CONNECT_FAILURE) == "connect-failure"
    assert failure_condition(connect, RESET) is None
    assert failure_condition(connect, TIMEOUT) is None
    reset = RetryRule(RetryPolicy(retry_on=("reset",)))
    assert failure_condition(reset, CONNECT_FAILURE) == "reset"
    assert failure_condition(reset, RESET) == "reset"
    assert failure_condition(reset, TIMEOUT) is None
    gateway = RetryRule(RetryPolicy(retry_on=("gateway-error",)))
    assert failure_condition(gateway, TIMEOUT) == "gateway-error"
    assert failure_condition(gateway, RESET) == "gateway-error"
    assert failure_condition(RetryRule(RetryPolicy(retry_on=("retriable-4xx",))), RESET) is None


class _Top(random.Random):
    def random(self) -> float:
        return 0.999999


def test_backoff_is_jittered_exponential_and_capped() -> None:
    policy = RetryRule(RetryPolicy(backoff_base_s=0.1, backoff_max_s=0.35))
    top = _Top()
    assert [round(backoff_s(policy, n, top), 3) for n in (1, 2, 3, 4)] == [0.1, 0.2, 0.35, 0.35]
    rng = random.Random(3)
    draws = [backoff_s(policy, 2, rng) for _ in range(200)]
    assert all(0 <= d <= 0.2 for d in draws)
    assert max(draws) - min(draws) > 0.1  # full jitter, not a fixed wait
