"""Helpers of the packaging tests: a cached Debian chroot, daemons (the builds of
packaging/build they install are :mod:`pkgbuild`'s).

The chroot is a debootstrap of Debian 12 (minbase plus python3, adduser, procps and systemd's
unit files), cached as a tarball outside the repository and extracted afresh for each use.
Nothing here starts systemd: daemons run as plain processes through chroot(8), a sidecar
optionally with listening sockets the test holds, passed as ``meshd@.socket`` would pass them
(the restart tests' :func:`restart_support.activated`). :func:`start_controld` and
:func:`write_sidecar` set up controld mode in the chroot as docs/install.md describes.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import tomllib
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest
from ports import free_ports as free_ports  # noqa: PLC0414 (re-exported)

REPO = Path(__file__).resolve().parents[2]
CHROOT_CACHE = Path(
    os.environ.get("MESHD_TEST_CHROOT_CACHE", "/var/cache/meshd-test/chroot-bookworm.tar.zst")
)
#: What the chroot has besides minbase: the packages' dependencies, and systemd for the unit
#: files `systemd-analyze verify --root` resolves (installing it starts nothing in a chroot).
CHROOT_INCLUDE = "python3,adduser,init-system-helpers,procps,systemd"
DEBIAN_MIRROR = os.environ.get("MESHD_TEST_DEBIAN_MIRROR", "http://deb.debian.org/debian")
TOOLS = (
    "debootstrap", "lintian", "rpmlint", "rpm", "help2man", "systemd-analyze", "zstd",
    "dpkg-deb", "chroot", "mount",
)  # fmt: skip
PACKAGES = ("meshd", "controld", "meshctl")
# The restart tests' building blocks (socket activation, steady load, registry watch) serve
# the upgrade test too; appended, so nothing of this directory is shadowed.
for _shared in (REPO / "tests" / "integration", REPO / "tests" / "integration" / "controlplane"):
    if str(_shared) not in sys.path:
        sys.path.append(str(_shared))


def mypyc_modules() -> list[str]:
    """The dotted names of the modules the packages carry compiled by mypyc (pyproject's
    ``mypyc-modules``, read by hatch_build.py)."""
    with (REPO / "pyproject.toml").open("rb") as fh:
        hook = tomllib.load(fh)["tool"]["hatch"]["build"]["targets"]["wheel"]["hooks"]["custom"]
    return [path.removesuffix(".py").replace("/", ".") for path in hook["mypyc-modules"]]


def tools_problem() -> str:
    """Why the packaging tests can't run here ("" when they can): no root, or missing tools."""
    missing = [tool for tool in TOOLS if shutil.which(tool) is None]
    if os.geteuid() != 0:
        return "needs root (chroot, mount)"
    if missing:
        return f"missing tools: {' '.join(missing)} (apt-get install {' '.join(missing)})"
    return ""


def require_tools() -> None:
    """Skip (fail in CI, where .ci/run installs them) without root or the tools."""
    problem = tools_problem()
    if problem:
        if os.environ.get("CI"):
            pytest.fail(problem)
        pytest.skip(problem)


def _make_chroot_cache() -> None:
    CHROOT_CACHE.parent.mkdir(parents=True, exist_ok=True)
    with (CHROOT_CACHE.parent / (CHROOT_CACHE.name + ".lock")).open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another run may be making it right now
        if CHROOT_CACHE.exists():
            return
        work = Path(tempfile.mkdtemp(prefix="meshd-debootstrap-", dir="/var/tmp"))
        work.chmod(0o755)  # the root directory of the tree: mkdtemp made it 0700
        try:
            subprocess.run(
                ["debootstrap", "--variant=minbase", f"--include={CHROOT_INCLUDE}",
                 "bookworm", str(work), DEBIAN_MIRROR],
                check=True, capture_output=True, text=True, timeout=900,
            )  # fmt: skip
            partial = CHROOT_CACHE.with_name(CHROOT_CACHE.name + ".partial")
            subprocess.run(
                ["tar", "--zstd", "--numeric-owner", "-C", str(work), "-cf", str(partial), "."],
                check=True,
                timeout=600,
            )
            partial.rename(CHROOT_CACHE)
        finally:
            shutil.rmtree(work, ignore_errors=True)


