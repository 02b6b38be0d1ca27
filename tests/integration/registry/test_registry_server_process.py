"""The registry as a real process (``python -m controld registry``), driven with py-consul.

Covers the process contract (ready line, exit codes, SIGTERM), persistence across a restart
and a ``kill -9``, unusable data dirs, ACLs and blocking queries through the client.
"""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import consul
import pytest
import requests

ROOT = Path(__file__).resolve().parents[3]


class RegistryProcess:
    """One ``controld registry`` subprocess on 127.0.0.1 with a free port."""

    def __init__(self, data_dir: Path, *extra: str) -> None:
        self.data_dir = data_dir
        self.extra = extra
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None
        self.stderr = b""

    def start(self) -> RegistryProcess:
        cmd = [
            sys.executable, "-m", "controld", "registry",
            "--listen", "127.0.0.1:0", "--data-dir", str(self.data_dir),
            "--node-name", "node1", *self.extra,
        ]  # fmt: skip
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        self.proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stderr=subprocess.PIPE)
        self.port = self._wait_ready()
        return self

    def _wait_ready(self) -> int:
        assert self.proc is not None and self.proc.stderr is not None
        deadline = time.monotonic() + 20
        buf = b""
        fd = self.proc.stderr.fileno()
        while time.monotonic() < deadline:
            ready, _, _ = select.select([fd], [], [], 0.2)
            if not ready:
                continue
            chunk = os.read(fd, 65536)
            if not chunk:
                break
            buf += chunk
            for line in buf.splitlines():
                if line.startswith(b"{") and b'"ready"' in line:
                    event = json.loads(line)
                    self.stderr = buf
                    return int(event["listen"].rsplit(":", 1)[1])
        self.stderr = buf
        raise AssertionError(f"registry did not get ready: {buf.decode(errors='replace')}")

    def client(self, **kwargs: object) -> consul.Consul:
        return consul.Consul(host="127.0.0.1", port=self.port, **kwargs)

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def stop(self, sig: int = signal.SIGTERM) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            code = self.proc.wait(timeout=20)
        finally:
            stream = self.proc.stderr
            if stream is not None and not stream.closed:
                self.stderr += stream.read()
                stream.close()
        return code


@pytest.fixture
def registry_proc(tmp_path: Path) -> Iterator[RegistryProcess]:
    proc = RegistryProcess(tmp_path / "data").start()
    yield proc
    proc.stop(signal.SIGKILL)


def test_py_consul_round_trip(registry_proc: RegistryProcess) -> None:
    c = registry_proc.client()
    assert c.status.leader() == "127.0.0.1:8300"
    assert c.agent.self()["Config"]["NodeName"] == "node1"
    assert c.kv.put("cfg/a", "1") is True
    _, entry = c.kv.get("cfg/a")
    assert entry["Value"] == b"1"
    c.agent.service.register("web", service_id="web-1", port=8080, check=consul.Check.ttl("30s"))
    _, nodes = c.health.service("web", passing=True)
    assert nodes == []
    c.agent.check.ttl_pass("service:web-1", notes="ok")
    _, nodes = c.health.service("web", passing=True)
    assert [n["Service"]["ID"] for n in nodes] == ["web-1"]
    assert nodes[0]["Checks"][-1]["Output"] == "ok"


def test_sigterm_exits_zero(registry_proc: RegistryProcess) -> None:
    assert registry_proc.stop(signal.SIGTERM) == 0


def test_agent_leave_stops_the_process(registry_proc: RegistryProcess) -> None:
    assert registry_proc.client().agent.leave() is True
    assert registry_proc.proc is not None
    assert registry_proc.proc.wait(timeout=20) == 0


