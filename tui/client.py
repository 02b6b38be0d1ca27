"""A small synchronous client of controld's HTTP API (``/v1/...``), for ``meshctl``.

Requests, answers and paths are the shared wire models of :mod:`meshcore.api`. Every failure
is one of three errors: :class:`ApiError` (controld answered with an error status; carries
its ``error`` message and ``problems``), :class:`Unreachable` (no answer at all: connection
refused, DNS, timeout) or :class:`~meshcore.api.errors.UnexpectedAnswer` (a success answer
without the promised shape), so the CLI can map them to exit codes 1, 3 and 1.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from types import TracebackType
from typing import Any, Self, TypeVar

import httpx
from pydantic import BaseModel

from meshcore.api.audit import AUDIT_PATH, AuditPage
from meshcore.api.base import request_body
from meshcore.api.ca import (
    CA_PATH,
    CA_ROTATE_PATH,
    IDENTITIES_PATH,
    REVOCATIONS_PATH,
    CaStatus,
    IdentityList,
    RevokeAnswer,
    RevokeRequest,
    RotateAnswer,
    RotateRequest,
    RotationStep,
)
from meshcore.api.errors import Problem, UnexpectedAnswer, error_of, parse_answer, parse_object
from meshcore.api.explain import EXPLAIN_PATH, ExplainAnswer, ExplainRequest
from meshcore.api.proxies import PROXIES_PATH, DrainAnswer, ProxyList, drain_path
from meshcore.api.resources import (
    RESOURCES_PATH,
    ApplyAnswer,
    ApplyRequest,
    ResourceList,
    resource_path,
)
from meshcore.api.status import SCHEMA_PATH, STATUS_PATH, StatusAnswer
from meshcore.api.tokens import (
    JOIN_TOKENS_PATH,
    REGISTRY_TOKENS_PATH,
    SIDECAR_TOKENS_PATH,
    JoinToken,
    JoinTokenRequest,
    RegistryToken,
    RegistryTokenRequest,
    SidecarToken,
    SidecarTokenList,
    SidecarTokenRequest,
    TokenRevoked,
    sidecar_token_path,
)

__all__ = [
    "DEFAULT_SERVER",
    "ApiError",
    "ClientError",
    "ControldClient",
    "UnexpectedAnswer",
    "Unreachable",
]

#: Where ``controld run`` serves its API unless told otherwise.
DEFAULT_SERVER = "http://127.0.0.1:8501"

M = TypeVar("M", bound=BaseModel)


class ClientError(Exception):
    """Root of the errors :class:`ControldClient` raises (besides
    :class:`~meshcore.api.errors.UnexpectedAnswer`, shared with the dashboard)."""


class ApiError(ClientError):
    """controld answered with an error status.

    ``problems`` are the problems of a 422 answer (field ``path`` and ``message``; for
    policy resources also ``document``, ``kind`` and ``name``), empty otherwise.
    """

    def __init__(self, status: int, message: str, problems: Sequence[Problem] = ()) -> None:
        super().__init__(f"{status}: {message}")
        self.status = status
        self.message = message
        self.problems: tuple[Problem, ...] = tuple(problems)


class Unreachable(ClientError):
    """No answer from controld at ``url`` (refused, unresolvable, timed out, ...)."""

    def __init__(self, url: str, reason: str) -> None:
        super().__init__(f"cannot reach controld at {url}: {reason}")
        self.url = url
        self.reason = reason


def _error_of(response: httpx.Response) -> ApiError:
    """The :class:`ApiError` for a non-2xx answer, from its JSON body when it has one."""
    body = error_of(response.content, response.reason_phrase)
    message = body.error
    if response.status_code == 401:
        message += " (give an admin token with --token, --token-file or MESHCTL_TOKEN)"
    return ApiError(response.status_code, message, body.problems)


class ControldClient:
    """Calls controld's API at ``base_url`` with an optional bearer ``token``.

    Use as a context manager (or call :meth:`close`) so the connection pool is closed.
    """

    def __init__(
        self,
        base_url: str = DEFAULT_SERVER,
        token: str | None = None,
        *,
        timeout: float = 10.0,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        headers = {"Accept": "application/json", "User-Agent": "meshctl"}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        self._http = httpx.Client(
            base_url=self.base_url,
            headers=headers,
            timeout=httpx.Timeout(timeout, connect=min(timeout, 5.0)),
            transport=transport,
            trust_env=False,
        )

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Close the connection pool."""
        self._http.close()

    def request(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        params: Mapping[str, str | int] | None = None,
    ) -> Any:
        """One call; the decoded JSON body (``None`` for an empty one).

        Raises :class:`ApiError` on an error status, :class:`Unreachable` when there is no
        answer, :class:`~meshcore.api.errors.UnexpectedAnswer` when a success isn't JSON.
        """
        try:
            response = self._http.request(method, path, json=json, params=params)
        except httpx.TransportError as exc:
            raise Unreachable(self.base_url, str(exc) or type(exc).__name__) from exc
        if response.status_code >= 400:
            raise _error_of(response)
        if not response.content:
            return None
        try:
            return response.json()
        except ValueError as exc:
            raise UnexpectedAnswer(path, "not JSON") from exc

    def _answer(
        self,
        model: type[M],
        method: str,
        path: str,
        *,
        json: Any = None,
        params: Mapping[str, str | int] | None = None,
    ) -> M:
        """One call whose answer is a ``model``."""
        return parse_answer(model, path, self.request(method, path, json=json, params=params))

    # -- the endpoints meshctl uses ----------------------------------------------------------

    def apply(
        self,
        resources: Sequence[Mapping[str, Any]],
        *,
        dry_run: bool = False,
        strict: bool = False,
    ) -> ApplyAnswer:
        """``PUT /v1/resources``: the revision, the change of each resource and the feature
        warnings; ``strict``: refused (422) when there would be warnings."""
        # ``strict`` only when asked: a controld without the field still takes the others.
        body = request_body(
            ApplyRequest,
            resources=[dict(r) for r in resources],
            dry_run=dry_run,
            strict=True if strict else None,
        )
        return self._answer(ApplyAnswer, "PUT", RESOURCES_PATH, json=body)

    def list_resources(self, kind: str | None = None) -> ResourceList:
        """``GET /v1/resources[?kind=K]``: the revision and the resources."""
        params = {"kind": kind} if kind else None
        return self._answer(ResourceList, "GET", RESOURCES_PATH, params=params)

    def get_resource(self, kind: str, name: str) -> dict[str, Any]:
        """``GET /v1/resources/{kind}/{name}``: the resource document plus ``meta``."""
        path = resource_path(kind, name)
        return parse_object(path, self.request("GET", path))

    def delete_resource(self, kind: str, name: str) -> ApplyAnswer:
        """``DELETE /v1/resources/{kind}/{name}``: like :meth:`apply`'s answer."""
        return self._answer(ApplyAnswer, "DELETE", resource_path(kind, name))

    def proxies(self) -> ProxyList:
        """``GET /v1/proxies``: every registered sidecar's push state."""
        return self._answer(ProxyList, "GET", PROXIES_PATH)

    def drain(self, proxy_id: str) -> DrainAnswer:
        """``POST /v1/proxies/{id}/drain``: ask that sidecar to drain."""
        return self._answer(DrainAnswer, "POST", drain_path(proxy_id))

    def status(self) -> StatusAnswer:
        """``GET /v1/status``: registry, discovery, push, store, endpoint mix."""
        return self._answer(StatusAnswer, "GET", STATUS_PATH)

    def explain(
        self,
        source: str,
        destination: str,
        *,
        method: str = "GET",
        path: str = "/",
        headers: Mapping[str, str] | None = None,
    ) -> ExplainAnswer:
        """``POST /v1/explain``: how that request would be routed and authorized."""
        body = request_body(
            ExplainRequest,
            source=source,
            destination=destination,
            method=method,
            path=path,
            headers=dict(headers or {}),
        )
        return self._answer(ExplainAnswer, "POST", EXPLAIN_PATH, json=body)

    def sidecar_token(self, service: str, *, ttl_s: int | None = None) -> SidecarToken:
        """``POST /v1/tokens/sidecar``: a token for the sidecars of ``service``."""
        body = request_body(SidecarTokenRequest, service=service, ttl_s=ttl_s)
        return self._answer(SidecarToken, "POST", SIDECAR_TOKENS_PATH, json=body)

    def sidecar_tokens(self) -> SidecarTokenList:
        """``GET /v1/tokens/sidecar``: every unexpired sidecar token (no secrets)."""
        return self._answer(SidecarTokenList, "GET", SIDECAR_TOKENS_PATH)

    def revoke_sidecar_token(self, token_id: str) -> TokenRevoked:
        """``DELETE /v1/tokens/sidecar/{id}``: revoke one sidecar token."""
        return self._answer(TokenRevoked, "DELETE", sidecar_token_path(token_id))

    def registry_token(self, service: str, *, ttl_s: int | None = None) -> RegistryToken:
        """``POST /v1/tokens/registry``: a registry ACL token with ``service``'s identity."""
        body = request_body(RegistryTokenRequest, service=service, ttl_s=ttl_s)
        return self._answer(RegistryToken, "POST", REGISTRY_TOKENS_PATH, json=body)

    def join_token(
        self, service: str, *, namespace: str = "default", ttl_s: int = 3600
    ) -> JoinToken:
        """``POST /v1/tokens/join``: a single-use join token to enroll a sidecar of ``service``."""
        body = request_body(JoinTokenRequest, service=service, namespace=namespace, ttl_s=ttl_s)
        return self._answer(JoinToken, "POST", JOIN_TOKENS_PATH, json=body)

    def schema(self) -> dict[str, Any]:
        """``GET /v1/schema``: ``{kind: JSON schema}``."""
        return parse_object(SCHEMA_PATH, self.request("GET", SCHEMA_PATH))

    def ca_status(self) -> CaStatus:
        """``GET /v1/ca``: rotation phase, signer, bundle and outstanding leaves per root."""
        return self._answer(CaStatus, "GET", CA_PATH)

    def ca_rotate(self, step: RotationStep, *, force: bool = False) -> RotateAnswer:
        """``POST /v1/ca/rotate``: one root rotation step (``stage``, ``activate``, ``retire``)."""
        body = request_body(RotateRequest, step=step, force=True if force else None)
        return self._answer(RotateAnswer, "POST", CA_ROTATE_PATH, json=body)

    def identities(self, service: str | None = None) -> IdentityList:
        """``GET /v1/identities[?service=S]``: the enrolled instances."""
        params = {"service": service} if service else None
        return self._answer(IdentityList, "GET", IDENTITIES_PATH, params=params)

    def revoke(
        self,
        *,
        identity: str | None = None,
        serial: str | None = None,
        service: str | None = None,
        namespace: str | None = None,
    ) -> RevokeAnswer:
        """``POST /v1/revocations``: revoke one instance (its ``identity`` id or a certificate
        ``serial``) or every instance of ``service`` (in ``namespace``)."""
        body = request_body(
            RevokeRequest, identity=identity, serial=serial, service=service, namespace=namespace
        )
        return self._answer(RevokeAnswer, "POST", REVOCATIONS_PATH, json=body)

    def audit(self, *, since: str | None = None, limit: int = 50) -> AuditPage:
        """``GET /v1/audit``: the entries, newest first (``since``: RFC 3339)."""
        params: dict[str, str | int] = {"limit": limit}
        if since is not None:
            params["since"] = since
        return self._answer(AuditPage, "GET", AUDIT_PATH, params=params)
