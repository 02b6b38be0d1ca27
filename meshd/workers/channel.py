"""The primary-worker channel's messages: JSON objects, one per line (sans-IO).

The primary and each worker share a Unix socketpair (the worker's end is passed to it as an
inherited fd). Primary -> worker:

* ``{"kind": "identity", "key", "cert", "bundle": [...]}`` the workload identity in force
  (``{"kind": "identity"}`` without material: none, or it expired);
* ``{"kind": "revoked", "serials": ["<hex>", ...]}`` revoked peer certificates;
* ``{"kind": "snapshot", "version", "snapshot": {...}}`` (controld mode) the snapshot the
  primary applied;
* ``{"kind": "synced"}`` after the first batch: the worker may start serving;
* ``{"kind": "drain"}`` the primary's drain delay began (the closing comes as SIGTERM).

Worker -> primary: ``{"kind": "applied", "version"}`` and
``{"kind": "rejected", "version", "error"}``.

The channel only ever connects a process to its own child, so the private key travels over
it (never through a file of its own).
"""

from __future__ import annotations

import json
from typing import Any

__all__ = ["MAX_MESSAGE", "ChannelError", "LineReader", "encode"]

#: Largest message accepted (a snapshot of a big mesh is a few MB at most).
MAX_MESSAGE = 64 * 1024 * 1024


class ChannelError(Exception):
    """A malformed or oversized message: the channel is closed."""


def encode(message: dict[str, Any]) -> bytes:
    """One message as a line of compact JSON."""
    return json.dumps(message, separators=(",", ":")).encode("utf-8") + b"\n"


class LineReader:
    """Splits received bytes into messages (dicts with a string ``kind``)."""

    def __init__(self, max_message: int = MAX_MESSAGE) -> None:
        self._buffer = bytearray()
        self._max = max_message

    def feed(self, data: bytes | bytearray) -> list[dict[str, Any]]:
        """The complete messages ``data`` finished; raises :class:`ChannelError`."""
        self._buffer += data
        out: list[dict[str, Any]] = []
        while True:
            end = self._buffer.find(b"\n")
            if end < 0:
                if len(self._buffer) > self._max:
                    raise ChannelError(f"message larger than {self._max} bytes")
                return out
            line = bytes(self._buffer[:end])
            del self._buffer[: end + 1]
            try:
                message = json.loads(line)
            except ValueError as exc:
                raise ChannelError(f"not JSON: {exc}") from exc
            if not isinstance(message, dict) or not isinstance(message.get("kind"), str):
                raise ChannelError("a message is a JSON object with a string kind")
            out.append(message)
