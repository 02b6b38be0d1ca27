"""``meshctl identities`` and ``meshctl revoke`` against a real daemon."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
from daemon_support import TIMEOUT, running_daemon
from test_enroll import join_token, make_csr

from tui.cli import main as meshctl

pytestmark = pytest.mark.timeout(120)


async def run(capsys: pytest.CaptureFixture[str], base: list[str], *args: str) -> tuple[int, str]:
    capsys.readouterr()
    # meshctl's client is synchronous: run it off the loop that serves the daemon.
    code = await trio.to_thread.run_sync(meshctl, [*base, *args])
    out = capsys.readouterr().out
    return code, out


def last_json(out: str) -> Any:
    """meshctl's JSON document (the daemon's log lines share this stdout, before it): from
    the last line opening an object or a list (its inner lines are indented)."""
    start = max(out.rfind("\n{"), out.rfind("\n[")) + 1
    return json.loads(out[start:])


async def test_identities_and_revoke(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    async with (
        running_daemon(tmp_path / "data") as (daemon, http),
        httpx.AsyncClient(base_url=str(http.base_url), timeout=TIMEOUT) as anon,
    ):
        base = ["--server", str(http.base_url), "--token-file", str(daemon.config.token_path)]
        enrolled: list[dict[str, Any]] = []
        for service in ("web", "web", "api"):
            token = await join_token(http, service)
            instance = f"{service}-{len(enrolled)}"
            body = {"token": token, "csr": make_csr()[0], "instance": instance}
            resp = await anon.post("/v1/enroll", json=body)
            assert resp.status_code == 200, resp.text
            enrolled.append(resp.json())
        web0, web1, api = enrolled

        code, out = await run(capsys, base, "identities", "--json")
        assert code == 0
        listed = {i["id"]: i for i in last_json(out)["identities"]}
        assert set(listed) == {web0["identity_id"], web1["identity_id"], api["identity_id"]}
        assert listed[web0["identity_id"]]["instance"] == "web-0"
        assert listed[api["identity_id"]]["spiffe_id"] == "spiffe://mesh.local/ns/default/svc/api"
        assert 0 < listed[web0["identity_id"]]["expires_in_s"] <= 86400
        assert all(i["revoked"] is None for i in listed.values())

        code, out = await run(capsys, base, "identities", "--service", "web")
        assert code == 0
        table = out[out.index("ID   ") :].splitlines()
        assert table[0].split() == [
            "ID", "SERVICE", "INSTANCE", "SPIFFE", "ID", "SERIAL", "NOT", "AFTER",
            "EXPIRES", "IN", "REVOKED",
        ]  # fmt: skip
        assert len(table) == 3 and all(" no" in row for row in table[1:])
        assert any("web-1" in row and "23h" in row for row in table[1:])

        # By identity id.
        code, out = await run(capsys, base, "revoke", web0["identity_id"])
        assert code == 0
        assert f"revoked identity {web0['identity_id']} (web, instance web-0)" in out
        # By serial (hex, as `identities` shows it).
        serial = listed[web1["identity_id"]]["serial"]
        code, out = await run(capsys, base, "revoke", "--serial", serial, "--json")
        assert code == 0
        assert [i["id"] for i in last_json(out)["revoked"]] == [web1["identity_id"]]
        code, out = await run(capsys, base, "identities", "--json")
        states = {i["id"]: i["revoked"] for i in last_json(out)["identities"]}
        assert states[web0["identity_id"]] and states[web1["identity_id"]]
        assert states[api["identity_id"]] is None
        # Every instance of a service.
        code, out = await run(capsys, base, "revoke", "--service", "api")
        assert code == 0
        assert "revoked service spiffe://mesh.local/ns/default/svc/api: 1 instance(s)" in out
        bundle = (await anon.get("/v1/bundle")).json()
        assert len(bundle["revoked"]) == 3

        # The API: admin only, exactly one target.
        assert (await anon.get("/v1/identities")).status_code == 401
        assert (await anon.post("/v1/revocations", json={"service": "web"})).status_code == 401
        for body in ({}, {"identity": web0["identity_id"], "service": "web"}, {"serial": "xyz"}):
            assert (await http.post("/v1/revocations", json=body)).status_code == 422, body
        # Usage errors and unknown targets.
        assert (await run(capsys, base, "revoke"))[0] == 2
        assert (await run(capsys, base, "revoke", "x" * 16, "--service", "api"))[0] == 2
        assert (await run(capsys, base, "revoke", "0123456789abcdef"))[0] == 1
        assert (await run(capsys, base, "revoke", "--serial", "abc123"))[0] == 1


async def test_json_output_is_the_daemons_answer(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``-o json`` goes through the shared wire models (meshcore.api) and still prints what
    controld sent: same fields, same values, same order."""
    async with running_daemon(tmp_path / "data") as (daemon, http):
        base = ["--server", str(http.base_url), "--token-file", str(daemon.config.token_path)]
        await join_token(http, "web")  # an audited change, so the audit log isn't empty
        for args, path, key in (
            (("ca", "status"), "/v1/ca", None),
            (("identities",), "/v1/identities", None),
            (("token", "list"), "/v1/tokens/sidecar", None),
            (("audit",), "/v1/audit?limit=50", "entries"),
        ):
            code, out = await run(capsys, base, *args, "-o", "json")
            assert code == 0, args
            raw = (await http.get(path)).json()
            expected = raw if key is None else raw[key]
            assert expected, path  # something to compare
            assert json.dumps(last_json(out)) == json.dumps(expected), args
        # The status moves (contact times, counters): the same sections and fields, in order.
        code, out = await run(capsys, base, "status", "-o", "json")
        assert code == 0
        raw = (await http.get("/v1/status")).json()
        assert _shape(last_json(out)["status"]) == _shape(raw)
        assert "registry" in raw and "store" in raw


def _shape(value: Any) -> Any:
    """The keys of ``value``'s objects, in order, recursively (the values left out)."""
    if isinstance(value, dict):
        return [(key, _shape(item)) for key, item in value.items()]
    if isinstance(value, list):
        return [_shape(item) for item in value]
    return None
