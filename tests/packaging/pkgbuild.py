"""The package builds the packaging and ops tests share: ``packaging/build`` once per run.

A build is one version (and, for the reproducibility test, a second build of the same
version made independently of the first). :func:`build` returns it, made on first use and
memoized for the whole run, so tests/ops (which runs first) and tests/packaging install the
same packages. The first call also starts, in the background, the other builds that the run's
collected tests will ask for (read from their fixtures, :data:`USES`): they overlap the tests
that run in the meantime instead of adding to the run. The first build runs alone (on a clean
checkout it fills packaging/.cache, the wheels and build tools, which builds side by side would
both try to fill); the others run two at a time after it, at the lowest CPU and I/O priority
(they only take what the running tests leave). A build still running when pytest ends is
stopped.
"""

from __future__ import annotations

import os
import signal
import subprocess
import threading
from collections.abc import Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest
from pkgtools import PACKAGES, REPO, tools_problem

BUILD = REPO / "packaging" / "build"
#: Every build of the tests uses this timestamp (reproducibility is checked against it).
SOURCE_DATE_EPOCH = "1765000000"
#: How long one build may take (a busy machine, a clean checkout fetching its wheels).
BUILD_TIMEOUT_S = 900


@dataclass(frozen=True)
class Dist:
    """One build's output directory."""

    path: Path
    version: str

    def deb(self, name: str) -> Path:
        return self.path / f"{name}_{self.version}-1_amd64.deb"

    def rpm(self, name: str) -> Path:
        return self.path / f"{name}-{self.version}-1.x86_64.rpm"

    def debs(self) -> list[Path]:
        return [self.deb(name) for name in PACKAGES]

    def rpms(self) -> list[Path]:
        return [self.rpm(name) for name in PACKAGES]

    def sums(self) -> dict[str, str]:
        out = {}
        for line in (self.path / "SHA256SUMS").read_text().splitlines():
            digest, name = line.split()
            out[name] = digest
        return out


@dataclass(frozen=True)
class Want:
    """A build: ``version``; ``again``: a second, independent build of it."""

    version: str = "0.1.0"
    again: bool = False

    @property
    def dirname(self) -> str:
        return f"dist-{self.version}" + ("-again" if self.again else "")


NEWER = Want("0.1.1")
#: The fixtures of tests/packaging and tests/ops that call :func:`build`, and what they build:
#: a collected test using one of them will ask for these builds.
USES: dict[str, tuple[Want, ...]] = {
    "dist": (Want(),),
    "newer": (NEWER,),
    "dists": (Want(), NEWER),
    "again": (Want(again=True),),
    "debs": (Want(),),  # tests/ops (unless $MESHD_TEST_DEB_DIR gives the .debs)
}
_USERS = (REPO / "tests" / "packaging", REPO / "tests" / "ops")


class _Builds:
    """This run's builds: the pool running them, the first one, the processes running."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.pool: ThreadPoolExecutor | None = None
        self.first: Future[Dist] | None = None
        self.futures: dict[Want, Future[Dist]] = {}

    def get(self, request: pytest.FixtureRequest, want: Want) -> Future[Dist]:
        with self.lock:
            if self.pool is None:
                self._start(request, want)
            return self.futures.get(want) or self._submit(request, want, background=False)

    def _start(self, request: pytest.FixtureRequest, first: Want) -> None:
        """The pool, the first build, and the others this run will ask for in the background."""
        self.pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="pkgbuild")
        request.config.add_cleanup(self.stop)
        self._submit(request, first, background=False)
        # Where the packaging tests will skip (no root or tools), they need no build.
        if tools_problem():
            return
        for want in planned(request.session.items):
            if want not in self.futures:
                self._submit(request, want, background=True)

    def _submit(
        self, request: pytest.FixtureRequest, want: Want, *, background: bool
    ) -> Future[Dist]:
        assert self.pool is not None
        factory: pytest.TempPathFactory = request.getfixturevalue("tmp_path_factory")
        out = factory.mktemp(want.dirname)
        first = self.first

        def run() -> Dist:
            if first is not None:
                first.exception()  # wait for it; its failure is its own test's
            return build_into(out, want.version, background=background)

        future = self.pool.submit(run)
        self.futures[want] = future
        self.first = self.first or future
        return future

    def stop(self) -> None:
        """At the end of the run: cancel the builds not started, stop those running."""
        if self.pool is None:
            return
        self.pool.shutdown(wait=False, cancel_futures=True)
        for proc in list(_running.values()):
            _stop_build(proc)
        self.pool.shutdown(wait=True)
        self.pool, self.first = None, None
        self.futures.clear()


_builds = _Builds()
#: The build processes running, by PID.
_running: dict[int, subprocess.Popen[str]] = {}


def build(request: pytest.FixtureRequest, version: str = "0.1.0", *, again: bool = False) -> Dist:
    """``packaging/build`` of ``version`` (``again``: the second build of it), once per run.

    The first call starts the run's other builds in the background (see the module)."""
    return _builds.get(request, Want(version, again)).result()


def build_into(out: Path, version: str = "0.1.0", *, background: bool = False) -> Dist:
    """``packaging/build`` into ``out``, with the tests' SOURCE_DATE_EPOCH; ``background``:
    at the lowest CPU and I/O priority."""
    env = dict(
        os.environ, SOURCE_DATE_EPOCH=SOURCE_DATE_EPOCH, MESHD_PKG_VERSION=version, DIST=str(out)
    )
    argv = [str(BUILD)]
    if background:
        argv = ["nice", "-n", "19", "ionice", "-c", "3", *argv]
    # Its own process group: stopping it (at the end of the run) stops pip and nfpm too.
    proc = subprocess.Popen(
        argv,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    _running[proc.pid] = proc
    try:
        stdout, stderr = proc.communicate(timeout=BUILD_TIMEOUT_S)
    except BaseException:
        _stop_build(proc)
        raise
    finally:
        _running.pop(proc.pid, None)
    assert proc.returncode == 0, f"exit {proc.returncode}\n{stdout[-3000:]}{stderr[-5000:]}"
    return Dist(out, version)


def planned(items: Iterable[pytest.Item]) -> list[Want]:
    """The builds the collected ``items`` of tests/packaging and tests/ops will ask for."""
    wants: list[Want] = []
    for item in items:
        if not any(item.path.is_relative_to(users) for users in _USERS):
            continue
        for fixture in getattr(item, "fixturenames", ()):
            if fixture == "debs" and os.environ.get("MESHD_TEST_DEB_DIR"):
                continue
            wants += [want for want in USES.get(fixture, ()) if want not in wants]
    return wants


def _stop_build(proc: subprocess.Popen[str]) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
