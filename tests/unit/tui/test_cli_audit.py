"""``meshctl audit``: ``--since`` parsing and the table rows."""

from __future__ import annotations

import argparse

import pytest

from meshcore.api.audit import AuditEntry
from tui.cli.audit import audit_rows, since_time


def test_since_takes_a_duration_or_an_rfc3339_time() -> None:
    now = 1_700_000_000.0  # 2023-11-14T22:13:20Z
    assert since_time("1h", now) == "2023-11-14T21:13:20Z"
    assert since_time("90s", now) == "2023-11-14T22:11:50Z"
    assert since_time("2026-12-06T05:00:00Z") == "2026-12-06T05:00:00Z"
    assert since_time("2026-12-06T05:00:00+01:00") == "2026-12-06T05:00:00+01:00"
    for bad in ("soon", "2026-12-06T05:00:00", "-1h", ""):
        with pytest.raises(argparse.ArgumentTypeError, match="invalid --since"):
            since_time(bad, now)


def test_rows() -> None:
    entry = {
        "time": "T",
        "actor": "admin",
        "method": "DELETE",
        "route": "/v1/resources/{kind}/{name}",
        "path": "/v1/resources/HTTPRoute/r",
        "resource": "HTTPRoute/r",
        "source": "127.0.0.1:5",
        "status": 200,
        "outcome": "deleted",
        "revision": 4,
    }
    revoke = {**entry, "resource": None, "revision": None, "details": {"spiffe_id": "spiffe://x"}}
    entries = [AuditEntry.model_validate(e) for e in (entry, revoke)]
    assert audit_rows(entries) == [
        [
            "T",
            "admin",
            "DELETE /v1/resources/{kind}/{name}",
            "HTTPRoute/r",
            "127.0.0.1:5",
            "200",
            "deleted (revision 4)",
        ],
        [
            "T",
            "admin",
            "DELETE /v1/resources/{kind}/{name}",
            "spiffe_id=spiffe://x",
            "127.0.0.1:5",
            "200",
            "deleted",
        ],
    ]
