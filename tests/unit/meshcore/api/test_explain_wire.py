"""The wire model of ``POST /v1/explain``: a realistic answer round-trips byte for byte (and
``meshctl explain -o json`` prints it as sent), a malformed one is refused naming the field."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest

from meshcore.api.errors import UnexpectedAnswer, parse_answer
from meshcore.api.explain import EXPLAIN_PATH, ExplainAnswer
from tui.cli import main
from tui.client import ControldClient

pytestmark = pytest.mark.timeout(30)

#: An answer as controld sends it (fields in its order; floats and ints as it sends them).
ANSWER: dict[str, Any] = {
    "source": "web",
    "source_id": "spiffe://mesh.local/ns/default/svc/web",
    "destination": "api",
    "method": "GET",
    "path": "/x?b=1",
    "protocol": "http",
    "listener": "outbound-api",
    "route": "canary",
    "timeout_s": 15.0,
    "backends": [
        {"cluster": "api~v2", "weight": 3, "percent": 75.0},
        {"cluster": "api~v1", "weight": 1, "percent": 25.0},
    ],
    "redirect": None,
    "mirror": {"cluster": "web", "percent": 10.0},
    "clusters": [
        {
            "name": "api~v2",
            "service": "api",
            "subset": "v2",
            "lb_policy": "ring_hash",
            "endpoints": [
                {
                    "host": "10.0.0.2",
                    "port": 21000,
                    "priority": 0,
                    "tags": ["v2"],
                    "tls": "mtls",
                    "zone": "a",
                },
                {
                    "host": "10.0.0.9",
                    "port": 8080,
                    "priority": 1,
                    "tags": [],
                    "tls": "plaintext",
                    "zone": None,
                },
            ],
            "mix": {
                "sidecar": 1,
                "plain": 2,
                "mtls": 1,
                "plaintext": 1,
                "excluded": [
                    {"host": "10.0.0.8", "port": 8080, "service": "api", "reason": "STRICT"}
                ],
            },
            "settings": {
                "lb_policy": "ring_hash",
                "connect_timeout_s": 0.5,
                "panic_threshold_percent": 20,
                "retry_budget": {"percent": 5, "min_retries_per_second": 2, "ttl_s": 30.0},
                "hash_policy": {"cookie": "session"},
                "limits": {"max_connections": 100, "max_retries": 3},
            },
        }
    ],
    "access": {"action": "allow", "rule_index": 1, "policy": "api-access", "reason": "web"},
    "mtls": "permissive",
    "rate_limits": ["all"],
    "route_policy": {"retries": {"attempts": 3, "retry_on": ["connect-failure"]}},
    "notes": ["the sidecar normalizes the path to /x"],
    "sidecars": [
        # The destination's sidecar, an older meshd that declares no features.
        {
            "proxy_id": "api-1",
            "service": "api",
            "role": "destination",
            "connected": False,
            "acked_version": None,
            "latest_version": 4,
            "features": None,
            "enforces": [],
            "not_enforced": [{"feature": "rate_limits", "path": "rate_limits"}],
        }
    ],
}


def _bytes(value: object) -> bytes:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode()


def test_a_realistic_answer_round_trips_byte_for_byte() -> None:
    answer = parse_answer(ExplainAnswer, EXPLAIN_PATH, json.loads(_bytes(ANSWER)))
    assert _bytes(answer.model_dump(mode="json")) == _bytes(ANSWER)
    # Ints stay ints and floats floats inside the free-form settings.
    settings = answer.clusters[0].settings
    assert settings["panic_threshold_percent"] == 20
    assert isinstance(settings["panic_threshold_percent"], int)
    assert answer.sidecars[0].features is None
    assert answer.sidecars[0].not_enforced[0].feature == "rate_limits"
    assert answer.clusters[0].mix.excluded[0].reason == "STRICT"


def test_fields_a_newer_controld_adds_are_ignored() -> None:
    answer = ExplainAnswer.model_validate({**ANSWER, "verdict": "new"})
    assert "verdict" not in answer.model_dump()


@pytest.mark.parametrize(
    ("change", "where"),
    [
        ({"access": None}, "access"),
        ({"backends": [{"cluster": "api~v2", "weight": "heavy", "percent": 1.0}]}, "backends.0"),
        ({"sidecars": [{"proxy_id": "web-1", "service": "web", "role": "bystander"}]}, "role"),
        ({"clusters": [{"name": "api", "service": "api", "settings": ["x"]}]}, "settings"),
    ],
)
def test_a_malformed_answer_is_refused_naming_the_field(change: dict[str, Any], where: str) -> None:
    with pytest.raises(UnexpectedAnswer, match=f"to {EXPLAIN_PATH}: .*{where}") as info:
        parse_answer(ExplainAnswer, EXPLAIN_PATH, {**ANSWER, **change})
    assert "\n" not in str(info.value)


def test_a_missing_field_is_refused() -> None:
    partial = {k: v for k, v in ANSWER.items() if k != "destination"}
    with pytest.raises(UnexpectedAnswer, match="destination: Field required"):
        parse_answer(ExplainAnswer, EXPLAIN_PATH, partial)


def test_meshctl_explain_json_prints_the_answer_as_sent(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    def handle(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=_bytes(ANSWER))

    monkeypatch.setattr(
        "tui.cli.common.ControldClient",
        lambda server, token: ControldClient(server, token, transport=httpx.MockTransport(handle)),
    )
    server = ["--server", "http://controld.test", "--token", "t"]
    assert main([*server, "explain", "web", "api", "-o", "json"]) == 0
    # What meshctl printed before the answer had a model: the decoded JSON as it came.
    assert capsys.readouterr().out == json.dumps(ANSWER, indent=2, ensure_ascii=False) + "\n"
