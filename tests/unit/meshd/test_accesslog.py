"""AccessLog: off, sampled, and errors always written."""

from __future__ import annotations

import io
import json
import random
from collections.abc import Iterator
from typing import Any

import pytest
import structlog

from meshcore.runtime.logging import configure_logging
from meshd.accesslog import ACCESS_FIELDS, AccessLog
from meshd.http.exchange import source_service

OK: dict[str, Any] = {"direction": "outbound", "route": "r", "code": 200, "error": ""}
SERVER_ERROR: dict[str, Any] = {**OK, "code": 503, "error": ""}
DENIED: dict[str, Any] = {**OK, "code": 403, "error": "rbac_denied"}


@pytest.fixture
def buf() -> Iterator[io.StringIO]:
    stream = io.StringIO()
    try:
        yield stream
    finally:
        structlog.reset_defaults()


def _access_log(buf: io.StringIO, **kwargs: Any) -> AccessLog:
    logger = structlog.wrap_logger(
        structlog.WriteLogger(buf),
        processors=[structlog.processors.JSONRenderer()],
        wrapper_class=structlog.make_filtering_bound_logger(0),
    )
    return AccessLog(logger=logger, **kwargs)


def _lines(buf: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in buf.getvalue().splitlines()]


def test_disabled_writes_nothing(buf: io.StringIO) -> None:
    log = _access_log(buf, enabled=False, sample_rate=1.0)
    log.log(**OK)
    log.log(**SERVER_ERROR)
    assert buf.getvalue() == ""


def test_rate_zero_writes_only_errors(buf: io.StringIO) -> None:
    log = _access_log(buf, enabled=True, sample_rate=0.0)
    for fields in (OK, SERVER_ERROR, OK, DENIED, {"direction": "inbound", "bytes_in": 3}):
        log.log(**fields)
    assert [(line["code"], line["error"]) for line in _lines(buf)] == [
        (503, ""),
        (403, "rbac_denied"),
    ]


def test_rate_one_writes_all(buf: io.StringIO) -> None:
    log = _access_log(buf, enabled=True, sample_rate=1.0)
    for _ in range(5):
        log.log(**OK)
    log.log(**SERVER_ERROR)
    lines = _lines(buf)
    assert len(lines) == 6
    assert lines[0] == {"event": "access", **OK}


def test_sampling_is_deterministic_with_seeded_rng(buf: io.StringIO) -> None:
    expected = random.Random(42)
    wanted = sum(expected.random() < 0.3 for _ in range(200))
    log = _access_log(buf, enabled=True, sample_rate=0.3, rng=random.Random(42))
    for i in range(200):
        log.log(**OK, request_id=str(i))
    lines = _lines(buf)
    assert len(lines) == wanted
    assert 0 < wanted < 200


def test_errors_do_not_consume_samples(buf: io.StringIO) -> None:
    # The rng is drawn only for successful requests, so interleaved errors keep the
    # successful-request sample identical.
    a, b = io.StringIO(), io.StringIO()
    plain = _access_log(a, enabled=True, sample_rate=0.5, rng=random.Random(1))
    mixed = _access_log(b, enabled=True, sample_rate=0.5, rng=random.Random(1))
    for i in range(50):
        plain.log(**OK, request_id=str(i))
        mixed.log(**OK, request_id=str(i))
        mixed.log(**SERVER_ERROR)
    ok_ids = [line["request_id"] for line in _lines(b) if line["code"] == 200]
    assert ok_ids == [line["request_id"] for line in _lines(a)]


def test_writes_to_configured_structlog_output(buf: io.StringIO) -> None:
    configure_logging(stream=buf)
    log = AccessLog(enabled=True, sample_rate=1.0)
    fields: dict[str, object] = dict.fromkeys(ACCESS_FIELDS, "")
    fields.update(code=200, duration_ms=1.5, bytes_in=10, bytes_out=20)
    log.log(**fields)
    (line,) = _lines(buf)
    assert line["event"] == "access"
    assert line["logger"] == "meshd.access"
    assert line["level"] == "info"
    assert {k: line[k] for k in ACCESS_FIELDS} == fields


def test_rejects_bad_sample_rate() -> None:
    with pytest.raises(ValueError, match="sample_rate"):
        AccessLog(enabled=True, sample_rate=1.5)


@pytest.mark.parametrize(
    ("identity", "service"),
    [
        (b"spiffe://mesh.local/ns/default/svc/web", "web"),
        (b"spiffe://corp/ns/team-a/svc/api.v2", "api.v2"),
        (None, "unknown"),
        (b"spiffe://corp/ns/default/svc/", "unknown"),
        (b"spiffe://corp/workload/x", "unknown"),
        (b"spiffe://corp/ns/default/svc/a/b", "unknown"),
    ],
)
def test_source_service_from_spiffe_id(identity: bytes | None, service: str) -> None:
    assert source_service(identity) == service