def test_data_and_indexes_survive_a_restart(tmp_path: Path) -> None:
    proc = RegistryProcess(tmp_path / "data").start()
    c = proc.client()
    c.kv.put("k", "v", flags=3)
    c.catalog.register("n2", "10.0.0.2", service={"Service": "db", "Port": 5432})
    sid = c.session.create(name="s", ttl=30)
    kv_index, _ = c.kv.get("k")
    svc_index, _ = c.catalog.service("db")
    assert proc.stop() == 0

    proc = RegistryProcess(tmp_path / "data").start()
    try:
        c = proc.client()
        index, entry = c.kv.get("k")
        assert (entry["Value"], entry["Flags"]) == (b"v", 3)
        assert int(index) >= int(kv_index)
        index, nodes = c.catalog.service("db")
        assert int(index) == int(svc_index)
        assert [(n["Node"], n["ServicePort"]) for n in nodes] == [("n2", 5432)]
        _, session = c.session.info(sid)
        assert session["Name"] == "s"
        c.kv.put("k2", "after")
        index2, _ = c.kv.get("k2")
        assert int(index2) > int(index)
    finally:
        proc.stop()


def test_acknowledged_writes_survive_kill_9(tmp_path: Path) -> None:
    proc = RegistryProcess(tmp_path / "data").start()
    c = proc.client()
    for i in range(200):
        assert c.kv.put(f"burst/{i:03d}", str(i)) is True
    c.agent.service.register("last", check=consul.Check.ttl("30s"))
    last_index, _ = c.kv.get("burst/199")
    proc.stop(signal.SIGKILL)

    proc = RegistryProcess(tmp_path / "data").start()
    try:
        c = proc.client()
        _, keys = c.kv.get("burst/", keys=True)
        assert len(keys) == 200
        assert "last" in c.agent.services()
        index, entry = c.kv.get("burst/199")
        assert entry["Value"] == b"199"
        assert int(index) >= int(last_index)
    finally:
        proc.stop()


def _run_failing(data_dir: Path) -> subprocess.CompletedProcess[bytes]:
    cmd = [
        sys.executable, "-m", "controld", "registry",
        "--listen", "127.0.0.1:0", "--data-dir", str(data_dir),
    ]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, timeout=30, check=False)


def test_a_file_as_data_dir_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "not-a-dir"
    path.write_text("keep me")
    result = _run_failing(path)
    assert result.returncode == 2
    assert str(path).encode() in result.stderr
    assert b"not a directory" in result.stderr
    assert path.read_text() == "keep me"


def test_a_corrupt_database_is_left_untouched(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    db = data / "registry.db"
    db.write_bytes(b"garbage" * 1000)
    result = _run_failing(data)
    assert result.returncode == 2
    assert str(db).encode() in result.stderr
    assert db.read_bytes() == b"garbage" * 1000


def test_acl_management_token(tmp_path: Path) -> None:
    proc = RegistryProcess(tmp_path / "data", "--acl-management-token", "s3cret").start()
    try:
        with pytest.raises(consul.ACLPermissionDenied):
            proc.client().kv.put("k", "v")
        with pytest.raises(consul.ACLPermissionDenied):
            proc.client(token="wrong").agent.services()
        assert proc.client(token="s3cret").kv.put("k", "v") is True
        r = requests.get(proc.url("/v1/kv/k"), timeout=10)
        assert (r.status_code, r.text) == (403, "Permission denied")
        for kwargs in (
            {"params": {"token": "s3cret"}},
            {"headers": {"X-Consul-Token": "s3cret"}},
            {"headers": {"Authorization": "Bearer s3cret"}},
        ):
            assert requests.get(proc.url("/v1/kv/k"), timeout=10, **kwargs).status_code == 200  # type: ignore[arg-type]
        # Status endpoints need no token, as in Consul.
        assert requests.get(proc.url("/v1/status/leader"), timeout=10).status_code == 200
    finally:
        proc.stop()


def test_blocking_query_through_py_consul(registry_proc: RegistryProcess) -> None:
    c = registry_proc.client()
    c.agent.service.register("web", check=consul.Check.ttl("30s"))
    index, _ = c.health.service("web")
    start = time.monotonic()
    again, _ = c.health.service("web", index=index, wait="1s")
    assert again == index
    assert time.monotonic() - start >= 0.9

    import threading

    def later() -> None:
        time.sleep(0.3)
        registry_proc.client().agent.check.ttl_pass("service:web")

    thread = threading.Thread(target=later)
    thread.start()
    try:
        newer, nodes = c.health.service("web", index=index, wait="30s", passing=True)
    finally:
        thread.join()
    assert int(newer) > int(index)
    assert [n["Service"]["ID"] for n in nodes] == ["web"]
