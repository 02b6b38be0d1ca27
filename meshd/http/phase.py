"""The phases of a downstream HTTP connection (:mod:`meshd.http.connection`)."""

from __future__ import annotations

import enum

__all__ = ["Phase"]


class Phase(enum.Enum):
    """Where a downstream connection is; what happens when its deadline passes depends on it."""

    #: Waiting for the next request (keep-alive idle deadline: close quietly).
    IDLE = "idle"
    #: Part of a request head arrived (request head deadline: 408).
    HEAD = "head"
    #: A request is being served (route deadline: 504, or a reset once a head is out).
    REQUEST = "request"
    #: After a 101: bytes both ways (the pump's own idle timeout).
    TUNNEL = "tunnel"
    #: No more requests: the connection ends.
    CLOSING = "closing"
