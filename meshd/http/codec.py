"""Sans-IO HTTP/1.1 message parsing on httptools (llhttp).

llhttp is strict where request smuggling lives: it rejects Content-Length together with
Transfer-Encoding, duplicate or malformed Content-Length, bad chunk sizes, obs-fold, bare LF and
invalid tokens. This module adds what llhttp leaves to its user: a size limit on the request
head, framing decisions, HEAD responses (llhttp can't know a response answers HEAD), and the
hop-by-hop header split, and the strict rules of :mod:`meshd.http.strict` (Host syntax, HTTP
versions, protected headers, mesh-internal headers dropped). Parsed headers keep their original
bytes; names to be dropped or rewritten are sorted out once, while parsing.

Heads and trailer sections are bounded in bytes and header fields (:mod:`meshd.http.limits`).
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
    SPECIAL_RESPONSE,
    UNTIL_CLOSE,
    VERSION_BYTES,
    MessageHead,
    RequestHead,
    ResponseHead,
)
from meshd.http.limits import DEFAULT_MAX_HEAD_BYTES, DEFAULT_MAX_HEADERS, HeadLimits, HttpError
from meshd.http.lookups import LOWER, decimal, request_line_version, status_line_version
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
        "_start",
        "_url",
        "events",
        "upgrade_tail",
    )

    _too_large = "headers_too_large"
    _too_many = "too_many_headers"

    def __init__(self, max_head_bytes: int, max_headers: int = DEFAULT_MAX_HEADERS) -> None:
        super().__init__(max_head_bytes, max_headers)
        self._parser = httptools.HttpRequestParser(self)
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
        if continuing or in_trailers:
            self._count_read(len(data), continuing, in_trailers)
        elif not self._chunk_pending:
            self._raw = 0  # what _count_read does for a read that continued nothing
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
        size = self._head_bytes = self._head_bytes + len(url)  # _count_line, inlined
        if size > self._max_head:
            raise HttpError(self._too_large, "head too large")

    def on_header(self, name: bytes, value: bytes) -> None:
        # Trailer fields too: they are bounded like a head. (HeadLimits._count_field, inlined:
        # this runs for every header of every request.)
        count = self._count = self._count + 1
        if count > self._max_headers:
            raise HttpError(self._too_many, f"more than {self._max_headers} header fields")
        size = self._head_bytes = self._head_bytes + len(name) + len(value) + 4
        if size > self._max_head:
            raise HttpError(self._too_large, "head too large")
        if not self._in_head:
            return  # a trailer field: never merged into the head that was already sent
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


class ResponseParser(HeadLimits):
    """Parses the responses of one upstream connection, one at a time.

    Call :meth:`reset` before each request's response: the parser needs to know whether the
    request was HEAD, because such a response has headers describing a body that never comes.
    A head over the limits raises ``upstream_response_headers_too_large``: the connection
    can't be reused after it.
    """

    __slots__ = (
        "_between",
        "_head",
        "_head_request",
        "_parser",
        "_stale",
        "_start",
        "body",
        "complete",
        "extra",
        "heads",
    )

    _too_large = "upstream_response_headers_too_large"
    _too_many = "upstream_response_headers_too_large"

    def __init__(
        self,
        *,
        head_request: bool = False,
        max_head_bytes: int = DEFAULT_MAX_HEAD_BYTES,
        max_headers: int = DEFAULT_MAX_HEADERS,
    ) -> None:
        super().__init__(max_head_bytes, max_headers)
        self._parser = httptools.HttpResponseParser(self)
        self._stale = False
        self._head_request = head_request
        self._head = ResponseHead()
        #: As in RequestParser.
        self._between = True
        self._start: bytes | None = None
        #: Heads parsed and not yet taken: zero or more 1xx, then the final one.
        self.heads: list[ResponseHead] = []
        #: Body pieces parsed and not yet taken.
        self.body: list[bytes] = []
        self.complete = False
        #: The upstream sent bytes after the response: the connection can't be reused.
        self.extra = False

    def reset(
        self,
        *,
        head_request: bool,
        max_head_bytes: int = DEFAULT_MAX_HEAD_BYTES,
        max_headers: int = DEFAULT_MAX_HEADERS,
    ) -> None:
        """Get ready for the response to the next request (under the listener's limits)."""
        if self._stale:
            self._parser = httptools.HttpResponseParser(self)
            self._stale = False
            self._between = True
        self._head_request = head_request
        self._max_head = max_head_bytes
        self._max_headers = max_headers
        self.heads.clear()
        self.body.clear()
        self.complete = False
        self.extra = False

    def feed(self, data: bytes) -> bytes | None:
        """Parse ``data``. Returns the bytes after a 101 response (they belong to the tunnel).

        Bytes after a complete response set :attr:`extra` (in ``on_message_begin``, or
        below when they don't even parse).
        """
        continuing = self._in_head
        in_trailers = self._chunk_pending
        if self._between:
            self._start = data
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade as exc:
            offset = exc.args[0] if exc.args and isinstance(exc.args[0], int) else len(data)
            return data[offset:]
        except httptools.HttpParserCallbackError as exc:
            context = exc.__context__
            if isinstance(context, _HeadDoneError):
                return None
            self._stale = True
            if isinstance(context, HttpError):
                raise context from None
            raise  # a bug of ours, not the upstream's: never disguised as a 502
        except httptools.HttpParserError as exc:
            if self.complete:
                # Junk after a complete response: keep the response, drop the connection.
                self.extra = True
                self._stale = True
                return None
            raise HttpError("upstream_protocol_error", str(exc)) from exc
        finally:
            self._start = None  # never kept past the feed
        if continuing or in_trailers:
            self._count_read(len(data), continuing, in_trailers)
        elif not self._chunk_pending:
            self._raw = 0  # what _count_read does for a read that continued nothing
        return None

    def on_message_begin(self) -> None:
        if self.complete:
            # Bytes after a complete response, even in the same read, are never parsed as a
            # response of their own: relayed, they would answer the client's next request.
            self.extra = True
            self._stale = True
            raise _HeadDoneError
        self._head = ResponseHead()
        self._between = False
        self._begin()

    def on_status(self, reason: bytes) -> None:
        size = self._head_bytes = self._head_bytes + len(reason)  # _count_line, inlined
        if size > self._max_head:
            raise HttpError(self._too_large, "head too large")
        self._head.reason += reason

    def on_header(self, name: bytes, value: bytes) -> None:
        # HeadLimits._count_field, inlined: this runs for every header of every response.
        count = self._count = self._count + 1
        if count > self._max_headers:
            raise HttpError(self._too_many, f"more than {self._max_headers} header fields")
        size = self._head_bytes = self._head_bytes + len(name) + len(value) + 4
        if size > self._max_head:
            raise HttpError(self._too_large, "head too large")
        if not self._in_head:
            return  # a trailer field: never merged into the head that was already sent
        lname = name.translate(LOWER)
        if lname in SPECIAL_RESPONSE:
            if lname == b"content-length":
                self._head.content_length = decimal(value)  # llhttp has validated it
            else:
                self._head._special(lname, value)
        else:
            self._head.headers.append((name, value))

    def on_headers_complete(self) -> None:
        head = self._head
        parser = self._parser
        self._in_head = False
        self._count = 0
        self._head_bytes = 0
        start = self._start
        self._start = None  # a later message of the same feed did not start it
        version = b"" if start is None else status_line_version(start)
        if (version or VERSION_BYTES.get(parser.get_http_version())) not in SUPPORTED_VERSIONS:
            raise HttpError("upstream_protocol_error", "not an HTTP/1.x response")
        head.status = status = parser.get_status_code()
        head.keep_alive = parser.should_keep_alive()
        if head.connection_tokens and not CONNECTION_OPTIONS.issuperset(head.connection_tokens):
            head._drop_connection_options()
        if status < 200 or status in (204, 304) or self._head_request:
            head.framing = NO_BODY
        elif head.framing == NO_BODY:
            # No chunking and no Content-Length: the body runs until the upstream closes.
            head.framing = LENGTH if head.content_length >= 0 else UNTIL_CLOSE
        self.heads.append(head)
        if self._head_request and status >= 200:
            # llhttp would wait for the body the headers describe; a HEAD response has none.
            self.complete = True
            self._stale = True
            raise _HeadDoneError

    def on_body(self, body: bytes) -> None:
        self._chunk_pending = False
        self.body.append(body)

    def on_message_complete(self) -> None:
        self._chunk_pending = False
        self._between = True
        if self._head.status >= 200 or self._head.status == 101:
            self.complete = True


class _HeadDoneError(Exception):
    """Stops llhttp after a HEAD response's head, or at bytes after a complete response."""
