"""The controld and meshd .debs the Ansible tests install.

In order: ``$MESHD_TEST_DEB_DIR``, else the build of this tree that the packaging tests
install too (``packaging/build`` run once per test run by tests/packaging/pkgbuild.py, so a
run of both directories builds the packages once), else, without the build script, two
stand-in packages made with dpkg-deb that carry what the roles rely on (the unit files, the
system users, ``/etc/<package>/``) so the role logic is still exercised (the test then says so).
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

# The shared build (pkgbuild) lives with the packaging tests; appended, so nothing of this
# directory is shadowed.
_PACKAGING_TESTS = Path(__file__).resolve().parents[1] / "packaging"
if str(_PACKAGING_TESTS) not in sys.path:
    sys.path.append(str(_PACKAGING_TESTS))

from pkgbuild import BUILD, build  # noqa: E402

__all__ = ["find_debs", "with_version", "write_repository"]

PACKAGES = ("controld", "meshd")


def _newest(directory: Path) -> dict[str, Path]:
    found: dict[str, Path] = {}
    for name in PACKAGES:
        debs = sorted(directory.glob(f"{name}_*.deb"), key=lambda p: p.stat().st_mtime)
        if debs:
            found[name] = debs[-1]
    return found


def find_debs(request: pytest.FixtureRequest, scratch: Path) -> dict[str, Path]:
    """``{"controld": path, "meshd": path}``: copies in ``scratch``, so that nothing can
    change them under the test."""
    found = _find(request, scratch / "stand-in")
    return {name: Path(shutil.copy(path, scratch)) for name, path in found.items()}


def _find(request: pytest.FixtureRequest, scratch: Path) -> dict[str, Path]:
    given = os.environ.get("MESHD_TEST_DEB_DIR")
    if given:
        found = _newest(Path(given))
        if set(found) != set(PACKAGES):
            raise AssertionError(f"MESHD_TEST_DEB_DIR={given} lacks {set(PACKAGES) - set(found)}")
        return found
    if BUILD.exists():
        dist = build(request)
        return {name: dist.deb(name) for name in PACKAGES}
    # Said on stderr (shown with the test's output): the real packages were not tested.
    print("no controld/meshd .debs (packaging/build): using stand-in packages", file=sys.stderr)
    return {name: _stand_in(name, scratch) for name in PACKAGES}


_UNITS = {
    "controld": {
        "controld.service": """
            [Unit]
            Description=stand-in controld
            [Service]
            Type=notify
            EnvironmentFile=-/etc/controld/controld.env
            ExecStart=/usr/bin/controld run --data-dir /var/lib/controld $CONTROLD_OPTS
            [Install]
            WantedBy=multi-user.target
        """,
    },
    "meshd": {
        "meshd@.service": """
            [Unit]
            Description=stand-in meshd %i
            [Service]
            Type=notify
            ExecStart=/usr/bin/meshd run --config /etc/meshd/%i.yaml
            [Install]
            WantedBy=multi-user.target
        """,
        "meshd@.socket": """
            [Unit]
            Description=stand-in meshd sockets %i
            [Socket]
            Service=meshd@%i.service
            [Install]
            WantedBy=sockets.target
        """,
    },
}


def _stand_in(name: str, scratch: Path) -> Path:
    root = scratch / f"{name}-pkg"
    scratch.mkdir(exist_ok=True)
    (root / "DEBIAN").mkdir(parents=True)
    (root / "DEBIAN/control").write_text(
        f"Package: {name}\nVersion: 0.0.0~standin\nArchitecture: all\n"
        "Maintainer: meshd tests <tests@example.org>\nDepends: adduser\n"
        f"Description: stand-in {name} package for the Ansible tests\n"
    )
    postinst = root / "DEBIAN/postinst"
    postinst.write_text(
        "#!/bin/sh\nset -e\n"
        f"getent passwd {name} >/dev/null || adduser --system --group --no-create-home "
        f"--home /var/lib/{name} {name}\n"
    )
    postinst.chmod(0o755)
    (root / "etc" / name).mkdir(parents=True)
    units = root / "lib/systemd/system"
    units.mkdir(parents=True)
    for unit, text in _UNITS[name].items():
        (units / unit).write_text(textwrap.dedent(text).lstrip())
    out = scratch / f"{name}_0.0.0~standin_all.deb"
    subprocess.run(
        ["dpkg-deb", "--root-owner-group", "--build", str(root), str(out)],
        check=True,
        capture_output=True,
        timeout=120,
    )
    return out


def with_version(deb: Path, version: str, out_dir: Path) -> Path:
    """A copy of ``deb`` whose only change is its version (an "upgrade" to install)."""
    work = out_dir / f"{deb.stem}-repack"
    subprocess.run(["dpkg-deb", "-R", str(deb), str(work)], check=True, timeout=300)
    control = work / "DEBIAN/control"
    text = re.sub(r"^Version: .*$", f"Version: {version}", control.read_text(), flags=re.M)
    control.write_text(text)
    name = text.split("Package: ", 1)[1].split("\n", 1)[0]
    out = out_dir / f"{name}_{version}_upgrade.deb"
    subprocess.run(
        ["dpkg-deb", "--root-owner-group", "-Zgzip", "--build", str(work), str(out)],
        check=True,
        capture_output=True,
        timeout=600,
    )
    shutil.rmtree(work)
    return out


def write_repository(repo: Path) -> None:
    """A flat apt repository (``deb [trusted=yes] file:<repo> ./``) of the .debs in ``repo``:
    its ``Packages`` index, made here (no dpkg-dev needed)."""
    stanzas = []
    for deb in sorted(repo.glob("*.deb")):
        fields = subprocess.run(
            ["dpkg-deb", "-f", str(deb)], check=True, capture_output=True, text=True, timeout=60
        ).stdout.rstrip("\n")
        data = deb.read_bytes()
        stanzas.append(
            f"{fields}\nFilename: ./{deb.name}\nSize: {len(data)}\n"
            f"SHA256: {hashlib.sha256(data).hexdigest()}\n"
        )
    (repo / "Packages").write_text("\n".join(stanzas))
