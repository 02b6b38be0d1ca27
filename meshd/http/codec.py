"""Sans-IO HTTP/1.1 message parsing on httptools (llhttp).

llhttp is strict where request smuggling lives: it rejects Content-Length together with
Transfer-Encoding, duplicate or malformed Content-Length, bad chunk sizes, obs-fold, bare LF and
invalid tokens. This module adds what llhttp leaves to its user: a size limit on the request
head, framing decisions, HEAD responses (llhttp can't know a response answers HEAD), and the
hop-by-hop header split, and the strict rules of :mod:`meshd.http.strict` (Host syntax, HTTP
versions, protected headers, mesh-internal headers dropped). Parsed headers keep their original
bytes; names to be dropped or rewritten are sorted out once, while parsing.

Heads and trailer sections are bounded in bytes and header fields (:mod:`meshd.http.limits`).
A plain head that came whole in one read is parsed in one pass by :mod:`meshd.http.quick`,
which takes only what llhttp would take and read alike; llhttp parses everything else. The
response parser lives in :mod:`meshd.http.response_codec` and is exported here.
"""

from __future__ import annotations

from typing import Final

import httptools

from meshd.http.heads import (
    CHUNKED,
    CONNECTION_OPTIONS,
    LENGTH,
    NO_BODY,
    SPECIAL,
    UNTIL_CLOSE,
    VERSION_BYTES,
    MessageHead,
    RequestHead,
    ResponseHead,
)
from meshd.http.limits import DEFAULT_MAX_HEADERS, HeadLimits, HttpError
from meshd.http.lookups import LOWER, request_line_version
from meshd.http.quick import request_head
from meshd.http.response_codec import ResponseParser
from meshd.http.strict import MESH_HEADER_PREFIX, SUPPORTED_VERSIONS, valid_host

__all__ = [
    "CHUNKED",
    "EV_DATA",
    "EV_END",
    "EV_HEAD",
    "LENGTH",
    "NO_BODY",
    "UNTIL_CLOSE",
    "HttpError",
    "MessageHead",
    "RequestHead",
    "RequestParser",
    "ResponseHead",
    "ResponseParser",
]

# Request events.
EV_HEAD: Final = 0
EV_DATA: Final = 1
EV_END: Final = 2


