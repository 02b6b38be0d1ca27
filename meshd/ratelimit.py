"""Local rate limits: token buckets over an inbound listener's requests (http) or new
connections (tcp), built from the snapshot's ``rate_limits``.

Pure and synchronous; the clock is injected. Semantics:

* Each :class:`~meshcore.model.snapshot.RateLimitRule` is a token bucket holding at most
  ``burst`` tokens, refilled at ``requests_per_second``; it starts full.
* A rule applies to a request when its ``match`` holds (no ``match``: every request), with the
  route-match semantics of :class:`~meshcore.matchers.RequestMatcher`, on the normalized path.
  **Every** rule that applies must have a token. Tokens are taken only when all of them have
  one (all or nothing): a request one limit refuses does not spend the others' tokens, so a
  tight limit on ``/upload`` does not starve a broader limit on everything.
* Refused: :meth:`ListenerRateLimiter.check` returns the seconds until every refusing bucket
  has a token again (the ``retry-after``; :func:`retry_after` rounds it up to whole seconds),
  and ``meshd_rate_limited{listener, rate_limit}`` counts one for every rule that had no token
  (a request two limits refuse counts under both).
* ``per_source``: one bucket per source (the peer's SPIFFE ID, else its IP address), at most
  ``max_sources`` (10 000) per rule: beyond that the least recently seen source's bucket is
  forgotten (it starts full if that source comes back), so a caller cycling through many
  addresses cannot grow memory without bound.
* TCP listeners: rules without a ``match`` count new connections; a rule with a ``match``
  can't be evaluated without HTTP, so such a snapshot is rejected (:meth:`RateLimits.tcp`).

Buckets outlive a snapshot: :class:`RateLimits` (one per sidecar process) hands every listener
the state of each ``(listener, rule)`` pair, so a new snapshot in which a rule is unchanged
keeps its buckets, and a changed rule (any field) starts full. Each worker process of a
sidecar has its own buckets: with ``workers: N`` the limits apply per process.

The packages compile this module with mypyc, whose classes' instances can't be weakly
referenced: the registry holds each rule's state in a :class:`~meshd.held.Held` box, which the
limiters using the state keep.
"""

from __future__ import annotations

import math
import time
import weakref
from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import Final

from meshcore.matchers import RequestMatcher
from meshcore.model.snapshot import RateLimitRule
from meshd.errors import SnapshotRejected
from meshd.held import Held
from meshd.policystats import PolicyStats

__all__ = [
    "DEFAULT_MAX_SOURCES",
    "ListenerRateLimiter",
    "RateLimits",
    "TokenBucket",
    "retry_after",
]

#: Per-source buckets kept per rule (least recently seen forgotten first).
DEFAULT_MAX_SOURCES: Final = 10_000
#: Float noise in a wait (1.0000000001 s) must not round up to a whole extra second.
_ROUNDING_SLACK: Final = 1e-6


def retry_after(wait_s: float) -> bytes:
    """The ``retry-after`` value for a wait: whole seconds, rounded up, at least 1."""
    return b"%d" % max(1, math.ceil(wait_s - _ROUNDING_SLACK))


class TokenBucket:
    """``burst`` tokens at most, ``rate`` more per second; starts full."""

    __slots__ = ("burst", "rate", "stamp", "tokens")

    def __init__(self, rate: float, burst: int, now: float) -> None:
        self.rate = rate
        self.burst = float(burst)
        self.tokens = float(burst)
        self.stamp = now

    def wait_s(self, now: float) -> float:
        """Refill up to ``now``; 0 when a token is there, else the seconds until one is."""
        elapsed = now - self.stamp
        if elapsed > 0:
            tokens = self.tokens + elapsed * self.rate
            self.tokens = tokens if tokens < self.burst else self.burst
            self.stamp = now
        if self.tokens >= 1.0:
            return 0.0
        return (1.0 - self.tokens) / self.rate

    def take(self) -> None:
        """Spend a token (:meth:`wait_s` said there is one)."""
        self.tokens -= 1.0


class _RuleState:
    """The buckets of one rule on one listener, shared by the snapshots that keep the rule."""

    __slots__ = ("_max_sources", "_shared", "_sources", "matcher", "rule")

    def __init__(self, rule: RateLimitRule, max_sources: int, now: float) -> None:
        self.rule = rule
        match = rule.match
        matcher = RequestMatcher.from_route_match(match) if match is not None else None
        #: None: the rule applies to every request.
        self.matcher = None if matcher is None or matcher.matches_everything else matcher
        self._max_sources = max_sources
        self._shared = TokenBucket(rule.requests_per_second, rule.burst, now)
        self._sources: OrderedDict[bytes, TokenBucket] = OrderedDict()

    def bucket(self, source: bytes | None, now: float) -> TokenBucket:
        """The bucket ``source`` draws from."""
        if not self.rule.per_source:
            return self._shared
        key = source or b""
        sources = self._sources
        found = sources.get(key)
        if found is not None:
            sources.move_to_end(key)
            return found
        found = sources[key] = TokenBucket(self.rule.requests_per_second, self.rule.burst, now)
        if len(sources) > self._max_sources:
            sources.popitem(last=False)
        return found

    @property
    def source_count(self) -> int:
        """Per-source buckets held now."""
        return len(self._sources)


