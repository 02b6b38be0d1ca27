"""Wire models of controld's control-plane event stream (``GET /v1/events``).

controld keeps a bounded, in-memory journal of what happens in the control plane: sidecars
registering, connecting and going away, snapshots pushed, ACKed and NACKed, features a sidecar
can't enforce, drains, resource changes, certificates and CA rotation steps, endpoints joining
and leaving their service's healthy set. Each event has a
sequence number; a reader asks for the events after the last one it saw, and the call
long-polls (answers at once when newer events exist, else waits up to ``wait_s``).

* ``GET /v1/events?after=N&wait_s=S&limit=L`` (operator token) -> :class:`ControlEvents`

The journal lives in memory: a restarted controld starts again at sequence 1, and a reader
whose ``after`` is beyond the newest event gets everything held with ``reset`` set. The oldest
events are dropped first when the journal is full; ``missed`` counts the ones a reader lost.
Answers ignore unknown fields when parsed (a newer controld may add some).
"""

from __future__ import annotations

from typing import Final, Literal

from pydantic import BaseModel, ConfigDict

__all__ = [
    "DEFAULT_EVENTS_LIMIT",
    "DEFAULT_EVENTS_WAIT_S",
    "EVENTS_PATH",
    "EVENT_KINDS",
    "MAX_EVENTS_LIMIT",
    "MAX_EVENTS_WAIT_S",
    "ControlEvent",
    "ControlEvents",
    "Severity",
]

EVENTS_PATH: Final = "/v1/events"
#: Longest wait of one call.
MAX_EVENTS_WAIT_S: Final = 30.0
DEFAULT_EVENTS_WAIT_S: Final = 0.0
#: Most events one call returns.
MAX_EVENTS_LIMIT: Final = 1000
DEFAULT_EVENTS_LIMIT: Final = 100

Severity = Literal["info", "warning", "error"]

#: Every kind controld records, with what its ``subject`` and ``detail`` hold.
EVENT_KINDS: Final[dict[str, str]] = {
    "sidecar.registered": "a new proxy id registered (subject: proxy id; detail: service)",
    "sidecar.deregistered": "controld forgot a sidecar (subject: proxy id)",
    "sidecar.connected": "a sidecar's long-poll started (subject: proxy id)",
    "sidecar.disconnected": "a sidecar stopped polling beyond twice its wait (warning)",
    "sidecar.unsupported": "the sidecar's snapshot uses features it doesn't enforce (warning)",
    "sidecar.drain_requested": "an operator asked a sidecar to drain",
    "snapshot.pushed": "a snapshot version was handed to a sidecar",
    "snapshot.acked": "a sidecar runs the latest snapshot version",
    "snapshot.nacked": "a sidecar rejected a snapshot (error; detail: its first error line)",
    "resource.created": "a policy resource was created (subject: kind/name; detail: who)",
    "resource.updated": "a policy resource was changed (subject: kind/name; detail: who)",
    "resource.deleted": "a policy resource was deleted (subject: kind/name; detail: who)",
    "cert.issued": "a sidecar enrolled and got its first leaf (subject: SPIFFE ID)",
    "cert.renewed": "a sidecar's leaf was renewed (subject: SPIFFE ID)",
    "ca.rotation": "a CA root rotation step (subject: step; detail: phase and signer)",
    "endpoint.healthy": "an endpoint joined its service's healthy set (subject: service/addr)",
    "endpoint.unhealthy": "an endpoint left it: failing or deregistered (warning)",
}


class ControlEvent(BaseModel):
    """One control-plane event."""

    model_config = ConfigDict(frozen=True)

    #: Position in the journal (1, 2, ...; restarts at 1 with controld).
    seq: int
    #: When it happened, RFC 3339 UTC (``2026-12-06T11:24:01.123Z``).
    time: str
    #: One of :data:`EVENT_KINDS` (a newer controld may add kinds).
    kind: str
    #: What it is about: a proxy id, ``Kind/name`` of a resource, a SPIFFE ID, a step.
    subject: str
    detail: str = ""
    severity: Severity = "info"


class ControlEvents(BaseModel):
    """Answer of ``GET /v1/events``: the events after ``after``, oldest first."""

    model_config = ConfigDict(frozen=True)

    events: tuple[ControlEvent, ...] = ()
    #: The ``after`` of the next call (the last returned seq, else the ``after`` asked).
    next: int
    #: Events after ``after`` dropped from the journal before this call read them.
    missed: int = 0
    #: ``after`` was beyond the newest event (controld restarted): these start again at 1.
    reset: bool = False
