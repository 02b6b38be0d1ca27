#!/usr/bin/env python3
"""meshd-l7 with telemetry on, and with a tap active, against both off (the dataplane bench's part).

Not a suite on its own: ``bench/run dataplane`` starts these sidecars next to its other paths
and prints ``RATIO telemetry_overhead``. Run as a script it does only this part (backend nginx,
stand-in controld, the three sidecars, the rounds), and with ``--profile`` samples each
sidecar under load with py-spy (``bench/profile_l7.py``'s profile)::

    .venv/bin/python bench/telemetry_overhead.py --rounds 6 --profile --gil

The pieces: a stand-in controld (one threaded stdlib server in the harness: registration, the
snapshot long-poll with the dataplane bench's snapshot, telemetry reports answered with a tap
for the tapped sidecar) and three meshd sidecars in controld mode, one worker each, the same
snapshot (an outbound HTTP listener to the backend), metrics on, access logs off:

* ``meshd-l7-off``: ``telemetry: {enabled: false}``, so no report and no tap;
* ``meshd-l7-telemetry``: a telemetry report every second, no tap;
* ``meshd-l7-tap``: reports, and a tap matching every request (100 events/s).

The rounds: ``BENCH_TELEMETRY_ROUNDS`` (6) rounds of one wrk run of
``BENCH_TELEMETRY_DURATION`` (4) seconds per sidecar (the ``BENCH_*`` threads and connections;
one ``BENCH_WARMUP`` run each before the first round), each round in another order. Short
interleaved runs make other load on the machine hit the three alike; each round gives a ratio
per sidecar (its rps over the off sidecar's in the same round), and the median over the rounds
counts::

    RATIO telemetry_overhead=<min(median telemetry/off, median tap/off)>

with the CPU per request of each against off (the same medians) as ``INFO``. A sidecar that
NACKs its snapshot, sends no report (or, tapped, no event) or dies fails the run.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import shutil
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import parse_qs, urlsplit

import profile_l7
import yaml
from common import (
    BenchError,
    Context,
    ManagedProcess,
    ProcessGroup,
    WrkParams,
    ensure_tools,
    env_int,
    free_ports,
    print_table,
    render,
    start_meshd,
)
from dataplane import (
    TELEMETRY_TARGET,
    BenchPath,
    Measured,
    check_path,
    measure_path,
    process_tree,
    start_nginx,
)

OFF, TELEMETRY, TAP = "meshd-l7-off", "meshd-l7-telemetry", "meshd-l7-tap"
#: name -> (telemetry on, tapped)
LAYOUT = {OFF: (False, False), TELEMETRY: (True, False), TAP: (True, True)}
#: The tap's rate bound (events per second), as an operator's tap would have.
TAP_EVENTS_PER_S = 100
_HASH = "bench-snapshot"
T = TypeVar("T")


class FakeControld:
    """Just enough of controld's sidecar API for meshd in controld mode (see the module doc).

    ``snapshots`` is keyed by proxy id (the bootstrap's ``node``); ``tapped`` proxies get a tap
    matching every request in each telemetry answer.
    """

    def __init__(self, snapshots: dict[str, dict[str, Any]], tapped: set[str]) -> None:
        self.snapshots = snapshots
        self.tapped = tapped
        self.reports: dict[str, int] = {}
        self.events: dict[str, int] = {}
        self.nacks: list[str] = []
        self.lock = threading.Lock()
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def _answer(self, status: int, doc: Any = None) -> None:
                body = b"" if doc is None else json.dumps(doc).encode()
                # A parked poll may outlive its sidecar: nobody is left to answer then.
                with contextlib.suppress(ConnectionError):
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)

            def do_GET(self) -> None:
                parts = urlsplit(self.path)
                query = parse_qs(parts.query)
                if query.get("hash", [""])[0] == _HASH:
                    # Nothing newer: park the poll as controld does, then 304.
                    time.sleep(min(float(query.get("wait", ["30"])[0]), 30.0))
                    self._answer(304)
                    return
                snapshot = fake.snapshots.get(parts.path.rsplit("/", 1)[-1])
                if snapshot is None:
                    self._answer(404, {"error": "unknown proxy"})
                    return
                self._answer(200, {"version": 1, "hash": _HASH, "snapshot": snapshot})

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", "0"))
                body = json.loads(self.rfile.read(length) or b"{}")
                path = urlsplit(self.path).path
                proxy_id = path.split("/")[3]
                if path.startswith("/v1/proxies/"):
                    self._answer(200, {"proxy_id": proxy_id})
                elif path.endswith("/nack"):
                    with fake.lock:
                        fake.nacks.append(f"{proxy_id}: {body.get('error')}")
                    self._answer(204)
                elif path.startswith("/v1/telemetry/"):
                    with fake.lock:
                        fake.reports[proxy_id] = fake.reports.get(proxy_id, 0) + 1
                        fake.events[proxy_id] = fake.events.get(proxy_id, 0) + len(
                            body.get("tap_events", [])
                        )
                    taps = []
                    if proxy_id in fake.tapped:
                        taps.append(
                            {
                                "id": "bench",
                                "filter": {},
                                "max_events_per_s": TAP_EVENTS_PER_S,
                                "remaining_s": 3600,
                            }
                        )
                    self._answer(200, {"taps": taps})
                else:
                    self._answer(404, {"error": "not here"})

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = int(self.server.server_address[1])

    @contextlib.contextmanager
    def serving(self) -> Iterator[FakeControld]:
        """Serve in a thread of this process until the block exits."""
        thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        thread.start()
        try:
            yield self
        finally:
            self.server.shutdown()
            self.server.server_close()


@dataclasses.dataclass(frozen=True)
class Sidecars:
    """The three running sidecars (in :data:`LAYOUT` order) and their stand-in controld."""

    fake: FakeControld
    procs: dict[str, ManagedProcess]
    paths: list[BenchPath]

    def check(self) -> None:
        """Raise :class:`BenchError` unless every sidecar did its part and is alive."""
        if self.fake.nacks:
            raise BenchError(f"a sidecar rejected its snapshot: {self.fake.nacks[0]}")
        for name, (on, tapped) in LAYOUT.items():
            if on and not self.fake.reports.get(name):
                raise BenchError(f"{name} sent no telemetry report")
            if tapped and not self.fake.events.get(name):
                raise BenchError(f"{name} sent no tap event")
            if not self.procs[name].alive():
                raise BenchError(f"{name} died during the run:\n{self.procs[name].log_tail()}")


def _bootstrap(workdir: Path, name: str, backend: int, admin: int, fake: int, on: bool) -> Path:
    doc = {
        "service": "bench",
        "node": name,
        "app": f"127.0.0.1:{backend}",
        "admin": f"127.0.0.1:{admin}",
        "access_log": {"enabled": False},
        "drain_timeout_s": 1,
        "drain_delay_s": 0,
        "snapshot": {"controld": {"url": f"http://127.0.0.1:{fake}", "token": "bench"}},
        "telemetry": {"enabled": on},
    }
    path = workdir / "bootstrap.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def _snapshot(ctx: Context, backend: int, l7_port: int) -> dict[str, Any]:
    """The dataplane bench's snapshot with only its HTTP listener, on ``l7_port``."""
    snapdir = ctx.tempdir(f"snapshot-{l7_port}")
    render(
        "meshd-snapshot.yaml",
        snapdir / "snapshot.yaml",
        backend_port=backend,
        l7_port=l7_port,
        l4_port=0,
    )
    doc: dict[str, Any] = yaml.safe_load((snapdir / "snapshot.yaml").read_text())
    doc["listeners"] = [lst for lst in doc["listeners"] if lst["name"] == "bench-l7"]
    return doc


@contextlib.contextmanager
def sidecars(ctx: Context, procs: ProcessGroup, backend: int) -> Iterator[Sidecars]:
    """Start the stand-in controld and the three sidecars (in ``procs``) and check each path."""
    ports = free_ports(2 * len(LAYOUT))
    listen = {name: ports[2 * i] for i, name in enumerate(LAYOUT)}
    admin = {name: ports[2 * i + 1] for i, name in enumerate(LAYOUT)}
    snapshots = {name: _snapshot(ctx, backend, listen[name]) for name in LAYOUT}
    tapped = {name for name, (_on, tap) in LAYOUT.items() if tap}
    with FakeControld(snapshots, tapped).serving() as fake:
        started: dict[str, ManagedProcess] = {}
        paths = []
        for name, (on, _tap) in LAYOUT.items():
            boot = _bootstrap(ctx.tempdir(name), name, backend, admin[name], fake.port, on)
            proc = start_meshd(ctx, procs, name, boot, (listen[name],), admin[name])
            started[name] = proc
            paths.append(BenchPath(name, listen[name], process_tree(proc)))
        try:
            for path in paths:
                check_path(path)
            yield Sidecars(fake, started, paths)
        finally:
            # Before their controld goes: a sidecar that loses it logs and retries.
            for proc in started.values():
                proc.stop()


def rounds_setting() -> tuple[int, int]:
    """``BENCH_TELEMETRY_ROUNDS`` (6; 1-50) and ``BENCH_TELEMETRY_DURATION`` (4 s; 1-300)."""
    return (
        env_int("BENCH_TELEMETRY_ROUNDS", 6, 1, 50),
        env_int("BENCH_TELEMETRY_DURATION", 4, 1, 300),
    )


def round_order(paths: list[T], number: int) -> list[T]:
    """The order of round ``number``: rotated by one each round, reversed every other
    ``len(paths)`` rounds, so over ``2 * len(paths)`` rounds each runs at each place, and
    right after each other one, equally often."""
    shift = number % len(paths)
    order = paths[shift:] + paths[:shift]
    if (number // len(paths)) % 2:
        order.reverse()
    return order


@dataclasses.dataclass(frozen=True)
class Rounds:
    """What :func:`measure` measured."""

    #: One :class:`Measured` per sidecar, by name, per round.
    results: list[dict[str, Measured]]
    #: CPU seconds of this process (the stand-in controld's threads: the harness itself only
    #: waits for wrk) over the rounds, and their wall-clock seconds.
    harness_cpu_s: float
    wall_s: float


def measure(ctx: Context, wrk: str, side: Sidecars) -> Rounds:
    """The rounds (see the module doc)."""
    cpu0, wall0 = time.process_time(), time.monotonic()
    rounds, duration = rounds_setting()
    short = dataclasses.replace(
        ctx, wrk=dataclasses.replace(ctx.wrk, duration_s=duration, warmup_s=0)
    )
    warm = dataclasses.replace(
        short, wrk=dataclasses.replace(short.wrk, duration_s=ctx.wrk.warmup_s)
    )
    if ctx.wrk.warmup_s:
        for path in side.paths:
            measure_path(warm, wrk, path)
    results = []
    for number in range(rounds):
        order = round_order(side.paths, number)
        results.append({path.name: measure_path(short, wrk, path) for path in order})
    return Rounds(results, time.process_time() - cpu0, time.monotonic() - wall0)


@dataclasses.dataclass(frozen=True)
class Overhead:
    """The figures of :func:`measure`'s rounds, against the off sidecar in the same round."""

    #: Sidecar -> median over the rounds of its rps / the off sidecar's rps.
    rps_vs_off: dict[str, float]
    #: Sidecar -> median over the rounds of its CPU per request / the off sidecar's.
    cpu_vs_off: dict[str, float]

    @property
    def ratio(self) -> float:
        """``RATIO telemetry_overhead``: the lower of telemetry's and tap's rps ratio."""
        return min(self.rps_vs_off[TELEMETRY], self.rps_vs_off[TAP])


def _round_ratios(rounds: list[dict[str, Measured]], name: str, cpu: bool) -> list[float]:
    values = []
    for results in rounds:
        a, b = results[name], results[OFF]
        if cpu and a.cpu_us_per_req is not None and b.cpu_us_per_req:
            values.append(a.cpu_us_per_req / b.cpu_us_per_req)
        elif not cpu and b.wrk.rps:
            values.append(a.wrk.rps / b.wrk.rps)
    if not values:
        raise BenchError(f"{OFF} completed no requests; no telemetry_overhead to report")
    return values


def report(measured: Rounds, side: Sidecars) -> Overhead:
    """Print the table (medians over the rounds) and the INFO lines; return the figures.

    The caller prints ``RATIO telemetry_overhead`` (:attr:`Overhead.ratio`) with its other
    ratios.
    """
    rounds = measured.results
    rows = []
    for name in LAYOUT:
        runs = [r[name] for r in rounds]
        cpu = [m.cpu_us_per_req for m in runs if m.cpu_us_per_req is not None]
        rows.append(
            [
                name,
                f"{statistics.median(m.wrk.rps for m in runs):.0f}",
                f"{min(m.wrk.rps for m in runs):.0f}-{max(m.wrk.rps for m in runs):.0f}",
                f"{statistics.median(m.wrk.p99_s for m in runs) * 1e3:.3f}",
                f"{statistics.median(cpu):.1f}" if cpu else "-",
                str(sum(m.wrk.requests for m in runs)),
                str(sum(m.wrk.non_2xx + m.wrk.socket_errors for m in runs)),
            ]
        )
    print(f"telemetry overhead: {len(rounds)} rounds, medians per sidecar")
    print_table(["sidecar", "rps", "rps_range", "p99_ms", "cpu_us/req", "requests", "errors"], rows)
    for row in rows:
        if row[-1] != "0":
            print(f"WARNING {row[0]}: {row[-1]} errors; its figures are suspect")
    rps = {n: _round_ratios(rounds, n, cpu=False) for n in (TELEMETRY, TAP)}
    cpus = {n: _round_ratios(rounds, n, cpu=True) for n in (TELEMETRY, TAP)}
    figures = Overhead(
        rps_vs_off={n: statistics.median(v) for n, v in rps.items()},
        cpu_vs_off={n: statistics.median(v) for n, v in cpus.items()},
    )
    for n in (TELEMETRY, TAP):
        # How much the rounds disagree: the noise to read the medians against.
        print(
            f"INFO {n} rps/off per round: {' '.join(f'{v:.2f}' for v in rps[n])}; "
            f"cpu_us/req / off: {' '.join(f'{v:.2f}' for v in cpus[n])}"
        )
    fake = side.fake
    print(
        f"INFO telemetry reports {dict(sorted(fake.reports.items()))}, "
        f"tap events {dict(sorted(fake.events.items()))}"
    )
    # The stand-in controld shares the machine with the sidecars: show what it took.
    print(
        f"INFO stand-in controld (harness process) cpu during the rounds: "
        f"{measured.harness_cpu_s / measured.wall_s * 1e3:.1f} ms/s"
    )
    print(
        f"INFO telemetry_rps_vs_off={figures.rps_vs_off[TELEMETRY]:.3f} "
        f"tap_rps_vs_off={figures.rps_vs_off[TAP]:.3f} (medians of the rounds' ratios)"
    )
    # Steadier than rps on a busy machine: the proxy's own CPU for each request.
    print(
        f"INFO telemetry_cpu_per_request_vs_off={figures.cpu_vs_off[TELEMETRY]:.3f} "
        f"tap_cpu_per_request_vs_off={figures.cpu_vs_off[TAP]:.3f}"
    )
    return figures


#: What the telemetry and the tap run in a sidecar (py-spy function names, inclusive).
PROFILED = (
    "record (meshd/http/exchange.py)",
    "_observe (meshd/http/exchange.py)",
    "TapSampler.wants (meshd/telemetry/tap.py)",
    "TapSampler.observe (meshd/telemetry/tap.py)",
    "TapSampler.take_events (meshd/telemetry/tap.py)",
    "TelemetryReporter.report_once (meshd/telemetry/reporter.py)",
    "ReportBuilder.build (meshd/telemetry/delta.py)",
)


def _print_telemetry_share(collapsed: Path) -> None:
    """The inclusive share of the samples in each of :data:`PROFILED`."""
    _own, total, samples = profile_l7.parse_collapsed(collapsed.read_text())
    print(f"-- telemetry and tap code (inclusive, of {samples} samples)")
    for name in PROFILED:
        print(f"{100.0 * total[name] / max(samples, 1):6.2f}%  {name}")


def main(argv: list[str]) -> int:
    """Only this part: backend, stand-in controld, sidecars, rounds (and py-spy profiles)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, help="BENCH_TELEMETRY_ROUNDS")
    parser.add_argument("--profile", action="store_true", help="then sample each with py-spy")
    parser.add_argument("--py-spy", default=shutil.which("py-spy"))
    parser.add_argument("--gil", action="store_true", help="sample only while the GIL is held")
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--keep", help="directory to keep py-spy's collapsed stacks in")
    args = parser.parse_args(argv)
    if args.profile and not args.py_spy:
        parser.error("--profile needs py-spy (--py-spy PATH)")
    if args.rounds:
        os.environ["BENCH_TELEMETRY_ROUNDS"] = str(args.rounds)
    tools = ensure_tools({"nginx": "nginx-light", "wrk": "wrk"})
    workroot = Path(tempfile.mkdtemp(prefix="meshd-telemetry-"))
    ctx = Context(
        Path(__file__).resolve().parent.parent, sys.executable, WrkParams.from_env(), workroot
    )
    (backend,) = free_ports(1)
    try:
        with ProcessGroup() as procs:
            start_nginx(ctx, procs, tools["nginx"], "backend", "nginx-backend.conf", port=backend)
            with sidecars(ctx, procs, backend) as side:
                rounds = measure(ctx, tools["wrk"], side)
                side.check()
                figures = report(rounds, side)
                print(f"RATIO telemetry_overhead={figures.ratio:.2f}")
                print(f"targets: {TELEMETRY_TARGET.verdict(figures.ratio)}")
                if args.profile:
                    args.keep = args.keep or str(workroot)
                    for path in side.paths:
                        pid = side.procs[path.name].pid
                        profile_l7._profile(
                            args, tools["wrk"], ctx.wrk, Path(path.name), pid, path.port, workroot
                        )
                        _print_telemetry_share(Path(args.keep) / f"profile-{path.name}.txt")
    finally:
        shutil.rmtree(workroot, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
