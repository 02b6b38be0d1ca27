"""``bench/run dataplane``'s telemetry overhead: the rounds' order, the figures, the sidecars'
configuration and the stand-in controld's answers."""

from __future__ import annotations

import http.client
import itertools
import json
import sys
from collections import Counter
from pathlib import Path

import pytest

from meshcore.model import Bootstrap, Snapshot
from meshcore.model.loading import load_model

BENCH = Path(__file__).resolve().parents[3] / "bench"
sys.path.insert(0, str(BENCH))

import telemetry_overhead as to  # noqa: E402
from common import Context, WrkParams, WrkResult  # noqa: E402
from dataplane import BenchPath, Measured  # noqa: E402

pytestmark = pytest.mark.timeout(30)


def test_six_rounds_put_each_sidecar_at_each_place_after_each_other() -> None:
    places: Counter[tuple[str, int]] = Counter()
    followers: Counter[tuple[str, str]] = Counter()
    for number in range(6):
        order = to.round_order(["off", "telemetry", "tap"], number)
        assert sorted(order) == ["off", "tap", "telemetry"]
        places.update((name, i) for i, name in enumerate(order))
        followers.update(itertools.pairwise(order))
    assert set(places.values()) == {2} and len(places) == 9
    assert set(followers.values()) == {2} and len(followers) == 6


def _measured(name: str, rps: float, cpu: float) -> Measured:
    wrk = WrkResult(int(rps * 4), rps, 0.001, 0.002, 0, 0)
    return Measured(BenchPath(name, 1, None), wrk, cpu)


def test_figures_are_medians_of_each_rounds_ratios(capsys: pytest.CaptureFixture[str]) -> None:
    # Round 2 is a burst of other load on the off sidecar's run: its ratios are outliers.
    table = [
        {to.OFF: (1000, 50.0), to.TELEMETRY: (990, 51.0), to.TAP: (970, 52.0)},
        {to.OFF: (1200, 40.0), to.TELEMETRY: (1188, 40.0), to.TAP: (1152, 42.0)},
        {to.OFF: (500, 80.0), to.TELEMETRY: (1000, 40.0), to.TAP: (1000, 40.0)},
    ]
    rounds = [{n: _measured(n, *v) for n, v in r.items()} for r in table]
    fake = to.FakeControld({}, set())
    try:
        side = to.Sidecars(fake, {}, [])
        figures = to.report(to.Rounds(rounds, harness_cpu_s=0.02, wall_s=10.0), side)
    finally:
        fake.server.server_close()
    assert figures.rps_vs_off == pytest.approx({to.TELEMETRY: 0.99, to.TAP: 0.97})
    assert figures.cpu_vs_off == pytest.approx({to.TELEMETRY: 1.0, to.TAP: 1.04})
    assert figures.ratio == pytest.approx(0.97)
    out = capsys.readouterr().out
    assert "INFO meshd-l7-tap rps/off per round: 0.97 0.96 2.00;" in out
    assert "INFO stand-in controld (harness process) cpu during the rounds: 2.0 ms/s" in out
    assert "INFO telemetry_rps_vs_off=0.990 tap_rps_vs_off=0.970" in out


def test_sidecar_configuration(tmp_path: Path) -> None:
    ctx = Context(BENCH.parent, sys.executable, WrkParams(), tmp_path)
    doc = to._snapshot(ctx, backend=20001, l7_port=20002)
    (tmp_path / "snapshot.json").write_text(json.dumps(doc))
    snap = load_model(Snapshot, tmp_path / "snapshot.json")
    (listener,) = snap.listeners
    assert (listener.direction, str(listener.address)) == ("outbound", "127.0.0.1:20002")
    workdir = tmp_path / "side"
    workdir.mkdir()
    boot = load_model(Bootstrap, to._bootstrap(workdir, to.OFF, 20001, 20003, 20004, False))
    assert boot.node_id == to.OFF and not boot.telemetry.enabled
    assert boot.snapshot.controld is not None
    assert str(boot.snapshot.controld.url).startswith("http://127.0.0.1:20004")


def _call(port: int, method: str, path: str, body: object = None) -> tuple[int, object]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        data = None if body is None else json.dumps(body).encode()
        conn.request(method, path, body=data, headers={"Content-Type": "application/json"})
        resp = conn.getresponse()
        raw = resp.read()
        return resp.status, json.loads(raw) if raw else None
    finally:
        conn.close()


def test_stand_in_controld_answers_and_counts() -> None:
    with to.FakeControld({to.TAP: {"version": 1}}, {to.TAP}).serving() as fake:
        assert _call(fake.port, "GET", f"/v1/snapshots/{to.TAP}?wait=1") == (
            200,
            {"version": 1, "hash": "bench-snapshot", "snapshot": {"version": 1}},
        )
        assert _call(fake.port, "GET", "/v1/snapshots/nobody")[0] == 404
        status, answer = _call(fake.port, "POST", f"/v1/telemetry/{to.TAP}", {"tap_events": [{}]})
        assert status == 200 and isinstance(answer, dict)
        (tap,) = answer["taps"]
        assert tap["filter"] == {} and tap["max_events_per_s"] == to.TAP_EVENTS_PER_S
        assert _call(fake.port, "POST", f"/v1/telemetry/{to.OFF}", {}) == (200, {"taps": []})
        assert fake.reports == {to.TAP: 1, to.OFF: 1} and fake.events == {to.TAP: 1, to.OFF: 0}