class RequestParser(HeadLimits):
    """Feeds bytes from a downstream connection; yields head/data/end events in order.

    Events pile up in :attr:`events` (at most one read's worth, since the caller drains them
    before reading more). After an upgrade request, :attr:`upgrade_tail` holds the bytes that
    followed its head: they belong to the tunnel, not to HTTP.
    """

    __slots__ = (
        "_between",
        "_head",
        "_parser",
        "_quick",
        "_start",
        "_url",
        "events",
        "upgrade_tail",
    )

    _too_large = "headers_too_large"
    _too_many = "too_many_headers"

    def __init__(
        self, max_head_bytes: int, max_headers: int = DEFAULT_MAX_HEADERS, *, quick: bool = True
    ) -> None:
        super().__init__(max_head_bytes, max_headers)
        self._parser = httptools.HttpRequestParser(self)
        #: Plain heads that came whole are parsed by meshd.http.quick (False: llhttp only).
        self._quick = quick
        self._head = RequestHead()
        self._url: list[bytes] = []
        # A list, not a deque: an empty deque is 760 bytes (its first block), a list 56, and
        # every open connection keeps one; the events of one read are few, so pop(0) is cheap.
        self.events: list[tuple[int, object]] = []
        self.upgrade_tail: bytes | bytearray | None = None
        #: No message in progress: the next byte llhttp takes starts one.
        self._between = True
        #: During a feed that began between messages: its data (see meshd.http.lookups).
        self._start: bytes | None = None

    @property
    def in_head(self) -> bool:
        """True between a request's first byte and the end of its head."""
        return self._in_head

    def feed(self, data: bytes | bytearray) -> None:
        """Parse ``data``; raises :class:`HttpError` on bad input."""
        if self._between and self._quick and isinstance(data, bytes):
            events = self.events
            while True:
                got = request_head(data, self._max_head, self._max_headers)
                if got is None:
                    break
                head, used = got
                events.append((EV_HEAD, head))
                events.append((EV_END, None))
                if used == len(data):
                    self._raw = 0  # as after a read that continued nothing
                    return
                data = data[used:]  # pipelined: the next request starts here
        continuing = self._in_head
        in_trailers = self._chunk_pending
        if self._between and isinstance(data, bytes):
            self._start = data
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade as exc:
            offset = exc.args[0] if exc.args and isinstance(exc.args[0], int) else len(data)
            self.upgrade_tail = data[offset:]
            return
        except httptools.HttpParserCallbackError as exc:
            if isinstance(exc.__context__, HttpError):
                raise exc.__context__ from None
            raise
        except httptools.HttpParserError as exc:
            raise HttpError("bad_request", str(exc)) from exc
        finally:
            self._start = None  # never kept past the feed
        self._count_read(len(data), continuing, in_trailers)
        if self._in_head:
            self._refuse_http09(data)

    def _refuse_http09(self, data: bytes | bytearray) -> None:
        """An HTTP/0.9 request line (no version) is refused once it ends, not after a timeout.

        llhttp reports 0.9 once a line follows it, and 0.0 (nothing parsed yet) right after its
        end; a version being parsed always shows as 1.x or more.
        """
        version = self._parser.get_http_version()
        if version == "0.9" or (version == "0.0" and data[-1:] == b"\n"):
            raise HttpError("unsupported_http_version", "HTTP/0.9 is not supported")

    # httptools callbacks -------------------------------------------------------------------

    def on_message_begin(self) -> None:
        self._head = RequestHead()
        self._url = []
        self._between = False
        self._begin()

    def on_url(self, url: bytes) -> None:
        self._url.append(url)
        size = self._head_bytes = self._head_bytes + len(url)  # the start line
        if size > self._max_head:
            raise HttpError(self._too_large, "head too large")

    def on_header(self, name: bytes, value: bytes) -> None:
        if not self._field(name, value):  # trailer fields too are bounded like a head
            return
        head = self._head
        lname = name.translate(LOWER)
        if lname in SPECIAL:
            head._special(lname, value)
        elif lname.startswith(MESH_HEADER_PREFIX):
            return  # only the mesh sets these: a client's copy never reaches anyone
        else:
            if lname == b"host":
                if head.host is not None:
                    raise HttpError("bad_request", "duplicate Host header")
                head.host = value
            head.headers.append((name, value))

    def on_headers_complete(self) -> None:
        head = self._head
        parser = self._parser
        head.method = method = parser.get_method()
        head.target = target = b"".join(self._url)
        start = self._start
        self._start = None  # a later message of the same feed did not start it
        version = b"" if start is None else request_line_version(start, method, target)
        if not version:
            asked = parser.get_http_version()
            version = VERSION_BYTES.get(asked) or asked.encode()
        head.version = version
        if version not in SUPPORTED_VERSIONS:
            raise HttpError("unsupported_http_version", f"HTTP/{version.decode()} is not supported")
        head.keep_alive = parser.should_keep_alive()
        if head.framing == NO_BODY and head.content_length > 0:
            head.framing = LENGTH
        if head.connection_tokens and not CONNECTION_OPTIONS.issuperset(head.connection_tokens):
            head._drop_connection_options()
        if head.upgrade is not None and b"upgrade" not in head.connection_tokens:
            head.upgrade = None  # Upgrade without Connection: upgrade is not a request for it
        if head.host is None:
            if head.version == b"1.1":
                raise HttpError("bad_request", "HTTP/1.1 request without Host")
        elif not valid_host(head.host):
            raise HttpError("invalid_host", "Host is not host[:port]")
        self._in_head = False
        self._count = 0  # trailer fields, if any, are counted on their own
        self._head_bytes = 0
        self.events.append((EV_HEAD, head))

    def on_body(self, body: bytes) -> None:
        self._chunk_pending = False
        self.events.append((EV_DATA, body))

    def on_message_complete(self) -> None:
        self._chunk_pending = False
        self._between = True
        self.events.append((EV_END, None))