@contextlib.contextmanager
def fresh_chroot() -> Iterator[Path]:
    """A Debian 12 root extracted from the cached tarball (debootstrapped if missing), with
    /proc mounted and a policy-rc.d that forbids starting services; removed afterwards."""
    if not CHROOT_CACHE.exists():
        _make_chroot_cache()
    root = Path(tempfile.mkdtemp(prefix="meshd-chroot-", dir="/var/tmp"))
    mounted = False
    try:
        subprocess.run(
            ["tar", "--zstd", "--numeric-owner", "-C", str(root), "-xf", str(CHROOT_CACHE)],
            check=True,
            timeout=600,
        )
        # A root of mode 0700 (mkdtemp's; also what a tarball cached by an older version of
        # this module holds for "./") keeps the packages' users from running anything inside.
        root.chmod(0o755)
        policy = root / "usr/sbin/policy-rc.d"
        policy.write_text("#!/bin/sh\n# packaging tests: never start a service here\nexit 101\n")
        policy.chmod(0o755)
        subprocess.run(["mount", "-t", "proc", "proc", str(root / "proc")], check=True)
        mounted = True
        yield root
    finally:
        if mounted:
            done = subprocess.run(["umount", str(root / "proc")], check=False)
            if done.returncode != 0:
                subprocess.run(["umount", "-l", str(root / "proc")], check=False)
        # Only delete the tree once nothing is mounted in it.
        if not mounted or not _is_mounted(root / "proc"):
            shutil.rmtree(root, ignore_errors=True)


def _is_mounted(path: Path) -> bool:
    real = str(path.resolve())
    with open("/proc/self/mounts") as mounts:
        return any(line.split()[1] == real for line in mounts)


def in_root(
    root: Path, *cmd: str, user: str | None = None, timeout: float = 300, check: bool = True
) -> subprocess.CompletedProcess[str]:
    """Run ``cmd`` in the chroot (as ``user``), capturing its output."""
    argv = ["chroot"]
    if user:
        argv.append(f"--userspec={user}:{user}")
    env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LC_ALL": "C.UTF-8", "HOME": "/root"}
    env["DEBIAN_FRONTEND"] = "noninteractive"
    done = subprocess.run(
        [*argv, str(root), *cmd],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        check=False,
    )
    if check:
        assert done.returncode == 0, f"{cmd}: {done.stdout[-2000:]}{done.stderr[-4000:]}"
    return done


