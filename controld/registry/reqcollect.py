"""The httptools callbacks of the lean HTTP server: one request at a time, bounded.

The server (:mod:`controld.registry.httpserver`) feeds the parser; this collects what it
reports: the head (URL and headers, counted against the header limit), the body (bounded by
:data:`MAX_BODY`), and the requests completed so far, in order.
"""

from __future__ import annotations

import trio

__all__ = ["MAX_BODY", "RequestCollector"]

#: Largest request body the server buffers; over it: 413.
MAX_BODY = 8 * 1024 * 1024


class RequestCollector:
    """httptools callbacks collecting one request at a time."""

    __slots__ = (
        "awaiting_body",
        "body",
        "complete",
        "continue_",
        "head_bytes",
        "head_started",
        "headers",
        "in_head",
        "max_headers",
        "too_large",
        "too_many_headers",
        "url",
    )

    def __init__(self, max_headers: int) -> None:
        self.url = b""
        self.headers: list[tuple[bytes, bytes]] = []
        self.body: list[bytes] = []
        self.complete: list[tuple[bytes, list[tuple[bytes, bytes]], bytes]] = []
        #: Bytes received while a head was incomplete (counted by the server, reset per request).
        self.head_bytes = 0
        #: Between a request's first byte and the end of its head.
        self.in_head = False
        self.head_started = 0.0
        self.too_large = False
        self.max_headers = max_headers
        #: Sticky: the connection is answered 431 and closed.
        self.too_many_headers = False
        self.continue_ = False
        #: The head of the request being read is complete, its body is not (yet).
        self.awaiting_body = False

    def on_message_begin(self) -> None:
        self.in_head = True
        self.head_started = trio.current_time()

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        if len(self.headers) >= self.max_headers:
            self.too_many_headers = True
            return
        self.headers.append((name.lower(), value))

    def on_headers_complete(self) -> None:
        self.in_head = False
        self.awaiting_body = True
        self.head_bytes = 0
        for name, value in self.headers:
            if name == b"expect" and value.lower() == b"100-continue":
                self.continue_ = True

    def on_body(self, body: bytes) -> None:
        if sum(map(len, self.body)) + len(body) > MAX_BODY:
            self.too_large = True
            return
        self.body.append(body)

    def on_message_complete(self) -> None:
        self.awaiting_body = False
        self.complete.append((self.url, self.headers, b"".join(self.body)))
        self.url = b""
        self.headers = []
        self.body = []
