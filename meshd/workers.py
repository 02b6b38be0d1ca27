"""Worker processes sharing the listeners through SO_REUSEPORT.

With ``workers: N`` in the bootstrap, the primary process runs a sidecar like any other and
supervises N-1 more processes of the same program, each binding the same addresses with
SO_REUSEPORT so the kernel spreads connections across them. Each worker serves its own admin
API on the admin port plus its index (when the admin port is fixed). The primary forwards
SIGHUP and drains the workers with its own drain; a worker that dies is started again (with
a growing delay if it keeps dying), and a worker whose primary dies drains itself.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import structlog
import trio

log = structlog.get_logger("meshd.workers")

_RESTART_BACKOFF_S = 1.0
_RESTART_BACKOFF_MAX_S = 60.0
#: A worker that ran this long before dying is restarted without delay growth.
_HEALTHY_RUN_S = 30.0


class WorkerSupervisor:
    """Runs and restarts the extra worker processes of one sidecar."""

    def __init__(self, bootstrap_path: Path, count: int) -> None:
        self.bootstrap_path = bootstrap_path
        self.count = count
        self._procs: dict[int, trio.Process] = {}
        self._stopping = False

    def command(self, index: int) -> list[str]:
        """The command line of worker ``index`` (1-based; the primary is 0)."""
        return [
            sys.executable,
            "-m",
            "meshd",
            "run",
            "-c",
            str(self.bootstrap_path),
            "--worker-index",
            str(index),
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
            env = {k: v for k, v in os.environ.items() if not k.startswith(("NOTIFY_", "LISTEN_"))}
            proc = await trio.lowlevel.open_process(
                self.command(index), env=env, stdin=subprocess.DEVNULL
            )
            self._procs[index] = proc
            code = await proc.wait()
            del self._procs[index]
            if self.stopping():
                return
            if trio.current_time() - started > _HEALTHY_RUN_S:
                backoff = _RESTART_BACKOFF_S
            log.error("worker exited, starting it again", worker=index, code=code, delay=backoff)
            await trio.sleep(backoff)
            backoff = min(backoff * 2, _RESTART_BACKOFF_MAX_S)

    def stopping(self) -> bool:
        """Workers are being stopped on purpose (no restarts)."""
        return self._stopping

    def signal_all(self, signum: int) -> None:
        """Send ``signum`` to every running worker."""
        for proc in self._procs.values():
            if proc.returncode is None:
                proc.send_signal(signum)

    async def drain(self) -> None:
        """SIGTERM every worker and wait until they have all exited (they drain themselves)."""
        self._stopping = True
        self.signal_all(signal.SIGTERM)
        for proc in list(self._procs.values()):
            await proc.wait()

    async def _terminate_all(self) -> None:
        self._stopping = True
        self.signal_all(signal.SIGTERM)
        with trio.move_on_after(5):
            for proc in list(self._procs.values()):
                await proc.wait()
        self.signal_all(signal.SIGKILL)
        for proc in list(self._procs.values()):
            await proc.wait()
