"""controld push convergence and memory with 1000 simulated sidecars (long-poll, ACK).

``bench/run controlplane`` starts ``controld run`` (embedded registry, its own data dir and
admin token file, free loopback ports) and then:

1. registers the mesh's instances in the registry (``PUT /v1/catalog/register``): 10 services
   ``s0``..``s9`` with 100 instances each, so every cluster has 100 endpoints;
2. mints one sidecar token per service (``POST /v1/tokens/sidecar``) and applies the routes
   the rounds will change (one ``HTTPRoute`` per service);
3. connects 1000 simulated sidecars (:mod:`cp_sidecars`, one epoll loop in this process, one
   keep-alive connection each): sidecar ``s<i>-<n>`` has inbound port ``30000 + 100 i + n``
   and upstreams ``s<i+1>``, ``s<i+2>`` (mod 10); each registers its descriptor, takes its
   first snapshot and parks its next poll (the ACK);
4. runs ``BENCH_CP_ROUNDS`` (5) rounds: one ``PUT /v1/resources`` changes the timeout of every
   service's route (one revision), which changes every sidecar's snapshot. A sidecar's
   convergence is the time from just before the PUT was sent to its ACK (the next poll, sent
   as soon as the new snapshot's version and hash are read). Rounds start once no push
   arrived for ``BENCH_CP_SETTLE_MS`` (2000), so each measures one change on its own.

Prints a per-round table, controld's own ``controld_convergence_seconds`` as INFO, then
exactly::

    P99_CONVERGENCE_MS sidecars=1000 value=<p99 over every sidecar of every round, ms>
    CONTROLD_KB_PER_SIDECAR value=<(VmRSS parked with the sidecars - VmRSS at start) / n, KB>

and a verdict against the targets (p99 <= 1000 ms, <= 200 KB per sidecar). A round where a
sidecar errs or does not converge within 30 s fails the suite. controld is stopped by pid.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import time
from pathlib import Path
from typing import Any

from common import (
    BenchError,
    Context,
    ManagedProcess,
    ProcessGroup,
    Response,
    env_int,
    free_ports,
    percentile,
    print_table,
    raise_fd_limit,
    tree_rss_kb,
    wait_for_port,
)
from cp_sidecars import Conn, Loop, SimSidecar, build_request, start_sidecars

TARGET_P99_MS = 1000.0
TARGET_KB = 200.0
SERVICES = 10
ROUND_TIMEOUT_S = 30.0
START_TIMEOUT_S = 60.0


# -- a blocking JSON client for the set-up calls --------------------------------------------


class Api:
    """Keep-alive JSON requests to one port (set-up only; the measured part uses the loop)."""

    def __init__(self, port: int, token: str | None = None) -> None:
        self.port = port
        self.token = token
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)

    def close(self) -> None:
        """Close the connection."""
        self.conn.close()

    def call(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        """One request; status and decoded JSON (None for an empty body)."""
        headers = {"Content-Type": "application/json"}
        if self.token is not None:
            headers["Authorization"] = f"Bearer {self.token}"
        data = None if body is None else json.dumps(body).encode()
        try:
            self.conn.request(method, path, body=data, headers=headers)
            resp = self.conn.getresponse()
            raw = resp.read()
        except (OSError, http.client.HTTPException) as exc:
            self.conn.close()
            raise BenchError(f"{method} 127.0.0.1:{self.port}{path} failed: {exc}") from exc
        try:
            return resp.status, json.loads(raw) if raw.strip() else None
        except ValueError:
            return resp.status, raw.decode(errors="replace")

    def ok(self, method: str, path: str, body: Any = None) -> Any:
        """Like :meth:`call`, BenchError unless 2xx."""
        status, doc = self.call(method, path, body)
        if not 200 <= status < 300:
            raise BenchError(f"{method} {path}: HTTP {status}: {str(doc)[:500]}")
        return doc


# -- set-up -----------------------------------------------------------------------------------


def _start_controld(
    ctx: Context, procs: ProcessGroup
) -> tuple[ManagedProcess, int, int, int, Path]:
    registry_port, admin_port, push_port = free_ports(3)
    workdir = ctx.tempdir("controld")
    token_file = workdir / "admin-token"
    argv = [ctx.python, "-m", "controld", "run", "--data-dir", str(workdir / "data")]
    argv += ["--registry-listen", f"127.0.0.1:{registry_port}"]
    argv += ["--admin", f"127.0.0.1:{admin_port}", "--admin-token-file", str(token_file)]
    # The sidecars long-poll on the push listener, as meshd does by default.
    argv += ["--push", f"127.0.0.1:{push_port}", "--tls", "off"]
    # info shows the store revisions and compile rounds with their times (for diagnosis).
    argv += ["--log-level", os.environ.get("BENCH_CP_LOG_LEVEL", "warning")]
    proc = procs.start("controld", argv, cwd=workdir, env=ctx.project_env())
    wait_for_port(admin_port, proc, timeout=START_TIMEOUT_S)
    deadline = time.monotonic() + START_TIMEOUT_S
    with contextlib.closing(Api(admin_port)) as api:
        while api.call("GET", "/ready")[0] != 200:
            if time.monotonic() > deadline or not proc.alive():
                raise BenchError(f"controld not ready:\n{proc.log_tail()}")
            time.sleep(0.1)
    while not token_file.exists():
        if time.monotonic() > deadline:
            raise BenchError(f"controld wrote no admin token file {token_file}")
        time.sleep(0.05)
    return proc, registry_port, admin_port, push_port, token_file


def _svc(i: int) -> str:
    return f"s{i % SERVICES}"


def _register_instances(registry_port: int, per_service: int) -> None:
    with contextlib.closing(Api(registry_port)) as api:
        for i in range(SERVICES):
            for n in range(per_service):
                api.ok(
                    "PUT",
                    "/v1/catalog/register",
                    {
                        "Node": f"bench-node-{n % 10}",
                        "Address": "127.0.0.1",
                        "Service": {
                            "ID": f"{_svc(i)}-{n}",
                            "Service": _svc(i),
                            "Address": "127.0.0.1",
                            "Port": 20000 + 100 * i + n,
                            "Tags": ["v1" if n % 2 == 0 else "v2"],
                        },
                    },
                )


def _wait_discovery(admin: Api, expected: int, proc: ManagedProcess) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    seen = -1
    while True:
        status = admin.ok("GET", "/v1/status")
        services = status.get("discovery", {}).get("services", {})
        seen = sum(len(eps) for name, eps in services.items() if name.startswith("s"))
        if seen >= expected:
            return
        if time.monotonic() > deadline or not proc.alive():
            raise BenchError(f"controld sees {seen} of {expected} endpoints:\n{proc.log_tail()}")
        time.sleep(0.2)


def _routes(timeout_s: float) -> list[dict[str, Any]]:
    """One HTTPRoute per service; changing ``timeout_s`` changes every sidecar's snapshot."""
    return [
        {
            "apiVersion": "meshd.io/v1",
            "kind": "HTTPRoute",
            "metadata": {"name": f"bench-{_svc(i)}"},
            "spec": {
                "service": _svc(i),
                "rules": [
                    {
                        "name": "bench",
                        "match": {"path": {"prefix": "/bench"}},
                        "timeout_s": timeout_s,
                    }
                ],
            },
        }
        for i in range(SERVICES)
    ]


