"""``controld run`` under a stand-in service manager: sd_notify, watchdog, SIGHUP, SIGTERM and
socket activation, with the real process (never systemd: a datagram socket bound by the test
is the ``NOTIFY_SOCKET``; sockets are passed by ``systemd-socket-activate`` or by the test).

Every process is started here and stopped by its pid in ``finally``; every wait is bounded.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from lifecycle_support import REPO, child_env, free_port, wait_for

pytestmark = pytest.mark.timeout(120)

Message = dict[str, str]


# -- a stand-in NOTIFY_SOCKET -------------------------------------------------------------------


class NotifySocket:
    """A datagram socket the daemon notifies; every message is kept in arrival order."""

    def __init__(self, path: Path) -> None:
        assert len(str(path)) < 100, "AF_UNIX paths are limited to 107 bytes"
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.seen: list[Message] = []

    def close(self) -> None:
        self.sock.close()

    def next(self, want: Callable[[Message], bool], *, timeout: float = 30.0) -> Message:
        """The next message ``want`` accepts (those before it are kept in :attr:`seen`)."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"no matching notify message; got {self.seen[-10:]}")
            self.sock.settimeout(left)
            try:
                data = self.sock.recv(4096)
            except TimeoutError:
                continue
            msg = dict(line.split("=", 1) for line in data.decode().splitlines() if "=" in line)
            self.seen.append(msg)
            if want(msg):
                return msg


# -- the daemon process -------------------------------------------------------------------------


class Controld:
    """``python -m controld run`` (optionally behind a wrapper), output to a file."""

    def __init__(
        self,
        tmp: Path,
        args: list[str],
        *,
        env: dict[str, str] | None = None,
        wrapper: list[str] | None = None,
        pass_fds: tuple[int, ...] = (),
    ) -> None:
        self.log_path = tmp / "controld.log"
        self.token_file = tmp / "admin-token"
        argv = [*(wrapper or []), sys.executable, "-m", "controld", "run", *args]
        with self.log_path.open("wb") as out:
            self.proc = subprocess.Popen(
                argv,
                cwd=REPO,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=child_env(env),
                pass_fds=pass_fds,
            )

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    def events(self, name: str) -> list[dict[str, Any]]:
        out = []
        for line in self.output().splitlines():
            if line.startswith("{"):
                with contextlib.suppress(ValueError):
                    event = json.loads(line)
                    if event.get("event") == name:
                        out.append(event)
        return out

    def ready(self, *, timeout: float = 40.0) -> dict[str, Any]:
        """The ``ready`` log line (fails with the output if the process exits first)."""

        def seen() -> bool:
            if self.proc.poll() is not None:
                raise AssertionError(f"controld exited {self.proc.returncode}:\n{self.output()}")
            return bool(self.events("ready"))

        wait_for(seen, timeout=timeout, what="controld ready")
        return self.events("ready")[0]

    def get(self, port: int, path: str, token: str | None = None) -> int:
        headers = {} if token is None else {"authorization": f"Bearer {token}"}
        return httpx.get(f"http://127.0.0.1:{port}{path}", headers=headers, timeout=10).status_code

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(20)


def _base_args(tmp: Path) -> list[str]:
    return [
        "--data-dir",
        str(tmp / "data"),
        "--admin-token-file",
        str(tmp / "admin-token"),
        "--node-name",
        "test",
    ]


def _ports_args() -> list[str]:
    return [
        "--registry-listen",
        "127.0.0.1:0",
        "--push",
        "127.0.0.1:0",
        "--tls",
        "127.0.0.1:0",
    ]


@pytest.fixture
def notify(tmp_path: Path) -> Iterator[NotifySocket]:
    sock = NotifySocket(tmp_path / "notify.sock")
    try:
        yield sock
    finally:
        sock.close()


# -- notify, watchdog, reload, stop -------------------------------------------------------------


