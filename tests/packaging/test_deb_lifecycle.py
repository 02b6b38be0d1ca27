"""The .debs in a Debian 12 chroot: install; run the installed controld and two sidecars
fed by it (plain processes through chroot(8), never systemd) and serve a request from the
"web" sidecar's outbound listener through the "api" sidecar to an app; check the units with
systemd-analyze; upgrade to a newer build keeping configuration and state; purge.

The tests share one chroot and run in order (install, units, upgrade, purge). Slow; needs
root and the tools .ci/run installs."""

from __future__ import annotations

import hashlib
import re
import subprocess
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
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
    mypyc_modules,
    require_tools,
    start_controld,
    write_sidecar,
)

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1200)]


class _App(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = f"app saw {self.path}".encode()
        self.send_response(200)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def app() -> Iterator[int]:
    """An HTTP app on the host's 127.0.0.1 (the chroot shares the network)."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _App)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_address[1]
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
def dists(request: pytest.FixtureRequest) -> tuple[Dist, Dist]:
    require_tools()
    return build(request), build(request, version="0.1.1")


@pytest.fixture(scope="module")
def root(dists: tuple[Dist, Dist]) -> Iterator[Path]:
    with fresh_chroot() as path:
        for deb in dists[0].debs() + dists[1].debs():
            (path / "tmp" / deb.name).write_bytes(deb.read_bytes())
        yield path


def _dpkg(root: Path, *args: str) -> str:
    return in_root(root, "dpkg", *args, timeout=600).stdout


def _tree_digest(path: Path) -> dict[str, str]:
    return {
        str(p.relative_to(path)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(path.rglob("*"))
        if p.is_file()
    }


def test_install_and_serve_a_request_through_the_sidecars(
    root: Path, app: int, tmp_path: Path
) -> None:
    _dpkg(root, "-i", *(f"/tmp/{name}_0.1.0-1_amd64.deb" for name in PACKAGES))
    assert in_root(root, "meshd", "--version").stdout.strip() == "meshd 0.1.0"
    for user in ("meshd", "controld"):
        entry = in_root(root, "getent", "passwd", user).stdout
        assert entry.split(":")[5] == f"/var/lib/{user}"
        assert (root / "var/lib" / user).is_dir()
    assert list((root / "opt/controld/lib").rglob("*.pyc")), "postinst compiled nothing"
    # The installed meshd runs its hot modules compiled (mypyc): the request below goes
    # through them.
    modules = mypyc_modules()
    script = (
        "import importlib, sys\nfor m in sys.argv[1:]: print(importlib.import_module(m).__file__)"
    )
    files = in_root(root, "/opt/meshd/bin/python", "-I", "-c", script, *modules).stdout.split()
    assert len(files) == len(modules)
    assert all(f.endswith(".so") for f in files), files

    _serve_through_the_mesh(root, app, tmp_path)


def _serve_through_the_mesh(root: Path, app: int, tmp_path: Path) -> None:
    """controld, and sidecars for "web" and "api" fed by it; web's outbound listener for api
    reaches the app behind api's sidecar."""
    controld, urls = start_controld(root, tmp_path / "controld.log")
    sidecars: list[Daemon] = []
    try:
        admin_url = urls.split()[2]
        # meshctl of the chroot finds controld's admin token in /var/lib/controld by itself.
        in_root(root, "meshctl", "--server", admin_url, "status")
        assert (root / "var/lib/controld/admin-token").stat().st_uid != 0  # the controld user
        api_admin, api_in, web_admin, web_in, web_out = free_ports(5)
        write_sidecar(root, "api", app, api_admin, api_in, urls, {})
        write_sidecar(root, "web", app, web_admin, web_in, urls, {"api": web_out})
        for name, admin in (("api", api_admin), ("web", web_admin)):
            in_root(root, "meshd", "validate", "-c", f"/etc/meshd/{name}.yaml", user="meshd")
            argv = ["/usr/bin/meshd", "run", "-c", f"/etc/meshd/{name}.yaml"]
            sidecars.append(Daemon(root, "meshd", argv, tmp_path / f"{name}.log"))
            sidecars[-1].wait_http(f"http://127.0.0.1:{admin}/ready")
        # api's endpoint reaches web's snapshot once api registered: bounded wait.
        answer: tuple[int, bytes] = (0, b"")
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            answer = http_get(f"http://127.0.0.1:{web_out}/hello")
            if answer[0] == 200:
                break
            time.sleep(0.3)
        logs = "".join(sidecar.tail() for sidecar in sidecars)
        assert answer == (200, b"app saw /hello"), f"{answer}\n{logs}"
        # The group library is linked by GNU gold in the order of hatch_build.HOT_LIST (the
        # functions a sidecar runs, together): each sidecar runs gold's library. That gold
        # places them so is tests/unit/test_hatch_build.py's; what it saves in memory depends
        # on what a sidecar ran (bench/README.md's memory section has the figures).
        for sidecar in sidecars:
            library = _group_library(sidecar.proc.pid, root)
            note = subprocess.run(
                ["readelf", "-p", ".note.gnu.gold-version", str(library)],
                capture_output=True, text=True, timeout=60, check=False,
            )  # fmt: skip
            assert "gold" in note.stdout, (library, note.stdout, note.stderr)
    finally:
        for sidecar in reversed(sidecars):
            assert sidecar.stop() == 0, sidecar.tail()
        assert controld.stop() == 0, controld.tail()


def _group_library(pid: int, root: Path) -> Path:
    """The mypyc group library (``<hash>__mypyc.*.so``) that ``pid`` (chrooted at ``root``)
    has mapped executable."""
    for line in Path(f"/proc/{pid}/maps").read_text().splitlines():
        fields = line.split()
        if len(fields) == 6 and "x" in fields[1] and re.search(r"__mypyc\.[^/]*\.so$", fields[5]):
            path = Path(fields[5])
            return path if path.is_relative_to(root) else root / path.relative_to("/")
    raise AssertionError(f"no mypyc group library mapped in {pid}")


def _exposure(root: Path, unit: str) -> float:
    done = subprocess.run(
        ["systemd-analyze", "security", "--offline=yes", f"--root={root}", unit],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    match = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", done.stdout)
    assert match, done.stdout[-2000:] + done.stderr[-2000:]
    return float(match.group(1))


def test_units_verify_and_are_hardened(root: Path) -> None:
    # The instance "web" as an operator sets it up: /etc/meshd/web.yaml (written by the test
    # above) and the socket's addresses in a drop-in.
    if not (root / "etc/meshd/web.yaml").exists():
        pytest.skip("needs the installed chroot of the test above")
    dropin = root / "etc/systemd/system/meshd@web.socket.d"
    dropin.mkdir(parents=True, exist_ok=True)
    (dropin / "listen.conf").write_text("[Socket]\nListenStream=127.0.0.1:15001\n")
    units = ["meshd@web.service", "meshd@web.socket", "controld.service"]
    done = subprocess.run(
        ["systemd-analyze", "verify", f"--root={root}", "--man=no", *units],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.strip() == "" and done.stderr.strip() == "", done.stdout + done.stderr
    for unit in ("meshd@web.service", "controld.service"):
        assert _exposure(root, unit) <= 2.0
    service = (root / "lib/systemd/system/meshd@.service").read_text()
    assert "Type=notify" in service
    assert "ExecReload=/bin/kill -HUP $MAINPID" in service
    assert "WatchdogSec=" in service
    # Above drain_delay_s (5) + drain_timeout_s (30).
    assert int(re.search(r"TimeoutStopSec=(\d+)s", service).group(1)) > 35  # type: ignore[union-attr]


def test_upgrade_keeps_configuration_and_state(root: Path, tmp_path: Path) -> None:
    if not (root / "var/lib/controld/admin-token").exists():
        pytest.skip("needs the installed chroot of the first test")
    meshd_env = root / "etc/meshd/meshd.env"
    controld_env = root / "etc/controld/controld.env"
    meshd_env.write_text(meshd_env.read_text() + "MESHD_LOG_LEVEL=debug\n")
    controld_env.write_text(controld_env.read_text() + "# changed by the operator\n")
    state = _tree_digest(root / "var/lib/controld")
    sidecar_state = _tree_digest(root / "var/lib/meshd")
    assert "web/token" in sidecar_state and "web/snapshot.json" in sidecar_state
    assert "admin-token" in state
    assert any(name.startswith("ca") for name in state), sorted(state)

    _dpkg(root, "-i", *(f"/tmp/{name}_0.1.1-1_amd64.deb" for name in PACKAGES))
    versions = in_root(root, "dpkg-query", "-W", *PACKAGES).stdout.split()
    assert versions == ["controld", "0.1.1-1", "meshctl", "0.1.1-1", "meshd", "0.1.1-1"]
    assert meshd_env.read_text().endswith("MESHD_LOG_LEVEL=debug\n")
    assert controld_env.read_text().endswith("# changed by the operator\n")
    assert (root / "etc/meshd/web.yaml").exists()
    assert _tree_digest(root / "var/lib/controld") == state
    assert _tree_digest(root / "var/lib/meshd") == sidecar_state

    # The upgraded controld starts on the same state: meshctl's token (read from it) works.
    controld, urls = start_controld(root, tmp_path / "controld.log")
    try:
        in_root(root, "meshctl", "--server", urls.split()[2], "status")
    finally:
        assert controld.stop() == 0, controld.tail()


def test_purge_removes_what_the_packages_made(root: Path) -> None:
    if not (root / "opt/meshd").exists():
        pytest.skip("needs the installed chroot of the first test")
    _dpkg(root, "--purge", *PACKAGES)
    for name in PACKAGES:
        assert not (root / "opt" / name).exists()
        assert not (root / "usr/bin" / name).exists()
        assert not (root / "usr/share/doc" / name).exists()
    for gone in ("etc/meshd/meshd.env", "etc/controld", "var/lib/meshd", "var/lib/controld"):
        assert not (root / gone).exists(), gone
    assert not (root / "lib/systemd/system/meshd@.service").exists()
    # What the operator wrote stays (dpkg removes only its own files), and so do the system
    # users (Debian policy: files they own may remain); docs/install.md says so.
    assert (root / "etc/meshd/web.yaml").exists()
    assert in_root(root, "getent", "passwd", "meshd").stdout.startswith("meshd:")
