"""The audit log on a real daemon: every change through the API, who, what, when, from where.

Entries are read back through ``GET /v1/audit`` and ``meshctl audit``; they live in the
registry KV as sealed records, so one written there by someone else is skipped.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
from daemon_support import TIMEOUT, api_url, running_daemon, tls_url
from test_enroll import WEB, Sidecar, join_token

from controld.audit import AuditEntry, AuditLog, parse_time
from controld.daemon import ControlDaemon
from controld.sealed import RecordKey
from controld.store import InvalidRecords
from meshcore.registry.client import RegistryClient, RegistrySettings
from tui.cli import main as meshctl

pytestmark = pytest.mark.timeout(120)

DEFAULTS = {"kind": "ServiceDefaults", "metadata": {"name": "api"}, "spec": {"lb_policy": "random"}}
DESCRIPTOR = {"proxy_id": "web-1", "service": "web", "inbound": "127.0.0.1:15006"}


def registry(daemon: ControlDaemon) -> RegistryClient:
    assert daemon.ports is not None and daemon.config.registry is not None
    token = daemon.config.registry.acl_management_token
    return RegistryClient(RegistrySettings(url=daemon.ports.registry_url, token=token))


async def entries(http: httpx.AsyncClient, **params: Any) -> list[dict[str, Any]]:
    resp = await http.get("/v1/audit", params=params)
    assert resp.status_code == 200, resp.text
    found: list[dict[str, Any]] = resp.json()["entries"]
    return found


async def test_changes_are_audited_with_actor_and_source(tmp_path: Path) -> None:
    async with (
        running_daemon(tmp_path / "data") as (daemon, http),
        httpx.AsyncClient(base_url=api_url(http), timeout=TIMEOUT) as anon,
    ):
        assert (await http.put("/v1/resources", json={"resources": [DEFAULTS]})).status_code == 200
        assert (await http.delete("/v1/resources/ServiceDefaults/api")).status_code == 200
        sidecar = await http.post("/v1/tokens/sidecar", json={"service": "web"})
        assert sidecar.status_code == 200
        token = await join_token(http)
        # Refused without a credential: not stored (nobody may flood the log).
        assert (await anon.put("/v1/resources", json={"resources": []})).status_code == 401
        # A sidecar registers with its token; it enrolls (join token) and renews (mTLS).
        as_web = {"Authorization": f"Bearer {sidecar.json()['token']}"}
        registered = await anon.post("/v1/proxies/web-1", json=DESCRIPTOR, headers=as_web)
        assert registered.status_code == 200, registered.text
        web = Sidecar(anon, tls_url(daemon))
        assert (await web.enroll(token)).status_code == 200
        roots = (await anon.get("/v1/bundle")).json()["roots"]
        assert (await web.renew(roots)).status_code == 200

        found = await entries(http)
        summary = [(e["actor"], e["method"], e["route"], e["status"]) for e in found]
        assert summary == [
            (WEB, "POST", "/v1/renew", 200),
            ("anonymous", "POST", "/v1/enroll", 200),
            ("sidecar:web", "POST", "/v1/proxies/{proxy_id}", 200),
            ("admin", "POST", "/v1/tokens/join", 200),
            ("admin", "POST", "/v1/tokens/sidecar", 200),
            ("admin", "DELETE", "/v1/resources/{kind}/{name}", 200),
            ("admin", "PUT", "/v1/resources", 200),
        ]
        by_route = {e["route"]: e for e in found}
        apply = by_route["/v1/resources"]
        assert (apply["outcome"], apply["revision"]) == ("applied", 1)
        delete = by_route["/v1/resources/{kind}/{name}"]
        assert (delete["outcome"], delete["resource"], delete["revision"]) == (
            "deleted",
            "ServiceDefaults/api",
            2,
        )
        minted = by_route["/v1/tokens/sidecar"]
        assert (minted["outcome"], minted["details"]["service"]) == ("minted", "web")
        assert by_route["/v1/proxies/{proxy_id}"]["resource"] == "proxy_id=web-1"
        for entry in found:
            assert entry["source"].startswith("127.0.0.1:")
            assert entry["time"].endswith("Z")
            kept = json.dumps(entry)
            # No secret is kept: not the minted tokens, not any part of them.
            secrets = (
                sidecar.json()["token"].split(".")[2],  # sidecar.<id>.<secret>
                token.split(".")[2],  # join.<id>.<secret>.<pins>
                http.headers["authorization"].split()[-1],  # the admin token
            )
            assert not [secret for secret in secrets if secret in kept]

        # Filters: limit and since.
        assert [e["route"] for e in await entries(http, limit=2)] == [
            "/v1/renew",
            "/v1/enroll",
        ]
        later = await entries(http, since=found[1]["time"])
        assert {e["route"] for e in later} >= {"/v1/renew", "/v1/enroll"}
        assert await entries(http, since="2999-01-01T00:00:00Z") == []
        assert (await http.get("/v1/audit", params={"since": "yesterday"})).status_code == 400
        # Admin only.
        assert (await anon.get("/v1/audit")).status_code == 401
        assert (await anon.get("/v1/audit", headers=as_web)).status_code == 403


async def run_meshctl(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, list[str]]:
    """meshctl's exit code and output lines (its client is synchronous: off the loop that
    serves the daemon; the daemon's log events may share stdout)."""
    capsys.readouterr()
    code = await trio.to_thread.run_sync(meshctl, list(argv))
    return code, capsys.readouterr().out.splitlines()