def test_ready_watchdog_reload_and_stop(tmp_path: Path, notify: NotifySocket) -> None:
    admin_port = free_port()
    conf = tmp_path / "controld.yaml"
    conf.write_text(f"admin: 127.0.0.1:{admin_port}\nlog-level: info\n")
    env = {"NOTIFY_SOCKET": str(notify.path), "WATCHDOG_USEC": "1000000"}
    args = [*_base_args(tmp_path), *_ports_args(), "--config", str(conf)]
    daemon = Controld(tmp_path, args, env=env)
    try:
        ready = notify.next(lambda m: "READY" in m, timeout=40)
        assert ready["READY"] == "1"
        assert ready["STATUS"].startswith("serving: API 127.0.0.1:"), ready
        assert daemon.ready()["admin_port"] == admin_port  # the file's address is used
        token = daemon.token_file.read_text().strip()
        assert daemon.get(admin_port, "/v1/status", token) == 200

        # Watchdog pings every half WATCHDOG_USEC.
        for _ in range(2):
            assert notify.next(lambda m: "WATCHDOG" in m, timeout=10)["WATCHDOG"] == "1"

        # SIGHUP: a new log level and a rotated admin token apply; a new address needs a
        # restart and is said so.
        conf.write_text(f"admin: 127.0.0.1:{free_port()}\nlog-level: debug\n")
        new_token = "rotated-" + "x" * 30
        daemon.token_file.write_text(new_token + "\n")
        before_us = time.monotonic_ns() // 1000
        daemon.proc.send_signal(signal.SIGHUP)
        reloading = notify.next(lambda m: "RELOADING" in m)
        assert reloading["RELOADING"] == "1"
        assert before_us <= int(reloading["MONOTONIC_USEC"]) <= time.monotonic_ns() // 1000
        ready = notify.next(lambda m: "READY" in m)
        assert "applied: log_level, admin_token" in ready["STATUS"], ready
        assert "restart needed for: admin_port" in ready["STATUS"], ready
        (reloaded,) = daemon.events("reloaded")
        assert reloaded["applied"] == ["log_level", "admin_token"]
        assert daemon.events("restart needed to apply")[0]["settings"] == ["admin_port"]
        assert daemon.get(admin_port, "/v1/status", token) == 401
        assert daemon.get(admin_port, "/v1/status", new_token) == 200

        # A configuration that doesn't parse is rejected whole, and READY=1 still follows.
        conf.write_text("admin: [1\n")
        daemon.proc.send_signal(signal.SIGHUP)
        notify.next(lambda m: "RELOADING" in m)
        ready = notify.next(lambda m: "READY" in m)
        assert ready["STATUS"].startswith("reload rejected"), ready
        assert daemon.events("reload rejected, keeping the running configuration")
        assert daemon.get(admin_port, "/v1/status", new_token) == 200
        # An unknown option is rejected the same way.
        conf.write_text("no-such-option: 1\n")
        daemon.proc.send_signal(signal.SIGHUP)
        notify.next(lambda m: "RELOADING" in m)
        assert notify.next(lambda m: "READY" in m)["STATUS"].startswith("reload rejected")

        daemon.proc.send_signal(signal.SIGTERM)
        assert notify.next(lambda m: "STOPPING" in m)["STOPPING"] == "1"
        assert daemon.proc.wait(30) == 0
        assert daemon.events("stopped")
    finally:
        daemon.stop()


def test_no_watchdog_pings_for_another_pid(tmp_path: Path, notify: NotifySocket) -> None:
    # WATCHDOG_PID names another process: the variables were inherited, not meant for us.
    env = {
        "NOTIFY_SOCKET": str(notify.path),
        "WATCHDOG_USEC": "200000",
        "WATCHDOG_PID": str(os.getpid()),
    }
    args = [*_base_args(tmp_path), *_ports_args(), "--admin", "127.0.0.1:0"]
    daemon = Controld(tmp_path, args, env=env)
    try:
        notify.next(lambda m: "READY" in m, timeout=40)
        daemon.ready()
        # Several intervals pass; the only messages are READY/STATUS ones.
        with pytest.raises(AssertionError):
            notify.next(lambda m: "WATCHDOG" in m, timeout=1.5)
        daemon.proc.send_signal(signal.SIGTERM)
        notify.next(lambda m: "STOPPING" in m)
        assert daemon.proc.wait(30) == 0
    finally:
        daemon.stop()


def test_sigterm_while_starting(tmp_path: Path, notify: NotifySocket) -> None:
    args = [*_base_args(tmp_path), *_ports_args(), "--admin", "127.0.0.1:0"]
    daemon = Controld(tmp_path, args, env={"NOTIFY_SOCKET": str(notify.path)})
    try:
        # STATUS=starting comes once the signal handlers are in place, before the listeners.
        notify.next(lambda m: m.get("STATUS") == "starting", timeout=40)
        daemon.proc.send_signal(signal.SIGTERM)
        notify.next(lambda m: "STOPPING" in m)
        assert daemon.proc.wait(30) == 0, daemon.output()
        assert daemon.events("stopped")
        # Usually the start is abandoned; if it had finished first, READY=1 came before.
        if not daemon.events("ready"):
            assert not any("READY" in m for m in notify.seen)
    finally:
        daemon.stop()


# -- socket activation --------------------------------------------------------------------------


