"""What a sidecar tells the control plane about itself: the input of snapshot compilation."""

from __future__ import annotations

from pydantic import Field, model_validator

from meshcore.model.base import Frozen, SocketAddr
from meshcore.model.match import duplicates
from meshcore.model.policy import SERVICE_PATTERN


class Upstream(Frozen):
    """A service the local app calls through a local outbound listener at ``host:port``."""

    service: str = Field(pattern=SERVICE_PATTERN)
    port: int = Field(ge=1, le=65535)
    host: str = Field(default="127.0.0.1", min_length=1)


class ProxyDescriptor(Frozen):
    """A sidecar's identity and the listeners it wants (registered with controld)."""

    proxy_id: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}$")
    service: str = Field(pattern=SERVICE_PATTERN)
    namespace: str = Field(default="default", min_length=1)
    #: The inbound listener's address; None: the sidecar accepts no inbound traffic.
    inbound: SocketAddr | None = None
    upstreams: tuple[Upstream, ...] = ()
    meshd_version: str = ""

    @model_validator(mode="after")
    def _unique(self) -> ProxyDescriptor:
        dup = duplicates([u.service for u in self.upstreams])
        if dup:
            raise ValueError(f"duplicate upstream services: {', '.join(dup)}")
        dup = duplicates([str(u.port) for u in self.upstreams])
        if dup:
            raise ValueError(f"duplicate upstream ports: {', '.join(dup)}")
        if self.inbound is not None and f"{self.inbound.host}:{self.inbound.port}" in {
            f"{u.host}:{u.port}" for u in self.upstreams
        }:
            raise ValueError(f"inbound address {self.inbound} is also an upstream's")
        return self
