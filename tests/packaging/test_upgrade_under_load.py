"""Upgrading the installed packages under steady load fails no request.

Version 0.1.0 of the debs is installed in a fresh Debian 12 chroot. controld and two sidecars
in controld mode, both registered, run from it as their users (plain processes through
chroot(8), never systemd): ``web``, whose outbound listener for ``api`` the test's clients
call (keep-alive and new-connection clients, GET and POST, bounded), and ``api``, the only
instance of its service, in front of the app on the host's 127.0.0.1; one more keep-alive
client talks to ``api``'s inbound listener directly. Each sidecar's listening sockets (api's
inbound; web's inbound and outbound) are held by the test and passed with ``LISTEN_FDS``/
``LISTEN_FDNAMES``/``LISTEN_PID`` as ``meshd@NAME.socket`` would pass them.

Under that load the packages are upgraded to 0.1.1 with ``dpkg -i`` inside the chroot. The
postinst restarts units through ``deb-systemd-invoke try-restart 'meshd@*.service'`` only when
systemd runs, which it never does here, so the test then does what systemd's try-restart does
with ``meshd@.service`` (``RestartKillSignal=SIGUSR2``) and ``meshd@.socket``, for ``api`` and
then ``web``: SIGUSR2 to the running sidecar (a restart, not a removal: it keeps its
registration and drains), wait for it to exit, start the newly installed ``/usr/bin/meshd``
with the same held sockets. New connections wait in the sockets' accept queues meanwhile.

Asserted: zero failed requests; the registry listed ``api`` and ``web`` at every sample; the
old processes told their keep-alive clients to reconnect (``Connection: close``) and kept their
registrations (no deregistration); the new version serves (``meshd --version`` in the chroot
and each restarted sidecar's admin ``/stats`` ``version``).

Then controld's restart, as try-restart of ``controld.service`` does it (no socket unit: SIGTERM,
wait, start the installed 0.1.1 ``controld`` on the same ports and data directory): the
sidecars serve on from their snapshots while it is away and register with it again; the load
goes on until both did, still with zero failed requests, and the registry (embedded in
controld) lists both instances at every sample after the restart (the watches pause while it
is down).
"""

from __future__ import annotations

import json
import signal
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from pkgbuild import Dist, build
from pkgtools import (
    PACKAGES,
    Daemon,
    free_ports,
    fresh_chroot,
    http_get,
    in_root,
    require_tools,
    start_controld,
    write_sidecar,
)
from restart_support import (
    EchoApp,
    Load,
    RegistryWatch,
    listening_socket,
    load_report,
    log_events,
)

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

#: Completed requests before the upgrade, between the upgrade and the restart, and after.
STEADY_REQUESTS = 150


@pytest.fixture(scope="module")
def dists(request: pytest.FixtureRequest) -> tuple[Dist, Dist]:
    require_tools()
    return build(request), build(request, version="0.1.1")


@pytest.fixture
def root(dists: tuple[Dist, Dist]) -> Iterator[Path]:
    with fresh_chroot() as path:
        for deb in dists[0].debs() + dists[1].debs():
            (path / "tmp" / deb.name).write_bytes(deb.read_bytes())
        yield path


@pytest.fixture
def echo_app(tmp_path: Path) -> Iterator[EchoApp]:
    app = EchoApp(tmp_path)
    app.start()
    try:
        yield app
    finally:
        app.stop()


def _install(root: Path, version: str) -> None:
    debs = [f"/tmp/{name}_{version}-1_amd64.deb" for name in PACKAGES]
    in_root(root, "dpkg", "-i", *debs, timeout=600)
    versions = in_root(root, "dpkg-query", "-W", *PACKAGES).stdout.split()
    assert versions[1::2] == [f"{version}-1"] * len(PACKAGES), versions


def _stats(admin: int) -> dict[str, object]:
    status, body = http_get(f"http://127.0.0.1:{admin}/stats")
    assert status == 200, body
    doc: dict[str, object] = json.loads(body)
    return doc


def _wait_through(port: int, sidecars: list[Daemon]) -> None:
    """Until a request through web reaches the app behind api (bounded)."""
    answer: tuple[int, bytes] = (0, b"")
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        answer = http_get(f"http://127.0.0.1:{port}/get/0")
        if answer[0] == 200:
            return
        time.sleep(0.3)
    logs = "".join(sidecar.tail() for sidecar in sidecars)
    raise AssertionError(f"web -> api -> app: {answer}\n{logs}")


def _wait_event(daemon: Daemon, event: str, count: int) -> None:
    """Until ``daemon`` logged ``event`` ``count`` times (bounded)."""
    deadline = time.monotonic() + 60
    while len(log_events(daemon.log, event)) < count:
        assert time.monotonic() < deadline, f"{event} x{count}: {daemon.tail()}"
        time.sleep(0.2)


@dataclass
class _Instance:
    """One ``meshd@NAME``: the sockets ``meshd@NAME.socket`` holds, its processes in order."""

    name: str
    admin: int
    sockets: list[tuple[str, socket.socket]]
    procs: list[Daemon] = field(default_factory=list)

    def start(self, root: Path, logs: Path) -> None:
        """Start the installed meshd with the held sockets; wait (bounded) until ready."""
        argv = ["/usr/bin/meshd", "run", "-c", f"/etc/meshd/{self.name}.yaml"]
        log = logs / f"{self.name}.{len(self.procs) + 1}.log"
        daemon = Daemon(root, "meshd", [*argv, "--log-format", "json"], log, sockets=self.sockets)
        self.procs.append(daemon)
        daemon.wait_http(f"http://127.0.0.1:{self.admin}/ready")

    def try_restart(self, root: Path, logs: Path) -> None:
        """What systemd's try-restart of ``meshd@NAME.service`` does: SIGUSR2
        (``RestartKillSignal``), wait for the exit, start again with the same sockets."""
        old = self.procs[-1]
        old.proc.send_signal(signal.SIGUSR2)
        assert old.proc.wait(timeout=60) == 0, old.tail()
        self.start(root, logs)


