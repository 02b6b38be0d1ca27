"""Which meshd the bench runs: the mypyc-compiled build the packages ship, or pure Python.

Not a suite (no ``run_suite``). The deb and rpm packages carry the modules of pyproject's
``mypyc-modules`` compiled with mypyc (``hatch_build.py``); the development venv runs them as
pure Python, which costs more CPU per request. So ``bench/run`` measures, by default, the
compiled build of the working tree: the modules compiled by ``hatch_build.cached_compile``
(the compile cache ``packaging/build`` fills, keyed on the source: compiled once per source,
a few minutes; then reused) next to a copy of the ``meshd`` and ``meshcore`` packages, that
directory first on the daemons' ``PYTHONPATH``. ``--pure`` or ``BENCH_MESHD_BUILD=pure`` runs
the checkout as it is.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

#: ``pure`` or ``mypyc`` (the default); ``bench/run --pure`` sets it to ``pure``.
BUILD_ENV = "BENCH_MESHD_BUILD"
KINDS = ("mypyc", "pure")
#: A module every compiled build has compiled: how a build shows it is one.
_PROBE = "meshd.http.codec"


class BuildError(Exception):
    """The compiled build could not be made (no compiler, a module mypyc refuses...)."""


@dataclass(frozen=True)
class MeshdBuild:
    """The meshd a bench run starts: ``path`` goes before the checkout on ``PYTHONPATH``."""

    kind: str
    path: Path | None = None
    detail: str = "the checkout's source as it is"

    def info_line(self) -> str:
        """``INFO meshd_build=<kind> (...)``: which build made a run's figures."""
        return f"INFO meshd_build={self.kind} ({self.detail})"


#: The checkout as it is (development, the tests).
PURE = MeshdBuild("pure")


def requested(pure_flag: bool = False) -> str:
    """The kind asked for: ``pure`` with ``--pure``, else ``$BENCH_MESHD_BUILD`` (``mypyc``)."""
    kind = "pure" if pure_flag else os.environ.get(BUILD_ENV, "mypyc") or "mypyc"
    if kind not in KINDS:
        raise BuildError(f"{BUILD_ENV}={kind}: expected one of {', '.join(KINDS)}")
    return kind


def cache_dir(root: Path) -> Path:
    """Where compiled modules are cached: ``$MESHD_MYPYC_CACHE``, else packaging/build's
    (``$MESHD_PKG_CACHE/mypyc``, default ``packaging/.cache/mypyc``), so the two share
    entries when Python and mypy are the same versions."""
    explicit = os.environ.get("MESHD_MYPYC_CACHE")
    if explicit:
        return Path(explicit)
    return Path(os.environ.get("MESHD_PKG_CACHE") or root / "packaging" / ".cache") / "mypyc"


def prepare(root: Path, kind: str, dest: Path) -> MeshdBuild:
    """The build ``kind`` of the checkout ``root``; a compiled one is assembled in ``dest``
    (which must not exist). Runs in the project's Python (mypy, hatchling, a C compiler)."""
    if kind == "pure":
        return PURE
    sys.path.insert(0, str(root))
    try:
        import hatch_build
    finally:
        sys.path.remove(str(root))
    modules = hatch_build.listed_modules(root)
    cache = cache_dir(root)
    key = hatch_build.cache_key(root, modules)
    hit = (cache / key).is_dir()
    if not hit:
        print(
            f"bench: compiling {len(modules)} modules with mypyc into {cache} "
            "(once per source; a few minutes)",
            file=sys.stderr,
            flush=True,
        )
    started = time.monotonic()
    work = Path(tempfile.mkdtemp(prefix="meshd-mypyc-"))
    try:
        lib = hatch_build.cached_compile(root, modules, str(cache), work, lambda _: None)
        _assemble(root, lib, dest, hatch_build.SOURCE_PACKAGES)
    except Exception as exc:  # mypy's, setuptools' and gcc's errors alike
        raise BuildError(
            f"the mypyc build failed ({exc!r}); `bench/run --pure` runs pure Python"
        ) from exc
    finally:
        shutil.rmtree(work, ignore_errors=True)
    how = "cached" if hit else f"compiled in {time.monotonic() - started:.0f} s"
    build = MeshdBuild("mypyc", dest, f"{len(modules)} modules compiled, {how}, key {key[:12]}")
    _check(build)
    return build


def _assemble(root: Path, lib: Path, dest: Path, packages: tuple[str, ...]) -> None:
    """Copy ``packages`` from ``root`` and the extension modules of ``lib`` over them: Python
    imports an extension module before the ``.py`` of the same name, as installed."""
    for package in packages:
        shutil.copytree(
            root / package, dest / package, ignore=shutil.ignore_patterns("__pycache__")
        )
    suffix = str(sysconfig.get_config_var("EXT_SUFFIX"))
    for ext in lib.rglob("*" + suffix):
        target = dest / ext.relative_to(lib)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ext, target)


def _check(build: MeshdBuild) -> None:
    """The daemons' Python must import the compiled modules (not the checkout's source)."""
    assert build.path is not None
    env = dict(
        os.environ, PYTHONPATH=os.pathsep.join([str(build.path), os.environ.get("PYTHONPATH", "")])
    )
    done = subprocess.run(
        [sys.executable, "-c", f"import {_PROBE} as m; print(m.__file__)"],
        env=env,
        cwd=build.path,  # not the checkout: `-c` puts the working directory first on sys.path
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    where = done.stdout.strip()
    if done.returncode != 0 or not where.endswith(str(sysconfig.get_config_var("EXT_SUFFIX"))):
        raise BuildError(
            f"{_PROBE} does not load compiled from {build.path}: {where or done.stderr}"
        )


def pure_info_lines(cpu: dict[str, float | None], rss_kb: int, pure_rss_kb: int) -> list[str]:
    """``dataplane``'s INFO lines on the pure-Python meshd beside the compiled one: CPU per
    request of ``meshd-l7``/``-l4`` and their ``-pure`` paths (measured in turn, not paired:
    read the ratio against the run-to-run noise) and idle RSS."""
    lines = []
    for layer in ("l7", "l4"):
        compiled, pure = cpu.get(f"meshd-{layer}"), cpu.get(f"meshd-{layer}-pure")
        shown = "n/a" if pure is None else f"{pure:.1f}"
        share = "n/a" if compiled is None or not pure else f"{compiled / pure:.2f}"
        lines.append(
            f"INFO {layer}_cpu_us_per_req_pure={shown} "
            f"(mypyc {'n/a' if compiled is None else f'{compiled:.1f}'}; mypyc/pure {share})"
        )
    mb = (pure_rss_kb / 1024, rss_kb / 1024)
    lines.append(f"INFO rss_mb_meshd_idle_pure={mb[0]:.2f} (mypyc {mb[1]:.2f})")
    return lines
