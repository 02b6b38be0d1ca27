"""meshd's mTLS sidecar pair against an nginx mTLS pair: throughput, p99 at 1000 req/s, handshakes.

Both pairs run in the same run in front of the same nginx backend, one worker each (as in
``dataplane``): wrk -> outbound (plaintext) -> TLS 1.3 with client certificates, pooled and
resumed -> inbound (client certificate required) -> backend. Full (non-resumed) mTLS
handshakes per second of each inbound side come from ``openssl s_time -new``. Prints a table,
then ``RATIO mtls_pair_rps_vs_nginx_pair``, ``MTLS_PAIR_P99_MS``, ``MTLS_HANDSHAKES_PER_S``, the
ratios to the nginx pair (``RATIO mtls_pair_cpu_vs_nginx``, ``handshakes_vs_nginx``,
``mtls_p99_vs_nginx``, ``mtls_p50_vs_nginx``) and a verdict against the targets.
"""

from __future__ import annotations

import json
import os
import re
import socket
import ssl
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import dataplane as dp
from certs import TRUST_DOMAIN, Pki, spiffe_id, write_pki
from common import (
    CLK_TCK,
    BenchError,
    Context,
    ManagedProcess,
    ProcessGroup,
    Target,
    WrkParams,
    WrkResult,
    cpu_ticks,
    ensure_tools,
    env_int,
    free_ports,
    http_get,
    print_table,
    print_verdicts,
    ratio,
    ratio_line,
    render,
    run_wrk,
    start_meshd,
    wait_for_port,
)
from dataplane import BODY, BenchPath, Measured
from rounds import median_figures, paired_order, rounds_from_env, rounds_lines

TOOLS = {"nginx": "nginx-light", "wrk": "wrk", "openssl": "openssl"}
SERVICES = ("web", "api")
#: The offered rate of the p99 runs, requests per second (the issue's figure).
RATE = 1000
#: What ``openssl s_time -www /`` sends on each new connection.
S_TIME_REQUEST = b"GET / HTTP/1.0\r\n\r\n"
_S_TIME_SUMMARY = re.compile(
    r"^(\d+) connections in [0-9.]+s; [0-9.]+ connections/user sec, bytes read (\d+)$", re.M
)


@dataclass(frozen=True)
class Settings:
    """This suite's own knobs (``BENCH_MTLS_*``), on top of ``ctx.wrk``."""

    rate_connections: int = 20
    hs_clients: int = 2
    hs_seconds: int = 5

    @classmethod
    def from_env(cls) -> Settings:
        """Read ``BENCH_MTLS_*`` (clamped: connections 1-200, clients 1-8, seconds 1-60)."""
        return cls(
            rate_connections=env_int("BENCH_MTLS_RATE_CONNECTIONS", 20, 1, 200),
            hs_clients=env_int("BENCH_MTLS_HS_CLIENTS", 2, 1, 8),
            hs_seconds=env_int("BENCH_MTLS_HS_SECONDS", 5, 1, 60),
        )


@dataclass(frozen=True)
class MtlsServer:
    """An inbound side that ``s_time`` makes full handshakes with."""

    name: str
    port: int
    cpu_pids: Callable[[], list[int]]
    #: Connections the server refused so far (client certificate, plaintext, HTTP non-2xx).
    refused: Callable[[], int]


@dataclass(frozen=True)
class Handshakes:
    """What the ``s_time`` clients did against one inbound side."""

    name: str
    wall_s: float
    connections: int
    #: Connections the server counted as refused while ``s_time`` ran.
    refused: int
    #: Connections whose handshake completed as mTLS: each got the backend's full response.
    completed: int
    cpu_us_per_hs: float | None

    @property
    def per_s(self) -> float:
        """Completed handshakes per second of wall time."""
        return self.completed / self.wall_s if self.wall_s > 0 else 0.0


