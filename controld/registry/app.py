"""The Starlette application serving the Consul HTTP API subset."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route, Router
from starlette.types import Receive, Scope, Send

from controld.registry import (
    api_acl,
    api_agent,
    api_catalog,
    api_health,
    api_kv,
    api_misc,
    api_operator,
    api_session,
    api_status,
)
from controld.registry.acl_access import check_acl
from controld.registry.errors import RequestError
from controld.registry.http import Ctx, error_response

__all__ = ["build_app"]

log = logging.getLogger("controld.registry.http")

_METHODS = ["GET", "PUT", "POST", "DELETE", "HEAD", "PATCH", "OPTIONS"]
# Consul answers these without any ACL token.
_NO_ACL = ("/v1/status/",)

Handler = Callable[[Request, Ctx], Awaitable[Response]]


def _endpoint(handler: Handler, ctx: Ctx) -> Callable[[Request], Awaitable[Response]]:
    async def endpoint(request: Request) -> Response:
        try:
            if not request.url.path.startswith(_NO_ACL):
                check_acl(request, ctx)
            return await handler(request, ctx)
        except RequestError as exc:
            if exc.status >= 500:
                log.warning("%s %s: %s", request.method, request.url.path, exc)
            return error_response(exc)

    endpoint.__name__ = handler.__name__
    return endpoint


async def _not_found(scope: Scope, receive: Receive, send: Send) -> None:
    await Response(b"", status_code=404)(scope, receive, send)


def build_app(ctx: Ctx) -> Router:
    """The ASGI app answering every endpoint of the modules ``api_*``.

    A bare Starlette ``Router``: the endpoints translate their own errors, so the
    ``Starlette`` application's error and exception middlewares would only add two wrappers
    to every ``send`` of every woken blocking query.
    """
    routes = []
    for module in (
        api_agent,
        api_catalog,
        api_health,
        api_kv,
        api_session,
        api_status,
        api_misc,
        api_acl,
        api_operator,
    ):
        for path, handler in module.ROUTES:
            routes.append(Route(path, _endpoint(handler, ctx), methods=_METHODS))
    return Router(routes=routes, default=_not_found)
