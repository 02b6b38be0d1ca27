"""Restarting the only instance of a service under steady load fails no request.

controld (embedded registry, ACLs on) and two meshd sidecars in controld mode, both registered
in the registry: ``api-1`` in front of the only ``api`` app, and ``web-1``, whose outbound
listener for ``api`` the test's clients call: keep-alive clients and new-connection clients,
each alternating GET and POST. ``web-1`` pools its connections to ``api-1``'s inbound listener,
so ``api-1``'s keep-alive downstreams are a real sidecar's.

1. Socket activation: the test holds ``api-1``'s inbound listening socket (as ``meshd@.socket``
   does) and passes it with ``LISTEN_FDS``/``LISTEN_FDNAMES``/``LISTEN_PID``. A restart is what
   ``systemctl restart`` does with ``RestartKillSignal=SIGUSR2``: SIGUSR2, wait for the exit,
   start the new process with the same socket. Twice. Zero failed requests; the instance never
   leaves the registry.
2. Hand-off (no socket activation, fixed admin port): ``meshd run --takeover`` while the old
   process runs, twice (the second takes over from the first successor). Zero failed requests;
   the instance never leaves the registry; the admin port is served by the new process. Then a
   stop for good (SIGTERM) deregisters it.
"""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path

import httpx
import pytest
import trio
import yaml
from cp_mesh_support import TIMEOUT, Api, Controld, Sidecar, free_ports, wait_for, wait_ready_line
from helpers import clean_env, stop_process
from restart_support import (
    EchoApp,
    Load,
    LoadResult,
    RegistryWatch,
    listening_socket,
    load_report,
    log_events,
    pid_alive,
    spawn_meshd,
)

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]

#: Restarts in a row under the same load (the second is of a process that took over).
RESTARTS = 2
#: Steady load before, between and after the restarts.
BETWEEN_REQUESTS = 150


class RestartMesh:
    """controld, the app, ``web-1`` and the ``api-1`` processes; all stopped by PID."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.controld = Controld(workdir / "controld")
        self.controld.workdir.mkdir()
        self.app = EchoApp(workdir)
        self.web: Sidecar | None = None
        self.api: Sidecar | None = None
        self.api_procs: list[subprocess.Popen[bytes]] = []
        self.held: list[socket.socket] = []
        self.registry_token = ""
        self.web_api_port = 0
        self.api_admin_port = 0

    def stop(self) -> None:
        """Sidecars first, then controld and the app; then the sockets the test held."""
        for proc in self.api_procs:
            stop_process(proc)
        if self.web is not None:
            self.web.stop()
        self.controld.stop()
        self.app.stop()
        for sock in self.held:
            sock.close()

    async def start(self, api: Api) -> None:
        """controld, the app and ``web-1``; ``api-1``'s bootstrap (not started)."""
        await self.controld.start()
        self.app.start()
        inbound, self.web_api_port, web_inbound, self.api_admin_port = free_ports(4)
        tokens = {}
        for service in ("api", "web"):
            doc = await api.ok("POST", "/v1/tokens/sidecar", {"service": service})
            tokens[service] = str(doc["token"])
        self.api = Sidecar(self.workdir, "api-1", "api", self.app.port, inbound)
        self.api.write_bootstrap(self.controld, tokens["api"])
        doc = yaml.safe_load(self.api.bootstrap_path.read_text())
        # The defaults a user gets: admin on a fixed port, the registry check's default
        # interval (5 s, TTL 15 s); drain within 10 s.
        doc["admin"] = f"127.0.0.1:{self.api_admin_port}"
        doc["registry"]["check"] = {"kind": "tcp"}
        doc["drain_timeout_s"] = 10.0
        self.api.bootstrap_path.write_text(yaml.safe_dump(doc, sort_keys=False))
        self.registry_token = (self.workdir / "api-1.registry-token").read_text().strip()
        self.web = Sidecar(
            self.workdir,
            "web-1",
            "web",
            self.app.port,
            web_inbound,
            upstreams={"api": self.web_api_port},
        )
        self.web.write_bootstrap(self.controld, tokens["web"])
        await self.web.start()

    async def start_api(
        self, *, sockets: list[tuple[str, socket.socket]] | None = None, takeover: bool = False
    ) -> subprocess.Popen[bytes]:
        """Start an ``api-1`` process and wait (bounded) for its ``ready`` line."""
        assert self.api is not None
        log_path = self.workdir / f"api-1.{len(self.api_procs) + 1}.log"
        proc = spawn_meshd(
            self.workdir,
            self.api.bootstrap_path,
            log_path,
            sockets=sockets or (),
            extra_args=["--log-format", "json", *(["--takeover"] if takeover else [])],
        )
        self.api_procs.append(proc)
        await wait_ready_line(proc, log_path, f"api-1 #{len(self.api_procs)}")
        return proc

    def api_log(self, index: int) -> Path:
        """The output of the ``index``-th (1-based) ``api-1`` process."""
        return self.workdir / f"api-1.{index}.log"

    def watch(self) -> RegistryWatch:
        """A sampler of the registry's ``api`` instances."""
        return RegistryWatch(self.controld.registry_url, self.registry_token, "api", "api-1")

    async def wait_serving(self) -> None:
        """Until a request through ``web-1`` reaches the app through ``api-1``."""
        async with httpx.AsyncClient(timeout=5.0) as client:

            async def through() -> bool:
                try:
                    resp = await client.get(f"http://127.0.0.1:{self.web_api_port}/x")
                except httpx.HTTPError:
                    return False
                return resp.status_code == 200

            await wait_for(through, what="web-1 -> api-1 -> app")


