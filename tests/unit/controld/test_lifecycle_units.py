"""controld's lifecycle pieces with values: the config file, socket assignment, reload diff,
the reloadable log level."""

from __future__ import annotations

import dataclasses
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import structlog

from controld.activation import assign_sockets
from controld.config_file import ConfigFileError, file_arguments
from controld.lifecycle import RunSettings, listener_addresses, restart_needed
from controld.runner import parse_run, run_settings
from meshcore.runtime.activation import ActivationError, InheritedSocket
from meshcore.runtime.logging import LogLevel

pytestmark = pytest.mark.timeout(30)

FLAGS = frozenset({"registry-acl-disabled"})


def test_file_arguments(tmp_path: Path) -> None:
    conf = tmp_path / "c.yaml"
    conf.write_text(
        "admin: 127.0.0.1:9000\ntls: off\ntls-san: [a.example, 10.0.0.5]\n"
        "registry-acl-disabled: true\nmax-connections: 100\npush: null\n"
    )
    assert file_arguments(conf, FLAGS) == [
        "--admin", "127.0.0.1:9000",
        "--tls", "off",
        "--tls-san", "a.example",
        "--tls-san", "10.0.0.5",
        "--registry-acl-disabled",
        "--max-connections", "100",
    ]  # fmt: skip
    conf.write_text("registry-acl-disabled: false\n")
    assert file_arguments(conf, FLAGS) == []
    conf.write_text("")
    assert file_arguments(conf, FLAGS) == []


@pytest.mark.parametrize(
    "text",
    ["[1, 2]\n", "admin: [1\n", "--admin: x\n", "config: other.yaml\n", "admin: {a: 1}\n",
     "registry-acl-disabled: yes-please\n"],
)  # fmt: skip
def test_bad_files(tmp_path: Path, text: str) -> None:
    conf = tmp_path / "c.yaml"
    conf.write_text(text)
    with pytest.raises(ConfigFileError):
        file_arguments(conf, FLAGS)
    with pytest.raises(ConfigFileError):
        file_arguments(tmp_path / "missing.yaml", FLAGS)


def test_the_command_line_wins_over_the_file(tmp_path: Path) -> None:
    conf = tmp_path / "c.yaml"
    conf.write_text(f"data-dir: {tmp_path}\nadmin: 127.0.0.1:9000\nlog-level: debug\ntls: off\n")
    args = parse_run(["run", "--config", str(conf), "--admin", "127.0.0.1:9001"])
    settings = run_settings(args)
    assert (settings.config.admin_host, settings.config.admin_port) == ("127.0.0.1", 9001)
    assert settings.config.tls_port is None
    assert settings.log_level == "debug"


def test_restart_needed_names_what_changed(tmp_path: Path) -> None:
    base = run_settings(parse_run(["run", "--data-dir", str(tmp_path)]))
    assert restart_needed(base, base) == []
    moved = dataclasses.replace(base.config, admin_port=9, kv_prefix="x/")
    new = RunSettings(moved, log_level="debug", log_format="console")
    assert restart_needed(base, new) == ["admin_port", "kv_prefix", "log_level", "log_format"]


@pytest.fixture
def listeners() -> Iterator[list[socket.socket]]:
    socks = []
    for _ in range(3):
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        socks.append(sock)
    yield socks
    for sock in socks:
        sock.close()


def _inherited(sock: socket.socket, name: str) -> InheritedSocket:
    host, port = sock.getsockname()
    return InheritedSocket(sock.fileno(), name, socket.AF_INET, sock, (host, port))


def test_assign_by_name_then_by_address(tmp_path: Path, listeners: list[socket.socket]) -> None:
    a, b, _ = listeners
    config = run_settings(parse_run(["run", "--data-dir", str(tmp_path)])).config
    b_port = b.getsockname()[1]
    config = dataclasses.replace(config, push_host="127.0.0.1", push_port=b_port)
    assigned = assign_sockets(
        [_inherited(a, "admin"), _inherited(b, "")], listener_addresses(config)
    )
    assert assigned.get("admin") is a and assigned.get("push") is b
    assert assigned.get("tls") is None
    assert assigned.describe()["push"] == f"127.0.0.1:{b_port}"


def test_a_stray_socket_is_refused(tmp_path: Path, listeners: list[socket.socket]) -> None:
    a, b, c = listeners
    config = run_settings(parse_run(["run", "--data-dir", str(tmp_path), "--tls", "off"])).config
    addresses = listener_addresses(config)
    with pytest.raises(ActivationError, match="serve no listener"):
        assign_sockets([_inherited(a, "tls")], addresses)
    assert a.fileno() == -1  # closed: it would otherwise hold the port
    with pytest.raises(ActivationError, match="named 'admin'"):
        assign_sockets([_inherited(b, "admin"), _inherited(c, "admin")], addresses)


def test_log_level_changes_for_loggers_already_used() -> None:
    level = LogLevel("info")
    events: list[str] = []
    structlog.configure(
        processors=[level, _collect(events), _drop],
        wrapper_class=structlog.make_filtering_bound_logger(0),
        cache_logger_on_first_use=True,
    )
    try:
        log = structlog.get_logger("t")
        log.debug("one")
        log.info("two")
        level.set("debug")
        log.debug("three")
        level.set("error")
        log.warning("four")
        log.exception("five")
        assert events == ["two", "three", "five"]
        with pytest.raises(ValueError, match="unknown log level"):
            level.set("loud")
    finally:
        structlog.reset_defaults()


def _collect(events: list[str]) -> Any:
    def collect(_logger: object, _method: str, event: dict[str, Any]) -> dict[str, Any]:
        events.append(event["event"])
        return event

    return collect


def _drop(_logger: object, _method: str, _event: object) -> str:
    raise structlog.DropEvent
