"""A small HTTP/1.1 JSON client for controld, on meshd's own socket stack.

The daemon talks to one controld over one keep-alive connection, a request at a time, so a
general client (httpx: ~10 MB of resident memory and a noticeable import time) buys nothing.
Requests go out through :func:`meshd.net.stream.open_tcp`; responses are parsed by llhttp
(httptools). Every request is bounded in time. A pooled connection the server closed while
idle is replaced once, transparently, when the request failed before any response byte.

For ``https`` URLs the caller gives ``tls``, a function returning the context for each new
connection (meshd's TLS 1.3 stream), and optionally ``peer_id``, the SPIFFE ID the server's
certificate must carry (checked after the handshake; a mismatch is a
:class:`ControlUnavailable`). An https URL without ``tls`` is a
:class:`~meshcore.errors.ConfigError` when the client is built.
"""

from __future__ import annotations

import json
import ssl
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final, TypeVar
from urllib.parse import urlencode, urlsplit

import httptools
import trio
from pydantic import BaseModel, ValidationError

from meshcore.api.sidecar import path_segment
from meshcore.errors import ConfigError
from meshcore.model.loading import format_validation_error
from meshd.errors import MeshdError
from meshd.net.stream import SocketStream, open_tcp
from meshd.net.tls import TlsError, TlsStream, tls_connect
from meshd.net.tlsconfig import PeerIdentityError, check_peer

__all__ = [
    "ControlClient",
    "ControlError",
    "ControlProtocolError",
    "ControlResponse",
    "ControlUnavailable",
    "path_segment",
]

#: Largest response body accepted (a snapshot of a big mesh is a few MB at most).
MAX_BODY: Final = 64 * 1024 * 1024
_MAX_HEAD: Final = 64 * 1024
_M = TypeVar("_M", bound=BaseModel)


class ControlError(MeshdError):
    """Talking to controld failed."""


class ControlUnavailable(ControlError):
    """controld could not be reached, or the connection broke or timed out."""


class ControlProtocolError(ControlError):
    """controld's answer was not valid HTTP/1.1 or not the JSON expected."""


@dataclass(frozen=True, slots=True)
class ControlResponse:
    """One response: status, lower-case header names, body."""

    status: int
    headers: Mapping[str, str]
    body: bytes

    def json(self) -> Any:
        """The body parsed as JSON; :class:`ControlProtocolError` if it isn't."""
        try:
            return json.loads(self.body)
        except ValueError as exc:
            raise ControlProtocolError(f"HTTP {self.status}: body is not JSON: {exc}") from exc

    def parse(self, model: type[_M], what: str) -> _M:
        """The body as ``model`` (a :mod:`meshcore.api` answer); :class:`ControlProtocolError`
        naming ``what`` and each problem if it isn't one."""
        try:
            return model.model_validate_json(self.body)
        except ValidationError as exc:
            problems = format_validation_error(f"HTTP {self.status}: {what}", exc)
            raise ControlProtocolError(problems) from exc

    def error_text(self) -> str:
        """A short description of an error answer (its ``error`` field when JSON)."""
        text = self.body[:512].decode("utf-8", "replace").strip()
        try:
            doc = json.loads(self.body)
        except ValueError:
            return f"HTTP {self.status}: {text}" if text else f"HTTP {self.status}"
        if isinstance(doc, dict) and isinstance(doc.get("error"), str):
            return f"HTTP {self.status}: {doc['error']}"
        return f"HTTP {self.status}: {text}"


class _Parser:
    """Collects one response from llhttp callbacks."""

    __slots__ = ("body", "body_size", "complete", "head_size", "headers", "keep_alive", "parser")

    def __init__(self) -> None:
        self.parser = httptools.HttpResponseParser(self)
        self.headers: dict[str, str] = {}
        self.body: list[bytes] = []
        self.body_size = 0
        self.head_size = 0
        self.complete = False
        self.keep_alive = False

    def on_header(self, name: bytes, value: bytes) -> None:
        self.head_size += len(name) + len(value)
        if self.head_size > _MAX_HEAD:
            raise ControlProtocolError("response head too large")
        key = name.decode("latin-1").lower()
        text = value.decode("latin-1")
        self.headers[key] = f"{self.headers[key]}, {text}" if key in self.headers else text

    def on_headers_complete(self) -> None:
        # Asked here: once the message is complete, llhttp has reset what it knows.
        self.keep_alive = self.parser.should_keep_alive()

    def on_body(self, body: bytes) -> None:
        self.body_size += len(body)
        if self.body_size > MAX_BODY:
            raise ControlProtocolError(f"response body over {MAX_BODY} bytes")
        self.body.append(body)

    def on_message_complete(self) -> None:
        self.complete = True