def _descriptors(per_service: int) -> list[dict[str, object]]:
    return [
        {
            "proxy_id": f"{_svc(i)}-{n}",
            "service": _svc(i),
            "inbound": {"host": "127.0.0.1", "port": 30000 + 100 * i + n},
            "upstreams": [
                {"service": _svc(i + 1), "port": 15001},
                {"service": _svc(i + 2), "port": 15002},
            ],
            "meshd_version": "bench",
        }
        for n in range(per_service)
        for i in range(SERVICES)
    ]


# -- measuring --------------------------------------------------------------------------------


def _check_errors(sims: list[SimSidecar]) -> None:
    errors = [s.error for s in sims if s.error is not None]
    if errors:
        raise BenchError(f"{len(errors)} sidecar(s) failed, e.g. {errors[0]}")


def _settle(loop: Loop, sims: list[SimSidecar], quiet_s: float, timeout: float) -> None:
    """Poll until no sidecar got a snapshot for ``quiet_s`` (BenchError after ``timeout``)."""
    deadline = time.monotonic() + timeout
    count = sum(len(s.acks) for s in sims)
    quiet_since = time.monotonic()
    while time.monotonic() - quiet_since < quiet_s:
        if time.monotonic() > deadline:
            raise BenchError(f"pushes did not stop within {timeout:.0f}s")
        loop.poll(0.1)
        _check_errors(sims)
        now = sum(len(s.acks) for s in sims)
        if now != count:
            count, quiet_since = now, time.monotonic()


