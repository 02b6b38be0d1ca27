"""Chaos in controld mode: steady load on three ``api`` instances while one dies, then another.

controld (embedded registry) and four meshd sidecars, all real processes: ``api-1..3`` in
front of three backend processes (tests/integration/backends.py) and ``web-1``, whose outbound
listener for ``api`` the test's client calls at a steady rate. The policy is what a user
would write for this: an HTTPRoute for ``api`` with ``retries: {attempts: 3, retry_on:
[connect-failure, reset, gateway-error]}`` and a ServiceDefaults with ``outlier_detection``.

1. ``kill -9`` of the sidecar ``api-1`` (its app keeps running): at most
   :data:`MAX_FAILED` failed client requests, none started :data:`QUIET_AFTER_S` or more
   after the kill.
2. ``kill -9`` of the app behind ``api-2`` (its sidecar keeps running): the same bounds.

A failed request is a non-2xx answer or no answer (error, client timeout). Both phases run
before anything is asserted, so the message reports both, with every failure's time and kind.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
from backends import Backend, Backends, running_backends
from cp_mesh_support import Api, Controld, Sidecar, free_ports, wait_for

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]

MAX_FAILED = 2
QUIET_AFTER_S = 2.0
#: Client request rate (one new connection per request, as many apps do).
RATE_RPS = 80.0
#: Steady load before the first kill, and how long each phase is watched after its kill.
WARMUP_S = 3.0
PHASE_S = 8.0
#: Hard bounds of the load, whatever happens.
MAX_REQUESTS = 3000
MAX_LOAD_S = 60.0
CLIENT_TIMEOUT_S = 5.0
API = ("api-1", "api-2", "api-3")
WARM_UP = "warm-up (nothing killed yet)"


def _route() -> dict[str, Any]:
    return {
        "apiVersion": "meshd.io/v1",
        "kind": "HTTPRoute",
        "metadata": {"name": "api"},
        "spec": {
            "service": "api",
            "rules": [
                {
                    "name": "all",
                    "match": {"path": {"prefix": "/"}},
                    "timeout_s": 5,
                    "retries": {
                        "attempts": 3,
                        "per_try_timeout_s": 1,
                        "retry_on": ["connect-failure", "reset", "gateway-error"],
                    },
                }
            ],
        },
    }


def _defaults() -> dict[str, Any]:
    return {
        "apiVersion": "meshd.io/v1",
        "kind": "ServiceDefaults",
        "metadata": {"name": "api"},
        "spec": {
            "outlier_detection": {
                "consecutive_5xx": 3,
                "consecutive_gateway_errors": 2,
                "consecutive_local_origin_failures": 2,
                "interval_s": 1,
                "base_ejection_s": 30,
                # Two of three instances go down in this test: both may be ejected.
                "max_ejection_percent": 100,
            }
        },
    }


# -- the processes --------------------------------------------------------------------------


class ChaosMesh:
    """controld, the backends and the sidecars; everything stopped by PID in :meth:`stop`."""

    def __init__(self, workdir: Path, backends: Backends) -> None:
        self.workdir = workdir
        self.controld = Controld(workdir / "controld")
        self.controld.workdir.mkdir()
        self.backends = backends
        self.apps: dict[str, Backend] = {}
        self.sidecars: dict[str, Sidecar] = {}

    def stop(self) -> None:
        """Sidecars first (they deregister), then controld; the backends go with the fixture."""
        for sidecar in self.sidecars.values():
            sidecar.stop()
        self.controld.stop()


@pytest.fixture
def chaos(tmp_path: Path) -> Iterator[ChaosMesh]:
    with running_backends(tmp_path / "backends") as backends:
        mesh = ChaosMesh(tmp_path, backends)
        try:
            yield mesh
        finally:
            mesh.stop()


async def _start_mesh(mesh: ChaosMesh, api: Api) -> int:
    """Start everything, apply the policy, wait until web reaches every api instance; the
    port of web's outbound listener for ``api``."""
    controld = mesh.controld
    for name in (*API, "web-1"):
        mesh.apps[name] = mesh.backends.start(name)
    ports = iter(free_ports(5))
    web_api_port = next(ports)
    tokens: dict[str, str] = {}
    for name in (*API, "web-1"):
        service = name.split("-")[0]
        if service not in tokens:
            doc = await api.ok("POST", "/v1/tokens/sidecar", {"service": service})
            tokens[service] = str(doc["token"])
        sidecar = Sidecar(
            mesh.workdir,
            name,
            service,
            app_port=mesh.apps[name].port,
            inbound_port=next(ports),
            upstreams={"api": web_api_port} if service == "web" else {},
        )
        sidecar.write_bootstrap(controld, tokens[service])
        mesh.sidecars[name] = sidecar
    async with trio.open_nursery() as nursery:
        for sidecar in mesh.sidecars.values():
            nursery.start_soon(sidecar.start)
    resp = await api.apply(_route(), _defaults())
    assert resp.status_code == 200, resp.text

    seen: set[str] = set()
    async with httpx.AsyncClient(timeout=5.0) as client:

        async def every_api() -> bool:
            try:
                got = await client.get(f"http://127.0.0.1:{web_api_port}/")
            except httpx.HTTPError:
                return False
            if got.status_code == 200:
                seen.add(got.text.strip())
            return set(API) <= seen

        await wait_for(every_api, what="web -> api reaching all three instances", every=0.02)

    async def all_acked() -> bool:
        proxies = await api.proxies()
        return all(
            (p := proxies.get(name)) is not None
            and p["connected"]
            and p["acked_hash"] is not None
            and p["acked_hash"] == p["latest_hash"]
            for name in mesh.sidecars
        )

    await wait_for(all_acked, what="every sidecar acked the policy")
    return web_api_port


