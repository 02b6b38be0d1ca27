"""Upgrading the installed packages under steady load fails no request.

Version 0.1.0 of the debs is installed in a fresh Debian 12 chroot. controld and two sidecars
in controld mode, both registered, run from it as their users (plain processes through
chroot(8), never systemd): ``web``, whose outbound listener for ``api`` the test's clients
call (keep-alive and new-connection clients, GET and POST, bounded), and ``api``, the only
instance of its service, in front of the app on the host's 127.0.0.1. ``api``'s inbound
listening socket is held by the test and passed with ``LISTEN_FDS``/``LISTEN_FDNAMES``/
``LISTEN_PID`` as ``meshd@api.socket`` would pass it; one more keep-alive client talks to it
directly.

Under that load the packages are upgraded to 0.1.1 with ``dpkg -i`` inside the chroot. The
postinst restarts units through ``deb-systemd-invoke try-restart 'meshd@*.service'`` only when
systemd runs, which it never does here, so the test then does what systemd's try-restart does
with ``meshd@.service`` (``RestartKillSignal=SIGUSR2``) and ``meshd@.socket``: SIGUSR2 to the
running ``api`` sidecar (a restart, not a removal: it keeps its registration and drains), wait
for it to exit, start the newly installed ``/usr/bin/meshd`` with the same held socket. New
connections wait in the socket's accept queue meanwhile.

Asserted: zero failed requests; the registry listed ``api`` at every sample; the new version
serves (``meshd --version`` in the chroot and the restarted sidecar's admin ``/stats``
``version``); the old process kept the registration (no deregistration).

Not restarted (a real host's try-restart would restart them too): the ``web`` sidecar, which
the clients' connections go through, and controld (``controld.service`` has no socket unit
here; its own restart is not part of this test). Both keep running the 0.1.0 code they loaded.
"""

from __future__ import annotations

import json
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from pkgtools import (
    PACKAGES,
    Daemon,
    Dist,
    build,
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
#: The name systemd gives a socket of ``meshd@api.socket`` (no FileDescriptorName=).
FD_NAME = "meshd@api.socket"


@pytest.fixture(scope="module")
def dists(tmp_path_factory: pytest.TempPathFactory) -> tuple[Dist, Dist]:
    require_tools()
    return build(tmp_path_factory), build(tmp_path_factory, version="0.1.1")


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


def test_upgrade_restarts_the_sidecar_without_failing_a_request(
    root: Path, echo_app: EchoApp, tmp_path: Path
) -> None:
    _install(root, "0.1.0")
    api_admin, api_in, web_admin, web_in, web_out = free_ports(5)
    held = listening_socket(api_in)  # what meshd@api.socket holds
    controld, urls = start_controld(root, tmp_path / "controld.log")
    sidecars: list[Daemon] = []

    def start_api() -> Daemon:
        argv = ["/usr/bin/meshd", "run", "-c", "/etc/meshd/api.yaml", "--log-format", "json"]
        log = tmp_path / f"api.{len(sidecars) + 1}.log"
        daemon = Daemon(root, "meshd", argv, log, sockets=[(FD_NAME, held)])
        sidecars.append(daemon)
        daemon.wait_http(f"http://127.0.0.1:{api_admin}/ready")
        return daemon

    try:
        # api drains for up to 10 s after SIGUSR2 (web's pooled connections get
        # `Connection: close` on their next answer, or an idle close, meanwhile).
        write_sidecar(root, "api", echo_app.port, api_admin, api_in, urls, {}, drain_timeout_s=10)
        write_sidecar(root, "web", echo_app.port, web_admin, web_in, urls, {"api": web_out})
        old_api = start_api()
        web_argv = ["/usr/bin/meshd", "run", "-c", "/etc/meshd/web.yaml"]
        sidecars.append(Daemon(root, "meshd", web_argv, tmp_path / "web.log"))
        sidecars[-1].wait_http(f"http://127.0.0.1:{web_admin}/ready")
        _wait_through(web_out, sidecars)
        assert _stats(api_admin)["version"] == "0.1.0"

        registry_url = urls.split()[1]
        token = (root / "var/lib/meshd/api/registry-token").read_text().strip()
        watch = RegistryWatch(registry_url, token, "api", "api")
        load = Load(web_out, direct_port=api_in, max_requests=6000, max_seconds=240)
        watch.start()
        load.start()
        try:
            load.wait_more(STEADY_REQUESTS)
            _install(root, "0.1.1")
            load.wait_more(STEADY_REQUESTS)
            # What systemd's try-restart of meshd@api.service does (the postinst can't here).
            old_api.proc.send_signal(signal.SIGUSR2)
            assert old_api.proc.wait(timeout=60) == 0, old_api.tail()
            new_api = start_api()
            load.wait_more(STEADY_REQUESTS)
        finally:
            result = load.stop()
            watch.stop()

        report = load_report("upgrade 0.1.0 -> 0.1.1 under load", result, watch)
        print(report)
        assert not result.failures, report
        assert not watch.missing, report
        assert result.closes["keepalive-direct"] >= 1, report
        kinds = {"keepalive GET", "keepalive POST", "new-connection GET", "new-connection POST"}
        assert kinds <= set(result.ok), report
        assert "api" in watch.instances()
        # The new version serves.
        assert in_root(root, "meshd", "--version").stdout.strip() == "meshd 0.1.1"
        assert _stats(api_admin)["version"] == "0.1.1"
        assert new_api.proc.poll() is None
        # The old process restarted: kept its registration rather than leaving the registry.
        assert log_events(old_api.log, "restart: registrations kept"), old_api.tail()
        assert not log_events(old_api.log, "deregistered"), old_api.tail()
    finally:
        for sidecar in reversed(sidecars):
            sidecar.stop()
        controld.stop()
        held.close()
