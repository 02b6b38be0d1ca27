"""meshd-l7 with telemetry reports, and with a tap active, against both off (same run, wrk).

``bench/run telemetry_overhead`` starts an nginx backend, a stand-in controld (a threaded
stdlib server in this process: registration, the snapshot long-poll with the dataplane
bench's snapshot, telemetry reports answered with the taps it is told to announce) and three
meshd sidecars in controld mode with the same snapshot:

* ``meshd-l7-off``: ``telemetry: {enabled: false}``, no tap;
* ``meshd-l7-telemetry``: telemetry reports every second, no tap;
* ``meshd-l7-tap``: telemetry reports and a tap matching every request (100 events/s).

Each path gets the dataplane bench's wrk load (``BENCH_DURATION``, ``BENCH_CONNECTIONS``, ...)
in ``BENCH_TO_ROUNDS`` (3) rounds, each in another order; the best rps of each path counts.
On a machine busy with other work the figures move by more than the 5 % measured; the
``cpu_per_request_vs_off`` INFO line (the proxies' own CPU per request) moves less. Prints a table,
then exactly::

    RATIO telemetry_overhead=<min(telemetry, tap) rps / off rps>

and a verdict against the target (>= 0.95). A sidecar that NACKs its snapshot or sends no
report (or, tapped, no event) fails the suite.
"""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import yaml
from common import (
    BenchError,
    Context,
    ProcessGroup,
    ensure_tools,
    env_int,
    free_ports,
    print_table,
    render,
    start_meshd,
)
from dataplane import BenchPath, check_path, measure_path, process_tree, start_nginx

TARGET = 0.95
TOOLS = {"nginx": "nginx-light", "wrk": "wrk"}
_HASH = "bench-snapshot"


class FakeControld:
    """Just enough of controld's sidecar API for meshd in controld mode (see the module doc)."""

    def __init__(self, snapshot: dict[str, Any], tapped: set[str]) -> None:
        self.snapshot = snapshot
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
                self._answer(200, {"version": 1, "hash": _HASH, "snapshot": fake.snapshot})

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", "0"))
                body = json.loads(self.rfile.read(length) or b"{}")
                path = urlsplit(self.path).path
                proxy_id = path.split("/")[3]
                if path.startswith("/v1/proxies/"):
                    self._answer(200, {"proxy_id": proxy_id})
                elif path.endswith("/nack"):
                    with fake.lock:
                        fake.nacks.append(str(body.get("error")))
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
                                "max_events_per_s": 100,
                                "remaining_s": 3600,
                            }
                        )
                    self._answer(200, {"taps": taps})
                else:
                    self._answer(404, {"error": "not here"})

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = int(self.server.server_address[1])
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> FakeControld:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


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


