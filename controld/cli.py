"""``controld``: the control plane daemon.

Subcommands:

* ``controld run [--config FILE] [--registry URL | --registry-listen HOST:PORT --data-dir
  DIR] [--admin HOST:PORT] [--push HOST:PORT|off] [--tls HOST:PORT|off] [--tls-san NAME]
  [--admin-token-file PATH] [--kv-prefix PREFIX] [--api-max-body-bytes BYTES]`` runs the
  daemon: the registry embedded (default) or an external one, discovery, the policy store,
  the snapshot push and the HTTP API (:mod:`controld.daemon`).
* ``controld registry --listen HOST:PORT --data-dir DIR [--acl-management-token TOKEN]``
  runs the Consul-compatible registry standalone.

Plain ``controld`` prints the help.
"""

from __future__ import annotations

import argparse
import signal
import socket
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from controld.cli_options import add_logging, add_registry_identity, add_run, listen
from meshcore import __version__

if TYPE_CHECKING:
    from controld.daemon_config import DaemonConfig


def _parser(
    parser_class: type[argparse.ArgumentParser] = argparse.ArgumentParser,
) -> argparse.ArgumentParser:
    parser = parser_class(
        prog="controld",
        description=(
            "meshd control plane. `controld run` is the daemon (registry embedded or external, "
            "service discovery, admin API); `controld registry` runs the Consul-compatible "
            "registry standalone."
        ),
    )
    parser.add_argument("--version", action="version", version=f"controld {__version__}")
    sub = parser.add_subparsers(dest="command")
    run = add_run(sub)
    run.set_defaults(run_parser=run)
    reg = sub.add_parser(
        "registry",
        help="run the Consul-compatible registry standalone",
        description=(
            "Serve the Consul HTTP API subset used by meshd and controld (agent, catalog, "
            "health, KV, sessions, status; blocking queries), persisted in SQLite under "
            "--data-dir. With --acl-management-token ACLs are on (Consul's model: tokens, "
            "policies, roles; default deny) and that token may do everything; the token goes "
            "in X-Consul-Token, ?token= or Authorization: Bearer. `controld run` embeds the "
            "same registry, with ACLs on by default."
        ),
    )
    reg.add_argument(
        "--listen",
        type=listen,
        default=("127.0.0.1", 8500),
        metavar="HOST:PORT",
        help="HTTP address (default 127.0.0.1:8500; port 0 picks a free port)",
    )
    reg.add_argument("--data-dir", type=Path, required=True, help="directory of the SQLite state")
    add_registry_identity(reg, "")
    reg.add_argument(
        "--acl-enabled",
        action="store_true",
        help=(
            "ACLs on (default deny) without a management token: PUT /v1/acl/bootstrap makes "
            "the first one, as `consul acl bootstrap` does"
        ),
    )
    reg.add_argument(
        "--http-server",
        choices=("builtin", "hypercorn"),
        default="builtin",
        help="HTTP front-end: built-in (fast blocking-query wake-ups, default) or hypercorn",
    )
    add_logging(reg)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``controld`` command."""
    argv = sys.argv[1:] if argv is None else argv
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command == "registry":
        return _run_registry(args)
    if args.command == "run":
        from controld.runner import run_daemon

        return run_daemon(argv)
    parser.print_help()
    return 0


def _run_registry(args: argparse.Namespace) -> int:
    import trio

    from controld.registry import DataDirError, RegistryConfig, RegistryError, RegistryServer
    from meshcore.net.accept import raise_nofile_limit

    log = _setup_logging(args, "controld.registry")
    host, port = args.listen
    config = RegistryConfig(
        data_dir=args.data_dir,
        host=host,
        port=port,
        node_name=args.node_name or socket.gethostname(),
        datacenter=args.datacenter,
        acl_management_token=args.acl_management_token or None,
        acl_enabled=args.acl_enabled,
        http_server=args.http_server,
    )
    server = RegistryServer(config)

    def ready(bound: int) -> None:
        log.info(
            "ready",
            listen=f"{host}:{bound}",
            data_dir=str(args.data_dir),
            acl=config.acl_enabled or config.acl_management_token is not None,
            node=config.node_name,
            datacenter=config.datacenter,
        )

    raise_nofile_limit()
    try:
        trio.run(_run_until_signal, server.run, server.shutdown_nowait, ready, log)
    except BaseException as exc:
        error = _leaf(exc, RegistryError)
        if error is None:
            raise
        print(f"controld registry: {error}", file=sys.stderr)
        return 2 if isinstance(error, DataDirError) else 1
    log.info("stopped")
    return 0


def _daemon_config(parser: argparse.ArgumentParser, args: argparse.Namespace) -> DaemonConfig:
    from controld.daemon_config import DaemonConfig
    from controld.registry import RegistryConfig
    from controld.registry.serverlimits import ServerLimits
    from meshcore.registry.client import RegistrySettings

    admin_host, admin_port = args.admin
    push_host, push_port = args.push or ("127.0.0.1", None)
    tls_host, tls_port = args.tls or ("127.0.0.1", None)
    if not args.kv_prefix.endswith("/"):
        parser.error(f"--kv-prefix must end with '/', got {args.kv_prefix!r}")
    # What both registry modes share.
    common: dict[str, Any] = {
        "admin_host": admin_host,
        "admin_port": admin_port,
        "push_host": push_host,
        "push_port": push_port,
        "tls_host": tls_host,
        "tls_port": tls_port,
        "tls_sans": tuple(args.tls_san),
        "data_dir": args.data_dir,
        "admin_token_file": args.admin_token_file,
        "kv_prefix": args.kv_prefix,
        "ca_import_cert": args.ca_import_cert,
        "ca_import_key": args.ca_import_key,
        "listener_limits": ServerLimits(
            max_connections=args.max_connections, first_byte_timeout_s=args.first_byte_timeout
        ),
        "api_max_body_bytes": args.api_max_body_bytes,
    }
    if (args.ca_import_cert is None) != (args.ca_import_key is None):
        parser.error("--ca-import-cert and --ca-import-key go together")
    if args.registry_acl_disabled and args.acl_management_token:
        parser.error("--registry-acl-disabled excludes --acl-management-token")
    if args.registry is not None:
        if args.registry_listen is not None:
            parser.error("--registry (external) excludes --registry-listen")
        try:
            RegistrySettings(url=args.registry)
        except ValueError as exc:
            parser.error(f"--registry: {exc}")
        return DaemonConfig(
            registry_url=args.registry,
            registry_token=args.registry_token or None,
            **common,
        )
    if args.data_dir is None:
        parser.error(
            "the embedded registry needs --data-dir DIR (or give --registry URL to use an "
            "external registry)"
        )
    host, port = args.registry_listen or ("127.0.0.1", 8500)
    return DaemonConfig(
        registry=RegistryConfig(
            data_dir=args.data_dir,
            host=host,
            port=port,
            node_name=args.node_name or socket.gethostname(),
            datacenter=args.datacenter,
            acl_management_token=args.acl_management_token or None,
        ),
        registry_acl=not args.registry_acl_disabled,
        **common,
    )


def _setup_logging(args: argparse.Namespace, name: str) -> Any:
    """Configure structlog (and stdlib logging for libraries); the daemon's logger."""
    import logging

    import structlog

    from meshcore.runtime.logging import configure_logging

    # structlog imports rich only for prettier console tracebacks; daemons don't need it.
    sys.modules.setdefault("rich", None)  # type: ignore[arg-type]
    configure_logging(json=args.log_format == "json", level=args.log_level)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format="%(name)s: %(message)s")
    return structlog.get_logger(name)


async def _run_until_signal(
    run: Callable[..., Awaitable[None]],
    stop: Callable[[], None],
    ready: Callable[[Any], None],
    log: Any,
) -> None:
    """Run a service object until it returns; SIGTERM or SIGINT asks it to stop."""
    import trio

    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async with trio.open_nursery() as nursery:

            async def stop_on_signal() -> None:
                async for signum in signals:
                    log.info("stopping", signal=signal.Signals(signum).name)
                    stop()
                    return

            async def run_service(*, task_status: trio.TaskStatus[Any]) -> None:
                await run(task_status=task_status)
                nursery.cancel_scope.cancel()  # stop_on_signal too

            nursery.start_soon(stop_on_signal)
            ready(await nursery.start(run_service))


def _leaf(exc: BaseException, kind: type[Exception]) -> Exception | None:
    """The ``kind`` error behind ``exc`` when that is all it holds (groups unwrapped)."""
    if isinstance(exc, kind):
        return exc
    if isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        return _leaf(exc.exceptions[0], kind)
    return None


if __name__ == "__main__":
    sys.exit(main())
