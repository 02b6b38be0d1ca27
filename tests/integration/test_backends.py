"""The misbehaving backend processes of tests/integration/backends.py, checked directly."""

from __future__ import annotations

import http.client
import socket
from pathlib import Path

import pytest
from backends import Backend, Backends, running_backends

pytestmark = pytest.mark.timeout(60)


def _get(backend: Backend, *, timeout: float = 10.0) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", backend.port, timeout=timeout)
    try:
        conn.request("GET", "/some/path")
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def _refused(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=2):
            return False
    except ConnectionRefusedError:
        return True


def test_modes_answer_as_told_and_count(backends: Backends) -> None:
    b = backends.start("b1")
    assert _get(b) == (200, b"b1\n")
    b.set_mode("status", status=503)
    assert _get(b) == (503, b"b1\n")
    b.set_mode("slow", delay_s=0.2)
    assert _get(b) == (200, b"b1\n")
    b.set_mode("reset")
    with pytest.raises((ConnectionResetError, http.client.RemoteDisconnected)):
        _get(b)
    b.set_mode("hang")
    with pytest.raises(TimeoutError):
        _get(b, timeout=0.5)
    b.set_mode("ok")
    assert _get(b) == (200, b"b1\n")
    # Control requests are not counted; every other request is, whatever its fate.
    assert b.count() == 6
    assert b.state()["requests"] == 6
    assert b.state()["mode"] == "ok"


def test_die_exits_and_the_count_survives(backends: Backends) -> None:
    b = backends.start("b2", "die")
    with pytest.raises((ConnectionResetError, http.client.RemoteDisconnected)):
        _get(b)
    assert b.wait_exit() == 3
    assert not b.alive
    assert _refused(b.port)
    assert b.count() == 1


def test_kill9_and_cleanup(tmp_path: Path) -> None:
    with running_backends(tmp_path) as started:
        a = started.start("a", "status", status=500)
        c = started.start("c")
        assert _get(a)[0] == 500
        assert a.kill9() == -9
        assert _refused(a.port)
        assert a.count() == 1
        assert c.alive
    # Leaving the block killed what was still running.
    assert c.proc.poll() == -9
    assert c.stop() == -9
