"""Hatchling build hook: ``MESHD_MYPYC=1`` compiles meshd's hot modules with mypyc.

The typed Python stays the source. Without ``MESHD_MYPYC=1`` (development, editable installs,
the test suite) the wheel is pure Python and this hook does nothing. With it, the modules listed
in pyproject's ``[tool.hatch.build.targets.wheel.hooks.custom] mypyc-modules`` are compiled into
extension modules (plus mypyc's shared runtime library) that the wheel carries next to the
``.py`` files; Python imports the extension first. The wheel is then tagged for this
interpreter and platform (e.g. ``cp311-cp311-linux_x86_64``).

    MESHD_MYPYC=1 pip install .                  # isolated: pip fetches mypy and the deps
    MESHD_MYPYC=1 pip wheel --no-deps --no-build-isolation -w dist .   # needs them installed

Needs a C compiler and the Python headers (``gcc``, ``python3-dev``), mypy (which ships
mypyc) and setuptools (its ``build_ext`` drives the compiler). mypyc type-checks the modules as
``mypy --strict`` does, with the project's runtime dependencies installed for their types.

``MESHD_MYPYC_CACHE=<dir>`` keeps the compiled modules under a key of everything they are made
from (every ``.py`` of meshd and meshcore with ``__version__`` lines left out, the module list,
the :data:`HOT_LIST`, the flags, mypy's and Python's versions), so a build of the same source
under another version number (``packaging/build`` stamps it) reuses them instead of compiling
again. ``bench/run`` runs meshd from the same cache (:func:`cached_compile`,
:func:`listed_modules`; ``bench/meshd_build.py``). The cache keeps the :data:`KEEP_ENTRIES`
entries used last.

On Linux the modules are linked with GNU gold (``ld.gold``, in Debian's binutils), the functions
a sidecar runs together (:data:`HOT_LIST`), and export only their ``PyInit_*``.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import shutil
import sys
import sysconfig
import tempfile
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any

from hatchling.builders.config import BuilderConfig
from hatchling.builders.hooks.plugin.interface import BuildHookInterface

ENABLE = "MESHD_MYPYC"
CACHE = "MESHD_MYPYC_CACHE"
#: gcc's optimization level for the generated C (mypyc's default).
OPT_LEVEL = "3"
#: No debug information: it would hold the temporary build paths, and the ELF build id is a
#: hash over it, so two builds of the same source would differ (packaging/build strips the
#: modules anyway).
DEBUG_LEVEL = "0"
#: What the extension modules export (a GNU linker version script; Linux only). Python looks up
#: only ``PyInit_*``, and the modules reach the shared group library through Python, never by
#: symbol, so everything else stays local: ~170 kB fewer dynamic symbols and relocations loaded
#: into every process, and direct calls where the linker made calls through the PLT (issue 15).
EXPORTS = "{\n  global: PyInit_*;\n  local: *;\n};\n"
#: The functions a sidecar runs (start-up, requests, scrapes, timers), one name a line
#: (``bench/mypyc_hot.py`` writes it). The group library is linked with them together, after
#: the code no sidecar runs (:func:`section_order`): the kernel maps code in 64 kB fault-around
#: windows, so the windows of that code then stay out of a sidecar's memory (-0.6 MB resident,
#: bench/README.md ``memory``). A listed name that no longer exists is skipped, an unlisted
#: function linked with the code no sidecar runs: a stale list costs memory, never the build.
HOT_LIST = "packaging/mypyc-hot.txt"
#: Every function in a section of its own (``.text.<name>``), which the order places.
COMPILE_ARGS = ("-ffunction-sections",)
#: GNU gold (Debian's binutils) links by a section order; GNU ld (bfd) 2.40 can't.
LINKER = "gold"
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.]*")
#: The packages whose source the compiled modules are typed against (the cache key).
SOURCE_PACKAGES = ("meshd", "meshcore")
_VERSION_LINE = re.compile(rb"^__version__ = .*$", re.M)
#: Cache entries kept (the ones used last): every edit of meshd's source makes a new key.
KEEP_ENTRIES = 6


def enabled() -> bool:
    """Whether this build compiles (``MESHD_MYPYC=1``)."""
    return os.environ.get(ENABLE, "") == "1"


class MypycBuildHook(BuildHookInterface[BuilderConfig]):
    """Adds the mypyc-compiled modules to a standard wheel when :func:`enabled`."""

    PLUGIN_NAME = "custom"

    def dependencies(self) -> list[str]:
        if not enabled():
            return []
        # mypy ships mypyc; the runtime dependencies give the type checker their types.
        return ["mypy>=1.10", "setuptools>=61", *self.metadata.core.dependencies]

    def initialize(self, version: str, build_data: dict[str, Any]) -> None:
        if not enabled() or self.target_name != "wheel" or version != "standard":
            return
        modules: list[str] = list(self.config["mypyc-modules"])
        root = Path(self.root)
        lib = self._cached(root, modules)
        for ext in sorted(lib.rglob("*" + _ext_suffix())):
            build_data["force_include"][str(ext)] = ext.relative_to(lib).as_posix()
        build_data["pure_python"] = False
        build_data["infer_tag"] = True

    def finalize(self, version: str, build_data: dict[str, Any], artifact_path: str) -> None:
        work = getattr(self, "_work", None)
        if work is not None:
            shutil.rmtree(work, ignore_errors=True)

    def _cached(self, root: Path, modules: list[str]) -> Path:
        """The directory of compiled modules: from the cache, or compiled now (and cached)."""
        self._work = Path(tempfile.mkdtemp(prefix="meshd-mypyc-"))
        return cached_compile(
            root, modules, os.environ.get(CACHE) or None, self._work, self.app.display_info
        )


def listed_modules(root: Path) -> list[str]:
    """pyproject's ``mypyc-modules`` (paths relative to ``root``), as the hook reads them."""
    with (root / "pyproject.toml").open("rb") as fh:
        hook = tomllib.load(fh)["tool"]["hatch"]["build"]["targets"]["wheel"]["hooks"]["custom"]
    return list(hook["mypyc-modules"])


