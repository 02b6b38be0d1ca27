"""controld memory and load with 1000 simulated sidecars sending telemetry once a second.

``bench/run telemetry`` starts ``controld run`` (embedded registry, free loopback ports) and
connects ``BENCH_TM_SIDECARS`` (1000) simulated sidecars to its push listener (one epoll loop
in this process, :mod:`cp_sidecars`, a keep-alive connection each). Sidecar ``s<i>-<n>`` is
of service ``s<i>`` (10 services) and calls ``s<i+1>`` and ``s<i+2>``; its report (the shape
meshd sends, :class:`meshcore.api.report.TelemetryReport`) has 2 route series, 10 endpoint
series (5 of the 100 instances of each destination) with latency histograms and errors, one
TCP series and policy counts. Every sidecar sends a report each second for
``BENCH_TM_SECONDS`` (30) with the admin token (simulated sidecars are not registered, which
the admin token allows). Then it prints controld's resident memory and the reports it
answered, exactly::

    RSS_MB controld_telemetry_1000=<VmRSS of controld after the run, MB>
    WINDOW_MB full_window_1000=<memory of a full 15-minute window of the same reports, MB>

The second figure is measured in this process (tracemalloc) by merging the same reports into
a :class:`controld.telemetry.TelemetryWindow` for all 91 buckets of a 15-minute window with a
simulated clock: the bench's own run covers only ``BENCH_TM_SECONDS`` of the window, and the
window's memory grows with the buckets it fills until it is full.
"""

from __future__ import annotations

import json
import os
import random
import time
import tracemalloc
from typing import Any

from common import (
    BenchError,
    Context,
    ProcessGroup,
    Response,
    cpu_ticks,
    env_int,
    raise_fd_limit,
    tree_rss_kb,
)
from controlplane import _start_controld
from cp_sidecars import Conn, Loop, build_request

SERVICES = 10
INSTANCES = 100


def _report(i: int, rng: random.Random) -> dict[str, Any]:
    """The report of simulated sidecar ``i``."""
    service = i % SERVICES
    dsts = [f"s{(service + 1) % SERVICES}", f"s{(service + 2) % SERVICES}"]
    latency = [0, 0, 5, 40, 30, 10, 5, 2, 1, 0, 0, 0, 0, 0, 0]
    http = [
        {
            "destination": d,
            "route": f"{d}-route",
            "requests": 93,
            "errors": {"http_5xx": 1},
            "latency": latency,
            "mtls": True,
        }
        for d in dsts
    ]
    endpoints = []
    for d in dsts:
        for n in rng.sample(range(INSTANCES), 5):
            ep_latency = [0, 0, 1, 8, 6, 2, 1, 0, 0, 0, 0, 0, 0, 0, 0]
            endpoints.append(
                {
                    "destination": d,
                    "cluster": d,
                    "endpoint": f"10.{int(d[1:])}.0.{n}:8080",
                    "requests": 18,
                    "errors": {"http_5xx": 0} if n % 2 else {},
                    "latency": ep_latency,
                }
            )
    return {
        "service": f"s{service}",
        "seq": 0,
        "snapshot_version": 3,
        "cert_not_after": time.time() + 86400,
        "http": http,
        "endpoints": endpoints,
        "tcp": [{"destination": dsts[0], "opened": 2, "closed": 2, "bytes_in": 900, "mtls": True}],
        "counts": {"retries": 1, "denied": 0},
    }


def _full_window_mb(reports: list[dict[str, Any]]) -> float:
    """Memory of a full window (91 buckets) of these reports, merged in this process."""
    from controld.telemetry import TelemetryWindow
    from meshcore.api.report import TelemetryReport

    parsed = [TelemetryReport.model_validate(r) for r in reports]
    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    window = TelemetryWindow()
    t0 = 1_800_000_000.0
    for bucket in range(91):
        now = t0 + bucket * 10
        for i, report in enumerate(parsed):
            window.ingest(f"sim-{i}", report, now)
    used = tracemalloc.get_traced_memory()[0] - base
    tracemalloc.stop()
    if window.status_json()["buckets"] < 90:
        raise BenchError("the simulated window did not fill")
    return used / 1e6


def run_suite(ctx: Context) -> None:
    """Start controld, send the reports, print the figures."""
    count = env_int("BENCH_TM_SIDECARS", 1000, 1, 10_000)
    seconds = env_int("BENCH_TM_SECONDS", 30, 1, 3600)
    raise_fd_limit(count + 512)
    rng = random.Random(14)
    reports = [_report(i, rng) for i in range(count)]
    with ProcessGroup() as procs:
        proc, _registry_port, _admin_port, push_port, token_file = _start_controld(ctx, procs)
        time.sleep(1.0)
        rss_start = tree_rss_kb(proc.pid)
        token = token_file.read_text().strip()
        bodies = [
            build_request(
                "POST",
                f"/v1/telemetry/sim-{i}",
                push_port,
                token,
                json.dumps(r, separators=(",", ":")).encode(),
            )
            for i, r in enumerate(reports)
        ]
        loop = Loop(push_port)
        answered = 0
        errors: list[str] = []

        def on_answer(conn: Conn, resp: Response, _stamp: float) -> None:
            nonlocal answered
            if resp.status != 200:
                errors.append(f"HTTP {resp.status}: {resp.body[:200]!r}")
            answered += 1

        try:
            conns = loop.open(count)
            for conn in conns:
                conn.handler = on_answer
            start = time.monotonic()
            ticks_start = cpu_ticks([proc.pid])
            late = 0
            for second in range(seconds):
                tick = start + second
                for conn, body in zip(conns, bodies, strict=True):
                    if conn.waiting:
                        late += 1  # the previous report is not answered yet: skip this one
                        continue
                    loop.send(conn, body)
                while time.monotonic() < tick + 1.0:
                    loop.poll(max(0.0, min(0.2, tick + 1.0 - time.monotonic())))
                if errors:
                    raise BenchError(f"controld refused reports: {errors[:3]}")
            loop.run_until(lambda: not any(c.waiting for c in conns), 30.0, "last reports")
            elapsed = time.monotonic() - start
            cpu_s = (cpu_ticks([proc.pid]) - ticks_start) / os.sysconf("SC_CLK_TCK")
            rss_end = tree_rss_kb(proc.pid)
        finally:
            loop.close()
        if not proc.alive():
            raise BenchError(f"controld died:\n{proc.log_tail()}")
    print(
        f"INFO {answered} reports answered in {elapsed:.1f}s ({answered / elapsed:.0f}/s), "
        f"{late} skipped while the previous one was pending; controld CPU "
        f"{100 * cpu_s / elapsed:.0f}% of a core"
    )
    print(f"INFO controld VmRSS {rss_start / 1024:.1f} MB at start, {rss_end / 1024:.1f} MB after")
    full = _full_window_mb(reports)
    print(f"RSS_MB controld_telemetry_{count}={rss_end / 1024:.1f}")
    print(f"WINDOW_MB full_window_{count}={full:.1f}")
