"""``bench/l4_syscalls.py``'s reading of ``perf stat -x,`` output (its harness, that of
``bench/l7_instructions.py --l4``, is run in ``test_bench_l7_instructions.py``)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]
BENCH = ROOT / "bench"
sys.path.insert(0, str(BENCH))

import l4_syscalls  # noqa: E402

pytestmark = pytest.mark.timeout(60)


def test_parse_perf_counts_entered_syscalls_by_name_and_other_events() -> None:
    text = (
        "# started on Mon Dec  7 02:18:00 2026\n"
        "\n"
        "5878,,syscalls:sys_enter_recvfrom,3001234,100.00,,\n"
        "5877,,syscalls:sys_enter_sendto,3001234,100.00,,\n"
        "0,,syscalls:sys_enter_splice,3001234,100.00,,\n"
        "<not counted>,,syscalls:sys_enter_read,0,0.00,,\n"
        "12,,syscalls:sys_exit_recvfrom,3001234,100.00,,\n"
        "541,,syscalls:sys_enter_epoll_wait,3001234,100.00,,\n"
        "3,,page-faults,3001234,100.00,,\n"
        "0,,cpu-migrations,3001234,100.00,,\n"
        "<not counted>,,context-switches,0,0.00,,\n"
    )
    counts, others = l4_syscalls.parse_perf(text)
    assert counts == {"recvfrom": 5878, "sendto": 5877, "epoll_wait": 541}
    # The other events asked for (--events), zeros included.
    assert others == {
        "syscalls:sys_exit_recvfrom": 12,
        "page-faults": 3,
        "cpu-migrations": 0,
    }
