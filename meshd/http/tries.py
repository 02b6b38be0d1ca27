"""Tries of a request with a retry policy, and the tries the fast lane hands over.

:func:`tries` carries out a plan with a :class:`~meshcore.model.policy.RetryPolicy` (or a
mirror) through the cluster API: per try ``acquire`` (other endpoints than those tried, when
there are), the exchange (:mod:`meshd.http.relay`), ``report`` and ``release``;
``begin_retry``/``end_retry`` around each retry. Retries follow the route's policy (conditions
in :mod:`meshd.http.retry`): at most ``attempts`` tries, a jittered exponential backoff
between them, a per-try deadline, and never once a response byte has gone downstream.
Request bodies up to :data:`~meshd.http.retry.REPLAY_LIMIT` are buffered for replay; larger
(or ``Expect: 100-continue``) bodies stream and are retried only on a connect failure
(nothing was sent). A pooled connection found dead before any response byte is replaced once
for an idempotent request, without counting as a retry.

A try the fast lane (:mod:`meshd.http.lane`) began goes on here (:class:`Taken`,
:func:`resume`) from where the lane left it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Final

import trio

from meshcore.model import Endpoint
from meshd.cluster.pool import UpstreamConnection
from meshd.cluster.runtime import ClusterRuntime
from meshd.context import now
from meshd.errors import (
    UpstreamConnectError,
    UpstreamError,
    UpstreamResetError,
    UpstreamTlsError,
)
from meshd.http.codec import CHUNKED, NO_BODY, HttpError, RequestHead
from meshd.http.decide import HeaderEdit, Plan
from meshd.http.mirror import shadow_copy
from meshd.http.relay import (
    BROKEN,
    HeldResponse,
    ResponseRelay,
    StaleConnectionError,
    exchange_with,
    relay_response,
    send_failure,
)
from meshd.http.retry import (
    CONNECT_FAILURE,
    IDEMPOTENT,
    REPLAY_LIMIT,
    RESET,
    TIMEOUT,
    RetryRule,
    backoff_s,
    failure_condition,
    status_condition,
)

if TYPE_CHECKING:
    from meshd.http.connection import HttpConnection

__all__ = ["RetryHold", "Taken", "resume", "retries_on", "retry_loop", "tries"]


class RetryHold:
    """Whether a try's final response is held back (never relayed) for a retry: its status
    is one the policy retries, a retry is left, the request may be sent again, and the
    cluster's retry budget and breaker allow one (then counted: ``begin_retry``)."""

    __slots__ = ("cluster", "condition", "policy", "replayable", "retry_left")

    def __init__(
        self, policy: RetryRule | None, cluster: ClusterRuntime, *, replayable: bool
    ) -> None:
        self.policy = policy
        self.cluster = cluster
        #: The request can be sent again (its body buffered whole) and is idempotent.
        self.replayable = replayable
        #: The try in flight is not the last the policy allows.
        self.retry_left = False
        #: Why the last retry was decided (a retry condition), else None.
        self.condition: str | None = None

    def __call__(self, status: int) -> bool:
        policy = self.policy
        if policy is None or status < 200 or not (self.retry_left and self.replayable):
            return False
        condition = self.condition = status_condition(policy, status)
        return condition is not None and self.cluster.begin_retry()


class Taken:
    """A try begun outside the task (:mod:`meshd.http.lane`), for the task to go on with
    (:func:`resume`): the endpoint picked, the connection acquired (None: to connect), and how
    far the try got."""

    __slots__ = ("conn", "endpoint", "error", "hold", "pending", "relay", "rest", "started")

    def __init__(
        self,
        endpoint: Endpoint,
        conn: UpstreamConnection | None,
        started: float,
        *,
        rest: bytes = b"",
        relay: ResponseRelay | None = None,
        pending: bytes = b"",
        error: BaseException | None = None,
        hold: RetryHold | None = None,
    ) -> None:
        self.endpoint = endpoint
        self.conn = conn
        self.started = started
        #: Of the request, what is still to send (with ``relay`` None).
        self.rest = rest
        #: The response's relay, once the request is sent.
        self.relay = relay
        #: Bytes of the response still to send downstream.
        self.pending = pending
        #: What the try failed with, raised where the task takes it over.
        self.error = error
        #: The retry policy's decision on the response (:func:`retry_loop` goes on with it).
        self.hold = hold


