"""The fast lane: a plain connection's simple requests served without waking its task.

A request proxied by the connection's task parks and wakes that task twice (for the request,
for the response): each a trip through Trio's scheduler and the task's coroutine frames, which
cost more than the HTTP work itself. Like the L4 reactor (:mod:`meshd.net.reactor`), the lane
serves from the dispatcher's task instead: the downstream and upstream sockets are *read* by
:mod:`meshd.net.waits`'s dispatcher, which calls :meth:`Lane.readable` for their events, and the
request goes through the same steps the task takes, only without awaiting:

    HttpConnection.begin -> HttpConnection.plan -> forward.outgoing_head -> admit
    -> ClusterRuntime.acquire_idle -> send -> ResponseRelay.feed -> send -> finish

Whatever a step can't do at once goes back to the task, at the point reached, with the state
it left (:class:`meshd.http.tries.Taken`); the task carries on with the code it always runs
(:func:`meshd.http.forward.taken_on`, :meth:`HttpConnection.route
<meshd.http.connection.HttpConnection.route>`...). So the lane takes nothing over that the task
path doesn't also do, and every policy stays enforced in one place. The lane makes the first
try of a retry policy too (:class:`meshd.http.tries.RetryHold` decides on its response).
Handed back: a request with a body still to come, an access policy (it may fetch keys), a
retry (and a retry policy's first try with a per-try deadline or a body), mirroring, a
fault, a proxy answer, no idle pooled connection (a connect), a response larger than a few
reads or a client slow to take it, an upgrade, every error. Deadlines and drains
cancel the parked task as before; the lane then lets the connection go and the task answers
(408, 504, or a reset).
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Final

import outcome
import trio

from meshcore.model import Endpoint
from meshd.cluster.pool import UpstreamConnection
from meshd.cluster.runtime import ClusterRuntime
from meshd.context import now
from meshd.errors import UpstreamError
from meshd.http.codec import EV_HEAD, NO_BODY, RequestHead
from meshd.http.decide import Answer, Plan
from meshd.http.forward import (
    forward,
    one_payload,
    outgoing_head,
    refused,
    taken_on,
    target_cluster,
)
from meshd.http.phase import Phase
from meshd.http.relay import BROKEN, ResponseRelay, send_failure
from meshd.http.retry import IDEMPOTENT
from meshd.http.tries import RetryHold, Taken, retries_on
from meshd.net import served
from meshd.net.waits import NativeReader, ServedStream, Waiter

if TYPE_CHECKING:
    from meshd.http.connection import HttpConnection

__all__ = ["Lane", "Next"]

#: What :meth:`Lane.run` gives the task: True, go on reading requests yourself; False, the
#: client has gone; else the rest of a request in flight, to await.
Next = bool | Callable[[], Awaitable[None]]

_REQUEST: Final = Phase.REQUEST
_IDLE: Final = Phase.IDLE
#: Reads of one response per event before the task takes a body over (it yields).
_BURST: Final = 8


class Lane(NativeReader):
    """Serves one plain downstream connection's simple requests from dispatcher callbacks
    (a :class:`~meshd.net.waits.NativeReader`: the dispatcher's calls are native)."""

    __slots__ = (
        "c",
        "cluster",
        "conn",
        "down",
        "down_fd",
        "down_pending",
        "endpoint",
        "head",
        "hold",
        "key",
        "parked",
        "payload",
        "plan",
        "relay",
        "result",
        "started",
        "task",
        "up",
    )

    def __init__(self, c: HttpConnection, down: ServedStream) -> None:
        self.c = c
        self.down = down
        self.down_fd = down.sock.fileno()
        #: An event came for the downstream while a request was in flight.
        self.down_pending = False
        self.task: trio.lowlevel.Task | None = None
        self.parked = False
        self.result: outcome.Outcome[Next] | None = None
        # The try in flight (conn is None between requests).
        self.head: RequestHead | None = None
        self.plan: Plan | None = None
        self.cluster: ClusterRuntime | None = None
        self.payload = b""
        self.key: bytes | None = None
        #: With a retry policy: its decision on the first try's response.
        self.hold: RetryHold | None = None
        self.endpoint: Endpoint | None = None
        self.conn: UpstreamConnection | None = None
        self.up: ServedStream | None = None
        self.relay: ResponseRelay | None = None
        self.started = 0.0

    async def run(self) -> Next:
        """Serve requests until one needs the task (or the client goes); what to do next."""
        if not served.serve_reads(self.down, self):
            self.c.lane = None  # the dispatcher has stopped: the task reads through Trio now
            return True
        self.task = trio.lowlevel.current_task()
        self.down_pending = served.may_read(self.down)
        try:
            self._next()
        except BaseException as exc:  # noqa: BLE001 - raised in the task, where it belongs
            self._failed(exc)
        result = self._handed_back()
        if result is not None:
            return result.unwrap()
        self.parked = True
        next_step: Next = await trio.lowlevel.wait_task_rescheduled(self._abort)
        return next_step

    def _handed_back(self) -> outcome.Outcome[Next] | None:
        """What the lane handed back before the task parked (taken)."""
        result = self.result
        self.result = None
        return result

    # Dispatcher callbacks (meshd.net.waits.Reader) -----------------------------------------

    def readable(self, waiter: Waiter) -> None:
        """An event for the downstream or the upstream socket."""
        try:
            if waiter.fd == self.down_fd:
                self.down_pending = True  # read now, or once the response in flight is out
                if self.conn is None:
                    self._next()
            elif self.conn is not None:
                self._response()
        except BaseException as exc:  # noqa: BLE001 - never into the dispatcher: to the task
            self._failed(exc)

    def _failed(self, exc: BaseException) -> None:
        """A step raised ``exc``: raised in the task, within the try in flight if any (which
        then ends as the task ends a failed try)."""
        if self.conn is not None:
            self._take_over(error=exc)
        else:
            self._hand_back(outcome.Error(exc))

    def stopped(self, waiter: Waiter, closing: bool) -> None:
        """A socket closes, or the dispatcher stops: the task takes over where the lane is."""
        error: BaseException | None = None
        if closing:
            error = trio.ClosedResourceError("socket closed")
        else:
            self.c.lane = None  # for good
        if self.conn is not None:
            relay = self.relay
            if error is not None and relay is not None and waiter.fd != self.down_fd:
                try:
                    relay.broken(error)  # the upstream's socket: what that means for the try
                except Exception as exc:  # noqa: BLE001 - the upstream failure it raises
                    error = exc
            self._take_over(error=error)
        elif error is not None:
            self._hand_back(outcome.Error(error))
        else:
            self._hand_back(outcome.Value(True))

    # Between requests ----------------------------------------------------------------------

    def _next(self) -> None:
        """Serve the requests that are there, until one needs the task or bytes run out."""
        c = self.c
        events = c.parser.events
        down = self.down
        while self.task is not None and self.conn is None:
            if c.close_after:
                self._hand_back(outcome.Value(True))
                return
            if not events:
                if not self.down_pending:
                    return
                data = served.receive_nowait(down)
                if data is None:
                    self.down_pending = False
                    return
                # More to read: a full read, or the end of stream came with these bytes.
                self.down_pending = served.may_read(down)
                if not c.take(data):
                    self._hand_back(outcome.Value(False))
                    return
                continue
            kind, head = events[0]
            if kind != EV_HEAD or not isinstance(head, RequestHead) or not self._simple(head):
                self._hand_back(outcome.Value(True))
                return
            events.pop(0)
            self._request(head)

    def _simple(self, head: RequestHead) -> bool:
        """Whether the request may start here: nothing to tunnel. (A body that hasn't come
        whole goes to the task with the try, before any connection is taken.)"""
        return self.c.parser.upgrade_tail is None and head.upgrade is None

    def _request(self, head: RequestHead) -> None:
        """A request, as :meth:`HttpConnection._handle` and :func:`forward` take it, up to the
        first step that must wait."""
        c = self.c
        c.phase = _REQUEST
        if c.served + 1 >= c.cfg.max_requests_per_connection:
            c.close_after = True
        target = c.begin(head)
        if isinstance(target, Answer):
            self._carry_on(functools.partial(c.respond, target))
            return
        if c.cfg.guard is not None:
            self._carry_on(functools.partial(c.route, head, target))
            return
        plan = c.plan(head, target)
        if isinstance(plan, Answer):
            self._carry_on(functools.partial(c.respond, plan))
            return
        retry = plan.retry
        cluster = None
        if (
            not plan.delay_s
            and plan.abort is None
            and (plan.mirror is None or c.shared.mirror is None)
            # The first try of a retry policy, unless it has a per-try deadline (a Trio
            # scope) or a body to buffer for replays.
            and (retry is None or (retry.per_try_timeout_s is None and head.framing == NO_BODY))
        ):
            cluster = target_cluster(c, plan)
        if cluster is None:
            self._carry_on(functools.partial(forward, c, head, plan, target))
            return
        out = outgoing_head(c, head, plan, target, cluster)
        try:
            cluster.admit()
        except UpstreamError as exc:
            self._carry_on(functools.partial(refused, c, cluster, exc))
            return
        try:
            self._first_try(head, plan, cluster, out)
        except BaseException:
            if self.conn is None:  # admitted, and no try that ends it in the cluster
                self._let_go()
                cluster.done()
            raise

    def _first_try(
        self, head: RequestHead, plan: Plan, cluster: ClusterRuntime, out: bytes
    ) -> None:
        """The request's first try, as :func:`~meshd.http.forward.one_try` (or with a retry
        policy :func:`~meshd.http.tries.retry_loop`) makes it, up to the response."""
        c = self.c
        retry = plan.retry
        ex = c.exchange
        assert ex is not None
        payload = one_payload(c, head, out)
        hold = None
        key = cluster.hash_key(head.headers, c.peer_ip) if cluster.hashes else None
        if retry is not None:
            # As retry_loop's first try: the request (no body) may be sent again if idempotent.
            hold = RetryHold(retry, cluster, replayable=head.method in IDEMPOTENT)
            hold.retry_left = retry.attempts > 1
        self.head, self.plan, self.cluster = head, plan, cluster
        self.payload, self.key, self.hold = payload, key, hold
        acquired = cluster.acquire_idle(key) if ex.body_done else None
        taken = None
        if acquired is not None:
            endpoint, conn = acquired
            if conn is None:  # to connect, by the task
                taken = Taken(endpoint, None, 0.0, hold=hold)
        if acquired is None or taken is not None:
            rest_of_try = self._rest_of_try(taken)
            self._let_go()
            self._carry_on(rest_of_try)
            return
        assert conn is not None
        ex.upstream = endpoint
        self.endpoint, self.conn, self.started = endpoint, conn, now()
        up: ServedStream = conn.stream
        if not served.serve_reads(up, self):
            self._take_over(rest=payload)
            return
        self.up = up
        try:
            sent = served.send_nowait(up, payload)
        except BROKEN as exc:
            error = send_failure(conn)
            error.__cause__ = exc
            self._take_over(error=error)
            return
        if sent < len(payload):
            self._take_over(rest=payload[sent:])
            return
        self.relay = ResponseRelay(
            c,
            head,
            conn,
            edit=plan.response_headers,
            hold=hold if hold is not None and hold.retry_left else None,
            try_scope=None,
        )

    # The response --------------------------------------------------------------------------

    def _response(self) -> None:
        """The upstream's bytes, relayed as the task would."""
        up = self.up
        relay = self.relay
        assert up is not None and relay is not None
        for _ in range(_BURST):
            try:
                data = served.receive_nowait(up)
            except BROKEN as exc:
                relay.broken(exc)
            if data is None:
                return  # an early wake-up
            full = served.unread(up)
            out = relay.feed(data)
            if out is not None:
                sent = served.send_nowait(self.down, out)
                if sent < len(out):
                    self._take_over(pending=out[sent:])
                    return
                relay.sent()
            if relay.tunnel is not None or (full and not relay.done):
                self._take_over()  # a tunnel, or a body larger than a read: the task's
                return
            if relay.done:
                self._done(relay)
                return
            if not served.may_read(up):
                return  # the next event brings more
            # More is there that no event will announce (the end of stream came with these
            # bytes, or TLS records follow): read on.
        self._take_over()  # a body coming fast: the task's, which yields to others

    def _done(self, relay: ResponseRelay) -> None:
        """The try succeeded: accounted as :func:`one_try` does, then the next request."""
        c = self.c
        endpoint, conn, cluster, head = self.endpoint, self.conn, self.cluster, self.head
        assert endpoint is not None and conn is not None and cluster is not None
        assert head is not None
        reusable = relay.finish()
        cluster.report(endpoint, relay.ex.code, now() - self.started)
        self._let_go()
        cluster.release(endpoint, conn, reusable=reusable)
        cluster.done()
        if not head.keep_alive:
            self._hand_back(outcome.Value(False))
            return
        c.served += 1
        c.phase = _IDLE
        c.deadline = now() + c.cfg.idle_timeout_s
        self._next()

    # Handing back ----------------------------------------------------------------------

    def _let_go(self) -> None:
        """Stop serving the upstream's events; forget the try."""
        up = self.up
        if up is not None:
            served.serve_reads(up, None)
        self.head = self.plan = self.cluster = self.endpoint = self.conn = None
        self.up = self.relay = self.hold = None
        self.payload = b""
        self.key = None

    def _take_over(
        self, *, rest: bytes = b"", pending: bytes = b"", error: BaseException | None = None
    ) -> None:
        """The try in flight goes on in the task from where it is."""
        head, plan, cluster, endpoint, conn = (
            self.head,
            self.plan,
            self.cluster,
            self.endpoint,
            self.conn,
        )
        assert head is not None and plan is not None and cluster is not None
        assert endpoint is not None and conn is not None
        taken = Taken(
            endpoint,
            conn,
            self.started,
            rest=rest,
            relay=self.relay,
            pending=pending,
            error=error,
            hold=self.hold,
        )
        rest_of_try = self._rest_of_try(taken)
        self._let_go()
        self._carry_on(rest_of_try)

    def _rest_of_try(self, taken: Taken | None) -> Callable[[], Awaitable[None]]:
        """The task's part of the request admitted here: the try ``taken`` on (or made)."""
        head, plan, cluster = self.head, self.plan, self.cluster
        assert head is not None and plan is not None and cluster is not None
        if self.hold is not None:
            return functools.partial(
                retries_on, self.c, head, plan, cluster, payload=self.payload, taken=taken
            )
        return functools.partial(
            taken_on, self.c, head, plan, cluster, payload=self.payload, key=self.key, taken=taken
        )

    def _carry_on(self, rest: Callable[[], Awaitable[None]]) -> None:
        self._hand_back(outcome.Value(rest))

    def _hand_back(self, result: outcome.Outcome[Next]) -> None:
        """Wake the task with ``result`` (or leave it for :meth:`run`, not parked yet)."""
        task = self.task
        if task is None:
            return
        self.task = None
        served.serve_reads(self.down, None)
        if self.parked:
            self.parked = False
            trio.lowlevel.reschedule(task, result)
        else:
            self.result = result

    def _abort(self, _: object) -> trio.lowlevel.Abort:
        """The task is cancelled (a deadline, a drain): the try in flight, if any, ends here;
        the task answers as the phase it is in says."""
        self.task = None
        self.parked = False
        served.serve_reads(self.down, None)
        endpoint, conn, cluster = self.endpoint, self.conn, self.cluster
        if conn is not None:
            assert endpoint is not None and cluster is not None
            self._let_go()
            cluster.release(endpoint, conn, reusable=False)
            cluster.done()
        return trio.lowlevel.Abort.SUCCEEDED
