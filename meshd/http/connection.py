"""One downstream HTTP/1.1 connection, as an explicit state machine.

Phases (:class:`Phase`)::

    IDLE --first byte of a head that doesn't come whole--> HEAD --head--> REQUEST
    IDLE --whole head--> REQUEST --response done, keep-alive--> IDLE
    REQUEST --101 Switching Protocols--> TUNNEL --> CLOSING
    any --client gone, close, drain, error--> CLOSING

Per request: normalize the target, apply the escaped-slash action, the access policy, then
the pure decision step (:mod:`meshd.http.decide`) gives a plan or an answer; the upstream
exchange (:mod:`meshd.http.forward`) carries out a plan; :mod:`meshd.http.failure` renders
every answer the proxy gives itself.

Each connection has one deadline, a plain attribute moved at every phase (keep-alive idle,
request head, route timeout) and enforced by :meth:`ProxyShared.run_deadlines`; the phase the
connection was in when it passed decides the answer (nothing, 408, 504, or a reset once a
response head is out).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable
from typing import Final, cast

import trio

from meshcore.pathnorm import MalformedPath, normalize_target
from meshd.context import ConfigSource, ProxyShared, now
from meshd.errors import PROXY_ERRORS, ProxyError
from meshd.http import codec
from meshd.http.codec import CHUNKED, EV_DATA, EV_END, NO_BODY, HttpError, RequestHead
from meshd.http.config import HttpListenerConfig
from meshd.http.decide import Answer, Plan, check_escaped_slashes, decide
from meshd.http.exchange import Exchange, record
from meshd.http.failure import answer_for, error_answer, render
from meshd.http.forward import forward
from meshd.http.lane import Lane
from meshd.http.phase import Phase
from meshd.http.serialize import chunk
from meshd.http.strict import valid_host
from meshd.http.tracing import request_ids
from meshd.net.stream import ProxyStream
from meshd.net.waits import EPOLL_WAITS, ServedStream

__all__ = ["HttpConnection", "Phase", "serve_http"]


IDLE: Final = Phase.IDLE
HEAD: Final = Phase.HEAD
REQUEST: Final = Phase.REQUEST
TUNNEL: Final = Phase.TUNNEL
CLOSING: Final = Phase.CLOSING

LAST_CHUNK: Final = b"0\r\n\r\n"
#: Requests served back to back on one connection before yielding to other tasks anyway.
_YIELD_EVERY: Final = 16
#: Most requests a connection waits for by parking after reads without parking missed.
_PROBE_BACKOFF_MAX: Final = 16
BROKEN: Final = (trio.BrokenResourceError, trio.ClosedResourceError)
PEER_IDENTITY: Final = b"x-meshd-peer-identity"
#: Plain connections' simple requests go through the fast lane (:mod:`meshd.http.lane`).
LANE: Final = EPOLL_WAITS


class HttpConnection:
    """Serves the requests of one downstream connection, one at a time, in order."""

    __slots__ = (
        "body_failure",
        "cfg",
        "close_after",
        "deadline",
        "down",
        "exchange",
        "head",
        "lane",
        "parser",
        "peer_identity",
        "peer_ip",
        "phase",
        "scope",
        "served",
        "shared",
        "source",
    )

    def __init__(
        self,
        down: ProxyStream,
        cfg: HttpListenerConfig,
        shared: ProxyShared,
        source: ConfigSource | None = None,
        *,
        peer_identity: bytes | None = None,
    ) -> None:
        self.down = down
        #: The client's SPIFFE ID (inbound mTLS), passed to the app as a header.
        self.peer_identity = peer_identity
        self.cfg = cfg
        self.shared = shared
        #: Where a newer configuration of the listener shows up (None: keep ``cfg``).
        self.source = source
        self.parser = codec.RequestParser(cfg.max_head_bytes, cfg.max_headers)
        self.peer_ip = down.peer()[0].encode()
        self.scope = trio.CancelScope()
        self.phase = IDLE
        #: No request after the one in flight (client asked, drain, body left unread...).
        self.close_after = False
        self.exchange: Exchange | None = None
        self.head: RequestHead | None = None
        #: The client's side failed while its body was being streamed upstream.
        self.body_failure: BaseException | None = None
        #: When the current phase times out (trio clock); see :meth:`ProxyShared.run_deadlines`.
        self.deadline = math.inf
        #: Requests answered on this connection.
        self.served = 0
        #: Serves the simple requests of a plain connection without waking this task.
        self.lane: Lane | None = None
        if LANE and hasattr(down, "serve_reads"):  # SocketStream, TlsStream
            self.lane = Lane(self, cast(ServedStream, down))

    def expire(self) -> None:
        """The deadline passed: stop whatever the connection is waiting for."""
        self.deadline = math.inf
        self.scope.cancel()

    def drain(self) -> None:
        """Close after the request in flight, or now if there is none."""
        self.close_after = True
        if self.phase is IDLE and not self.parser.events:
            self.scope.cancel()

    async def serve(self) -> None:
        """Run until the client leaves, an error ends the connection, or a drain."""
        shared = self.shared
        shared.connections.add(self)
        shared.stats.downstream_opened(self.cfg.name)
        try:
            with self.scope:
                try:
                    await self._loop()
                except HttpError as exc:
                    await self._reject(exc)
                except BROKEN:
                    pass
            if self.scope.cancelled_caught:
                await self._on_deadline()
        finally:
            self.phase = CLOSING
            shared.connections.discard(self)
            shared.stats.downstream_closed(self.cfg.name)
            ex = self.exchange
            if ex is not None and ex.code == 0:
                # The client went away mid-request: Envoy's 0 / nginx's 499, for the record.
                ex.code = 499 if not ex.error else ex.code
                self.finish(ex)
            # Not `await aclose()`: its checkpoint would send the task once more through the
            # scheduler (and every frame of its coroutine chain) just before it ends.
            self.down.close_nowait()

    async def _loop(self) -> None:
        idle_timeout = self.cfg.idle_timeout_s
        events = self.parser.events
        # After a response the next request is seldom there yet: park before reading.
        down = self.down
        receive = down.receive_later if down.parks_reads else down.receive_some
        # Unless other connections keep the loop busy: then, once their tasks have had their
        # turn, the client has often sent its next request, and a read without parking saves
        # the wake-up through epoll (5% of the CPU per request at 32 connections). A miss
        # costs a recv, so after misses in a row the probe backs off (1, 2, 4... up to 16
        # requests): a lone client's connection seldom tries it.
        nowait: Callable[[], bytes | None] | None = getattr(down, "receive_nowait", None)
        checkpoint = trio.lowlevel.checkpoint  # looked up once, not twice per request
        lane = self.lane
        backoff = skip = 0
        while not self.close_after:
            self.phase = IDLE
            self.deadline = now() + idle_timeout
            if lane is not None and not events:
                step = await lane.run()
                if step is False:
                    return  # the client has gone
                if step is not True:
                    await step()  # a request the lane began and handed over
                    begun = self.head
                    if begun is None or not begun.keep_alive or self.phase is TUNNEL:
                        return
                    self.served += 1
                else:
                    lane = self.lane  # None once the dispatcher has stopped
                continue
            served = self.served
            # Read here, not in a coroutine of its own: one frame less to pass through on
            # every wake-up of the connection's task.
            while not events:
                data: bytes | bytearray | None = None
                if skip:
                    skip -= 1
                elif nowait is not None and served:
                    await checkpoint()  # the other tasks' turn (and cancellation)
                    data = nowait()
                    if data is None:
                        backoff = min(backoff * 2 or 1, _PROBE_BACKOFF_MAX)
                        skip = backoff
                    else:
                        backoff = 0
                if data is None:
                    data = await receive()
                if not self.take(data):
                    return
            kind, head = events.pop(0)  # the parser queues a head first, always
            assert kind == codec.EV_HEAD and isinstance(head, RequestHead)
            self.phase = REQUEST
            if served + 1 >= self.cfg.max_requests_per_connection:
                # The last request this connection may carry: its answer says so.
                self.close_after = True
            await self._handle(head)
            if not head.keep_alive or self.phase is TUNNEL:
                return
            served = self.served = served + 1
            if served % _YIELD_EVERY == 0:
                # Requests normally wait on the upstream, which yields; a client whose
                # answers are always ready must still not starve the other connections.
                await checkpoint()

    def take(self, data: bytes | bytearray) -> bool:
        """Parse bytes read while waiting for a request head; False at the client's end."""
        parser = self.parser
        if not data:
            if parser.in_head:
                raise HttpError("bad_request", "connection closed inside request head")
            return False
        parser.feed(data)
        if self.phase is IDLE and parser.in_head:
            # The head did not arrive in one piece: it now has a deadline of its own.
            self.phase = HEAD
            self.deadline = now() + self.cfg.headers_timeout_s
        return True

    async def _handle(self, head: RequestHead) -> None:
        target = self.begin(head)
        if isinstance(target, Answer):
            await self.respond(target)
            return
        await self.route(head, target)

    def begin(self, head: RequestHead) -> bytes | Answer:
        """Start the exchange of the request ``head``: its target as routed (normalized),
        or the answer the proxy gives without routing it."""
        source = self.source
        if source is not None:
            latest = source.config
            if latest is not self.cfg and isinstance(latest, HttpListenerConfig):
                self.cfg = latest  # a new snapshot's routes apply from this request on
        cfg = self.cfg
        ex = self.exchange = Exchange(now())
        self.head = head
        ids = ex.ids = request_ids()
        ex.request_id = head.request_id or ids[:32]
        if self.peer_identity is not None:
            # The parser dropped any client-sent copy; this one the TLS handshake verified.
            head.headers.append((PEER_IDENTITY, self.peer_identity))
            ex.source_identity = self.peer_identity
        if self.parser.upgrade_tail is not None:
            # llhttp stops after an Upgrade or CONNECT head: unless the upstream switches
            # protocols, what follows can't be parsed as HTTP, so the connection ends.
            self.close_after = True
        elif head.framing == NO_BODY:
            self._take_end()
        if head.method == b"CONNECT":
            return answer_for("connect_unsupported", "CONNECT is not proxied")
        target = head.target
        if target[:1] != b"/" and target != b"*":
            target = _origin_form(head)
        # The access check, routing and the app all see the same, normalized path.
        try:
            target = normalize_target(target)
        except MalformedPath as exc:
            raise HttpError("bad_request", str(exc)) from exc
        if cfg.escaped_slashes != "keep":
            return check_escaped_slashes(target, cfg.escaped_slashes)
        return target

    async def route(self, head: RequestHead, target: bytes) -> None:
        """The access policy, routing and forwarding of the request begun."""
        guard = self.cfg.guard
        if guard is not None:
            # Access policy (and JWT) before routing; it may edit the headers (claims).
            refusal = await guard.admit(head, self.peer_identity, target)
            if refusal is not None:
                await self.respond(
                    Answer(refusal.status, refusal.error, refusal.detail, refusal.headers)
                )
                return
        plan = self.plan(head, target)
        if isinstance(plan, Answer):
            await self.respond(plan)
            return
        await forward(self, head, plan, target)

    def plan(self, head: RequestHead, target: bytes) -> Plan | Answer:
        """Route the request (past the access policy): a plan, its deadline set, or the
        proxy's answer."""
        ex = self.exchange
        assert ex is not None
        plan = decide(
            self.cfg,
            method=head.method,
            target=target,
            headers=head.headers,
            host=head.host,
            peer_identity=self.peer_identity,
            peer_ip=self.peer_ip,
            rng=self.shared.rng,
        )
        if isinstance(plan, Answer):
            ex.route = plan.route
            return plan
        ex.route = plan.route.name
        self.deadline = ex.start + plan.timeout_s
        return plan

    def gather_body(self, out: list[bytes], chunked: bool) -> bool:
        """Move queued body events into ``out``; True once the request's end is reached."""
        events = self.parser.events
        ex = self.exchange
        assert ex is not None
        while events:
            kind, value = events[0]
            if kind == EV_DATA:
                events.pop(0)
                assert isinstance(value, bytes)
                ex.bytes_in += len(value)
                out.append(chunk(value) if chunked else value)
            elif kind == EV_END:
                events.pop(0)
                if chunked:
                    out.append(LAST_CHUNK)
                return True
            else:
                return True
        return False

    def _take_end(self) -> None:
        events = self.parser.events
        if events and events[0][0] == EV_END:
            events.pop(0)

    async def respond(self, answer: Answer) -> None:
        """Answer the request in flight on the proxy's behalf (see :mod:`meshd.http.failure`)."""
        ex = self.exchange
        assert ex is not None
        head = self.head
        body_pending = head is not None and not ex.body_done and head.framing != NO_BODY
        if body_pending and head is not None:
            ex.body_done = self.gather_body([], head.framing == CHUNKED)
            body_pending = not ex.body_done
        close = body_pending or self.close_after or (head is not None and not head.keep_alive)
        if close:
            self.close_after = True
        ex.code = answer.status
        ex.error = answer.reason
        await self.down.send_all(
            render(
                answer,
                close=close,
                request_id=ex.request_id,
                head_only=head is not None and head.method == b"HEAD",
            )
        )
        ex.head_sent = True
        self.finish(ex)

    async def respond_error(self, exc: ProxyError) -> None:
        """Answer a failure of the request in flight, or reset the client if a head is out."""
        ex = self.exchange
        assert ex is not None
        if ex.head_sent:
            ex.error = exc.reason
            self.abort_downstream()
            return
        await self.respond(error_answer(exc))

    async def _reject(self, exc: HttpError) -> None:
        """Bad input from the client: answer once, then close."""
        self.close_after = True
        ex = self.exchange
        if ex is not None and ex.head_sent:
            ex.error = exc.reason
            self.finish(ex)
            self.abort_downstream()
            return
        if ex is None or ex.code:
            ex = self.exchange = Exchange(now())
        ex.code = exc.status
        ex.error = exc.reason
        ex.head_sent = True
        self.finish(ex)
        with trio.move_on_after(1.0), contextlib.suppress(*BROKEN):
            await self.down.send_all(render(error_answer(exc), close=True))

    async def _on_deadline(self) -> None:
        """A deadline passed: say so if the client is still owed an answer."""
        ex = self.exchange
        if self.phase is HEAD:
            ex = self.exchange = Exchange(now())
            reason = "request_timeout"
        elif self.phase is REQUEST and ex is not None and not ex.head_sent and not ex.code:
            reason = "upstream_timeout"
            self.shared.stats.upstream_error(ex.destination, reason)
        else:
            if ex is not None and self.phase is REQUEST and not ex.code:
                ex.error = "upstream_timeout"
                ex.code = PROXY_ERRORS[ex.error]
                self.finish(ex)
                self.abort_downstream()
            return
        answer = answer_for(reason)
        ex.code = answer.status
        ex.error = reason
        self.finish(ex)
        with trio.move_on_after(1.0), contextlib.suppress(*BROKEN):
            await self.down.send_all(render(answer, close=True, request_id=ex.request_id))

    def abort_downstream(self) -> None:
        """The response head is out but its body can't be finished: reset the client."""
        self.close_after = True
        self.down.reset()

    def finish(self, ex: Exchange) -> None:
        """Account for a finished exchange (once)."""
        if self.exchange is ex:
            self.exchange = None
        record(self.cfg, self.shared, self.head, ex)


