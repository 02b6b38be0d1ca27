"""API fuzzing of a real ``controld run``: schemathesis cases from its own OpenAPI schema.

Every operation controld's schema lists (routes added later are picked up by themselves) gets
a bounded number of generated requests, valid and invalid (schemathesis's positive and
negative modes), first without a token and with a wrong one, then with the admin token:

* no answer is a 5xx, whatever the input;
* without a valid token nothing changes: the registry KV (every key, value and ModifyIndex),
  the store revision and the registered sidecars are the same before and after.

Why schemathesis: it turns the OpenAPI document into Hypothesis strategies for every
parameter and body (including invalid ones), which is exactly what this check needs and would
otherwise be a schema-to-strategy translator of our own. It runs as a plain test with a fixed
seed and a few examples per operation (``MESHD_FUZZ_EXAMPLES``, default 10), under the test's
timeout, so CI runs it in bounded time.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

schemathesis = pytest.importorskip("schemathesis")

pytestmark = [pytest.mark.timeout(600), pytest.mark.fuzz]

EXAMPLES = int(os.environ.get("MESHD_FUZZ_EXAMPLES", "10"))
START_TIMEOUT_S = 30.0


@dataclass(frozen=True)
class Controld:
    """A ``controld run`` subprocess: its API, registry and tokens."""

    api: str
    registry: str
    admin_token: str
    registry_token: str


def _ready_event(proc: subprocess.Popen[bytes], log: Path) -> dict[str, Any]:
    """The daemon's ``ready`` log event (JSON lines in ``log``), within bounds."""
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline and proc.poll() is None:
        for line in log.read_text(errors="replace").splitlines():
            try:
                event = json.loads(line)
            except ValueError:
                continue
            if isinstance(event, dict) and event.get("event") == "ready":
                return event
        time.sleep(0.05)
    raise AssertionError(f"controld did not get ready (exit {proc.poll()}): {log.read_text()}")


@pytest.fixture(scope="module")
def controld(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Controld]:
    base = tmp_path_factory.mktemp("fuzz")
    data = base / "data"
    log = base / "controld.log"
    registry_token = secrets.token_urlsafe(24)
    argv = [sys.executable, "-m", "controld", "run", "--data-dir", str(data)]
    argv += ["--registry-listen", "127.0.0.1:0", "--admin", "127.0.0.1:0"]
    argv += ["--push", "off", "--tls", "off", "--log-format", "json"]
    argv += ["--acl-management-token", registry_token]
    with log.open("wb") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT)
    try:
        ready = _ready_event(proc, log)
        yield Controld(
            api=str(ready["api"]),
            registry=str(ready["registry"]),
            admin_token=(data / "admin-token").read_text().strip(),
            registry_token=registry_token,
        )
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=START_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=START_TIMEOUT_S)


def state(daemon: Controld) -> tuple[Any, ...]:
    """What a request may change: the KV, the store revision, the registered sidecars, the
    audit log."""
    admin = {"Authorization": f"Bearer {daemon.admin_token}"}
    with httpx.Client(timeout=10) as client:
        kv = client.get(
            f"{daemon.registry}/v1/kv/",
            params={"recurse": "true"},
            headers={"X-Consul-Token": daemon.registry_token},
        )
        assert kv.status_code in (200, 404), kv.text
        entries = [] if kv.status_code == 404 else kv.json()
        keys = sorted((e["Key"], e["ModifyIndex"], e["Value"]) for e in entries)
        status = client.get(f"{daemon.api}/v1/status", headers=admin).json()
        proxies = client.get(f"{daemon.api}/v1/proxies", headers=admin).json()
        audit = client.get(f"{daemon.api}/v1/audit", headers=admin).json()
    return keys, status["store"]["revision"], proxies, audit


def fuzz(daemon: Controld, authorization: str | None) -> list[str]:
    """Run every operation's cases with this ``Authorization`` (None: none); the 5xx seen."""
    with httpx.Client(timeout=10) as client:
        document = client.get(f"{daemon.api}/openapi.json").json()
    schema = schemathesis.openapi.from_dict(document)
    failures: list[str] = []
    for result in schema.get_all_operations():
        operation = result.ok()
        strategy = st.one_of(
            operation.as_strategy(schemathesis.GenerationMode.POSITIVE),
            operation.as_strategy(schemathesis.GenerationMode.NEGATIVE),
        )

        @settings(
            max_examples=EXAMPLES,
            deadline=None,
            database=None,
            derandomize=True,
            phases=[Phase.generate],
            suppress_health_check=list(HealthCheck),
        )
        @given(case=strategy)
        def run(case: Any) -> None:
            headers = {
                k: v for k, v in (case.headers or {}).items() if k.lower() != "authorization"
            }
            if authorization is not None:
                headers["Authorization"] = authorization
            case.headers = headers
            if isinstance(case.query, dict) and "wait" in case.query:
                case.query["wait"] = "0"  # long-polls: answer at once
            response = case.call(base_url=daemon.api, timeout=15)
            if response.status_code >= 500:
                failures.append(
                    f"{case.operation.label} -> {response.status_code}: {case.as_curl_command()}"
                )

        run()
    return failures


def test_no_5xx_and_no_change_without_a_valid_token(controld: Controld) -> None:
    before = state(controld)
    failures = fuzz(controld, None)
    failures += fuzz(controld, "Bearer wrong-token-" + "x" * 30)
    failures += fuzz(controld, "Bearer sidecar.web." + "0" * 64)  # forged sidecar token
    assert not failures, "\n".join(failures[:20])
    assert state(controld) == before


def test_no_5xx_with_the_admin_token(controld: Controld) -> None:
    failures = fuzz(controld, f"Bearer {controld.admin_token}")
    assert not failures, "\n".join(failures[:20])
    # Still serving.
    with httpx.Client(timeout=10) as client:
        assert client.get(f"{controld.api}/ready").status_code == 200
