"""How ``hatch_build`` links the compiled modules: the functions of ``packaging/mypyc-hot.txt``
first and together, a stale list still linking (issue 15). Real gcc and GNU gold on a small
library; the compile of meshd itself is exercised by ``packaging/build`` and its tests."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

import hatch_build  # noqa: E402

pytestmark = pytest.mark.timeout(60)

SOURCE = (
    "".join(
        f"__attribute__((noinline)) int {name}(int x) {{ return x * {i + 3} + {i}; }}\n"
        for i, name in enumerate(("first", "cold_a", "hot_b", "cold_c", "hot_d", "last"))
    )
    + "int PyInit_small(void) { return first(1) + last(2); }\n"
)


def _link(tmp_path: Path, functions: list[str]) -> dict[str, int]:
    """The small library linked as hatch_build links the group library: its functions'
    addresses."""
    if shutil.which("gcc") is None:
        pytest.skip("no gcc")
    (tmp_path / "small.c").write_text(SOURCE)
    obj, lib = str(tmp_path / "small.o"), str(tmp_path / "small.so")
    compile_ = ["gcc", "-O2", "-fPIC", *hatch_build.COMPILE_ARGS, "-c", "-o", obj]
    subprocess.run([*compile_, str(tmp_path / "small.c")], check=True, timeout=30)
    link = ["gcc", "-shared", "-o", lib, obj, *hatch_build.link_args(tmp_path, functions)]
    done = subprocess.run(link, capture_output=True, text=True, timeout=30, check=False)
    assert done.returncode == 0 and not done.stderr, done.stderr
    symbols = subprocess.run(
        ["nm", "--defined-only", "--format=posix", lib],
        capture_output=True, text=True, timeout=30, check=True,
    ).stdout.splitlines()  # fmt: skip
    exported = subprocess.run(
        ["nm", "-D", "--defined-only", "--format=posix", lib],
        capture_output=True, text=True, timeout=30, check=True,
    ).stdout.split()  # fmt: skip
    assert exported[0] == "PyInit_small" and "hot_b" not in exported  # hatch_build.EXPORTS
    return {line.split()[0]: int(line.split()[2], 16) for line in symbols if " t " in line.lower()}


def _together_in_order(addresses: dict[str, int], listed: list[str]) -> bool:
    placed = sorted(addresses, key=addresses.__getitem__)
    start = placed.index(listed[0])
    return placed[start : start + len(listed)] == listed


def test_the_listed_functions_are_linked_together_in_the_listed_order(tmp_path: Path) -> None:
    addresses = _link(tmp_path, ["hot_d", "hot_b", "PyInit_small"])
    assert _together_in_order(addresses, ["hot_d", "hot_b", "PyInit_small"]), addresses


def test_a_stale_list_still_links(tmp_path: Path) -> None:
    # Renamed code: the names that no longer exist are skipped, the rest still placed.
    addresses = _link(tmp_path, ["renamed_away", "hot_d", "gone.cold", "hot_b", "gone.part.0"])
    assert _together_in_order(addresses, ["hot_d", "hot_b"]), addresses
    assert set(addresses) >= {"first", "cold_a", "cold_c", "last"}


def test_the_list_names_functions_and_their_cold_parts() -> None:
    text = "# a comment\n\nCPyDef_x\n0x0000000000033500\nCPyDef_y.cold  # split off\nbad name\n"
    assert hatch_build.hot_functions(text) == ["CPyDef_x", "CPyDef_y.cold"]
    assert hatch_build.section_order(["CPyDef_x", "f.constprop.0", "CPyDef_y.cold"]) == (
        ".text.CPyDef_x\n.text.f.constprop.0\n.text.unlikely.CPyDef_y\n"
    )


def test_the_checked_in_list_is_the_one_the_build_reads() -> None:
    names = hatch_build.hot_functions((ROOT / hatch_build.HOT_LIST).read_text())
    assert names == sorted(set(names)) and len(names) > 500
    # What every idle sidecar runs: the group's init and the HTTP listener's connection loop.
    assert any(name.startswith("PyInit_") and name.endswith("__mypyc") for name in names)
    assert "CPyDef_connection____loop_HttpConnection_gen_____mypyc_generator_helper__" in names
