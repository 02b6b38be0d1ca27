"""Bootstrap controld fields, their resolution, the snapshot cache, failover tiers and
redirects."""

from __future__ import annotations

import json
import stat
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from meshcore.errors import ConfigError
from meshcore.model import Bootstrap, Snapshot
from meshcore.model.hashing import snapshot_hash
from meshcore.model.policy import Redirect
from meshd.control.cache import load_cache, write_cache
from meshd.control.settings import control_settings
from meshd.http.responses import location_response, redirect_location


def boot(**fields: Any) -> dict[str, Any]:
    return {
        "service": "web",
        "app": "127.0.0.1:8080",
        "snapshot": {"controld": {"url": "http://127.0.0.1:8501"}},
        **fields,
    }


def test_controld_source_defaults() -> None:
    b = Bootstrap.model_validate(boot())
    cfg = b.snapshot.controld
    assert cfg is not None and b.snapshot.file is None
    assert (cfg.wait_s, cfg.timeout_s, cfg.retry_max_s) == (30, 10, 10)
    assert cfg.token is None and cfg.token_file is None and cfg.cache_file is None
    assert b.inbound is None and b.upstreams == ()


@pytest.mark.parametrize(
    ("snapshot", "message"),
    [
        ({}, "set file or controld"),
        ({"file": "s.yaml", "controld": {"url": "http://h:1"}}, "exactly one"),
        ({"controld": {"url": "127.0.0.1:8501"}}, "expected http(s)://host"),
        ({"controld": {"url": "http://h:1/path"}}, "without path"),
        ({"controld": {"url": "http://h:1", "wait_s": 0.5}}, "greater than or equal to 1"),
        ({"controld": {"url": "http://h:1", "wait_s": 301}}, "less than or equal to 300"),
        ({"controld": {"url": "http://h:1", "token": "a", "token_file": "t"}}, "not both"),
        ({"controld": {"url": "http://h:1", "tokn": "a"}}, "Extra inputs"),
    ],
)
def test_bad_sources(snapshot: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message.replace("(", r"\(").replace(")", r"\)")):
        Bootstrap.model_validate(boot(snapshot=snapshot))


def test_file_mode_rejects_inbound_and_upstreams() -> None:
    with pytest.raises(ValidationError, match=r"only used with snapshot\.controld"):
        Bootstrap.model_validate(
            boot(snapshot={"file": "s.yaml"}, upstreams=[{"service": "api", "port": 15001}])
        )


def test_descriptor() -> None:
    b = Bootstrap.model_validate(
        boot(
            node="web-1",
            namespace="prod",
            inbound="127.0.0.1:15006",
            upstreams=[{"service": "api", "port": 15001}, {"service": "db", "port": 15002}],
        )
    )
    d = b.descriptor("1.2.3")
    assert d.proxy_id == "web-1" and d.service == "web" and d.namespace == "prod"
    assert str(d.inbound) == "127.0.0.1:15006"
    assert [(u.service, u.port, u.host) for u in d.upstreams] == [
        ("api", 15001, "127.0.0.1"),
        ("db", 15002, "127.0.0.1"),
    ]
    assert d.meshd_version == "1.2.3"
    assert Bootstrap.model_validate(boot()).descriptor().proxy_id == "web-sidecar"


def test_settings_read_the_token_file_relative_to_the_bootstrap(tmp_path: Path) -> None:
    (tmp_path / "web.token").write_text("sidecar.web.abc\n")
    b = Bootstrap.model_validate(
        boot(
            snapshot={
                "controld": {
                    "url": "http://127.0.0.1:8501",
                    "token_file": "web.token",
                    "cache_file": "cache/web.json",
                }
            }
        )
    )
    settings = control_settings(b, tmp_path / "bootstrap.yaml")
    assert settings.token == "sidecar.web.abc"
    assert settings.cache_file == tmp_path / "cache/web.json"


def test_settings_token_inline() -> None:
    b = Bootstrap.model_validate(
        boot(snapshot={"controld": {"url": "http://127.0.0.1:8501", "token": "t0k"}})
    )
    assert control_settings(b, Path("/etc/meshd/b.yaml")).token == "t0k"


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"snapshot": {"controld": {"url": "https://h:1"}}}, "https needs an enrolled identity"),
        ({"snapshot": {"controld": {"url": "http://h:1", "token_file": "nope"}}}, "nope"),
        (
            {"upstreams": [{"service": "a", "port": 1}, {"service": "b", "port": 1}]},
            "duplicate upstream ports",
        ),
    ],
)
def test_settings_errors(tmp_path: Path, fields: dict[str, Any], message: str) -> None:
    b = Bootstrap.model_validate(boot(**fields))
    with pytest.raises(ConfigError, match=message):
        control_settings(b, tmp_path / "b.yaml")


