"""write_atomic: whole file or nothing, the mode asked, no link followed, nothing left over."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from meshcore.atomicfile import write_atomic

pytestmark = pytest.mark.timeout(10)


def test_a_link_planted_at_the_temporary_name_is_replaced_not_followed(tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_bytes(b"untouched")
    target = tmp_path / "state.json"
    (tmp_path / f".state.json.{os.getpid()}.tmp").symlink_to(victim)
    write_atomic(target, b"new", 0o640, sync_dir=True)
    assert victim.read_bytes() == b"untouched"
    assert target.read_bytes() == b"new"
    assert target.stat().st_mode & 0o777 == 0o640
    assert sorted(p.name for p in tmp_path.iterdir()) == ["state.json", "victim"]


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path: Path) -> None:
    target = tmp_path / "state.json"
    target.write_bytes(b"old")
    with pytest.raises(TypeError):
        write_atomic(target, "not bytes", 0o600)  # type: ignore[arg-type]
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["state.json"]
