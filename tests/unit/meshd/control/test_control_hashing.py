"""meshcore.model.hashing: the snapshot hash controld and meshd must agree on."""

from __future__ import annotations

import hashlib
import json

from meshcore.model import Snapshot
from meshcore.model.hashing import canonical_json, document_hash, snapshot_hash

DOC = {
    "version": 3,
    "listeners": [
        {"name": "api", "direction": "outbound", "address": "127.0.0.1:15001", "cluster": "api"}
    ],
    "clusters": [
        {"name": "api", "service": "api", "endpoints": [{"host": "10.0.0.1", "port": 80}]}
    ],
}


def test_hash_is_the_contract_formula() -> None:
    snapshot = Snapshot.model_validate(DOC)
    dumped = snapshot.model_dump(mode="json")
    del dumped["version"]
    expected = hashlib.sha256(
        json.dumps(dumped, sort_keys=True, separators=(",", ":")).encode()
    ).hexdigest()
    assert snapshot_hash(snapshot) == expected


def test_version_does_not_count() -> None:
    a = Snapshot.model_validate(DOC)
    b = Snapshot.model_validate({**DOC, "version": 99})
    assert snapshot_hash(a) == snapshot_hash(b)


def test_content_counts() -> None:
    a = Snapshot.model_validate(DOC)
    b = Snapshot.model_validate({**DOC, "mtls": "permissive"})
    assert snapshot_hash(a) != snapshot_hash(b)


def test_defaults_written_or_not_hash_the_same() -> None:
    # The hash is of the validated model, so spelling a default out changes nothing.
    explicit = json.loads(json.dumps(DOC))
    explicit["clusters"][0]["lb_policy"] = "round_robin"
    explicit["listeners"][0]["protocol"] = "http"
    assert snapshot_hash(Snapshot.model_validate(DOC)) == snapshot_hash(
        Snapshot.model_validate(explicit)
    )


def test_document_hash_matches_snapshot_hash() -> None:
    snapshot = Snapshot.model_validate(DOC)
    assert document_hash(snapshot.model_dump(mode="json")) == snapshot_hash(snapshot)


def test_canonical_json_is_compact_sorted_ascii() -> None:
    assert canonical_json({"b": 1, "a": ["é", 2]}) == b'{"a":["\\u00e9",2],"b":1}'
