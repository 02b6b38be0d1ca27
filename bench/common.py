"""Shared pieces of the benchmark suites: processes, ports, /proc sampling, wrk, tables.

Standard library only, so the harness runs before the project's venv exists. A suite is a
module in ``bench/`` with a top-level ``run_suite(ctx: Context) -> None`` (see ``bench/run``);
it raises :class:`BenchError` when it cannot produce figures worth printing.
"""

from __future__ import annotations

import contextlib
import ctypes
import http.client
import math
import os
import re
import resource
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import FrameType, TracebackType

BENCH_DIR = Path(__file__).resolve().parent
TEMPLATES = BENCH_DIR / "templates"
CLK_TCK = os.sysconf("SC_CLK_TCK")
LOOPBACK = "127.0.0.1"


class BenchError(Exception):
    """A suite cannot produce trustworthy figures; the message says why."""


# -- settings -------------------------------------------------------------------------------


def env_int(name: str, default: int, low: int, high: int) -> int:
    """Environment variable ``name`` as an integer (``default`` if unset), within [low, high]."""
    raw = os.environ.get(name, "")
    try:
        value = int(raw) if raw else default
    except ValueError as exc:
        raise BenchError(f"{name}={raw!r} is not an integer") from exc
    # Clamped rather than rejected: the bench must stay bounded whatever the caller asks for.
    return max(low, min(high, value))


@dataclass(frozen=True)
class WrkParams:
    """The wrk load every path of a run gets (from ``BENCH_*`` environment variables)."""

    threads: int = 1
    connections: int = 32
    duration_s: int = 10
    warmup_s: int = 2

    @classmethod
    def from_env(cls) -> WrkParams:
        """Read ``BENCH_DURATION`` (1-300 s), ``BENCH_WARMUP`` (0-60 s), ``BENCH_THREADS`` (1-16)
        and ``BENCH_CONNECTIONS`` (up to 4096); out-of-range values are clamped.
        """
        threads = env_int("BENCH_THREADS", 1, 1, 16)
        return cls(
            threads=threads,
            connections=env_int("BENCH_CONNECTIONS", 32, threads, 4096),
            duration_s=env_int("BENCH_DURATION", 10, 1, 300),
            warmup_s=env_int("BENCH_WARMUP", 2, 0, 60),
        )

    def flags(self, duration_s: int) -> list[str]:
        """wrk's options for a run of ``duration_s`` seconds."""
        return [f"-t{self.threads}", f"-c{self.connections}", f"-d{duration_s}s", "--latency"]

    def describe(self) -> str:
        """The measured runs' wrk command line, for the report header."""
        return " ".join(["wrk", *self.flags(self.duration_s)])


@dataclass(frozen=True)
class MeshdBuild:
    """The meshd a bench run starts (``meshd_build.py``): ``path``, if any, goes before the
    checkout on the daemons' ``PYTHONPATH``."""

    kind: str
    path: Path | None = None
    detail: str = "the checkout's source as it is"

    def info_line(self) -> str:
        """``INFO meshd_build=<kind> (...)``: which build made a run's figures."""
        return f"INFO meshd_build={self.kind} ({self.detail})"


#: The checkout as it is (development, the tests).
PURE = MeshdBuild("pure")


@dataclass(frozen=True)
class Context:
    """What a suite gets: where the checkout is, which Python runs the project, the load."""

    root: Path
    python: str
    wrk: WrkParams
    #: A fresh directory for this suite's configs, pid files and logs.
    workdir: Path
    #: Which meshd the project daemons run (``bench/run``: the compiled build by default).
    build: MeshdBuild = PURE

    def tempdir(self, name: str) -> Path:
        """A new directory ``name`` under the suite's workdir (one per started component)."""
        path = self.workdir / name
        path.mkdir(parents=True, exist_ok=False)
        return path

    def project_env(self) -> dict[str, str]:
        """Environment for project daemons: the build (compiled modules), then the checkout
        first on ``PYTHONPATH``; no systemd fds."""
        env = {k: v for k, v in os.environ.items() if not k.startswith(("LISTEN_", "NOTIFY_"))}
        first = [str(self.build.path)] if self.build.path is not None else []
        env["PYTHONPATH"] = os.pathsep.join(
            p for p in (*first, str(self.root), os.environ.get("PYTHONPATH", "")) if p
        )
        return env


