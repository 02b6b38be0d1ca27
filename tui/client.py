"""A small synchronous client of controld's HTTP API (``/v1/...``), for ``meshctl``.

Every failure is one of two errors: :class:`ApiError` (controld answered with an error
status; carries its ``error`` message and ``problems``) or :class:`Unreachable` (no answer at
all: connection refused, DNS, timeout), so the CLI can map them to exit codes 1 and 3.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from types import TracebackType
from typing import Any, Self

import httpx

__all__ = ["DEFAULT_SERVER", "ApiError", "ClientError", "ControldClient", "Unreachable"]

#: Where ``controld run`` serves its API unless told otherwise.
DEFAULT_SERVER = "http://127.0.0.1:8501"


class ClientError(Exception):
    """Root of the errors :class:`ControldClient` raises."""


class ApiError(ClientError):
    """controld answered with an error status.

    ``problems`` is the list of problem objects of a 422 answer (each a mapping with
    ``document``, ``kind``, ``name``, ``path``, ``message``), empty otherwise.
    """

    def __init__(
        self, status: int, message: str, problems: Sequence[Mapping[str, Any]] = ()
    ) -> None:
        super().__init__(f"{status}: {message}")
        self.status = status
        self.message = message
        self.problems: list[Mapping[str, Any]] = list(problems)


class Unreachable(ClientError):
    """No answer from controld at ``url`` (refused, unresolvable, timed out, ...)."""

    def __init__(self, url: str, reason: str) -> None:
        super().__init__(f"cannot reach controld at {url}: {reason}")
        self.url = url
        self.reason = reason


def _error_of(response: httpx.Response) -> ApiError:
    """The :class:`ApiError` for a non-2xx answer, from its JSON body when it has one."""
    message = response.reason_phrase or "error"
    problems: list[Mapping[str, Any]] = []
    try:
        body = response.json()
    except ValueError:
        text = response.text.strip()
        if text:
            message = text.splitlines()[0][:200]
    else:
        if isinstance(body, dict):
            error = body.get("error", body.get("detail"))
            if isinstance(error, str):
                message = error
            elif error is not None:
                message = str(error)
            raw = body.get("problems")
            if isinstance(raw, list):
                problems = [p for p in raw if isinstance(p, dict)]
    if response.status_code == 401:
        message += " (give an admin token with --token, --token-file or MESHCTL_TOKEN)"
    return ApiError(response.status_code, message, problems)


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
        answer.
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
            raise ApiError(response.status_code, "answer is not JSON") from exc

    # -- the endpoints meshctl uses ----------------------------------------------------------

    def apply(
        self,
        resources: Sequence[Mapping[str, Any]],
        *,
        dry_run: bool = False,
        strict: bool = False,
    ) -> Any:
        """``PUT /v1/resources``: ``{"revision", "changes": [{"kind","name","action"}],
        "warnings": [...]}``; ``strict``: refused (422) when there would be warnings."""
        body: dict[str, Any] = {"resources": list(resources), "dry_run": dry_run}
        if strict:
            # Sent only when asked, so a controld without the field still takes the others.
            body["strict"] = True
        return self.request("PUT", "/v1/resources", json=body)

    def list_resources(self, kind: str | None = None) -> Any:
        """``GET /v1/resources[?kind=K]``: ``{"revision", "resources": [...]}``."""
        params = {"kind": kind} if kind else None
        return self.request("GET", "/v1/resources", params=params)

    def get_resource(self, kind: str, name: str) -> Any:
        """``GET /v1/resources/{kind}/{name}``: the resource plus ``meta``."""
        return self.request("GET", f"/v1/resources/{kind}/{name}")

    def delete_resource(self, kind: str, name: str) -> Any:
        """``DELETE /v1/resources/{kind}/{name}``: like :meth:`apply`'s answer."""
        return self.request("DELETE", f"/v1/resources/{kind}/{name}")

    def proxies(self) -> Any:
        """``GET /v1/proxies``: ``{"proxies": [...]}``."""
        return self.request("GET", "/v1/proxies")

    def status(self) -> Any:
        """``GET /v1/status``."""
        return self.request("GET", "/v1/status")

    def explain(
        self,
        source: str,
        destination: str,
        *,
        method: str = "GET",
        path: str = "/",
        headers: Mapping[str, str] | None = None,
    ) -> Any:
        """``POST /v1/explain``: the explanation JSON."""
        body = {
            "source": source,
            "destination": destination,
            "method": method,
            "path": path,
            "headers": dict(headers or {}),
        }
        return self.request("POST", "/v1/explain", json=body)

    def sidecar_token(self, service: str, *, ttl_s: int | None = None) -> dict[str, Any]:
        """``POST /v1/tokens/sidecar``: a token for the sidecars of ``service`` (``{token,
        id, expires}``)."""
        request: dict[str, Any] = {"service": service}
        if ttl_s is not None:
            request["ttl_s"] = ttl_s
        body = self.request("POST", "/v1/tokens/sidecar", json=request)
        if not isinstance(body, dict) or not isinstance(body.get("token"), str):
            raise ApiError(200, "answer has no token")
        return body

    def sidecar_tokens(self) -> list[dict[str, Any]]:
        """``GET /v1/tokens/sidecar``: every unexpired sidecar token (no secrets)."""
        body = self.request("GET", "/v1/tokens/sidecar")
        tokens = body.get("tokens") if isinstance(body, dict) else None
        return [t for t in tokens or () if isinstance(t, dict)]

    def revoke_sidecar_token(self, token_id: str) -> Any:
        """``DELETE /v1/tokens/sidecar/{id}``: revoke one sidecar token."""
        return self.request("DELETE", f"/v1/tokens/sidecar/{token_id}")

    def registry_token(self, service: str, *, ttl_s: int | None = None) -> str:
        """``POST /v1/tokens/registry``: a registry ACL token with ``service``'s identity."""
        payload: dict[str, Any] = {"service": service}
        if ttl_s is not None:
            payload["ttl_s"] = ttl_s
        body = self.request("POST", "/v1/tokens/registry", json=payload)
        if not isinstance(body, dict) or not isinstance(body.get("secret_id"), str):
            raise ApiError(200, "answer has no secret_id")
        return str(body["secret_id"])

    def join_token(self, service: str, *, namespace: str = "default", ttl_s: int = 3600) -> str:
        """``POST /v1/tokens/join``: a single-use join token to enroll a sidecar of ``service``."""
        body = self.request(
            "POST",
            "/v1/tokens/join",
            json={"service": service, "namespace": namespace, "ttl_s": ttl_s},
        )
        if not isinstance(body, dict) or not isinstance(body.get("token"), str):
            raise ApiError(200, "answer has no token")
        return str(body["token"])

    def schema(self) -> Any:
        """``GET /v1/schema``: ``{kind: JSON schema}``."""
        return self.request("GET", "/v1/schema")

    def ca_status(self) -> Any:
        """``GET /v1/ca``: rotation phase, signer, bundle and outstanding leaves per root."""
        return self.request("GET", "/v1/ca")

    def ca_rotate(self, step: str, *, force: bool = False) -> Any:
        """``POST /v1/ca/rotate``: one root rotation step (``stage``, ``activate``, ``retire``)."""
        body: dict[str, Any] = {"step": step}
        if force:
            body["force"] = True
        return self.request("POST", "/v1/ca/rotate", json=body)

    def audit(self, *, since: str | None = None, limit: int = 50) -> Any:
        """``GET /v1/audit``: ``{"entries": [...]}``, newest first (``since``: RFC 3339)."""
        params: dict[str, str | int] = {"limit": limit}
        if since is not None:
            params["since"] = since
        return self.request("GET", "/v1/audit", params=params)
