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


def failure_condition(policy: RetryPolicy, failure: str) -> str | None:
    """The ``retry_on`` condition that retries a try without response (None: not retried)."""
    for condition in _NO_RESPONSE[failure]:
        if condition in policy.retry_on:
            return condition
    return None


def status_condition(policy: RetryPolicy, status: int) -> str | None:
    """The condition that retries a response with ``status`` (None: not retried); the metric
    reason of a ``retriable_status_codes`` match is ``status``."""
    retry_on = policy.retry_on
    if 502 <= status <= 504 and "gateway-error" in retry_on:
        return "gateway-error"
    if 500 <= status <= 599 and "5xx" in retry_on:
        return "5xx"
    if status == 409 and "retriable-4xx" in retry_on:
        return "retriable-4xx"
    if status in policy.retriable_status_codes:
        return "status"
    return None


def backoff_s(policy: RetryPolicy, retry: int, rng: random.Random) -> float:
    """Wait before retry number ``retry`` (1 = the first): full jitter over
    ``backoff_base_s * 2**(retry - 1)``, at most ``backoff_max_s``."""
    ceiling = min(policy.backoff_max_s, policy.backoff_base_s * 2.0 ** (retry - 1))
    return rng.random() * ceiling