def cached_compile(
    root: Path, modules: list[str], cache_dir: str | None, work: Path, log: Callable[[str], None]
) -> Path:
    """The directory of ``modules`` compiled (their package layout): the entry of
    ``cache_dir`` under :func:`cache_key` when there is one, else compiled in ``work`` now (and
    cached when ``cache_dir`` is given)."""
    if not cache_dir:
        return compile_modules(root, modules, work)
    entry = Path(cache_dir) / cache_key(root, modules)
    if entry.is_dir():
        log(f"mypyc: compiled modules from {entry}")
        entry.touch()  # used now: the pruning keeps it
        return entry
    lib = compile_modules(root, modules, work)
    entry.parent.mkdir(parents=True, exist_ok=True)
    staged = Path(tempfile.mkdtemp(prefix=entry.name + ".", dir=entry.parent))
    shutil.copytree(lib, staged, dirs_exist_ok=True)
    with contextlib.suppress(OSError):  # another build cached the same key meanwhile
        staged.rename(entry)
    shutil.rmtree(staged, ignore_errors=True)
    _prune(entry.parent)
    return lib


def _prune(cache: Path) -> None:
    """Drop all but the :data:`KEEP_ENTRIES` entries used last (a partly written entry has a
    ``.`` in its name and is left to the build writing it)."""
    entries = [p for p in cache.iterdir() if p.is_dir() and "." not in p.name]
    entries.sort(key=lambda p: p.stat().st_mtime, reverse=True)
    for old in entries[KEEP_ENTRIES:]:
        shutil.rmtree(old, ignore_errors=True)


