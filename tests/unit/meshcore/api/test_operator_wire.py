"""The operator routes' wire models (meshcore.api): round trips, refusals, the error shape."""

from __future__ import annotations

import json
from typing import Any

import pytest
from pydantic import BaseModel, ValidationError

from meshcore.api.audit import AuditPage
from meshcore.api.base import request_body
from meshcore.api.ca import (
    NEXT_STEP,
    CaStatus,
    RevokeAnswer,
    RevokeRequest,
    RotateRequest,
)
from meshcore.api.errors import (
    ErrorBody,
    Problem,
    UnexpectedAnswer,
    error_of,
    parse_answer,
    parse_object,
)
from meshcore.api.explain import ExplainRequest
from meshcore.api.proxies import ProxyList, drain_path
from meshcore.api.resources import ApplyAnswer, ApplyRequest, resource_path
from meshcore.api.status import StatusAnswer
from meshcore.api.tokens import (
    JoinTokenRequest,
    RegistryTokenRequest,
    SidecarTokenList,
    SidecarTokenRequest,
    sidecar_token_path,
)

pytestmark = pytest.mark.timeout(30)

PROXY = {
    "proxy_id": "web-1",
    "service": "web",
    "namespace": "default",
    "connected": True,
    "last_contact": 1000.5,
    "acked_version": 5,
    "acked_hash": "h5",
    "latest_version": 6,
    "latest_hash": "h6",
    "nack": {"version": 6, "hash": "h6", "error": "bad", "time": 999.0},
    "features": ["route.retries"],
    "unsupported": [{"feature": "route.mirror", "path": "route_tables.0.routes.0.mirror"}],
    "drain_requested": None,
}
AUDIT = {
    "time": "2026-12-06T11:00:00.000Z",
    "actor": "admin",
    "method": "PUT",
    "route": "/v1/resources",
    "path": "/v1/resources",
    "source": "127.0.0.1:4000",
    "status": 200,
    "outcome": "applied",
    "resource": None,
    "revision": 3,
    "details": {"changes": 1},
}
CA = {
    "phase": "staged",
    "active": "aaaa",
    "bundle": ["aaaa", "bbbb"],
    "index": 3,
    "trust_domain": "mesh.local",
    "leaf_ttl_s": 86400.0,
    "roots": [
        {
            "id": "aaaa",
            "active": True,
            "subject": "CN=a",
            "not_after": "2036-01-01T00:00:00Z",
            "outstanding": {"count": 2, "last_expiry": None, "untracked_until": None},
        }
    ],
    "tls": None,
    "revoked_leaves": 0,
    "invalid_records": {},
}
STATUS = {
    "registry": {
        "mode": "embedded",
        "address": "127.0.0.1:8500",
        "connected": True,
        "last_error": None,
        "last_contact": 1000.25,
        "last_index": 42,
        "errors": 0,
        "added_later": True,
    },
    "discovery": {"version": 3, "services": {"web": [{"host": "127.0.0.1", "port": 1}]}},
    "push": {"proxies": 1, "connected": 1, "rollouts_pending": 0},
    "telemetry": {"instances": 1, "taps": {"active": 0}},
    "store": {
        "connected": True,
        "loaded": True,
        "revision": 7,
        "resources": 3,
        "last_error": None,
        "last_contact": 1000.5,
        "errors": 0,
        "invalid_values": 0,
        "prefix": "meshd/",
        "kinds": {"HTTPRoute": 1},
    },
    "endpoint_mix": {},
}
IDENTITY = {
    "id": "0123456789abcdef",
    "service": "web",
    "namespace": "default",
    "spiffe_id": "spiffe://mesh.local/ns/default/svc/web",
    "instance": "web-1",
    "address": "127.0.0.1",
    "enrolled": "2026-12-06T10:00:00Z",
    "renewed": None,
    "serial": "1f",
    "not_after": "2026-12-07T10:00:00Z",
    "expires_in_s": 3600.0,
    "serials": ["1f"],
    "revoked": None,
}


@pytest.mark.parametrize(
    ("model", "answer"),
    [
        (ProxyList, {"proxies": [PROXY]}),
        (AuditPage, {"entries": [AUDIT]}),
        (CaStatus, CA),
        (RevokeAnswer, {"revoked": [IDENTITY], "spiffe_id": IDENTITY["spiffe_id"]}),
        (RevokeAnswer, {"revoked": [IDENTITY]}),
        (StatusAnswer, STATUS),
        (StatusAnswer, {"registry": {"mode": "embedded"}, "added_later": {"x": 1}}),
        (
            ApplyAnswer,
            {
                "revision": 4,
                "changes": [{"kind": "HTTPRoute", "name": "api", "action": "updated"}],
                "dry_run": False,
                "warnings": [],
            },
        ),
    ],
)
def test_answers_round_trip_to_the_same_json(
    model: type[BaseModel], answer: dict[str, Any]
) -> None:
    """What a client reads and prints back is what controld sent: same keys, same order."""
    parsed = model.model_validate_json(json.dumps(answer))
    dumped = parsed.model_dump(mode="json", exclude_unset=True)
    assert json.dumps(dumped) == json.dumps(answer)