@pytest.fixture
def mesh(tmp_path: Path) -> Iterator[RestartMesh]:
    m = RestartMesh(tmp_path)
    try:
        yield m
    finally:
        m.stop()


@pytest.fixture
async def api(mesh: RestartMesh) -> AsyncIterator[Api]:
    client = Api(mesh.controld)
    try:
        yield client
    finally:
        await client.aclose()


async def _exit_code(proc: subprocess.Popen[bytes], *, timeout: float = TIMEOUT) -> int:
    with trio.move_on_after(timeout):
        while proc.poll() is None:
            await trio.sleep(0.05)
        return proc.returncode
    raise AssertionError(f"pid {proc.pid} still running {timeout} s later")


async def _under_load(
    mesh: RestartMesh, restart: Callable[[], Awaitable[None]]
) -> tuple[LoadResult, RegistryWatch]:
    """Steady load and a registry watch around :data:`RESTARTS` calls of ``restart``."""
    assert mesh.api is not None
    load = Load(
        mesh.web_api_port,
        keepalive_clients=4,
        new_connection_clients=4,
        direct_port=mesh.api.inbound_port,
    )
    watch = mesh.watch()
    watch.start()
    load.start()
    try:
        for _ in range(RESTARTS):
            await trio.to_thread.run_sync(load.wait_more, BETWEEN_REQUESTS)
            await restart()
        await trio.to_thread.run_sync(load.wait_more, BETWEEN_REQUESTS)
    finally:
        result = await trio.to_thread.run_sync(load.stop)
        watch.stop()
    return result, watch


def _check(what: str, result: LoadResult, watch: RegistryWatch) -> None:
    """Zero failed requests, the instance always registered, every kind of client served."""
    report = load_report(what, result, watch)
    print(report)
    assert not result.failures, report
    assert not watch.missing, report
    # The old processes told their direct keep-alive client to reconnect rather than reset it.
    assert result.closes["keepalive-direct"] >= RESTARTS, report
    kinds = {"keepalive GET", "keepalive POST", "new-connection GET", "new-connection POST"}
    assert kinds <= set(result.ok), report


def _kept_registration(mesh: RestartMesh) -> None:
    """Every restarted process kept its registration (no deregistration, a last renewal)."""
    for index in range(1, RESTARTS + 1):
        assert not log_events(mesh.api_log(index), "deregistered"), index
        assert log_events(mesh.api_log(index), "restart: registrations kept"), index


async def test_restart_with_socket_activation_fails_no_request(mesh: RestartMesh, api: Api) -> None:
    await mesh.start(api)
    assert mesh.api is not None
    held = listening_socket(mesh.api.inbound_port)
    mesh.held.append(held)
    await mesh.start_api(sockets=[("inbound", held)])
    await mesh.wait_serving()

    async def restart() -> None:
        # systemctl restart with RestartKillSignal=SIGUSR2: signal, wait for the exit, start.
        old = mesh.api_procs[-1]
        old.send_signal(signal.SIGUSR2)
        assert await _exit_code(old) == 0
        await mesh.start_api(sockets=[("inbound", held)])

    result, watch = await _under_load(mesh, restart)
    _check("socket-activated restarts", result, watch)
    _kept_registration(mesh)
    assert "api-1" in watch.instances()


async def test_restart_by_handoff_fails_no_request_and_stop_deregisters(
    mesh: RestartMesh, api: Api
) -> None:
    await mesh.start(api)
    await mesh.start_api()
    await mesh.wait_serving()

    async def restart() -> None:
        # No socket activation: the new process takes the sockets over from the running one.
        old = mesh.api_procs[-1]
        await mesh.start_api(takeover=True)
        assert await _exit_code(old) == 0

    result, watch = await _under_load(mesh, restart)
    _check("hand-off restarts", result, watch)
    _kept_registration(mesh)
    for index in range(1, RESTARTS + 1):
        took = log_events(mesh.api_log(index + 1), "hand-off: took over")
        assert took and took[0]["previous_pid"] == mesh.api_procs[index - 1].pid
    # The fixed admin port moved to the new process with the listeners.
    last = mesh.api_procs[-1]
    ready = log_events(mesh.api_log(RESTARTS + 1), "ready")
    assert ready[0]["admin_port"] == mesh.api_admin_port
    status = httpx.get(f"http://127.0.0.1:{mesh.api_admin_port}/ready", timeout=5.0)
    assert status.status_code == 200

    # A successor that fails before it serves (here: a bad bootstrap) changes nothing.
    assert mesh.api is not None
    broken = mesh.workdir / "broken.yaml"
    broken.write_text("service: api\napp: nowhere\n")
    failed = subprocess.run(
        [
            *(sys.executable, "-m", "meshd", "run", "-c", str(broken), "--takeover"),
            *("--handoff-socket", f"{mesh.api.bootstrap_path}.handoff.sock"),
        ],
        cwd=mesh.workdir,
        env=clean_env(),
        capture_output=True,
        timeout=TIMEOUT,
        check=False,
    )
    assert failed.returncode == 2, failed.stderr
    await wait_for(
        lambda: log_events(
            mesh.api_log(RESTARTS + 1), "hand-off: successor did not get ready, serving on"
        ),
        what="the running process noticing its successor failed",
    )
    assert not log_events(mesh.api_log(RESTARTS + 1), "restarting: handing over, registration kept")
    await mesh.wait_serving()

    # A stop for good: deregistered (the instance leaves the registry), process gone.
    watch = mesh.watch()
    assert "api-1" in watch.instances()
    last.send_signal(signal.SIGTERM)
    assert await _exit_code(last) == 0
    assert log_events(mesh.api_log(RESTARTS + 1), "deregistered")
    assert "api-1" not in watch.instances()
    assert not pid_alive(last.pid)
