"""Parsed HTTP/1.1 message heads, and what the parser sorts out of them while parsing.

A head keeps the header fields to forward as they came; the framing, hop-by-hop and tracing
headers (:data:`SPECIAL`) are read into fields instead, for the proxy to regenerate.
"""

from __future__ import annotations

from typing import Final

from meshd.http.lookups import connection_tokens, decimal
from meshd.http.strict import removable

__all__ = [
    "CHUNKED",
    "CONNECTION_OPTIONS",
    "LENGTH",
    "NO_BODY",
    "SPECIAL",
    "SPECIAL_RESPONSE",
    "UNTIL_CLOSE",
    "VERSION_BYTES",
    "MessageHead",
    "RequestHead",
    "ResponseHead",
]

# Framing of a message body.
NO_BODY: Final = 0
LENGTH: Final = 1
CHUNKED: Final = 2
UNTIL_CLOSE: Final = 3


#: Headers a proxy must not forward as they are (RFC 9110 7.6.1), plus the framing headers it
#: regenerates itself and the tracing headers it rewrites.
SPECIAL: Final = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
        b"content-length",
        b"expect",
        b"x-forwarded-for",
        b"x-request-id",
        b"traceparent",
    }
)
#: Of those, the ones that matter in a response.
SPECIAL_RESPONSE: Final = SPECIAL - {
    b"expect",
    b"x-forwarded-for",
    b"x-request-id",
    b"traceparent",
}
CONNECTION_OPTIONS: Final = frozenset({b"close", b"keep-alive", b"upgrade", b""})
#: llhttp's version string -> the bytes heads carry (saves an encode per message).
VERSION_BYTES: Final = {"1.1": b"1.1", "1.0": b"1.0"}


class MessageHead:
    """Fields common to request and response heads.

    Defaults live on the class, so a new head costs one allocation and only the fields a
    message actually has are ever written.
    """

    #: Headers to forward as they are, in order (always set per instance).
    headers: list[tuple[bytes, bytes]]
    version = b"1.1"
    framing = NO_BODY
    #: -1 when the message has no Content-Length header.
    content_length = -1
    keep_alive = True
    upgrade: bytes | None = None
    expect_continue = False
    connection_tokens: tuple[bytes, ...] = ()
    xff: bytes | None = None
    request_id: bytes | None = None
    traceparent: bytes | None = None

    def __init__(self) -> None:
        self.headers = []

    def _special(self, lname: bytes, value: bytes) -> None:
        if lname == b"content-length":
            self.content_length = decimal(value)  # llhttp has validated it
        elif lname == b"transfer-encoding":
            self.framing = CHUNKED if value.lower().rstrip().endswith(b"chunked") else UNTIL_CLOSE
        elif lname == b"connection":
            self.connection_tokens += connection_tokens(value)
        elif lname == b"upgrade":
            self.upgrade = value
        elif lname == b"expect":
            self.expect_continue = value.lower() == b"100-continue"
        elif lname == b"x-forwarded-for":
            self.xff = value if self.xff is None else self.xff + b", " + value
        elif lname == b"x-request-id":
            self.request_id = value
        elif lname == b"traceparent":
            self.traceparent = value

    def _drop_connection_options(self) -> None:
        """Remove headers named by Connection (they are hop-by-hop too), unless protected."""
        named = {t for t in self.connection_tokens if t not in CONNECTION_OPTIONS and removable(t)}
        if named:
            self.headers = [(n, v) for n, v in self.headers if n.lower() not in named]


class RequestHead(MessageHead):
    """A parsed request head."""

    method = b""
    target = b""
    host: bytes | None = None

    @property
    def path(self) -> str:
        """The target's path, without the query string, for route matching."""
        return self.target.partition(b"?")[0].decode("latin-1")


class ResponseHead(MessageHead):
    """A parsed response head."""

    status = 0
    reason = b""
    #: Set by :mod:`meshd.http.quick`: the head's bytes need more than one hop-by-hop field
    #: line cut out (Connection, Keep-Alive, TE, Trailer), or fields a Connection names.
    hop_fields = False
    #: Set by :mod:`meshd.http.quick`: where the one hop-by-hop field line is (0, 0: none).
    cut_from = 0
    cut_to = 0
