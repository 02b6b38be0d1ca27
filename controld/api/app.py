"""The controld HTTP API application (served by hypercorn's Trio worker)."""

from __future__ import annotations

from collections.abc import Callable

import structlog
from fastapi import FastAPI
from prometheus_client import CollectorRegistry

from controld.api.audit import audit_router
from controld.api.deps import Auditor, Guard
from controld.api.errors import install_error_handlers
from controld.api.events import events_router
from controld.api.gate import DEFAULT_MAX_BODY_BYTES, ApiGate
from controld.api.identity import identity_router
from controld.api.misc import api_router, probes_router
from controld.api.plane import ControlPlane
from controld.api.proxies import poll_route, proxies_router
from controld.api.registry_tokens import registry_tokens_router
from controld.api.resources import resources_router
from controld.api.telemetry import report_route, telemetry_router
from controld.api.tokens import tokens_router
from controld.audit import AuditLog
from controld.auth import TokenAuth
from controld.events import EventJournal
from controld.telemetry import TapHub, TelemetryWindow
from meshcore import __version__

__all__ = ["AUDIT_LOGGER", "build_api"]

#: Name of the structlog logger the audit events go to.
AUDIT_LOGGER = "controld.audit"


def build_api(
    plane: ControlPlane,
    *,
    auth: TokenAuth,
    metrics: CollectorRegistry,
    is_ready: Callable[[], bool],
    audit: AuditLog | None = None,
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    telemetry: TelemetryWindow | None = None,
    taps: TapHub | None = None,
    events: EventJournal | None = None,
) -> FastAPI:
    """The API app: resources, proxies and snapshots, status/schema/explain, tokens, probes.

    ``plane`` is read on each request (see :class:`~controld.api.plane.ControlPlane`);
    ``auth`` checks bearer tokens; ``metrics`` is served on ``/metrics`` and ``is_ready``
    answers ``/ready``. :class:`~controld.api.gate.ApiGate` wraps every route: bodies over
    ``max_body_bytes`` and requests without a valid token are refused before the body is
    read, bad JSON before it is parsed, and every mutating request is recorded in ``audit``
    (served on ``/v1/audit``; ``None``: audit events are only logged). Every endpoint is
    ``async def``: it runs on the Trio thread, where the daemon's state is safe to read, and
    never needs a worker thread. The interactive docs (CDN assets) are off;
    ``/openapi.json`` is served without a token. ``telemetry`` and ``taps`` (made here when
    not given) hold the sidecars' telemetry and the taps (:mod:`controld.api.telemetry`);
    ``events`` (made here when not given) is the journal of control-plane events served on
    ``/v1/events``, where resource changes are recorded too.
    """
    auditor = Auditor(structlog.get_logger(AUDIT_LOGGER))
    guard = Guard(auth, auditor)
    app = FastAPI(
        title="controld",
        version=__version__,
        summary="meshd control plane API",
        docs_url=None,
        redoc_url=None,
    )
    install_error_handlers(app)
    events = events if events is not None else EventJournal()
    app.include_router(resources_router(plane, guard, auditor, events))
    app.include_router(proxies_router(plane, guard))
    app.include_router(api_router(plane, auth, guard, auditor))
    app.include_router(probes_router(metrics, is_ready))
    app.include_router(tokens_router(auth, guard, auditor))
    if (identity := getattr(plane, "identity", None)) is not None:  # optional: the CA
        app.include_router(identity_router(identity, auth, guard, auditor))
    app.include_router(registry_tokens_router(plane, guard, auditor))
    if audit is not None:
        app.include_router(audit_router(audit, guard))
    telemetry = telemetry if telemetry is not None else TelemetryWindow()
    taps = taps if taps is not None else TapHub()
    app.include_router(telemetry_router(plane.hub, telemetry, taps, guard))
    app.include_router(events_router(events, guard))
    # The hot long-poll goes first: matched before (and instead of) its documented twin.
    app.router.routes.insert(0, poll_route(plane, auth))
    # As hot: a report per sidecar per second.
    app.router.routes.insert(1, report_route(plane.hub, auth, telemetry, taps))
    # The live route list: routers included later are covered too.
    app.add_middleware(
        ApiGate,
        routes=app.router.routes,
        guard=guard,
        audit=audit,
        max_body_bytes=max_body_bytes,
    )
    return app
