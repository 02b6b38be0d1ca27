"""``meshd``: run or check a sidecar."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from meshcore import __version__
from meshcore.deferimports import (
    import_deferring,
    pthread_found_without_ldconfig,
    skip_pydantic_plugin_scan,
)
from meshcore.errors import ConfigError
from meshd.errors import MeshdError

if TYPE_CHECKING:
    from meshcore.model.bootstrap import Bootstrap
    from meshd.sidecar import Sidecar

_LEVELS = ("debug", "info", "warning", "error", "critical")


class _HelpFormatter(argparse.HelpFormatter):
    """argparse's formatter, asking the terminal's width only when it formats text.

    argparse makes a formatter for every argument it adds, and argparse's own asks
    :func:`shutil.get_terminal_size` every time, so merely parsing a command line imports
    :mod:`shutil` (with bz2 and lzma): ~0.6 MB resident in every sidecar (issue 15). This one
    asks when usage, help or an error is written, so the text is the same.
    """

    def __init__(
        self,
        prog: str,
        indent_increment: int = 2,
        max_help_position: int = 24,
        width: int | None = None,
    ) -> None:
        super().__init__(
            prog, indent_increment, max_help_position, _NO_WIDTH_YET if width is None else width
        )
        self._asked_width = width
        self._asked_max_help_position = max_help_position

    def format_help(self) -> str:
        if self._asked_width is None:
            import shutil

            # What argparse.HelpFormatter.__init__ does with width=None.
            width = shutil.get_terminal_size().columns - 2
            self._width = width
            self._max_help_position = min(
                self._asked_max_help_position, max(width - 20, self._indent_increment * 2)
            )
        return super().format_help()


#: A width for the formatters argparse makes only to check an argument (they format no text).
_NO_WIDTH_YET = 78


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="meshd", description="meshd sidecar proxy", formatter_class=_HelpFormatter
    )
    parser.add_argument("--version", action="version", version=f"meshd {__version__}")
    # prog given: argparse would format the parser's usage to find it (and ask the width).
    sub = parser.add_subparsers(dest="command", required=True, prog="meshd")
    run = sub.add_parser("run", help="run the sidecar", formatter_class=_HelpFormatter)
    run.add_argument("-c", "--config", type=Path, required=True, help="bootstrap YAML file")
    run.add_argument("--log-format", choices=("json", "console"), default="json")
    run.add_argument(
        "--log-level",
        choices=_LEVELS,
        type=str.lower,
        default=os.environ.get("MESHD_LOG_LEVEL", "info").lower(),
    )
    run.add_argument(
        "--takeover",
        action="store_true",
        help="take the listening sockets over from the meshd running with this bootstrap "
        "(restart without socket activation); start normally if none runs",
    )
    run.add_argument(
        "--handoff-socket",
        type=Path,
        default=None,
        help="Unix socket of the hand-off (default $RUNTIME_DIRECTORY/handoff.sock, "
        "else BOOTSTRAP.handoff.sock)",
    )
    run.add_argument("--worker-index", type=int, default=0, help=argparse.SUPPRESS)
    # A worker's channel to its primary, and the listening sockets it inherits (NAME=FD).
    run.add_argument("--worker-channel", type=int, default=None, help=argparse.SUPPRESS)
    run.add_argument("--worker-listen-fd", action="append", default=[], help=argparse.SUPPRESS)
    check = sub.add_parser(
        "validate",
        help="check a bootstrap file and its snapshot, then exit",
        formatter_class=_HelpFormatter,
    )
    check.add_argument("-c", "--config", type=Path, required=True, help="bootstrap YAML file")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``meshd`` command."""
    args = _parser().parse_args(argv)
    _defer_unused_imports()
    if args.command == "validate":
        from meshd.sidecar import load_config

        try:
            bootstrap, snapshot = load_config(args.config)
            if snapshot is None:
                return _validate_controld(args.config, bootstrap)
        except ConfigError as exc:
            print(exc, file=sys.stderr)
            return 1
        print(
            f"{args.config}: ok (service {bootstrap.service}, snapshot version {snapshot.version})"
        )
        return 0
    return _run(args)