@pytest.mark.skipif(
    shutil.which("systemd-socket-activate") is None, reason="systemd-socket-activate missing"
)
def test_socket_activation_by_names(tmp_path: Path, notify: NotifySocket) -> None:
    activator = shutil.which("systemd-socket-activate")
    assert activator is not None
    ports = {name: free_port() for name in ("admin", "push", "tls", "registry")}
    wrapper = [activator]
    for port in ports.values():
        wrapper += ["-l", f"127.0.0.1:{port}"]
    wrapper += [f"--fdname={':'.join(ports)}"]
    # The activator passes only the -E variables on (plus PATH, HOME, ...).
    for key, value in child_env({"NOTIFY_SOCKET": str(notify.path)}).items():
        if key in ("PYTHONPATH", "PYTHONUNBUFFERED", "NOTIFY_SOCKET"):
            wrapper += ["-E", f"{key}={value}"]
    # The flags name other ports: the named sockets win.
    args = [*_base_args(tmp_path), *_ports_args(), "--admin", "127.0.0.1:0"]
    daemon = Controld(tmp_path, args, wrapper=wrapper)
    try:
        # The first connection wakes the activator, which execs controld with the sockets.
        wait_for(lambda: _connectable(ports["admin"]), timeout=15, what="the activator")
        assert daemon.get(ports["admin"], "/ready") in (200, 503)
        ready = daemon.ready()
        assert ready["admin_port"] == ports["admin"]
        assert ready["push_port"] == ports["push"]
        assert ready["tls_port"] == ports["tls"]
        assert ready["registry_port"] == ports["registry"]
        assert sorted(ready["inherited"]) == ["admin", "push", "registry", "tls"]
        status = notify.next(lambda m: "READY" in m)["STATUS"]
        assert f"API 127.0.0.1:{ports['admin']} (inherited)" in status
        token = daemon.token_file.read_text().strip()
        assert daemon.get(ports["admin"], "/v1/status", token) == 200
        assert daemon.get(ports["push"], "/v1/status", token) == 200
        assert daemon.get(ports["registry"], "/v1/status/leader") == 200
        with httpx.Client(verify=False, timeout=10) as tls:  # any certificate will do
            resp = tls.get(f"https://127.0.0.1:{ports['tls']}/v1/status", headers=_auth(token))
        assert resp.status_code == 200
        daemon.proc.send_signal(signal.SIGTERM)
        assert daemon.proc.wait(30) == 0
    finally:
        daemon.stop()


def test_sockets_passed_by_the_test(tmp_path: Path) -> None:
    """fds 3.. with LISTEN_PID/LISTEN_FDS/LISTEN_FDNAMES exactly as systemd sets them: one
    named socket, one unnamed matched by its address, the rest bound by controld."""
    admin = _listener()
    push = _listener()
    push_port = push.getsockname()[1]
    args = [*_base_args(tmp_path), *_ports_args(), "--admin", "127.0.0.1:0"]
    args[args.index("--push") + 1] = f"127.0.0.1:{push_port}"
    daemon = _with_fds(tmp_path, args, [admin, push], "admin:")
    try:
        ready = daemon.ready()
        assert ready["admin_port"] == admin.getsockname()[1]
        assert ready["push_port"] == push_port
        assert sorted(ready["inherited"]) == ["admin", "push"]
        token = daemon.token_file.read_text().strip()
        assert daemon.get(push_port, "/v1/status", token) == 200
        daemon.proc.send_signal(signal.SIGTERM)
        assert daemon.proc.wait(30) == 0
    finally:
        daemon.stop()
        admin.close()
        push.close()


def test_a_socket_for_no_listener_is_an_error(tmp_path: Path) -> None:
    stray = _listener()
    args = [*_base_args(tmp_path), *_ports_args(), "--admin", "127.0.0.1:0", "--tls", "off"]
    daemon = _with_fds(tmp_path, args, [stray], "tls")
    try:
        assert daemon.proc.wait(30) == 1
        assert "serve no listener" in daemon.output()
        assert "tls" in daemon.output()
    finally:
        daemon.stop()
        stray.close()


# -- helpers ------------------------------------------------------------------------------------


def _auth(token: str) -> dict[str, str]:
    return {"authorization": f"Bearer {token}"}


def _connectable(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=2):
            return True
    except OSError:
        return False


def _listener() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    sock.listen(64)
    return sock


def _with_fds(tmp: Path, args: list[str], socks: list[socket.socket], names: str) -> Controld:
    """controld with ``socks`` as fds 3.. and the LISTEN_* variables of its own pid: a shell
    moves the fds into place, exports its pid and execs (the pid stays the same)."""
    moves = " ".join(f"{3 + i}<&{s.fileno()}" for i, s in enumerate(socks))
    closes = " ".join(f"{s.fileno()}<&-" for s in socks)
    script = (
        f'exec {moves} {closes}; export LISTEN_PID=$$ LISTEN_FDS={len(socks)} LISTEN_FDNAMES="$0"; '
        'exec "$@"'
    )
    # bash: its redirections take fds above 9 (dash's don't).
    bash = shutil.which("bash")
    assert bash is not None
    wrapper = [bash, "-c", script, names]
    return Controld(tmp, args, wrapper=wrapper, pass_fds=tuple(s.fileno() for s in socks))