def compile_modules(root: Path, modules: list[str], work: Path) -> Path:
    """mypyc on ``modules`` (paths relative to ``root``); returns the directory holding the
    extension modules in their package layout."""
    from mypyc.build import mypycify
    from setuptools import Distribution

    lib = work / "lib"
    options = ["--cache-dir", str(work / "mypy-cache")]
    with contextlib.chdir(root):  # mypy reads its configuration from root's pyproject.toml
        # One group library for all modules (mypyc's default): a sidecar imports every listed
        # module at start-up, so more groups (``separate=``) only add libraries, each with its
        # own copy of mypyc's runtime, and calls through export tables (bench/README.md).
        extensions = mypycify(
            [*options, *modules],
            opt_level=OPT_LEVEL,
            debug_level=DEBUG_LEVEL,
            target_dir=str(work / "c"),
        )
        if sys.platform.startswith("linux"):
            linking = link_args(work, hot_functions((root / HOT_LIST).read_text()))
            for ext in extensions:
                ext.extra_compile_args = [*ext.extra_compile_args, *COMPILE_ARGS]
                ext.extra_link_args = [*ext.extra_link_args, *linking]
        dist = Distribution({"name": "meshd-mypyc", "ext_modules": extensions})
        build_ext = dist.get_command_obj("build_ext")
        build_ext.build_lib = str(lib)
        build_ext.build_temp = str(work / "obj")
        dist.run_command("build_ext")
    return lib


def hot_functions(text: str) -> list[str]:
    """The function names of a :data:`HOT_LIST` text, in its order (``#`` comments, blank lines
    and anything that can't be a C symbol left out)."""
    lines = (line.split("#", 1)[0].strip() for line in text.splitlines())
    return [line for line in lines if _NAME.fullmatch(line)]


def section_order(functions: list[str]) -> str:
    """gold's ``--section-ordering-file`` for ``functions``: the section gcc's
    ``-ffunction-sections`` puts each in, ``.text.<name>``, or for the part gcc split off as
    unlikely to run (``<name>.cold``, run all the same) ``.text.unlikely.<name>``. gold places
    the listed sections in this order after the others and skips names that match none."""
    sections = (
        f".text.unlikely.{name.removesuffix('.cold')}"
        if name.endswith(".cold")
        else f".text.{name}"
        for name in functions
    )
    return "".join(f"{section}\n" for section in sections)


def link_args(work: Path, functions: list[str]) -> list[str]:
    """The linker options of every extension module (Linux): exports (:data:`EXPORTS`) and
    ``functions`` together in their order (:func:`section_order`); the files they name go in
    ``work``."""
    if shutil.which(f"ld.{LINKER}") is None:
        raise RuntimeError(
            f"the mypyc build links with GNU {LINKER} (ld.{LINKER}, Debian's binutils); not found"
        )
    exports, order = work / "exports.map", work / "section-order.txt"
    exports.write_text(EXPORTS)
    order.write_text(section_order(functions))
    return [
        f"-fuse-ld={LINKER}",
        f"-Wl,--version-script={exports}",
        f"-Wl,--section-ordering-file={order}",
    ]


def cache_key(root: Path, modules: list[str]) -> str:
    """What the compiled modules are made of, as a hex digest."""
    import mypy.version

    digest = hashlib.sha256()
    parts = (sys.version, _ext_suffix(), mypy.version.__version__, OPT_LEVEL, DEBUG_LEVEL, EXPORTS)
    linking = (*COMPILE_ARGS, LINKER, (root / HOT_LIST).read_text())
    for part in (*parts, *linking, *modules):
        digest.update(part.encode() + b"\0")
    for package in SOURCE_PACKAGES:
        for path in sorted((root / package).rglob("*.py")):
            digest.update(path.relative_to(root).as_posix().encode() + b"\0")
            digest.update(_VERSION_LINE.sub(b"", path.read_bytes()) + b"\0")
    return digest.hexdigest()[:32]


def _ext_suffix() -> str:
    return str(sysconfig.get_config_var("EXT_SUFFIX"))