def test_answers_ignore_unknown_fields_and_refuse_a_wrong_shape() -> None:
    newer = {**PROXY, "added_later": 1}
    assert ProxyList.model_validate({"proxies": [newer]}).proxies[0].proxy_id == "web-1"
    wrong: list[object] = [{"proxies": [{"proxy_id": "p"}]}, {"proxies": "p"}, {}, []]
    for bad in wrong:
        with pytest.raises(ValidationError):
            ProxyList.model_validate(bad)
    with pytest.raises(ValidationError):
        AuditPage.model_validate({"entries": [{**AUDIT, "status": "two hundred"}]})
    # A list answer must name its list: a different answer is not an empty one.
    with pytest.raises(ValidationError):
        SidecarTokenList.model_validate({"proxies": []})


def test_requests_refuse_unknown_fields_and_bad_values() -> None:
    with pytest.raises(ValidationError, match="extra"):
        ApplyRequest.model_validate({"resources": [], "dryrun": True})
    with pytest.raises(ValidationError):
        SidecarTokenRequest(service="Not A Service")
    with pytest.raises(ValidationError):
        SidecarTokenRequest(service="web", ttl_s=0)
    with pytest.raises(ValidationError):
        RegistryTokenRequest(service="web", ttl_s=10)
    with pytest.raises(ValidationError):
        JoinTokenRequest(service="web", ttl_s=10**9)
    with pytest.raises(ValidationError):
        RotateRequest.model_validate({"step": "skip"})
    with pytest.raises(ValidationError, match="exactly one"):
        RevokeRequest(identity="0123456789abcdef", service="web")
    with pytest.raises(ValidationError, match="exactly one"):
        RevokeRequest()
    with pytest.raises(ValidationError, match="400 bad_request"):
        ExplainRequest(source="web", destination="api", path="/a/%zz")
    assert ExplainRequest(source="web", destination="api").path == "/"


def test_request_body_sends_only_the_fields_given() -> None:
    assert request_body(RotateRequest, step="retire", force=None) == {"step": "retire"}
    assert request_body(RotateRequest, step="retire", force=True) == {
        "step": "retire",
        "force": True,
    }
    assert request_body(ApplyRequest, resources=[{"kind": "Mesh"}], dry_run=False) == {
        "resources": [{"kind": "Mesh"}],
        "dry_run": False,
    }
    # Values are controld's to check (one error path, its 422); unknown names are a bug here.
    assert request_body(SidecarTokenRequest, service="Bad Name") == {"service": "Bad Name"}
    with pytest.raises(TypeError, match="no field sevice"):
        request_body(SidecarTokenRequest, sevice="web")


def test_paths() -> None:
    assert resource_path("HTTPRoute", "api") == "/v1/resources/HTTPRoute/api"
    assert drain_path("web-1") == "/v1/proxies/web-1/drain"
    assert sidecar_token_path("ab") == "/v1/tokens/sidecar/ab"
    assert NEXT_STEP == {"stable": "stage", "staged": "activate", "active": "retire"}


def test_error_shape_as_controld_sends_it() -> None:
    plain = Problem(path="body.service", message="bad")
    stored = Problem(document=None, kind="HTTPRoute", name="api", path="spec", message="m")
    body = ErrorBody(error="invalid request", problems=(plain, stored))
    assert body.as_json() == {
        "error": "invalid request",
        "problems": [
            {"path": "body.service", "message": "bad"},
            {"document": None, "kind": "HTTPRoute", "name": "api", "path": "spec", "message": "m"},
        ],
    }
    assert ErrorBody(error="not found").as_json() == {"error": "not found", "problems": []}


def test_error_of_reads_any_error_answer() -> None:
    sent = {
        "error": "invalid resources",
        "problems": [
            {"document": 0, "kind": "Mesh", "name": "x", "path": "spec", "message": "m"},
            "junk",
            {"document": "first"},
        ],
    }
    body = error_of(json.dumps(sent).encode())
    assert body.error == "invalid resources"
    # Malformed problems are left out, not fatal.
    assert body.problems == (Problem(document=0, kind="Mesh", name="x", path="spec", message="m"),)
    assert error_of(b'{"detail": "Not Found"}').error == "Not Found"
    assert error_of(b"bad gateway\nmore", "Bad Gateway").error == "bad gateway"
    assert error_of(b"", "Unauthorized").error == "Unauthorized"
    assert error_of(b"[1, 2]", "Teapot").error == "Teapot"
    assert error_of(b'{"error": 42}').error == "42"
    assert error_of(b"{}").error == "error"


def test_unexpected_answers_name_the_path_and_the_field() -> None:
    with pytest.raises(UnexpectedAnswer) as info:
        parse_answer(ProxyList, "/v1/proxies", {"proxies": [{"proxy_id": 1}, {}]})
    message = str(info.value)
    assert message.startswith("unexpected answer from controld to /v1/proxies: proxies.0.")
    assert "more)" in message
    assert parse_object("/v1/status", {"registry": {}}) == {"registry": {}}
    with pytest.raises(UnexpectedAnswer, match="/v1/status: not a JSON object"):
        parse_object("/v1/status", ["x"])