def _origin_form(head: RequestHead) -> bytes:
    """``http://host/path?q`` (a client using us as its HTTP proxy) -> ``/path?q``."""
    target = head.target
    scheme, sep, rest = target.partition(b"://")
    if not sep or scheme.lower() not in (b"http", b"https"):
        raise HttpError("bad_request", "unsupported request target")
    # The authority ends at the path or, with an empty path, at the query.
    end = min((i for i in (rest.find(b"/"), rest.find(b"?")) if i >= 0), default=len(rest))
    authority, path = rest[:end], rest[end:]
    if not valid_host(authority):
        raise HttpError("invalid_host", "the target's authority is not host[:port]")
    # The target's authority replaces any Host header (RFC 9112 3.2.2).
    head.headers = [(n, v) for n, v in head.headers if n.lower() != b"host"]
    head.headers.append((b"host", authority))
    head.host = authority
    return path if path.startswith(b"/") else b"/" + path


async def serve_http(
    down: ProxyStream,
    cfg: HttpListenerConfig,
    shared: ProxyShared,
    source: ConfigSource | None = None,
    *,
    peer_identity: bytes | None = None,
) -> None:
    """Accept-loop entry point: serve one downstream connection."""
    await HttpConnection(down, cfg, shared, source, peer_identity=peer_identity).serve()
