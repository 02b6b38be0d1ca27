"""Socket activation, with the fds placed at 3.. in child processes (never in this one)."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from meshcore.runtime.activation import (
    ActivationError,
    InheritedSocket,
    listen_fds,
    match_socket,
)

REPO = Path(__file__).resolve().parents[4]

# Moves the fds named in SRC_FDS to 3.., sets LISTEN_PID to its own pid (as systemd
# would), calls listen_fds and prints what it found as JSON.
CHILD = r"""
import fcntl, json, os, socket, sys
from meshcore.runtime.activation import ActivationError, listen_fds

src = [int(fd) for fd in os.environ.pop("SRC_FDS").split(",") if fd]
high = [fcntl.fcntl(fd, fcntl.F_DUPFD, 100) for fd in src]
for fd in src:
    os.close(fd)
for offset, fd in enumerate(high):
    os.dup2(fd, 3 + offset)
    os.close(fd)
if os.environ.get("LISTEN_PID") == "self":
    os.environ["LISTEN_PID"] = str(os.getpid())
try:
    found = listen_fds()
except ActivationError as exc:
    print(json.dumps({"error": type(exc).__name__, "message": str(exc)}))
    sys.exit(0)
print(json.dumps({
    "sockets": [
        {
            "fd": s.fd,
            "name": s.name,
            "family": s.family.name,
            "address": list(s.address),
            "cloexec": bool(fcntl.fcntl(s.fd, fcntl.F_GETFD) & fcntl.FD_CLOEXEC),
            "blocking": s.sock.getblocking(),
        }
        for s in found
    ],
    "env": sorted(k for k in os.environ if k.startswith("LISTEN_")),
}))
"""


def _listener(family: socket.AddressFamily = socket.AF_INET) -> socket.socket:
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.bind(("::1" if family == socket.AF_INET6 else "127.0.0.1", 0))
    sock.listen()
    return sock


def _run_child(socks: list[socket.socket], env: dict[str, str]) -> dict[str, Any]:
    fds = [s.fileno() for s in socks]
    child_env = {"PYTHONPATH": str(REPO), "SRC_FDS": ",".join(map(str, fds)), **env}
    result = subprocess.run(
        [sys.executable, "-c", CHILD],
        env=child_env,
        pass_fds=fds,
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    parsed: dict[str, Any] = json.loads(result.stdout)
    return parsed


@pytest.fixture
def listeners() -> Iterator[list[socket.socket]]:
    socks = [_listener(), _listener(socket.AF_INET6)]
    try:
        yield socks
    finally:
        for sock in socks:
            sock.close()


def test_inherits_named_sockets(listeners: list[socket.socket]) -> None:
    out = _run_child(
        listeners, {"LISTEN_PID": "self", "LISTEN_FDS": "2", "LISTEN_FDNAMES": "public:admin"}
    )
    v4, v6 = listeners
    assert out["sockets"] == [
        {
            "fd": 3,
            "name": "public",
            "family": "AF_INET",
            "address": list(v4.getsockname()),
            "cloexec": True,
            "blocking": False,
        },
        {
            "fd": 4,
            "name": "admin",
            "family": "AF_INET6",
            "address": list(v6.getsockname()[:2]),
            "cloexec": True,
            "blocking": False,
        },
    ]
    assert out["env"] == []


def test_names_default_to_empty(listeners: list[socket.socket]) -> None:
    out = _run_child(listeners[:1], {"LISTEN_PID": "self", "LISTEN_FDS": "1"})
    assert [s["name"] for s in out["sockets"]] == [""]


def test_other_pid_gets_nothing(listeners: list[socket.socket]) -> None:
    out = _run_child(listeners, {"LISTEN_PID": "1", "LISTEN_FDS": "2"})
    assert out == {"sockets": [], "env": []}


def test_datagram_socket_is_rejected() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
        udp.bind(("127.0.0.1", 0))
        out = _run_child([udp], {"LISTEN_PID": "self", "LISTEN_FDS": "1"})
    assert out == {
        "error": "UnsupportedSocketError",
        "message": "inherited fd 3: not a stream socket",
    }


def test_connected_socket_is_rejected(listeners: list[socket.socket]) -> None:
    with socket.create_connection(listeners[0].getsockname(), timeout=5) as conn:
        out = _run_child([conn], {"LISTEN_PID": "self", "LISTEN_FDS": "1"})
        accepted, _ = listeners[0].accept()
        accepted.close()
    assert out["error"] == "UnsupportedSocketError"
    assert "not listening" in out["message"]


def test_no_variables_returns_empty_and_leaves_fds_alone() -> None:
    env: dict[str, str] = {"OTHER": "1"}
    assert listen_fds(env) == []
    assert env == {"OTHER": "1"}


def test_wrong_pid_unsets_without_touching_fds() -> None:
    env = {"LISTEN_PID": str(os.getpid() + 1), "LISTEN_FDS": "2", "LISTEN_FDNAMES": "a:b"}
    assert listen_fds(env) == []
    assert env == {}
    env = {"LISTEN_PID": str(os.getpid() + 1), "LISTEN_FDS": "2"}
    assert listen_fds(env, unset=False) == []
    assert env == {"LISTEN_PID": str(os.getpid() + 1), "LISTEN_FDS": "2"}


@pytest.mark.parametrize(
    ("fds", "names", "match"),
    [("two", None, "LISTEN_FDS"), ("2", "only-one", "LISTEN_FDNAMES")],
)
def test_malformed_variables(fds: str, names: str | None, match: str) -> None:
    # Validation happens before any fd is adopted, so this process's fds stay untouched.
    env = {"LISTEN_PID": str(os.getpid()), "LISTEN_FDS": fds}
    if names is not None:
        env["LISTEN_FDNAMES"] = names
    with pytest.raises(ActivationError, match=match):
        listen_fds(env)
    assert env == {}


def _inherited(sock: socket.socket, name: str) -> InheritedSocket:
    host, port = sock.getsockname()[:2]
    return InheritedSocket(
        fd=sock.fileno(), name=name, family=sock.family, sock=sock, address=(host, port)
    )


def test_match_socket() -> None:
    with (
        _listener() as v4,
        _listener(socket.AF_INET6) as v6,
        socket.socket(socket.AF_INET, socket.SOCK_STREAM) as wildcard,
    ):
        wildcard.bind(("0.0.0.0", 0))
        wildcard.listen()
        a, b, c = _inherited(v4, "public"), _inherited(v6, ""), _inherited(wildcard, "")
        inherited = [a, b, c]
        v4_port, v6_port, any_port = a.address[1], b.address[1], c.address[1]

        assert match_socket(inherited, "public", "10.0.0.1", 1) is a
        assert match_socket(inherited, "other", "127.0.0.1", v4_port) is a
        assert match_socket(inherited, "", "::1", v6_port) is b
        assert match_socket(inherited, "", "[0:0::1]", v6_port) is b
        assert match_socket(inherited, "", "0.0.0.0", any_port) is c
        # A wildcard listener never stands in for a specific address, nor the reverse.
        assert match_socket(inherited, "", "127.0.0.1", any_port) is None
        assert match_socket(inherited, "", "0.0.0.0", v4_port) is None
        assert match_socket(inherited, "", "::", any_port) is None
        assert match_socket([], "public", "127.0.0.1", v4_port) is None


SOCKET_ACTIVATE_CHILD = r"""
import json, os, socket
from meshcore.runtime.activation import listen_fds