def _round(
    loop: Loop, writer: Conn, admin_token: str, sims: list[SimSidecar], timeout_s: float
) -> tuple[list[float], int, float]:
    """Change every route, wait for every sidecar's ACK.

    Returns the latencies (ms), the extra pushes, and how long the PUT took to answer (ms).
    """
    before = {id(s): (len(s.acks), s.hash) for s in sims}
    answer: list[tuple[Response, float]] = []
    writer.handler = lambda _c, resp, stamp: answer.append((resp, stamp))
    body = json.dumps({"resources": _routes(timeout_s)}).encode()
    request = build_request("PUT", "/v1/resources", loop.port, admin_token, body)
    t0 = time.perf_counter()
    loop.send(writer, request)

    def converged(sim: SimSidecar) -> bool:
        count, old = before[id(sim)]
        return any(h != old for _, _, h in sim.acks[count:])

    pending = list(sims)

    def done() -> bool:
        _check_errors(sims)
        pending[:] = [s for s in pending if not converged(s)]
        return not pending and bool(answer)

    try:
        loop.run_until(done, ROUND_TIMEOUT_S, "round")
    except BenchError as exc:
        raise BenchError(f"{exc}: {len(pending)} sidecars did not get the change") from exc
    resp, acked = answer[0]
    if resp.status != 200:
        raise BenchError(f"PUT /v1/resources: HTTP {resp.status} {resp.body[:500]!r}")
    latencies = []
    extra = 0
    for sim in sims:
        count, old = before[id(sim)]
        fresh = sim.acks[count:]
        first = next(t for t, _, h in fresh if h != old)
        latencies.append(max(0.0, first - t0) * 1000.0)
        extra += len(fresh) - 1
    return latencies, extra, (acked - t0) * 1000.0


def _convergence_metric(admin_port: int) -> list[str]:
    with contextlib.closing(Api(admin_port)) as api:
        api.conn.request("GET", "/metrics")
        resp = api.conn.getresponse()
        text = resp.read().decode(errors="replace")
    wanted = (
        "controld_convergence_seconds",
        "controld_snapshot_pushes_total",
        "controld_snapshot_nacks_total",
        "controld_connected_sidecars",
        "controld_compile_seconds_count",
        "controld_compile_seconds_sum",
    )
    lines = [
        ln
        for ln in text.splitlines()
        if ln.startswith(wanted) and "_created" not in ln and 'le="' not in ln
    ]
    prefix = "controld_convergence_seconds_bucket"
    buckets = [ln for ln in text.splitlines() if ln.startswith(prefix)]
    # Only the buckets where the count changes: the shape without 15 lines of noise.
    shown: list[str] = []
    last = None
    for ln in buckets:
        value = ln.rsplit(" ", 1)[-1]
        if value != last:
            shown.append(ln)
            last = value
    return lines + shown


