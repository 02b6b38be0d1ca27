"""Sans-IO parsing of an upstream's HTTP/1.1 responses on httptools (llhttp).

The response side of :mod:`meshd.http.codec` (which exports it): llhttp's checks, the limits of
:mod:`meshd.http.limits`, what a response to HEAD is, bytes after a complete response, and
the plain responses :mod:`meshd.http.quick` parses in one pass.
"""

from __future__ import annotations

import httptools

from meshd.http.heads import (
    CONNECTION_OPTIONS,
    LENGTH,
    NO_BODY,
    SPECIAL_RESPONSE,
    UNTIL_CLOSE,
    VERSION_BYTES,
    ResponseHead,
)
from meshd.http.limits import DEFAULT_MAX_HEAD_BYTES, DEFAULT_MAX_HEADERS, HeadLimits, HttpError
from meshd.http.lookups import LOWER, decimal, status_line_version
from meshd.http.quick import response_head
from meshd.http.strict import SUPPORTED_VERSIONS

__all__ = ["ResponseParser"]


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
        "_quick",
        "_stale",
        "_start",
        "as_sent",
        "body",
        "complete",
        "extra",
        "heads",
        "whole",
    )

    _too_large = "upstream_response_headers_too_large"
    _too_many = "upstream_response_headers_too_large"

    def __init__(
        self,
        *,
        head_request: bool = False,
        max_head_bytes: int = DEFAULT_MAX_HEAD_BYTES,
        max_headers: int = DEFAULT_MAX_HEADERS,
        quick: bool = True,
    ) -> None:
        super().__init__(max_head_bytes, max_headers)
        self._parser = httptools.HttpResponseParser(self)
        #: As in RequestParser.
        self._quick = quick
        self._stale = False
        self._head_request = head_request
        self.as_sent = False
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
        #: The response's bytes, head and body, when they came in one read that
        #: :mod:`meshd.http.quick` took, less its hop-by-hop field line if it had one: what to
        #: relay when the proxy changes nothing in it. None otherwise.
        self.whole: bytes | None = None

    def reset(
        self,
        *,
        head_request: bool,
        max_head_bytes: int = DEFAULT_MAX_HEAD_BYTES,
        max_headers: int = DEFAULT_MAX_HEADERS,
        as_sent: bool = False,
    ) -> None:
        """Get ready for the response to the next request (under the listener's limits).
        ``as_sent``: it is to be relayed as it came if it can (:func:`response_head`)."""
        if self._stale:
            self._parser = httptools.HttpResponseParser(self)
            self._stale = False
            self._between = True
        self._head_request = head_request
        self.as_sent = as_sent
        self._max_head = max_head_bytes
        self._max_headers = max_headers
        self.heads.clear()
        self.body.clear()
        self.complete = False
        self.extra = False
        self.whole = None

    def feed(self, data: bytes) -> bytes | None:
        """Parse ``data``. Returns the bytes after a 101 response (they belong to the tunnel).

        Bytes after a complete response set :attr:`extra` (in ``on_message_begin``, or
        below when they don't even parse).
        """
        if self._between and self._quick and not self.complete:
            got = response_head(
                data, self._head_request, self._max_head, self._max_headers, as_sent=self.as_sent
            )
            if got is not None:
                head, end = got
                self.heads.append(head)
                length = head.content_length
                if length > 0 and head.framing == LENGTH:
                    self.body.append(data[end - length : end])
                self.complete = True
                # Bytes after the response are never a response of their own (on_message_begin)
                extra = self.extra = end < len(data)
                if not head.hop_fields:
                    cut = head.cut_to
                    if cut:  # the one hop-by-hop line cut out
                        self.whole = data[: head.cut_from] + data[cut:end]
                    else:
                        self.whole = data[:end] if extra else data
                self._raw = 0
                return None
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
        self._count_read(len(data), continuing, in_trailers)
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
        size = self._head_bytes = self._head_bytes + len(reason)  # the start line
        if size > self._max_head:
            raise HttpError(self._too_large, "head too large")
        self._head.reason += reason

    def on_header(self, name: bytes, value: bytes) -> None:
        if not self._field(name, value):
            return
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
