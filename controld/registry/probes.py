"""The HTTP and TCP probes of health checks, with Consul's status mapping and output text."""

from __future__ import annotations

import http
import ssl
import urllib.parse

import httptools
import trio

from controld.registry.model import CRITICAL, PASSING, WARNING, CheckSpec

__all__ = ["http_probe", "tcp_probe"]

_MAX_REDIRECTS = 10


class _Collector:
    """httptools callbacks: status, headers of interest, body up to a limit."""

    __slots__ = ("_header", "body", "done", "limit", "location")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.body = bytearray()
        self.done = False
        self.location = ""
        self._header = b""

    def finished(self) -> bool:
        """The whole message has been parsed (a method: the parser's callbacks set it)."""
        return self.done

    def on_header(self, name: bytes, value: bytes) -> None:
        if name.lower() == b"location":
            self.location = value.decode("latin-1")

    def on_body(self, body: bytes) -> None:
        room = self.limit - len(self.body)
        if room > 0:
            self.body += body[:room]

    def on_message_complete(self) -> None:
        self.done = True


def _status_for(code: int) -> str:
    if 200 <= code < 300:
        return PASSING
    if code == 429:
        return WARNING
    return CRITICAL


async def _fetch(url: str, spec: CheckSpec) -> tuple[int, str, str]:
    """One request; returns (status code, body text, redirect location)."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise OSError(f"unsupported URL {url!r}")
    tls = parts.scheme == "https"
    port = parts.port or (443 if tls else 80)
    stream: trio.abc.Stream = await trio.open_tcp_stream(parts.hostname, port)
    try:
        if tls:
            context = ssl.create_default_context()
            if spec.tls_skip_verify:
                context.check_hostname = False
                context.verify_mode = ssl.CERT_NONE
            stream = trio.SSLStream(stream, context, server_hostname=parts.hostname)
            await stream.do_handshake()
        target = parts.path or "/"
        if parts.query:
            target += "?" + parts.query
        host = parts.netloc.rsplit("@", 1)[-1]
        lines = [
            f"{spec.method} {target} HTTP/1.1",
            f"Host: {host}",
            "User-Agent: Consul Health Check",
            "Accept: text/plain, text/*, */*",
            "Connection: close",
        ]
        for name, values in spec.header.items():
            lines.extend(f"{name}: {v}" for v in values)
        body = spec.body.encode()
        if body:
            lines.append(f"Content-Length: {len(body)}")
        await stream.send_all(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body)
        collector = _Collector(spec.output_max_size)
        parser = httptools.HttpResponseParser(collector)
        while not collector.done:
            data = await stream.receive_some(65536)
            if not data:
                break
            try:
                parser.feed_data(data)
            except httptools.HttpParserError:
                # Bytes after a complete message (e.g. a body sent with a 204, which has none
                # by definition) are ignored, as Go's client (Consul's) ignores them.
                if not collector.finished():
                    raise
                break
            if len(collector.body) >= collector.limit:
                break
        code = parser.get_status_code()
        return code, collector.body.decode("utf-8", "replace"), collector.location
    finally:
        await trio.aclose_forcefully(stream)


async def http_probe(spec: CheckSpec) -> tuple[str, str]:
    """Run an HTTP check once: ``(status, output)`` as Consul's ``CheckHTTP`` reports them."""
    url = spec.http
    method = spec.method
    try:
        with trio.fail_after(spec.timeout):
            for _ in range(_MAX_REDIRECTS + 1):
                code, body, location = await _fetch(url, spec)
                if spec.disable_redirects or code not in (301, 302, 303, 307, 308) or not location:
                    break
                url = urllib.parse.urljoin(url, location)
    except trio.TooSlowError:
        return CRITICAL, (
            f'{method.title()} "{spec.http}": context deadline exceeded '
            "(Client.Timeout exceeded while awaiting headers)"
        )
    except (OSError, httptools.HttpParserError, trio.BrokenResourceError, ssl.SSLError) as exc:
        return CRITICAL, f'{method.title()} "{spec.http}": {_reason(exc)}'
    try:
        phrase = http.HTTPStatus(code).phrase
    except ValueError:
        phrase = ""
    return _status_for(code), f"HTTP {method} {spec.http}: {code} {phrase} Output: {body}"


async def tcp_probe(spec: CheckSpec) -> tuple[str, str]:
    """Run a TCP check once: connect within the timeout."""
    host, _, port_text = spec.tcp.rpartition(":")
    host = host.strip("[]")
    try:
        port = int(port_text)
        with trio.fail_after(spec.timeout):
            stream = await trio.open_tcp_stream(host, port)
        await trio.aclose_forcefully(stream)
    except trio.TooSlowError:
        return CRITICAL, f"dial tcp {spec.tcp}: i/o timeout"
    except (OSError, ValueError) as exc:
        return CRITICAL, f"dial tcp {spec.tcp}: {_reason(exc)}"
    return PASSING, f"TCP connect {spec.tcp}: Success"


def _reason(exc: BaseException) -> str:
    # trio.open_tcp_stream wraps the per-address errors in a group behind a summary OSError.
    cause = exc.__cause__
    if isinstance(cause, BaseExceptionGroup) and cause.exceptions:
        exc = cause.exceptions[0]
    if isinstance(exc, OSError) and exc.strerror:
        return f"connect: {exc.strerror.lower()}"
    return str(exc) or type(exc).__name__
