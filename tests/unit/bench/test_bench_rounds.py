"""Paired rounds (``bench/rounds.py``): each ratio of ``bench/run dataplane`` and ``bench/run
mtls`` is the median of its rounds', and every round's value is printed."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[3] / "bench"
sys.path.insert(0, str(BENCH))

import dataplane  # noqa: E402
import mtls  # noqa: E402
import rounds  # noqa: E402
from common import WrkResult  # noqa: E402

pytestmark = pytest.mark.timeout(30)


def _wrk(rps: float, p50_ms: float = 1.0, p99_ms: float = 2.0) -> WrkResult:
    return WrkResult(int(rps * 10), rps, p50_ms / 1e3, p99_ms / 1e3, 0, 0)


def _measured(name: str, rps: float, cpu: float | None) -> dataplane.Measured:
    return dataplane.Measured(dataplane.BenchPath(name, 1, None), _wrk(rps), cpu)


def test_median_of_the_rounds_that_have_a_value() -> None:
    each: list[dict[str, float | None]] = [
        {"a": 3.0, "b": None},
        {"a": 1.0, "b": 4.0},
        {"a": 2.0, "b": None},
    ]
    assert rounds.median_figures(each) == {"a": 2.0, "b": 4.0}
    assert rounds.median_figures([{"a": None}]) == {"a": None}
    assert rounds.median_figures([]) == {}
    assert rounds.rounds_lines(each) == [
        "INFO rounds a=3.00,1.00,2.00 median 2.00",
        "INFO rounds b=n/a,4.00,n/a median 4.00",
    ]


def test_every_other_round_in_the_opposite_order() -> None:
    assert [rounds.paired_order("ab", i) for i in range(3)] == [["a", "b"], ["b", "a"], ["a", "b"]]


@pytest.mark.parametrize(("raw", "expected"), [("", 3), ("1", 1), ("0", 1), ("50", 9)])
def test_rounds_from_env(monkeypatch: pytest.MonkeyPatch, raw: str, expected: int) -> None:
    monkeypatch.setenv("BENCH_ROUNDS", raw)
    assert rounds.rounds_from_env() == expected


def _dataplane_round(meshd_l7_cpu: float, meshd_l4_cpu: float) -> list[dataplane.Measured]:
    return [
        _measured("nginx-l7", 50000, 14.0),
        _measured("meshd-l7", 25000, meshd_l7_cpu),
        _measured("haproxy-l4", 40000, 10.0),
        _measured("meshd-l4", 38000, meshd_l4_cpu),
    ]


def test_dataplane_report_prints_the_median_of_the_rounds(
    capsys: pytest.CaptureFixture[str],
) -> None:
    first = [
        _measured("direct", 60000, None),
        *_dataplane_round(35.0, 14.0),
        _measured("meshd-l7-w2", 30000, 30.0),
        _measured("trio-relay", 30000, 20.0),
    ]
    extra = [_dataplane_round(26.0, 12.0), _dataplane_round(28.0, 30.0)]
    dataplane._report(first, extra, 36 * 1024, (30 * 1024, 35 * 1024), lambda: 1.0)
    out = capsys.readouterr().out
    assert "INFO rounds l7_cpu_vs_nginx=2.50,1.86,2.00 median 2.00" in out
    assert "INFO rounds l4_cpu_vs_haproxy=1.40,1.20,3.00 median 1.40" in out
    assert "RATIO l7_cpu_vs_nginx=2.00\n" in out
    assert "RATIO l4_cpu_vs_haproxy=1.40\n" in out
    assert "meshd-l7#2" in out and "meshd-l7#3" in out  # the later rounds' rows
    assert "l7_cpu_vs_nginx<=2 ok" in out


def _mtls_round(full: list[dataplane.Measured], meshd_p99_ms: float, meshd_hs: int) -> mtls.Round:
    rate = {
        "nginx-mtls-pair": _wrk(990, p50_ms=0.5, p99_ms=2.0),
        "meshd-mtls-pair": _wrk(985, p50_ms=0.7, p99_ms=meshd_p99_ms),
    }
    hs = [
        mtls.Handshakes("meshd-inbound", 1.0, meshd_hs, 0, meshd_hs, 2000.0),
        mtls.Handshakes("nginx-back", 1.0, 300, 0, 300, 1500.0),
    ]
    return mtls.Round(full, rate, hs)


def test_mtls_report_prints_the_median_of_the_rounds(capsys: pytest.CaptureFixture[str]) -> None:
    pairs = [_measured("nginx-mtls-pair", 10000, 60.0), _measured("meshd-mtls-pair", 6000, 150.0)]
    first = [_measured("direct", 20000, None), *pairs, _measured("trio-tls-relay-pair", 9000, 90)]
    each = [
        _mtls_round(first, 3.6, 240),
        _mtls_round(pairs, 2.8, 270),
        _mtls_round(pairs, 12.0, 300),
    ]
    mtls._report(each, mtls.Settings.from_env())
    out = capsys.readouterr().out
    assert "INFO rounds mtls_p99_vs_nginx=1.80,1.40,6.00 median 1.80" in out
    assert "RATIO mtls_p99_vs_nginx=1.80\n" in out
    assert "RATIO handshakes_vs_nginx=0.90\n" in out
    assert "MTLS_PAIR_P99_MS rps=1000 meshd=3.60 nginx=2.00" in out
    assert "MTLS_HANDSHAKES_PER_S value=270" in out
    assert "RATIO mtls_pair_rps_vs_nginx_pair=0.60\n" in out
    assert "meshd-inbound#3" in out
