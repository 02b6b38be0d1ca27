"""The HTTP/1.1 proxy loop of one downstream connection.

Per request: parse the head, route it, check out a pooled upstream connection, send head and
body, relay the response, give the connection back. Each connection has one deadline, a plain
attribute moved at every phase (keep-alive idle, request head, route timeout) and enforced by
:meth:`ProxyShared.run_deadlines`; what phase the connection was in when it passed decides the
answer (nothing, 408, 504, or a reset once a response head is out)."""

from __future__ import annotations

import contextlib
import math
from typing import Final

import trio

from meshcore.model.policy import Redirect
from meshcore.routing import CompiledRoute
from meshd.cluster.pool import UpstreamConnection
from meshd.cluster.runtime import ClusterRuntime
from meshd.context import ConfigSource, ProxyShared, now
from meshd.errors import PROXY_ERRORS, UpstreamError, UpstreamResetError
from meshd.http import codec
from meshd.http.codec import (
    CHUNKED,
    EV_DATA,
    EV_END,
    NO_BODY,
    UNTIL_CLOSE,
    HttpError,
    RequestHead,
    RequestParser,
    ResponseHead,
    ResponseParser,
)
from meshd.http.config import HttpListenerConfig
from meshd.http.exchange import METHODS, Exchange, record
from meshd.http.pathnorm import normalize_target
from meshd.http.responses import redirect_response, synthetic_response
from meshd.http.serialize import chunk, request_head_bytes, response_head_bytes
from meshd.http.strict import valid_host
from meshd.http.tracing import new_request_id, next_traceparent
from meshd.net.pump import pump
from meshd.net.stream import SocketStream, Stream
from meshd.net.tls import TlsStream

_IDLE: Final = 0
_HEAD: Final = 1
_REQUEST: Final = 2
_TUNNEL: Final = 3

_LAST_CHUNK: Final = b"0\r\n\r\n"
#: Requests served back to back on one connection before yielding to other tasks anyway.
_YIELD_EVERY: Final = 16
_BROKEN = (trio.BrokenResourceError, trio.ClosedResourceError)
#: Methods a proxy may send again when a pooled connection turns out dead (RFC 9110 9.2.2).
_REPLAYABLE: Final = frozenset({b"GET", b"HEAD", b"OPTIONS", b"TRACE", b"PUT", b"DELETE"})


