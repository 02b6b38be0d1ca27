"""Retry decisions of a route's :class:`~meshcore.model.policy.RetryPolicy`. Pure.

What a try ended with is one of: a response status, or no response at all (``connect-failure``:
no connection could be opened, so the request never left; ``reset``: the connection closed or
broke before a complete response head; ``timeout``: the per-try deadline passed). The
``retry_on`` conditions, as Envoy's:

* ``connect-failure``: no connection;
* ``reset``: no connection, or a reset;
* ``gateway-error``: 502, 503 or 504, or no response (connect failure, reset, per-try timeout);
* ``5xx``: any 5xx, or no response;
* ``retriable-4xx``: 409;
* ``retriable_status_codes``: those statuses.

Only idempotent methods (RFC 9110 9.2.2) are retried after the request may have reached the
upstream; any method is retried on a connect failure.

The policy is compiled once per snapshot into a :class:`RetryRule` (a route's, in
:mod:`meshd.http.decide`): its fields as native attributes, and each retried status with its
condition in one table, so the request path reads no pydantic model (a generic attribute
look-up each, ~240 instructions compiled).
"""

from __future__ import annotations

import random
from typing import Final

from meshcore.model.policy import RetryPolicy

__all__ = [
    "CONNECT_FAILURE",
    "IDEMPOTENT",
    "REPLAY_LIMIT",
    "RESET",
    "TIMEOUT",
    "RetryRule",
    "backoff_s",
    "failure_condition",
    "status_condition",
]

#: Request bodies up to this size are kept for replay; larger ones stream and are not retried.
REPLAY_LIMIT: Final = 64 * 1024

#: Methods whose retry can't do harm (RFC 9110 9.2.2).
IDEMPOTENT: Final = frozenset({b"GET", b"HEAD", b"OPTIONS", b"TRACE", b"PUT", b"DELETE"})

# What a try without a response ended with.
CONNECT_FAILURE: Final = "connect-failure"
RESET: Final = "reset"
TIMEOUT: Final = "timeout"

_NO_RESPONSE: Final = {
    CONNECT_FAILURE: ("connect-failure", "reset", "gateway-error", "5xx"),
    RESET: ("reset", "gateway-error", "5xx"),
    TIMEOUT: ("gateway-error", "5xx"),
}


class RetryRule:
    """A :class:`~meshcore.model.policy.RetryPolicy` compiled for the request path."""

    __slots__ = (
        "attempts",
        "backoff_base_s",
        "backoff_max_s",
        "per_try_timeout_s",
        "retry_on",
        "statuses",
    )

    def __init__(self, policy: RetryPolicy) -> None:
        #: Total tries, the first included.
        self.attempts: int = policy.attempts
        self.per_try_timeout_s: float | None = policy.per_try_timeout_s
        self.retry_on: frozenset[str] = frozenset(policy.retry_on)
        self.backoff_base_s: float = policy.backoff_base_s
        self.backoff_max_s: float = policy.backoff_max_s
        # Each retried status and the condition that retries it, the first that applies of
        # gateway-error, 5xx, retriable-4xx, a listed status (written in the reverse order).
        statuses: dict[int, str] = dict.fromkeys(policy.retriable_status_codes, "status")
        if "retriable-4xx" in self.retry_on:
            statuses[409] = "retriable-4xx"
        if "5xx" in self.retry_on:
            statuses.update(dict.fromkeys(range(500, 600), "5xx"))
        if "gateway-error" in self.retry_on:
            statuses.update(dict.fromkeys((502, 503, 504), "gateway-error"))
        #: Retried status -> its ``retry_on`` condition (``status`` for a listed one).
        self.statuses = statuses


def failure_condition(rule: RetryRule, failure: str) -> str | None:
    """The ``retry_on`` condition that retries a try without response (None: not retried)."""
    for condition in _NO_RESPONSE[failure]:
        if condition in rule.retry_on:
            return condition
    return None


def status_condition(rule: RetryRule, status: int) -> str | None:
    """The condition that retries a response with ``status`` (None: not retried); the metric
    reason of a ``retriable_status_codes`` match is ``status``."""
    return rule.statuses.get(status)


def backoff_s(rule: RetryRule, retry: int, rng: random.Random) -> float:
    """Wait before retry number ``retry`` (1 = the first): full jitter over
    ``backoff_base_s * 2**(retry - 1)``, at most ``backoff_max_s``."""
    ceiling = min(rule.backoff_max_s, rule.backoff_base_s * 2.0 ** (retry - 1))
    return rng.random() * ceiling
