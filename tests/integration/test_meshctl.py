"""``meshctl`` against a real ``controld run`` (embedded registry, temp data dir, free ports).

controld runs as a subprocess (stopped by PID); meshctl runs in-process through
:func:`tui.cli.main`, so each command's exit code and output are checked directly.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from helpers import clean_env, ready_record, stop_process

from tui.cli import main

REPO = Path(__file__).resolve().parents[2]
DEMO_POLICY = REPO / "examples" / "demo" / "policy"
#: Bound of every wait of this module.
TIMEOUT = 30.0


@dataclass
class Controld:
    """A running ``controld run``: its API URL and admin token file."""

    proc: subprocess.Popen[bytes]
    url: str
    token_file: Path
    log_path: Path


@pytest.fixture(scope="module")
def controld(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Controld]:
    """``controld run`` on port 0 (API and embedded registry), ready, for this module."""
    workdir = tmp_path_factory.mktemp("controld")
    # Contract 5: the admin token file defaults to <data-dir>/admin-token.
    token_file = workdir / "data" / "admin-token"
    log_path = workdir / "controld.log"
    argv = [sys.executable, "-m", "controld", "run", "--data-dir", str(workdir / "data")]
    argv += ["--registry-listen", "127.0.0.1:0", "--admin", "127.0.0.1:0", "--push", "off"]
    argv += ["--tls", "off"]
    argv += ["--log-format", "json"]
    with log_path.open("wb") as out:
        proc = subprocess.Popen(
            argv,
            cwd=workdir,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=clean_env(),
        )
    try:
        deadline = time.monotonic() + TIMEOUT
        port = None
        while port is None:
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"controld not ready:\n{log_path.read_text(errors='replace')}")
            ready = ready_record(log_path)
            port = None if ready is None else int(ready["admin_port"])
            time.sleep(0.05)
        url = f"http://127.0.0.1:{port}"
        with httpx.Client(base_url=url, timeout=5.0) as http:
            while http.get("/ready").status_code != 200 or not token_file.exists():
                if time.monotonic() > deadline:
                    pytest.fail("controld /ready never answered 200")
                time.sleep(0.05)
        yield Controld(proc, url, token_file, log_path)
    finally:
        stop_process(proc, TIMEOUT)


@dataclass
class Result:
    code: int
    out: str
    err: str


@pytest.fixture
def meshctl(controld: Controld, capsys: pytest.CaptureFixture[str]) -> Any:
    """``meshctl(*args)`` -> :class:`Result`, against :func:`controld` with its admin token."""
    capsys.readouterr()

    def run(*args: str, server: bool = True) -> Result:
        argv = list(args)
        if server:
            argv += ["--server", controld.url, "--token-file", str(controld.token_file)]
        code = main(argv)
        captured = capsys.readouterr()
        return Result(code, captured.out, captured.err)

    return run


def _write(path: Path, docs: list[dict[str, Any]]) -> Path:
    path.write_text(yaml.safe_dump_all(docs, sort_keys=False))
    return path


def _route(name: str, service: str, v1: int, v2: int) -> dict[str, Any]:
    return {
        "kind": "HTTPRoute",
        "metadata": {"name": name},
        "spec": {
            "service": service,
            "rules": [
                {
                    "name": "split",
                    "match": {"path": {"prefix": "/"}},
                    "backends": [
                        {"subset": "v1", "weight": v1},
                        {"subset": "v2", "weight": v2},
                    ],
                }
            ],
        },
    }


def _resolver(service: str, subsets: tuple[str, ...] = ("v1", "v2")) -> dict[str, Any]:
    return {
        "kind": "ServiceResolver",
        "metadata": {"name": service},
        "spec": {"subsets": {s: {"tags": [s]} for s in subsets}},
    }


def test_apply_get_diff_delete(meshctl: Any, tmp_path: Path) -> None:
    # Apply the demo's policy directory: every resource created, one revision.
    done = meshctl("apply", "-f", str(DEMO_POLICY))
    assert done.code == 0, done.err
    lines = done.out.splitlines()
    assert "HTTPRoute/api created" in lines
    assert "Mesh/default created" in lines
    assert lines[-1].startswith("revision ")
    revision = lines[-1]

    again = meshctl("apply", "-f", str(DEMO_POLICY))
    assert again.code == 0, again.err
    assert "HTTPRoute/api unchanged" in again.out.splitlines()

    listed = meshctl("get")
    assert listed.code == 0, listed.err
    assert listed.out.splitlines()[0].split() == ["KIND", "NAME", "LABELS"]
    assert any(
        line.split()[:3] == ["HTTPRoute", "api", "team=api"] for line in listed.out.splitlines()
    )

    one = meshctl("get", "route", "api")
    assert one.code == 0, one.err
    assert one.out.splitlines()[0].split() == ["KIND", "NAME", "REVISION", "LABELS"]
    assert json.loads(meshctl("get", "httproutes", "api", "-o", "json").out)["meta"]["revision"]

    # The YAML of `get` applies back unchanged and shows no diff.
    exported = meshctl("get", "-o", "yaml")
    assert exported.code == 0
    backup = tmp_path / "backup.yaml"
    backup.write_text(exported.out)
    assert {d["kind"] for d in yaml.safe_load_all(exported.out)} >= {"Mesh", "HTTPRoute"}
    same = meshctl("diff", "-f", str(backup))
    assert same.code == 0, same.out + same.err
    assert same.out == ""
    assert "HTTPRoute/api: unchanged" in same.err
    replayed = meshctl("apply", "-f", str(backup))
    assert replayed.code == 0
    assert replayed.out.splitlines()[-1] == revision

    # A changed weight shows as a diff (exit 1); --dry-run reports it without storing.
    docs = list(yaml.safe_load_all((DEMO_POLICY / "api.yaml").read_text()))
    route = next(d for d in docs if d["kind"] == "HTTPRoute")
    route["spec"]["rules"][1]["backends"][0]["weight"] = 50
    changed = _write(tmp_path / "api.yaml", docs)
    diff = meshctl("diff", "-f", str(changed))
    assert diff.code == 1
    assert "--- controld/HTTPRoute/api" in diff.out
    assert "-        weight: 90\n" in diff.out or "-      weight: 90\n" in diff.out
    assert "+" in diff.out and "weight: 50" in diff.out
    assert "HTTPRoute/api: changed" in diff.err
    assert "ServiceResolver/api: unchanged" in diff.err
    dry = meshctl("apply", "--dry-run", "-f", str(changed))
    assert dry.code == 0, dry.err
    assert "HTTPRoute/api updated (dry run)" in dry.out.splitlines()
    assert meshctl("diff", "-f", str(changed)).code == 1

    applied = meshctl("apply", "-f", str(changed))
    assert "HTTPRoute/api updated" in applied.out.splitlines()
    assert meshctl("diff", "-f", str(changed)).code == 0

    # A deletion that would break the rest is refused, with controld's reasons.
    refused = meshctl("delete", "resolver", "api")
    assert refused.code == 1
    assert "ServiceResolver/api not deleted" in refused.err
    assert "controld: HTTPRoute/api: spec.rules.1.backends.0.subset:" in refused.err

    # Delete by name, and by file; a second delete reports not found.
    gone = meshctl("delete", "route", "api")
    assert gone.code == 0, gone.err
    assert gone.out.splitlines()[0] == "HTTPRoute/api deleted"
    missing = meshctl("delete", "HTTPRoute", "api")
    assert missing.code == 1
    assert "HTTPRoute/api not found" in missing.err
    new = meshctl("diff", "-f", str(changed))
    assert new.code == 1
    assert "HTTPRoute/api: new" in new.err
    by_file = meshctl("delete", "-f", str(DEMO_POLICY / "access.yaml"))
    assert by_file.code == 0, by_file.err
    assert "AccessPolicy/api-callers deleted" in by_file.out


def test_problems_name_file_and_document(meshctl: Any, tmp_path: Path) -> None:
    # Local problems: nothing is sent, every problem names file, document and field.
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "kind: HTTPRoute\nmetadata: {name: x}\nspec: {service: shop, rules: "
        "[{backends: [{weight: -1}]}]}\n---\nkind: Gadget\nmetadata: {name: y}\n"
    )
    local = meshctl("apply", "-f", str(bad))
    assert local.code == 1
    assert f"{bad}: document 1 (HTTPRoute/x): spec.rules.0.backends.0.weight:" in local.err
    assert f"{bad}: document 2 (Gadget/y): kind:" in local.err

    # controld's cross-resource problems map back to the file and document they came from.
    resolver = _write(tmp_path / "resolver.yaml", [_resolver("shop", ("v1",))])
    route = _write(
        tmp_path / "route.yaml",
        [
            {"kind": "ServiceDefaults", "metadata": {"name": "shop"}, "spec": {}},
            _route("shop-split", "shop", 90, 10),
        ],
    )
    rejected = meshctl("apply", "-f", str(resolver), "-f", str(route))
    assert rejected.code == 1, rejected.out
    assert "controld rejected the resources" in rejected.err
    assert f"{route}: document 2 (HTTPRoute/shop-split): spec.rules.0.backends.1" in rejected.err
    assert rejected.out == ""
    absent = meshctl("get", "route", "shop-split")
    assert absent.code == 1
    assert "not found" in absent.err


def test_status_token_schema_explain(meshctl: Any, controld: Controld, tmp_path: Path) -> None:
    policy = [_resolver("cart"), _route("cart-split", "cart", 75, 25)]
    assert meshctl("apply", "-f", str(_write(tmp_path / "cart.yaml", policy))).code == 0

    minted = meshctl("token", "sidecar", "--service", "web")
    assert minted.code == 0, minted.err
    token = minted.out.strip()
    assert token.startswith("sidecar.")
    assert minted.out.count("\n") == 1
    token_id = token.split(".")[1]
    assert f"token id {token_id}" in minted.err
    short = meshctl("token", "sidecar", "--service", "web", "--ttl", "1h", "-o", "json")
    assert short.code == 0, short.err
    short_id = json.loads(short.out)["id"]
    listed = meshctl("token", "list")
    assert listed.code == 0, listed.err
    rows = {line.split()[0]: line.split() for line in listed.out.splitlines()[1:]}
    assert rows[token_id][1:4] == ["web", "default", "-"]
    assert set(rows) == {token_id, short_id}
    assert token.split(".")[2] not in listed.out
    revoked = meshctl("token", "revoke", short_id)
    assert revoked.code == 0, revoked.err
    assert short_id not in meshctl("token", "list").out
    assert meshctl("token", "revoke", short_id).code != 0

    descriptor = {
        "proxy_id": "web-1",
        "service": "web",
        "upstreams": [{"service": "cart", "port": 15001}],
    }
    with httpx.Client(
        base_url=controld.url, headers={"Authorization": f"Bearer {token}"}, timeout=10.0
    ) as http:
        assert http.post("/v1/proxies/web-1", json=descriptor).status_code == 200
        # A new proxy's snapshot is compiled in the background: the first poll waits for it.
        first = http.get("/v1/snapshots/web-1", params={"wait": 10})
        assert first.status_code == 200, first.text
        body = first.json()
        # The next poll ACKs that version.
        acked = http.get(
            "/v1/snapshots/web-1",
            params={"version": body["version"], "hash": body["hash"], "wait": 0},
        )
        assert acked.status_code == 304

    status = meshctl("status")
    assert status.code == 0, status.err
    lines = status.out.splitlines()
    assert lines[0].startswith("registry: embedded (connected)")
    assert "resources: revision" in lines[0]
    header = next(i for i, line in enumerate(lines) if line.startswith("PROXY"))
    row = next(line for line in lines[header:] if line.startswith("web-1"))
    assert row.split()[:3] == ["web-1", "web", "yes"]
    assert "synced" in row
    as_json = json.loads(meshctl("status", "-o", "json").out)
    assert as_json["proxies"][0]["proxy_id"] == "web-1"

    schema = meshctl("schema", "route")
    assert schema.code == 0, schema.err
    assert "properties" in json.loads(schema.out)
    everything = json.loads(meshctl("schema").out)
    assert "HTTPRoute" in everything

    explained = meshctl("explain", "web", "cart", "--path", "/items", "--header", "x-a=1")
    assert explained.code == 0, explained.err
    assert explained.out.splitlines()[0].startswith("web -> cart")
    assert "split" in explained.out
    raw = meshctl("explain", "web", "cart", "-o", "json")
    assert raw.code == 0
    assert isinstance(json.loads(raw.out), dict)


def test_auth_and_unreachable(meshctl: Any, controld: Controld) -> None:
    refused = meshctl("get", "--server", controld.url, "--token", "wrong", server=False)
    assert refused.code == 1
    assert "401" in refused.err
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    down = meshctl("status", "--server", url, "--token", "t", server=False)
    assert down.code == 3
    assert f"cannot reach controld at {url}" in down.err


def test_token_registry(meshctl: Any, controld: Controld) -> None:
    """``meshctl token registry``: a registry token with the service identity, nothing more."""
    minted = meshctl("token", "registry", "--service", "web", "--ttl", "1h")
    assert minted.code == 0, minted.err
    secret = minted.out.strip()
    assert minted.out.count("\n") == 1 and secret
    ready = ready_record(controld.log_path)
    assert ready is not None
    registry = f"http://127.0.0.1:{ready['registry_port']}"
    with httpx.Client(base_url=registry, headers={"X-Consul-Token": secret}, timeout=10.0) as http:
        me = http.get("/v1/acl/token/self").json()
        assert me["ServiceIdentities"] == [{"ServiceName": "web"}]
        assert me["ExpirationTime"]
        ok = http.put("/v1/agent/service/register", json={"Name": "web", "ID": "web-meshctl"})
        assert ok.status_code == 200, ok.text
        assert http.put("/v1/agent/service/register", json={"Name": "db"}).status_code == 403
        assert http.put("/v1/kv/meshd/x", content=b"x").status_code == 403
        assert http.put("/v1/agent/service/deregister/web-meshctl").status_code == 200
    bad = meshctl("token", "registry", "--service", "web", "--ttl", "30s")
    assert bad.code != 0
