"""``meshctl ca``: the status table, the rotate call and the argument parsing."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest

from meshcore.api.ca import CaStatus
from tui.cli import build_parser
from tui.cli.ca import ca_status_lines, cmd_ca_rotate, cmd_ca_status
from tui.client import ApiError, ControldClient

STATUS: dict[str, Any] = {
    "phase": "active",
    "active": "bbbb",
    "bundle": ["aaaa", "bbbb"],
    "index": 42,
    "trust_domain": "mesh.local",
    "leaf_ttl_s": 86400.0,
    "roots": [
        {
            "id": "aaaa",
            "active": False,
            "subject": "CN=old",
            "not_after": "2036-01-01T00:00:00Z",
            "outstanding": {
                "count": 2,
                "last_expiry": "2026-11-23T06:00:00Z",
                "untracked_until": "2026-11-23T05:00:00Z",
            },
        },
        {
            "id": "bbbb",
            "active": True,
            "subject": "CN=new",
            "not_after": "2036-02-01T00:00:00Z",
            "outstanding": {"count": 5, "last_expiry": None, "untracked_until": None},
        },
    ],
}


def _lines(status: dict[str, Any]) -> list[str]:
    return ca_status_lines(CaStatus.model_validate(status))


def test_status_lines_name_roles_outstanding_and_next_step() -> None:
    lines = _lines(STATUS)
    assert lines[0] == "phase active, signer bbbb, bundle index 42, trust domain mesh.local"
    text = "\n".join(lines)
    old = next(line for line in lines if line.startswith("aaaa"))
    assert "old" in old and "2 (+ untracked until 2026-11-23T05:00:00Z)" in old
    assert "2026-11-23T06:00:00Z" in old
    new = next(line for line in lines if line.startswith("bbbb"))
    assert "signer" in new and " 5 " in new
    assert lines[-1] == "next step: meshctl ca rotate --step retire"
    assert "OUTSTANDING" in text
    staged = {**STATUS, "phase": "staged", "active": "aaaa"}
    staged["roots"] = [
        {**STATUS["roots"][0], "active": True},
        {**STATUS["roots"][1], "active": False},
    ]
    lines = _lines(staged)
    assert "staged" in next(line for line in lines if line.startswith("bbbb"))
    assert lines[-1] == "next step: meshctl ca rotate --step activate"
    assert "TLS listener off" in "\n".join(lines)
    tls = {
        "listen": "127.0.0.1:8503",
        "spiffe_id": "spiffe://mesh.local/controld",
        "not_after": "2026-11-23T06:00:00Z",
        "sans": ["localhost", "127.0.0.1"],
    }
    text = "\n".join(_lines({**STATUS, "tls": tls}))
    assert "TLS listener 127.0.0.1:8503: spiffe://mesh.local/controld" in text
    assert "names localhost, 127.0.0.1" in text
    revoked = {**STATUS, "revoked_leaves": 3, "invalid_records": {"join-token": 2}}
    text = "\n".join(_lines(revoked))
    assert "revoked certificates not yet expired: 3" in text
    assert "invalid CA records skipped: join-token 2" in text


def test_client_rotate_sends_step_and_force_and_surfaces_409() -> None:
    seen: list[dict[str, Any]] = []

    def handle(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/v1/ca":
            return httpx.Response(200, json=STATUS)
        body = json.loads(request.content)
        seen.append(body)
        if body["step"] == "retire" and not body.get("force"):
            return httpx.Response(409, json={"error": "refusing to retire root aaaa: 2 leaf"})
        answer = {"phase": "stable", "active": "bbbb", "bundle": ["bbbb"], "roots": [], "index": 43}
        return httpx.Response(200, json=answer)

    transport = httpx.MockTransport(handle)
    with ControldClient("http://controld.test", "t", transport=transport) as client:
        assert client.ca_status() == CaStatus.model_validate(STATUS)
        with pytest.raises(ApiError) as info:
            client.ca_rotate("retire")
        assert info.value.status == 409 and "2 leaf" in info.value.message
        assert client.ca_rotate("retire", force=True).phase == "stable"
    assert seen == [{"step": "retire"}, {"step": "retire", "force": True}]


def test_parser_registers_ca_commands() -> None:
    parser = build_parser()
    args = parser.parse_args(["ca", "rotate", "--step", "retire", "--force"])
    assert (args.run, args.step, args.force) == (cmd_ca_rotate, "retire", True)
    args = parser.parse_args(["ca", "status", "-o", "json"])
    assert args.run is cmd_ca_status
    with pytest.raises(SystemExit):
        parser.parse_args(["ca", "rotate", "--step", "bogus"])