class Daemon:
    """A daemon of the chroot run as a plain process (``chroot --userspec``), stopped by PID.

    With ``sockets`` (name, listening socket) it is socket-activated: the sockets are passed
    as fds 3, 4, ... with ``LISTEN_FDS``/``LISTEN_FDNAMES``/``LISTEN_PID``, exactly as systemd
    passes a ``.socket`` unit's (chroot(8) execs the daemon in the same process).
    """

    def __init__(
        self,
        root: Path,
        user: str,
        argv: Sequence[str],
        log: Path,
        *,
        sockets: Sequence[tuple[str, socket.socket]] = (),
    ) -> None:
        self.log = log
        self._out = log.open("wb")
        env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LC_ALL": "C.UTF-8", "HOME": "/"}
        command = ["chroot", f"--userspec={user}:{user}", str(root), *argv]
        fds: list[int] = []
        if sockets:
            from restart_support import activated

            command, fds = activated(log.parent, sockets, command)
        self.proc = subprocess.Popen(
            command,
            stdout=self._out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
            pass_fds=fds,
        )

    def wait_http(self, url: str, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"exited {self.proc.returncode}: {self.tail()}")
            with (
                contextlib.suppress(OSError, urllib.error.URLError),
                urllib.request.urlopen(url, timeout=2) as answer,
            ):
                if answer.status == 200:
                    return
            time.sleep(0.2)
        raise AssertionError(f"{url} not ready after {timeout}s: {self.tail()}")

    def tail(self) -> str:
        self._out.flush()
        return self.log.read_text(errors="replace")[-3000:]

    def stop(self) -> int:
        """SIGTERM (the daemons drain), then SIGKILL if it takes too long."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        self._out.close()
        return self.proc.returncode


def http_get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=10) as answer:
            return answer.status, answer.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def write_sidecar(
    root: Path,
    name: str,
    app: int,
    admin: int,
    inbound: int,
    controld: str,
    upstreams: dict[str, int],
    *,
    drain_timeout_s: float = 2,
    check_interval_s: float | None = 1,
) -> None:
    """Sidecar ``name`` in controld mode, as docs/install.md describes: bootstrap in
    /etc/meshd/NAME.yaml, everything it writes or reads as secrets in /var/lib/meshd/NAME.
    ``check_interval_s`` None leaves the registry check's interval at its default (5 s, so a
    TTL of 15 s: what a restarting sidecar has to come back in)."""
    state = root / "var/lib/meshd" / name
    state.mkdir(mode=0o700)
    push, registry, url = controld.split()
    sidecar_token = in_root(root, "meshctl", "--server", url, "token", "sidecar", "--service", name)
    registry_token = in_root(
        root, "meshctl", "--server", url, "token", "registry", "--service", name
    )
    (state / "token").write_text(sidecar_token.stdout.strip() + "\n")
    (state / "registry-token").write_text(registry_token.stdout.strip() + "\n")
    in_root(root, "chown", "-R", "meshd:meshd", f"/var/lib/meshd/{name}")
    lines = [
        f"service: {name}",
        f"node: {name}-sidecar",
        f"app: 127.0.0.1:{app}",
        f"admin: 127.0.0.1:{admin}",
        f"inbound: 127.0.0.1:{inbound}",
        "drain_delay_s: 0",
        f"drain_timeout_s: {drain_timeout_s}",
        "snapshot:",
        f"  controld: {{url: '{push}', token_file: /var/lib/meshd/{name}/token,",
        f"             cache_file: /var/lib/meshd/{name}/snapshot.json, wait_s: 30}}",
        "registry:",
        f"  address: '{registry}'",
        f"  token_file: /var/lib/meshd/{name}/registry-token",
        f"  service_id: {name}",
        "  check: {kind: tcp}"
        if check_interval_s is None
        else f"  check: {{kind: tcp, interval_s: {check_interval_s}, timeout_s: 1}}",
    ]
    if upstreams:
        lines.append("upstreams:")
        lines += [f"  - {{service: {svc}, port: {port}}}" for svc, port in upstreams.items()]
    (root / "etc/meshd" / f"{name}.yaml").write_text("\n".join(lines) + "\n")


def start_controld(root: Path, log: Path, urls: str = "") -> tuple[Daemon, str]:
    """controld of the chroot as its user; returns it and "push registry admin" URLs (on
    free ports, or those of ``urls`` from an earlier start: a restart)."""
    if urls:
        push, registry, admin = (int(url.rsplit(":", 1)[1]) for url in urls.split())
    else:
        registry, admin, push = free_ports(3)
    daemon = Daemon(
        root,
        "controld",
        ["/usr/bin/controld", "run", "--data-dir", "/var/lib/controld",
         "--registry-listen", f"127.0.0.1:{registry}", "--admin", f"127.0.0.1:{admin}",
         "--push", f"127.0.0.1:{push}", "--tls", "off"],
        log,
    )  # fmt: skip
    url = f"http://127.0.0.1:{admin}"
    try:
        daemon.wait_http(f"{url}/ready")
    except BaseException:
        daemon.stop()  # not handed to the caller: stop it here
        raise
    return daemon, f"http://127.0.0.1:{push} http://127.0.0.1:{registry} {url}"
