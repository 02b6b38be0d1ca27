"""``meshctl ca status`` and ``meshctl ca rotate --step stage|activate|retire [--force]``.

A root rotation is three steps, each run when the previous one has reached every sidecar:
``stage`` (a new root joins the trust bundle), ``activate`` (the new root signs; sidecars
renew within seconds) and ``retire`` (the old root leaves the bundle; refused while leaves
it signed are outstanding, unless ``--force``). ``status`` shows where the rotation is.
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from typing import Any

from tui import render
from tui.cli.common import EXIT_OK, Options

__all__ = ["NEXT_STEP", "STEPS", "ca_status_lines", "cmd_ca_rotate", "cmd_ca_status"]

STEPS = ("stage", "activate", "retire")
#: The step that follows each phase.
NEXT_STEP = {"stable": "stage", "staged": "activate", "active": "retire"}
ROOT_HEADERS = ("ROOT", "ROLE", "NOT AFTER", "OUTSTANDING", "LAST EXPIRES")


def _role(root: Mapping[str, Any], index: int, count: int) -> str:
    if root.get("active"):
        return "signer"
    return "old" if index == 0 and count > 1 else "staged"


def _outstanding(root: Mapping[str, Any]) -> tuple[str, str]:
    out = root.get("outstanding")
    if not isinstance(out, Mapping):
        return "-", "-"
    count = str(out.get("count", "-"))
    if out.get("untracked_until"):
        count += f" (+ untracked until {out['untracked_until']})"
    return count, str(out.get("last_expiry") or "-")


def ca_status_lines(status: Mapping[str, Any]) -> list[str]:
    """The table form of ``GET /v1/ca``."""
    phase = str(status.get("phase", "?"))
    lines = [
        f"phase {phase}, signer {status.get('active', '?')}, bundle index "
        f"{status.get('index', '?')}, trust domain {status.get('trust_domain', '?')}"
    ]
    roots = [r for r in status.get("roots", ()) if isinstance(r, Mapping)]
    rows = []
    for i, root in enumerate(roots):
        count, last = _outstanding(root)
        role = _role(root, i, len(roots))
        rows.append([str(root.get("id", "?")), role, str(root.get("not_after", "-")), count, last])
    lines.append("")
    lines.extend(render.table(ROOT_HEADERS, rows).rstrip("\n").splitlines())
    tls = status.get("tls")
    lines.append("")
    if isinstance(tls, Mapping):
        lines.append(
            f"TLS listener {tls.get('listen', '?')}: {tls.get('spiffe_id', '?')}, until "
            f"{tls.get('not_after', '?')}; names {', '.join(map(str, tls.get('sans', ())))}"
        )
    else:
        lines.append("TLS listener off: sidecars can't renew (controld run --tls)")
    if "revoked_leaves" in status:
        invalid = status.get("invalid_records")
        skipped = (
            ", ".join(f"{kind} {count}" for kind, count in sorted(invalid.items()))
            if isinstance(invalid, Mapping) and invalid
            else "none"
        )
        lines.append(
            f"revoked certificates not yet expired: {status['revoked_leaves']} "
            f"(meshctl identities); invalid CA records skipped: {skipped}"
        )
    step = NEXT_STEP.get(phase)
    if step is not None:
        lines.append("")
        lines.append(f"next step: meshctl ca rotate --step {step}")
    return lines


def _print(opts: Options, value: Any) -> None:
    if opts.output == "yaml":
        print(render.to_yaml(value), end="")
    else:
        print(render.to_json(value))


def cmd_ca_status(opts: Options, _: argparse.Namespace) -> int:
    """``ca status``: the rotation phase and the roots (with outstanding leaves)."""
    with opts.client() as client:
        status = client.ca_status()
    if opts.output != "table":
        _print(opts, status)
        return EXIT_OK
    print("\n".join(ca_status_lines(status)))
    return EXIT_OK


def cmd_ca_rotate(opts: Options, args: argparse.Namespace) -> int:
    """``ca rotate --step S [--force]``: one rotation step; prints the new phase."""
    with opts.client() as client:
        answer = client.ca_rotate(args.step, force=args.force)
    if opts.output != "table":
        _print(opts, answer)
        return EXIT_OK
    bundle = ", ".join(str(b) for b in answer.get("bundle", ()))
    print(f"{args.step}: phase {answer.get('phase')}, signer {answer.get('active')}")
    print(f"bundle: {bundle}")
    return EXIT_OK


def add_ca_parser(
    sub: argparse._SubParsersAction[argparse.ArgumentParser],
    add_global_options: Any,
) -> None:
    """Register ``ca status`` and ``ca rotate`` under ``sub``."""
    p = sub.add_parser(
        "ca",
        help="the CA: root rotation status and steps",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_global_options(p, top=False)
    ca_sub = p.add_subparsers(dest="ca_command", required=True, metavar="COMMAND")
    s = ca_sub.add_parser("status", help="rotation phase, roots and outstanding leaves")
    add_global_options(s, top=False)
    s.set_defaults(run=cmd_ca_status)
    r = ca_sub.add_parser("rotate", help="one root rotation step")
    add_global_options(r, top=False)
    r.add_argument("--step", required=True, choices=STEPS)
    r.add_argument(
        "--force",
        action="store_true",
        help="retire even while leaves of the old root are outstanding",
    )
    r.set_defaults(run=cmd_ca_rotate)
