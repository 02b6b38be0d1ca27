"""meshcore.api.sidecar: paths, the long-poll query, the answer and request models."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from meshcore.api.sidecar import (
    DEFAULT_WAIT_S,
    NACK_ROUTE,
    PROXY_ROUTE,
    SNAPSHOT_ROUTE,
    NackRequest,
    RawSnapshotAnswer,
    Registered,
    SnapshotAnswer,
    nack_path,
    proxy_path,
    snapshot_path,
    snapshot_query,
)
from meshcore.model.snapshot import Snapshot

pytestmark = pytest.mark.timeout(30)


def test_paths_fill_the_route_templates() -> None:
    assert proxy_path("web-1") == "/v1/proxies/web-1"
    assert snapshot_path("web-1") == "/v1/snapshots/web-1"
    assert nack_path("web-1") == "/v1/snapshots/web-1/nack"
    for route, path in ((PROXY_ROUTE, proxy_path), (SNAPSHOT_ROUTE, snapshot_path)):
        assert path("x") == route.replace("{proxy_id}", "x")
    assert nack_path("x") == NACK_ROUTE.replace("{proxy_id}", "x")


def test_paths_quote_the_id_as_one_segment() -> None:
    assert snapshot_path("a/b c") == "/v1/snapshots/a%2Fb%20c"
    assert nack_path("../x") == "/v1/snapshots/..%2Fx/nack"
    assert proxy_path("host:1") == "/v1/proxies/host%3A1"


def test_snapshot_query() -> None:
    assert snapshot_query(None, None, DEFAULT_WAIT_S) == {"wait": "30"}
    assert snapshot_query(4, "h", 0.5) == {"version": "4", "hash": "h", "wait": "0.5"}
    # Both or neither: a version without its hash reports nothing.
    assert snapshot_query(4, None, 30) == {"wait": "30"}
    assert snapshot_query(None, "h", 30) == {"wait": "30"}


def test_snapshot_answer_round_trip() -> None:
    answer = SnapshotAnswer(version=7, hash="abc", snapshot=Snapshot(version=7))
    body = answer.model_dump_json()
    assert SnapshotAnswer.model_validate_json(body) == answer
    raw = RawSnapshotAnswer.model_validate_json(body)
    assert (raw.version, raw.hash) == (7, "abc")
    assert Snapshot.model_validate(raw.snapshot) == answer.snapshot


def test_answers_ignore_unknown_fields() -> None:
    # A newer controld may add fields; an older sidecar still reads the answer.
    body = b'{"version":1,"hash":"h","snapshot":{"version":1},"later":true}'
    assert RawSnapshotAnswer.model_validate_json(body).version == 1
    assert Registered.model_validate_json(b'{"proxy_id":"web-1","later":1}').proxy_id == "web-1"


@pytest.mark.parametrize(
    "doc",
    [
        b"not json",
        b"[]",
        b'{"hash":"h","snapshot":{}}',
        b'{"version":1,"snapshot":{}}',
        b'{"version":"1","hash":"h","snapshot":{}}',
        b'{"version":1.5,"hash":"h","snapshot":{}}',
        b'{"version":true,"hash":"h","snapshot":{}}',
        b'{"version":-1,"hash":"h","snapshot":{}}',
        b'{"version":1,"hash":7,"snapshot":{}}',
        b'{"version":1,"hash":"","snapshot":{}}',
        b'{"version":1,"hash":"' + b"h" * 257 + b'","snapshot":{}}',
        b'{"version":1,"hash":"h","snapshot":[]}',
        b'{"version":1,"hash":"h"}',
    ],
)
def test_malformed_snapshot_answers_are_refused(doc: bytes) -> None:
    with pytest.raises(ValidationError):
        RawSnapshotAnswer.model_validate_json(doc)


def test_a_bad_snapshot_passes_the_raw_answer() -> None:
    # Telling "controld sent garbage" (retry) from "this snapshot is bad" (NACK) needs this.
    body = b'{"version":1,"hash":"h","snapshot":{"listeners":"nope"}}'
    raw = RawSnapshotAnswer.model_validate_json(body)
    with pytest.raises(ValidationError):
        Snapshot.model_validate(raw.snapshot)
    with pytest.raises(ValidationError):
        SnapshotAnswer.model_validate_json(body)


def test_nack_request() -> None:
    nack = NackRequest(version=3, hash="h", error="listeners.0: bad")
    assert nack.model_dump(mode="json") == {"version": 3, "hash": "h", "error": "listeners.0: bad"}
    assert NackRequest.model_validate_json(nack.model_dump_json()) == nack
    refused: list[dict[str, Any]] = [
        {"version": 3, "hash": "h", "error": "x", "extra": 1},
        {"version": 3, "hash": "h" * 257, "error": "x"},
        {"version": 3, "hash": "h"},
    ]
    for doc in refused:
        with pytest.raises(ValidationError):
            NackRequest.model_validate(doc)


def test_models_are_frozen() -> None:
    nack = NackRequest(version=3, hash="h", error="x")
    with pytest.raises(ValidationError):
        nack.version = 4
