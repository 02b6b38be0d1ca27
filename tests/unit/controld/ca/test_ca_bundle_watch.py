"""The bundle index and its long-poll (``CertificateAuthority.wait_bundle``), ``?wait=``."""

from __future__ import annotations

from pathlib import Path

import pytest
import trio

from controld.api.identity import DEFAULT_BUNDLE_WAIT_S, parse_wait
from controld.ca import CertificateAuthority
from controld.ca.rotation import MAX_BUNDLE_WAIT_S


async def test_other_index_answers_at_once(tmp_path: Path, autojump_clock: trio.abc.Clock) -> None:
    ca = CertificateAuthority.load_or_create(tmp_path / "ca")
    start = trio.current_time()
    assert await ca.wait_bundle(ca.index - 1, 100.0) == ca.index
    assert await ca.wait_bundle(0, 100.0) == ca.index
    assert trio.current_time() == start


async def test_same_index_waits_for_a_step_or_the_wait(
    tmp_path: Path, autojump_clock: trio.abc.Clock
) -> None:
    ca = CertificateAuthority.load_or_create(tmp_path / "ca")
    first = ca.index
    # No change: the same index after the wait (capped at 300 s).
    start = trio.current_time()
    assert await ca.wait_bundle(first, 1000.0) == first
    assert trio.current_time() - start == pytest.approx(MAX_BUNDLE_WAIT_S)

    seen: list[int] = []

    async def poll(after: int) -> None:
        seen.append(await ca.wait_bundle(after, 100.0))

    for step in (ca.stage_new_root, ca.activate, ca.retire_old):
        before = ca.index
        async with trio.open_nursery() as nursery:
            nursery.start_soon(poll, before)
            nursery.start_soon(poll, before)
            await trio.sleep(10)
            assert seen == []
            step()
        assert seen == [ca.index, ca.index] and ca.index > before
        seen.clear()


async def test_index_moves_forward_across_a_restart(tmp_path: Path) -> None:
    ca = CertificateAuthority.load_or_create(tmp_path / "ca")
    ca.stage_new_root()
    again = CertificateAuthority.load_or_create(tmp_path / "ca")
    assert again.index != 0
    # The restarted index isn't one a poller of the old process could hold for this state
    # by accident: both derive from the clock in ms, and each step moves at least by one.
    assert again.index >= ca.index - 1


def test_parse_wait() -> None:
    assert parse_wait(None) == DEFAULT_BUNDLE_WAIT_S
    assert parse_wait("") == DEFAULT_BUNDLE_WAIT_S
    assert parse_wait("10") == 10.0
    assert parse_wait("10s") == 10.0
    assert parse_wait("1.5s") == 1.5
    assert parse_wait("500ms") == 0.5
    assert parse_wait("2m") == 120.0
    assert parse_wait("10m") == MAX_BUNDLE_WAIT_S
    for bad in ("x", "-1", "nan", "inf", "1h"):
        with pytest.raises(ValueError, match="not a duration"):
            parse_wait(bad)