found = listen_fds()
report = {
    "sockets": [{"fd": s.fd, "name": s.name, "address": list(s.address)} for s in found],
    "env": sorted(k for k in os.environ if k.startswith("LISTEN_")),
}
listener = found[0].sock
listener.setblocking(True)
listener.settimeout(10)
conn, _ = listener.accept()
with conn:
    conn.sendall(json.dumps(report).encode())
for s in found:
    s.sock.close()
"""


@pytest.mark.skipif(
    not Path("/usr/bin/systemd-socket-activate").exists(), reason="needs systemd-socket-activate"
)
def test_real_systemd_socket_activate(tmp_path: Path) -> None:
    script = tmp_path / "child.py"
    script.write_text(SOCKET_ACTIVATE_CHILD)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    proc = subprocess.Popen(
        [
            "/usr/bin/systemd-socket-activate",
            f"--listen=127.0.0.1:{port}",
            "--fdname=public",
            # The child gets a fresh environment; only -E variables pass through.
            f"--setenv=PYTHONPATH={REPO}",
            sys.executable,
            str(script),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                conn = socket.create_connection(("127.0.0.1", port), timeout=5)
                break
            except ConnectionRefusedError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise
                time.sleep(0.05)
        with conn:
            conn.settimeout(20)
            chunks = []
            # A crashed child resets the connection; its stderr explains why (below).
            with contextlib.suppress(ConnectionResetError):
                while chunk := conn.recv(4096):
                    chunks.append(chunk)
        _, stderr = proc.communicate(timeout=20)
        assert chunks, stderr.decode(errors="replace")
        report = json.loads(b"".join(chunks))
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
        for stream in (proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()
    assert report == {
        "sockets": [{"fd": 3, "name": "public", "address": ["127.0.0.1", port]}],
        "env": [],
    }
    assert proc.returncode == 0
