"""Serving an ASGI app with hypercorn's Trio worker on one address, as a service object."""

from __future__ import annotations

import logging
import socket
from typing import cast

import trio
from hypercorn.config import Config
from hypercorn.trio import serve
from hypercorn.typing import Framework

from meshcore.errors import MeshError

__all__ = ["AsgiServer", "ListenError", "probe_bind"]


class ListenError(MeshError):
    """A server could not listen on its address (in use, not local, ...)."""


def probe_bind(host: str, port: int) -> None:
    """Fail early, with :class:`ListenError`, if binding ``host:port`` would fail.

    hypercorn does not close the socket it made when ``bind`` fails, which would surface later
    as a ResourceWarning; binding a throw-away socket the same way first avoids that in
    practice (a port taken in between still ends up as :class:`ListenError`).
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as exc:
            raise ListenError(f"cannot listen on {host}:{port}: {exc.strerror}") from exc


class _BoundPort:
    """Turns hypercorn's ``started(["http://host:port"])`` into ``started(port)``."""

    def __init__(self, server: AsgiServer, outer: trio.TaskStatus[int]) -> None:
        self._server = server
        self._outer = outer
        self.done = False

    def started(self, value: list[str] | None = None) -> None:
        assert value, "hypercorn reports its binds"
        # "http://127.0.0.1:8080" or "http://[::1]:8080"
        self._server._port = int(value[0].rsplit(":", 1)[1])
        self.done = True
        self._outer.started(self._server._port)


class AsgiServer:
    """Owns one hypercorn server task.

    ``run`` serves until cancelled (which stops at once) or until :meth:`shutdown_nowait` or
    the ``shutdown`` event given (which stop accepting and let in-flight requests finish within
    ``graceful_timeout``).
    """

    def __init__(
        self,
        app: object,
        host: str,
        port: int,
        *,
        graceful_timeout: float = 1.0,
        error_logger: logging.Logger,
        keep_alive_timeout: float | None = None,
        shutdown: trio.Event | None = None,
        sock: socket.socket | None = None,
    ) -> None:
        """``sock``: an already listening socket (socket activation) served instead of
        binding ``host:port``; the server takes it over (it is closed when ``run`` returns)."""
        self._app = app
        self._sock = sock
        self._host = host
        self._port = port
        self._graceful_timeout = graceful_timeout
        self._error_logger = error_logger
        self._keep_alive_timeout = keep_alive_timeout
        self._shutdown = trio.Event() if shutdown is None else shutdown

    @property
    def port(self) -> int:
        """The bound port once ``run`` has started; the configured one before."""
        return self._port

    def shutdown_nowait(self) -> None:
        """Ask ``run`` to stop accepting, finish in-flight requests and return."""
        self._shutdown.set()

    async def run(self, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
        """Serve; reports the bound port through ``task_status`` once listening.

        Raises :class:`ListenError` if the address can't be bound.
        """
        config = Config()
        host = f"[{self._host}]" if ":" in self._host else self._host
        if self._sock is not None:
            # hypercorn's fd:// bind adopts the descriptor; detached so it has one owner.
            config.bind = [f"fd://{self._sock.detach()}"]
            self._sock = None
        else:
            config.bind = [f"{host}:{self._port}"]
            probe_bind(self._host, self._port)
        config.accesslog = None
        config.errorlog = self._error_logger
        config.graceful_timeout = self._graceful_timeout
        config.include_server_header = False
        if self._keep_alive_timeout is not None:
            config.keep_alive_timeout = self._keep_alive_timeout
        status = _BoundPort(self, task_status)
        try:
            # Starlette's and hypercorn's ASGI type aliases describe the same protocol in
            # incompatible terms (MutableMapping vs TypedDict scopes).
            app = cast("Framework", self._app)
            await serve(app, config, shutdown_trigger=self._shutdown.wait, task_status=status)
        except BaseExceptionGroup as group:
            # hypercorn nests its nurseries' groups; a bind failure is an OSError in there.
            _, rest = group.split(OSError)
            if status.done or rest is not None:
                raise
            raise ListenError(f"cannot listen on {config.bind[0]}") from group
