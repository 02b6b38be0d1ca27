"""One try of the upstream exchange: send the request on a connection, relay the response.

:func:`exchange_with` sends the request (head and the body gathered so far; the rest of a
streamed body goes up while the response comes down), then relays the response downstream
through a :class:`~meshd.http.response_relay.ResponseRelay` (which holds a response a retry
policy retries: :class:`HeldResponse`, no byte of it reaches the client).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import trio

from meshd.cluster.pool import UpstreamConnection
from meshd.errors import UpstreamResetError
from meshd.http.codec import (
    CHUNKED,
    HttpError,
    RequestHead,
)
from meshd.http.decide import HeaderEdit
from meshd.http.phase import Phase
from meshd.http.response_relay import (
    BROKEN,
    HeldResponse,
    Hold,
    ResponseRelay,
    StaleConnectionError,
)
from meshd.net.pump import pump
from meshd.net.stream import Stream

if TYPE_CHECKING:
    from meshd.http.connection import HttpConnection

__all__ = [
    "BROKEN",
    "HeldResponse",
    "ResponseRelay",
    "StaleConnectionError",
    "exchange_with",
    "relay_response",
    "send_failure",
]


async def exchange_with(
    c: HttpConnection,
    head: RequestHead,
    conn: UpstreamConnection,
    payload: bytes,
    *,
    edit: HeaderEdit | None,
    hold: Hold | None = None,
    try_scope: trio.CancelScope | None = None,
) -> bool:
    """Send the request on ``conn`` and relay the response; True if ``conn`` is reusable."""
    ex = c.exchange
    assert ex is not None
    up = conn.stream
    try:
        await up.send_all(payload)
    except BROKEN as exc:
        raise send_failure(conn) from exc
    if ex.body_done:
        return await relay_response(c, head, conn=conn, edit=edit, hold=hold, try_scope=try_scope)
    # Body and response move at once: an upstream may answer before reading the body,
    # and a client waiting on "Expect: 100-continue" sends it only after the 100.
    # Neither task raises through the nursery (that would wrap errors in groups).
    failure: BaseException | None = None
    reusable = False
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_send_body, c, up, head.framing == CHUNKED, nursery.cancel_scope)
        try:
            reusable = await relay_response(
                c, head, conn=conn, edit=edit, hold=None, try_scope=try_scope
            )
        except (UpstreamResetError, HttpError, StaleConnectionError, *BROKEN) as exc:
            failure = exc
        if not ex.body_done:
            # The upstream answered before the whole body came (e.g. 413), or failed:
            # the rest of the body is still on its way, so this connection must end.
            nursery.cancel_scope.cancel()
            c.close_after = True
            reusable = False
    body_failure = c.body_failure
    if body_failure is not None:
        c.body_failure = None
        raise body_failure
    if failure is not None:
        raise failure
    return reusable


def send_failure(conn: UpstreamConnection) -> Exception:
    """What a failed send of the request on ``conn`` means (raise it from the send's error)."""
    if conn.reused:
        return StaleConnectionError()
    return UpstreamResetError("upstream_reset", "send failed")


async def _send_body(c: HttpConnection, up: Stream, chunked: bool, scope: trio.CancelScope) -> None:
    ex = c.exchange
    assert ex is not None
    parser = c.parser
    parts: list[bytes] = []
    try:
        while True:
            done = c.gather_body(parts, chunked)
            if parts:
                try:
                    await up.send_all(b"".join(parts))
                except BROKEN:
                    # The upstream stopped reading; its response (if any) still counts.
                    c.close_after = True
                    return
                parts.clear()
            if done:
                ex.body_done = True
                return
            data = await c.down.receive_some()
            if not data:
                raise trio.BrokenResourceError("client closed mid-body")
            parser.feed(data)
    except (HttpError, *BROKEN) as exc:
        # The client's side failed: nothing more can be relayed to it either.
        c.body_failure = exc
        scope.cancel()


async def relay_response(
    c: HttpConnection,
    head: RequestHead,
    *,
    conn: UpstreamConnection,
    edit: HeaderEdit | None,
    hold: Hold | None,
    try_scope: trio.CancelScope | None,
    relay: ResponseRelay | None = None,
    pending: bytes = b"",
) -> bool:
    """Relay the response to the request sent on ``conn``; True if ``conn`` is reusable.

    ``relay``/``pending``: a relay begun elsewhere (:mod:`meshd.http.lane`) and the bytes it
    left to send downstream.
    """
    if relay is None:
        relay = ResponseRelay(c, head, conn, edit=edit, hold=hold, try_scope=try_scope)
    down = c.down
    up = conn.stream
    if pending:
        await down.send_all(pending)
        relay.sent()
    while True:
        tunnel = relay.tunnel
        if tunnel is not None:
            await _tunnel(c, up, tunnel)
            return False
        if relay.done:
            return relay.finish()
        try:
            data = await up.receive_later()
        except BROKEN as exc:
            relay.broken(exc)
        out = relay.feed(data)
        if out is not None:
            await down.send_all(out)
            relay.sent()


async def _tunnel(c: HttpConnection, up: Stream, tail: bytes) -> None:
    """After a 101: bytes both ways until either side is done."""
    ex = c.exchange
    assert ex is not None
    c.phase = Phase.TUNNEL
    c.deadline = math.inf  # the pump keeps its own idle timeout
    c.close_after = True
    c.finish(ex)
    c.exchange = None
    await pump(
        c.down,
        up,
        idle_timeout_s=c.cfg.idle_timeout_s,
        initial_to_up=bytes(c.parser.upgrade_tail or b""),
        initial_to_down=tail,
    )
