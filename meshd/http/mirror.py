"""Request mirroring: copies of requests sent to another cluster, answers discarded, off the
request path.

:class:`MirrorService` is the sidecar's :class:`~meshd.context.MirrorSink`. The request path
hands it a serialized copy (:func:`shadow_copy` of the head and buffered body) with
:meth:`MirrorService.submit`, which never waits: the copy is sent by a task of the service's
own nursery, or dropped when :data:`MAX_IN_FLIGHT` copies are already on their way. Each copy

* goes to the named cluster of the configuration in force when it is sent (a lookup the
  sidecar provides), through the cluster's admission (circuit breakers) and balancer, on a
  new connection closed after the answer (``connection: close``), so a misbehaving mirror
  never shares a pooled connection with real traffic;
* is bounded in time: the cluster's ``connect_timeout_s`` plus :data:`ANSWER_TIMEOUT_S`;
* counts once in ``meshd_mirrored_requests{cluster, result}``: ``sent`` (a response head came
  back, any status; the rest of the answer is read and discarded within the same bound),
  ``failed`` (no such cluster, overflow, no endpoint, connect failure, reset, unparseable
  answer, timeout) or ``dropped`` (too many copies in flight, or the service not running).

A slow or dead mirror therefore costs the client nothing: neither time (submit is a few
dictionary operations) nor errors (nothing a copy does reaches the client's exchange).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Final

import trio

from meshd.cluster.runtime import ClusterRuntime
from meshd.context import now
from meshd.errors import UpstreamError
from meshd.http.codec import HttpError, ResponseParser
from meshd.net.stream import SocketStream
from meshd.policystats import PolicyStats

if TYPE_CHECKING:
    from meshd.net.tls import TlsStream

__all__ = [
    "ANSWER_TIMEOUT_S",
    "MAX_IN_FLIGHT",
    "MirrorService",
    "shadow_copy",
    "shadow_host",
]

#: Copies on their way at most; beyond, copies are dropped (and counted).
MAX_IN_FLIGHT: Final = 64
#: Time a copy may take beyond its cluster's connect timeout, answer included.
ANSWER_TIMEOUT_S: Final = 5.0
_BROKEN: Final = (trio.BrokenResourceError, trio.ClosedResourceError)
_METRIC: Final = "meshd_mirrored_requests"

ClusterLookup = Callable[[str], ClusterRuntime | None]


def shadow_host(host: bytes) -> bytes:
    """``api.test`` -> ``api.test-shadow``; a port stays last (``api:8080`` ->
    ``api-shadow:8080``), as Envoy names shadow traffic."""
    if host.startswith(b"["):
        end = host.find(b"]")
        if end > 0:
            return host[: end + 1] + b"-shadow" + host[end + 1 :]
    name, sep, port = host.rpartition(b":")
    if sep and port.isdigit() and b":" not in name:
        return name + b"-shadow:" + port
    return host + b"-shadow"


def shadow_copy(request: bytes) -> bytes:
    """The mirrored form of a serialized request (head as the proxy sends it upstream, then
    its complete body): ``Host`` gets the ``-shadow`` suffix and ``connection: close`` is
    added (a copy's connection is never reused)."""
    end = request.find(b"\r\n\r\n")
    if end < 0:
        raise ValueError("not a complete request head")
    lines = request[:end].split(b"\r\n")
    for i in range(1, len(lines)):
        name, sep, value = lines[i].partition(b":")
        if sep and name.strip().lower() == b"host":
            lines[i] = name + b": " + shadow_host(value.strip())
            break
    lines.append(b"connection: close")
    return b"\r\n".join(lines) + request[end:]


class MirrorService:
    """Sends mirrored copies of requests, at most :data:`MAX_IN_FLIGHT` at a time.

    A service object: :meth:`run` owns the nursery the copies are sent from; before it runs
    (and after it stops) every copy is dropped.
    """

    def __init__(
        self,
        clusters: ClusterLookup,
        stats: PolicyStats,
        *,
        max_in_flight: int = MAX_IN_FLIGHT,
        answer_timeout_s: float = ANSWER_TIMEOUT_S,
    ) -> None:
        self._clusters = clusters
        self._stats = stats
        self.max_in_flight = max_in_flight
        self.answer_timeout_s = answer_timeout_s
        #: Copies on their way now.
        self.in_flight = 0
        self._nursery: trio.Nursery | None = None

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Send copies until cancelled (copies still on their way are abandoned then)."""
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                task_status.started()
                await trio.sleep_forever()
        finally:
            self._nursery = None

    def submit(self, cluster: str, request: bytes) -> bool:
        """Queue ``request`` (a :func:`shadow_copy`) for ``cluster`` without waiting; False
        when dropped."""
        nursery = self._nursery
        if nursery is None or self.in_flight >= self.max_in_flight:
            self._stats.inc(_METRIC, cluster, "dropped")
            return False
        self.in_flight += 1
        nursery.start_soon(self._send, cluster, request)
        return True

    async def _send(self, name: str, request: bytes) -> None:
        outcome = _Outcome()
        try:
            cluster = self._clusters(name)
            if cluster is not None:
                timeout = cluster.model.connect_timeout_s + self.answer_timeout_s
                with trio.move_on_after(timeout):
                    await _exchange(cluster, request, outcome)
            self._stats.inc(_METRIC, name, "sent" if outcome.status else "failed")
        finally:
            self.in_flight -= 1


class _Outcome:
    """What a copy got back; kept outside the exchange so a deadline can't lose it."""

    __slots__ = ("status",)

    def __init__(self) -> None:
        #: The response's status once its head is in (0: none yet).
        self.status = 0


async def _exchange(cluster: ClusterRuntime, request: bytes, outcome: _Outcome) -> None:
    """Send one copy on a new connection, then read and discard its answer."""
    try:
        cluster.admit()
    except UpstreamError:
        return
    try:
        try:
            endpoint, conn = await cluster.acquire(fresh=True)
        except UpstreamError:
            return
        start = now()
        try:
            await conn.stream.send_all(request)
            await _read_answer(conn.stream, outcome, head_request=request.startswith(b"HEAD "))
        except _BROKEN:
            pass
        finally:
            cluster.report(endpoint, outcome.status, now() - start)
            cluster.release(endpoint, conn, reusable=False)
    finally:
        cluster.done()


async def _read_answer(
    stream: SocketStream | TlsStream, outcome: _Outcome, *, head_request: bool
) -> None:
    """Read and discard a response until it is complete, the upstream closes, or it stops
    parsing; ``outcome.status`` is set as soon as its head is in."""
    parser = ResponseParser(head_request=head_request)
    while not parser.complete:
        data = await stream.receive_some()
        if not data:
            return
        try:
            parser.feed(data)
        except HttpError:
            return
        parser.body.clear()
        for head in parser.heads:
            if head.status >= 200:
                outcome.status = head.status
        parser.heads.clear()
