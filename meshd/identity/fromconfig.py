"""The identity service's parts as a bootstrap file's ``identity:`` section describes them."""

from __future__ import annotations

from pathlib import Path

from meshcore.errors import ConfigError
from meshcore.model.bootstrap import Bootstrap
from meshd.control.client import ControlClient
from meshd.identity.client import IdentityClient
from meshd.identity.files import IdentityStore
from meshd.identity.service import IdentityService
from meshd.identity.trust import FIELD, ControldTrust

__all__ = ["identity_service"]


def identity_service(bootstrap: Bootstrap, base_dir: Path) -> IdentityService:
    """The service for ``bootstrap.identity``; relative paths are relative to ``base_dir``."""
    config = bootstrap.identity
    if config is None:
        raise ConfigError("identity: not configured")
    if config.controld_url is None:
        raise ConfigError(f"{FIELD}: required to enroll (controld's TLS listener, https://)")
    token_file, ca_file = config.join_token_file, config.ca_file
    trust = ControldTrust()
    control = ControlClient(
        config.controld_url,
        user_agent="meshd-identity",
        tls=trust.context,
        peer_id=trust.peer_id,
        field=FIELD,
    )
    return IdentityService(
        IdentityStore(base_dir / config.state_dir),
        IdentityClient(control),
        trust=trust,
        ca_file=None if ca_file is None else base_dir / ca_file,
        service=bootstrap.service,
        namespace=bootstrap.namespace,
        join_token_file=None if token_file is None else base_dir / token_file,
        rotation_renew_jitter_s=config.rotation_renew_jitter_s,
        bundle_wait_s=config.bundle_wait_s,
        instance=bootstrap.node_id,
    )
