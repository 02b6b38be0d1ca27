"""Hand-off: a new meshd process takes the listening sockets over from the running one.

This is how a sidecar restarts without socket activation (a plain ``meshd run``, or an
operator's own supervisor), as HAProxy's seamless reload and Envoy's hot restart do: the new
process (``meshd run --takeover``) asks the running one for its listening sockets over a Unix
socket, serves them, and tells it when it is ready; the running one then hands over: it keeps
its registry registration (the successor registers the same IDs), stops accepting, answers its
keep-alive clients with ``Connection: close``, finishes in-flight requests and exits. Both
processes accept from the same sockets while the new one starts, so no connection is refused.

The exchange, newline-terminated JSON over a stream socket at :func:`handoff_path` (mode 0600;
each end checks that the other runs under its own uid with ``SO_PEERCRED``):

1. successor -> running: ``{"op": "takeover", "pid": N}``
2. running -> successor: ``{"ok": true, "pid": M, "sockets": [{"name", "role"}, ...]}`` with
   the descriptors (``SCM_RIGHTS``) on the same message, in that order; role ``listener`` (a
   proxy listener, by listener name) or ``admin``. Or ``{"ok": false, "error": "..."}``.
3. successor -> running, once it serves (``READY=1``): ``{"op": "ready"}``. The running process
   hands over. If the connection ends before that (the successor failed to start), the running
   process serves on as if nothing happened.
"""

from __future__ import annotations

import array
import contextlib
import json
import os
import socket
import struct
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog
import trio

from meshcore.runtime.activation import InheritedSocket
from meshd.errors import MeshdError

__all__ = [
    "HANDOFF_TIMEOUT_S",
    "READY_TIMEOUT_S",
    "HandedSocket",
    "HandoffError",
    "HandoffServer",
    "Takeover",
    "bind_admin",
    "handoff_path",
    "take_over",
]

log = structlog.get_logger("meshd.handoff")

#: Bound of the successor's side of steps 1-2 (connect, ask, receive the sockets).
HANDOFF_TIMEOUT_S = 5.0
#: How long the running process waits for its successor's ``ready`` before serving on alone.
READY_TIMEOUT_S = 120.0
_MAX_LINE = 65536
_MAX_FDS = 64
_CRED = struct.Struct("3i")  # struct ucred: pid, uid, gid


class HandoffError(MeshdError):
    """The hand-off could not be done (refused, malformed, another uid, ...)."""


@dataclass(frozen=True)
class HandedSocket:
    """A listening socket passed from the running process to its successor."""

    name: str
    #: ``listener`` (a proxy listener named ``name``) or ``admin``.
    role: str
    sock: socket.socket


def handoff_path(bootstrap: Path, environ: Mapping[str, str] = os.environ) -> Path:
    """Where a sidecar serves its hand-off socket.

    ``$RUNTIME_DIRECTORY/handoff.sock`` under systemd (``RuntimeDirectory=``), otherwise
    ``<bootstrap>.handoff.sock`` next to the bootstrap file (``web.yaml.handoff.sock``), so
    each bootstrap, hence each sidecar, has its own.
    """
    runtime = environ.get("RUNTIME_DIRECTORY", "").split(":")[0]
    if runtime:
        return Path(runtime) / "handoff.sock"
    bootstrap = bootstrap.absolute()  # the same socket whatever directory meshd starts in
    return bootstrap.with_name(bootstrap.name + ".handoff.sock")


def _peer_uid(sock: socket.socket | trio.socket.SocketType) -> int:
    raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _CRED.size)
    return int(_CRED.unpack(raw)[1])


def _line(data: bytes) -> dict[str, Any]:
    try:
        doc = json.loads(data.split(b"\n", 1)[0])
    except ValueError as exc:
        raise HandoffError(f"malformed hand-off message: {exc}") from exc
    if not isinstance(doc, dict):
        raise HandoffError("malformed hand-off message: not an object")
    return doc


# ----------------------------------------------------------------------------------------------
# The successor's side (synchronous: it runs before the new process's event loop starts)
# ----------------------------------------------------------------------------------------------


