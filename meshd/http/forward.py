"""The upstream exchange of one request: faults, mirroring, tries and retries.

:func:`forward` carries out a :class:`~meshd.http.decide.Plan` through the cluster API
(:mod:`meshd.cluster.runtime`): ``admit`` once, then per try ``acquire`` (other endpoints than
those tried, when there are), the exchange (:mod:`meshd.http.relay`), ``report`` and
``release``; ``begin_retry``/``end_retry`` around each retry; ``done`` at the end.

Retries follow the route's :class:`~meshcore.model.policy.RetryPolicy` (conditions in
:mod:`meshd.http.retry`): at most ``attempts`` tries, a jittered exponential backoff between
them, a per-try deadline, and never once a response byte has gone downstream. Request bodies
up to :data:`~meshd.http.retry.REPLAY_LIMIT` are buffered for replay; larger (or
``Expect: 100-continue``) bodies stream and are retried only on a connect failure (nothing was
sent). The route's timeout covers all tries. A pooled connection found dead before any
response byte is replaced once for an idempotent request, without counting as a retry.
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
from meshd.http.decide import Plan
from meshd.http.failure import answer_for
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
    backoff_s,
    failure_condition,
    status_condition,
)
from meshd.http.serialize import request_head_bytes
from meshd.http.tracing import next_traceparent

if TYPE_CHECKING:
    from meshd.http.connection import HttpConnection

__all__ = [
    "Taken",
    "forward",
    "one_payload",
    "one_try",
    "outgoing_head",
    "refused",
    "taken_on",
    "target_cluster",
]


async def forward(c: HttpConnection, head: RequestHead, plan: Plan, target: bytes) -> None:
    """Forward the request in flight as ``plan`` says and relay (or answer) its response."""
    ex = c.exchange
    assert ex is not None
    shared = c.shared
    cluster = target_cluster(c, plan)
    if cluster is None:
        await c.respond(answer_for("no_healthy_upstream", "cluster not in snapshot"))
        return
    if plan.delay_s:
        shared.stats.policy.inc("meshd_faults_injected", plan.route.name, "delay")
        await trio.sleep(plan.delay_s)
    if plan.abort is not None:
        shared.stats.policy.inc("meshd_faults_injected", plan.route.name, "abort")
        await c.respond(plan.abort)
        return
    out = outgoing_head(c, head, plan, target, cluster)
    mirror = plan.mirror is not None and shared.mirror is not None
    try:
        cluster.admit()
    except UpstreamError as exc:
        await refused(c, cluster, exc)
        return
    try:
        if plan.retry is not None or mirror:
            await _tries(c, head, plan, cluster=cluster, out=out, mirror=mirror)
            return
        payload = one_payload(c, head, out)
        key = cluster.hash_key(head.headers, c.peer_ip) if cluster.hashes else None
        await one_try(c, head, plan, cluster, payload=payload, key=key, taken=None)
    finally:
        cluster.done()


def target_cluster(c: HttpConnection, plan: Plan) -> ClusterRuntime | None:
    """The plan's cluster (None: not in the snapshot), named in the exchange."""
    cluster = c.cfg.clusters.get(plan.cluster)
    if cluster is not None:
        ex = c.exchange
        assert ex is not None
        ex.destination = cluster.service
        ex.cluster = cluster
    return cluster


def outgoing_head(
    c: HttpConnection, head: RequestHead, plan: Plan, target: bytes, cluster: ClusterRuntime
) -> bytes:
    """The request head as sent upstream (the trace continued, the client's address added)."""
    ex = c.exchange
    assert ex is not None
    traceparent = ex.traceparent = next_traceparent(
        head.traceparent, c.shared.trace_sample_rate, c.shared.rng, ex.ids
    )
    xff = head.xff + b", " + c.peer_ip if head.xff else c.peer_ip
    return request_head_bytes(
        head,
        plan.target or target,
        ex.request_id or b"",
        traceparent,
        xff,
        default_host=cluster.service,
        headers=plan.headers,
    )


def one_payload(c: HttpConnection, head: RequestHead, out: bytes) -> bytes:
    """The head and as much of the body as came with it (all of it when
    ``ex.body_done``): what a single try sends first."""
    ex = c.exchange
    assert ex is not None
    first = [out]
    if head.framing != NO_BODY:
        ex.body_done = c.gather_body(first, head.framing == CHUNKED)
    else:
        ex.body_done = True
    payload = b"".join(first) if len(first) > 1 else out
    ex.bytes_in += len(payload)
    return payload


async def refused(c: HttpConnection, cluster: ClusterRuntime, exc: UpstreamError) -> None:
    """``admit`` refused the request (a circuit breaker's limit)."""
    c.shared.stats.upstream_error(cluster.name, exc.reason)
    await c.respond_error(exc)


class Taken:
    """A try begun outside the task (:mod:`meshd.http.lane`), for :func:`one_try` to go on
    with: the endpoint picked, the connection acquired (None: to connect), and how far the
    try got."""

    __slots__ = ("conn", "endpoint", "error", "pending", "relay", "rest", "started")

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


