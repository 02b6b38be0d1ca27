"""Worker processes sharing the listeners through SO_REUSEPORT (or inherited sockets).

With ``workers: N`` in the bootstrap, the primary process runs a sidecar like any other and
supervises N-1 more processes of the same program, each binding the same addresses with
SO_REUSEPORT so the kernel spreads connections across them; listening sockets the primary got
from the service manager (socket activation) are passed to the workers instead, so all of them
accept from the same socket. Each worker serves its own admin API on the admin port plus its
index (when the admin port is fixed). Each worker is connected to the primary by a channel
(:mod:`meshd.workers.feed`): the identity, revocations and, in controld mode, snapshots come
through it. The primary forwards SIGHUP and drains the workers with its own drain; a worker
that dies is started again (with a growing delay if it keeps dying), and a worker whose primary
dies drains itself.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import structlog
import trio

from meshd.workers.feed import WorkerFeed, WorkerLink

#: The listening sockets workers inherit: (listener name, socket).
InheritedFn = Callable[[], list[tuple[str, socket.socket]]]

log = structlog.get_logger("meshd.workers")

_RESTART_BACKOFF_S = 1.0
_RESTART_BACKOFF_MAX_S = 60.0
#: A worker that ran this long before dying is restarted without delay growth.
_HEALTHY_RUN_S = 30.0


class WorkerSupervisor:
    """Runs and restarts the extra worker processes of one sidecar."""

    def __init__(
        self,
        bootstrap_path: Path,
        count: int,
        *,
        feed: WorkerFeed | None = None,
        inherited: InheritedFn | None = None,
    ) -> None:
        self.bootstrap_path = bootstrap_path
        self.count = count
        #: What the workers follow (identity, snapshots, drain), sent over their channels.
        self.feed = feed or WorkerFeed()
        self._inherited = inherited
        self._procs: dict[int, trio.Process] = {}
        self._stopping = False

    def command(
        self, index: int, channel_fd: int, inherited: Sequence[tuple[str, int]] = ()
    ) -> list[str]:
        """The command line of worker ``index`` (1-based; the primary is 0)."""
        fds = [f"--worker-listen-fd={name}={fd}" for name, fd in inherited]
        return [
            sys.executable,
            "-m",
            "meshd",
            "run",
            "-c",
            str(self.bootstrap_path),
            "--worker-index",
            str(index),
            "--worker-channel",
            str(channel_fd),
            *fds,
        ]

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Start the workers, keep them running until cancelled, then stop them."""
        try:
            async with trio.open_nursery() as nursery:
                for index in range(1, self.count):
                    nursery.start_soon(self._keep_running, index)
                task_status.started()
        finally:
            with trio.CancelScope(shield=True):
                await self._terminate_all()

    async def _keep_running(self, index: int) -> None:
        backoff = _RESTART_BACKOFF_S
        while not self.stopping():
            started = trio.current_time()
            code = await self._run_once(index)
            if self.stopping():
                return
            if trio.current_time() - started > _HEALTHY_RUN_S:
                backoff = _RESTART_BACKOFF_S
            log.error("worker exited, starting it again", worker=index, code=code, delay=backoff)
            await trio.sleep(backoff)
            backoff = min(backoff * 2, _RESTART_BACKOFF_MAX_S)

    async def _run_once(self, index: int) -> int:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("NOTIFY_", "LISTEN_"))}
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            listening = self._inherited() if self._inherited is not None else []
            fds = [(name, sock.fileno()) for name, sock in listening]
            proc = await trio.lowlevel.open_process(
                self.command(index, theirs.fileno(), fds),
                env=env,
                stdin=subprocess.DEVNULL,
                pass_fds=(theirs.fileno(), *(fd for _name, fd in fds)),
            )
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
        self._procs[index] = proc
        link = WorkerLink(index, proc.pid)
        stream = trio.SocketStream(trio.socket.from_stdlib_socket(ours))
        async with stream, trio.open_nursery() as nursery:
            nursery.start_soon(self.feed.serve, link, stream)
            code = await proc.wait()
            nursery.cancel_scope.cancel()
        # Not on cancellation: _terminate_all still has to stop it.
        del self._procs[index]
        return code

    def describe(self) -> list[dict[str, Any]]:
        """Each worker's pid and the snapshot version it serves."""
        return self.feed.describe()

    def stopping(self) -> bool:
        """Workers are being stopped on purpose (no restarts)."""
        return self._stopping

    def signal_all(self, signum: int) -> None:
        """Send ``signum`` to every running worker."""
        for proc in self._procs.values():
            if proc.returncode is None:
                proc.send_signal(signum)

    def start_drain(self) -> None:
        """SIGTERM every worker (they drain themselves, as the primary does) and restart none."""
        self._stopping = True
        self.signal_all(signal.SIGTERM)

    async def wait_exited(self) -> None:
        """Return once every worker has exited."""
        for proc in list(self._procs.values()):
            await proc.wait()

    async def drain(self) -> None:
        """:meth:`start_drain` and wait until every worker has exited."""
        self.start_drain()
        await self.wait_exited()

    async def _terminate_all(self) -> None:
        self._stopping = True
        self.signal_all(signal.SIGTERM)
        with trio.move_on_after(5):
            for proc in list(self._procs.values()):
                await proc.wait()
        self.signal_all(signal.SIGKILL)
        for proc in list(self._procs.values()):
            await proc.wait()
