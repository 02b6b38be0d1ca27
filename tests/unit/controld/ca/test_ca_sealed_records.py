"""Sealed CA records: every way a KV value can be bad is an InvalidRecord, counted, skipped."""

from __future__ import annotations

import json

import pytest
from ca_support import RECORD_KEY, FakeKV
from prometheus_client import CollectorRegistry

from controld.ca.jointokens import JOIN_TOKEN_KIND, JoinTokenRecord
from controld.ca.records import CARecords, InvalidRecord
from controld.sealed import RecordKey

pytestmark = pytest.mark.timeout(30)

KEY = "meshd/join-tokens/abc"
GOOD = JoinTokenRecord(
    service="web", namespace="default", expires=1.0, secret_sha256="0" * 64, used=False
)


async def test_bad_values_are_invalid_counted_and_skipped() -> None:
    kv = FakeKV()
    metrics = CollectorRegistry()
    records = CARecords(kv, RECORD_KEY, metrics=metrics)
    body = GOOD.model_dump(mode="json")
    bad_values = {
        "unsealed": json.dumps(body).encode(),
        "other key": RecordKey(b"another key of 32 bytes, really!").seal(
            JOIN_TOKEN_KIND, KEY, body
        ),
        "schema": RECORD_KEY.seal(JOIN_TOKEN_KIND, KEY, {**body, "expires": "soon"}),
        "extra field": RECORD_KEY.seal(JOIN_TOKEN_KIND, KEY, {**body, "admin": True}),
        "service": RECORD_KEY.seal(JOIN_TOKEN_KIND, KEY, {**body, "service": "../x"}),
        "deep": b"[" * 10_000 + b"]" * 10_000,
        "big": b'"' + b"x" * (65 * 1024) + b'"',
        "not utf-8": b"\xff\xfe",
    }
    for name, value in bad_values.items():
        await kv.kv_put(KEY, value)
        with pytest.raises(InvalidRecord):
            await records.get(JOIN_TOKEN_KIND, KEY, JoinTokenRecord)
        assert await records.list(JOIN_TOKEN_KIND, "meshd/join-tokens/", JoinTokenRecord) == [], (
            name
        )
    count = len(bad_values) * 2
    assert records.invalid == {JOIN_TOKEN_KIND: count}
    sample = metrics.get_sample_value("controld_ca_invalid_records_total", {"kind": "join-token"})
    assert sample == count

    assert await records.put(JOIN_TOKEN_KIND, KEY, GOOD)
    found = await records.get(JOIN_TOKEN_KIND, KEY, JoinTokenRecord)
    assert found is not None and found[0] == GOOD
    assert await records.get(JOIN_TOKEN_KIND, "meshd/join-tokens/none", JoinTokenRecord) is None
