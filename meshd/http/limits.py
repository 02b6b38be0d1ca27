"""Bounds of the parts of an HTTP/1.1 message that llhttp parses as a head.

A head (and the trailer section of a chunked body, which llhttp parses like one) is bounded in
bytes and in header fields. httptools joins the pieces of a header field that arrives over
several reads, and llhttp keeps a partial line to itself, so the bytes of every read that
continues a head are counted as they come, before either holds them: an endless header costs
at most the limit plus one read, never quadratic copying.
"""

from __future__ import annotations

from typing import Final

from meshd.errors import ProxyError

#: Default limits of a response head (the listener's ``max_response_headers_kb`` and
#: ``max_response_header_count``).
DEFAULT_MAX_HEAD_BYTES: Final = 60 * 1024
DEFAULT_MAX_HEADERS: Final = 100


class HttpError(ProxyError):
    """Unacceptable input: answer with ``reason`` (its status from the one table) and close."""


class HeadLimits:
    """What the request and response parsers share: counting a head's bytes and header fields,
    and those of a trailer section, against the limits.

    The read that starts a head is counted by the parsers' callbacks (the start line, and
    each complete field through :meth:`_field`); the reads that continue it are counted whole.
    Subclasses name their reasons for "too large" and "too many fields".
    """

    __slots__ = (
        "_chunk_pending",
        "_count",
        "_head_bytes",
        "_in_head",
        "_max_head",
        "_max_headers",
        "_raw",
    )

    _too_large: str
    _too_many: str

    def __init__(self, max_head_bytes: int, max_headers: int) -> None:
        self._max_head = max_head_bytes
        self._max_headers = max_headers
        #: Head bytes reported by callbacks (start line and complete header fields).
        self._head_bytes = 0
        #: Header fields of the head being parsed.
        self._count = 0
        #: Raw bytes of reads that came while a head (or trailer section) was still open.
        self._raw = 0
        self._in_head = False
        #: A chunk header was parsed and no data followed yet: the last chunk, if it stays so.
        self._chunk_pending = False

    def _begin(self) -> None:
        self._in_head = True
        self._head_bytes = 0
        self._count = 0
        self._raw = 0
        self._chunk_pending = False

    def _field(self, name: bytes, value: bytes) -> bool:
        """Count a field line (of a head or a trailer section) against the limits; True if it
        belongs to the head being parsed, False for a trailer field (never merged into a head
        that was already sent)."""
        count = self._count = self._count + 1
        if count > self._max_headers:
            raise HttpError(self._too_many, f"more than {self._max_headers} header fields")
        size = self._head_bytes = self._head_bytes + len(name) + len(value) + 4
        if size > self._max_head:
            raise HttpError(self._too_large, "head too large")
        return self._in_head

    def _count_read(self, size: int, continuing: bool, in_trailers: bool) -> None:
        """After a read: bound a head or trailer section that is still incomplete."""
        if (continuing and self._in_head) or (in_trailers and self._chunk_pending):
            self._raw += size
            if self._raw > self._max_head:
                raise HttpError(self._too_large, "head too large")
        elif not self._chunk_pending:
            self._raw = 0

    def on_chunk_header(self) -> None:
        self._chunk_pending = True
