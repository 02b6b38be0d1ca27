"""The upstream exchange of one request: faults, then one try, or the retry policy's tries.

:func:`forward` carries out a :class:`~meshd.http.decide.Plan` through the cluster API
(:mod:`meshd.cluster.runtime`): a fault's delay or abort, ``admit`` once, then a request
without a retry policy takes :func:`one_try` (``acquire``, the exchange of
:mod:`meshd.http.relay`, ``report``, ``release``), one with a policy (or mirrored) the tries of
:mod:`meshd.http.tries`; ``done`` at the end. The route's timeout covers all tries. A pooled
connection found dead before any response byte is replaced once for an idempotent request,
without counting as a retry.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import trio

from meshcore.model import Endpoint
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
from meshd.http.relay import StaleConnectionError
from meshd.http.retry import IDEMPOTENT
from meshd.http.serialize import request_head_bytes
from meshd.http.tracing import next_traceparent
from meshd.http.tries import Taken, resume, tries

if TYPE_CHECKING:
    from meshd.http.connection import HttpConnection

__all__ = [
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
            await tries(c, head, plan, cluster=cluster, out=out, mirror=mirror)
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
    return payload


async def refused(c: HttpConnection, cluster: ClusterRuntime, exc: UpstreamError) -> None:
    """``admit`` refused the request (a circuit breaker's limit)."""
    c.shared.stats.upstream_error(cluster.name, exc.reason)
    await c.respond_error(exc)


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
            begun = taken
            taken = None
            reusable = await resume(c, head, conn, payload, edit=plan.response_headers, taken=begun)
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
