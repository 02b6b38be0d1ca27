#!/usr/bin/env python3
"""Latency a caller feels through the ``mtls`` suite's pairs at a low rate, paired.

Not a suite (no ``run_suite``): a tool for working on the mTLS pair's latency. It starts what
``bench/mtls.py`` starts for its p99 figure (the backend nginx, the nginx mTLS pair and, per
checkout named, the meshd pair: ``meshd-outbound`` -> mTLS -> ``meshd-inbound`` -> backend),
then, per round, either

* (default) sends ``GET /`` at ``--rate`` ticks per second (exponential gaps) over
  ``--connections`` kept-alive connections per pair, one request at a time: each tick sends
  one request to every pair in turn (the order rotating each tick) and times it from just
  before the send to the last byte of the response. The machine's noise of each moment weighs
  on every pair alike, and nothing overlaps: only the path's own latency, no queueing. Prints
  per pair p50/p90/p99/max in ms, the round's ratios to the nginx pair (``x50``, ``x99``),
  then their medians over the rounds (``PAIRED``);
* or, with ``--wrk SECONDS``, runs ``bench/mtls.py``'s own p99 measure (wrk, 20 connections,
  ~1000 req/s offered, ``bench/templates/wrk-rate.lua``) for SECONDS on each pair in turn (the
  order rotating each round): wrk's p50/p99 per pair and round, then ``WRK_PAIRED`` medians.

    .venv/bin/python bench/latency_trace.py --rounds 5 mypyc:.
    .venv/bin/python bench/latency_trace.py --rounds 5 mypyc:/tmp/base mypyc:.
    .venv/bin/python bench/latency_trace.py --rounds 4 --wrk 6 mypyc:/tmp/base mypyc:.

A checkout named ``mypyc:DIR`` runs DIR's mypyc-compiled build (what ``bench/run`` measures),
as in ``bench/profile_l7.py``; a plain ``DIR`` runs its source. ``+key=value`` after a
checkout adds a setting to both sidecars' listener in the snapshot (e.g.
``mypyc:.+max_requests_per_connection=1000000``). ``--hold`` keeps everything running after
the rounds, printing the pairs' ports and pids (for strace, perf), until Ctrl-C.
"""

from __future__ import annotations

import argparse
import json
import random
import re
import shutil
import socket
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import dataplane as dp
import mtls
from certs import Pki, write_pki
from common import (
    BenchError,
    Context,
    ManagedProcess,
    ProcessGroup,
    WrkParams,
    WrkResult,
    ensure_tools,
    free_ports,
    http_get,
    run_wrk,
    start_meshd,
)
from common import parse_response as parse
from profile_l7 import _checkout_ctx

REQUEST = b"GET / HTTP/1.1\r\nHost: bench\r\n\r\n"


@dataclass
class Pair:
    """One path under test and the latencies measured through it (seconds, per round)."""

    name: str
    port: int
    pids: list[int]
    #: meshd-outbound's admin port (None: the nginx pair).
    admin: int | None = None
    conns: list[socket.socket] = field(default_factory=list)
    rounds: list[list[float]] = field(default_factory=list)

    def connect(self, count: int) -> None:
        for _ in range(count):
            sock = socket.create_connection(("127.0.0.1", self.port), timeout=5.0)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self.conns.append(sock)

    def request(self, i: int) -> float:
        """One request on connection ``i``: the seconds to its whole response."""
        sock = self.conns[i % len(self.conns)]
        buf = bytearray()
        started = time.perf_counter()
        sock.sendall(REQUEST)
        while True:
            piece = sock.recv(65536)
            if not piece:
                raise BenchError(f"{self.name}: connection closed")
            buf += piece
            done = parse(buf)
            if done is not None:
                elapsed = time.perf_counter() - started
                if done[0].status != 200 or done[1] != len(buf):
                    raise BenchError(f"{self.name}: unexpected response {bytes(buf[:300])!r}")
                return elapsed