def run_suite(ctx: Context) -> None:
    """Start controld, connect the sidecars, run the rounds, print the figures."""
    per_service = env_int("BENCH_CP_INSTANCES", 100, 1, 500)
    rounds = env_int("BENCH_CP_ROUNDS", 5, 1, 50)
    # controld works through the ACK polls for a while after the last push: rounds apart.
    settle_s = env_int("BENCH_CP_SETTLE_MS", 2000, 100, 30_000) / 1000.0
    n_sidecars = per_service * SERVICES
    raise_fd_limit(2 * n_sidecars + 512)
    suite_start = time.monotonic()
    with ProcessGroup() as procs:
        proc, registry_port, admin_port, push_port, token_file = _start_controld(ctx, procs)
        time.sleep(1.0)
        rss_start = tree_rss_kb(proc.pid)
        admin_token = token_file.read_text().strip()
        setup_start = time.monotonic()
        _register_instances(registry_port, per_service)
        with contextlib.closing(Api(admin_port, admin_token)) as admin:
            tokens = {
                _svc(i): str(admin.ok("POST", "/v1/tokens/sidecar", {"service": _svc(i)})["token"])
                for i in range(SERVICES)
            }
            admin.ok("PUT", "/v1/resources", {"resources": _routes(1.0)})
            _wait_discovery(admin, n_sidecars, proc)
        rss_registered = tree_rss_kb(proc.pid)
        print(
            f"INFO set-up: {n_sidecars} instances registered, tokens minted, routes applied "
            f"in {time.monotonic() - setup_start:.1f}s"
        )
        loop = Loop(push_port)
        try:
            connect_start = time.monotonic()
            sims = start_sidecars(loop, _descriptors(per_service), tokens)

            def all_started() -> bool:
                _check_errors(sims)
                return all(s.acks for s in sims)

            loop.run_until(
                all_started,
                START_TIMEOUT_S,
                "first snapshot of every sidecar",
            )
            first_s = time.monotonic() - connect_start
            _settle(loop, sims, quiet_s=1.0, timeout=START_TIMEOUT_S)
            print(
                f"INFO {n_sidecars} sidecars registered and got their first snapshot in "
                f"{first_s:.2f}s ({loop.reconnects} reconnects)"
            )
            (writer,) = loop.open(1)
            rows = []
            every: list[float] = []
            for number in range(1, rounds + 1):
                reconnects = loop.reconnects
                latencies, extra, put_ms = _round(loop, writer, admin_token, sims, 1.0 + number)
                every += latencies
                rows.append(
                    [
                        str(number),
                        f"{put_ms:.1f}",
                        f"{min(latencies):.1f}",
                        f"{percentile(latencies, 50):.1f}",
                        f"{percentile(latencies, 99):.1f}",
                        f"{max(latencies):.1f}",
                        str(extra),
                        str(loop.reconnects - reconnects),
                    ]
                )
                _settle(loop, sims, quiet_s=settle_s, timeout=ROUND_TIMEOUT_S)
            # Parked right now: every sidecar's ACK poll is waiting in controld.
            _settle(loop, sims, quiet_s=1.0, timeout=ROUND_TIMEOUT_S)
            rss_parked = tree_rss_kb(proc.pid)
            reconnects = loop.reconnects
            registrations = sum(s.registrations for s in sims)
            if not proc.alive():
                raise BenchError(f"controld died during the run:\n{proc.log_tail()}")
            metric_lines = _convergence_metric(admin_port)
        finally:
            loop.close()
    print(
        f"{n_sidecars} sidecars ({SERVICES} services x {per_service}, 2 upstreams each), "
        f"{rounds} rounds of one PUT changing every service's HTTPRoute"
    )
    print_table(
        ["round", "put_ms", "min_ms", "p50_ms", "p99_ms", "max_ms", "extra_pushes", "reconnects"],
        rows,
    )
    for line in metric_lines:
        print(f"INFO {line}")
    print(
        f"INFO controld VmRSS: start {rss_start} kB, instances registered {rss_registered} kB, "
        f"sidecars parked {rss_parked} kB; reconnects {reconnects}, "
        f"registrations {registrations}; suite {time.monotonic() - suite_start:.1f}s"
    )
    p99 = percentile(every, 99)
    kb = (rss_parked - rss_start) / n_sidecars
    print(f"P99_CONVERGENCE_MS sidecars={n_sidecars} value={p99:.2f}")
    print(f"CONTROLD_KB_PER_SIDECAR value={kb:.2f}")
    ok_p99 = "meets" if p99 <= TARGET_P99_MS else "MISSES"
    ok_kb = "meets" if kb <= TARGET_KB else "MISSES"
    print(
        f"verdict: convergence p99 {p99:.2f} ms {ok_p99} the target (<= {TARGET_P99_MS:.0f} ms); "
        f"{kb:.2f} KB per sidecar {ok_kb} the target (<= {TARGET_KB:.0f} KB)"
    )