class Takeover:
    """The sockets a successor got from the running process, and the line back to it."""

    def __init__(self, conn: socket.socket, pid: int, sockets: list[HandedSocket]) -> None:
        self._conn: socket.socket | None = conn
        #: The process handing over.
        self.pid = pid
        self.sockets = sockets

    def inherited(self) -> list[InheritedSocket]:
        """The proxy listeners, as socket activation describes them (matched by name)."""
        out = []
        for item in self.sockets:
            if item.role != "listener":
                continue
            host, port = item.sock.getsockname()[:2]
            out.append(
                InheritedSocket(
                    fd=item.sock.fileno(),
                    name=item.name,
                    family=item.sock.family,
                    sock=item.sock,
                    address=(host, port),
                )
            )
        return out

    def admin_socket(self, host: str, port: int) -> socket.socket | None:
        """The admin socket if it serves ``host:port`` (any port when ``port`` is 0), else None
        (closed: the bootstrap moved the admin API elsewhere)."""
        for item in self.sockets:
            if item.role == "admin":
                bound = item.sock.getsockname()[:2]
                if _same_host(bound[0], host) and port in (0, bound[1]):
                    return item.sock
                item.sock.close()
        return None

    def confirm(self) -> None:
        """Tell the running process this one serves: it hands over and exits."""
        conn, self._conn = self._conn, None
        if conn is None:
            return
        try:
            conn.settimeout(HANDOFF_TIMEOUT_S)
            conn.sendall(b'{"op": "ready"}\n')
        except OSError as exc:
            # It went away meanwhile: nothing to hand over any more, this process serves.
            log.warning("hand-off: previous process gone before ready", error=str(exc))
        finally:
            conn.close()
        log.info("hand-off: took over", previous_pid=self.pid)

    def abandon(self) -> None:
        """Close the line without confirming (the running process serves on)."""
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()


def take_over(path: Path, *, timeout_s: float = HANDOFF_TIMEOUT_S) -> Takeover | None:
    """Ask the meshd serving the hand-off socket at ``path`` for its listening sockets.

    None when no process serves there (no socket file, or nobody listening: a stale file).
    Raises :class:`HandoffError` when one answers but refuses or can't be trusted.
    """
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    conn.settimeout(timeout_s)
    try:
        try:
            conn.connect(str(path))
        except (FileNotFoundError, ConnectionRefusedError):
            conn.close()
            return None
        if _peer_uid(conn) != os.getuid():
            raise HandoffError(f"{path}: served by another user, not taking sockets from it")
        conn.sendall(json.dumps({"op": "takeover", "pid": os.getpid()}).encode() + b"\n")
        data, fds, _flags, _addr = socket.recv_fds(conn, _MAX_LINE, _MAX_FDS)
        handed = [socket.socket(fileno=fd) for fd in fds]
        while b"\n" not in data and len(data) < _MAX_LINE:
            more = conn.recv(_MAX_LINE)
            if not more:
                break
            data += more
        reply = _line(data)
    except OSError as exc:
        conn.close()
        raise HandoffError(f"{path}: hand-off failed: {exc}") from exc
    except BaseException:
        conn.close()
        raise
    try:
        if not reply.get("ok"):
            raise HandoffError(f"{path}: hand-off refused: {reply.get('error', 'no reason')}")
        described = reply.get("sockets")
        if not isinstance(described, list) or len(described) != len(handed):
            raise HandoffError(f"{path}: {len(handed)} descriptors for {described!r}")
        sockets = []
        for desc, sock in zip(described, handed, strict=True):
            sock.set_inheritable(False)
            sock.setblocking(False)
            sockets.append(HandedSocket(str(desc["name"]), str(desc["role"]), sock))
    except BaseException:
        for sock in handed:
            sock.close()
        conn.close()
        raise
    return Takeover(conn, int(reply.get("pid", 0)), sockets)


def bind_admin(host: str, port: int, takeover: Takeover | None = None) -> socket.socket:
    """The admin API's listening socket: the one taken over, else bound here.

    Raises :class:`~meshd.admin.server.AdminBindError` when ``host:port`` can't be bound.
    """
    if takeover is not None:
        sock = takeover.admin_socket(host, port)
        if sock is not None:
            return sock
    from meshd.admin.server import AdminBindError
    from meshd.net.listen import bind_tcp

    try:
        return bind_tcp(host, port)
    except OSError as exc:
        raise AdminBindError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from exc


def _same_host(bound: str, wanted: str) -> bool:
    return bound.strip("[]") == wanted.strip("[]") or (
        wanted in ("localhost",) and bound in ("127.0.0.1", "::1")
    )


# ----------------------------------------------------------------------------------------------
# The running process's side
# ----------------------------------------------------------------------------------------------