def json_output(lines: list[str]) -> Any:
    """The JSON document meshctl printed (from its first line ``[`` to the closing ``]``)."""
    start = lines.index("[") if "[" in lines else lines.index("[]")
    end = start if lines[start] == "[]" else lines.index("]", start)
    return json.loads("\n".join(lines[start : end + 1]))


async def test_meshctl_audit(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    async with running_daemon(tmp_path / "data") as (daemon, http):
        assert (await http.put("/v1/resources", json={"resources": [DEFAULTS]})).status_code == 200
        token = http.headers["authorization"].removeprefix("Bearer ")
        base = ["--server", api_url(http), "--token", token]
        code, lines = await run_meshctl(capsys, "audit", *base)
        assert code == 0
        [header] = [line for line in lines if line.startswith("TIME")]
        row = lines[lines.index(header) + 1]
        assert header.split() == [
            "TIME",
            "ACTOR",
            "ACTION",
            "RESOURCE",
            "SOURCE",
            "STATUS",
            "OUTCOME",
        ]
        assert "admin" in row and "PUT /v1/resources" in row
        assert "applied (revision 1)" in row
        code, lines = await run_meshctl(capsys, "audit", "--json", "--since", "1h", *base)
        assert code == 0
        parsed = json_output(lines)
        assert [(e["actor"], e["outcome"]) for e in parsed] == [("admin", "applied")]
        code, lines = await run_meshctl(capsys, "audit", "--since", "2999-01-01T00:00:00Z", *base)
        assert (code, lines[-1]) == (0, "no audit entries")
        assert (await run_meshctl(capsys, "audit", "--since", "soon", *base))[0] == 2
        # A sidecar token may not read the audit log.
        sidecar, _ = await daemon.auth.mint_sidecar("web")
        code, _ = await run_meshctl(capsys, "audit", "--server", api_url(http), "--token", sidecar)
        assert code == 1


async def test_bad_audit_records_are_skipped_and_the_log_is_bounded(tmp_path: Path) -> None:
    async with running_daemon(tmp_path / "data") as (daemon, http):
        assert (await http.put("/v1/resources", json={"resources": [DEFAULTS]})).status_code == 200
        with registry(daemon) as kv:
            # Forged, deep, unsealed: skipped, counted, never fatal.
            forged = {"time": "2999-01-01T00:00:00.000Z", "actor": "admin", "method": "DELETE"}
            for suffix, value in {
                "99999999999999999999-00000000": json.dumps(forged).encode(),
                "99999999999999999998-00000000": b"[" * 50_000,
                "99999999999999999997-00000000": json.dumps(
                    {"v": 1, "body": forged, "mac": "x"}
                ).encode(),
            }.items():
                assert await kv.kv_put(f"meshd/audit/{suffix}", value)
            found = await entries(http)
            assert [(e["actor"], e["route"]) for e in found] == [("admin", "/v1/resources")]
            counted = daemon.metrics.get_sample_value(
                "controld_kv_records_invalid_total", {"kind": "audit"}
            )
            assert counted == 3

            # The bound: the oldest entries are dropped.
            log = AuditLog(kv, "bounded/", RecordKey(b"k" * 32), InvalidRecords(), max_entries=3)
            for i in range(7):
                entry = AuditEntry(
                    time=f"2026-01-01T00:00:0{i}.000Z",
                    actor="admin",
                    method="POST",
                    route="/v1/x",
                    path="/v1/x",
                    source="127.0.0.1:1",
                    status=200,
                    outcome=f"n{i}",
                )
                assert await log.record(entry)
            kept = await log.read(limit=100)
            assert len(kept) <= 3 + 1  # trimmed every max_entries // 10 (here: each) write
            assert [e.outcome for e in kept][:3] == ["n6", "n5", "n4"]
            since = await log.read(since=parse_time("2026-01-01T00:00:05Z"))
            assert [e.outcome for e in since] == ["n6", "n5"]
