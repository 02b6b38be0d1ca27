"""The ratio lines and target verdicts of ``bench/run dataplane`` and ``bench/run mtls``,
the collapsed-stack reading of ``bench/profile_l7.py`` and ``bench/profile_mtls.py``'s report."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[3] / "bench"
sys.path.insert(0, str(BENCH))

import dataplane  # noqa: E402
import mtls  # noqa: E402
import profile_l7  # noqa: E402
import profile_mtls  # noqa: E402
from common import Target, WrkResult, print_verdicts, ratio, ratio_line  # noqa: E402

pytestmark = pytest.mark.timeout(30)


def _wrk(rps: float, p50_ms: float = 1.0, p99_ms: float = 2.0) -> WrkResult:
    return WrkResult(
        requests=int(rps * 10),
        rps=rps,
        p50_s=p50_ms / 1e3,
        p99_s=p99_ms / 1e3,
        non_2xx=0,
        socket_errors=0,
    )


def _measured(name: str, rps: float, cpu: float | None) -> dataplane.Measured:
    return dataplane.Measured(dataplane.BenchPath(name, 1, None), _wrk(rps), cpu)


def test_ratio_and_its_line() -> None:
    assert ratio(30.0, 15.0) == 2.0
    assert ratio(None, 15.0) is None
    assert ratio(30.0, None) is None
    assert ratio(30.0, 0.0) is None
    assert ratio_line("l7_cpu_vs_nginx", 51.8 / 15.1) == "RATIO l7_cpu_vs_nginx=3.43"
    assert ratio_line("l7_cpu_vs_nginx", None) == "RATIO l7_cpu_vs_nginx=n/a"


def test_target_verdicts(capsys: pytest.CaptureFixture[str]) -> None:
    cpu = Target("l7_cpu_vs_nginx", 2.0, at_most=True)
    rps = Target("l7_rps_vs_nginx", 0.8, at_most=False)
    assert cpu.met(2.0) and not cpu.met(2.01) and not cpu.met(None)
    assert rps.met(0.8) and not rps.met(0.79)
    assert cpu.verdict(1.5) == "l7_cpu_vs_nginx<=2 ok"
    assert rps.verdict(0.5) == "l7_rps_vs_nginx>=0.8 MISS"
    print_verdicts([(cpu, 3.4), (rps, 0.9)])
    assert capsys.readouterr().out == "targets: l7_cpu_vs_nginx<=2 MISS, l7_rps_vs_nginx>=0.8 ok\n"


def test_dataplane_ratios_compare_meshd_with_the_reference_proxies() -> None:
    results = [
        _measured("direct", 60000, None),
        _measured("nginx-l7", 58280, 15.1),
        _measured("meshd-l7", 16554, 51.8),
        _measured("haproxy-l4", 35499, 12.6),
        _measured("meshd-l4", 21139, 26.2),
    ]
    figures = dataplane.ratios(results)
    assert list(figures) == [
        "l7_cpu_vs_nginx",
        "l4_cpu_vs_haproxy",
        "l7_rps_vs_nginx",
        "l4_rps_vs_haproxy",
    ]
    assert [ratio_line(n, v) for n, v in figures.items()] == [
        "RATIO l7_cpu_vs_nginx=3.43",
        "RATIO l4_cpu_vs_haproxy=2.08",
        "RATIO l7_rps_vs_nginx=0.28",
        "RATIO l4_rps_vs_haproxy=0.60",
    ]
    # Every ratio has a target, and the CPU targets are the ones named there.
    assert {t.name for t in dataplane.TARGETS} == set(figures)
    limits = {t.name: (t.limit, t.at_most) for t in dataplane.TARGETS}
    assert limits["l7_cpu_vs_nginx"] == (2.0, True)
    assert limits["l4_cpu_vs_haproxy"] == (1.5, True)


def test_dataplane_cpu_ratio_missing_without_cpu_figures() -> None:
    results = [
        _measured("nginx-l7", 100, 10.0),
        _measured("meshd-l7", 100, None),
        _measured("haproxy-l4", 100, 10.0),
        _measured("meshd-l4", 100, 5.0),
    ]
    figures = dataplane.ratios(results)
    assert figures["l7_cpu_vs_nginx"] is None
    assert figures["l4_cpu_vs_haproxy"] == 0.5


def _handshakes(name: str, completed: int, wall_s: float = 2.0) -> mtls.Handshakes:
    return mtls.Handshakes(name, wall_s, completed, 0, completed, 100.0)


def test_mtls_ratios_against_the_nginx_pair() -> None:
    full = [
        _measured("nginx-mtls-pair", 17425, 41.3),
        _measured("meshd-mtls-pair", 5061, 170.4),
    ]
    rate = {
        "nginx-mtls-pair": _wrk(990, p50_ms=0.30, p99_ms=0.60),
        "meshd-mtls-pair": _wrk(985, p50_ms=0.54, p99_ms=1.29),
    }
    hs = [_handshakes("meshd-inbound", 1680), _handshakes("nginx-back", 2000)]
    figures = mtls.ratios(full, rate, hs)
    assert [ratio_line(n, v) for n, v in figures.items()] == [
        "RATIO mtls_pair_cpu_vs_nginx=4.13",
        "RATIO handshakes_vs_nginx=0.84",
        "RATIO mtls_p99_vs_nginx=2.15",
        "RATIO mtls_p50_vs_nginx=1.80",
    ]
    assert {t.name for t in mtls.TARGETS} == set(figures)
    verdicts = [t.verdict(figures[t.name]) for t in mtls.TARGETS]
    assert verdicts == [
        "mtls_pair_cpu_vs_nginx<=2.5 MISS",
        "handshakes_vs_nginx>=1 MISS",
        "mtls_p99_vs_nginx<=1.5 MISS",
        "mtls_p50_vs_nginx<=1.5 MISS",
    ]


def test_mtls_ratios_missing_figures() -> None:
    figures = mtls.ratios([], {}, [_handshakes("meshd-inbound", 10), _handshakes("nginx-back", 0)])
    assert figures == dict.fromkeys(
        ["mtls_pair_cpu_vs_nginx", "handshakes_vs_nginx", "mtls_p99_vs_nginx", "mtls_p50_vs_nginx"]
    )


def test_profile_reads_collapsed_stacks() -> None:
    text = (
        "main (/x/meshd/cli.py:10);serve (/x/meshd/http/connection.py:5);"
        "send_all (/x/meshd/net/stream.py:138) 6\n"
        "main (/x/meshd/cli.py:10);serve (/x/meshd/http/connection.py:7) 3\n"
        "recurse (/x/a.py:1);recurse (/x/a.py:2) 1\n"
        "garbage line\n"
    )
    own, total, samples = profile_l7.parse_collapsed(text)
    assert samples == 10
    assert own["send_all (meshd/net/stream.py)"] == 6
    assert own["serve (meshd/http/connection.py)"] == 3
    assert total["main (meshd/cli.py)"] == 9
    assert total["recurse (/x/a.py)"] == 1  # once per stack, however deep
    assert profile_l7.format_top(own, samples, 1) == ["  60.0%  send_all (meshd/net/stream.py)"]


def test_profile_paired_ratio_is_the_median_of_the_rounds() -> None:
    # Round 2 ran under a load that doubled both figures: its ratio is still 0.8.
    assert profile_l7.paired_ratio([50.0, 100.0, 60.0], [40.0, 80.0, 57.0]) == 0.8
    assert math.isnan(profile_l7.paired_ratio([], []))


def test_profile_mtls_reports_medians_and_paired_ratios() -> None:
    def server(name: str, **figures: list[float]) -> profile_mtls.Server:
        return profile_mtls.Server(name, 1, list, int, figures=dict(figures))

    servers = [
        server("0:base", handshakes=[2000.0, 2400.0, 2100.0], pair=[170.0, 200.0]),
        server("1:.", handshakes=[1800.0, 2100.0, 1900.0], pair=[160.0, 190.0]),
        server("nginx-back", handshakes=[1400.0, 1500.0, 1300.0]),
    ]
    assert profile_mtls.report(servers) == [
        "handshakes (cpu_us/hs, median): 0:base=2100.0  1:.=1900.0  nginx-back=1400.0",
        "PAIRED_RATIO handshakes 1:. / 0:base: 0.900",
        "PAIRED_RATIO handshakes nginx-back / 0:base: 0.625",
        "pair (cpu_us/req, median): 0:base=185.0  1:.=175.0",
        "PAIRED_RATIO pair 1:. / 0:base: 0.946",
    ]
