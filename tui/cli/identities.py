"""``meshctl identities`` and ``meshctl revoke``: the enrolled instances and their revocation.

Every enrollment is an identity of its own (an instance of a service). ``identities`` lists
them: service, instance (the sidecar's proxy id), SPIFFE ID, current certificate serial, when
it expires and whether it is revoked. ``revoke`` revokes one instance (by identity id, or by
the serial of one of its certificates) or every instance of a service (``--service``): its
peers refuse its certificates within seconds and it can't renew.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import Any

from meshcore.api.ca import Identity
from tui import render
from tui.cli.common import EXIT_OK, EXIT_USAGE, Options, error

__all__ = ["add_identity_parsers", "cmd_identities", "cmd_revoke", "identity_rows"]

HEADERS = ("ID", "SERVICE", "INSTANCE", "SPIFFE ID", "SERIAL", "NOT AFTER", "EXPIRES IN", "REVOKED")


def _expires_in(seconds: object) -> str:
    if not isinstance(seconds, int | float):
        return "-"
    if seconds <= 0:
        return "expired"
    whole = int(seconds)
    if whole >= 86400:
        return f"{whole // 86400}d{whole % 86400 // 3600}h"
    if whole >= 3600:
        return f"{whole // 3600}h{whole % 3600 // 60}m"
    if whole >= 60:
        return f"{whole // 60}m{whole % 60}s"
    return f"{whole}s"


def _service(item: Identity) -> str:
    name = item.service
    return name if item.namespace == "default" else f"{item.namespace}/{name}"


def identity_rows(items: Sequence[Identity]) -> list[list[str]]:
    """Table rows of ``GET /v1/identities`` entries."""
    return [
        [
            item.id,
            _service(item),
            item.instance or "-",
            item.spiffe_id,
            item.serial or "-",
            item.not_after or "-",
            _expires_in(item.expires_in_s),
            item.revoked or "no",
        ]
        for item in items
    ]


def _printed_as_document(opts: Options, args: argparse.Namespace, answer: Any) -> bool:
    """Print ``answer`` as JSON (``--json``, ``-o json``) or YAML; False for a table."""
    output = "json" if getattr(args, "json", False) else opts.output
    if output == "table":
        return False
    if output == "yaml":
        print(render.to_yaml(answer), end="")
    else:
        print(render.to_json(answer))
    return True


def cmd_identities(opts: Options, args: argparse.Namespace) -> int:
    """``identities [--service S]``: the enrolled instances."""
    with opts.client() as client:
        answer = client.identities(args.service)
    if _printed_as_document(opts, args, answer):
        return EXIT_OK
    items = answer.identities
    if not items:
        print("no identities" + (f" of service {args.service}" if args.service else ""))
        return EXIT_OK
    print(render.table(HEADERS, identity_rows(items)), end="")
    return EXIT_OK


def cmd_revoke(opts: Options, args: argparse.Namespace) -> int:
    """``revoke ID | --serial HEX | --service NAME``: revoke instances."""
    given = [args.identity, args.serial, args.service]
    if sum(value is not None for value in given) != 1:
        error("revoke: give exactly one of an identity ID, --serial or --service")
        return EXIT_USAGE
    serial = args.serial
    if serial is not None:
        serial = serial.lower().removeprefix("0x").replace(":", "")
    with opts.client() as client:
        answer = client.revoke(
            identity=args.identity,
            serial=serial,
            service=args.service,
            namespace=args.namespace if args.service is not None else None,
        )
    if _printed_as_document(opts, args, answer):
        return EXIT_OK
    items = answer.revoked
    if args.service is not None:
        print(
            f"revoked service {answer.spiffe_id or args.service}: {len(items)} instance(s);"
            " its certificates issued until now can't renew"
        )
    for item in items:
        serials = ", ".join(item.serials) or "none unexpired"
        print(
            f"revoked identity {item.id} ({_service(item)}, instance "
            f"{item.instance or '-'}); certificates refused by peers: {serials}"
        )
    return EXIT_OK


def add_identity_parsers(
    sub: argparse._SubParsersAction[argparse.ArgumentParser],
    add_global_options: Any,
) -> None:
    """Register ``identities`` and ``revoke`` under ``sub``."""
    p = sub.add_parser(
        "identities",
        help="enrolled instances: service, instance, SPIFFE ID, serial, expiry, revoked",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_global_options(p, top=False)
    p.add_argument("--service", help="only the instances of this service")
    p.add_argument("--json", action="store_true", help="print the API's JSON (as -o json)")
    p.set_defaults(run=cmd_identities)

    r = sub.add_parser(
        "revoke",
        help="revoke an instance (ID or --serial) or every instance of a service (--service)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_global_options(r, top=False)
    r.add_argument("identity", nargs="?", help="identity ID of the instance (meshctl identities)")
    r.add_argument("--serial", help="serial (hex) of a certificate of the instance")
    r.add_argument("--service", help="revoke every instance of this service")
    r.add_argument("--namespace", default="default", help="namespace of --service")
    r.add_argument("--json", action="store_true", help="print the API's JSON (as -o json)")
    r.set_defaults(run=cmd_revoke)
