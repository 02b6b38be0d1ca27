"""Which meshd ``bench/run`` starts (``bench/meshd_build.py``): the choice of build, where the
compiled one goes on the daemons' ``PYTHONPATH``, how it is put together, and its INFO lines.
The compile itself is ``hatch_build``'s (exercised by ``packaging/build`` and its tests)."""

from __future__ import annotations

import importlib.util
import os
import sys
import sysconfig
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(ROOT / "bench"))

import meshd_build  # noqa: E402
from common import PURE, Context, MeshdBuild, WrkParams  # noqa: E402

pytestmark = pytest.mark.timeout(30)


def test_the_compiled_build_is_the_default_and_pure_is_opt_out(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv(meshd_build.BUILD_ENV, raising=False)
    assert meshd_build.requested() == "mypyc"
    assert meshd_build.requested(pure_flag=True) == "pure"
    monkeypatch.setenv(meshd_build.BUILD_ENV, "pure")
    assert meshd_build.requested() == "pure"
    monkeypatch.setenv(meshd_build.BUILD_ENV, "cython")
    with pytest.raises(meshd_build.BuildError):
        meshd_build.requested()


def test_the_build_goes_before_the_checkout_on_the_daemons_path(tmp_path: Path) -> None:
    wrk = WrkParams()
    pure = Context(ROOT, sys.executable, wrk, tmp_path)
    assert pure.project_env()["PYTHONPATH"].split(os.pathsep)[0] == str(ROOT)
    build = MeshdBuild("mypyc", tmp_path / "build", "test")
    compiled = Context(ROOT, sys.executable, wrk, tmp_path, build)
    assert compiled.project_env()["PYTHONPATH"].split(os.pathsep)[:2] == [
        str(tmp_path / "build"),
        str(ROOT),
    ]
    assert build.info_line() == "INFO meshd_build=mypyc (test)"
    assert PURE.info_line().startswith("INFO meshd_build=pure ")


def test_assemble_puts_the_extension_modules_beside_a_copy_of_the_source(tmp_path: Path) -> None:
    suffix = str(sysconfig.get_config_var("EXT_SUFFIX"))
    root, lib, dest = tmp_path / "root", tmp_path / "lib", tmp_path / "dest"
    (root / "pkg" / "sub" / "__pycache__").mkdir(parents=True)
    (root / "pkg" / "sub" / "mod.py").write_text("X = 1\n")
    (root / "pkg" / "sub" / "__pycache__" / "mod.cpython-311.pyc").write_bytes(b"")
    (lib / "pkg" / "sub").mkdir(parents=True)
    (lib / "pkg" / "sub" / ("mod" + suffix)).write_bytes(b"elf")
    (lib / ("abc__mypyc" + suffix)).write_bytes(b"elf")
    meshd_build._assemble(root, lib, dest, ("pkg",))
    assert (dest / "pkg" / "sub" / "mod.py").read_text() == "X = 1\n"
    assert (dest / "pkg" / "sub" / ("mod" + suffix)).read_bytes() == b"elf"
    assert (dest / ("abc__mypyc" + suffix)).exists()
    # The checkout's (here stale) .pyc isn't copied: the copy is byte-compiled, as installed.
    compiled = dest / "pkg" / "sub" / "__pycache__" / f"mod.{sys.implementation.cache_tag}.pyc"
    assert compiled.read_bytes().startswith(importlib.util.MAGIC_NUMBER)


def test_the_pure_cpu_line() -> None:
    assert meshd_build.cpu_line("l7", 40.0, 50.0) == (
        "INFO l7_cpu_us_per_req_pure=50.0 (mypyc 40.0, loaded at the same time; mypyc/pure 0.80)"
    )
    assert meshd_build.cpu_line("l4", 20.0, None) == (
        "INFO l4_cpu_us_per_req_pure=n/a (mypyc 20.0, loaded at the same time; mypyc/pure n/a)"
    )


def test_the_compile_cache_answers_a_known_source_and_keeps_the_entries_used_last(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    hatch_build = meshd_build.load_hatch_build(ROOT)
    compiled: list[Path] = []

    def compile_modules(root: Path, modules: list[str], work: Path) -> Path:
        compiled.append(work)
        (work / "lib" / "pkg").mkdir(parents=True)
        (work / "lib" / "pkg" / "mod.so").write_bytes(b"elf")
        return work / "lib"

    monkeypatch.setattr(hatch_build, "compile_modules", compile_modules)
    monkeypatch.setattr(hatch_build, "cache_key", lambda root, modules: "k" + modules[0])
    cache = tmp_path / "cache"
    for i in range(hatch_build.KEEP_ENTRIES):
        (cache / f"kold{i}").mkdir(parents=True)
        os.utime(cache / f"kold{i}", (i, i))
    work = tmp_path / "work"
    lib = hatch_build.cached_compile(ROOT, ["new"], str(cache), work, print)
    assert lib == work / "lib" and compiled == [work]
    assert (cache / "knew" / "pkg" / "mod.so").read_bytes() == b"elf"
    # The oldest entry made room; a second build of the same source compiles nothing.
    assert sorted(p.name for p in cache.iterdir()) == sorted(
        ["knew", *(f"kold{i}" for i in range(1, hatch_build.KEEP_ENTRIES))]
    )
    assert hatch_build.cached_compile(ROOT, ["new"], str(cache), work, print) == cache / "knew"
    assert compiled == [work]


def test_each_checkout_is_built_by_its_own_hatch_build(tmp_path: Path) -> None:
    # l7_instructions.py mypyc:A mypyc:B builds two trees in one process: B's build hook (its
    # flags, its link order) must not be A's, already imported.
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "hatch_build.py").write_text(f"WHICH = {name!r}\n")
    assert meshd_build.load_hatch_build(tmp_path / "a").WHICH == "a"
    assert meshd_build.load_hatch_build(tmp_path / "b").WHICH == "b"
    with pytest.raises(meshd_build.BuildError):
        meshd_build.load_hatch_build(tmp_path / "missing")
