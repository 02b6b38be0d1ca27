"""``bench/l4_syscalls.py``'s reading of ``perf stat -x,`` output, and the ``--l4`` harness of
``bench/l7_instructions.py`` (run briefly, without valgrind)."""

from __future__ import annotations

import subprocess
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


def test_the_l4_instruction_harness_relays_through_serve_tcp() -> None:
    # The worker the tool runs under valgrind: 100 warm-up requests per connection, then 64;
    # it raises (exit status 1) on any response but the backend's.
    done = subprocess.run(
        [sys.executable, str(BENCH / "l7_instructions.py"), "--worker", "64", "--l4"],
        cwd=ROOT,
        env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=50,
        check=False,
    )
    assert done.returncode == 0, done.stderr