async def resume(
    c: HttpConnection,
    head: RequestHead,
    conn: UpstreamConnection,
    payload: bytes,
    *,
    edit: HeaderEdit | None,
    hold: RetryHold | None = None,
    try_scope: trio.CancelScope | None = None,
    taken: Taken | None,
) -> bool:
    """One try's exchange on ``conn`` (:func:`~meshd.http.relay.exchange_with`), or the rest
    of the one ``taken`` describes; True if ``conn`` is reusable."""
    if taken is None:
        return await exchange_with(
            c, head, conn, payload, edit=edit, hold=hold, try_scope=try_scope
        )
    if taken.error is not None:
        raise taken.error
    relay = taken.relay
    if relay is None:
        try:
            await conn.stream.send_all(taken.rest)
        except BROKEN as exc:
            raise send_failure(conn) from exc
    return await relay_response(
        c,
        head,
        conn=conn,
        edit=edit,
        hold=hold,
        try_scope=try_scope,
        relay=relay,
        pending=taken.pending,
    )


async def retries_on(
    c: HttpConnection,
    head: RequestHead,
    plan: Plan,
    cluster: ClusterRuntime,
    *,
    payload: bytes,
    taken: Taken | None,
) -> None:
    """:func:`retry_loop` for a request the lane admitted (no body: replayable); ends it in
    the cluster."""
    try:
        await retry_loop(c, head, plan, cluster, payload=payload, replayable=True, taken=taken)
    finally:
        cluster.done()


async def tries(
    c: HttpConnection,
    head: RequestHead,
    plan: Plan,
    *,
    cluster: ClusterRuntime,
    out: bytes,
    mirror: bool,
) -> None:
    """The request with a retry policy (or mirrored): its body buffered for a replay (up to
    :data:`REPLAY_LIMIT`), the mirror's copy sent, then :func:`retry_loop`."""
    ex = c.exchange
    assert ex is not None
    shared = c.shared
    chunked = head.framing == CHUNKED
    first = [out]
    ex.body_done = c.gather_body(first, chunked) if head.framing != NO_BODY else True
    policy = plan.retry
    if (
        policy is not None
        and not ex.body_done
        and not head.expect_continue
        and head.upgrade is None
        and head.content_length <= REPLAY_LIMIT  # -1 when chunked: read up to the limit
        and ex.bytes_in <= REPLAY_LIMIT
    ):
        await _buffer_body(c, first, chunked)
    payload = b"".join(first) if len(first) > 1 else out
    replayable = ex.body_done and ex.bytes_in <= REPLAY_LIMIT
    if mirror and replayable and plan.mirror is not None and shared.mirror is not None:
        # Fire and forget: the sink queues it (or drops it) without waiting.
        shared.mirror.submit(plan.mirror, shadow_copy(payload))
    await retry_loop(c, head, plan, cluster, payload=payload, replayable=replayable, taken=None)


