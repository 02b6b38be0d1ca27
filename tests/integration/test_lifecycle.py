"""Lifecycle of the real sidecar process: notify, socket activation, reload, drain, admin API.

Each test runs ``python -m meshd run -c BOOTSTRAP`` as a subprocess (see
:mod:`lifecycle_support`) against a threaded upstream app in this process, and stops both in
``finally`` even when an assertion fails. No timing assertions: bounds are generous timeouts
on waits, never measured durations.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from lifecycle_support import (
    REPO,
    LoadGenerator,
    SidecarProcess,
    UpstreamApp,
    bootstrap_doc,
    child_env,
    free_port,
    http_get,
    running_sidecar,
    snapshot_doc,
    wait_for,
    write_yaml,
)
from process_support import admin_port_pair, answers, child_pids, process_gone
from prometheus_client.parser import text_string_to_metric_families


@pytest.fixture
def upstream() -> Iterator[UpstreamApp]:
    with UpstreamApp() as app:
        yield app


def _write_config(
    tmp_path: Path,
    upstream: UpstreamApp,
    *,
    version: int = 1,
    drain_timeout_s: float = 10.0,
    listen_port: int = 0,
) -> Path:
    boot = tmp_path / "bootstrap.yaml"
    write_yaml(boot, bootstrap_doc(app_port=upstream.port, drain_timeout_s=drain_timeout_s))
    write_yaml(
        tmp_path / "snapshot.yaml",
        snapshot_doc(version=version, upstream_port=upstream.port, listen_port=listen_port),
    )
    return boot


def _refused(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=2):
            return False
    except ConnectionRefusedError:
        return True


def _reload_and_wait(sc: SidecarProcess, version: int) -> None:
    sc.send_signal(signal.SIGHUP)
    wait_for(lambda: sc.version() == version, timeout=15, what=f"snapshot version {version}")


def _wait_progress(load: LoadGenerator, more: int) -> None:
    """Let ``more`` requests finish (or the load end) before the next change."""
    target = load.completed + more
    wait_for(
        lambda: load.completed >= target or load.finished,
        timeout=20,
        what=f"{more} more requests",
    )


# -- 1. sd_notify -------------------------------------------------------------------------------


def _notify_socket(tmp_path: Path) -> tuple[socket.socket, Path]:
    path = tmp_path / "notify.sock"
    assert len(str(path)) < 100, "AF_UNIX paths are limited to 107 bytes"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    return sock, path


def _next_message(
    sock: socket.socket, want: Callable[[dict[str, str]], bool], *, timeout: float = 20.0
) -> tuple[dict[str, str], list[dict[str, str]]]:
    """The first datagram ``want`` accepts, and those skipped before it."""
    skipped: list[dict[str, str]] = []
    deadline = time.monotonic() + timeout
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            raise AssertionError(f"no matching notify message; got {skipped}")
        sock.settimeout(left)
        try:
            data = sock.recv(4096)
        except TimeoutError:
            continue
        fields = dict(line.split("=", 1) for line in data.decode().splitlines() if "=" in line)
        if want(fields):
            return fields, skipped
        skipped.append(fields)


def test_notify_ready_reload_stopping(tmp_path: Path, upstream: UpstreamApp) -> None:
    boot = _write_config(tmp_path, upstream)
    notify, path = _notify_socket(tmp_path)
    with (
        notify,
        running_sidecar(boot, env={"NOTIFY_SOCKET": str(path)}, wait=False) as sc,
    ):
        ready, _ = _next_message(notify, lambda m: "READY" in m, timeout=30)
        assert ready["READY"] == "1"
        assert ready.get("STATUS"), ready
        sc.wait_ready()

        # A good reload: RELOADING=1 with the monotonic time of the reload, then READY=1.
        write_yaml(tmp_path / "snapshot.yaml", snapshot_doc(version=2, upstream_port=upstream.port))
        before_us = time.monotonic_ns() // 1000
        sc.send_signal(signal.SIGHUP)
        reloading, _ = _next_message(notify, lambda m: "RELOADING" in m)
        after_us = time.monotonic_ns() // 1000
        assert reloading["RELOADING"] == "1"
        assert before_us <= int(reloading["MONOTONIC_USEC"]) <= after_us
        ready, _ = _next_message(notify, lambda m: "READY" in m)
        assert ready["READY"] == "1"
        assert sc.version() == 2

        # A rejected reload must still end with READY=1 (systemd waits for it after RELOADING).
        write_yaml(tmp_path / "snapshot.yaml", "version: [1\n")
        sc.send_signal(signal.SIGHUP)
        _next_message(notify, lambda m: "RELOADING" in m)
        ready, _ = _next_message(notify, lambda m: "READY" in m)
        assert ready["READY"] == "1"
        assert sc.version() == 2

        sc.send_signal(signal.SIGTERM)
        stopping, _ = _next_message(notify, lambda m: "STOPPING" in m)
        assert stopping["STOPPING"] == "1"
        assert sc.wait_exit(timeout=20) == 0


def test_notify_watchdog_pings(tmp_path: Path, upstream: UpstreamApp) -> None:
    boot = _write_config(tmp_path, upstream)
    notify, path = _notify_socket(tmp_path)
    env = {"NOTIFY_SOCKET": str(path), "WATCHDOG_USEC": "2000000"}
    with notify, running_sidecar(boot, env=env, wait=False) as sc:
        _next_message(notify, lambda m: "READY" in m, timeout=30)
        for _ in range(3):
            ping, _ = _next_message(notify, lambda m: "WATCHDOG" in m, timeout=15)
            assert ping["WATCHDOG"] == "1"
        sc.send_signal(signal.SIGTERM)
        assert sc.wait_exit(timeout=20) == 0


# -- 2. socket activation -----------------------------------------------------------------------


@pytest.mark.skipif(
    shutil.which("systemd-socket-activate") is None, reason="systemd-socket-activate missing"
)
def test_socket_activation_uses_inherited_listener(tmp_path: Path, upstream: UpstreamApp) -> None:
    port = free_port()
    boot = _write_config(tmp_path, upstream, listen_port=port)
    activator = shutil.which("systemd-socket-activate")
    assert activator is not None
    # Without --accept the activator listens, waits for the first connection, then execs the
    # command in its own process (same pid) with the listening socket as fd 3 and only the -E
    # variables (plus PATH/HOME/TERM/USER) in its environment.
    wrapper = [
        activator,
        "-l",
        f"127.0.0.1:{port}",
        "--fdname=api",
        "-E",
        f"PYTHONPATH={REPO}",
        "-E",
        "PYTHONUNBUFFERED=1",
    ]
    with running_sidecar(boot, wrapper=wrapper, wait=False) as sc:
        wait_for(lambda: not _refused(port), timeout=15, what="the activator to listen")
        # This first request wakes the activator; meshd must accept it from the same socket.
        status, _, body = http_get(port, "/", timeout=60)
        assert (status, body) == (200, b"ok\n")
        sc.wait_ready()
        (api,) = [x for x in sc.admin_json("/listeners") if x["name"] == "api"]
        assert api["inherited"] is True
        assert api["address"] == f"127.0.0.1:{port}"
        assert http_get(port, "/")[0] == 200

        # A reload keeps the inherited socket.
        write_yaml(
            tmp_path / "snapshot.yaml",
            snapshot_doc(version=2, upstream_port=upstream.port, listen_port=port, timeout_s=3),
        )
        _reload_and_wait(sc, 2)
        (api,) = [x for x in sc.admin_json("/listeners") if x["name"] == "api"]
        assert api["inherited"] is True
        assert http_get(port, "/")[0] == 200

        sc.send_signal(signal.SIGTERM)
        assert sc.wait_exit(timeout=20) == 0


# -- 3. reload under load -----------------------------------------------------------------------


def test_reloads_under_load_fail_no_request(tmp_path: Path, upstream: UpstreamApp) -> None:
    extra_port = free_port()
    extra = {
        "name": "extra",
        "direction": "outbound",
        "address": f"127.0.0.1:{extra_port}",
        "cluster": "app",
    }
    boot = _write_config(tmp_path, upstream)
    with running_sidecar(boot) as sc:
        port = sc.listener_port("api")
        load = LoadGenerator(port, threads=4, max_requests=20_000, max_seconds=20)
        with load:
            _wait_progress(load, 100)
            before = load.completed
            for step in range(1, 11):
                version = step + 1
                with_extra = step % 2 == 1
                write_yaml(
                    tmp_path / "snapshot.yaml",
                    snapshot_doc(
                        version=version,
                        upstream_port=upstream.port,
                        timeout_s=5 + step,
                        extra_listeners=[extra] if with_extra else None,
                    ),
                )
                _reload_and_wait(sc, version)
                names = {x["name"] for x in sc.admin_json("/listeners")}
                assert ("extra" in names) == with_extra, names
                if with_extra:
                    assert http_get(extra_port, "/")[0] == 200
                else:
                    wait_for(lambda: _refused(extra_port), timeout=10, what="extra closed")
                _wait_progress(load, 100)
            during = load.completed - before
        result = load.result
        assert result.failures == [], result.failures
        assert during > 0
        dump = sc.admin_json("/config_dump")
        assert dump["snapshot"]["version"] == 11
        assert dump["snapshot"]["route_tables"][0]["routes"][0]["timeout_s"] == 15
        assert sc.stat("snapshot.updates.applied") == 11
        assert sc.stat("snapshot.updates.rejected") == 0


def _reject_events(sc: SidecarProcess) -> list[dict[str, Any]]:
    return [e for e in sc.events() if e.get("level") == "error"]


def test_bad_snapshots_under_load_keep_old_config(tmp_path: Path, upstream: UpstreamApp) -> None:
    boot = _write_config(tmp_path, upstream)
    snap = tmp_path / "snapshot.yaml"
    unknown_cluster = snapshot_doc(version=2, upstream_port=upstream.port)
    unknown_cluster["route_tables"][0]["routes"][0]["backends"] = [{"cluster": "nope"}]
    # A port held by someone else: a snapshot with a listener there can't be applied.
    busy_port = free_port()
    unbindable = snapshot_doc(
        version=3,
        upstream_port=upstream.port,
        extra_listeners=[
            {
                "name": "busy",
                "direction": "outbound",
                "address": f"127.0.0.1:{busy_port}",
                "cluster": "app",
            }
        ],
    )
    bad_files: list[tuple[Any, str]] = [
        ("version: [1\nlisteners: {\n", "invalid YAML"),
        (unknown_cluster, "nope"),
        (unbindable, str(busy_port)),
    ]
    with socket.socket() as busy, running_sidecar(boot) as sc:
        busy.bind(("127.0.0.1", busy_port))
        busy.listen(1)
        port = sc.listener_port("api")
        with LoadGenerator(port, threads=4, max_requests=20_000, max_seconds=20) as load:
            _wait_progress(load, 100)
            for n, (doc, detail) in enumerate(bad_files, start=1):
                write_yaml(snap, doc)
                sc.send_signal(signal.SIGHUP)
                wait_for(
                    lambda n=n: sc.stat("snapshot.updates.rejected") == n,  # type: ignore[misc]
                    timeout=15,
                    what=f"rejection {n}",
                )
                assert sc.version() == 1
                errors = _reject_events(sc)
                assert len(errors) == n, errors
                text = json.dumps(errors[-1])
                assert detail in text, errors[-1]
                if n < 3:
                    # Parse and validation errors name the file they came from.
                    assert str(snap) in text, errors[-1]
                _wait_progress(load, 100)
            write_yaml(snap, snapshot_doc(version=4, upstream_port=upstream.port))
            _reload_and_wait(sc, 4)
            _wait_progress(load, 100)
        result = load.result
        assert result.failures == [], result.failures
        assert sc.stat("snapshot.updates.rejected") == 3
        assert sc.listener_port("api") == port
        assert http_get(port, "/")[0] == 200


def test_hostile_yaml_on_sighup_keeps_serving(tmp_path: Path, upstream: UpstreamApp) -> None:
    """Deep nesting, a duplicate key or an alias bomb in either file: rejected, meshd serves on.

    Before the strict loader, the deep snapshot raised RecursionError out of the reload and
    meshd exited.
    """
    boot = _write_config(tmp_path, upstream)
    snap = tmp_path / "snapshot.yaml"
    good_snapshot = snap.read_text()
    good_boot = boot.read_text()
    laughs = "a: &a [x, x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"{chr(98 + i)}: &{chr(98 + i)} [{', '.join([f'*{chr(97 + i)}'] * 10)}]\n" for i in range(8)
    )
    cases = [
        (snap, "version: 2\nlisteners: " + "[" * 5000 + "\n", "nested deeper than 64"),
        (snap, good_snapshot + "version: 3\n", "duplicate key 'version'"),
        (snap, laughs, "aliases expand to more than"),
        (boot, good_boot + "x: " + "{a: " * 5000 + "\n", "nested deeper than 64"),
    ]
    with running_sidecar(boot) as sc:
        port = sc.listener_port("api")
        for n, (path, text, detail) in enumerate(cases, start=1):
            write_yaml(path, text)
            sc.send_signal(signal.SIGHUP)
            wait_for(
                lambda n=n: (
                    len(sc.events_named("reload rejected, keeping the running configuration")) == n
                ),  # type: ignore[misc]
                timeout=15,
                what=f"rejection {n}",
            )
            event = sc.events_named("reload rejected, keeping the running configuration")[-1]
            assert detail in event["error"], event
            assert str(path) in event["error"], event
            assert sc.running()
            assert sc.version() == 1
            assert http_get(port, "/")[0] == 200
            write_yaml(snap, good_snapshot)
            write_yaml(boot, good_boot)
        assert "RecursionError" not in sc.output()


# -- 4. drain -----------------------------------------------------------------------------------


class _Request(threading.Thread):
    """A GET in a thread, keeping the status or the exception."""

    def __init__(self, port: int, path: str) -> None:
        super().__init__(daemon=True)
        self.port = port
        self.path = path
        self.status: int | None = None
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self.status = http_get(self.port, self.path, timeout=30)[0]
        except (OSError, http.client.HTTPException) as exc:
            self.error = exc


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=lambda s: s.name)
def test_sigterm_finishes_in_flight_then_exits(
    tmp_path: Path, upstream: UpstreamApp, signum: signal.Signals
) -> None:
    boot = _write_config(tmp_path, upstream, drain_timeout_s=60)
    with running_sidecar(boot) as sc:
        port = sc.listener_port("api")
        # An idle keep-alive connection must not hold the drain up until the timeout.
        idle = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        try:
            idle.request("GET", "/")
            assert idle.getresponse().read() == b"ok\n"
            requests = [_Request(port, "/slow?ms=1500") for _ in range(4)]
            for r in requests:
                r.start()
            try:
                upstream.wait_slow_in_flight(4)
                sc.send_signal(signum)
                wait_for(lambda: _refused(port), timeout=10, what="listener closed")
            finally:
                for r in requests:
                    r.join(timeout=30)
            assert [(r.status, r.error) for r in requests] == [(200, None)] * 4
            # Well under drain_timeout_s: the idle connection was closed, not waited for.
            assert sc.wait_exit(timeout=30) == 0
            assert idle.sock is not None
            idle.sock.settimeout(5)
            assert idle.sock.recv(1) == b""
        finally:
            idle.close()
        assert sc.events_named("drained")


def test_drain_timeout_cuts_long_requests(tmp_path: Path, upstream: UpstreamApp) -> None:
    boot = _write_config(tmp_path, upstream, drain_timeout_s=1)
    with running_sidecar(boot) as sc:
        port = sc.listener_port("api")
        slow = _Request(port, "/slow?ms=5000")
        slow.start()
        try:
            upstream.wait_slow_in_flight(1)
            sc.send_signal(signal.SIGTERM)
            assert sc.wait_exit(timeout=15) == 0
        finally:
            slow.join(timeout=30)
        assert slow.status != 200, "the request outlived the drain timeout"
        assert slow.error is not None or slow.status is not None
        assert any(e.get("level") == "warning" for e in sc.events()), sc.output()


def test_admin_post_drain(tmp_path: Path, upstream: UpstreamApp) -> None:
    boot = _write_config(tmp_path, upstream, drain_timeout_s=30)
    with running_sidecar(boot) as sc:
        port = sc.listener_port("api")
        assert sc.admin("/ready") == (200, b"ready")
        slow = _Request(port, "/slow?ms=3000")
        slow.start()
        try:
            upstream.wait_slow_in_flight(1)
            status, body = sc.admin_post("/drain")
            assert status == 202, body
            # The in-flight request keeps the process (and the admin API) up meanwhile.
            assert sc.admin("/ready")[0] == 503
            assert sc.admin("/live")[0] == 200
            wait_for(lambda: _refused(port), timeout=10, what="listener closed")
        finally:
            slow.join(timeout=30)
        assert (slow.status, slow.error) == (200, None)
        assert sc.wait_exit(timeout=30) == 0


def test_admin_drain_refuses_browser_requests(tmp_path: Path, upstream: UpstreamApp) -> None:
    """A cross-site form POST and a plain GET to /drain change nothing; meshd keeps serving."""
    boot = _write_config(tmp_path, upstream, drain_timeout_s=30)
    with running_sidecar(boot) as sc:
        port = sc.listener_port("api")
        form = {"Content-Type": "application/x-www-form-urlencoded"}
        refused = [
            ("POST", {**form, "Origin": "http://evil.example"}, b"a=1", 403),
            ("POST", {**form, "Sec-Fetch-Site": "cross-site"}, b"a=1", 403),
            ("POST", form, b"a=1", 415),
            ("POST", {"Content-Type": "text/plain"}, b"{}", 415),
            ("POST", {}, None, 415),
            (
                "POST",
                {"Content-Type": "application/json", "Origin": "http://evil.example"},
                b"{}",
                403,
            ),
            ("POST", {"Content-Type": "application/json", "Host": "evil.example"}, b"{}", 403),
            ("GET", {}, None, 405),
        ]
        for method, headers, body, want in refused:
            status, text = sc.admin("/drain", method=method, headers=headers, body=body)
            assert status == want, (method, headers, status, text)
            assert sc.admin("/ready") == (200, b"ready")
            assert http_get(port, "/")[0] == 200
        assert sc.running()
        # The accepted drain: an in-flight request keeps meshd up until the answer is read.
        slow = _Request(port, "/slow?ms=2000")
        slow.start()
        upstream.wait_slow_in_flight(1)
        status, text = sc.admin(
            "/drain",
            method="POST",
            headers={
                "Content-Type": "application/json; charset=utf-8",
                "Origin": f"http://127.0.0.1:{sc.admin_port}",
                "Sec-Fetch-Site": "same-origin",
            },
            body=b"{}",
        )
        assert status == 202, text
        slow.join(timeout=30)
        assert sc.wait_exit(timeout=30) == 0


def test_signals_during_drain(tmp_path: Path, upstream: UpstreamApp) -> None:
    """SIGHUP while draining must not bind listeners again; a second SIGTERM changes nothing."""
    boot = _write_config(tmp_path, upstream, drain_timeout_s=30)
    extra_port = free_port()
    with running_sidecar(boot) as sc:
        port = sc.listener_port("api")
        slow = _Request(port, "/slow?ms=3000")
        slow.start()
        try:
            upstream.wait_slow_in_flight(1)
            sc.send_signal(signal.SIGTERM)
            wait_for(lambda: _refused(port), timeout=10, what="listener closed")
            listener = {
                "name": "extra",
                "direction": "outbound",
                "address": f"127.0.0.1:{extra_port}",
                "cluster": "app",
            }
            write_yaml(
                tmp_path / "snapshot.yaml",
                snapshot_doc(version=2, upstream_port=upstream.port, extra_listeners=[listener]),
            )
            sc.send_signal(signal.SIGHUP)
            sc.send_signal(signal.SIGTERM)
            # Watch for a while (the slow request keeps the process up meanwhile): neither
            # the new listener nor the old one may accept at any point.
            end = time.monotonic() + 1.5
            while time.monotonic() < end:
                assert _refused(extra_port), "a reload during drain opened a new listener"
                assert _refused(port), "a reload during drain reopened a listener"
                time.sleep(0.1)
            assert sc.admin("/ready")[0] == 503
        finally:
            slow.join(timeout=30)
        assert (slow.status, slow.error) == (200, None)
        assert sc.wait_exit(timeout=30) == 0


def test_reload_routes_open_connections_by_the_new_snapshot(
    tmp_path: Path, upstream: UpstreamApp
) -> None:
    extra_port = free_port()
    extra = {
        "name": "extra",
        "direction": "outbound",
        "address": f"127.0.0.1:{extra_port}",
        "cluster": "app",
    }
    boot = _write_config(tmp_path, upstream)
    write_yaml(
        tmp_path / "snapshot.yaml",
        snapshot_doc(version=1, upstream_port=upstream.port, extra_listeners=[extra]),
    )
    with running_sidecar(boot) as sc:
        port = sc.listener_port("api")
        old_api = http.client.HTTPConnection("127.0.0.1", port, timeout=15)
        old_extra = http.client.HTTPConnection("127.0.0.1", extra_port, timeout=15)
        try:
            for conn in (old_api, old_extra):
                conn.request("GET", "/")
                assert conn.getresponse().read() == b"ok\n"
            # v2 routes only /v2 and drops the extra listener.
            v2 = snapshot_doc(version=2, upstream_port=upstream.port)
            v2["route_tables"][0]["routes"][0]["match"] = {"path": {"prefix": "/v2"}}
            write_yaml(tmp_path / "snapshot.yaml", v2)
            _reload_and_wait(sc, 2)
            wait_for(lambda: _refused(extra_port), timeout=10, what="extra closed")
            status, headers, _ = http_get(port, "/")
            assert (status, headers.get("x-meshd-error")) == (404, "no_route")
            # An open connection of a listener that stays follows the new routes (a pooled
            # client sees a change at once); one whose listener is gone keeps its snapshot.
            old_api.request("GET", "/")
            resp = old_api.getresponse()
            assert (resp.status, resp.getheader("x-meshd-error")) == (404, "no_route")
            resp.read()
            old_extra.request("GET", "/")
            resp = old_extra.getresponse()
            assert (resp.status, resp.read()) == (200, b"ok\n")
        finally:
            old_api.close()
            old_extra.close()


def test_unreachable_notify_socket_is_not_fatal(tmp_path: Path, upstream: UpstreamApp) -> None:
    boot = _write_config(tmp_path, upstream)
    env = {"NOTIFY_SOCKET": str(tmp_path / "nobody-listens.sock"), "WATCHDOG_USEC": "200000"}
    with running_sidecar(boot, env=env) as sc:
        assert http_get(sc.listener_port("api"), "/")[0] == 200
        assert sc.admin("/ready")[0] == 200
        sc.send_signal(signal.SIGTERM)
        assert sc.wait_exit(timeout=20) == 0


# -- workers ------------------------------------------------------------------------------------


@contextlib.contextmanager
def _workers_sidecar(
    tmp_path: Path, upstream: UpstreamApp
) -> Iterator[tuple[SidecarProcess, int, int, int]]:
    """A sidecar with ``workers: 2``: (process, listener port, admin port, worker pid)."""
    listen, admin = free_port(), admin_port_pair()
    boot = tmp_path / "bootstrap.yaml"
    write_yaml(boot, bootstrap_doc(app_port=upstream.port, admin_port=admin, workers=2))
    write_yaml(
        tmp_path / "snapshot.yaml",
        snapshot_doc(version=1, upstream_port=upstream.port, listen_port=listen),
    )
    worker_pids: set[int] = set()
    try:
        with running_sidecar(boot) as sc:
            try:
                wait_for(lambda: len(child_pids(sc.pid)) == 1, timeout=15, what="the worker")
                (worker,) = child_pids(sc.pid)
                worker_pids.add(worker)
                wait_for(lambda: answers(admin + 1, "/ready"), timeout=30, what="worker ready")
                yield sc, listen, admin, worker
            finally:
                # Workers restarted meanwhile have other pids.
                worker_pids.update(child_pids(sc.pid))
    finally:
        # The primary stops its workers, and the kernel signals them if it was killed; a
        # worker still there after that is a bug, but must not outlive the test either.
        for pid in worker_pids:
            with contextlib.suppress(AssertionError):
                wait_for(lambda pid=pid: process_gone(pid), timeout=10)  # type: ignore[misc]
            if not process_gone(pid):
                os.kill(pid, signal.SIGKILL)


def test_workers_reload_and_drain(tmp_path: Path, upstream: UpstreamApp) -> None:
    with _workers_sidecar(tmp_path, upstream) as (sc, listen, admin, worker):
        assert sc.admin_port == admin
        for _ in range(20):
            assert http_get(listen, "/")[0] == 200
        write_yaml(
            tmp_path / "snapshot.yaml",
            snapshot_doc(version=2, upstream_port=upstream.port, listen_port=listen, timeout_s=3),
        )
        _reload_and_wait(sc, 2)

        def worker_version() -> int:
            status, _, body = http_get(admin + 1, "/config_dump")
            assert status == 200
            return int(json.loads(body)["snapshot"]["version"])

        wait_for(lambda: worker_version() == 2, timeout=15, what="the worker to reload")
        sc.send_signal(signal.SIGTERM)
        assert sc.wait_exit(timeout=30) == 0
        wait_for(lambda: process_gone(worker), timeout=15, what="the worker to exit")
        assert _refused(listen)


def test_worker_dies_with_killed_primary(tmp_path: Path, upstream: UpstreamApp) -> None:
    with _workers_sidecar(tmp_path, upstream) as (sc, _listen, _admin, worker):
        sc.send_signal(signal.SIGKILL)
        assert sc.wait_exit(timeout=15) == -signal.SIGKILL
        wait_for(lambda: process_gone(worker), timeout=20, what="the orphaned worker to exit")


def test_worker_survives_idle_primary(tmp_path: Path, upstream: UpstreamApp) -> None:
    """A worker must live as long as the primary does, not as long as some thread of it.

    PR_SET_PDEATHSIG fires when the *thread* that forked the child exits; trio starts
    subprocesses from its thread cache, whose idle threads exit after 10 s.
    """
    with _workers_sidecar(tmp_path, upstream) as (sc, listen, _admin, worker):
        time.sleep(12)
        assert not process_gone(worker), sc.output()
        assert child_pids(sc.pid) == [worker], sc.output()
        assert not [e for e in sc.events() if e.get("logger") == "meshd.workers"], sc.output()
        assert http_get(listen, "/")[0] == 200


# -- 5. invalid configuration -------------------------------------------------------------------


def _meshd(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "meshd", *args],
        env=child_env(),
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def _bad_snapshot_address(tmp_path: Path, upstream: UpstreamApp) -> tuple[Path, list[str]]:
    boot = _write_config(tmp_path, upstream)
    doc = snapshot_doc(version=1, upstream_port=upstream.port)
    doc["listeners"][0]["address"] = "not-an-address"
    write_yaml(tmp_path / "snapshot.yaml", doc)
    return boot, [str(tmp_path / "snapshot.yaml"), "listeners[0].address", "host:port"]


def _bad_bootstrap_field(tmp_path: Path, upstream: UpstreamApp) -> tuple[Path, list[str]]:
    boot = _write_config(tmp_path, upstream)
    write_yaml(boot, bootstrap_doc(app_port=upstream.port, drain_timeout_s=-5))
    return boot, [str(boot), "drain_timeout_s", "greater than or equal to 0"]


def _unknown_cluster(tmp_path: Path, upstream: UpstreamApp) -> tuple[Path, list[str]]:
    boot = _write_config(tmp_path, upstream)
    doc = snapshot_doc(version=1, upstream_port=upstream.port)
    doc["route_tables"][0]["routes"][0]["backends"] = [{"cluster": "nope"}]
    write_yaml(tmp_path / "snapshot.yaml", doc)
    return boot, [str(tmp_path / "snapshot.yaml"), "unknown cluster 'nope'"]


@pytest.mark.parametrize(
    "make",
    [_bad_snapshot_address, _bad_bootstrap_field, _unknown_cluster],
    ids=lambda f: f.__name__,
)
def test_invalid_config_run_and_validate(
    tmp_path: Path,
    upstream: UpstreamApp,
    make: Callable[[Path, UpstreamApp], tuple[Path, list[str]]],
) -> None:
    boot, expected = make(tmp_path, upstream)
    run = _meshd("run", "-c", str(boot))
    assert run.returncode != 0
    assert "Traceback" not in run.stderr, run.stderr
    for part in expected:
        assert part in run.stderr, (part, run.stderr)
    check = _meshd("validate", "-c", str(boot))
    assert check.returncode == 1
    for part in expected:
        assert part in check.stderr, (part, check.stderr)


def test_validate_good_config(tmp_path: Path, upstream: UpstreamApp) -> None:
    boot = _write_config(tmp_path, upstream, version=7)
    check = _meshd("validate", "-c", str(boot))
    assert check.returncode == 0, check.stderr
    assert "ok" in check.stdout
    assert "7" in check.stdout


def test_listener_address_in_use_at_startup(tmp_path: Path, upstream: UpstreamApp) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        boot = _write_config(tmp_path, upstream, listen_port=port)
        run = _meshd("run", "-c", str(boot))
    assert run.returncode != 0
    assert "Traceback" not in run.stderr, run.stderr
    assert str(port) in run.stderr, run.stderr


def test_admin_address_in_use_at_startup(tmp_path: Path, upstream: UpstreamApp) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        boot = _write_config(tmp_path, upstream)
        write_yaml(boot, bootstrap_doc(app_port=upstream.port, admin_port=port))
        run = _meshd("run", "-c", str(boot))
    assert run.returncode != 0
    assert "Traceback" not in run.stderr, run.stderr
    assert str(port) in run.stderr, run.stderr


# -- 6. admin API -------------------------------------------------------------------------------


def test_admin_endpoints(tmp_path: Path, upstream: UpstreamApp) -> None:
    boot = _write_config(tmp_path, upstream)
    with running_sidecar(boot) as sc:
        port = sc.listener_port("api")
        for _ in range(5):
            assert http_get(port, "/")[0] == 200

        assert sc.admin("/ready") == (200, b"ready")
        assert sc.admin("/live")[0] == 200

        dump = sc.admin_json("/config_dump")
        assert dump["bootstrap"]["service"] == "web"
        assert dump["bootstrap"]["app"] == {"host": "127.0.0.1", "port": upstream.port}
        assert dump["snapshot"]["version"] == 1
        assert [x["name"] for x in dump["snapshot"]["listeners"]] == ["api"]

        (api,) = sc.admin_json("/listeners")
        assert api["name"] == "api"
        assert api["inherited"] is False
        assert api["route_table"] == "main"
        assert api["address"] == f"127.0.0.1:{port}"

        clusters = {c["name"]: c for c in sc.admin_json("/clusters")}
        assert "app" in clusters, clusters
        (ep,) = clusters["app"]["endpoints"]
        assert ep["address"] == f"127.0.0.1:{upstream.port}"
        for key in ("active", "idle"):
            assert isinstance(ep[key], int), ep
        assert ep["active"] + ep["idle"] >= 1, ep

        stats = sc.admin_json("/stats")
        assert stats["snapshot.version"] == 1
        requests = {
            k: v for k, v in stats.items() if k.startswith("http.") and k.endswith(".200.requests")
        }
        assert sum(requests.values()) == 5, stats

        status, body = sc.admin("/metrics")
        assert status == 200
        families = {f.name: f for f in text_string_to_metric_families(body.decode())}
        # The parser strips the _total suffix from counter family names.
        fam = families.get("meshd_requests") or families.get("meshd_requests_total")
        assert fam is not None, sorted(families)
        samples = [s for s in fam.samples if s.name == "meshd_requests_total"]
        assert sum(s.value for s in samples if s.labels.get("code") == "200") == 5, samples
        assert {s.labels.get("route") for s in samples} == {"all"}

        assert sc.admin("/nope")[0] == 404
