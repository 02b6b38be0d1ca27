from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from meshcore.errors import ConfigError
from meshcore.model.bootstrap import Bootstrap, IdentityConfig
from meshd.identity.service import IdentityService


def bootstrap(**identity: Any) -> Bootstrap:
    return Bootstrap.model_validate(
        {
            "service": "web",
            "namespace": "shop",
            "app": "127.0.0.1:8080",
            "snapshot": {"controld": {"url": "http://127.0.0.1:8502"}},
            "identity": identity,
        }
    )


def test_identity_section_defaults() -> None:
    config = bootstrap(state_dir="state").identity
    assert config == IdentityConfig(state_dir=Path("state"))
    assert config.join_token_file is None and config.controld_url is None
    absent = Bootstrap.model_validate(
        {"service": "web", "app": "127.0.0.1:8080", "snapshot": {"file": "s.yaml"}}
    )
    assert absent.identity is None


def test_identity_section_rejects_bad_values() -> None:
    with pytest.raises(ValidationError, match="controld_url"):
        bootstrap(state_dir="s", controld_url="ftp://x")
    # Renewal is over mutual TLS: plain http is refused, naming the field.
    with pytest.raises(ValidationError, match=r"controld_url\n.*must be https"):
        bootstrap(state_dir="s", controld_url="http://127.0.0.1:8503")
    with pytest.raises(ValidationError, match="state_dir"):
        bootstrap(join_token_file="t")
    with pytest.raises(ValidationError, match="extra"):
        bootstrap(state_dir="s", trust_domain="x")


def test_service_from_bootstrap_resolves_paths_and_url(tmp_path: Path) -> None:
    svc = IdentityService.from_bootstrap(
        bootstrap(
            state_dir="state",
            join_token_file="join.token",
            controld_url="https://127.0.0.1:8503",
            ca_file="ca.pem",
        ),
        tmp_path,
    )
    assert svc.store.state_dir == tmp_path / "state"
    assert svc.join_token_file == tmp_path / "join.token"
    assert svc.ca_file == tmp_path / "ca.pem"
    assert svc.client.control.url == "https://127.0.0.1:8503"
    assert svc.client.control.tls is not None and svc.trust is not None
    assert (svc.service, svc.namespace) == ("web", "shop")
    assert svc.current is None and svc.generation == 0

    explicit = IdentityService.from_bootstrap(
        bootstrap(state_dir="/abs/state", controld_url="https://127.0.0.1:9000"), tmp_path
    )
    assert explicit.store.state_dir == Path("/abs/state")
    assert explicit.join_token_file is None and explicit.ca_file is None
    assert explicit.client.control.url == "https://127.0.0.1:9000"


def test_enrolling_needs_a_controld_url(tmp_path: Path) -> None:
    config = Bootstrap.model_validate(
        {
            "service": "web",
            "app": "127.0.0.1:8080",
            "snapshot": {"file": "s.yaml"},
            "identity": {"state_dir": "s"},
        }
    )
    with pytest.raises(ConfigError, match=r"identity\.controld_url"):
        IdentityService.from_bootstrap(config, tmp_path)
