"""configure_logging writes one JSON line per event with the expected keys."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from datetime import datetime, timedelta

import pytest
import structlog

from meshcore.runtime.logging import configure_logging


@pytest.fixture
def stream() -> Iterator[io.StringIO]:
    buf = io.StringIO()
    try:
        yield buf
    finally:
        structlog.contextvars.clear_contextvars()
        structlog.reset_defaults()


def test_json_line_with_contextvars(stream: io.StringIO) -> None:
    configure_logging(stream=stream)
    structlog.contextvars.bind_contextvars(connection_id=7)
    structlog.get_logger("meshd.test").info("accepted", peer="127.0.0.1:5000")

    lines = stream.getvalue().splitlines()
    assert len(lines) == 1
    record = json.loads(lines[0])
    assert record.pop("timestamp")
    assert record == {
        "event": "accepted",
        "level": "info",
        "logger": "meshd.test",
        "connection_id": 7,
        "peer": "127.0.0.1:5000",
    }


def test_timestamp_is_iso_utc(stream: io.StringIO) -> None:
    configure_logging(stream=stream)
    structlog.get_logger().warning("x")
    record = json.loads(stream.getvalue())
    parsed = datetime.fromisoformat(record["timestamp"])
    assert parsed.utcoffset() == timedelta(0)
    assert "logger" not in record


def test_level_filtering(stream: io.StringIO) -> None:
    configure_logging(stream=stream, level="warning")
    log = structlog.get_logger()
    log.info("dropped")
    log.error("kept")
    assert [json.loads(line)["event"] for line in stream.getvalue().splitlines()] == ["kept"]


def test_exception_is_structured(stream: io.StringIO) -> None:
    configure_logging(stream=stream)
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        structlog.get_logger().exception("failed")
    record = json.loads(stream.getvalue())
    assert record["exception"][0]["exc_type"] == "RuntimeError"
    assert record["exception"][0]["exc_value"] == "boom"


def test_console_renderer(stream: io.StringIO) -> None:
    configure_logging(json=False, stream=stream)
    structlog.get_logger().info("hello", answer=42)
    text = stream.getvalue()
    assert "hello" in text
    assert "answer=42" in text
    assert "\x1b[" not in text  # no colours when not a terminal


def test_unknown_level() -> None:
    with pytest.raises(ValueError, match="verbose"):
        configure_logging(level="verbose")