# -- processes ------------------------------------------------------------------------------


def _stat_fields(pid: int) -> list[str]:
    """``/proc/PID/stat`` from field 3 on (the command name may contain spaces and parens)."""
    text = Path(f"/proc/{pid}/stat").read_text()
    return text[text.rindex(")") + 2 :].split()


def _start_time(pid: int) -> int | None:
    try:
        return int(_stat_fields(pid)[19])  # field 22
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return None


def children(pid: int) -> list[int]:
    """Direct children of ``pid``, found by scanning ``/proc`` for their parent id."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if int(_stat_fields(int(entry.name))[1]) == pid:  # field 4: ppid
                found.append(int(entry.name))
        except (FileNotFoundError, ProcessLookupError):
            continue
    return sorted(found)


def descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (not ``pid`` itself)."""
    out: list[int] = []
    todo = [pid]
    while todo:
        kids = children(todo.pop())
        out.extend(kids)
        todo.extend(kids)
    return out


def cpu_ticks(pids: Iterable[int]) -> int:
    """utime + stime (fields 14, 15, all threads) of ``pids``, in clock ticks."""
    total = 0
    for pid in pids:
        try:
            fields = _stat_fields(pid)
        except FileNotFoundError as exc:
            raise BenchError(f"process {pid} vanished while being measured") from exc
        total += int(fields[11]) + int(fields[12])
    return total


def rss_kb(pid: int) -> int:
    """``VmRSS`` of ``pid`` in kB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise BenchError(f"no VmRSS for process {pid}")


def tree_rss_kb(pid: int) -> int:
    """``VmRSS`` of ``pid`` plus all its descendants, in kB."""
    return sum(rss_kb(p) for p in [pid, *descendants(pid)])


def _die_with_parent() -> Callable[[], None]:
    prctl = ctypes.CDLL(None, use_errno=True).prctl
    pr_set_pdeathsig = 1

    def hook() -> None:
        # If the harness itself is killed outright, the children still get told to stop.
        prctl(pr_set_pdeathsig, signal.SIGTERM)

    return hook


class ManagedProcess:
    """A child the harness started: its pid, its log, and how to stop it."""

    def __init__(
        self, name: str, popen: subprocess.Popen[bytes], log: Path, stop_signal: int
    ) -> None:
        self.name = name
        self.popen = popen
        self.log = log
        self.stop_signal = stop_signal

    @property
    def pid(self) -> int:
        """The process id (for nginx: the master's)."""
        return self.popen.pid

    def alive(self) -> bool:
        """Whether the process has not exited yet."""
        return self.popen.poll() is None

    def log_tail(self, lines: int = 15) -> str:
        """The last ``lines`` lines of the process's output, for error messages."""
        try:
            text = self.log.read_text(errors="replace")
        except FileNotFoundError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def stop(self, timeout: float = 10.0) -> None:
        """Signal, wait, then SIGKILL the process and anything it left behind (by pid)."""
        leftovers = [(p, _start_time(p)) for p in descendants(self.pid)] if self.alive() else []
        if self.alive():
            with contextlib.suppress(ProcessLookupError):
                self.popen.send_signal(self.stop_signal)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(timeout)
        for pid, started in leftovers:
            # Same start time means the same process, not a recycled pid.
            if started is not None and _start_time(pid) == started:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)


class ProcessGroup:
    """Starts children and stops every one of them, newest first, when the block exits."""

    def __init__(self) -> None:
        self._procs: list[ManagedProcess] = []

    def __enter__(self) -> ProcessGroup:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        while self._procs:
            self._procs.pop().stop()

    def start(
        self,
        name: str,
        argv: Sequence[str],
        *,
        cwd: Path,
        env: dict[str, str] | None = None,
        stop_signal: int = signal.SIGTERM,
    ) -> ManagedProcess:
        """Start ``argv`` in ``cwd``, output to ``cwd/<name>.log``, pid in ``cwd/<name>.pid``.

        Its own session keeps a terminal's Ctrl-C away from it, so the harness decides the
        order things stop in.
        """
        log = cwd / f"{name}.log"
        with log.open("wb") as out:
            popen = subprocess.Popen(
                list(argv),
                cwd=cwd,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=_die_with_parent(),  # noqa: PLW1509 - the harness is single-threaded
            )
        proc = ManagedProcess(name, popen, log, stop_signal)
        self._procs.append(proc)
        # Our own pid file: haproxy -db writes none, and the harness's pid is the one it stops.
        (cwd / f"{name}.pid").write_text(f"{popen.pid}\n")
        return proc