# -- the load -------------------------------------------------------------------------------


@dataclass
class Outcome:
    """One client request: when it started (s since the load began) and how it ended."""

    started: float
    ok: bool
    detail: str


@dataclass
class Load:
    """Requests at :data:`RATE_RPS` on fresh connections until stopped (bounded)."""

    port: int
    outcomes: list[Outcome] = field(default_factory=list)
    t0: float = 0.0
    stop: trio.Event = field(default_factory=trio.Event)

    def now(self) -> float:
        """Seconds since the load began."""
        return trio.current_time() - self.t0

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        limits = httpx.Limits(max_keepalive_connections=0, max_connections=200)
        async with (
            httpx.AsyncClient(timeout=CLIENT_TIMEOUT_S, limits=limits) as client,
            trio.open_nursery() as nursery,
        ):
            self.t0 = trio.current_time()
            task_status.started()
            with trio.move_on_after(MAX_LOAD_S):
                for i in range(MAX_REQUESTS):
                    if self.stop.is_set():
                        break
                    await trio.sleep_until(self.t0 + i / RATE_RPS)
                    nursery.start_soon(self._one, client)

    async def _one(self, client: httpx.AsyncClient) -> None:
        started = self.now()
        try:
            resp = await client.get(f"http://127.0.0.1:{self.port}/")
        except httpx.HTTPError as exc:
            self.outcomes.append(Outcome(started, False, f"{type(exc).__name__}: {exc}"))
            return
        ok = 200 <= resp.status_code < 300
        reason = resp.headers.get("x-meshd-error", "")
        detail = f"{resp.status_code} {reason}".strip() if not ok else resp.text.strip()
        self.outcomes.append(Outcome(started, ok, detail))


@dataclass
class Phase:
    """What the client saw from one kill until the next event."""

    name: str
    start: float
    end: float
    outcomes: list[Outcome]

    @property
    def failed(self) -> list[Outcome]:
        """Failed requests started in the phase."""
        return [o for o in self.outcomes if not o.ok]

    @property
    def failed_late(self) -> list[Outcome]:
        """Failed requests started :data:`QUIET_AFTER_S` or more after the kill."""
        return [o for o in self.failed if o.started >= self.start + QUIET_AFTER_S]

    @property
    def passed(self) -> bool:
        """Within the bounds of the issue."""
        return len(self.failed) <= MAX_FAILED and not self.failed_late

    def report(self) -> str:
        served = {o.detail for o in self.outcomes if o.ok}
        head = f"{self.name}: {len(self.outcomes)} requests, {len(self.failed)} failed"
        if self.name != WARM_UP:
            head += (
                f" (at most {MAX_FAILED}), {len(self.failed_late)} failed {QUIET_AFTER_S:g} s"
                " or more after the kill (none allowed)"
            )
        lines = [f"{head}; served by {sorted(served)}"]
        for o in self.failed[:15]:
            lines.append(f"    +{o.started - self.start:6.3f}s  {o.detail}")
        if len(self.failed) > 15:
            lines.append(f"    ... {len(self.failed) - 15} more")
        return "\n".join(lines)


def _phase(load: Load, name: str, start: float, end: float) -> Phase:
    return Phase(name, start, end, [o for o in load.outcomes if start <= o.started < end])


async def _kill9_sidecar(sidecar: Sidecar) -> None:
    proc = sidecar.proc
    assert proc is not None and proc.poll() is None
    proc.kill()
    with trio.fail_after(10):
        while proc.poll() is None:
            await trio.sleep(0.01)


# -- the test -------------------------------------------------------------------------------


async def test_kill9_sidecar_then_crash_app_under_load(chaos: ChaosMesh) -> None:
    await chaos.controld.start()
    api = Api(chaos.controld)
    try:
        port = await _start_mesh(chaos, api)
        load = Load(port)
        async with trio.open_nursery() as nursery:
            await nursery.start(load.run)
            await trio.sleep(WARMUP_S)
            killed_sidecar = load.now()
            await _kill9_sidecar(chaos.sidecars["api-1"])
            await trio.sleep(PHASE_S)
            crashed_app = load.now()
            chaos.apps["api-2"].kill9()
            await trio.sleep(PHASE_S)
            end = load.now()
            load.stop.set()
    except BaseException:
        for sidecar in chaos.sidecars.values():
            print(f"--- {sidecar.name}\n{sidecar.log_tail()}")
        print(f"--- controld\n{chaos.controld.log_tail(60)}")
        raise
    finally:
        await api.aclose()

    warm = _phase(load, WARM_UP, 0.0, killed_sidecar)
    phases = [
        _phase(load, "kill -9 of sidecar api-1", killed_sidecar, crashed_app),
        _phase(load, "kill -9 of the app behind api-2", crashed_app, end),
    ]
    counts = {name: app.count() for name, app in chaos.apps.items()}
    report = "\n".join(
        [
            f"{len(load.outcomes)} requests at {RATE_RPS:g} rps over {end:.1f} s; "
            f"requests seen by the apps: {counts}",
            warm.report(),
            *(p.report() for p in phases),
        ]
    )
    print(report)
    assert not warm.failed, report
    assert all(p.passed for p in phases), report