class HandoffServer:
    """Serves the hand-off socket: one successor at a time, until one is ready.

    ``offer`` returns the sockets to pass (raising :class:`HandoffError` refuses, e.g. while
    draining); ``on_ready`` is called with the successor's pid once it serves, and the server
    then stops. With ``replace`` an existing socket file is replaced even if a process still
    serves it (the successor of a hand-off replaces its predecessor's); otherwise a live one is
    left alone and this process serves no hand-off.
    """

    def __init__(
        self,
        path: Path,
        offer: Callable[[], list[HandedSocket]],
        on_ready: Callable[[int], None],
        *,
        replace: bool = False,
    ) -> None:
        self.path = path
        self._offer = offer
        self._on_ready = on_ready
        self._replace = replace

    async def run(self, *, task_status: trio.TaskStatus[bool] = trio.TASK_STATUS_IGNORED) -> None:
        """Serve until a successor is ready or cancelled; ``started(False)`` if it can't bind."""
        listener = await self._bind()
        if listener is None:
            task_status.started(False)
            return
        inode = os.stat(self.path).st_ino
        try:
            with listener:
                task_status.started(True)
                while True:
                    try:
                        conn, _ = await listener.accept()
                    except OSError as exc:  # out of descriptors, say: not worth dying for
                        log.warning("hand-off: accept failed", error=str(exc))
                        await trio.sleep(0.5)
                        continue
                    with conn:
                        if await self._serve(conn):
                            return
        finally:
            # Leave the path to a successor that has already put its own socket there.
            with contextlib.suppress(OSError):
                if os.stat(self.path).st_ino == inode:
                    self.path.unlink()

    async def _bind(self) -> trio.socket.SocketType | None:
        path = self.path
        if not self._replace and await _alive(path):
            log.warning("hand-off: another meshd serves this socket, none here", path=str(path))
            return None
        tmp = path.with_name(f".{path.name}.{os.getpid()}")
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        # 0600 from the start: no window with a wider mode. The umask is the whole process's,
        # so nothing between setting and restoring it may yield to another task (which would
        # create its files with it): the stdlib socket binds here, not trio's in a thread.
        old_umask = os.umask(0o177)
        try:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
            sock.bind(str(tmp))
            sock.listen(4)
            os.replace(tmp, path)  # atomic: a successor never finds no socket at all
        except OSError as exc:
            sock.close()
            log.warning("hand-off socket unavailable", path=str(path), error=str(exc))
            return None
        finally:
            os.umask(old_umask)
        log.info("hand-off socket ready", path=str(path))
        return trio.socket.from_stdlib_socket(sock)

    async def _serve(self, conn: trio.socket.SocketType) -> bool:
        """One successor's exchange; True once it is ready (this process hands over)."""
        if _peer_uid(conn) != os.getuid():
            log.warning("hand-off: refused a process of another user")
            return False
        request = b""
        with trio.move_on_after(HANDOFF_TIMEOUT_S):
            request = await _read_line(conn)
        if not request:
            return False  # a liveness probe (or a successor that gave up): nothing to do
        try:
            doc = _line(request)
            if doc.get("op") != "takeover":
                raise HandoffError(f"unexpected request {doc.get('op')!r}")
            successor = int(doc.get("pid", 0))
            offered = self._offer()
        except HandoffError as exc:
            log.warning("hand-off refused", error=str(exc))
            with contextlib.suppress(OSError):
                await conn.send(json.dumps({"ok": False, "error": str(exc)}).encode() + b"\n")
            return False
        reply = {
            "ok": True,
            "pid": os.getpid(),
            "sockets": [{"name": s.name, "role": s.role} for s in offered],
        }
        fds = array.array("i", [s.sock.fileno() for s in offered])
        try:
            await conn.sendmsg(
                [json.dumps(reply).encode() + b"\n"],
                [(socket.SOL_SOCKET, socket.SCM_RIGHTS, fds)],
            )
        except OSError as exc:
            log.warning("hand-off: successor gone", error=str(exc))
            return False
        log.info("hand-off: sockets passed, waiting for the successor", successor=successor)
        with trio.move_on_after(READY_TIMEOUT_S):
            answer = await _read_line(conn)
            with contextlib.suppress(HandoffError):
                if answer and _line(answer).get("op") == "ready":
                    self._on_ready(successor)
                    return True
        log.warning("hand-off: successor did not get ready, serving on", successor=successor)
        return False


async def _read_line(conn: trio.socket.SocketType) -> bytes:
    """Bytes up to a newline (or EOF, or :data:`_MAX_LINE`)."""
    data = b""
    while b"\n" not in data and len(data) < _MAX_LINE:
        try:
            more = await conn.recv(_MAX_LINE)
        except OSError:
            return b""
        if not more:
            return data if b"\n" in data else b""
        data += more
    return data


async def _alive(path: Path) -> bool:
    """A process accepts on the Unix socket at ``path``."""
    probe = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    with probe:
        try:
            with trio.move_on_after(1.0):
                await probe.connect(str(path))
                return True
        except OSError:
            return False
    return False
