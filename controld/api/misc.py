"""Status, schema, explain, and the probes and metrics (no token needed)."""

# No `from __future__ import annotations`: FastAPI evaluates route signatures, whose
# Annotated aliases are local to the router factories.

from collections.abc import Callable, Iterable
from typing import Annotated, Any

import trio
from fastapi import APIRouter, Depends, Security
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.metrics_core import Metric
from starlette.responses import JSONResponse, Response

from controld.api.deps import BEARER, Auditor, Guard
from controld.api.errors import ApiError
from controld.api.features import enforcement
from controld.api.plane import ControlPlane
from controld.auth import Principal, TokenAuth
from controld.compiler import explain
from controld.compiler.endpoint_tls import endpoint_mix
from controld.compiler.inputs import Inputs
from meshcore.api.explain import EXPLAIN_PATH, ExplainAnswer, ExplainRequest
from meshcore.api.status import SCHEMA_PATH, STATUS_PATH, StatusAnswer
from meshcore.model.resources import json_schemas

__all__ = ["api_router", "probes_router"]


class _Collected:
    """Metric families already collected, so they can be formatted in another thread."""

    def __init__(self, families: list[Metric]) -> None:
        self._families = families

    def collect(self) -> Iterable[Metric]:
        return self._families


def api_router(plane: ControlPlane, auth: TokenAuth, guard: Guard, auditor: Auditor) -> APIRouter:
    """``/v1/status``, ``/v1/schema`` and ``/v1/explain``."""
    router = APIRouter(tags=["control plane"], dependencies=[Security(BEARER)])
    Admin = Annotated[Principal, Depends(guard.admin)]
    AnyToken = Annotated[Principal, Depends(guard.principal)]

    # Only the sections and fields the daemon filled in are sent.
    @router.get(STATUS_PATH, response_model_exclude_unset=True)
    async def status(_: Admin) -> StatusAnswer:
        """Registry link, discovery view, push hub and store state; ``endpoint_mix``: the
        services with plain (no sidecar) endpoints, how each endpoint is reached and which
        are excluded (STRICT) and why."""
        doc = plane.status()
        view = plane.view()
        doc["endpoint_mix"] = endpoint_mix(Inputs(view, plane.resources()), view.services)
        return StatusAnswer.model_validate(doc)

    @router.get(SCHEMA_PATH)
    async def schema(_: AnyToken) -> dict[str, Any]:
        """JSON Schema of each resource kind."""
        return json_schemas()

    @router.post(EXPLAIN_PATH)
    async def explain_request(body: ExplainRequest, _: Admin) -> ExplainAnswer:
        """How a request from ``source`` to ``destination`` is routed and authorized.

        ``sidecars``: for each registered sidecar of the source (and destination) service, the
        snapshot features of this request's path in the version it ACKed, and the features
        the current policy gives it that it doesn't enforce.
        """
        try:
            explanation = explain(
                plane.view(),
                plane.resources(),
                source=body.source,
                destination=body.destination,
                method=body.method,
                path=body.path,
                headers=body.headers,
            )
        except ValueError as exc:
            raise ApiError(422, str(exc)) from exc
        sidecars = enforcement(
            plane.hub.sidecars(),
            source=_service_of(explanation.source_id, body.source),
            destination=body.destination,
            route=explanation.route,
            clusters=[c.name for c in explanation.clusters],
        )
        # The compiler's fields as they are (already validated models), plus the sidecars.
        return ExplainAnswer(**dict(explanation), sidecars=tuple(sidecars))

    return router


def _service_of(source_id: str | None, source: str) -> str:
    """The service of a SPIFFE ID (``.../svc/<service>``), else ``source`` as given."""
    for text in (source_id, source):
        if text is not None and "/svc/" in text:
            return text.rsplit("/svc/", 1)[1].split("/", 1)[0]
    return source


def probes_router(metrics: CollectorRegistry, is_ready: Callable[[], bool]) -> APIRouter:
    """``/metrics``, ``/ready`` and ``/live``: no token (scrapers, health checks)."""
    router = APIRouter(tags=["probes"])

    @router.get(
        "/metrics", response_class=Response, responses={200: {"content": {"text/plain": {}}}}
    )
    async def metrics_text() -> Response:
        """The daemon's Prometheus metrics (text format)."""
        # Collect on the Trio thread (live state); format the frozen families in a thread.
        families = list(metrics.collect())
        body = await trio.to_thread.run_sync(generate_latest, _Collected(families))
        return Response(body, media_type=CONTENT_TYPE_LATEST)

    @router.get("/ready", responses={503: {"description": "starting or stopping"}})
    async def ready() -> JSONResponse:
        """200 once the daemon is up, 503 before and while stopping."""
        up = is_ready()
        return JSONResponse({"ready": up}, status_code=200 if up else 503)

    @router.get("/live")
    async def live() -> dict[str, bool]:
        """Always 200 while the process serves."""
        return {"live": True}

    return router
