"""A small, typed, Trio-friendly wrapper over py-consul's blocking client.

py-consul (``import consul``) speaks the Consul HTTP API with ``requests``; every call here
runs it in a worker thread (``trio.to_thread.run_sync(..., abandon_on_cancel=True)``), so a
blocking query parked for minutes never stalls the event loop and a cancelled caller returns at
once. The abandoned thread finishes its request on its own and then closes its connection.

Each thread borrows a whole ``consul.Consul`` (one ``requests`` session) from a small pool and
returns it afterwards: ``requests`` sessions are not meant to be shared between threads, and
keeping them pooled keeps connections alive between calls.

Errors come out typed (:mod:`meshcore.registry.errors`): connection failures, timeouts and 5xx
as :class:`RegistryUnavailable`, refusals (4xx) as :class:`RegistryRequestError` and subclasses.
"""

from __future__ import annotations

import os
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar
from urllib.parse import urlsplit

import consul
import consul.exceptions
import trio

from meshcore.registry.errors import (
    RegistryError,
    RegistryNotFound,
    RegistryPermissionDenied,
    RegistryProtocolError,
    RegistryRequestError,
    RegistryUnavailable,
)
from meshcore.registry.model import (
    CheckStatus,
    HealthEntry,
    KvEntry,
    ServiceRegistration,
    go_duration,
    parse_catalog_services,
    parse_health_entries,
    parse_index,
    parse_kv_entries,
)

__all__ = ["RegistryClient", "RegistrySettings"]

T = TypeVar("T")

_DEFAULT_PORTS = {"http": 8500, "https": 8501}
_STATUS_PREFIX = re.compile(r"^(\d{3})\b")
#: Sessions kept for reuse; more concurrent calls than this open (and then close) extra ones.
_MAX_IDLE = 8


@dataclass(frozen=True)
class RegistrySettings:
    """Where the registry is and how to talk to it."""

    #: ``http://host:port`` or ``https://host:port`` (port defaults to 8500 / 8501).
    url: str = "http://127.0.0.1:8500"
    #: ACL token sent with every request (``X-Consul-Token``); ``None`` sends none.
    token: str | None = None
    #: Datacenter for catalog and health reads; ``None`` means the agent's own.
    datacenter: str | None = None
    #: Connect and read timeout of one request; a blocking query adds its wait (plus jitter).
    timeout_s: float = 10.0
    #: Verify the server certificate (https): True, False, or a CA bundle path.
    verify: bool | str = True
    #: Calls in flight at once (each holds a thread; a parked blocking query holds one too).
    max_concurrency: int = 64

    def __post_init__(self) -> None:
        self.endpoint()  # validate early: a bad URL is a configuration error, not a retry
        if self.timeout_s <= 0 or self.max_concurrency < 1:
            raise ValueError("timeout_s must be > 0 and max_concurrency >= 1")

    def endpoint(self) -> tuple[str, str, int]:
        """``(scheme, host, port)`` of :attr:`url` (ValueError if it isn't a usable URL)."""
        parts = urlsplit(self.url)
        scheme = parts.scheme.lower()
        if scheme not in _DEFAULT_PORTS or not parts.hostname:
            raise ValueError(f"registry address must be http(s)://host[:port], got {self.url!r}")
        if parts.path not in ("", "/") or parts.query or parts.username:
            raise ValueError(f"registry address takes no path, query or user: {self.url!r}")
        return scheme, parts.hostname, parts.port or _DEFAULT_PORTS[scheme]


