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

import compileall
import importlib.util
import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import ModuleType

from common import CLK_TCK, PURE, Context, MeshdBuild, cpu_ticks, run_wrk

#: ``pure`` or ``mypyc`` (the default); ``bench/run --pure`` sets it to ``pure``.
BUILD_ENV = "BENCH_MESHD_BUILD"
KINDS = ("mypyc", "pure")
#: A module every compiled build has compiled: how a build shows it is one.
_PROBE = "meshd.http.codec"


__all__ = ["PURE", "BuildError", "MeshdBuild", "compare_pure", "prepare", "requested"]


class BuildError(Exception):
    """The compiled build could not be made (no compiler, a module mypyc refuses...)."""


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
    hatch_build = load_hatch_build(root)
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


def load_hatch_build(root: Path) -> ModuleType:
    """``root``'s own ``hatch_build.py``, loaded anew: two checkouts built by one process (e.g.
    ``l7_instructions.py mypyc:A mypyc:B``) may compile differently (flags, link order)."""
    path = root / "hatch_build.py"
    spec = importlib.util.spec_from_file_location("_hatch_build", path)
    if spec is None or spec.loader is None or not path.is_file():
        raise BuildError(f"no hatch_build.py in {root}")
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except ImportError as exc:  # hatchling and mypy come with the dev extra (scripts/setup)
        raise BuildError(f"{exc}: the mypyc build needs `pip install -e .[dev]`") from exc
    return module


def _assemble(root: Path, lib: Path, dest: Path, packages: tuple[str, ...]) -> None:
    """Copy ``packages`` from ``root`` and the extension modules of ``lib`` over them: Python
    imports an extension module before the ``.py`` of the same name, as installed. The copies
    are byte-compiled, as the packages' install scripts do: a daemon that compiles its modules
    from source at every start (``PYTHONDONTWRITEBYTECODE``, no ``__pycache__``) keeps ~0.4 MB
    more resident than an installed one."""
    for package in packages:
        shutil.copytree(
            root / package, dest / package, ignore=shutil.ignore_patterns("__pycache__")
        )
        if not compileall.compile_dir(dest / package, quiet=1):
            raise BuildError(f"byte-compiling {dest / package} failed")
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


#: A meshd's listener port and its processes (whose CPU a request costs).
Listener = tuple[int, Callable[[], list[int]]]


def compare_pure(ctx: Context, wrk: str, pairs: dict[str, tuple[Listener, Listener]]) -> list[str]:
    """``dataplane``'s INFO lines on the pure-Python meshd beside the compiled one: for each
    ``layer: ((port, pids), (pure_port, pure_pids))``, one warm-up and one measured wrk run on
    both at the same time (the machine's load of that moment weighs on both alike), and each
    one's CPU per request."""
    lines = []
    with ThreadPoolExecutor(max_workers=2) as pool:
        for layer, ((port, pids), (pure_port, pure_pids)) in pairs.items():
            urls = [f"http://127.0.0.1:{p}/" for p in (port, pure_port)]
            if ctx.wrk.warmup_s:
                list(pool.map(lambda url: run_wrk(wrk, url, ctx.wrk, ctx.wrk.warmup_s), urls))
            before = [cpu_ticks(pids()), cpu_ticks(pure_pids())]
            runs = list(pool.map(lambda url: run_wrk(wrk, url, ctx.wrk, ctx.wrk.duration_s), urls))
            spent = [cpu_ticks(pids()) - before[0], cpu_ticks(pure_pids()) - before[1]]
            cpu = [
                s * 1e6 / CLK_TCK / r.requests if r.requests else None
                for s, r in zip(spent, runs, strict=True)
            ]
            lines.append(cpu_line(layer, cpu[0], cpu[1]))
    return lines


def cpu_line(layer: str, compiled: float | None, pure: float | None) -> str:
    """``INFO <layer>_cpu_us_per_req_pure=<µs> (mypyc <µs>, loaded at once; mypyc/pure <x>)``."""
    shown = "n/a" if pure is None else f"{pure:.1f}"
    share = "n/a" if compiled is None or not pure else f"{compiled / pure:.2f}"
    mine = "n/a" if compiled is None else f"{compiled:.1f}"
    return (
        f"INFO {layer}_cpu_us_per_req_pure={shown} "
        f"(mypyc {mine}, loaded at the same time; mypyc/pure {share})"
    )
