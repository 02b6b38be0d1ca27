"""``meshctl audit [--since 1h|TIME] [--limit N] [--json]``: the control plane's audit log.

Every change made through controld's API (policy apply and delete, tokens, revocations, CA
rotation, sidecar registrations, ...) with who made it (which credential), what it was (method,
route, resource), when, from where (client address) and how it ended, newest first.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from meshcore.api.audit import AuditEntry
from tui import render
from tui.cli.common import EXIT_OK, Options
from tui.cli.ops import parse_duration

__all__ = ["AUDIT_HEADERS", "add_audit_parser", "audit_rows", "cmd_audit", "since_time"]

AUDIT_HEADERS = ("TIME", "ACTOR", "ACTION", "RESOURCE", "SOURCE", "STATUS", "OUTCOME")


def since_time(text: str, now: float | None = None) -> str:
    """``--since``: a duration back from now (``90s``, ``30m``, ``1h``, ``2d``) or an RFC 3339
    time, as the RFC 3339 time the API takes (``ArgumentTypeError`` otherwise)."""
    value = text.strip()
    try:
        seconds = parse_duration(value)
    except argparse.ArgumentTypeError:
        pass
    else:
        when = (time.time() if now is None else now) - seconds
        return (
            datetime.fromtimestamp(when, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
        )
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        parsed = None
    if parsed is None or parsed.tzinfo is None:
        raise argparse.ArgumentTypeError(
            f"invalid --since {text!r} (a duration such as 30m, 1h, 2d, or an RFC 3339 time "
            "such as 2026-12-06T05:00:00Z)"
        )
    return value


def _resource(entry: AuditEntry) -> str:
    if not entry.resource:
        for name in ("spiffe_id", "service"):
            if isinstance(entry.details.get(name), str):
                return f"{name}={entry.details[name]}"
    return entry.resource or "-"


def audit_rows(entries: Sequence[AuditEntry]) -> list[list[str]]:
    """Rows of the ``audit`` table, in the order given (newest first)."""
    rows = []
    for entry in entries:
        outcome = entry.outcome
        if entry.revision is not None:
            outcome += f" (revision {entry.revision})"
        rows.append(
            [
                entry.time,
                entry.actor,
                f"{entry.method} {entry.route}",
                _resource(entry),
                entry.source or "-",
                str(entry.status),
                outcome,
            ]
        )
    return rows


def cmd_audit(opts: Options, args: argparse.Namespace) -> int:
    """``audit``: the newest entries of the audit log as a table (or JSON/YAML)."""
    with opts.client() as client:
        entries = client.audit(since=args.since, limit=args.limit).entries
    output = "json" if args.json else opts.output
    if output == "json":
        print(render.to_json(entries))
    elif output == "yaml":
        print(render.to_yaml(entries), end="")
    elif entries:
        print(render.table(AUDIT_HEADERS, audit_rows(entries)))
    else:
        print("no audit entries")
    return EXIT_OK


def _limit(text: str) -> int:
    if not (text.isascii() and text.isdigit()) or not 1 <= int(text) <= 1000:
        raise argparse.ArgumentTypeError(f"--limit takes 1 to 1000, got {text!r}")
    return int(text)


def add_audit_parser(
    sub: argparse._SubParsersAction[argparse.ArgumentParser],
    add_global_options: Any,
) -> None:
    """Register ``audit`` under ``sub``."""
    p = sub.add_parser(
        "audit",
        help="the audit log of control-plane changes (who, what, when, from where)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_global_options(p, top=False)
    p.add_argument(
        "--since",
        type=since_time,
        metavar="DURATION|TIME",
        help="only entries since then: 30m, 1h, 2d back from now, or an RFC 3339 time",
    )
    p.add_argument(
        "--limit", type=_limit, default=50, metavar="N", help="newest N entries (default 50)"
    )
    p.add_argument("--json", action="store_true", help="print the entries as JSON (= -o json)")
    p.set_defaults(run=cmd_audit)