def run_suite(ctx: Context) -> None:
    """Start the backend, the stand-in controld and three sidecars; load each path."""
    tools = ensure_tools(TOOLS)
    rounds = env_int("BENCH_TO_ROUNDS", 3, 1, 10)
    backend, l7, l4 = free_ports(3)
    with ProcessGroup() as procs:
        backend_proc = start_nginx(
            ctx, procs, tools["nginx"], "backend", "nginx-backend.conf", port=backend
        )
        snapdir = ctx.tempdir("snapshot")
        render(
            "meshd-snapshot.yaml",
            snapdir / "snapshot.yaml",
            backend_port=backend,
            l7_port=l7,
            l4_port=l4,
        )
        template = yaml.safe_load((snapdir / "snapshot.yaml").read_text())
        layout = [("meshd-l7-off", False, False), ("meshd-l7-telemetry", True, False)]
        layout.append(("meshd-l7-tap", True, True))
        tapped = {name for name, _on, tap in layout if tap}
        ports = free_ports(2 * len(layout))
        # One snapshot for all three: the listener port comes from the snapshot, so each
        # sidecar gets its own copy with its own port (identical otherwise).
        snapshots: dict[str, dict[str, Any]] = {}
        for i, (name, _on, _tap) in enumerate(layout):
            doc = json.loads(json.dumps(template))
            doc["listeners"] = [
                {**lst, "address": f"127.0.0.1:{ports[2 * i]}"}
                for lst in doc["listeners"]
                if lst["name"] == "bench-l7"
            ]
            snapshots[name] = doc
        fakes = [FakeControld(snapshots[name], tapped) for name, _on, _tap in layout]
        paths = []
        procs_by_name = {}
        for fake in fakes:
            fake.__enter__()
        try:
            for i, (name, on, _tap) in enumerate(layout):
                workdir = ctx.tempdir(name)
                admin = ports[2 * i + 1]
                bootstrap = _bootstrap(workdir, name, backend, admin, fakes[i].port, on)
                proc = start_meshd(ctx, procs, name, bootstrap, (ports[2 * i],), admin)
                procs_by_name[name] = proc
                paths.append(BenchPath(name, ports[2 * i], process_tree(proc)))
            for path in paths:
                check_path(path)
            best: dict[str, float] = {}
            cpu: dict[str, float] = {}
            table: dict[str, list[str]] = {}
            for number in range(rounds):
                # Each round in another order: no path always runs first or last.
                shift = number % len(paths)
                for path in paths[shift:] + paths[:shift]:
                    m = measure_path(ctx, tools["wrk"], path)
                    if m.cpu_us_per_req is not None:
                        cpu[path.name] = min(cpu.get(path.name, 1e9), m.cpu_us_per_req)
                    if m.wrk.rps > best.get(path.name, -1.0):
                        best[path.name] = m.wrk.rps
                        table[path.name] = [
                            path.name,
                            f"{m.wrk.rps:.0f}",
                            f"{m.wrk.p50_s * 1e3:.3f}",
                            f"{m.wrk.p99_s * 1e3:.3f}",
                            "-" if m.cpu_us_per_req is None else f"{m.cpu_us_per_req:.1f}",
                            str(m.wrk.non_2xx + m.wrk.socket_errors),
                        ]
            for i, (name, on, tap) in enumerate(layout):
                fake = fakes[i]
                if fake.nacks:
                    raise BenchError(f"{name} rejected its snapshot: {fake.nacks[0]}")
                if on and not fake.reports.get(name):
                    raise BenchError(f"{name} sent no telemetry report")
                if tap and not fake.events.get(name):
                    raise BenchError(f"{name} sent no tap event")
            for proc in (backend_proc, *procs_by_name.values()):
                if not proc.alive():
                    raise BenchError(f"{proc.name} died during the run:\n{proc.log_tail()}")
        finally:
            for fake in fakes:
                fake.__exit__()
    print_table(
        ["path", "rps", "p50_ms", "p99_ms", "cpu_us/req", "errors"],
        [table[name] for name, _on, _tap in layout],
    )
    reports = {
        name: f.reports.get(name, 0) for f, (name, _o, _t) in zip(fakes, layout, strict=True)
    }
    events = {name: f.events.get(name, 0) for f, (name, _o, _t) in zip(fakes, layout, strict=True)}
    print(f"INFO telemetry reports {reports}, tap events {events}")
    off = best["meshd-l7-off"]
    if not off:
        raise BenchError("the path with telemetry off completed no requests")
    ratio = min(best["meshd-l7-telemetry"], best["meshd-l7-tap"]) / off
    print(
        f"INFO telemetry_vs_off={best['meshd-l7-telemetry'] / off:.3f} "
        f"tap_vs_off={best['meshd-l7-tap'] / off:.3f}"
    )
    if cpu.get("meshd-l7-off"):
        # Less sensitive to other load on the machine than rps: the proxy's own CPU.
        print(
            f"INFO cpu_per_request_vs_off telemetry="
            f"{cpu['meshd-l7-telemetry'] / cpu['meshd-l7-off']:.3f} "
            f"tap={cpu['meshd-l7-tap'] / cpu['meshd-l7-off']:.3f}"
        )
    print(f"RATIO telemetry_overhead={ratio:.2f}")
    print(f"targets: telemetry_overhead>={TARGET} {'ok' if ratio >= TARGET else 'MISS'}")