class ListenerRateLimiter:
    """The rate limits of one inbound listener under one snapshot.

    Implements :class:`meshd.http.config.RateLimitCheck` (requests) and
    :class:`meshd.tcp.config.ConnectionRateCheck` (connections).
    """

    __slots__ = ("_always", "_clock", "_held", "_matched", "_stats", "listener")

    def __init__(
        self,
        listener: str,
        held: Sequence[Held[_RuleState]],
        stats: PolicyStats,
        clock: Callable[[], float],
    ) -> None:
        self.listener = listener
        #: Kept so that :class:`RateLimits` keeps the states while this limiter is in use.
        self._held = tuple(held)
        states = [h.value for h in self._held]
        self._always = tuple(s for s in states if s.matcher is None)
        self._matched = tuple(s for s in states if s.matcher is not None)
        self._stats = stats
        self._clock = clock

    @property
    def rules(self) -> tuple[RateLimitRule, ...]:
        """The rules enforced, those without a match first."""
        return tuple(s.rule for s in (*self._always, *self._matched))

    def check(
        self,
        *,
        source: bytes | None,
        method: bytes,
        path: bytes,
        headers: list[tuple[bytes, bytes]],
    ) -> float | None:
        """One request: None if it may pass (its tokens are taken), else the seconds to wait.

        ``source``: the peer's SPIFFE ID, else its IP address (None: one shared bucket).
        ``path``: the normalized request target; a query after ``?`` is matched as such.
        """
        states = self._always
        if self._matched:
            path_only, _, query = path.partition(b"?")
            method_s = method.decode("latin-1")
            path_s = path_only.decode("latin-1")
            applying = [
                s
                for s in self._matched
                if s.matcher is not None and s.matcher.matches(method_s, path_s, headers, query)
            ]
            if applying:
                states = (*states, *applying)
        return self._admit(states, source)

    def check_connection(self, source: bytes | None) -> float | None:
        """One new connection (tcp listeners): as :meth:`check`, with the rules without a
        match."""
        return self._admit(self._always, source)

    def _admit(self, states: Sequence[_RuleState], source: bytes | None) -> float | None:
        if not states:
            return None
        now = self._clock()
        if len(states) == 1:
            bucket = states[0].bucket(source, now)
            wait = bucket.wait_s(now)
            if wait:
                self._stats.inc("meshd_rate_limited", self.listener, states[0].rule.name)
                return wait
            bucket.take()
            return None
        buckets = [s.bucket(source, now) for s in states]
        worst = 0.0
        for state, bucket in zip(states, buckets, strict=True):
            wait = bucket.wait_s(now)
            if wait:
                self._stats.inc("meshd_rate_limited", self.listener, state.rule.name)
                worst = max(worst, wait)
        if worst:
            return worst
        for bucket in buckets:
            bucket.take()
        return None


class RateLimits:
    """The rate-limit state of one sidecar process, kept across snapshots.

    :meth:`http` and :meth:`tcp` build a listener's limiter for a new snapshot; a rule that
    the listener had before, unchanged, brings its buckets along. The state of a rule lives
    as long as some configuration in use refers to it (weakly held here), so a snapshot that
    is built but then rejected doesn't disturb the one in service.
    """

    def __init__(
        self,
        stats: PolicyStats,
        *,
        clock: Callable[[], float] = time.monotonic,
        max_sources: int = DEFAULT_MAX_SOURCES,
    ) -> None:
        self.stats = stats
        self.clock = clock
        self.max_sources = max_sources
        self._states: weakref.WeakValueDictionary[tuple[str, RateLimitRule], Held[_RuleState]] = (
            weakref.WeakValueDictionary()
        )

    def http(self, listener: str, rules: Sequence[RateLimitRule]) -> ListenerRateLimiter | None:
        """The limiter of an inbound http listener (None: no rules, no cost)."""
        if not rules:
            return None
        return ListenerRateLimiter(
            listener, self._states_of(listener, rules), self.stats, self.clock
        )

    def tcp(self, listener: str, rules: Sequence[RateLimitRule]) -> ListenerRateLimiter | None:
        """The connection-rate limiter of an inbound tcp listener (None: no rules).

        Raises :class:`SnapshotRejected` for a rule with a ``match``: without HTTP there is
        nothing to match, and a limit that can't be enforced is not accepted.
        """
        if not rules:
            return None
        states = self._states_of(listener, rules)
        for held in states:
            state = held.value
            if state.matcher is not None:
                raise SnapshotRejected(
                    f"listener {listener}: rate limit {state.rule.name} has a match, which a "
                    "tcp listener can't evaluate (it counts connections)"
                )
        return ListenerRateLimiter(listener, states, self.stats, self.clock)

    def _states_of(self, listener: str, rules: Sequence[RateLimitRule]) -> list[Held[_RuleState]]:
        states = []
        for rule in rules:
            key = (listener, rule)
            held = self._states.get(key)
            if held is None:
                state = _RuleState(rule, self.max_sources, self.clock())
                held = self._states[key] = Held(state)
            states.append(held)
        return states
