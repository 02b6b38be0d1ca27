"""``meshd``: run or check a sidecar."""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from meshcore import __version__
from meshcore.deferimports import (
    call_and_forget,
    import_deferring,
    pthread_found_without_ldconfig,
    skip_pydantic_plugin_scan,
)
from meshcore.errors import ConfigError
from meshd.errors import MeshdError

if TYPE_CHECKING:
    from meshcore.model.bootstrap import Bootstrap
    from meshd.sidecar import Sidecar


@dataclass(frozen=True)
class Options:
    """The parsed command line (:mod:`meshd.cliargs`; ``validate`` gives only ``config``)."""

    command: str
    config: Path
    log_format: str = "json"
    log_level: str = "info"
    takeover: bool = False
    handoff_socket: Path | None = None
    worker_index: int = 0
    worker_channel: int | None = None
    worker_listen_fd: list[str] = field(default_factory=list)


def _options(argv: list[str] | None) -> Options:
    """The command line, parsed by a parser the process then forgets: argparse, gettext and the
    parser would otherwise stay resident in every sidecar (~0.4 MB) for a job done once."""
    parsed = call_and_forget("meshd.cliargs", "parse", argv, forget=("argparse", "gettext"))
    return Options(**parsed)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``meshd`` command."""
    args = _options(argv)
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
    """Before pydantic builds a model or anything imports structlog or trio: ~7.5 MB less
    resident memory in every sidecar process without TLS (:mod:`meshcore.deferimports`)."""
    # structlog imports rich, when installed, only to pretty-print console tracebacks; the
    # daemon doesn't need that, and rich costs ~3.6 MB of resident memory.
    sys.modules.setdefault("rich", None)  # type: ignore[arg-type]
    sys.modules.setdefault("better_exceptions", None)  # type: ignore[arg-type]
    skip_pydantic_plugin_scan()
    import_deferring("structlog", ("asyncio",))
    # trio reads idna (and its tables) only to encode a host name that isn't ASCII, and looks
    # for the pthread library with ldconfig (a child process, tempfile and shutil). It imports
    # ssl for its SSLStream, and hmac (with hashlib) for its DTLS cookies: both load OpenSSL's
    # libcrypto (~4 MB resident with libssl, the modules and OpenSSL's start-up), which a
    # sidecar without TLS never uses; meshd's TLS layer imports ssl where TLS is used.
    with pthread_found_without_ldconfig():
        import_deferring("trio", ("idna", "ssl", "hmac"))
    # pydantic.types imports secrets (so hmac and libcrypto) only for SecretStr's comparison.
    import_deferring("pydantic.types", ("secrets",))


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


def _run(args: Options) -> int:
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


def _worker(args: Options) -> Sidecar:
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
