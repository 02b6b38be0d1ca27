"""``meshctl events``: paging the held events, ``--follow``, output formats (mock transport)."""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass

import httpx
import pytest

from tui.cli import build_parser
from tui.cli.common import Options
from tui.cli.events import cmd_events, event_rows
from tui.client import ControldClient

pytestmark = pytest.mark.timeout(30)


def event(seq: int, kind: str = "sidecar.connected") -> dict[str, object]:
    return {
        "seq": seq,
        "time": f"2026-12-06T11:00:0{seq}.000Z",
        "kind": kind,
        "subject": f"web-{seq}",
        "detail": "",
        "severity": "info",
    }


class Controld:
    """Answers ``GET /v1/events`` from a list; ``stop_after`` calls end with Ctrl-C."""

    def __init__(self, count: int, *, page: int = 1000, stop_after: int = 100) -> None:
        self.events = [event(i + 1) for i in range(count)]
        self.page = page
        self.calls: list[dict[str, str]] = []
        self.stop_after = stop_after

    def __call__(self, request: httpx.Request) -> httpx.Response:
        assert request.url.path == "/v1/events"
        params = dict(request.url.params)
        self.calls.append(params)
        if len(self.calls) > self.stop_after:
            raise KeyboardInterrupt
        after = int(params["after"])
        if float(params["wait_s"]) > 0 and len(self.calls) == self.stop_after:
            self.events.append(event(len(self.events) + 1, "snapshot.nacked"))
        fresh = self.events[after : after + self.page]
        last = fresh[-1]["seq"] if fresh else after
        return httpx.Response(200, json={"events": fresh, "next": last, "missed": 0})


@dataclass(frozen=True)
class MockOptions(Options):
    controld: Controld | None = None

    def client(self) -> ControldClient:
        assert self.controld is not None
        return ControldClient(self.server, None, transport=httpx.MockTransport(self.controld))


def run(controld: Controld, *argv: str, output: str = "table") -> None:
    args = build_parser().parse_args(["events", *argv])
    assert isinstance(args, argparse.Namespace)
    output = getattr(args, "output", None) or output
    opts = MockOptions(server="http://controld", token=None, output=output, controld=controld)
    assert cmd_events(opts, args) == 0


def test_prints_every_held_event_as_a_table(capsys: pytest.CaptureFixture[str]) -> None:
    controld = Controld(3, page=2)
    run(controld, "--since-seq", "0")
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["SEQ", "TIME", "SEVERITY", "EVENT", "SUBJECT", "DETAIL"]
    assert [line.split()[0] for line in lines[1:]] == ["1", "2", "3"]
    assert [c["after"] for c in controld.calls] == ["0", "2", "3"]  # pages until empty


def test_since_seq_and_json(capsys: pytest.CaptureFixture[str]) -> None:
    run(Controld(3), "--since-seq", "2", output="json")
    assert [e["seq"] for e in json.loads(capsys.readouterr().out)] == [3]
    run(Controld(0), "--json")
    assert json.loads(capsys.readouterr().out) == []


def test_follow_prints_new_events_as_json_lines(capsys: pytest.CaptureFixture[str]) -> None:
    controld = Controld(1, stop_after=3)
    run(controld, "--follow", "-o", "json")
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [(e["seq"], e["kind"]) for e in lines] == [
        (1, "sidecar.connected"),
        (2, "snapshot.nacked"),
    ]
    assert [c["wait_s"] for c in controld.calls] == ["0.0", "0.0", "5.0", "5.0"]


def test_bad_since_seq_is_a_usage_error() -> None:
    with pytest.raises(SystemExit):
        build_parser().parse_args(["events", "--since-seq", "-1"])


def test_rows() -> None:
    from meshcore.api.events import ControlEvent

    e = ControlEvent.model_validate(event(4, "cert.issued"))
    assert event_rows([e]) == [
        ["4", "2026-12-06T11:00:04.000Z", "info", "cert.issued", "web-4", ""]
    ]
