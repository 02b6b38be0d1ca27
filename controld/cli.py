"""``controld``: the control plane daemon.

Subcommands available so far:

* ``controld registry --listen HOST:PORT --data-dir DIR [--acl-management-token TOKEN]``
  runs the embedded Consul-compatible registry standalone.

Running the registry embedded in the main ``controld`` daemon (or pointing it at an external
Consul with ``--registry``) arrives with issue 4.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import sys
from pathlib import Path

from meshcore import __version__

_LEVELS = ("debug", "info", "warning", "error", "critical")


def _listen(value: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not host:
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {value!r}")
    return host.strip("[]"), int(port)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="controld",
        description=(
            "meshd control plane. Available now: the standalone Consul-compatible registry "
            "(`controld registry`). Running it embedded in the controld daemon, or using an "
            "external registry with --registry, comes with issue 4."
        ),
    )
    parser.add_argument("--version", action="version", version=f"controld {__version__}")
    sub = parser.add_subparsers(dest="command")
    reg = sub.add_parser(
        "registry",
        help="run the Consul-compatible registry standalone",
        description=(
            "Serve the Consul HTTP API subset used by meshd and controld (agent, catalog, "
            "health, KV, sessions, status; blocking queries), persisted in SQLite under "
            "--data-dir. With --acl-management-token every request must carry that token "
            "(X-Consul-Token, ?token= or Authorization: Bearer). Embedded mode inside the "
            "controld daemon comes with issue 4."
        ),
    )
    reg.add_argument(
        "--listen",
        type=_listen,
        default=("127.0.0.1", 8500),
        metavar="HOST:PORT",
        help="HTTP address (default 127.0.0.1:8500; port 0 picks a free port)",
    )
    reg.add_argument("--data-dir", type=Path, required=True, help="directory of the SQLite state")
    reg.add_argument(
        "--acl-management-token",
        default=os.environ.get("CONTROLD_ACL_TOKEN"),
        help="enable ACLs with this management token (env CONTROLD_ACL_TOKEN)",
    )
    reg.add_argument("--node-name", default="", help="this node's name (default: the hostname)")
    reg.add_argument("--datacenter", default="dc1", help="datacenter name (default dc1)")
    reg.add_argument(
        "--http-server",
        choices=("builtin", "hypercorn"),
        default="builtin",
        help="HTTP front-end: built-in (fast blocking-query wake-ups, default) or hypercorn",
    )
    reg.add_argument("--log-format", choices=("json", "console"), default="json")
    reg.add_argument("--log-level", choices=_LEVELS, type=str.lower, default="info")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``controld`` command."""
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command == "registry":
        return _run_registry(args)
    parser.print_help()
    return 0


def _run_registry(args: argparse.Namespace) -> int:
    import logging

    import structlog
    import trio

    from controld.registry import DataDirError, RegistryConfig, RegistryServer
    from meshcore.runtime.logging import configure_logging

    sys.modules.setdefault("rich", None)  # type: ignore[arg-type]
    configure_logging(json=args.log_format == "json", level=args.log_level)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format="%(name)s: %(message)s")
    log = structlog.get_logger("controld.registry")
    host, port = args.listen
    config = RegistryConfig(
        data_dir=args.data_dir,
        host=host,
        port=port,
        node_name=args.node_name or socket.gethostname(),
        datacenter=args.datacenter,
        acl_management_token=args.acl_management_token or None,
        http_server=args.http_server,
    )
    server = RegistryServer(config)

    async def serve() -> None:
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            async with trio.open_nursery() as nursery:

                async def stop_on_signal() -> None:
                    async for _ in signals:
                        server.shutdown_nowait()
                        return

                nursery.start_soon(stop_on_signal)
                bound = await nursery.start(server.run)
                log.info(
                    "ready",
                    listen=f"{host}:{bound}",
                    data_dir=str(args.data_dir),
                    acl=config.acl_management_token is not None,
                    node=config.node_name,
                    datacenter=config.datacenter,
                )
                await server.wait_stopped()
                nursery.cancel_scope.cancel()

    try:
        trio.run(serve)
    except BaseException as exc:
        error = _registry_error(exc)
        if error is None:
            raise
        print(f"controld registry: {error}", file=sys.stderr)
        return 2 if isinstance(error, DataDirError) else 1
    log.info("stopped")
    return 0


def _registry_error(exc: BaseException) -> Exception | None:
    """The registry error behind ``exc`` when that is all it holds (groups unwrapped)."""
    from controld.registry import RegistryError

    if isinstance(exc, RegistryError):
        return exc
    if isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        return _registry_error(exc.exceptions[0])
    return None


if __name__ == "__main__":
    sys.exit(main())