class RegistryClient:
    """Consul HTTP API calls the mesh needs, as Trio coroutines.

    Use it as a context manager (or call :meth:`close`) so pooled connections are closed.
    """

    def __init__(self, settings: RegistrySettings | None = None) -> None:
        self.settings = settings or RegistrySettings()
        self._scheme, self._host, self._port = self.settings.endpoint()
        self._limiter = trio.CapacityLimiter(self.settings.max_concurrency)
        self._lock = threading.Lock()
        self._idle: list[Any] = []
        self._closed = False

    def __enter__(self) -> RegistryClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        """Close idle connections; calls still running close theirs when they finish."""
        with self._lock:
            self._closed = True
            idle, self._idle = self._idle, []
        for client in idle:
            _close(client)

    # -- status and agent ------------------------------------------------------------------

    async def leader(self) -> str:
        """``GET /v1/status/leader``: the leader's address ("" when there is none)."""
        return str(await self._call(lambda c: c.status.leader()) or "")

    async def register_service(
        self, registration: ServiceRegistration, *, replace_existing_checks: bool = True
    ) -> None:
        """``PUT /v1/agent/service/register`` (idempotent: same ID replaces the instance).

        With ``replace_existing_checks`` (the default) checks of the instance that the
        registration no longer lists are removed.
        """
        reg = registration
        checks = [c.to_json() for c in reg.checks]

        def call(c: Any) -> bool:
            return bool(
                c.agent.service.register(
                    reg.name,
                    service_id=reg.service_id,
                    address=reg.address or None,
                    port=reg.port,
                    tags=list(reg.tags) or None,
                    meta=dict(reg.meta) or None,
                    check=checks[0] if checks else None,
                    extra_checks=checks[1:],
                    replace_existing_checks=replace_existing_checks,
                    kind=reg.kind,
                    proxy=reg.proxy.to_json() if reg.proxy is not None else None,
                )
            )

        if not await self._call(call):
            raise RegistryNotFound("service register endpoint not found", status=404)

    async def deregister_service(self, service_id: str) -> bool:
        """``PUT /v1/agent/service/deregister/<id>``; False if the registry didn't know it."""
        return bool(await self._call(lambda c: c.agent.service.deregister(service_id)))

    async def update_ttl(self, check_id: str, status: CheckStatus, output: str = "") -> bool:
        """Set a TTL check's status and output (``PUT /v1/agent/check/pass|warn|fail/<id>``).

        Returns False when the registry doesn't know the check (it lost its state, or dropped
        the service): the caller should register again.
        """

        def call(c: Any) -> bool:
            checks = c.agent.check
            update = {
                "passing": checks.ttl_pass,
                "warning": checks.ttl_warn,
                "critical": checks.ttl_fail,
            }[status]
            return bool(update(check_id, notes=output or None))

        return bool(await self._call(call))

    async def ttl_pass(self, check_id: str, output: str = "") -> bool:
        """Mark a TTL check passing (see :meth:`update_ttl`)."""
        return await self.update_ttl(check_id, "passing", output)

    async def ttl_warn(self, check_id: str, output: str = "") -> bool:
        """Mark a TTL check warning (see :meth:`update_ttl`)."""
        return await self.update_ttl(check_id, "warning", output)

    async def ttl_fail(self, check_id: str, output: str = "") -> bool:
        """Mark a TTL check critical (see :meth:`update_ttl`)."""
        return await self.update_ttl(check_id, "critical", output)

    # -- catalog and health (blocking queries) ---------------------------------------------

    async def catalog_services(
        self, *, index: int = 0, wait_s: float | None = None
    ) -> tuple[int, dict[str, tuple[str, ...]]]:
        """``GET /v1/catalog/services``: ``(index, {name: tags})``.

        With ``index`` > 0 this is a blocking query: it returns once the registry's index
        passes ``index`` or after ``wait_s`` (the registry's default wait when ``None``).
        """
        wait = go_duration(wait_s) if wait_s is not None else None

        def call(c: Any) -> tuple[Any, Any]:
            return c.catalog.services(index=index or None, wait=wait)  # type: ignore[no-any-return]

        raw_index, body = await self._call(call)
        return parse_index(raw_index), parse_catalog_services(body)

    async def health_service(
        self,
        name: str,
        *,
        index: int = 0,
        wait_s: float | None = None,
        passing: bool = False,
    ) -> tuple[int, tuple[HealthEntry, ...]]:
        """``GET /v1/health/service/<name>``: ``(index, entries)``, a blocking query like
        :meth:`catalog_services`. ``passing`` keeps only entries whose checks all pass.
        """
        wait = go_duration(wait_s) if wait_s is not None else None

        def call(c: Any) -> tuple[Any, Any]:
            return c.health.service(  # type: ignore[no-any-return]
                name, index=index or None, wait=wait, passing=passing or None
            )

        raw_index, body = await self._call(call)
        return parse_index(raw_index), parse_health_entries(body)

    # -- key/value store ---------------------------------------------------------------------

    async def kv_get(self, key: str) -> KvEntry | None:
        """``GET /v1/kv/<key>``: the entry, or ``None`` when the key doesn't exist."""
        _check_key(key)

        def call(c: Any) -> tuple[Any, Any]:
            return c.kv.get(key)  # type: ignore[no-any-return]

        _index, body = await self._call(call)
        entries = parse_kv_entries(body)
        return entries[0] if entries else None

    async def kv_list(
        self, prefix: str, *, index: int | None = None, wait_s: float | None = None
    ) -> tuple[int, list[KvEntry]]:
        """``GET /v1/kv/<prefix>?recurse``: ``(index, entries)`` of every key under ``prefix``.

        With ``index`` > 0 this is a blocking query (see :meth:`catalog_services`); the index
        returned is the prefix's, so comparing it with the one passed tells a real change from a
        timeout. An empty prefix yields ``[]``.
        """
        _check_key(prefix, allow_empty=True)
        wait = go_duration(wait_s) if wait_s is not None else None

        def call(c: Any) -> tuple[Any, Any]:
            return c.kv.get(prefix, index=index or None, wait=wait, recurse=True)  # type: ignore[no-any-return]

        raw_index, body = await self._call(call)
        return parse_index(raw_index), list(parse_kv_entries(body))

    async def kv_put(self, key: str, value: bytes, *, cas: int | None = None) -> bool:
        """``PUT /v1/kv/<key>``; with ``cas`` only if the key's ModifyIndex is ``cas`` (0: only
        if the key doesn't exist). False when the check-and-set didn't match."""
        _check_key(key)
        return bool(await self._call(lambda c: c.kv.put(key, value, cas=cas)))

    async def kv_delete(self, key: str, *, cas: int | None = None) -> bool:
        """``DELETE /v1/kv/<key>`` (a missing key counts as deleted); with ``cas`` only if the
        key's ModifyIndex is ``cas``. False when the check-and-set didn't match."""
        _check_key(key)
        return bool(await self._call(lambda c: c.kv.delete(key, cas=cas)))

    async def create_service_token(
        self, service: str, *, ttl_s: float | None = None, description: str = ""
    ) -> dict[str, Any]:
        """``PUT /v1/acl/token`` with one service identity (``consul acl token create
        -service-identity=<service>``); needs ``acl = "write"``. Returns the token as Consul
        renders it (``AccessorID``, ``SecretID``, ``ExpirationTime``...)."""
        ttl = f"{int(ttl_s)}s" if ttl_s is not None else None
        result = await self._call(
            lambda c: c.acl.token.create(
                service_identities=[{"ServiceName": service}],
                description=description,
                expiration_ttl=ttl,
            )
        )
        if not isinstance(result, dict):
            raise RegistryProtocolError(f"ACL token create answered {type(result).__name__}")
        return result

    # -- plumbing --------------------------------------------------------------------------

    async def _call(self, fn: Callable[[Any], T]) -> T:
        if self._closed:
            raise RegistryError("registry client is closed")
        return await trio.to_thread.run_sync(
            self._in_thread, fn, abandon_on_cancel=True, limiter=self._limiter
        )

    def _in_thread(self, fn: Callable[[Any], T]) -> T:
        client = self._checkout()
        try:
            return fn(client)
        except consul.exceptions.ConsulException as exc:
            raise _translate(exc) from exc
        except OSError as exc:
            # requests' exceptions (connection errors, timeouts) are OSErrors.
            reason = _root_cause(exc)
            raise RegistryUnavailable(
                f"registry {self.settings.url} unreachable: {reason}"
            ) from exc
        finally:
            self._checkin(client)

    def _checkout(self) -> Any:
        with self._lock:
            if self._idle:
                return self._idle.pop()
        s = self.settings
        client = consul.Consul(
            host=self._host,
            port=self._port,
            scheme=self._scheme,
            dc=s.datacenter,
            verify=s.verify,
            connections_timeout=s.timeout_s,
        )
        if s.token is not None:
            # py-consul lets CONSUL_HTTP_TOKEN override the token it is given; ours wins.
            client.token = s.token
        return client

    def _checkin(self, client: Any) -> None:
        with self._lock:
            if not self._closed and len(self._idle) < _MAX_IDLE:
                self._idle.append(client)
                return
        _close(client)