def test_upgrade_restarts_the_sidecars_without_failing_a_request(
    root: Path, echo_app: EchoApp, tmp_path: Path
) -> None:
    _install(root, "0.1.0")
    api_admin, api_in, web_admin, web_in, web_out = free_ports(5)
    # What meshd@api.socket and meshd@web.socket hold (systemd names every socket of a
    # .socket unit after the unit).
    api = _Instance("api", api_admin, [("meshd@api.socket", listening_socket(api_in))])
    web_sockets = [listening_socket(web_in), listening_socket(web_out)]
    web = _Instance("web", web_admin, [("meshd@web.socket", sock) for sock in web_sockets])
    try:
        controld, urls = start_controld(root, tmp_path / "controld.log")
    except BaseException:
        for _name, sock in api.sockets + web.sockets:
            sock.close()
        raise
    try:
        # Each drains for up to 10 s after SIGUSR2: kept-alive downstreams get
        # `Connection: close` on their next answer meanwhile. The registry check keeps its
        # default interval (5 s), so a restarted sidecar has the TTL (15 s) to register again
        # before its instance goes critical (with 1 s, a start slowed by a busy machine past
        # the 3 s TTL took api out of web's endpoints: 503 no_healthy_upstream).
        for name, inbound, upstreams in (("api", api_in, {}), ("web", web_in, {"api": web_out})):
            admin = api_admin if name == "api" else web_admin
            write_sidecar(
                root, name, echo_app.port, admin, inbound, urls, upstreams,
                drain_timeout_s=10, check_interval_s=None,
            )  # fmt: skip
        api.start(root, tmp_path)
        web.start(root, tmp_path)
        _wait_through(web_out, api.procs + web.procs)
        assert _stats(api_admin)["version"] == _stats(web_admin)["version"] == "0.1.0"

        registry_url = urls.split()[1]
        token = (root / "var/lib/meshd/api/registry-token").read_text().strip()

        def watch_registry() -> list[RegistryWatch]:
            started = [RegistryWatch(registry_url, token, name, name) for name in ("api", "web")]
            for watch in started:
                watch.start()
            return started

        # Bounded by time: the clients run through the whole upgrade, whose steps (dpkg -i
        # byte-compiling three virtualenvs, the restarts) take what the machine gives them; a
        # request budget ran out during a slow `dpkg -i` (at up to ~350 requests/s).
        load = Load(web_out, direct_port=api_in, max_requests=200_000, max_seconds=300)
        watches = watch_registry()
        load.start()
        try:
            load.wait_more(STEADY_REQUESTS)
            _install(root, "0.1.1")
            load.wait_more(STEADY_REQUESTS)
            # The postinst's try-restart of meshd@*.service, which needs systemd: by hand.
            for instance in (api, web):
                instance.try_restart(root, tmp_path)
                load.wait_more(STEADY_REQUESTS)
            # And of controld.service (no socket unit: a stop and a start on the same ports).
            # Its registry is away meanwhile, so the watches pause; the sidecars serve on.
            for watch in watches:
                watch.stop()
            assert controld.stop() == 0, controld.tail()
            controld, _ = start_controld(root, tmp_path / "controld.2.log", urls)
            watches += watch_registry()
            for instance in (api, web):  # both back on the new controld, then steady load
                _wait_event(instance.procs[-1], "registered with controld", 2)
            load.wait_more(STEADY_REQUESTS)
        finally:
            result = load.stop()
            for watch in watches:
                watch.stop()

        report = "\n".join(
            load_report(
                f"upgrade 0.1.0 -> 0.1.1 under load ({watch.instance}, "
                f"{'before' if n < 2 else 'after'} controld's restart)",
                result,
                watch,
            )
            for n, watch in enumerate(watches)
        )
        print(report)
        assert not result.failures, report
        assert not any(watch.missing for watch in watches), report
        # The old processes told their keep-alive clients to reconnect rather than reset them.
        assert result.closes["keepalive-direct"] >= 1, report
        assert sum(n for client, n in result.closes.items() if client != "keepalive-direct")
        kinds = {"keepalive GET", "keepalive POST", "new-connection GET", "new-connection POST"}
        assert kinds <= set(result.ok), report
        assert {"api", "web"} <= {i for w in watches[-2:] for i in w.instances()}
        # The new version serves.
        assert in_root(root, "meshd", "--version").stdout.strip() == "meshd 0.1.1"
        for instance in (api, web):
            assert _stats(instance.admin)["version"] == "0.1.1"
            assert instance.procs[-1].proc.poll() is None
            # The old process restarted: kept its registration rather than leaving the registry.
            old = instance.procs[0]
            assert log_events(old.log, "restart: registrations kept"), old.tail()
            assert not log_events(old.log, "deregistered"), old.tail()
    finally:
        for instance in (web, api):
            for daemon in instance.procs:
                daemon.stop()
        controld.stop()
        for _name, sock in api.sockets + web.sockets:
            sock.close()
