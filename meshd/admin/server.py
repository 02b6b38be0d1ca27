"""Serves the admin app with hypercorn's Trio worker on a local address."""

from __future__ import annotations

import logging
import socket

import trio
from starlette.types import ASGIApp

from meshcore.runtime.asgi import AsgiServer, ListenError
from meshd.errors import MeshdError

__all__ = ["AdminBindError", "AdminServer"]


class AdminBindError(MeshdError):
    """The admin server could not listen on its address (in use, not local, ...)."""


class AdminServer(AsgiServer):
    """Owns the admin HTTP server task.

    ``run`` serves until cancelled (which stops at once) or until :meth:`shutdown_nowait`
    (which stops accepting and lets in-flight requests finish within ``graceful_timeout``).
    """

    def __init__(
        self,
        app: ASGIApp,
        host: str,
        port: int,
        *,
        graceful_timeout: float = 1.0,
        error_logger: logging.Logger | None = None,
        sock: socket.socket | None = None,
    ) -> None:
        # A named stdlib logger rather than hypercorn's default "-": that one installs its own
        # stderr handler on the process-wide "hypercorn.error" logger. Unconfigured, this one
        # shows only warnings and errors; structlog's stdlib integration picks it up otherwise.
        super().__init__(
            app,
            host,
            port,
            graceful_timeout=graceful_timeout,
            error_logger=error_logger or logging.getLogger("meshd.admin"),
            sock=sock,
        )

    async def run(self, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
        """Serve; reports the bound port through ``task_status`` once listening.

        Raises :class:`AdminBindError` if the address can't be bound.
        """
        try:
            await super().run(task_status=task_status)
        except ListenError as exc:
            raise AdminBindError(str(exc)) from exc
