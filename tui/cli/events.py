"""``meshctl events [--since-seq N] [--follow] [-o json|yaml]``: controld's control-plane events.

Sidecars registering, connecting and going quiet, snapshots pushed, ACKed and NACKed, features
a sidecar can't enforce, drains, resource changes, certificates issued and renewed, CA rotation
steps; oldest first, as numbered by controld (``GET /v1/events``). ``--since-seq N`` starts
after event N; ``--follow`` keeps printing new events as they happen (long-polls; Ctrl-C
stops), one JSON object per line with ``-o json``. controld keeps the events in memory: a
restart starts them again at 1.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from typing import Any, Final

from meshcore.api.events import EVENTS_PATH, MAX_EVENTS_LIMIT, ControlEvent, ControlEvents
from tui import render
from tui.cli.common import EXIT_OK, Options
from tui.client import ControldClient

__all__ = ["EVENT_HEADERS", "add_events_parser", "cmd_events", "event_rows", "read_events"]

EVENT_HEADERS = ("SEQ", "TIME", "SEVERITY", "EVENT", "SUBJECT", "DETAIL")
#: Wait of one ``--follow`` long-poll (under the client's 10 s timeout).
FOLLOW_WAIT_S: Final = 5.0


def event_rows(events: Sequence[ControlEvent]) -> list[list[str]]:
    """Rows of the ``events`` table, in the order given."""
    return [[str(e.seq), e.time, e.severity, e.kind, e.subject, e.detail] for e in events]


def read_events(client: ControldClient, after: int, wait_s: float) -> ControlEvents:
    """One call of ``GET /v1/events`` (at most :data:`MAX_EVENTS_LIMIT` events)."""
    params: dict[str, str | int] = {
        "after": after,
        "wait_s": str(wait_s),
        "limit": MAX_EVENTS_LIMIT,
    }
    return ControlEvents.model_validate(client.request("GET", EVENTS_PATH, params=params))


def _notes(answer: ControlEvents, after: int) -> None:
    if answer.reset:
        print("meshctl: controld restarted: its events start again at 1", file=sys.stderr)
    elif answer.missed and after:
        print(
            f"meshctl: {answer.missed} events were dropped before they were read", file=sys.stderr
        )


def _held(client: ControldClient, after: int) -> tuple[list[ControlEvent], int]:
    """Every event held after ``after`` (page by page) and the ``after`` of what follows."""
    events: list[ControlEvent] = []
    while True:
        answer = read_events(client, after, 0.0)
        _notes(answer, after)
        events.extend(answer.events)
        after = answer.next
        if not answer.events:  # (not `< limit`: a controld may cap pages lower)
            return events, after


def _line(output: str) -> Callable[[ControlEvent], str]:
    if output == "json":
        return lambda e: json.dumps(e.model_dump(mode="json"), ensure_ascii=False)
    return lambda e: "   ".join(event_rows([e])[0])


def cmd_events(opts: Options, args: argparse.Namespace) -> int:
    """``events``: the held events as a table (or JSON/YAML); with ``--follow``, then the new
    ones as they come, one line each."""
    output = "json" if args.json else opts.output
    with opts.client() as client:
        events, after = _held(client, args.since_seq)
        if not args.follow:
            docs = [e.model_dump(mode="json") for e in events]
            if output == "json":
                print(render.to_json(docs))
            elif output == "yaml":
                print(render.to_yaml(docs), end="")
            elif events:
                print(render.table(EVENT_HEADERS, event_rows(events)))
            else:
                print("no events")
            return EXIT_OK
        line = _line(output)
        try:
            for event in events:
                print(line(event), flush=True)
            while True:
                answer = read_events(client, after, FOLLOW_WAIT_S)
                _notes(answer, after)
                for event in answer.events:
                    print(line(event), flush=True)
                after = answer.next
        except KeyboardInterrupt:
            return EXIT_OK


def _seq(text: str) -> int:
    if not (text.isascii() and text.isdigit()):
        raise argparse.ArgumentTypeError(f"--since-seq takes a sequence number >= 0, got {text!r}")
    return int(text)


def add_events_parser(
    sub: argparse._SubParsersAction[argparse.ArgumentParser],
    add_global_options: Any,
) -> None:
    """Register ``events`` under ``sub``."""
    p = sub.add_parser(
        "events",
        help="control-plane events: sidecars, snapshots, ACK/NACK, resources, certificates",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_global_options(p, top=False)
    p.add_argument(
        "--since-seq",
        type=_seq,
        default=0,
        metavar="N",
        help="only events after event number N (default 0: every event controld holds)",
    )
    p.add_argument(
        "-f", "--follow", action="store_true", help="keep printing new events (Ctrl-C stops)"
    )
    p.add_argument("--json", action="store_true", help="print the events as JSON (= -o json)")
    p.set_defaults(run=cmd_events)
