"""controld's push listener under an idle-connection flood, at RLIMIT_NOFILE=256.

``controld run`` runs as a subprocess under ``prlimit``; 1100 connections that never send a
byte are opened against its push listener, more than it has descriptors for. Its default cap
(a third of what RLIMIT_NOFILE leaves, per lean listener) closes the silent ones first, so a
normal request is answered right away and a kept-alive connection keeps working.
"""

from __future__ import annotations

import http.client
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from helpers import clean_env, idle_connections, ready_record, stop_process
from prometheus_client.parser import text_string_to_metric_families

pytestmark = pytest.mark.timeout(180)

TIMEOUT = 30.0
FLOOD = 1100
NOFILE = 256


@dataclass
class Controld:
    admin: str
    push_port: int


@pytest.fixture
def controld(tmp_path: Path) -> Iterator[Controld]:
    """``controld run`` under ``prlimit --nofile=256``, push on a free port, first byte 2 s."""
    log_path = tmp_path / "controld.log"
    argv = ["prlimit", f"--nofile={NOFILE}:{NOFILE}", "--", sys.executable, "-m", "controld"]
    argv += ["run", "--data-dir", str(tmp_path / "data"), "--registry-listen", "127.0.0.1:0"]
    argv += ["--admin", "127.0.0.1:0", "--push", "127.0.0.1:0", "--tls", "off"]
    argv += ["--first-byte-timeout", "2", "--log-format", "json"]
    with log_path.open("wb") as out:
        proc = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, env=clean_env()
        )
    try:
        deadline = time.monotonic() + TIMEOUT
        ready = None
        while ready is None:
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"controld not ready:\n{log_path.read_text(errors='replace')}")
            ready = ready_record(log_path)
            time.sleep(0.05)
        yield Controld(f"http://127.0.0.1:{ready['admin_port']}", int(ready["push_port"]))
        assert proc.poll() is None, log_path.read_text(errors="replace")
    finally:
        stop_process(proc, TIMEOUT)


def _events(controld: Controld) -> dict[str, float]:
    text = httpx.get(f"{controld.admin}/metrics", timeout=10).text
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if (
                sample.name == "controld_listener_limit_events_total"
                and sample.labels["listener"] == "push"
            ):
                out[sample.labels["event"]] = sample.value
    return out


def _wait(predicate: object, what: str) -> None:
    deadline = time.monotonic() + 60
    while not predicate():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


def _ready(conn: http.client.HTTPConnection) -> int:
    conn.request("GET", "/live")
    resp = conn.getresponse()
    resp.read()
    return resp.status


def test_push_listener_survives_an_idle_flood(controld: Controld) -> None:
    kept = http.client.HTTPConnection("127.0.0.1", controld.push_port, timeout=TIMEOUT)
    assert _ready(kept) == 200
    with idle_connections(controld.push_port, FLOOD):
        _wait(lambda: _events(controld).get("idle_evicted", 0) >= FLOOD - NOFILE, "the flood")
        fresh = http.client.HTTPConnection("127.0.0.1", controld.push_port, timeout=TIMEOUT)
        assert _ready(fresh) == 200
        fresh.close()
        assert _ready(kept) == 200
    kept.close()


def test_silent_connection_closed_after_first_byte_timeout(controld: Controld) -> None:
    with socket.create_connection(("127.0.0.1", controld.push_port), timeout=TIMEOUT) as sock:
        assert sock.recv(1) == b""
    assert _events(controld).get("first_byte_timeout") == 1