@contextlib.contextmanager
def interrupt_on_sigterm() -> Iterator[None]:
    """Turn SIGTERM into KeyboardInterrupt, so ``finally`` blocks stop the children."""

    def handler(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


# -- network --------------------------------------------------------------------------------


def free_ports(count: int) -> list[int]:
    """``count`` distinct free TCP ports on 127.0.0.1 (all held open while picking)."""
    with contextlib.ExitStack() as stack:
        socks = [stack.enter_context(socket.socket()) for _ in range(count)]
        for sock in socks:
            sock.bind((LOOPBACK, 0))
        return [sock.getsockname()[1] for sock in socks]


def wait_for_port(port: int, proc: ManagedProcess, timeout: float = 15.0) -> None:
    """Return once 127.0.0.1:``port`` accepts; fail with ``proc``'s log if it dies or hangs."""
    deadline = time.monotonic() + timeout
    while True:
        if not proc.alive():
            raise BenchError(f"{proc.name} exited with {proc.popen.returncode}:\n{proc.log_tail()}")
        with socket.socket() as sock:
            sock.settimeout(1.0)
            if sock.connect_ex((LOOPBACK, port)) == 0:
                return
        if time.monotonic() > deadline:
            raise BenchError(
                f"{proc.name} not listening on {port} after {timeout}s:\n{proc.log_tail()}"
            )
        time.sleep(0.05)


def http_get(port: int, path: str = "/", timeout: float = 5.0) -> tuple[int, bytes, str]:
    """One GET to 127.0.0.1:``port``: status, body and the response head as text."""
    conn = http.client.HTTPConnection(LOOPBACK, port, timeout=timeout)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        body = resp.read()
        head = f"HTTP {resp.status} {resp.reason}\n{resp.headers}".rstrip()
        return resp.status, body, head
    except OSError as exc:
        raise BenchError(f"GET 127.0.0.1:{port}{path} failed: {exc}") from exc
    finally:
        conn.close()


def start_meshd(
    ctx: Context,
    procs: ProcessGroup,
    name: str,
    bootstrap: Path,
    ports: Sequence[int],
    admin_port: int,
) -> ManagedProcess:
    """Run ``meshd run -c bootstrap`` as ``name`` in the bootstrap's directory; return once
    ``admin_port`` and ``ports`` accept and the admin API's ``/ready`` answers 200."""
    argv = [ctx.python, "-m", "meshd", "run", "-c", str(bootstrap), "--log-level", "info"]
    proc = procs.start(name, argv, cwd=bootstrap.parent, env=ctx.project_env())
    for port in (admin_port, *ports):
        wait_for_port(port, proc, timeout=30.0)
    deadline = time.monotonic() + 15.0
    while http_get(admin_port, "/ready")[0] != 200:
        if time.monotonic() > deadline:
            raise BenchError(f"{name} never became ready:\n{proc.log_tail()}")
        time.sleep(0.1)
    return proc


# -- a minimal HTTP/1.1 response parser for the epoll-driven clients ------------------------


@dataclass
class Response:
    """One parsed response: status, lower-cased headers, body."""

    status: int
    headers: dict[str, str]
    body: bytes


def parse_response(buf: bytearray) -> tuple[Response, int] | None:
    """A complete response at the start of ``buf`` and its length, or None if incomplete."""
    end = buf.find(b"\r\n\r\n")
    if end < 0:
        return None
    head = bytes(buf[:end]).decode("latin-1").split("\r\n")
    try:
        status = int(head[0].split(" ", 2)[1])
    except (IndexError, ValueError) as exc:
        raise BenchError(f"bad status line {head[0]!r}") from exc
    headers = {}
    for line in head[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    start = end + 4
    if status in (204, 304) or 100 <= status < 200:
        return Response(status, headers, b""), start
    if "content-length" in headers:
        total = start + int(headers["content-length"])
        if len(buf) < total:
            return None
        return Response(status, headers, bytes(buf[start:total])), total
    if headers.get("transfer-encoding", "").lower() == "chunked":
        body = bytearray()
        pos = start
        while True:
            line_end = buf.find(b"\r\n", pos)
            if line_end < 0:
                return None
            size = int(bytes(buf[pos:line_end]).split(b";")[0], 16)
            chunk_start = line_end + 2
            if size == 0:
                trailer_end = buf.find(b"\r\n\r\n", line_end)
                if trailer_end < 0:
                    return None
                return Response(status, headers, bytes(body)), trailer_end + 4
            if len(buf) < chunk_start + size + 2:
                return None
            body += buf[chunk_start : chunk_start + size]
            pos = chunk_start + size + 2
    raise BenchError(f"response without length (status {status}): {headers}")


def raise_fd_limit(needed: int) -> None:
    """Raise this process's open-files limit to ``needed``; BenchError if the hard limit is lower.

    Servers started afterwards inherit the limit, and they hold one descriptor per client
    connection too.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
    if soft != resource.RLIM_INFINITY and soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < needed:
        raise BenchError(f"open-files limit {soft} is below the {needed} this suite needs")


# -- tools ----------------------------------------------------------------------------------


def find_binary(name: str) -> str | None:
    """``name`` on ``PATH`` or in the sbin directories (often not on a user's ``PATH``)."""
    path = os.pathsep.join([os.environ.get("PATH", ""), "/usr/local/sbin", "/usr/sbin", "/sbin"])
    return shutil.which(name, path=path)


@contextlib.contextmanager
def _no_service_start() -> Iterator[None]:
    # Debian's maintainer scripts would start the packaged nginx/haproxy services (port 80...);
    # policy-rc.d answering 101 is Debian's documented way to say "do not start services".
    policy = Path("/usr/sbin/policy-rc.d")
    if policy.exists():
        yield
        return
    policy.write_text("#!/bin/sh\n# meshd bench: installing, not starting\nexit 101\n")
    policy.chmod(0o755)
    try:
        yield
    finally:
        policy.unlink(missing_ok=True)


def ensure_tools(packages: dict[str, str]) -> dict[str, str]:
    """Paths of ``packages``' binaries (binary -> Debian package), apt-installing any missing."""
    missing = sorted({pkg for binary, pkg in packages.items() if find_binary(binary) is None})
    if missing:
        if os.geteuid() != 0:
            raise BenchError(
                f"missing tools; install them first: apt-get install -y {' '.join(missing)}"
            )
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        install = ["apt-get", "install", "-y", *missing]

        def apt(argv: list[str]) -> subprocess.CompletedProcess[str]:
            return subprocess.run(argv, env=env, check=False, capture_output=True, text=True)

        print(f"bench: installing {' '.join(missing)}", file=sys.stderr)
        with _no_service_start():
            # Only refresh the package lists when the cached ones turn out to be stale.
            if (done := apt(install)).returncode != 0:
                apt(["apt-get", "update"])
                done = apt(install)
        if done.returncode != 0:
            raise BenchError(f"{' '.join(install)} failed:\n{done.stderr[-2000:]}")
    found = {binary: find_binary(binary) for binary in packages}
    absent = [binary for binary, path in found.items() if path is None]
    if absent:
        raise BenchError(f"still missing after install: {', '.join(absent)}")
    return {binary: path for binary, path in found.items() if path is not None}


def render(template: str, dest: Path, **values: object) -> Path:
    """Write ``bench/templates/<template>`` to ``dest`` with every ``@key@`` replaced."""
    text = (TEMPLATES / template).read_text()
    for key, value in values.items():
        text = text.replace(f"@{key}@", str(value))
    left = sorted(set(re.findall(r"@([a-z_]+)@", text)))
    if left:
        raise BenchError(f"template {template}: no value for {', '.join(left)}")
    dest.write_text(text)
    return dest


# -- wrk ------------------------------------------------------------------------------------

_UNITS = {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
_DURATION = re.compile(r"^([0-9.]+)(us|ms|s|m|h)$")


def parse_duration(text: str) -> float:
    """A wrk latency such as ``412.00us``, ``1.20ms``, ``2.00s`` or ``1.00m``, in seconds."""
    match = _DURATION.match(text.strip())
    if match is None:
        raise BenchError(f"cannot read wrk latency {text!r}")
    return float(match.group(1)) * _UNITS[match.group(2)]


@dataclass(frozen=True)
class WrkResult:
    """What one wrk run reported."""

    requests: int
    rps: float
    p50_s: float
    p99_s: float
    non_2xx: int
    socket_errors: int


def parse_wrk(output: str) -> WrkResult:
    """Read the figures out of ``wrk --latency`` output."""

    def grab(pattern: str) -> re.Match[str]:
        match = re.search(pattern, output, re.MULTILINE)
        if match is None:
            raise BenchError(f"wrk output lacks {pattern!r}:\n{output}")
        return match

    errors = re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output
    )
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    return WrkResult(
        requests=int(grab(r"^\s*(\d+) requests in ").group(1)),
        rps=float(grab(r"^Requests/sec:\s+([0-9.]+)").group(1)),
        p50_s=parse_duration(grab(r"^\s+50%\s+(\S+)").group(1)),
        p99_s=parse_duration(grab(r"^\s+99%\s+(\S+)").group(1)),
        non_2xx=int(non_2xx.group(1)) if non_2xx else 0,
        socket_errors=sum(int(n) for n in errors.groups()) if errors else 0,
    )


def run_wrk(
    wrk: str, url: str, params: WrkParams, duration_s: int, *, script: Path | None = None
) -> WrkResult:
    """Run ``wrk`` on ``url`` for ``duration_s`` seconds with ``params``' threads/connections
    (and the Lua ``script``, if given: ``wrk -s``)."""
    argv = [wrk, *params.flags(duration_s), *(["-s", str(script)] if script else []), url]
    try:
        done = subprocess.run(
            argv, check=False, capture_output=True, text=True, timeout=duration_s + 30
        )
    except subprocess.TimeoutExpired as exc:
        raise BenchError(f"{' '.join(argv)} did not finish") from exc
    if done.returncode != 0:
        raise BenchError(f"{' '.join(argv)} exited {done.returncode}:\n{done.stderr}{done.stdout}")
    return parse_wrk(done.stdout)


# -- output ---------------------------------------------------------------------------------


def percentile(values: Sequence[float], pct: float) -> float:
    """Nearest-rank percentile ``pct`` (0-100] of ``values`` (not empty)."""
    ordered = sorted(values)
    rank = max(0, min(len(ordered) - 1, math.ceil(pct / 100.0 * len(ordered)) - 1))
    return ordered[rank]


def print_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    """Print ``rows`` aligned under ``headers``: first column left, the others right."""
    widths = [max(len(str(cell)) for cell in column) for column in zip(headers, *rows, strict=True)]

    def line(cells: Sequence[str]) -> str:
        first, *rest = (str(c) for c in cells)
        return "  ".join(
            [first.ljust(widths[0]), *(c.rjust(w) for c, w in zip(rest, widths[1:], strict=True))]
        )

    print(line(headers))
    print("  ".join("-" * w for w in widths))
    for row in rows:
        print(line(row))


# -- ratios and targets ---------------------------------------------------------------------


def ratio(numerator: float | None, denominator: float | None) -> float | None:
    """``numerator / denominator``, or None when either is missing or the denominator is 0."""
    if numerator is None or denominator is None or denominator <= 0:
        return None
    return numerator / denominator


def ratio_line(name: str, value: float | None) -> str:
    """``RATIO <name>=<value, two decimals>`` (``n/a`` when there is no value)."""
    return f"RATIO {name}={'n/a' if value is None else f'{value:.2f}'}"


@dataclass(frozen=True)
class Target:
    """A figure's target: ``value <= limit`` (``at_most``) or ``value >= limit``."""

    name: str
    limit: float
    at_most: bool

    def met(self, value: float | None) -> bool:
        """Whether ``value`` meets the target (a missing value never does)."""
        if value is None:
            return False
        return value <= self.limit if self.at_most else value >= self.limit

    def verdict(self, value: float | None) -> str:
        """``<name><=<limit> ok`` or ``... MISS``, for the one-line verdict of a suite."""
        op = "<=" if self.at_most else ">="
        return f"{self.name}{op}{self.limit:g} {'ok' if self.met(value) else 'MISS'}"


def print_verdicts(checks: Sequence[tuple[Target, float | None]]) -> None:
    """The suite's one-line verdict: ``targets: <verdict>, <verdict>, ...``."""
    print(f"targets: {', '.join(target.verdict(value) for target, value in checks)}")
