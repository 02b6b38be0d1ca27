"""The pure parts of ``bench/run memory``: its knobs, /proc parsing, medians and the report."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[3] / "bench"
sys.path.insert(0, str(BENCH))

import memory  # noqa: E402
from common import BenchError  # noqa: E402

pytestmark = pytest.mark.timeout(30)

STATUS = """Name:\tpython
VmPeak:\t  120000 kB
VmRSS:\t   48704 kB
RssAnon:\t   33348 kB
RssFile:\t   15356 kB
RssShmem:\t       0 kB
"""
ROLLUP = """55d0c0000000-7ffd00000000 ---p 00000000 00:00 0  [rollup]
Rss:               48704 kB
Pss:               39010 kB
"""


def test_params_default_and_clamped(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("BENCH_MEMORY_CONNECTIONS", raising=False)
    monkeypatch.delenv("BENCH_MEMORY_SETTLE", raising=False)
    monkeypatch.delenv("BENCH_MEMORY_CPU_S", raising=False)
    assert memory.MemoryParams.from_env() == memory.MemoryParams(
        connections=1000, settle_s=2, cpu_s=10
    )
    monkeypatch.setenv("BENCH_MEMORY_CONNECTIONS", "999999")
    monkeypatch.setenv("BENCH_MEMORY_SETTLE", "0")
    monkeypatch.setenv("BENCH_MEMORY_CPU_S", "0")
    assert memory.MemoryParams.from_env() == memory.MemoryParams(
        connections=20000, settle_s=0, cpu_s=1
    )
    monkeypatch.setenv("BENCH_MEMORY_CONNECTIONS", "many")
    with pytest.raises(BenchError, match="not an integer"):
        memory.MemoryParams.from_env()


def test_parse_memory_reads_status_and_rollup() -> None:
    assert memory.parse_memory(STATUS, ROLLUP) == {
        "VmRSS": 48704,
        "RssAnon": 33348,
        "RssFile": 15356,
        "Pss": 39010,
    }
    # No smaps_rollup (old kernel): Pss is left out, not guessed.
    assert "Pss" not in memory.parse_memory(STATUS)
    with pytest.raises(BenchError, match="VmRSS"):
        memory.parse_memory("Name:\tx\n")


def test_median_memory_per_field() -> None:
    samples = [{"VmRSS": 3, "Pss": 1}, {"VmRSS": 1, "Pss": 9}, {"VmRSS": 2}]
    # Pss is missing from one sample: left out rather than a median of two.
    assert memory.median_memory(samples) == {"VmRSS": 2}


def test_report_lines() -> None:
    idle = {"VmRSS": 40 * 1024}
    loaded = {"VmRSS": 40 * 1024 + 9000}
    assert memory.report_lines(idle, loaded, 1000) == [
        "RSS_MB meshd_idle=40.00",
        "RSS_MB meshd_1000_conns=48.79",
        "INFO kb_per_conn=9.0",
        "memory: idle rss<=40MB ok",
    ]
    assert memory.report_lines({"VmRSS": 41 * 1024}, loaded, 10)[-1].endswith("MISS")
    cpu = {"meshd_idle": 1.04, "meshd_conns": 4.5, "nginx_idle": 0.0}
    assert memory.report_lines(idle, loaded, 1000, cpu)[3] == (
        "INFO idle_cpu_ms_per_s meshd=1.04 meshd_1000_conns=4.50 nginx_backend=0.00"
    )


def test_cpu_ms_per_s_of_a_busy_and_an_idle_process() -> None:
    busy = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    idle = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        time.sleep(0.3)  # both started
        assert memory.cpu_ms_per_s([busy.pid], 1.0) > 50  # a spinning loop: most of a CPU
        assert memory.cpu_ms_per_s([idle.pid], 0.5) < 100
    finally:
        for proc in (busy, idle):
            proc.kill()
            proc.wait()


def test_read_memory_of_this_process() -> None:
    mine = memory.read_memory(os.getpid())
    assert mine["VmRSS"] > 0 and mine["RssAnon"] > 0
