"""Wire models of the routes a sidecar calls on controld: registration, the snapshot long-poll,
NACK. Enrollment, renewal and the trust bundle are in :mod:`meshcore.api.enroll`.

Paths (push listener with the sidecar token, or the TLS listener over mutual TLS):

* ``POST /v1/proxies/{proxy_id}`` (a :class:`~meshcore.model.proxy.ProxyDescriptor`)
  -> :class:`Registered`
* ``GET /v1/snapshots/{proxy_id}?version=V&hash=H&wait=W`` -> ``200`` :class:`SnapshotAnswer`
  with a snapshot newer than ``H``, or ``304`` (no body) after up to ``W`` seconds; the poll
  reports (ACKs) the snapshot ``V``/``H`` in service; ``404``: unknown proxy, register again.
* ``POST /v1/snapshots/{proxy_id}/nack`` (:class:`NackRequest`) -> ``204``

Headers: every request carries the snapshot features the sidecar enforces
(:data:`FEATURES_HEADER`); a poll answer with ``x-meshd-drain: 1`` (:data:`DRAIN_HEADER`)
relays an operator's drain request. Error answers have the shape of every controld route
(``{"error": <text>, ...}``).

Answers ignore unknown fields when parsed (a newer controld may add some); requests refuse
them. Field names are the wire format shared with older sidecars and controlds: never rename.
"""

from __future__ import annotations

from typing import Any, Final
from urllib.parse import quote

from pydantic import Field

from meshcore.api.telemetry import Answer, Request
from meshcore.model.features import FEATURES_HEADER
from meshcore.model.snapshot import Snapshot

__all__ = [
    "DEFAULT_WAIT_S",
    "DRAIN_HEADER",
    "DRAIN_VALUE",
    "FEATURES_HEADER",
    "HASH_PARAM",
    "MAX_NACK_ERROR",
    "NACK_ROUTE",
    "PROXY_ROUTE",
    "SNAPSHOT_ROUTE",
    "VERSION_PARAM",
    "WAIT_PARAM",
    "NackRequest",
    "RawSnapshotAnswer",
    "Registered",
    "SnapshotAnswer",
    "nack_path",
    "path_segment",
    "proxy_path",
    "snapshot_path",
    "snapshot_query",
]

#: Route templates (as servers declare them; clients use the ``*_path`` functions).
PROXY_ROUTE: Final = "/v1/proxies/{proxy_id}"
SNAPSHOT_ROUTE: Final = "/v1/snapshots/{proxy_id}"
NACK_ROUTE: Final = "/v1/snapshots/{proxy_id}/nack"

#: Query parameters of the long-poll: the version and hash in service, seconds to wait.
VERSION_PARAM: Final = "version"
HASH_PARAM: Final = "hash"
WAIT_PARAM: Final = "wait"
#: ``wait`` when a poll names none.
DEFAULT_WAIT_S: Final = 30.0

#: Header of a poll answer telling the sidecar to drain (an operator asked for it) ...
DRAIN_HEADER: Final = "x-meshd-drain"
#: ... with this value.
DRAIN_VALUE: Final = "1"

#: Longest NACK error text kept (a sidecar's validation errors can be long): the sidecar
#: sends at most this much, controld keeps at most this much.
MAX_NACK_ERROR: Final = 4096


def path_segment(value: str) -> str:
    """``value`` quoted for use as one path segment."""
    return quote(value, safe="")


def proxy_path(proxy_id: str) -> str:
    """``/v1/proxies/{proxy_id}`` (registration; ``proxy_id`` is quoted here)."""
    return PROXY_ROUTE.format(proxy_id=path_segment(proxy_id))


def snapshot_path(proxy_id: str) -> str:
    """``/v1/snapshots/{proxy_id}`` (the long-poll; ``proxy_id`` is quoted here)."""
    return SNAPSHOT_ROUTE.format(proxy_id=path_segment(proxy_id))


def nack_path(proxy_id: str) -> str:
    """``/v1/snapshots/{proxy_id}/nack`` (``proxy_id`` is quoted here)."""
    return NACK_ROUTE.format(proxy_id=path_segment(proxy_id))


def snapshot_query(version: int | None, hash: str | None, wait_s: float) -> dict[str, str]:
    """The long-poll's query: the snapshot in service (both or neither) and the wait."""
    query: dict[str, str] = {}
    if version is not None and hash is not None:
        query = {VERSION_PARAM: str(version), HASH_PARAM: hash}
    query[WAIT_PARAM] = f"{wait_s:g}"
    return query


class Registered(Answer):
    """Answer of ``POST /v1/proxies/{proxy_id}``."""

    proxy_id: str


class _SnapshotHead(Answer):
    """What identifies the snapshot of a long-poll answer."""

    #: Strict: a version or hash of another JSON type is a malformed answer, not a coercion.
    version: int = Field(strict=True, ge=0)
    #: Bounded like :attr:`NackRequest.hash`, so that a snapshot can always be NACKed.
    hash: str = Field(strict=True, min_length=1, max_length=256)


class SnapshotAnswer(_SnapshotHead):
    """A ``200`` answer of the long-poll: the snapshot (whose own ``version`` is ``version``).

    controld sends it pre-serialized (built once per compiled snapshot for every poll it
    wakes); a test holds that body to this model.
    """

    snapshot: Snapshot


class RawSnapshotAnswer(_SnapshotHead):
    """A :class:`SnapshotAnswer` with its snapshot left as a JSON object.

    How a sidecar reads the answer: a malformed answer (no version or hash) is controld's
    fault and retried, while a snapshot that fails validation is the sidecar's rejection
    (NACKed with the version and hash), which needs the two told apart. It also skips
    validating a snapshot whose hash is the one in service.
    """

    snapshot: dict[str, Any]


class NackRequest(Request):
    """Body of ``POST /v1/snapshots/{proxy_id}/nack``: the snapshot the sidecar rejected."""

    version: int
    hash: str = Field(max_length=256)
    #: Why (controld keeps at most :data:`MAX_NACK_ERROR` characters of it).
    error: str
