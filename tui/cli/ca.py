"""``meshctl ca status`` and ``meshctl ca rotate --step stage|activate|retire [--force]``.

A root rotation is three steps, each run when the previous one has reached every sidecar:
``stage`` (a new root joins the trust bundle), ``activate`` (the new root signs; sidecars
renew within seconds) and ``retire`` (the old root leaves the bundle; refused while leaves
it signed are outstanding, unless ``--force``). ``status`` shows where the rotation is.
"""

from __future__ import annotations

import argparse
from typing import Any

from meshcore.api.ca import NEXT_STEP, CaRoot, CaStatus, RotationStep
from tui import render
from tui.cli.common import EXIT_OK, Options

__all__ = ["NEXT_STEP", "STEPS", "ca_status_lines", "cmd_ca_rotate", "cmd_ca_status"]

STEPS: tuple[RotationStep, ...] = ("stage", "activate", "retire")
ROOT_HEADERS = ("ROOT", "ROLE", "NOT AFTER", "OUTSTANDING", "LAST EXPIRES")


def _role(root: CaRoot, index: int, count: int) -> str:
    if root.active:
        return "signer"
    return "old" if index == 0 and count > 1 else "staged"


def _outstanding(root: CaRoot) -> tuple[str, str]:
    out = root.outstanding
    count = str(out.count)
    if out.untracked_until:
        count += f" (+ untracked until {out.untracked_until})"
    return count, out.last_expiry or "-"


def ca_status_lines(status: CaStatus) -> list[str]:
    """The table form of ``GET /v1/ca``."""
    lines = [
        f"phase {status.phase}, signer {status.active}, bundle index {status.index}, "
        f"trust domain {status.trust_domain}"
    ]
    rows = []
    for i, root in enumerate(status.roots):
        count, last = _outstanding(root)
        rows.append([root.id, _role(root, i, len(status.roots)), root.not_after, count, last])
    lines.append("")
    lines.extend(render.table(ROOT_HEADERS, rows).rstrip("\n").splitlines())
    tls = status.tls
    lines.append("")
    if tls is not None:
        lines.append(
            f"TLS listener {tls.listen}: {tls.spiffe_id}, until {tls.not_after}; "
            f"names {', '.join(tls.sans)}"
        )
    else:
        lines.append("TLS listener off: sidecars can't renew (controld run --tls)")
    invalid = status.invalid_records
    skipped = ", ".join(f"{kind} {count}" for kind, count in sorted(invalid.items())) or "none"
    lines.append(
        f"revoked certificates not yet expired: {status.revoked_leaves} "
        f"(meshctl identities); invalid CA records skipped: {skipped}"
    )
    step = NEXT_STEP.get(status.phase)
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
    bundle = ", ".join(answer.bundle)
    print(f"{args.step}: phase {answer.phase}, signer {answer.active}")
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
