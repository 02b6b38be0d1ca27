"""Turn parsed heads back into bytes for the next hop."""

from __future__ import annotations

from typing import Final

from meshd.http.codec import CHUNKED, LENGTH, NO_BODY, RequestHead, ResponseHead

_STATUS: Final = {code: str(code).encode() for code in range(100, 600)}


def _put_fields(parts: list[bytes], headers: list[tuple[bytes, bytes]]) -> None:
    """Append the header lines to ``parts``: the head is joined once, at the end.

    A line each, formatted with ``%b``: compiled with mypyc that is one bytes made from its
    parts (``CPyBytes_Build``), cheaper than the join's work on four parts; and a loop of list
    appends costs a fraction of ``b"\\r\\n".join(map(b": ".join, headers))``, which goes
    through generic calls and an intermediate bytes.
    """
    for name, value in headers:
        parts.append(b"%b: %b\r\n" % (name, value))


def chunk(data: bytes) -> bytes:
    """One chunk of a chunked body."""
    return b"%x\r\n%s\r\n" % (len(data), data)


def request_head_bytes(
    head: RequestHead,
    target: bytes,
    request_id: bytes,
    traceparent: bytes,
    xff: bytes,
    *,
    default_host: str = "",
    headers: list[tuple[bytes, bytes]] | None = None,
) -> bytes:
    """The request head as sent upstream: hop-by-hop headers gone, framing and tracing redone.

    ``headers`` replace the head's own (a policy edited them). It goes out as HTTP/1.1, which
    requires Host: an HTTP/1.0 request without one gets ``default_host``.
    """
    parts = [b"%b %b HTTP/1.1\r\n" % (head.method, target)]
    if headers is None:
        _put_fields(parts, head.headers)
        missing_host = head.host is None
    else:
        _put_fields(parts, headers)
        missing_host = not any(n.lower() == b"host" for n, _ in headers)
    if missing_host:
        parts += (b"host: ", default_host.encode(), b"\r\n")  # rare: encoded only here
    if head.framing == CHUNKED:
        parts.append(b"transfer-encoding: chunked\r\n")
    elif head.content_length >= 0:
        parts.append(b"content-length: %d\r\n" % head.content_length)
    if head.upgrade is not None:
        parts += (b"connection: upgrade\r\nupgrade: ", head.upgrade, b"\r\n")
    elif head.expect_continue:
        parts.append(b"expect: 100-continue\r\n")
    parts.append(
        b"x-forwarded-for: %b\r\nx-request-id: %b\r\ntraceparent: %b\r\n\r\n"
        % (xff, request_id, traceparent)
    )
    return b"".join(parts)


def response_head_bytes(
    head: ResponseHead, framing: int, *, close: bool, http10_keep_alive: bool = False
) -> bytes:
    """The response head as sent downstream with the framing the proxy chose."""
    status = head.status
    code = _STATUS.get(status) or str(status).encode()
    parts = [b"HTTP/1.1 %b %b\r\n" % (code, head.reason)]
    _put_fields(parts, head.headers)
    if status == 101:
        parts += (b"connection: upgrade\r\nupgrade: ", head.upgrade or b"", b"\r\n\r\n")
        return b"".join(parts)
    if framing == CHUNKED:
        parts.append(b"transfer-encoding: chunked\r\n")
    elif head.content_length >= 0 and framing in (LENGTH, NO_BODY):
        # NO_BODY keeps the length a HEAD or 304 response announces for the real resource.
        parts.append(b"content-length: %d\r\n" % head.content_length)
    if close:
        parts.append(b"connection: close\r\n")
    elif http10_keep_alive:
        parts.append(b"connection: keep-alive\r\n")
    parts.append(b"\r\n")
    return b"".join(parts)