def start_sidecar(
    ctx: Context,
    procs: ProcessGroup,
    pki: Pki,
    service: str,
    ports: dict[str, int],
    settings: list[str],
) -> ManagedProcess:
    """``mtls._start_sidecar``, with ``settings`` (``key=value``) added to its listener."""
    name = "meshd-inbound" if service == "api" else "meshd-outbound"
    workdir = ctx.tempdir(name)
    bootstrap = mtls.sidecar_config(workdir, pki, service, **ports)
    snapshot = workdir / "snapshot.yaml"
    text = snapshot.read_text()
    for setting in settings:
        key, _, value = setting.partition("=")
        text = re.sub(r"(\n  - \{name: \w+, direction: [^}]*)\}", rf"\1, {key}: {value}}}", text)
    snapshot.write_text(text)
    return start_meshd(ctx, procs, name, bootstrap, [ports["port"]], ports["admin_port"])


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))]


def run_round(pairs: list[Pair], rate: float, seconds: float, rng: random.Random) -> None:
    """Ticks at ``rate`` per second (exponential gaps), one request to every pair per tick."""
    samples: list[list[float]] = [[] for _ in pairs]
    end = time.monotonic() + seconds
    nxt = time.monotonic()
    tick = 0
    while nxt < end:
        now = time.monotonic()
        if nxt > now:
            time.sleep(nxt - now)
        order = list(range(len(pairs)))
        shift = tick % len(pairs)
        order = order[shift:] + order[:shift]
        for j in order:
            samples[j].append(pairs[j].request(tick))
        tick += 1
        nxt += rng.expovariate(rate)
    for pair, values in zip(pairs, samples, strict=True):
        pair.rounds.append(values)


def summary(values: list[float]) -> str:
    ms = [v * 1e3 for v in values]
    figures = (
        f"p50={pct(ms, 50):.3f} p90={pct(ms, 90):.3f} p99={pct(ms, 99):.3f} "
        f"max={max(ms):.3f} mean={statistics.fmean(ms):.3f}"
    )
    return f"n={len(ms)} {figures}"


def wrk_rounds(base: Context, wrk: str, pairs: list[Pair], rounds: int, seconds: int) -> None:
    """``bench/mtls.py``'s p99 measure, per round on every pair in turn: prints each run's
    p50/p99 and each round's ratios to the nginx pair, then their medians."""
    script = mtls.rate_script(base.workdir / "rate.lua", 20)
    params = WrkParams(1, 20, seconds, 0)
    x50: dict[str, list[float]] = {}
    x99: dict[str, list[float]] = {}
    for rnd in range(rounds):
        shift = rnd % len(pairs)
        results: dict[str, WrkResult] = {}
        for pair in pairs[shift:] + pairs[:shift]:
            url = f"http://127.0.0.1:{pair.port}/"
            results[pair.name] = run_wrk(wrk, url, params, seconds, script=script)
        ref = results[pairs[0].name]
        for pair in pairs:
            r = results[pair.name]
            line = f"round {rnd} {pair.name:>24}: rps={r.rps:.0f} p50={r.p50_s * 1e3:.3f}"
            line += f" p99={r.p99_s * 1e3:.3f} errors={r.non_2xx + r.socket_errors}"
            if pair is not pairs[0]:
                x50.setdefault(pair.name, []).append(r.p50_s / ref.p50_s)
                x99.setdefault(pair.name, []).append(r.p99_s / ref.p99_s)
                line += f"  x50={x50[pair.name][-1]:.2f} x99={x99[pair.name][-1]:.2f}"
            print(line, flush=True)
    for name, ratios in x50.items():
        print(
            f"WRK_PAIRED {name} / nginx: p50 x{statistics.median(ratios):.2f} "
            f"p99 x{statistics.median(x99[name]):.2f} (median of {rounds} rounds)"
        )