def _check_key(key: str, *, allow_empty: bool = False) -> None:
    # py-consul asserts this in the worker thread; a caller's bug should be a plain ValueError.
    if key.startswith("/") or (not key and not allow_empty):
        raise ValueError(f"KV key must be non-empty and not start with '/': {key!r}")


def _close(client: Any) -> None:
    # py-consul's std HTTPClient.close() does nothing; the requests session holds the sockets.
    session = getattr(client.http, "session", None)
    if session is not None:
        session.close()


def _root_cause(exc: OSError) -> str:
    """A short reason (``Connection refused``, ``timed out``) for requests' nested errors."""
    seen: set[int] = set()
    todo: list[BaseException] = [exc]
    best: str | None = None
    while todo:
        err = todo.pop()
        if id(err) in seen:
            continue
        seen.add(id(err))
        if isinstance(err, TimeoutError) or "Timeout" in type(err).__name__:
            return "timed out"
        if type(err).__module__ == "builtins" and isinstance(err, OSError) and err.errno:
            best = os.strerror(err.errno)
        todo += [e for e in (err.__cause__, err.__context__, getattr(err, "reason", None)) if e]
        todo += [a for a in err.args if isinstance(a, BaseException)]
    if best is not None:
        return best
    text = str(exc)
    return text if len(text) <= 200 else text[:200] + "..."


def _translate(exc: consul.exceptions.ConsulException) -> RegistryError:
    """py-consul's exception -> ours (py-consul only keeps the status in the message)."""
    text = str(exc)
    if isinstance(exc, consul.exceptions.ACLDisabled):
        return RegistryPermissionDenied(f"401 {text}", status=401)
    if isinstance(exc, consul.exceptions.ACLPermissionDenied):
        return RegistryPermissionDenied(f"403 {text}", status=403)
    if isinstance(exc, consul.exceptions.NotFound):
        return RegistryNotFound(f"404 {text}", status=404)
    match = _STATUS_PREFIX.match(text)
    status = int(match.group(1)) if match else None
    if status is not None and 500 <= status < 600:
        return RegistryUnavailable(text, status=status)
    if status is not None and 400 <= status < 500:
        return RegistryRequestError(text, status=status)
    return RegistryProtocolError(text)
