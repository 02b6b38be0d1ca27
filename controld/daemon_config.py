"""The ``controld`` daemon's settings and the ports it reports once bound.

Apart from :mod:`controld.daemon` so the command line can build and check a configuration
without importing the daemon's services.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from controld.api.gate import DEFAULT_MAX_BODY_BYTES
from controld.registry import RegistryConfig
from controld.registry.serverlimits import ServerLimits

__all__ = ["DaemonConfig", "DaemonPorts"]


@dataclass(frozen=True)
class DaemonConfig:
    """Settings of the daemon: exactly one of ``registry`` (embedded) or ``registry_url``."""

    #: The embedded registry's settings; ``None`` in external mode.
    registry: RegistryConfig | None = None
    #: The external registry (``http(s)://host:port``); ``None`` in embedded mode.
    registry_url: str | None = None
    #: ACL token for the external registry (the embedded one uses its management token).
    registry_token: str | None = None
    admin_host: str = "127.0.0.1"
    admin_port: int = 8501
    #: Where the sidecars register and long-poll (same API, lean server); ``None``: no
    #: separate listener (sidecars then use the admin address).
    push_host: str = "127.0.0.1"
    push_port: int | None = 8502
    #: The TLS listener (same API; certificate from controld's CA; renewals over mutual
    #: TLS); ``None``: none.
    tls_host: str = "127.0.0.1"
    tls_port: int | None = 8503
    #: Extra DNS names or IP addresses in the TLS listener's certificate.
    tls_sans: tuple[str, ...] = ()
    #: Longest a blocking query of the watcher stays parked.
    watch_wait_s: float = 60.0
    #: Cap of the watcher's jittered reconnect backoff.
    retry_max_s: float = 10.0
    #: controld's own state (the admin token file); embedded mode defaults to the
    #: registry's data dir.
    data_dir: Path | None = None
    #: The admin token file (created with a random token if missing); default
    #: ``<data dir>/admin-token``.
    admin_token_file: Path | None = None
    #: Where the policy resources live in the registry KV.
    kv_prefix: str = "meshd/"
    #: A root (ECDSA CA certificate and key, PEM files) the CA starts with instead of
    #: generating one; used on first start only (ignored once ``<state dir>/ca`` exists).
    ca_import_cert: Path | None = None
    ca_import_key: Path | None = None
    #: ACLs on the embedded registry (default deny; controld holds the management token,
    #: generated into :attr:`registry_token_path` at first start unless one is configured).
    #: False is the unsafe opt-out: anyone reaching the registry may write anything.
    registry_acl: bool = True
    #: Connection and request-head limits of the push and TLS listeners.
    listener_limits: ServerLimits = field(default_factory=ServerLimits)
    #: Largest request body the API accepts (checked before it is read).
    api_max_body_bytes: int = DEFAULT_MAX_BODY_BYTES

    def __post_init__(self) -> None:
        if (self.registry is None) == (self.registry_url is None):
            raise ValueError("give either an embedded registry config or a registry URL")
        if (self.ca_import_cert is None) != (self.ca_import_key is None):
            raise ValueError("give both the CA certificate and key to import, or neither")
        if not self.kv_prefix or not self.kv_prefix.endswith("/"):
            raise ValueError(f"the KV prefix must end with '/', got {self.kv_prefix!r}")
        if self.api_max_body_bytes < 1:
            raise ValueError("the API's body limit must be at least 1 byte")

    @property
    def state_dir(self) -> Path:
        """controld's own state: the data dir, else the embedded registry's, else the user's
        state directory (``$XDG_STATE_HOME/controld``, default ``~/.local/state/controld``)."""
        data_dir = self.data_dir
        if data_dir is None and self.registry is not None:
            data_dir = self.registry.data_dir
        if data_dir is None:
            state = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
            data_dir = Path(state) / "controld"
        return data_dir

    @property
    def token_path(self) -> Path:
        """The admin token file: explicit, else ``<state dir>/admin-token``."""
        if self.admin_token_file is not None:
            return self.admin_token_file
        return self.state_dir / "admin-token"

    @property
    def registry_token_path(self) -> Path:
        """The embedded registry's generated management token: ``<state dir>/registry-token``."""
        return self.state_dir / "registry-token"

    @property
    def ca_dir(self) -> Path:
        """The certificate authority's directory: ``<state dir>/ca``."""
        return self.state_dir / "ca"


@dataclass(frozen=True)
class DaemonPorts:
    """What the daemon bound, reported through ``run``'s ``task_status``."""

    registry_url: str
    #: The embedded registry's port; ``None`` in external mode.
    registry_port: int | None
    admin_port: int
    #: The sidecars' push listener; ``None`` when disabled.
    push_port: int | None = None
    #: The TLS listener; ``None`` when disabled.
    tls_port: int | None = None