async def retry_loop(
    c: HttpConnection,
    head: RequestHead,
    plan: Plan,
    cluster: ClusterRuntime,
    *,
    payload: bytes,
    replayable: bool,
    taken: Taken | None,
) -> None:
    """Tries until one answers, the policy gives up or a response has gone downstream; the
    first is ``taken`` on when given (:mod:`meshd.http.lane` began it)."""
    ex = c.exchange
    assert ex is not None
    shared = c.shared
    policy = plan.retry
    idempotent = head.method in IDEMPOTENT
    attempts = policy.attempts if policy is not None else 1
    per_try = policy.per_try_timeout_s if policy is not None else None
    key = cluster.hash_key(head.headers, c.peer_ip) if cluster.hashes else None
    tried: list[Endpoint] = []
    tries = 0
    stale_replaced = False
    fresh = False
    hold = taken.hold if taken is not None and taken.hold is not None else None
    if hold is None:
        hold = RetryHold(policy, cluster, replayable=replayable and idempotent)
    while True:
        tries += 1
        retry_left = hold.retry_left = tries < attempts
        last: UpstreamError | HttpError = UpstreamError("upstream_timeout", "per-try timeout")
        failure = ""
        started = now()
        endpoint: Endpoint | None = None
        scope = trio.CancelScope(deadline=trio.current_time() + per_try) if per_try else None
        try:
            with scope if scope is not None else _NO_SCOPE:
                begun = taken
                taken = None
                if begun is not None and begun.conn is not None:
                    endpoint, conn, started = begun.endpoint, begun.conn, begun.started
                else:
                    endpoint, conn = await cluster.acquire(
                        hash_key=key,
                        exclude=tried,
                        fresh=fresh,
                        picked=begun.endpoint if begun is not None else None,
                    )
                    begun = None
                fresh = False
                ex.upstream = endpoint
                reusable = False
                try:
                    reusable = await resume(
                        c,
                        head,
                        conn,
                        payload,
                        edit=plan.response_headers,
                        hold=hold if retry_left else None,
                        try_scope=scope,
                        taken=begun,
                    )
                except HeldResponse as held:
                    reusable = held.reusable
                    raise
                finally:
                    cluster.release(endpoint, conn, reusable=reusable)
            if scope is not None and scope.cancelled_caught:
                failure = TIMEOUT
            else:
                cluster.report(endpoint, ex.code, now() - started)
                if tries > 1:
                    cluster.end_retry()
                return
        except HeldResponse as held:
            assert endpoint is not None and policy is not None
            cluster.report(endpoint, held.status, now() - started)
            if tries > 1:
                cluster.end_retry()
            tried.append(endpoint)
            # hold() called begin_retry() already.
            shared.stats.policy.inc("meshd_upstream_retries", cluster.name, hold.condition or "")
            ex.retries += 1
            await trio.sleep(backoff_s(policy, tries, shared.rng))
            continue
        except StaleConnectionError:
            if not stale_replaced and replayable and idempotent:
                stale_replaced = True
                fresh = True
                tries -= 1  # the upstream closed an idle connection: not a try of its own
                continue
            failure = RESET
            last = UpstreamResetError("upstream_reset", "upstream closed")
        except (UpstreamConnectError, UpstreamTlsError) as exc:
            failure = CONNECT_FAILURE if exc.reason != "upstream_identity_mismatch" else ""
            last = exc
            endpoint = exc.endpoint if isinstance(exc.endpoint, Endpoint) else None
        except UpstreamResetError as exc:
            failure = RESET
            last = exc
        except (UpstreamError, HttpError) as exc:  # no endpoint, overflow, a bad response
            last = exc
        if endpoint is not None:
            cluster.report(endpoint, 0, now() - started)
            tried.append(endpoint)
        if tries > 1:
            cluster.end_retry()
        if (
            failure
            and policy is not None
            and retry_left
            and not ex.head_sent
            and (failure == CONNECT_FAILURE or (replayable and idempotent))
        ):
            condition = hold.condition = failure_condition(policy, failure)
            if condition is not None and cluster.begin_retry():
                shared.stats.policy.inc("meshd_upstream_retries", cluster.name, condition)
                ex.retries += 1
                await trio.sleep(backoff_s(policy, tries, shared.rng))
                continue
        shared.stats.upstream_error(cluster.name, last.reason)
        await c.respond_error(last)
        return


class _NoScope:
    """A context manager that does nothing (no per-try deadline)."""

    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


_NO_SCOPE: Final = _NoScope()


async def _buffer_body(c: HttpConnection, parts: list[bytes], chunked: bool) -> None:
    """Read the request body into ``parts`` until its end, or past the replay limit."""
    ex = c.exchange
    assert ex is not None
    parser = c.parser
    while not ex.body_done and ex.bytes_in <= REPLAY_LIMIT:
        data = await c.down.receive_some()
        if not data:
            raise trio.BrokenResourceError("client closed mid-body")
        parser.feed(data)
        ex.body_done = c.gather_body(parts, chunked)
