"""The Ansible roles converged against a Debian chroot through ``community.general.chroot``.

``site.yml`` installs the controld and meshd .debs (from ``$MESHD_TEST_DEB_DIR``, else this
tree's ``packaging/build``, built once per run with the packaging tests, else two stand-in
packages made here with dpkg-deb), writes the configuration and enables the units, with
``*_service_start: false``: in a chroot ``systemctl enable`` only makes symlinks, and nothing
is started (a ``policy-rc.d`` also forbids the packages' scripts to start anything). Then:
the files, users and symlinks are there, the written configuration is valid for the code in
this tree, a second run reports ``changed=0``, and a sidecar that has enrolled gets no join
token again. The chroot is a fresh copy of a cached debootstrap tree, removed afterwards.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from ops_chroot import base_tarball, unpack
from ops_debs import find_debs, with_version, write_repository

from controld.runner import parse_run, run_settings
from meshcore.model import Bootstrap

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1800)]

REPO = Path(__file__).resolve().parents[2]
ANSIBLE = REPO / "ansible"
_RECAP = re.compile(
    r"^(\S+)\s*:\s*ok=(\d+)\s+changed=(\d+)\s+unreachable=(\d+)\s+failed=(\d+)", re.M
)

_ANSIBLE_PLAYBOOK = shutil.which("ansible-playbook") or "ansible-playbook"

pytestmark.append(
    pytest.mark.skipif(os.geteuid() != 0, reason="a chroot needs root"),
)


@contextlib.contextmanager
def _fresh_root(parent: Path) -> Iterator[Path]:
    if shutil.which("debootstrap") is None:
        pytest.fail("debootstrap is missing (scripts/setup installs it)")
    tree = unpack(base_tarball(), parent / "root")
    # Debian's way to keep package scripts in a chroot from starting services.
    policy = tree / "usr/sbin/policy-rc.d"
    policy.write_text("#!/bin/sh\n# meshd tests: never start anything in this chroot\nexit 101\n")
    policy.chmod(0o755)
    try:
        yield tree
        _assert_nothing_runs_in(tree)
    finally:
        shutil.rmtree(tree, ignore_errors=True)


@pytest.fixture
def root(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    with _fresh_root(tmp_path_factory.mktemp("chroot")) as tree:
        yield tree


@pytest.fixture(scope="module")
def debs(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, Path]:
    return find_debs(request, tmp_path_factory.mktemp("debs"))


def _inventory(path: Path, root: Path, debs: dict[str, Path], **overrides: Any) -> Path:
    host = {
        "ansible_connection": "community.general.chroot",
        "ansible_host": str(root),
        "ansible_python_interpreter": "/usr/bin/python3",
    }
    doc = {
        "all": {
            "vars": {
                "controld_package_source": "deb",
                "controld_package_deb": str(debs["controld"]),
                "controld_service_start": False,
                "controld_tls_sans": ["cp.example.test"],
                "controld_log_level": "warning",
                "meshd_node_package_source": "deb",
                "meshd_node_package_deb": str(debs["meshd"]),
                "meshd_node_service_start": False,
                "meshd_node_controld_host": "cp.example.test",
                "meshd_node_services": [
                    {
                        "name": "web",
                        "app": "127.0.0.1:8080",
                        "admin": "127.0.0.1:15000",
                        "inbound": "0.0.0.0:15006",
                        "upstreams": [{"service": "api", "port": 15001}],
                        "join_token": "join-web-secret",
                        "registry_token": "registry-web-secret",
                    },
                    {"name": "batch", "app": "127.0.0.1:9000", "admin": "127.0.0.1:15010"},
                ],
                **overrides,
            },
            "children": {
                # One tree plays both parts: the plays of site.yml run one after the other.
                "controld": {"hosts": {"cp": host}},
                "mesh_nodes": {"hosts": {"node": host}},
            },
        }
    }
    path.write_text(yaml.safe_dump(doc))
    return path


def _playbook(
    inventory: Path,
    playbook: str = "site.yml",
    hosts: frozenset[str] = frozenset({"cp", "node"}),
    extra: tuple[str, ...] = (),
) -> dict[str, dict[str, int]]:
    env = {
        **os.environ,
        "ANSIBLE_CONFIG": str(ANSIBLE / "ansible.cfg"),
        "ANSIBLE_NOCOLOR": "1",
        # Faster: modules piped to the chroot's python, no facts (the roles use none).
        "ANSIBLE_PIPELINING": "1",
        "ANSIBLE_GATHERING": "explicit",
        "ANSIBLE_LOCAL_TEMP": str(inventory.parent / "ansible-local"),
        "ANSIBLE_HOME": str(inventory.parent / "ansible-home"),
    }
    result = subprocess.run(
        [_ANSIBLE_PLAYBOOK, "-i", str(inventory), *extra, playbook],
        cwd=ANSIBLE,
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-6000:]
    recap = {
        m.group(1): {"ok": int(m.group(2)), "changed": int(m.group(3)), "failed": int(m.group(5))}
        for m in _RECAP.finditer(result.stdout)
    }
    assert set(recap) == hosts, output[-3000:]
    return recap


def test_converge_then_idempotent(root: Path, debs: dict[str, Path], tmp_path: Path) -> None:
    inventory = _inventory(tmp_path / "inventory.yml", root, debs)
    first = _playbook(inventory)
    assert first["cp"]["changed"] > 0 and first["node"]["changed"] > 0, first

    # Packages, users, configuration.
    for package in ("controld", "meshd"):
        assert (root / "var/lib/dpkg/info" / f"{package}.list").exists()
    users = {entry.split(":")[0]: entry for entry in (root / "etc/passwd").read_text().split()}
    assert "controld" in users and "meshd" in users
    env = (root / "etc/controld/controld.env").read_text()
    assert "CONTROLD_OPTS=--config /etc/controld/controld.yaml" in env
    options = yaml.safe_load((root / "etc/controld/controld.yaml").read_text())
    assert options["admin"] == "127.0.0.1:8501"
    assert options["tls-san"] == ["cp.example.test"]
    # The options file is what this tree's `controld run --config` accepts.
    config_copy = tmp_path / "controld.yaml"
    shutil.copy(root / "etc/controld/controld.yaml", config_copy)
    settings = run_settings(
        parse_run(["run", "--data-dir", str(tmp_path), "--config", str(config_copy)])
    )
    assert settings.log_level == "warning"
    assert settings.config.tls_sans == ("cp.example.test",)
    _assert_mode(root / "etc/controld/controld.yaml", 0o640, group="controld", root=root)

    web = Bootstrap.model_validate(yaml.safe_load((root / "etc/meshd/web.yaml").read_text()))
    assert web.service == "web" and web.inbound is not None and web.upstreams[0].port == 15001
    assert web.snapshot.controld is not None
    assert web.snapshot.controld.url == "http://cp.example.test:8502"
    assert web.identity is not None
    assert web.identity.join_token_file == Path("/var/lib/meshd/web/join-token")
    assert web.registry is not None and web.registry.token_file is not None
    batch = Bootstrap.model_validate(yaml.safe_load((root / "etc/meshd/batch.yaml").read_text()))
    assert batch.inbound is None and batch.registry is None
    join = root / "var/lib/meshd/web/join-token"
    assert join.read_text() == "join-web-secret\n"
    _assert_mode(join, 0o600, owner="meshd", root=root)
    listen = (root / "etc/systemd/system/meshd@web.socket.d/listen.conf").read_text()
    assert "ListenStream=0.0.0.0:15006" in listen and "ListenStream=127.0.0.1:15001" in listen
    assert not (root / "etc/systemd/system/meshd@batch.socket.d/listen.conf").exists()

    # Units enabled: the symlinks `systemctl enable` makes, offline.
    wants = root / "etc/systemd/system"
    assert (wants / "multi-user.target.wants/controld.service").is_symlink()
    assert (wants / "multi-user.target.wants/meshd@web.service").is_symlink()
    assert (wants / "multi-user.target.wants/meshd@batch.service").is_symlink()
    assert (wants / "sockets.target.wants/meshd@web.socket").is_symlink()
    assert not (wants / "sockets.target.wants/meshd@batch.socket").exists()

    second = _playbook(inventory)
    assert second["cp"]["changed"] == 0 and second["node"]["changed"] == 0, second

    # Once the sidecar has enrolled (and meshd deleted the spent token), no token comes back.
    identity = root / "var/lib/meshd/web/identity"
    identity.mkdir(mode=0o700)
    (identity / "gen-1").mkdir()
    (identity / "current").symlink_to("gen-1")
    join.unlink()
    third = _playbook(inventory)
    assert third["node"]["changed"] == 0, third
    assert not join.exists()

    # The rolling upgrade with the same package: nothing to do (its waits need running
    # units, which a chroot never has; they are skipped with meshd_node_service_start off).
    upgrade = _playbook(inventory, "upgrade.yml", frozenset({"node"}))
    assert upgrade["node"]["changed"] == 0, upgrade


def test_apt_repository_then_rolling_upgrade(
    root: Path, debs: dict[str, Path], tmp_path: Path
) -> None:
    """Both roles from an apt repository (a flat file: repository in the chroot), then
    ``upgrade.yml`` installs a newer meshd from it and keeps the configuration."""
    repo = root / "srv/meshd-repo"
    repo.mkdir(parents=True)
    for deb in debs.values():
        shutil.copy(deb, repo)
    write_repository(repo)
    # Only this repository: the base tree has every dependency already.
    for sources in (root / "etc/apt/sources.list", *root.glob("etc/apt/sources.list.d/*")):
        sources.unlink()
    (root / "etc/apt/sources.list.d/meshd.list").write_text(
        "deb [trusted=yes] file:/srv/meshd-repo ./\n"
    )
    inventory = _inventory(
        tmp_path / "inventory.yml",
        root,
        debs,
        controld_package_source="apt",
        meshd_node_package_source="apt",
    )
    # The lists of the new repository are read at once (the tree's are fresh otherwise).
    fresh = ("-e", "controld_apt_cache_valid_time=0", "-e", "meshd_node_apt_cache_valid_time=0")
    _playbook(inventory, extra=fresh)
    before = _dpkg_version(root, "meshd")
    bootstrap = (root / "etc/meshd/web.yaml").read_text()
    again = _playbook(inventory)
    assert again["cp"]["changed"] == 0 and again["node"]["changed"] == 0, again

    newer = with_version(debs["meshd"], before + "+up1", tmp_path)
    shutil.copy(newer, repo)
    write_repository(repo)
    refresh = ("-e", "meshd_node_apt_cache_valid_time=0")
    upgrade = _playbook(inventory, "upgrade.yml", frozenset({"node"}), refresh)
    assert upgrade["node"]["changed"] > 0, upgrade
    assert _dpkg_version(root, "meshd") == before + "+up1"
    assert (root / "etc/meshd/web.yaml").read_text() == bootstrap
    assert (root / "etc/systemd/system/multi-user.target.wants/meshd@web.service").is_symlink()
    # Up to date now: only the package lists may be refreshed.
    settled = _playbook(inventory, "upgrade.yml", frozenset({"node"}))
    assert settled["node"]["changed"] == 0, settled


def _dpkg_version(root: Path, package: str) -> str:
    status = (root / "var/lib/dpkg/status").read_text()
    for stanza in status.split("\n\n"):
        if f"Package: {package}\n" in stanza + "\n" and "Status: install ok installed" in stanza:
            return stanza.split("Version: ", 1)[1].split("\n", 1)[0]
    raise AssertionError(f"{package} is not installed")


def _assert_mode(
    path: Path, mode: int, *, root: Path, owner: str | None = None, group: str | None = None
) -> None:
    st = path.stat()
    assert stat.S_IMODE(st.st_mode) == mode, f"{path}: {stat.S_IMODE(st.st_mode):o}"
    if owner is not None:
        assert st.st_uid == _chroot_id(root / "etc/passwd", owner), path
    if group is not None:
        assert st.st_gid == _chroot_id(root / "etc/group", group), path


def _chroot_id(table: Path, name: str) -> int:
    for line in table.read_text().splitlines():
        fields = line.split(":")
        if fields[0] == name:
            return int(fields[2])
    raise AssertionError(f"{name} not in {table}")


def _assert_nothing_runs_in(tree: Path) -> None:
    """No process is left with its root in the chroot (nothing was started there)."""
    left: list[Any] = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            if os.readlink(proc / "root") == str(tree):
                left.append((proc.name, (proc / "cmdline").read_bytes()))
        except OSError:
            continue
    assert not left, f"processes running in the chroot: {left}"
