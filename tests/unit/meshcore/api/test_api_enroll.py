"""meshcore.api.enroll: enrollment, renewal and bundle models, read as meshd reads them."""

from __future__ import annotations

import json
from typing import Any

import pytest
from pydantic import ValidationError

from meshcore.api.enroll import (
    MAX_REVOKED,
    BundleAnswer,
    EnrollRequest,
    IssuedAnswer,
    RenewRequest,
    bundle_query,
)

pytestmark = pytest.mark.timeout(30)

ISSUED: dict[str, Any] = {
    "identity_id": "id-1",
    "certificate": "-----BEGIN CERTIFICATE-----\nx\n-----END CERTIFICATE-----\n",
    "bundle": ["root"],
    "bundle_index": 4,
    "spiffe_id": "spiffe://t/ns/default/svc/web",
    "not_after": "2026-01-01T00:00:00Z",
    "sidecar_token": "sidecar.web.x",
}


def test_bundle_query() -> None:
    assert bundle_query(7, 60) == {"index": "7", "wait": "60s"}
    assert bundle_query(0, 0.5) == {"index": "0", "wait": "0.5s"}


def test_enroll_request() -> None:
    body = EnrollRequest(token="join.1.s", csr="pem")
    # No instance: not sent at all (an older controld refuses unknown fields only).
    assert body.model_dump(exclude_none=True) == {"token": "join.1.s", "csr": "pem"}
    assert EnrollRequest(token="t", csr="c", instance="web-1").instance == "web-1"
    refused: list[dict[str, Any]] = [
        {"token": "", "csr": "c"},
        {"token": "t" * 257, "csr": "c"},
        {"token": "t", "csr": "c", "instance": "bad name"},
        {"token": "t", "csr": "c", "certificate": "x"},
    ]
    for doc in refused:
        with pytest.raises(ValidationError):
            EnrollRequest.model_validate(doc)
    with pytest.raises(ValidationError):
        RenewRequest.model_validate({"csr": "c", "signature": "x"})


def test_issued_round_trip_and_older_controld() -> None:
    issued = IssuedAnswer.model_validate(ISSUED)
    assert IssuedAnswer.model_validate_json(issued.model_dump_json()) == issued
    assert list(issued.model_dump()) == list(ISSUED)  # the field order controld sends
    older = {k: ISSUED[k] for k in ("certificate", "bundle", "spiffe_id", "not_after")}
    parsed = IssuedAnswer.model_validate_json(_json(older))
    assert (parsed.identity_id, parsed.bundle_index, parsed.sidecar_token) == ("", None, None)


@pytest.mark.parametrize(
    "change",
    [
        {"bundle": "root"},
        {"bundle": ["root", ""]},
        {"bundle": [3]},
        {"certificate": None},
        {"certificate": 3},
        {"spiffe_id": ""},
        {"bundle_index": -1},
        {"bundle_index": "4"},
    ],
)
def test_malformed_issued_answers_are_refused(change: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        IssuedAnswer.model_validate_json(_json({**ISSUED, **change}))


def test_bundle_answers() -> None:
    older = BundleAnswer.model_validate_json(b'{"trust_domain":"t","roots":["r1","r2"]}')
    assert (older.index, older.active, older.revoked) == (None, None, [])
    doc = {
        "trust_domain": "t",
        "roots": ["r1"],
        "active": "r1",
        "active_id": "a",
        "index": 9,
        "revoked": [{"serial": "1f", "not_after": "2026-01-01T00:00:00Z", "identity": "x"}],
        "later": True,
    }
    answer = BundleAnswer.model_validate_json(_json(doc))
    assert answer.index == 9 and [leaf.serial for leaf in answer.revoked] == ["1f"]
    assert BundleAnswer.model_validate_json(answer.model_dump_json()) == answer


@pytest.mark.parametrize(
    "change",
    [
        {"roots": []},
        {"roots": "r1"},
        {"roots": [""]},
        {"trust_domain": None},
        {"index": -1},
        {"revoked": "1f"},
        {"revoked": [3]},
        {"revoked": [{"serial": 31}]},
        {"revoked": [{"serial": "zz"}]},
        {"revoked": [{"serial": "f" * 41}]},
    ],
)
def test_malformed_bundles_are_refused(change: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        BundleAnswer.model_validate_json(_json({"trust_domain": "t", "roots": ["r"], **change}))


def test_revoked_list_is_bounded() -> None:
    too_many = [{"serial": "1"}] * (MAX_REVOKED + 1)
    with pytest.raises(ValidationError):
        BundleAnswer.model_validate({"trust_domain": "t", "roots": ["r"], "revoked": too_many})


def _json(doc: dict[str, Any]) -> bytes:
    return json.dumps(doc).encode()
