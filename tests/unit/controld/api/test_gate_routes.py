"""The API gate on a small app: routes included after it was added are guarded too."""

# No `from __future__ import annotations`: FastAPI evaluates the route signatures.

from typing import Annotated

import httpx
import pytest
import structlog
from fastapi import APIRouter, Depends, FastAPI
from pydantic import BaseModel

from controld.api.deps import Auditor, Guard
from controld.api.errors import install_error_handlers
from controld.api.gate import ApiGate
from controld.auth import Principal, TokenAuth

pytestmark = pytest.mark.timeout(30)

TOKEN = "a" * 32


class Body(BaseModel):
    name: str


def make_app(limit: int = 1024) -> FastAPI:
    auth = TokenAuth(TOKEN)
    guard = Guard(auth, Auditor(structlog.get_logger("test")))
    app = FastAPI()
    install_error_handlers(app)
    app.add_middleware(ApiGate, routes=app.router.routes, guard=guard, max_body_bytes=limit)
    # Included after the gate was added (as other parts of the API add their routes).
    router = APIRouter()
    Admin = Annotated[Principal, Depends(guard.admin)]

    @router.post("/late")
    async def late(body: Body, _: Admin) -> dict[str, str]:
        return {"name": body.name}

    @router.post("/public")
    async def public(body: Body) -> dict[str, str]:
        return {"name": body.name}

    app.include_router(router)
    return app


def client(app: FastAPI, token: str | None = None) -> httpx.AsyncClient:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://gate", headers=headers
    )


async def test_a_late_route_is_guarded_before_its_body() -> None:
    app = make_app()
    json_type = {"content-type": "application/json"}
    async with client(app) as anon, client(app, TOKEN) as admin:
        for body in (b"{", b"[" * 5000, b"x" * 4096):
            resp = await anon.post("/late", content=body, headers=json_type)
            assert resp.status_code == 401, resp.text
        resp = await admin.post("/late", content=b'{"name": "\\ud800"}', headers=json_type)
        assert resp.status_code == 422
        assert resp.json()["problems"][0]["path"] == "body"
        resp = await admin.post("/late", content=b"x" * 2000, headers=json_type)
        assert resp.status_code == 413
        resp = await admin.post("/late", json={"name": "n"})
        assert (resp.status_code, resp.json()) == (200, {"name": "n"})
        # A public route: no token needed, the same body checks.
        assert (await anon.post("/public", json={"name": "p"})).status_code == 200
        resp = await anon.post("/public", content=b"[" * 100, headers=json_type)
        assert resp.status_code == 422


def test_the_limit_is_positive() -> None:
    guard = Guard(TokenAuth(TOKEN), Auditor(structlog.get_logger("test")))
    with pytest.raises(ValueError, match="at least 1 byte"):
        ApiGate(FastAPI(), routes=[], guard=guard, max_body_bytes=0)
