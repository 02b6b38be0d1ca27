"""packaging/build: reproducible, lintian and rpmlint clean; the rpms install, upgrade and
erase with `rpm --root`, and their scriptlets are what docs/install.md says.

Slow (three builds, which the other packaging and ops tests share: pkgbuild; lintian); needs
root and the tools .ci/run installs (lintian, rpm, rpmlint, debootstrap, help2man)."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest
from pkgbuild import Dist, build
from pkgtools import PACKAGES, REPO, fresh_chroot, in_root, mypyc_modules, require_tools

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1200)]


@pytest.fixture(scope="module")
def dist(request: pytest.FixtureRequest) -> Dist:
    require_tools()
    return build(request)


@pytest.fixture(scope="module")
def newer(request: pytest.FixtureRequest, dist: Dist) -> Dist:
    return build(request, version="0.1.1")


@pytest.fixture
def again(request: pytest.FixtureRequest, dist: Dist) -> Dist:
    """A second build of ``dist``'s version, made independently of it."""
    return build(request, again=True)


def test_build_makes_a_deb_and_an_rpm_per_package(dist: Dist) -> None:
    for name in PACKAGES:
        assert dist.deb(name).exists()
        assert dist.rpm(name).exists()
    info = subprocess.run(
        ["dpkg-deb", "--field", str(dist.deb("meshd")), "Depends"],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    assert "python3 (>= 3.11)" in info
    files = subprocess.run(
        ["dpkg-deb", "--contents", str(dist.deb("meshd"))],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    assert "./opt/meshd/bin/python3 -> /usr/bin/python3" in files
    assert "./usr/bin/meshd -> /opt/meshd/bin/meshd" in files
    assert "./lib/systemd/system/meshd@.service" in files
    assert "./lib/systemd/system/meshd@.socket" in files
    assert "./usr/share/man/man1/meshd.1.gz" in files
    assert ".pyc" not in files  # compiled at install (reproducible packages)
    # The hot modules as mypyc compiled them, beside their source (hatch_build.py).
    for module in mypyc_modules():
        stem = re.escape(module.replace(".", "/"))
        assert re.search(rf"/site-packages/{stem}\.cpython-[^/ ]+\.so$", files, re.M), module
        assert re.search(rf"/site-packages/{stem}\.py$", files, re.M), module
    assert re.search(r"/site-packages/[0-9a-f]+__mypyc\.cpython-[^/ ]+\.so$", files, re.M)
    conffiles = subprocess.run(
        ["dpkg-deb", "--info", str(dist.deb("meshd")), "conffiles"],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    assert conffiles.split() == ["/etc/meshd/meshd.env"]


def test_compiled_modules_export_only_their_init(dist: Dist, tmp_path: Path) -> None:
    # hatch_build.EXPORTS: Python looks up nothing else, so no other symbol is loaded as dynamic.
    tree = subprocess.run(
        ["dpkg-deb", "--fsys-tarfile", str(dist.deb("meshd"))], capture_output=True, check=True
    ).stdout
    subprocess.run(
        ["tar", "-x", "-C", str(tmp_path), "--wildcards", "*/site-packages/*.so"],
        input=tree, check=True,
    )  # fmt: skip
    site = next(tmp_path.rglob("site-packages"))
    shims = [*site.glob("meshd/**/*.so"), *site.glob("meshcore/**/*.so")]
    assert len(shims) == len(mypyc_modules())
    # The group library the shims load (other distributions may ship mypyc libraries too).
    groups = {m for shim in shims for m in re.findall(rb"[0-9a-f]{20}__mypyc", shim.read_bytes())}
    assert len(groups) == 1
    ours = [*shims, *site.glob(f"{groups.pop().decode()}.*.so")]
    assert len(ours) == len(shims) + 1
    for lib in ours:
        symbols = subprocess.run(
            ["nm", "-D", "--defined-only", "--format=posix", str(lib)],
            capture_output=True, text=True, check=True,
        ).stdout.split("\n")  # fmt: skip
        exported = [line.split()[0] for line in symbols if line.strip()]
        assert exported and all(name.startswith("PyInit_") for name in exported), (lib, exported)


def test_two_builds_with_the_same_source_date_epoch_are_identical(dist: Dist, again: Dist) -> None:
    assert again.path != dist.path
    assert again.sums() == dist.sums()
    assert len(dist.sums()) == 2 * len(PACKAGES)


def test_lintian_is_clean(dist: Dist) -> None:
    done = subprocess.run(
        ["lintian", "--fail-on", "error,warning,info", "--info", "--tag-display-limit", "0",
         *map(str, dist.debs())],
        capture_output=True, text=True, timeout=900, check=False,
    )  # fmt: skip
    tags = [line for line in done.stdout.splitlines() if re.match(r"^[EWIXP]: ", line)]
    assert tags == [], done.stdout[-4000:]
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]


def test_rpmlint_is_clean(dist: Dist) -> None:
    done = subprocess.run(
        ["rpmlint", "-c", str(REPO / "packaging" / "rpmlint.toml"), *map(str, dist.rpms())],
        capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    assert "0 errors, 0 warnings" in done.stdout, done.stdout[-4000:]
    assert done.returncode == 0


def _scripts(rpm: Path) -> str:
    return subprocess.run(
        ["rpm", "-qp", "--scripts", str(rpm)], capture_output=True, text=True, check=True
    ).stdout


def test_rpm_scriptlets(dist: Dist) -> None:
    meshd = _scripts(dist.rpm("meshd"))
    assert "preinstall scriptlet" in meshd
    assert "useradd -r -g meshd -d /var/lib/meshd -s /sbin/nologin" in meshd
    # systemd is only ever asked when it runs, never started from a scriptlet.
    for line in meshd.splitlines():
        if "systemctl" in line and not line.lstrip().startswith("#"):
            assert "start" not in line.replace("try-restart", "").replace("restart", "")
    assert "if [ -d /run/systemd/system ]; then" in meshd
    assert "systemctl try-restart 'meshd@*.service'" in meshd
    assert "posttrans scriptlet" in meshd
    assert "/opt/meshd/bin/python -m compileall" in meshd
    meshctl = _scripts(dist.rpm("meshctl"))
    assert "useradd" not in meshctl
    assert "systemctl" not in meshctl
    config = subprocess.run(
        ["rpm", "-qp", "--configfiles", str(dist.rpm("controld"))],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    assert config.split() == ["/etc/controld/controld.env"]


def test_rpm_installs_upgrades_and_erases_in_a_root(dist: Dist, newer: Dist) -> None:
    # The root is a Debian chroot: its software comes from dpkg, so rpm's database there knows
    # none of the rpms' requirements (/usr/bin/python3.11, shadow-utils) although the files
    # are present: --nodeps. The scriptlets run (they need the root's shell, getent,
    # useradd): the user is created, the virtualenv byte-compiled.
    with fresh_chroot() as root:
        rpm = ["rpm", "--root", str(root), "--nodeps"]
        subprocess.run(["rpm", "--root", str(root), "--initdb"], check=True)
        subprocess.run([*rpm, "-i", *map(str, dist.rpms())], check=True, timeout=600)
        assert in_root(root, "meshd", "--version").stdout.strip() == "meshd 0.1.0"
        assert in_root(root, "controld", "--version").stdout.strip() == "controld 0.1.0"
        assert "usage: meshctl" in in_root(root, "meshctl", "--help").stdout
        assert in_root(root, "getent", "passwd", "controld").stdout.startswith("controld:")
        state = root / "var/lib/controld"
        assert state.is_dir()
        assert state.stat().st_mode & 0o777 == 0o750
        assert list((root / "opt/meshd/lib").rglob("*.pyc")), "posttrans compiled nothing"
        env = root / "etc/meshd/meshd.env"
        env.write_text(env.read_text() + "MESHD_LOG_LEVEL=debug\n")

        subprocess.run([*rpm, "-U", *map(str, newer.rpms())], check=True, timeout=600)
        query = subprocess.run(
            ["rpm", "--root", str(root), "-q", "meshd"],
            capture_output=True, text=True, check=True,
        )  # fmt: skip
        assert query.stdout.strip() == "meshd-0.1.1-1.x86_64"
        assert env.read_text().endswith("MESHD_LOG_LEVEL=debug\n")  # %config(noreplace)
        assert list((root / "opt/meshd/lib").rglob("*.pyc")), "upgrade lost the byte-code"

        subprocess.run([*rpm, "-e", *PACKAGES], check=True, timeout=600)
        assert not (root / "opt/meshd").exists()
        assert not (root / "usr/bin/meshd").exists()
        assert (root / "etc/meshd/meshd.env.rpmsave").exists()  # a changed config is kept