class HttpConnection:
    """Serves the requests of one downstream connection, one at a time, in order."""

    __slots__ = (
        "_body_failure",
        "_close_after",
        "_exchange",
        "_head",
        "_phase",
        "_scope",
        "cfg",
        "deadline",
        "down",
        "parser",
        "peer_identity",
        "peer_ip",
        "shared",
        "source",
    )

    def __init__(
        self,
        down: Stream,
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
        self.parser = RequestParser(cfg.max_head_bytes, cfg.max_headers)
        peer = down.peer() if isinstance(down, SocketStream | TlsStream) else ("", 0)
        self.peer_ip = peer[0].encode()
        self._scope = trio.CancelScope()
        self._phase = _IDLE
        self._close_after = False
        self._exchange: Exchange | None = None
        self._head: RequestHead | None = None
        self._body_failure: BaseException | None = None
        #: When the current phase times out (trio clock); see :meth:`ProxyShared.run_deadlines`.
        self.deadline = math.inf

    def expire(self) -> None:
        """The deadline passed: stop whatever the connection is waiting for."""
        self.deadline = math.inf
        self._scope.cancel()

    def drain(self) -> None:
        """Close after the request in flight, or now if there is none."""
        self._close_after = True
        if self._phase == _IDLE and not self.parser.events:
            self._scope.cancel()

    async def serve(self) -> None:
        """Run until the client leaves, an error ends the connection, or a drain."""
        shared = self.shared
        shared.connections.add(self)
        shared.stats.downstream_opened(self.cfg.name)
        try:
            with self._scope:
                try:
                    await self._loop()
                except HttpError as exc:
                    await self._reject(exc)
                except _BROKEN:
                    pass
            if self._scope.cancelled_caught:
                await self._on_deadline()
        finally:
            shared.connections.discard(self)
            shared.stats.downstream_closed(self.cfg.name)
            ex = self._exchange
            if ex is not None and ex.code == 0:
                # The client went away mid-request: Envoy's 0 / nginx's 499, for the record.
                ex.code = 499 if not ex.error else ex.code
                self._finish(ex)
            await self.down.aclose()

    async def _loop(self) -> None:
        idle_timeout = self.cfg.idle_timeout_s
        served = 0
        while not self._close_after:
            self._phase = _IDLE
            self.deadline = now() + idle_timeout
            head = await self._next_head()
            if head is None:
                return
            self._phase = _REQUEST
            if served + 1 >= self.cfg.max_requests_per_connection:
                # The last request this connection may carry: its answer says so.
                self._close_after = True
            await self._handle(head)
            if not head.keep_alive:
                return
            served += 1
            if served % _YIELD_EVERY == 0:
                # Requests normally wait on the upstream, which yields; a client whose
                # answers are always ready must still not starve the other connections.
                await trio.lowlevel.checkpoint()

    async def _next_head(self) -> RequestHead | None:
        parser = self.parser
        events = parser.events
        down = self.down
        # After a response the next request is seldom there yet: park before reading.
        receive = down.receive_later if isinstance(down, SocketStream) else down.receive_some
        while not events:
            data = await receive()
            if not data:
                if parser.in_head:
                    raise HttpError("bad_request", "connection closed inside request head")
                return None
            parser.feed(data)
            if self._phase == _IDLE and parser.in_head:
                # The head did not arrive in one piece: it now has a deadline of its own.
                self._phase = _HEAD
                self.deadline = now() + self.cfg.headers_timeout_s
        kind, value = events.popleft()
        assert kind == codec.EV_HEAD and isinstance(value, RequestHead)
        return value

    async def _handle(self, head: RequestHead) -> None:
        source = self.source
        if source is not None:
            latest = source.config
            if latest is not self.cfg and isinstance(latest, HttpListenerConfig):
                self.cfg = latest  # a new snapshot's routes apply from this request on
        cfg = self.cfg
        shared = self.shared
        ex = self._exchange = Exchange(now())
        self._head = head
        ex.request_id = head.request_id or new_request_id(shared.rng)
        if self.peer_identity is not None:
            # The parser dropped any client-sent copy; this one the TLS handshake verified.
            head.headers.append((_PEER_IDENTITY, self.peer_identity))
            ex.source_identity = self.peer_identity
        if self.parser.upgrade_tail is not None:
            # llhttp stops after an Upgrade or CONNECT head: unless the upstream switches
            # protocols, what follows can't be parsed as HTTP, so the connection ends.
            self._close_after = True
        elif head.framing == NO_BODY:
            self._take_end()
        if head.method == b"CONNECT":
            await self._respond_error("connect_unsupported", "CONNECT is not proxied")
            return
        target = head.target
        if target[:1] != b"/" and target != b"*":
            target = _origin_form(head)
        # The access check, routing and the app all see the same, normalized path.
        target = normalize_target(target)
        guard = cfg.guard
        if guard is not None:
            # Access policy (and JWT) before routing; it may edit the headers (claims).
            refusal = await guard.admit(head, self.peer_identity, target)
            if refusal is not None:
                await self._respond_error(
                    refusal.error, refusal.detail, status=refusal.status, extra=refusal.headers
                )
                return
        route = cfg.first_route
        if route is None:
            method = METHODS.get(head.method) or head.method.decode("latin-1")
            path, _, query = target.partition(b"?")
            route = cfg.routes.match(method, path.decode("latin-1"), head.headers, query)
        if route is None:
            await self._respond_error("no_route", "no route matches")
            return
        ex.route = route.name
        if route.route.redirect is not None:
            redirect = route.route.redirect
            await self._respond_error("", "", redirect, status=redirect.status)
            return
        self.deadline = ex.start + route.timeout_s
        cluster = cfg.clusters.get(route.pick_cluster())
        if cluster is None:
            await self._respond_error("no_healthy_upstream", "cluster not in snapshot")
            return
        ex.destination = cluster.service
        traceparent = next_traceparent(head.traceparent, shared.trace_sample_rate, shared.rng)
        xff = head.xff + b", " + self.peer_ip if head.xff else self.peer_ip
        out = request_head_bytes(
            head, target, ex.request_id, traceparent, xff, default_host=cluster.service.encode()
        )
        await self._forward(head, route, cluster, out)

    async def _forward(
        self, head: RequestHead, route: CompiledRoute, cluster: ClusterRuntime, out: bytes
    ) -> None:
        ex = self._exchange
        assert ex is not None
        first = [out]
        if head.framing != NO_BODY:
            ex.body_done = self._gather_body(first, head.framing == CHUNKED)
        else:
            ex.body_done = True
        payload = b"".join(first) if len(first) > 1 else out
        hash_key = cluster.hash_key(head.headers, self.peer_ip)
        # A pooled connection the upstream closed meanwhile fails before any response byte;
        # such a request is retried once on a new connection when nothing is lost by it.
        for attempt in (0, 1):
            try:
                endpoint, conn = await cluster.acquire(hash_key=hash_key, fresh=attempt == 1)
            except UpstreamError as exc:
                self.shared.stats.upstream_error(cluster.name, exc.reason)
                await self._respond_error(exc.reason, exc.detail)
                return
            ex.upstream = endpoint
            reusable = False
            try:
                reusable = await self._exchange_with(head, conn, payload)
                return
            except _StaleConnectionError:
                if attempt == 1 or not ex.body_done or head.method not in _REPLAYABLE:
                    self.shared.stats.upstream_error(cluster.name, "upstream_reset")
                    await self._respond_error("upstream_reset", "upstream closed")
                    return
            except (UpstreamResetError, HttpError) as exc:
                # Reset, or a response that doesn't parse: 502, or a reset client once
                # the response head has gone out.
                self.shared.stats.upstream_error(cluster.name, exc.reason)
                if ex.head_sent:
                    ex.error = exc.reason
                    self._abort_downstream()
                    return
                await self._respond_error(exc.reason, exc.detail)
                return
            finally:
                cluster.release(endpoint, conn, reusable=reusable)

    async def _exchange_with(
        self, head: RequestHead, conn: UpstreamConnection, payload: bytes
    ) -> bool:
        """Send the request on ``conn`` and relay the response; True if ``conn`` is reusable."""
        ex = self._exchange
        assert ex is not None
        up = conn.stream
        try:
            await up.send_all(payload)
        except _BROKEN as exc:
            if conn.reused:
                raise _StaleConnectionError from exc
            raise UpstreamResetError("upstream_reset", "send failed") from exc
        ex.bytes_in += len(payload)
        if ex.body_done:
            return await self._relay_response(head, conn)
        # Body and response move at once: an upstream may answer before reading the body,
        # and a client waiting on "Expect: 100-continue" sends it only after the 100.
        # Neither task raises through the nursery (that would wrap errors in groups).
        failure: BaseException | None = None
        reusable = False
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._send_body, up, head.framing == CHUNKED, nursery.cancel_scope)
            try:
                reusable = await self._relay_response(head, conn)
            except (UpstreamResetError, HttpError, _StaleConnectionError, *_BROKEN) as exc:
                failure = exc
            if not ex.body_done:
                # The upstream answered before the whole body came (e.g. 413), or failed:
                # the rest of the body is still on its way, so this connection must end.
                nursery.cancel_scope.cancel()
                self._close_after = True
                reusable = False
        body_failure = self._body_failure
        if body_failure is not None:
            self._body_failure = None
            raise body_failure
        if failure is not None:
            raise failure
        return reusable

    def _gather_body(self, out: list[bytes], chunked: bool) -> bool:
        """Move queued body events into ``out``; True once the request's end is reached."""
        events = self.parser.events
        ex = self._exchange
        assert ex is not None
        while events:
            kind, value = events[0]
            if kind == EV_DATA:
                events.popleft()
                assert isinstance(value, bytes)
                ex.bytes_in += len(value)
                out.append(chunk(value) if chunked else value)
            elif kind == EV_END:
                events.popleft()
                if chunked:
                    out.append(_LAST_CHUNK)
                return True
            else:
                return True
        return False

    async def _send_body(self, up: Stream, chunked: bool, scope: trio.CancelScope) -> None:
        ex = self._exchange
        assert ex is not None
        parser = self.parser
        parts: list[bytes] = []
        try:
            while True:
                done = self._gather_body(parts, chunked)
                if parts:
                    try:
                        await up.send_all(b"".join(parts))
                    except _BROKEN:
                        # The upstream stopped reading; its response (if any) still counts.
                        self._close_after = True
                        return
                    parts.clear()
                if done:
                    ex.body_done = True
                    return
                data = await self.down.receive_some()
                if not data:
                    raise trio.BrokenResourceError("client closed mid-body")
                parser.feed(data)
        except (HttpError, *_BROKEN) as exc:
            # The client's side failed: nothing more can be relayed to it either.
            self._body_failure = exc
            scope.cancel()

    async def _relay_response(self, head: RequestHead, conn: UpstreamConnection) -> bool:
        ex = self._exchange
        assert ex is not None
        down = self.down
        up = conn.stream
        reused = conn.reused
        rp: ResponseParser | None = conn.protocol_state
        if rp is None:
            rp = conn.protocol_state = ResponseParser()
        cfg = self.cfg
        rp.reset(
            head_request=head.method == b"HEAD",
            max_head_bytes=cfg.max_response_head_bytes,
            max_headers=cfg.max_response_headers,
        )
        down_framing = NO_BODY
        final: ResponseHead | None = None
        received = False
        while True:
            try:
                data = await up.receive_later()
            except _BROKEN as exc:
                if reused and not received:
                    raise _StaleConnectionError from exc
                raise UpstreamResetError("upstream_reset", "connection reset") from exc
            if not data:
                if final is not None and final.framing == UNTIL_CLOSE:
                    if down_framing == CHUNKED:
                        await down.send_all(_LAST_CHUNK)
                    return False
                if reused and not received:
                    raise _StaleConnectionError
                raise UpstreamResetError("upstream_reset", "upstream closed mid-response")
            received = True
            tail = rp.feed(data)
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
                    self._close_after = True
                    raise HttpError("upstream_unexpected_upgrade", "101 without an Upgrade request")
                final = rh
                down_framing, close = self._response_framing(head, rh)
                ex.code = rh.status
                out.append(
                    response_head_bytes(
                        rh,
                        down_framing,
                        close=close,
                        http10_keep_alive=head.version == b"1.0" and not close,
                    )
                )
            if rp.body:
                for piece in rp.body:
                    ex.bytes_out += len(piece)
                    out.append(chunk(piece) if down_framing == CHUNKED else piece)
                rp.body.clear()
            if rp.complete and down_framing == CHUNKED:
                out.append(_LAST_CHUNK)
            if out:
                await down.send_all(b"".join(out) if len(out) > 1 else out[0])
                ex.head_sent = final is not None
            if final is not None and final.status == 101:
                await self._tunnel(up, tail or b"")
                return False
            if rp.complete:
                assert final is not None
                self._finish(ex)
                return final.keep_alive and not rp.extra and ex.body_done

    def _response_framing(self, head: RequestHead, rh: ResponseHead) -> tuple[int, bool]:
        """How the response body goes downstream, and whether the connection closes after."""
        ex = self._exchange
        body_unread = ex is not None and not ex.body_done
        close = self._close_after or not head.keep_alive or self.shared.draining or body_unread
        framing = rh.framing
        if framing in (CHUNKED, UNTIL_CLOSE):
            if head.version == b"1.1":
                framing = CHUNKED
            else:
                framing = UNTIL_CLOSE
                close = True
        if close:
            self._close_after = True
        return framing, close

    async def _tunnel(self, up: Stream, tail: bytes) -> None:
        """After a 101: bytes both ways until either side is done."""
        ex = self._exchange
        assert ex is not None
        self._phase = _TUNNEL
        self.deadline = math.inf  # the pump keeps its own idle timeout
        self._close_after = True
        self._finish(ex)
        self._exchange = None
        await pump(
            self.down,
            up,
            idle_timeout_s=self.cfg.idle_timeout_s,
            initial_to_up=bytes(self.parser.upgrade_tail or b""),
            initial_to_down=tail,
        )

    def _take_end(self) -> None:
        events = self.parser.events
        if events and events[0][0] == EV_END:
            events.popleft()

    async def _respond_error(
        self,
        reason: str,
        detail: str,
        redirect: Redirect | None = None,
        *,
        status: int = 0,
        extra: tuple[tuple[bytes, bytes], ...] = (),
    ) -> None:
        """Answer the request in flight on the proxy's behalf.

        ``status`` is the reason's in :data:`PROXY_ERRORS`, unless given: access policy
        refusals and redirects bring their own.
        """
        status = status or PROXY_ERRORS[reason]
        ex = self._exchange
        assert ex is not None
        head = self._head
        body_pending = head is not None and not ex.body_done and head.framing != NO_BODY
        if body_pending and head is not None:
            ex.body_done = self._gather_body([], head.framing == CHUNKED)
            body_pending = not ex.body_done
        close = body_pending or self._close_after or (head is not None and not head.keep_alive)
        if close:
            self._close_after = True
        ex.code = status
        ex.error = reason
        if redirect is not None and head is not None:
            answer = redirect_response(
                redirect, host=head.host, target=head.target, close=close, request_id=ex.request_id
            )
        else:
            answer = synthetic_response(
                status,
                reason,
                close=close,
                request_id=ex.request_id,
                detail=detail,
                head_only=head is not None and head.method == b"HEAD",
                extra_headers=extra,
            )
        await self.down.send_all(answer)
        ex.head_sent = True
        self._finish(ex)

    async def _reject(self, exc: HttpError) -> None:
        """Bad input from the client: answer once, then close."""
        self._close_after = True
        ex = self._exchange
        if ex is not None and ex.head_sent:
            ex.error = exc.reason
            self._finish(ex)
            self._abort_downstream()
            return
        if ex is None or ex.code:
            ex = self._exchange = Exchange(now())
        ex.code = exc.status
        ex.error = exc.reason
        ex.head_sent = True
        self._finish(ex)
        with trio.move_on_after(1.0), contextlib.suppress(*_BROKEN):
            await self.down.send_all(
                synthetic_response(exc.status, exc.reason, close=True, detail=exc.detail)
            )

    async def _on_deadline(self) -> None:
        """A deadline passed: say so if the client is still owed an answer."""
        ex = self._exchange
        if self._phase == _HEAD:
            ex = self._exchange = Exchange(now())
            reason = "request_timeout"
        elif self._phase == _REQUEST and ex is not None and not ex.head_sent and not ex.code:
            reason = "upstream_timeout"
            self.shared.stats.upstream_error(ex.destination, reason)
        else:
            if ex is not None and self._phase == _REQUEST and not ex.code:
                ex.error = "upstream_timeout"
                ex.code = PROXY_ERRORS[ex.error]
                self._finish(ex)
                self._abort_downstream()
            return
        status = PROXY_ERRORS[reason]
        ex.code = status
        ex.error = reason
        self._finish(ex)
        with trio.move_on_after(1.0), contextlib.suppress(*_BROKEN):
            await self.down.send_all(
                synthetic_response(status, reason, close=True, request_id=ex.request_id)
            )

    def _abort_downstream(self) -> None:
        """The response head is out but its body can't be finished: reset the client."""
        self._close_after = True
        if isinstance(self.down, SocketStream | TlsStream):
            self.down.reset()

    def _finish(self, ex: Exchange) -> None:
        """Account for a finished exchange (once)."""
        if self._exchange is ex:
            self._exchange = None
        record(self.cfg, self.shared, self._head, ex)


_PEER_IDENTITY: Final = b"x-meshd-peer-identity"


class _StaleConnectionError(Exception):
    """A reused upstream connection failed before any response byte: safe to retry."""


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
    down: Stream,
    cfg: HttpListenerConfig,
    shared: ProxyShared,
    source: ConfigSource | None = None,
    *,
    peer_identity: bytes | None = None,
) -> None:
    """Accept-loop entry point: serve one downstream connection."""
    await HttpConnection(down, cfg, shared, source, peer_identity=peer_identity).serve()
