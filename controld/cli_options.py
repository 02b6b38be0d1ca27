"""The options of ``controld run`` and ``controld registry`` and their argument types.

Apart from :mod:`controld.cli` (which dispatches and runs) to keep both small; the daemon's
runner builds the same parser through :func:`controld.cli._parser`.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

__all__ = [
    "add_logging",
    "add_registry_identity",
    "add_run",
    "listen",
    "listen_or_off",
    "positive_float",
    "positive_int",
]

_LEVELS = ("debug", "info", "warning", "error", "critical")


def listen(value: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not host:
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {value!r}")
    return host.strip("[]"), int(port)


def positive_int(value: str) -> int:
    if not value.isdigit() or int(value) < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value!r}")
    return int(value)


def positive_float(value: str) -> float:
    try:
        number = float(value)
    except ValueError:
        number = 0.0
    if not number > 0 or number == float("inf"):
        raise argparse.ArgumentTypeError(f"expected a positive number of seconds, got {value!r}")
    return number


def listen_or_off(value: str) -> tuple[str, int] | None:
    return None if value == "off" else listen(value)


def add_registry_identity(parser: argparse.ArgumentParser, scope: str) -> None:
    """ACL token, node and datacenter of a registry this process serves."""
    parser.add_argument(
        "--acl-management-token",
        default=os.environ.get("CONTROLD_ACL_TOKEN"),
        help=f"{scope}enable ACLs with this management token (env CONTROLD_ACL_TOKEN)",
    )
    parser.add_argument("--node-name", default="", help=f"{scope}node name (default: hostname)")
    parser.add_argument("--datacenter", default="dc1", help=f"{scope}datacenter (default dc1)")


def add_logging(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--log-format", choices=("json", "console"), default="json")
    parser.add_argument("--log-level", choices=_LEVELS, type=str.lower, default="info")


def add_run(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> argparse.ArgumentParser:
    run = sub.add_parser(
        "run",
        help="run the controld daemon",
        description=(
            "The control plane daemon. By default it runs the Consul-compatible registry "
            "embedded (--registry-listen, --data-dir); with --registry URL it follows an "
            "external one instead. It watches services and their health in the registry "
            "(keeping the last view while the registry is unreachable), keeps the policy "
            "resources in the registry KV (--kv-prefix), compiles each registered sidecar's "
            "snapshot and pushes it (long-poll, on --push), and serves the HTTP API on --admin "
            "(bearer tokens; the admin token is in --admin-token-file; OpenAPI at "
            "/openapi.json)."
        ),
    )
    run.add_argument(
        "--config",
        type=Path,
        metavar="FILE",
        help=(
            "YAML file of these options (long names without --, e.g. `admin: "
            "127.0.0.1:8501`); the command line wins. SIGHUP reads it again: log-level and "
            "the admin token file apply at once, other changes need a restart"
        ),
    )
    run.add_argument(
        "--registry",
        metavar="URL",
        help="use this external registry (http(s)://host:port) instead of the embedded one",
    )
    run.add_argument(
        "--registry-token",
        default=os.environ.get("CONSUL_HTTP_TOKEN"),
        help="ACL token for the external registry (env CONSUL_HTTP_TOKEN)",
    )
    run.add_argument(
        "--registry-listen",
        type=listen,
        metavar="HOST:PORT",
        help="embedded registry's HTTP address (default 127.0.0.1:8500)",
    )
    run.add_argument(
        "--data-dir",
        type=Path,
        help=(
            "embedded registry's SQLite state (required when embedded) and the default home "
            "of the admin token file; with --registry only the latter"
        ),
    )
    add_registry_identity(run, "embedded registry: ")
    run.add_argument(
        "--registry-acl-disabled",
        action="store_true",
        help=(
            "UNSAFE: run the embedded registry without ACLs, so anyone who reaches it can "
            "rewrite controld's KV prefix (join tokens, policy) and every registration. By "
            "default ACLs are on (default deny) with a management token generated at first "
            "start into <data-dir>/registry-token (or --acl-management-token)"
        ),
    )
    run.add_argument(
        "--admin",
        type=listen,
        default=("127.0.0.1", 8501),
        metavar="HOST:PORT",
        help="HTTP API address (default 127.0.0.1:8501; port 0 picks a free port)",
    )
    run.add_argument(
        "--push",
        type=listen_or_off,
        default=("127.0.0.1", 8502),
        metavar="HOST:PORT|off",
        help=(
            "address the sidecars register and long-poll on: the same API, served by a lean "
            "server made for waking many parked polls at once (default 127.0.0.1:8502; "
            "off: sidecars use --admin)"
        ),
    )
    run.add_argument(
        "--tls",
        type=listen_or_off,
        default=("127.0.0.1", 8503),
        metavar="HOST:PORT|off",
        help=(
            "TLS listener (the same API) with a certificate from controld's own CA, "
            "spiffe://<trust domain>/controld: sidecars enroll and renew there, renewal over "
            "mutual TLS (default 127.0.0.1:8503; off: no TLS listener, no renewals)"
        ),
    )
    run.add_argument(
        "--tls-san",
        action="append",
        default=[],
        metavar="NAME",
        help="extra DNS name or IP address in the TLS listener's certificate (repeatable)",
    )
    run.add_argument(
        "--admin-token-file",
        type=Path,
        metavar="PATH",
        help=(
            "the API's admin token, created (mode 0600, random token) if missing; default "
            "<data-dir>/admin-token, or $XDG_STATE_HOME/controld/admin-token without --data-dir"
        ),
    )
    run.add_argument(
        "--kv-prefix",
        default="meshd/",
        metavar="PREFIX",
        help="registry KV prefix of the policy resources (default meshd/; must end with /)",
    )
    run.add_argument(
        "--ca-import-cert",
        type=Path,
        metavar="PEM",
        help=(
            "on first start, the CA uses this root certificate (ECDSA CA) instead of "
            "generating one; needs --ca-import-key; ignored once <data-dir>/ca exists"
        ),
    )
    run.add_argument(
        "--ca-import-key", type=Path, metavar="PEM", help="the imported root's private key"
    )
    run.add_argument(
        "--max-connections",
        type=positive_int,
        metavar="N",
        help=(
            "open connections at most on each of the push and TLS listeners (default: a "
            "third of what RLIMIT_NOFILE leaves); over it, silent connections are closed first"
        ),
    )
    run.add_argument(
        "--first-byte-timeout",
        type=positive_float,
        default=10.0,
        metavar="SECONDS",
        help="push and TLS listeners close a connection that sends nothing for this long "
        "(default 10)",
    )
    run.add_argument(
        "--api-max-body-bytes",
        type=positive_int,
        default=1 << 20,
        metavar="BYTES",
        help=(
            "largest request body the API accepts (default 1048576 = 1 MiB); a larger one is "
            "refused with 413 before it is read"
        ),
    )
    add_logging(run)
    return run
