"""The ``process_*`` metrics of the sidecar process, read from ``/proc`` at each scrape.

The same families, help texts and sources as prometheus-client's ``ProcessCollector`` (which
meshd used before writing the text format itself, :mod:`meshd.exposition`): CPU seconds,
resident and virtual memory, start time, open and maximum file descriptors. Without ``/proc``
(not Linux) there are none, as there were none before.
"""

from __future__ import annotations

import os

from meshd.exposition import TextWriter

__all__ = ["ProcessMetrics"]


def _sysconf(name: str, default: int) -> int:
    try:
        return os.sysconf(name)
    except (ValueError, OSError):
        return default


class ProcessMetrics:
    """Writes the ``process_*`` families of one process (``pid``, default this one)."""

    __slots__ = ("_btime", "_pagesize", "_pid", "_ticks")

    def __init__(self, proc: str = "/proc", pid: str = "self") -> None:
        self._pid = os.path.join(proc, pid)
        self._ticks = float(_sysconf("SC_CLK_TCK", 100))
        self._pagesize = _sysconf("SC_PAGE_SIZE", 4096)
        # Boot time, the zero of a process's start time; none: no /proc to read.
        self._btime = 0.0
        try:
            with open(os.path.join(proc, "stat"), "rb") as stat:
                for line in stat:
                    if line.startswith(b"btime "):
                        self._btime = float(line.split()[1])
                        break
        except OSError:
            pass

    def write(self, out: TextWriter) -> None:
        """The families whose source could be read (none without ``/proc``)."""
        if not self._btime:
            return
        try:
            with open(os.path.join(self._pid, "stat"), "rb") as stat:
                # After the command name, which may itself hold spaces and parentheses.
                parts = stat.read().rpartition(b")")[2].split()
        except OSError:
            pass
        else:
            ticks = self._ticks
            _gauge(out, "virtual_memory_bytes", "Virtual memory size in bytes.", float(parts[20]))
            _gauge(
                out,
                "resident_memory_bytes",
                "Resident memory size in bytes.",
                float(parts[21]) * self._pagesize,
            )
            _gauge(
                out,
                "start_time_seconds",
                "Start time of the process since unix epoch in seconds.",
                float(parts[19]) / ticks + self._btime,
            )
            out.header(
                "process_cpu_seconds_total",
                "Total user and system CPU time spent in seconds.",
                "counter",
            )
            cpu = float(parts[11]) / ticks + float(parts[12]) / ticks
            out.sample("process_cpu_seconds_total", "", cpu)
        try:
            max_fds = None
            with open(os.path.join(self._pid, "limits"), "rb") as limits:
                for line in limits:
                    if line.startswith(b"Max open file"):
                        max_fds = float(line.split()[3])
                        break
            open_fds = len(os.listdir(os.path.join(self._pid, "fd")))
        except OSError:
            return
        _gauge(out, "open_fds", "Number of open file descriptors.", open_fds)
        if max_fds is not None:
            _gauge(out, "max_fds", "Maximum number of open file descriptors.", max_fds)


def _gauge(out: TextWriter, name: str, help_text: str, value: float) -> None:
    out.header(f"process_{name}", help_text, "gauge")
    out.sample(f"process_{name}", "", value)