async def one_try(
    c: HttpConnection,
    head: RequestHead,
    plan: Plan,
    cluster: ClusterRuntime,
    *,
    payload: bytes,
    key: bytes | None,
    taken: Taken | None,
) -> None:
    """The request without a retry policy: one try (the hot path), or ``taken`` on. A pooled
    connection the upstream closed meanwhile fails before any response byte; such a request
    is sent again once on a new connection when nothing is lost by it."""
    ex = c.exchange
    assert ex is not None
    for attempt in (0, 1):
        if taken is not None and taken.conn is not None:
            endpoint, conn, started = taken.endpoint, taken.conn, taken.started
        else:
            picked = taken.endpoint if taken is not None else None
            taken = None
            started = now()
            try:
                endpoint, conn = await cluster.acquire(
                    hash_key=key, fresh=attempt == 1, picked=picked
                )
            except UpstreamError as exc:
                # Only a failed connect is the endpoint's fault; an overflow is this sidecar's.
                if isinstance(exc, UpstreamConnectError | UpstreamTlsError) and isinstance(
                    exc.endpoint, Endpoint
                ):
                    cluster.report(exc.endpoint, 0, now() - started)
                c.shared.stats.upstream_error(cluster.name, exc.reason)
                await c.respond_error(exc)
                return
        ex.upstream = endpoint
        reusable = False
        resend = False
        try:
            if ex.body_done:
                relay: ResponseRelay | None = None
                pending = b""
                rest = payload
                if taken is not None:
                    begun = taken
                    taken = None
                    if begun.error is not None:
                        raise begun.error
                    relay, pending, rest = begun.relay, begun.pending, begun.rest
                if relay is None:
                    try:
                        await conn.stream.send_all(rest)
                    except BROKEN as exc:
                        raise send_failure(conn) from exc
                reusable = await relay_response(
                    c,
                    head,
                    conn=conn,
                    edit=plan.response_headers,
                    hold=None,
                    try_scope=None,
                    relay=relay,
                    pending=pending,
                )
            else:
                reusable = await exchange_with(c, head, conn, payload, edit=plan.response_headers)
            cluster.report(endpoint, ex.code, now() - started)
            return
        except StaleConnectionError:
            # Decided here, acted on after the release (mypyc has no continue in a finally).
            resend = attempt == 0 and ex.body_done and head.method in IDEMPOTENT
            failure: UpstreamError | HttpError = UpstreamResetError(
                "upstream_reset", "upstream closed"
            )
        except (UpstreamResetError, HttpError) as exc:
            # Reset, or a response that doesn't parse: 502, or a reset client once
            # the response head has gone out.
            failure = exc
        finally:
            cluster.release(endpoint, conn, reusable=reusable)
        if resend:
            continue
        cluster.report(endpoint, 0, now() - started)
        c.shared.stats.upstream_error(cluster.name, failure.reason)
        await c.respond_error(failure)
        return


async def taken_on(
    c: HttpConnection,
    head: RequestHead,
    plan: Plan,
    cluster: ClusterRuntime,
    *,
    payload: bytes,
    key: bytes | None,
    taken: Taken | None,
) -> None:
    """:func:`one_try` for a request admitted outside the task; ends it in the cluster."""
    try:
        await one_try(c, head, plan, cluster, payload=payload, key=key, taken=taken)
    finally:
        cluster.done()


async def _tries(
    c: HttpConnection,
    head: RequestHead,
    plan: Plan,
    *,
    cluster: ClusterRuntime,
    out: bytes,
    mirror: bool,
) -> None:
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
    ex.bytes_in += len(payload)
    idempotent = head.method in IDEMPOTENT
    attempts = policy.attempts if policy is not None else 1
    per_try = policy.per_try_timeout_s if policy is not None else None
    key = cluster.hash_key(head.headers, c.peer_ip)
    tried: list[Endpoint] = []
    tries = 0
    stale_replaced = False
    fresh = False
    condition: str | None = None
    retry_left = False

    def hold(status: int) -> bool:
        # A retriable status is held back (never relayed) while a retry may follow.
        nonlocal condition
        if policy is None or status < 200 or not (retry_left and replayable and idempotent):
            return False
        condition = status_condition(policy, status)
        return condition is not None and cluster.begin_retry()

    while True:
        tries += 1
        retry_left = tries < attempts
        last: UpstreamError | HttpError = UpstreamError("upstream_timeout", "per-try timeout")
        failure = ""
        started = now()
        endpoint: Endpoint | None = None
        scope = trio.CancelScope(deadline=trio.current_time() + per_try) if per_try else None
        try:
            with scope if scope is not None else _NO_SCOPE:
                endpoint, conn = await cluster.acquire(hash_key=key, exclude=tried, fresh=fresh)
                fresh = False
                ex.upstream = endpoint
                reusable = False
                try:
                    reusable = await exchange_with(
                        c,
                        head,
                        conn,
                        payload,
                        edit=plan.response_headers,
                        hold=hold if retry_left else None,
                        try_scope=scope,
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
            shared.stats.policy.inc("meshd_upstream_retries", cluster.name, condition or "")
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
            condition = failure_condition(policy, failure)
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
