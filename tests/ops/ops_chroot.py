"""A Debian chroot for converging the Ansible roles, built once with debootstrap and cached.

The base tree (minbase, plus python3 for Ansible's modules, python3-apt for its ``apt``
module and systemd for ``systemctl enable``, which in a chroot only makes symlinks) is packed
into a tarball under :data:`CACHE_DIR`; each test unpacks a fresh copy and removes it after.
Nothing here mounts anything or starts any process inside the chroot except the commands run
through it (systemd is installed as a package, never run).
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import re
import shutil
import subprocess
import tarfile
from pathlib import Path

__all__ = ["CACHE_DIR", "SUITE", "base_tarball", "debian_mirror", "unpack"]

SUITE = "bookworm"
#: Shared with the packaging tests' caches; override with MESHD_TEST_CACHE.
CACHE_DIR = Path(os.environ.get("MESHD_TEST_CACHE", "/var/cache/meshd-test"))
_PACKAGES = ("python3", "python3-apt", "systemd", "procps", "adduser", "ca-certificates")


def debian_mirror() -> str:
    """The Debian mirror this machine's apt uses (its sources), so the chroot uses the same."""
    for path in (Path("/etc/apt/sources.list.d/debian.sources"), Path("/etc/apt/sources.list")):
        try:
            text = path.read_text()
        except OSError:
            continue
        for match in re.finditer(r"(?:URIs:|deb)\s+(\S+/debian)/?\s", text + "\n"):
            return match.group(1)
    raise RuntimeError("no Debian mirror in this machine's apt sources")


def base_tarball(*, timeout: float = 1200) -> Path:
    """The cached base tree, made with debootstrap the first time (under a lock)."""
    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    tag = hashlib.sha256(" ".join(_PACKAGES).encode()).hexdigest()[:8]
    tarball = CACHE_DIR / f"ansible-chroot-{SUITE}-{tag}.tar"
    with (CACHE_DIR / "ansible-chroot.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if tarball.exists():
            return tarball
        build = CACHE_DIR / f"ansible-chroot-build-{os.getpid()}"
        shutil.rmtree(build, ignore_errors=True)
        try:
            subprocess.run(
                [
                    "debootstrap",
                    "--variant=minbase",
                    f"--include={','.join(_PACKAGES)}",
                    SUITE,
                    str(build),
                    debian_mirror(),
                ],
                check=True,
                stdin=subprocess.DEVNULL,
                capture_output=True,
                timeout=timeout,
            )
            # An empty apt cache makes the tarball smaller; the lists stay (apt resolves deps).
            shutil.rmtree(build / "var/cache/apt/archives", ignore_errors=True)
            (build / "var/cache/apt/archives/partial").mkdir(parents=True)
            partial = tarball.with_suffix(".partial")
            with tarfile.open(partial, "w") as tar:
                tar.add(build, arcname=".")
            partial.rename(tarball)
        finally:
            shutil.rmtree(build, ignore_errors=True)
        return tarball


def unpack(tarball: Path, dest: Path) -> Path:
    """A fresh copy of the base tree at ``dest``."""
    dest.mkdir(parents=True)
    subprocess.run(["tar", "-xf", str(tarball), "-C", str(dest)], check=True, timeout=300)
    return dest