def parse_s_time(output: str) -> tuple[int, int]:
    """``(connections, bytes read)`` from ``openssl s_time``'s summary line."""
    match = _S_TIME_SUMMARY.search(output)
    if match is None:
        # s_time stops at the first connection or request it cannot make.
        raise BenchError(f"openssl s_time failed (no summary):\n{output[-2000:]}")
    return int(match.group(1)), int(match.group(2))


def completed_handshakes(connections: int, bytes_read: int, response_len: int, refused: int) -> int:
    """How many of ``connections`` were mTLS exchanges that got the whole response.

    With TLS 1.3 the client's handshake is done before the server has checked the client
    certificate, so ``s_time`` counts refused connections too. meshd resets them (they read
    nothing), nginx answers 400 (a different length): so neither more than the bytes read
    hold ``response_len``-byte responses, nor more than the server did not refuse.
    """
    if response_len <= 0:
        raise BenchError("the expected response is empty")
    return max(0, min(connections - refused, bytes_read // response_len))


def _mean_delay_ms(connections: int) -> int:
    return max(1, round(connections * 1000 / RATE))


def rate_script(dest: Path, connections: int) -> Path:
    """The wrk Lua script offering about ``RATE`` req/s over ``connections`` connections."""
    mean = _mean_delay_ms(connections)
    values = {"connections": connections, "rate": RATE, "mean_delay_ms": mean}
    return render("wrk-rate.lua", dest, max_delay_ms=2 * mean, **values)


def sidecar_config(workdir: Path, pki: Pki, service: str, **ports: int) -> Path:
    """Write the bootstrap and snapshot of ``service``'s sidecar (``web``: outbound to
    ``inbound_port``, ``api``: inbound) into ``workdir``; returns the bootstrap.

    ``ports``: ``port`` (its listener), ``admin_port``, ``app_port`` and ``inbound_port``.
    """
    side = "inbound" if service == "api" else "outbound"
    ids = {"trust_domain": TRUST_DOMAIN, "spiffe_id": spiffe_id("api")}
    render(f"meshd-mtls-{side}.yaml", workdir / "snapshot.yaml", **ids, **ports)
    files = {"cert": pki.leaves[service].cert, "key": pki.leaves[service].key, "root": pki.root}
    values = {"service": service, "dir": workdir, **files, **ports}
    return render("meshd-mtls-bootstrap.yaml", workdir / "bootstrap.yaml", **values)


def without_identity(bootstrap: Path) -> None:
    """Drop the identity from a bootstrap :func:`sidecar_config` wrote: the sidecar then
    neither accepts nor originates TLS (the snapshot's ``mtls`` mode needs an identity to
    act), so a pair of two such sidecars is two plain L7 hops."""
    text = bootstrap.read_text()
    bootstrap.write_text(text[: text.index("\nidentity:") + 1])


def _start_sidecar(
    ctx: Context, procs: ProcessGroup, pki: Pki, service: str, ports: dict[str, int], *,
    plain: bool = False,
) -> ManagedProcess:  # fmt: skip
    name = "meshd-inbound" if service == "api" else "meshd-outbound"
    workdir = ctx.tempdir(f"{name}-plain" if plain else name)
    bootstrap = sidecar_config(workdir, pki, service, **ports)
    if plain:
        without_identity(bootstrap)
    return start_meshd(ctx, procs, name, bootstrap, [ports["port"]], ports["admin_port"])


def _mtls_exchange(port: int, pki: Pki, *, with_cert: bool) -> bytes:
    """What an ``s_time``-like client (client certificate from ``web`` or none) reads back."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.check_hostname = False  # the server's identity is not what this checks
    ctx.load_verify_locations(pki.root)
    if with_cert:
        ctx.load_cert_chain(pki.leaves["web"].cert, pki.leaves["web"].key)
    data = b""
    try:
        with (
            socket.create_connection(("127.0.0.1", port), timeout=5.0) as raw,
            ctx.wrap_socket(raw) as tls,
        ):
            tls.sendall(S_TIME_REQUEST)
            while piece := tls.recv(65536):
                data += piece
    except (OSError, ssl.SSLError):
        if with_cert:
            raise
    return data


def check_mtls_server(name: str, port: int, pki: Pki) -> int:
    """The inbound side answers 200 with the body to a client certificate, not without one.

    Returns the response's length: every completed ``s_time`` connection reads this much.
    """
    try:
        good = _mtls_exchange(port, pki, with_cert=True)
    except (OSError, ssl.SSLError) as exc:
        raise BenchError(f"{name} (127.0.0.1:{port}): mTLS request failed: {exc}") from exc
    if not good.startswith((b"HTTP/1.1 200", b"HTTP/1.0 200")) or not good.endswith(BODY):
        raise BenchError(f"{name}: mTLS request got {good[:500]!r}")
    bare = _mtls_exchange(port, pki, with_cert=False)
    if bare.startswith((b"HTTP/1.1 200", b"HTTP/1.0 200")):
        raise BenchError(f"{name} answered 200 to a client without a certificate: not mTLS")
    return len(good)


def _meshd_refused(admin_port: int) -> int:
    status, body, head = http_get(admin_port, "/stats")
    if status != 200:
        raise BenchError(f"meshd /stats is not serving:\n{head}")
    mtls = json.loads(body).get("mtls") or {}
    return int(mtls.get("handshake_failed", 0)) + int(mtls.get("plaintext_refused", 0))


def _handshakes(
    ctx: Context,
    openssl: str,
    pki: Pki,
    settings: Settings,
    server: MtlsServer,
    response_len: int,
    round_index: int = 0,
) -> Handshakes:
    leaf = pki.leaves["web"]
    argv = [openssl, "s_time", "-connect", f"127.0.0.1:{server.port}", "-new", "-tls1_3"]
    argv += ["-cert", str(leaf.cert), "-key", str(leaf.key), "-CAfile", str(pki.root)]
    argv += ["-www", "/", "-time", str(settings.hs_seconds)]
    workdir = ctx.tempdir(f"s_time-{server.name}" + (f"-{round_index + 1}" if round_index else ""))
    pids = server.cpu_pids()
    before = cpu_ticks(pids)
    refused_before = server.refused()
    started = time.monotonic()
    with ProcessGroup() as group:
        clients = [group.start(f"client{i}", argv, cwd=workdir) for i in range(settings.hs_clients)]
        for client in clients:
            try:
                client.popen.wait(settings.hs_seconds + 30)
            except subprocess.TimeoutExpired as exc:
                raise BenchError(f"openssl s_time against {server.name} did not finish") from exc
    wall = time.monotonic() - started
    spent = cpu_ticks(pids) - before
    refused = server.refused() - refused_before
    connections = bytes_read = 0
    for client in clients:
        conns, read = parse_s_time(client.log.read_text(errors="replace"))
        connections += conns
        bytes_read += read
    completed = completed_handshakes(connections, bytes_read, response_len, refused)
    cpu = spent / CLK_TCK * 1e6 / completed if completed else None
    return Handshakes(server.name, wall, connections, refused, completed, cpu)


def _start_relay_pair(
    ctx: Context, procs: ProcessGroup, pki: Pki, out_port: int, in_port: int, backend: int
) -> tuple[ManagedProcess, ManagedProcess]:
    """The two sides of the Trio mTLS relay pair (the floor of any Trio sidecar pair)."""
    script = Path(__file__).parent / "reference" / "tls_relay.py"
    started = []
    for side, service, port, upstream in (
        ("in", "api", in_port, backend),
        ("out", "web", out_port, in_port),
    ):
        leaf = pki.leaves[service]
        argv = [ctx.python, str(script), side, str(port), str(upstream)]
        argv += [str(leaf.cert), str(leaf.key), str(pki.root)]
        name = f"tls-relay-{side}"
        proc = procs.start(name, argv, cwd=ctx.tempdir(name), env=ctx.project_env())
        wait_for_port(port, proc)
        started.append(proc)
    return started[0], started[1]


def _measure_rate(ctx: Context, wrk: str, path: BenchPath, settings: Settings) -> WrkResult:
    script = rate_script(ctx.workdir / f"rate-{path.name}.lua", settings.rate_connections)
    params = WrkParams(1, settings.rate_connections, ctx.wrk.duration_s, 0)
    return run_wrk(wrk, f"http://127.0.0.1:{path.port}/", params, params.duration_s, script=script)


def _both(*sides: Callable[[], list[int]]) -> Callable[[], list[int]]:
    return lambda: [pid for side in sides for pid in side()]


def _opt(value: float | None, digits: int = 0) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _row(name: str, load: str, wrk: WrkResult, cpu_us: float | None) -> list[str]:
    latency = [f"{wrk.p50_s * 1e3:.3f}", f"{wrk.p99_s * 1e3:.3f}"]
    errors = str(wrk.non_2xx + wrk.socket_errors)
    if errors != "0":
        print(f"WARNING {name} ({load}): {errors} non-2xx or socket errors; figures suspect")
    return [name, load, f"{wrk.rps:.0f}", *latency, _opt(cpu_us, 1), str(wrk.requests), errors]


def _hs_row(h: Handshakes) -> list[str]:
    if h.completed < h.connections:
        print(f"WARNING {h.name}: {h.connections - h.completed} s_time connections not mTLS-ok")
    counts = [str(h.connections), str(h.refused), str(h.completed)]
    return [h.name, f"{h.wall_s:.2f}", *counts, f"{h.per_s:.0f}", _opt(h.cpu_us_per_hs)]


@dataclass(frozen=True)
class Round:
    """One round's measurements of the two pairs (the first round's ``full`` has every path)."""

    full: list[Measured]
    rate: dict[str, WrkResult]
    hs: list[Handshakes]

    def figures(self) -> dict[str, float | None]:
        """The rps ratio at full load, then :func:`ratios`."""
        rps = {m.path.name: m.wrk.rps for m in self.full}
        pair_rps = ratio(rps.get("meshd-mtls-pair"), rps.get("nginx-mtls-pair"))
        return {RPS_RATIO: pair_rps, **ratios(self.full, self.rate, self.hs)}


RPS_RATIO = "mtls_pair_rps_vs_nginx_pair"


def _report(rounds: list[Round], settings: Settings) -> None:
    """Tables (later rounds' rows marked ``#<round>``), INFO, RATIO lines (each the median of
    the rounds', :mod:`rounds`) and the verdict."""
    rows, hs_rows = [], []
    for index, r in enumerate(rounds, start=1):
        mark = "" if index == 1 else f"#{index}"
        rows += [_row(m.path.name + mark, "full", m.wrk, m.cpu_us_per_req) for m in r.full]
        rows += [_row(name + mark, f"{RATE}/s", w, None) for name, w in r.rate.items()]
        hs_rows += [_hs_row(replace(h, name=h.name + mark)) for h in r.hs]
    headers = ["path", "load", "rps", "p50_ms", "p99_ms", "cpu_us/req", "requests", "errors"]
    print_table(headers, rows)
    print()
    hs_headers = ["handshakes", "wall_s", "connections", "refused", "mtls_ok", "per_s", "cpu_us/hs"]
    print_table(hs_headers, hs_rows)
    first = rounds[0]
    rps = {m.path.name: m.wrk.rps for m in first.full}
    if not rps["nginx-mtls-pair"]:
        raise BenchError("the nginx pair completed no requests; no ratio to report")
    each = [r.figures() for r in rounds]
    figures = median_figures(each)
    handshakes = statistics.median(
        h.per_s for r in rounds for h in r.hs if h.name == "meshd-inbound"
    )
    rate = first.rate
    achieved = ", ".join(f"{name}={r.rps:.0f}" for name, r in rate.items())
    print(
        f"INFO p99 at {RATE}/s offered: wrk -t1 -c{settings.rate_connections}, each connection "
        f"waiting a random 0-{2 * _mean_delay_ms(settings.rate_connections)} ms before each "
        f"request (bench/templates/wrk-rate.lua); achieved req/s: {achieved}"
    )
    print(
        f"INFO handshakes: {settings.hs_clients} x openssl s_time -new -tls1_3 -www / for "
        f"{settings.hs_seconds}s per server; only connections that read the full response count"
    )
    # Context, not a target: the same pair with no HTTP work (bench/reference/tls_relay.py).
    floor = rps["trio-tls-relay-pair"] / rps["nginx-mtls-pair"]
    print(f"INFO mtls_trio_relay_pair_floor_vs_nginx_pair={floor:.2f}")
    if len(rounds) > 1:
        for line in rounds_lines(each):
            print(line)
    rps_ratio = figures.pop(RPS_RATIO)
    print(ratio_line(RPS_RATIO, rps_ratio))
    meshd_p99, nginx_p99 = (
        statistics.median(r.rate[f"{n}-mtls-pair"].p99_s * 1e3 for r in rounds)
        for n in ("meshd", "nginx")
    )
    print(f"MTLS_PAIR_P99_MS rps={RATE} meshd={meshd_p99:.2f} nginx={nginx_p99:.2f}")
    print(f"MTLS_HANDSHAKES_PER_S value={handshakes:.0f}")
    for name, value in figures.items():
        print(ratio_line(name, value))
    checks: list[tuple[Target, float | None]] = [
        (RPS_TARGET, rps_ratio),
        (HANDSHAKES_TARGET, handshakes),
        *((t, figures[t.name]) for t in TARGETS),
    ]
    print_verdicts(checks)


#: The rps ratio and absolute handshake rate this suite has reported from the start.
RPS_TARGET = Target("ratio", 0.5, at_most=False)
HANDSHAKES_TARGET = Target("handshakes/s", 800, at_most=False)
#: Issue 15's targets, each against the nginx pair in the same run.
TARGETS = (
    Target("mtls_pair_cpu_vs_nginx", 2.5, at_most=True),
    Target("handshakes_vs_nginx", 1.0, at_most=False),
    Target("mtls_p99_vs_nginx", 1.5, at_most=True),
    Target("mtls_p50_vs_nginx", 1.5, at_most=True),
)


def ratios(
    full: list[Measured], rate: dict[str, WrkResult], hs: list[Handshakes]
) -> dict[str, float | None]:
    """The meshd pair against the nginx pair, by name: CPU per request at full load, full
    handshakes per second (inbound sides), and p99 and p50 latency at the fixed rate.

    None when a figure is missing (no requests, no completed handshake).
    """
    cpu = {m.path.name: m.cpu_us_per_req for m in full}
    per_s = {h.name: h.per_s for h in hs}
    meshd, nginx = rate.get("meshd-mtls-pair"), rate.get("nginx-mtls-pair")
    p99 = (meshd.p99_s, nginx.p99_s) if meshd is not None and nginx is not None else (None, None)
    p50 = (meshd.p50_s, nginx.p50_s) if meshd is not None and nginx is not None else (None, None)
    return {
        "mtls_pair_cpu_vs_nginx": ratio(cpu.get("meshd-mtls-pair"), cpu.get("nginx-mtls-pair")),
        "handshakes_vs_nginx": ratio(per_s.get("meshd-inbound"), per_s.get("nginx-back")),
        "mtls_p99_vs_nginx": ratio(*p99),
        "mtls_p50_vs_nginx": ratio(*p50),
    }


def run_suite(ctx: Context) -> None:
    """Start the backend, both pairs and the PKI on loopback; check, load and compare them."""
    tools = ensure_tools(TOOLS)
    settings = Settings.from_env()
    pki = write_pki(ctx.tempdir("pki"), SERVICES)
    backend, front, back, outbound, inbound, out_admin, in_admin = free_ports(7)
    relay_out, relay_in = free_ports(2)
    print(
        f"mtls: {ctx.wrk.describe()} per pair after a {ctx.wrk.warmup_s}s warm-up; "
        f"{os.cpu_count()} CPUs, load {os.getloadavg()[0]:.2f}; meshd on {ctx.python}",
        flush=True,
    )
    nginx = tools["nginx"]
    with ProcessGroup() as procs:
        backend_proc = dp.start_nginx(
            ctx, procs, nginx, "backend", "nginx-backend.conf", port=backend
        )
        # The nginx templates find the certificates in ../pki, next to their own directory.
        back_proc = dp.start_nginx(
            ctx, procs, nginx, "nginx-back", "nginx-mtls-back.conf", port=back, backend_port=backend
        )
        front_proc = dp.start_nginx(
            ctx, procs, nginx, "nginx-front", "nginx-mtls-front.conf", port=front, back_port=back
        )
        ports = {"app_port": backend, "inbound_port": inbound}
        mesh_in = _start_sidecar(
            ctx, procs, pki, "api", {**ports, "port": inbound, "admin_port": in_admin}
        )
        mesh_out = _start_sidecar(
            ctx, procs, pki, "web", {**ports, "port": outbound, "admin_port": out_admin}
        )
        relays = _start_relay_pair(ctx, procs, pki, relay_out, relay_in, backend)
        stats = json.loads(http_get(in_admin, "/stats")[1])
        if stats.get("mtls", {}).get("mode") != "strict":
            raise BenchError(f"meshd-inbound is not in STRICT mTLS mode: {stats.get('mtls')}")
        paths = [
            BenchPath("direct", backend, None),
            BenchPath(
                "nginx-mtls-pair",
                front,
                _both(dp.nginx_workers(front_proc), dp.nginx_workers(back_proc)),
            ),
            BenchPath(
                "meshd-mtls-pair",
                outbound,
                _both(dp.process_tree(mesh_out), dp.process_tree(mesh_in)),
            ),
            BenchPath("trio-tls-relay-pair", relay_out, _both(*map(dp.process_tree, relays))),
        ]
        for path in paths:
            dp.check_path(path)
        not_ok_log = back_proc.log.parent / "not-ok.log"
        servers = [
            MtlsServer(
                "meshd-inbound", inbound, dp.process_tree(mesh_in), lambda: _meshd_refused(in_admin)
            ),
            MtlsServer(
                "nginx-back",
                back,
                dp.nginx_workers(back_proc),
                lambda: len(not_ok_log.read_bytes().splitlines()),
            ),
        ]
        response_len = {s.name: check_mtls_server(s.name, s.port, pki) for s in servers}
        full = []
        for path in paths:
            full.append(dp.measure_path(ctx, tools["wrk"], path))
            print(f"mtls: measured {path.name}", file=sys.stderr, flush=True)
        pairs = paths[1:3]
        rounds = []
        for index in range(rounds_from_env()):
            if index:
                order = paired_order(pairs, index)
                full = [dp.measure_path(ctx, tools["wrk"], p) for p in order]
            rate = {
                p.name: _measure_rate(ctx, tools["wrk"], p, settings)
                for p in paired_order(pairs, index)
            }
            hs = [
                _handshakes(ctx, tools["openssl"], pki, settings, s, response_len[s.name], index)
                for s in paired_order(servers, index)
            ]
            rounds.append(Round(full, rate, hs))
            print(f"mtls: measured round {index + 1}", file=sys.stderr, flush=True)
        for proc in (backend_proc, back_proc, front_proc, mesh_in, mesh_out, *relays):
            if not proc.alive():
                raise BenchError(f"{proc.name} died during the run:\n{proc.log_tail()}")
        created = json.loads(http_get(out_admin, "/clusters")[1])
    endpoints = next(c for c in created if c["name"] == "api")["endpoints"]
    print(
        f"INFO meshd-outbound opened {sum(e.get('created', 0) for e in endpoints)} mTLS "
        "connections to meshd-inbound in all"
    )
    _report(rounds, settings)