def test_settings_allow_workers() -> None:
    # One control session in the primary; the workers follow it over their channels.
    b = Bootstrap.model_validate(
        boot(workers=2, snapshot={"controld": {"url": "http://127.0.0.1:8501", "token": "t"}})
    )
    assert control_settings(b, Path("/etc/meshd/b.yaml")).token == "t"


def test_empty_token_file(tmp_path: Path) -> None:
    (tmp_path / "t").write_text("\n")
    b = Bootstrap.model_validate(
        boot(snapshot={"controld": {"url": "http://h:1", "token_file": str(tmp_path / "t")}})
    )
    with pytest.raises(ConfigError, match="empty"):
        control_settings(b, tmp_path / "b.yaml")


SNAP: dict[str, Any] = {
    "version": 0,
    "listeners": [
        {"name": "api", "direction": "outbound", "address": "127.0.0.1:15001", "cluster": "api"}
    ],
    "clusters": [
        {"name": "api", "service": "api", "endpoints": [{"host": "10.0.0.1", "port": 80}]}
    ],
}


def test_cache_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "cache.json"
    write_cache(path, 7, "abc", SNAP)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    cached = load_cache(path)
    assert (cached.version, cached.hash, cached.snapshot.version) == (7, "abc", 7)
    write_cache(path, 8, "def", SNAP)  # replaced atomically
    assert load_cache(path).version == 8
    assert [p.name for p in tmp_path.iterdir()] == ["cache.json"]


def test_cache_without_hash_gets_one(tmp_path: Path) -> None:
    path = tmp_path / "cache.json"
    path.write_text(json.dumps({"version": 2, "snapshot": SNAP}))
    cached = load_cache(path)
    assert cached.hash == snapshot_hash(Snapshot.model_validate(SNAP))


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("not json", "not JSON"),
        ('{"snapshot": {}}', "expected"),
        ('{"version": 1, "snapshot": {"listeners": 3}}', "listeners"),
    ],
)
def test_bad_cache(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "cache.json"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message):
        load_cache(path)
    with pytest.raises(ConfigError, match="cannot read"):
        load_cache(tmp_path / "missing.json")


@pytest.mark.parametrize(
    ("redirect", "host", "target", "location"),
    [
        ({"path": "/new"}, b"web:8080", b"/old?a=1", b"http://web:8080/new?a=1"),
        ({}, b"web", b"/p", b"http://web/p"),
        ({"scheme": "https"}, b"web:8080", b"/p", b"https://web/p"),
        ({"host": "other"}, b"web:8080", b"/p", b"http://other/p"),
        ({"host": "other", "port": 9000}, b"web:8080", b"/p", b"http://other:9000/p"),
        ({"port": 9000}, b"[::1]:8080", b"/p", b"http://[::1]:9000/p"),
        ({"path": "/n"}, b"web", b"http://web/old?q", b"http://web/n?q"),
    ],
)
def test_redirect_location(
    redirect: dict[str, Any], host: bytes, target: bytes, location: bytes
) -> None:
    assert redirect_location(Redirect.model_validate(redirect), host, target) == location


def test_redirect_response() -> None:
    location = redirect_location(Redirect(status=301, path="/x"), b"h", b"/")
    answer = location_response(301, location, close=True, request_id=b"r1")
    assert answer == (
        b"HTTP/1.1 301 Moved Permanently\r\nlocation: http://h/x\r\ncontent-length: 0\r\n"
        b"x-request-id: r1\r\nconnection: close\r\n\r\n"
    )


def test_meshd_validate_controld_mode(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from meshd.cli import main

    (tmp_path / "t").write_text("tok\n")
    doc = boot(
        upstreams=[{"service": "api", "port": 15001}],
        snapshot={
            "controld": {"url": "http://127.0.0.1:8501", "token_file": "t", "cache_file": "c.json"}
        },
    )
    path = tmp_path / "b.yaml"
    path.write_text(json.dumps(doc))
    assert main(["validate", "-c", str(path)]) == 0
    out = capsys.readouterr().out
    assert "snapshots from controld http://127.0.0.1:8501" in out
    assert "1 upstreams" in out
    write_cache(tmp_path / "c.json", 5, "h", SNAP)
    assert main(["validate", "-c", str(path)]) == 0
    assert "cached snapshot version 5" in capsys.readouterr().out
    (tmp_path / "c.json").write_text("{}")
    assert main(["validate", "-c", str(path)]) == 1
    assert "c.json" in capsys.readouterr().err
    (tmp_path / "t").unlink()
    assert main(["validate", "-c", str(path)]) == 1
    assert "token_file" in capsys.readouterr().err