class ControlClient:
    """Requests to one controld over a reused keep-alive connection (one at a time)."""

    def __init__(
        self,
        url: str,
        *,
        token: str | None = None,
        timeout_s: float = 10.0,
        user_agent: str = "",
        tls: Callable[[], ssl.SSLContext] | None = None,
        peer_id: Callable[[], str | None] | None = None,
        field: str = "snapshot.controld.url",
        headers: Mapping[str, str] | None = None,
    ) -> None:
        parts = urlsplit(url)
        if parts.scheme == "https" and tls is None:
            raise ConfigError(f"{field}: https needs an identity to verify controld: {url}")
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ConfigError(f"{field}: expected http(s)://host:port, got {url!r}")
        self.url = url
        self.host = parts.hostname
        self.port = parts.port or (443 if parts.scheme == "https" else 80)
        self.tls = tls if parts.scheme == "https" else None
        self.peer_id = peer_id
        self.timeout_s = timeout_s
        host_header = f"[{self.host}]" if ":" in self.host else self.host
        fixed = [f"host: {host_header}:{self.port}", "accept: application/json"]
        if user_agent:
            fixed.append(f"user-agent: {user_agent}")
        if token:
            if any(c in token for c in "\r\n"):
                raise ConfigError("snapshot.controld: the token must not contain line breaks")
            fixed.append(f"authorization: Bearer {token}")
        for name, value in (headers or {}).items():
            if any(c in name + value for c in "\r\n"):
                raise ConfigError(f"header {name!r} must not contain line breaks")
            fixed.append(f"{name}: {value}")
        self._fixed = ("\r\n".join(fixed) + "\r\n").encode("latin-1")
        self._stream: SocketStream | TlsStream | None = None

    # -- API --------------------------------------------------------------------------------

    async def get(
        self, path: str, query: Mapping[str, object] | None = None, *, wait_s: float = 0.0
    ) -> ControlResponse:
        """``GET path?query``, allowed ``wait_s`` more than the usual timeout (long polls)."""
        if query:
            path = f"{path}?{urlencode({k: str(v) for k, v in query.items()})}"
        return await self.request("GET", path, timeout_s=self.timeout_s + wait_s)

    async def post_json(self, path: str, document: object) -> ControlResponse:
        """``POST path`` with a JSON body."""
        body = json.dumps(document, separators=(",", ":")).encode("utf-8")
        return await self.request("POST", path, body)

    async def request(
        self, method: str, path: str, body: bytes | None = None, *, timeout_s: float | None = None
    ) -> ControlResponse:
        """Send one request and read its whole response.

        Raises :class:`ControlUnavailable` (connect, reset, timeout) or
        :class:`ControlProtocolError` (unparseable answer); any status is returned.
        """
        head = [f"{method} {path} HTTP/1.1\r\n".encode("latin-1"), self._fixed]
        if body is not None:
            head.append(b"content-type: application/json\r\n")
            head.append(b"content-length: %d\r\n" % len(body))
        head.append(b"\r\n")
        data = b"".join(head) + (body or b"")
        limit = self.timeout_s if timeout_s is None else timeout_s
        with trio.move_on_after(limit) as scope:
            return await self._exchange(data)
        assert scope.cancelled_caught
        self._drop()
        raise ControlUnavailable(f"{method} {path}: no answer from {self.url} within {limit:g} s")

    def close(self) -> None:
        """Close the connection (the client can still be used: it reconnects)."""
        self._drop()

    async def aclose(self) -> None:
        """:meth:`close`, with trio's checkpoint semantics."""
        self._drop()
        await trio.lowlevel.checkpoint()

    # -- internals --------------------------------------------------------------------------

    async def _exchange(self, data: bytes) -> ControlResponse:
        stream = self._stream
        if stream is not None and stream.is_stale():
            self._drop()
            stream = None
        if stream is not None:
            # A kept connection may have been closed by the server in the meantime: if it
            # fails before any byte of an answer, the request never ran; try a new one once.
            try:
                return await self._on(stream, data, reused=True)
            except _StaleError:
                self._drop()
        stream = await self._connect()
        try:
            return await self._on(stream, data, reused=False)
        except _StaleError as exc:
            raise ControlUnavailable(f"{self.url}: connection closed before an answer") from exc

    async def _connect(self) -> SocketStream | TlsStream:
        stream: SocketStream | TlsStream
        try:
            if self.tls is None:
                stream = await open_tcp(self.host, self.port)
            else:
                stream = await tls_connect(self.host, self.port, self.tls())
        except (OSError, TlsError) as exc:
            raise ControlUnavailable(f"cannot connect to {self.url}: {exc}") from exc
        expected = None if self.peer_id is None else self.peer_id()
        if isinstance(stream, TlsStream) and expected is not None:
            try:
                check_peer(stream, expected)
            except PeerIdentityError as exc:
                stream.close_nowait()
                raise ControlUnavailable(f"{self.url} is not controld: {exc}") from exc
        self._stream = stream
        return stream

    async def _on(
        self, stream: SocketStream | TlsStream, data: bytes, *, reused: bool
    ) -> ControlResponse:
        parser = _Parser()
        received = False
        ok = False
        try:
            try:
                await stream.send_all(data)
                while not parser.complete:
                    chunk = await stream.receive_some()
                    if not chunk:
                        if not received:
                            raise _StaleError
                        raise ControlUnavailable(f"{self.url}: connection closed mid-answer")
                    received = True
                    parser.parser.feed_data(chunk)
            except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                if not received and reused:
                    raise _StaleError from exc
                raise ControlUnavailable(f"{self.url}: {exc}") from exc
            except httptools.HttpParserError as exc:
                if isinstance(exc.__context__, ControlProtocolError):
                    raise exc.__context__ from None
                raise ControlProtocolError(f"{self.url}: bad HTTP answer: {exc}") from exc
            response = ControlResponse(
                parser.parser.get_status_code(), parser.headers, b"".join(parser.body)
            )
            ok = parser.keep_alive
            return response
        finally:
            # Anything but a complete keep-alive exchange (an error, a cancellation, the
            # server closing) leaves the connection unusable.
            if not ok:
                self._drop()

    def _drop(self) -> None:
        if self._stream is not None:
            self._stream.close_nowait()
            self._stream = None


class _StaleError(Exception):
    """A reused connection failed before any response byte: safe to send again."""
