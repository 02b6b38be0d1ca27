"""``controld run``: settings (``--config`` file and command line), inherited sockets, logging,
then the daemon under :class:`~controld.lifecycle.Lifecycle` until a stop signal.

Kept apart from :mod:`controld.cli` (which only declares the options) so that SIGHUP can
build the settings again exactly as the start did.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, NoReturn

from controld.config_file import ConfigFileError, file_arguments
from controld.lifecycle import ReloadError, RunSettings

if TYPE_CHECKING:
    from controld.daemon import ControlDaemon, DaemonPorts
    from controld.lifecycle import Lifecycle

__all__ = ["parse_run", "run_daemon", "run_settings"]


class _ReloadParser(argparse.ArgumentParser):
    """Raises :class:`ReloadError` where argparse would print and exit (a reload must not)."""

    def error(self, message: str) -> NoReturn:
        raise ReloadError(message)


def parse_run(
    argv: list[str], parser_class: type[argparse.ArgumentParser] = argparse.ArgumentParser
) -> argparse.Namespace:
    """``argv`` (``["run", ...]``) parsed, with the ``--config`` file's options placed before
    the command line's. Raises :class:`ConfigFileError` for a bad file."""
    from controld.cli import _parser

    parser = _parser(parser_class)
    args = parser.parse_args(argv)
    if args.command != "run" or args.config is None:
        return args
    run_parser: argparse.ArgumentParser = args.run_parser
    flags = frozenset(
        option[2:]
        for action in run_parser._actions
        if action.nargs == 0
        for option in action.option_strings
        if option.startswith("--")
    )
    at = argv.index("run") + 1
    return parser.parse_args([*argv[:at], *file_arguments(args.config, flags), *argv[at:]])


def run_settings(args: argparse.Namespace) -> RunSettings:
    """The settings of parsed ``run`` arguments (argparse's error handling on bad ones)."""
    from controld.cli import _daemon_config

    return RunSettings(
        _daemon_config(args.run_parser, args), log_level=args.log_level, log_format=args.log_format
    )


def _loader(argv: list[str]) -> Callable[[], RunSettings]:
    def load() -> RunSettings:
        try:
            return run_settings(parse_run(argv, _ReloadParser))
        except ConfigFileError as exc:
            raise ReloadError(str(exc)) from exc

    return load


def run_daemon(argv: list[str]) -> int:
    """Run the daemon as ``controld run`` does; the exit status."""
    import trio

    from controld.auth import TokenFileError
    from controld.ca import CAFileError
    from controld.daemon import ControlDaemon
    from controld.lifecycle import Lifecycle, listener_sockets
    from controld.registry import DataDirError, RegistryError
    from meshcore.net.accept import raise_nofile_limit
    from meshcore.runtime.activation import ActivationError, listen_fds
    from meshcore.runtime.asgi import ListenError
    from meshcore.runtime.logging import configure_logging
    from meshcore.runtime.sdnotify import Notifier, WatchdogService

    try:
        settings = run_settings(parse_run(argv))
    except ConfigFileError as exc:
        print(f"controld run: {exc}", file=sys.stderr)
        return 2
    config = settings.config
    # structlog imports rich only for prettier console tracebacks; daemons don't need it.
    sys.modules.setdefault("rich", None)  # type: ignore[arg-type]
    level = configure_logging(
        json=settings.log_format == "json", level=settings.log_level, reloadable=True
    )
    import logging

    import structlog

    logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format="%(name)s: %(message)s")
    log = structlog.get_logger("controld")
    try:
        sockets = listener_sockets(config, listen_fds())
    except ActivationError as exc:
        print(f"controld run: socket activation: {exc}", file=sys.stderr)
        return 1
    if sockets.by_name:
        log.info("socket activation", inherited=sockets.describe())
    daemon = ControlDaemon(config, sockets=sockets)
    notifier = Notifier.from_env()
    lifecycle = Lifecycle(
        daemon,
        settings,
        load=_loader(argv),
        notifier=notifier,
        watchdog=WatchdogService.from_env(notifier, os.environ),
        log_level=level,
        on_ready=lambda ports: _announce(log, daemon, ports),
    )
    raise_nofile_limit()  # before the lean listeners derive their default connection caps
    try:
        trio.run(_run, lifecycle)
    except BaseException as exc:
        error = (
            _leaf(exc, RegistryError)
            or _leaf(exc, ListenError)
            or _leaf(exc, TokenFileError)
            or _leaf(exc, CAFileError)
        )
        if error is None:
            raise
        print(f"controld run: {error}", file=sys.stderr)
        return 2 if isinstance(error, DataDirError | CAFileError) else 1
    log.info("stopped")
    return 0


async def _run(lifecycle: Lifecycle) -> None:
    await lifecycle.run()


def _announce(logger: Any, daemon: ControlDaemon, ports: DaemonPorts) -> None:
    """The ``ready`` log line and the one-line summary on stderr."""
    config = daemon.config
    host = config.admin_host
    if host in ("", "0.0.0.0"):
        host = "127.0.0.1"
    elif host == "::":
        host = "::1"
    api_url = f"http://{f'[{host}]' if ':' in host else host}:{ports.admin_port}"
    logger.info(
        "ready",
        registry_mode="external" if config.registry is None else "embedded",
        registry=ports.registry_url,
        registry_port=ports.registry_port,
        admin=f"{config.admin_host}:{ports.admin_port}",
        admin_port=ports.admin_port,
        push_port=ports.push_port,
        tls_port=ports.tls_port,
        api=api_url,
        admin_token_file=str(config.token_path),
        kv_prefix=config.kv_prefix,
        registry_acl=config.registry is None or config.registry_acl,
        inherited=sorted(daemon.sockets.by_name),
    )
    if config.registry is not None and not config.registry_acl:
        logger.warning(
            "registry ACLs disabled (--registry-acl-disabled): anyone who reaches "
            f"{ports.registry_url} can rewrite {config.kv_prefix} and every registration"
        )
    push = "" if ports.push_port is None else f", sidecars {config.push_host}:{ports.push_port}"
    if ports.tls_port is not None:
        push += f", TLS {config.tls_host}:{ports.tls_port}"
    print(
        f"controld: API {api_url}{push} (admin token in {config.token_path})",
        file=sys.stderr,
        flush=True,
    )


def _leaf(exc: BaseException, kind: type[Exception]) -> Exception | None:
    """The ``kind`` error behind ``exc`` when that is all it holds (groups unwrapped)."""
    if isinstance(exc, kind):
        return exc
    if isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        return _leaf(exc.exceptions[0], kind)
    return None
