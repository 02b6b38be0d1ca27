"""One response on its way downstream, sans-IO: :class:`ResponseRelay`.

Fed the upstream's reads, it gives the bytes to send downstream: the head as sent (the bytes
that came when the proxy changes nothing in them, else made anew with the framing and the
header edits that apply), the body (chunked for the client when it must be). A response whose
status a retry policy retries is *held* instead: its body read and dropped, and
:class:`HeldResponse` raised. :mod:`meshd.http.relay` (a task) and :mod:`meshd.http.lane` (the
dispatcher's callbacks) drive it.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TYPE_CHECKING, Final, NoReturn

import trio

from meshd.cluster.pool import UpstreamConnection
from meshd.errors import UpstreamResetError
from meshd.http.codec import (
    CHUNKED,
    NO_BODY,
    UNTIL_CLOSE,
    HttpError,
    RequestHead,
    ResponseHead,
    ResponseParser,
)
from meshd.http.decide import HeaderEdit
from meshd.http.quick import response_fields
from meshd.http.serialize import chunk, response_head_bytes

if TYPE_CHECKING:
    from meshd.http.connection import HttpConnection

__all__ = ["BROKEN", "LAST_CHUNK", "HeldResponse", "Hold", "ResponseRelay", "StaleConnectionError"]

LAST_CHUNK: Final = b"0\r\n\r\n"
BROKEN: Final = (trio.BrokenResourceError, trio.ClosedResourceError)

#: Called with a final response's status: True to hold it for a retry.
Hold = Callable[[int], bool]


class StaleConnectionError(Exception):
    """A reused upstream connection failed before any response byte: safe to send again."""


class HeldResponse(Exception):
    """A response held back for a retry (nothing of it went downstream)."""

    def __init__(self, status: int, *, reusable: bool) -> None:
        super().__init__(status)
        self.status = status
        self.reusable = reusable


class ResponseRelay:
    """One response on its way downstream: fed the upstream's reads, it gives what to send.

    Sans-IO, so a task (:func:`~meshd.http.relay.relay_response`) and the dispatcher's callbacks
    (:mod:`meshd.http.lane`) drive the same steps: :meth:`feed` each read, send what it
    returns then call :meth:`sent`, until :attr:`tunnel` is set (a 101: bytes both ways from
    here) or :attr:`done` (then :meth:`finish`).
    """

    __slots__ = (
        "c",
        "done",
        "down_framing",
        "edit",
        "ex",
        "final",
        "head",
        "held",
        "hold",
        "received",
        "relayed",
        "reused",
        "rp",
        "try_scope",
        "tunnel",
    )

    def __init__(
        self,
        c: HttpConnection,
        head: RequestHead,
        conn: UpstreamConnection,
        *,
        edit: HeaderEdit | None,
        hold: Hold | None,
        try_scope: trio.CancelScope | None,
    ) -> None:
        ex = c.exchange
        assert ex is not None
        self.c = c
        self.ex = ex
        self.head = head
        self.edit = edit
        self.hold = hold
        self.try_scope = try_scope
        self.reused = conn.reused
        rp: ResponseParser | None = conn.protocol_state
        if rp is None:
            rp = conn.protocol_state = ResponseParser()
        cfg = c.cfg
        rp.reset(
            head_request=head.method == b"HEAD",
            max_head_bytes=cfg.max_response_head_bytes,
            max_headers=cfg.max_response_headers,
            # Whether it may be relayed as it came, as things stand (feed checks again).
            as_sent=_as_came(edit, head, close=_closing(c, head)),
        )
        self.rp = rp
        self.down_framing = NO_BODY
        self.final: ResponseHead | None = None
        #: The status of a response held for a retry (0: none).
        self.held = 0
        self.received = False
        self.relayed = False
        #: After a 101: the bytes that followed its head (None: no tunnel).
        self.tunnel: bytes | None = None
        #: The response is complete, or ended with the connection.
        self.done = False

    def broken(self, exc: BaseException) -> NoReturn:
        """Reading from the upstream failed with ``exc``: raise what that means."""
        if self.held:
            raise HeldResponse(self.held, reusable=False) from exc
        if self.reused and not self.received:
            raise StaleConnectionError from exc
        raise UpstreamResetError("upstream_reset", "connection reset") from exc

    def feed(self, data: bytes) -> bytes | None:
        """Take one read of the upstream (``b""``: its end); returns the bytes to send
        downstream, if any, then call :meth:`sent`."""
        held = self.held
        if not data:
            if held:
                raise HeldResponse(held, reusable=False)
            final = self.final
            if final is not None and final.framing == UNTIL_CLOSE:
                self.done = True
                return LAST_CHUNK if self.down_framing == CHUNKED else None
            if self.reused and not self.received:
                raise StaleConnectionError
            raise UpstreamResetError("upstream_reset", "upstream closed mid-response")
        self.received = True
        rp = self.rp
        try:
            tail = rp.feed(data)
        except HttpError as exc:
            if held:
                raise HeldResponse(held, reusable=False) from exc
            raise
        if held:
            rp.body.clear()
            if rp.complete:
                raise HeldResponse(held, reusable=rp.heads == [] and not rp.extra)
            return None
        c = self.c
        head = self.head
        ex = self.ex
        out: list[bytes] = []
        while rp.heads:
            rh = rp.heads.pop(0)
            if rh.status < 200 and rh.status != 101:
                if head.version == b"1.1":
                    out.append(response_head_bytes(rh, NO_BODY, close=False))
                continue
            if rh.status == 101 and head.upgrade is None:
                # Switching protocols nobody asked for would turn this connection into a
                # raw tunnel past every HTTP check: refused, and both connections end.
                c.close_after = True
                raise HttpError("upstream_unexpected_upgrade", "101 without an Upgrade request")
            hold = self.hold
            if hold is not None and not self.relayed and not out and hold(rh.status):
                # Retried: nothing of this response goes downstream. Its body is read and
                # dropped so the connection may serve again.
                self.held = rh.status
                rp.body.clear()
                if rp.complete:
                    raise HeldResponse(rh.status, reusable=rh.keep_alive and not rp.extra)
                return None
            self.final = rh
            try_scope = self.try_scope
            if try_scope is not None:
                # The response is the client's now: only the route's deadline applies.
                try_scope.deadline = math.inf
            down_framing, close = _response_framing(c, head, rh)
            self.down_framing = down_framing
            ex.code = rh.status
            edit = self.edit
            whole = rp.whole
            if whole is not None:
                if _as_came(edit, head, close=close):
                    # Nothing to change (no hop-by-hop field but the line cut, the same
                    # framing, no header edit, the connection kept): the bytes that came.
                    for piece in rp.body:
                        ex.bytes_out += len(piece)
                    rp.body.clear()
                    out.append(whole)
                    continue
                if rp.as_sent:  # the parse only checked the fields: the head is made anew
                    rh.headers = response_fields(whole)
            if edit is not None:
                rh.headers = edit.apply(rh.headers)
            out.append(
                response_head_bytes(
                    rh,
                    down_framing,
                    close=close,
                    http10_keep_alive=head.version == b"1.0" and not close,
                )
            )
        if rp.body:
            chunked = self.down_framing == CHUNKED
            for piece in rp.body:
                ex.bytes_out += len(piece)
                out.append(chunk(piece) if chunked else piece)
            rp.body.clear()
        if rp.complete and self.down_framing == CHUNKED:
            out.append(LAST_CHUNK)
        final = self.final
        if final is not None and final.status == 101:
            self.tunnel = tail or b""
        elif rp.complete:
            self.done = True
        if not out:
            return None
        return b"".join(out) if len(out) > 1 else out[0]

    def sent(self) -> None:
        """What :meth:`feed` returned has gone downstream."""
        self.relayed = True
        self.ex.head_sent = self.final is not None

    def finish(self) -> bool:
        """The response is :attr:`done`: account for the exchange; True if the upstream
        connection may serve another request."""
        ex = self.ex
        self.c.finish(ex)
        rp = self.rp
        if not rp.complete:
            return False  # a body that ran until the upstream closed
        final = self.final
        assert final is not None
        return final.keep_alive and not rp.extra and ex.body_done


def _response_framing(c: HttpConnection, head: RequestHead, rh: ResponseHead) -> tuple[int, bool]:
    """How the response body goes downstream, and whether the connection closes after."""
    close = _closing(c, head)
    framing = rh.framing
    if framing in (CHUNKED, UNTIL_CLOSE):
        if head.version == b"1.1":
            framing = CHUNKED
        else:
            framing = UNTIL_CLOSE
            close = True
    if close:
        c.close_after = True
    return framing, close


def _as_came(edit: HeaderEdit | None, head: RequestHead, *, close: bool) -> bool:
    """Whether a response the one-pass parse took whole goes downstream as the bytes that
    came: no header edit, an HTTP/1.1 request, the client's connection kept."""
    return edit is None and not close and head.version == b"1.1"


def _closing(c: HttpConnection, head: RequestHead) -> bool:
    """Whether the client's connection closes after this response."""
    ex = c.exchange
    body_unread = ex is not None and not ex.body_done
    return c.close_after or not head.keep_alive or c.shared.draining or body_unread
