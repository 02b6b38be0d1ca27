"""Synthetic responses: the one place where proxy-path errors become HTTP answers.

Every error the proxy answers itself carries ``x-meshd-error: <reason>`` so that clients,
access logs and metrics can tell a proxy's answer from the application's; its status comes
from :data:`meshd.errors.PROXY_ERRORS`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final

from meshcore.model.policy import Redirect

_REASON_PHRASES: Final = {
    301: b"Moved Permanently",
    302: b"Found",
    303: b"See Other",
    307: b"Temporary Redirect",
    308: b"Permanent Redirect",
    400: b"Bad Request",
    401: b"Unauthorized",
    403: b"Forbidden",
    404: b"Not Found",
    405: b"Method Not Allowed",
    408: b"Request Timeout",
    413: b"Content Too Large",
    429: b"Too Many Requests",
    431: b"Request Header Fields Too Large",
    500: b"Internal Server Error",
    502: b"Bad Gateway",
    503: b"Service Unavailable",
    504: b"Gateway Timeout",
    505: b"HTTP Version Not Supported",
}


def reason_phrase(status: int) -> bytes:
    """The reason phrase the proxy writes for ``status``."""
    return _REASON_PHRASES.get(status, b"Error")


def synthetic_response(
    status: int,
    reason: str,
    *,
    close: bool,
    request_id: bytes | None = None,
    detail: str = "",
    head_only: bool = False,
    extra_headers: Sequence[tuple[bytes, bytes]] = (),
) -> bytes:
    """A complete HTTP/1.1 response the proxy sends on its own behalf.

    ``extra_headers`` (name, value) go out as given: the caller keeps CR/LF out of them.
    """
    body = f"{reason}: {detail}\n" if detail else f"{reason}\n"
    payload = body.encode("utf-8", "replace")
    lines = [
        b"HTTP/1.1 %d %s\r\n" % (status, _REASON_PHRASES.get(status, b"Error")),
        b"content-type: text/plain; charset=utf-8\r\n",
        b"content-length: %d\r\n" % len(payload),
        b"x-meshd-error: " + reason.encode("ascii") + b"\r\n",
    ]
    if request_id is not None:
        lines.append(b"x-request-id: " + request_id + b"\r\n")
    lines.extend(name + b": " + value + b"\r\n" for name, value in extra_headers)
    if close:
        lines.append(b"connection: close\r\n")
    lines.append(b"\r\n")
    if not head_only:
        lines.append(payload)
    return b"".join(lines)


def redirect_location(redirect: Redirect, host: bytes | None, target: bytes) -> bytes:
    """The ``Location`` of a redirect route for a request to ``host`` (Host header) ``target``.

    Unset parts of ``redirect`` keep the request's: the path is replaced whole, the query is
    kept. A new host or scheme without a port drops the request's port (the scheme's default).
    """
    if not target.startswith(b"/"):
        # absolute-form (``http://host/path``): keep the path and query only.
        rest = target.partition(b"://")[2]
        slash = rest.find(b"/")
        target = rest[slash:] if slash >= 0 else b"/"
    path, sep, query = target.partition(b"?")
    if redirect.path is not None:
        path = redirect.path.encode("utf-8")
    req_host, req_port = _split_host(host or b"")
    scheme = (redirect.scheme or "http").encode("ascii")
    if redirect.host is not None:
        name = redirect.host.encode("utf-8")
        port = b""
    else:
        name = req_host
        port = req_port if redirect.scheme is None else b""
    if redirect.port is not None:
        port = b"%d" % redirect.port
    authority = name + (b":" + port if port else b"")
    return scheme + b"://" + authority + path + (sep + query if query else b"")


def _split_host(host: bytes) -> tuple[bytes, bytes]:
    if host.startswith(b"["):  # [v6]:port
        end = host.find(b"]")
        rest = host[end + 1 :]
        return host[: end + 1], rest[1:] if rest.startswith(b":") else b""
    name, sep, port = host.rpartition(b":")
    if sep and port.isdigit():
        return name, port
    return host, b""


def location_response(
    status: int, location: bytes, *, close: bool, request_id: bytes | None = None
) -> bytes:
    """A complete redirect answer (``status`` and ``Location``) with an empty body."""
    if b"\r" in location or b"\n" in location:
        # A Host header can't carry these (llhttp refuses them); belt and braces.
        location = location.replace(b"\r", b"").replace(b"\n", b"")
    lines = [
        b"HTTP/1.1 %d %s\r\n" % (status, reason_phrase(status)),
        b"location: " + location + b"\r\n",
        b"content-length: 0\r\n",
    ]
    if request_id is not None:
        lines.append(b"x-request-id: " + request_id + b"\r\n")
    if close:
        lines.append(b"connection: close\r\n")
    lines.append(b"\r\n")
    return b"".join(lines)