def _defer_unused_imports() -> None:
    """Before pydantic builds a model or anything imports structlog or trio: ~3.7 MB less
    resident memory in every sidecar process (:mod:`meshcore.deferimports`)."""
    # structlog imports rich, when installed, only to pretty-print console tracebacks; the
    # daemon doesn't need that, and rich costs ~3.6 MB of resident memory.
    sys.modules.setdefault("rich", None)  # type: ignore[arg-type]
    sys.modules.setdefault("better_exceptions", None)  # type: ignore[arg-type]
    skip_pydantic_plugin_scan()
    import_deferring("structlog", ("asyncio",))
    # trio reads idna (and its tables) only to encode a host name that isn't ASCII, and looks
    # for the pthread library with ldconfig (a child process, tempfile and shutil).
    with pthread_found_without_ldconfig():
        import_deferring("trio", ("idna",))


def _validate_controld(path: Path, bootstrap: Bootstrap) -> int:
    """controld mode: the bootstrap, its descriptor and the cached snapshot, if any."""
    from meshd.control.cache import load_cache
    from meshd.control.settings import control_settings

    settings = control_settings(bootstrap, path)
    descriptor = bootstrap.descriptor(__version__)
    cached = ""
    if settings.cache_file is not None and settings.cache_file.exists():
        cache = load_cache(settings.cache_file)
        cached = f", cached snapshot version {cache.snapshot.version}"
    print(
        f"{path}: ok (service {bootstrap.service}, proxy {descriptor.proxy_id}, "
        f"snapshots from controld {settings.config.url}, "
        f"{len(descriptor.upstreams)} upstreams{cached})"
    )
    return 0


def _run(args: argparse.Namespace) -> int:
    import trio

    from meshcore.net.accept import raise_nofile_limit
    from meshcore.runtime.activation import listen_fds
    from meshcore.runtime.logging import configure_logging
    from meshcore.runtime.sdnotify import Notifier
    from meshd.sidecar import Sidecar

    configure_logging(json=args.log_format == "json", level=args.log_level)
    raise_nofile_limit()  # before the listeners derive their default connection caps
    takeover = None
    if args.worker_index:
        sidecar = _worker(args)
    else:
        from meshd.handoff import HandoffError, handoff_path, take_over

        inherited = listen_fds()
        path = args.handoff_socket or handoff_path(args.config)
        if args.takeover and not inherited:
            try:
                takeover = take_over(path)
            except HandoffError as refused:
                print(f"meshd: {refused}", file=sys.stderr)
                return 2
            if takeover is not None:
                inherited = takeover.inherited()
        sidecar = Sidecar(
            args.config,
            notifier=Notifier.from_env(),
            inherited=inherited,
            takeover=takeover,
            handoff_path=path,
            settle_memory=True,
        )
    failures: list[BaseException] = []
    try:
        trio.run(sidecar.run)
    except* (ConfigError, MeshdError) as group:
        # Raised before or inside the sidecar's nursery (a listener that can't bind).
        failures.extend(group.exceptions)
    finally:
        sidecar.succession.abandon()  # failed before serving: the previous process serves on
    for exc in failures:
        print(f"meshd: {exc}", file=sys.stderr)
    return 2 if failures else 0


def _worker(args: argparse.Namespace) -> Sidecar:
    """Worker ``args.worker_index`` with the channel and sockets its primary passed down."""
    import signal
    import socket

    import structlog

    from meshcore.runtime.activation import adopt_socket
    from meshd.sidecar import Sidecar

    inherited = []
    for item in args.worker_listen_fd:
        name, _, fd = str(item).rpartition("=")
        inherited.append(adopt_socket(int(fd), name))
    # A SIGHUP the primary forwards while this worker starts must not kill it (the default
    # action): it reads the bootstrap at start anyway; the sidecar's receiver takes over.
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    # Every log line of a worker says which one (its output goes where the primary's does).
    structlog.contextvars.bind_contextvars(worker=args.worker_index)
    channel = None
    if args.worker_channel is not None:
        channel = socket.socket(fileno=args.worker_channel)
        channel.set_inheritable(False)
    return Sidecar(
        args.config,
        worker_index=args.worker_index,
        inherited=inherited,
        channel=channel,
        settle_memory=True,
    )


if __name__ == "__main__":
    sys.exit(main())
