"""structlog setup for the daemons: JSON lines for journald/collectors, or a console view.

Call :func:`configure_logging` once, from a daemon's entry point only; library code just
calls ``structlog.get_logger(name)`` and binds per-connection fields with
``structlog.contextvars``.
"""

from __future__ import annotations

import logging
import sys
from typing import TextIO

import structlog
import structlog.tracebacks
from structlog.typing import EventDict, Processor, WrappedLogger

__all__ = ["LogLevel", "configure_logging"]


class _NamedWriteLogger(structlog.WriteLogger):
    """A ``WriteLogger`` that remembers the name given to ``structlog.get_logger(name)``."""

    def __init__(self, file: TextIO, name: str | None) -> None:
        super().__init__(file)
        self.name = name


class _NamedWriteLoggerFactory:
    def __init__(self, file: TextIO) -> None:
        self._file = file

    def __call__(self, *args: object) -> _NamedWriteLogger:
        name = args[0] if args and isinstance(args[0], str) else None
        return _NamedWriteLogger(self._file, name)


def _add_logger_name(logger: WrappedLogger, method_name: str, event_dict: EventDict) -> EventDict:
    name = getattr(logger, "name", None)
    if name and "logger" not in event_dict:
        event_dict["logger"] = name
    return event_dict


def _numeric(level: str) -> int:
    numeric = logging.getLevelNamesMapping().get(level.upper())
    if numeric is None:
        raise ValueError(f"unknown log level {level!r}")
    return numeric


# structlog method names that are not stdlib level names.
_METHOD_LEVELS = {"warn": logging.WARNING, "exception": logging.ERROR, "fatal": logging.CRITICAL}


class LogLevel:
    """The threshold of a reloadable configuration (``configure_logging(reloadable=True)``).

    A processor rather than structlog's filtering logger classes, because those are bound
    into each logger on first use and so can't change afterwards.
    """

    __slots__ = ("name", "numeric")

    def __init__(self, level: str) -> None:
        self.numeric = _numeric(level)
        self.name = level.lower()

    def set(self, level: str) -> None:
        """Log at ``level`` from now on; ValueError for an unknown name."""
        self.numeric = _numeric(level)
        self.name = level.lower()

    def __call__(self, logger: WrappedLogger, method_name: str, event_dict: EventDict) -> EventDict:
        numeric = _METHOD_LEVELS.get(method_name)
        if numeric is None:
            numeric = logging.getLevelNamesMapping().get(method_name.upper(), logging.INFO)
        if numeric < self.numeric:
            raise structlog.DropEvent
        return event_dict


def configure_logging(
    *, json: bool = True, level: str = "info", stream: TextIO = sys.stderr, reloadable: bool = False
) -> LogLevel | None:
    """Configure structlog globally: level filtering, contextvars, then JSON or console output.

    JSON lines carry ``timestamp`` (ISO 8601, UTC), ``level``, ``event``, ``logger`` (when the
    logger was named) and every bound or contextvars field. ``level`` is a stdlib level name
    (``debug``, ``info``, ``warning``, ``error``, ``critical``); unknown names raise ValueError.
    With ``reloadable`` the level can be changed later through the returned :class:`LogLevel`
    (at the cost of building the event of every filtered-out call); else None is returned.
    """
    numeric = _numeric(level)
    threshold = LogLevel(level) if reloadable else None
    processors: list[Processor] = [] if threshold is None else [threshold]
    processors += [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        _add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.StackInfoRenderer(),
    ]
    if json:
        # No locals in tracebacks: they may hold tokens or keys and bloat every line.
        tracebacks = structlog.processors.ExceptionRenderer(
            structlog.tracebacks.ExceptionDictTransformer(show_locals=False)
        )
        processors += [tracebacks, structlog.processors.JSONRenderer()]
    else:
        processors.append(structlog.dev.ConsoleRenderer(colors=_isatty(stream)))
    structlog.configure(
        processors=processors,
        wrapper_class=structlog.make_filtering_bound_logger(
            logging.NOTSET if threshold is not None else numeric
        ),
        context_class=dict,
        logger_factory=_NamedWriteLoggerFactory(stream),
        cache_logger_on_first_use=True,
    )
    return threshold


def _isatty(stream: TextIO) -> bool:
    isatty = getattr(stream, "isatty", None)
    return bool(isatty and isatty())