def main(argv: list[str]) -> int:
    """Parse the arguments, start everything, run the rounds, print the figures."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("checkouts", nargs="+", help="meshd trees (mypyc:DIR: DIR compiled)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=10.0, help="per round")
    parser.add_argument("--rate", type=float, default=200.0, help="ticks per second")
    parser.add_argument("--connections", type=int, default=20, help="per pair")
    parser.add_argument(
        "--wrk",
        type=int,
        default=0,
        metavar="SECONDS",
        help="instead: per round, the mtls suite's wrk rate run (~1000 req/s, 20 connections) "
        "for SECONDS on each pair in turn (the order rotating each round)",
    )
    parser.add_argument("--hold", action="store_true", help="keep running after the rounds")
    args = parser.parse_args(argv)
    tools = ensure_tools({"nginx": "nginx-light", "wrk": "wrk"})
    workroot = Path(tempfile.mkdtemp(prefix="meshd-latency-"))
    base = Context(Path.cwd(), sys.executable, WrkParams.from_env(), workroot)
    pki = write_pki(base.tempdir("pki"), mtls.SERVICES)
    backend, front, back = free_ports(3)
    rng = random.Random(15)
    try:
        with ProcessGroup() as procs:
            nginx = tools["nginx"]
            dp.start_nginx(base, procs, nginx, "backend", "nginx-backend.conf", port=backend)
            back_proc = dp.start_nginx(
                base, procs, nginx, "nginx-back", "nginx-mtls-back.conf",
                port=back, backend_port=backend,
            )  # fmt: skip
            front_proc = dp.start_nginx(
                base, procs, nginx, "nginx-front", "nginx-mtls-front.conf",
                port=front, back_port=back,
            )  # fmt: skip
            nginx_pids = [*dp.nginx_workers(front_proc)(), *dp.nginx_workers(back_proc)()]
            pairs = [Pair("nginx-mtls-pair", front, nginx_pids)]
            for i, spec in enumerate(args.checkouts):
                tree, *settings = spec.split("+")
                ctx = _checkout_ctx(
                    Context(Path.cwd(), sys.executable, base.wrk, base.tempdir(f"c{i}")), tree, i
                )
                inbound, outbound, in_admin, out_admin = free_ports(4)
                ports = {"app_port": backend, "inbound_port": inbound}
                mesh_in = start_sidecar(
                    ctx, procs, pki, "api", {**ports, "port": inbound, "admin_port": in_admin},
                    settings,
                )  # fmt: skip
                mesh_out = start_sidecar(
                    ctx, procs, pki, "web", {**ports, "port": outbound, "admin_port": out_admin},
                    settings,
                )  # fmt: skip
                pids = [mesh_out.pid, mesh_in.pid]
                pairs.append(Pair(f"{i}:{spec}", outbound, pids, admin=out_admin))
            for pair in pairs:
                dp.check_path(dp.BenchPath(pair.name, pair.port, None))
                pair.connect(args.connections)
            # Warm-up: every connection (and the pools behind them) used a few times.
            for k in range(args.connections * 5):
                for pair in pairs:
                    pair.request(k)
            for pair in pairs:
                print(f"PAIR {pair.name} port={pair.port} pids={pair.pids}", flush=True)
            if args.wrk:
                wrk_rounds(base, tools["wrk"], pairs, args.rounds, args.wrk)
            for rnd in range(args.rounds if not args.wrk else 0):
                run_round(pairs, args.rate, args.seconds, rng)
                ref = pairs[0].rounds[-1]
                for pair in pairs:
                    values = pair.rounds[-1]
                    line = f"round {rnd} {pair.name:>24}: {summary(values)}"
                    if pair is not pairs[0]:
                        line += (
                            f"  x50={pct(values, 50) / pct(ref, 50):.2f}"
                            f" x99={pct(values, 99) / pct(ref, 99):.2f}"
                        )
                    print(line, flush=True)
            for pair in pairs[1:] if pairs[0].rounds else []:
                both = list(zip(pair.rounds, pairs[0].rounds, strict=True))
                x50 = [pct(v, 50) / pct(r, 50) for v, r in both]
                x99 = [pct(v, 99) / pct(r, 99) for v, r in both]
                print(
                    f"PAIRED {pair.name} / nginx: p50 x{statistics.median(x50):.2f} "
                    f"p99 x{statistics.median(x99):.2f} (median of {len(x50)} rounds)"
                )
            for pair in pairs if pairs[0].rounds else []:
                print(f"ALL {pair.name:>24}: {summary([v for r in pair.rounds for v in r])}")
            for pair in pairs:
                if pair.admin is not None:
                    clusters = json.loads(http_get(pair.admin, "/clusters")[1])
                    api = next(c for c in clusters if c["name"] == "api")["endpoints"]
                    opened = sum(e.get("created", 0) for e in api)
                    print(f"INFO {pair.name}: meshd-outbound opened {opened} mTLS connections")
            if args.hold:
                print("holding; Ctrl-C to stop", flush=True)
                try:
                    while True:
                        time.sleep(3600)
                except KeyboardInterrupt:
                    pass
            for pair in pairs:
                for sock in pair.conns:
                    sock.close()
    finally:
        shutil.rmtree(workroot, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
