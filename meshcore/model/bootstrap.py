"""A sidecar's bootstrap file: who it is, where its app is, where its snapshots come from."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, model_validator

from meshcore.model.base import Frozen, SocketAddr


class SnapshotSource(Frozen):
    """Where the sidecar's snapshots come from (a static file until the control plane exists)."""

    file: Path | None = None

    @model_validator(mode="after")
    def _one(self) -> SnapshotSource:
        if self.file is None:
            raise ValueError("set file")
        return self


class AccessLogConfig(Frozen):
    """JSON access log lines through structlog."""

    enabled: bool = False
    #: Fraction of requests logged (errors are always logged when enabled).
    sample_rate: float = Field(default=1.0, ge=0.0, le=1.0)


class Bootstrap(Frozen):
    """What a sidecar reads on start and on SIGHUP."""

    service: str = Field(min_length=1, pattern=r"^[a-z0-9]([a-z0-9.-]*[a-z0-9])?$")
    namespace: str = Field(default="default", min_length=1)
    #: Proxy id; defaults to ``<service>-sidecar``.
    node: str | None = None
    app: SocketAddr
    admin: SocketAddr = SocketAddr(host="127.0.0.1", port=15000)
    snapshot: SnapshotSource
    access_log: AccessLogConfig = AccessLogConfig()
    #: On SIGTERM, in-flight requests get this long to finish.
    drain_timeout_s: float = Field(default=30.0, ge=0)
    #: Worker processes sharing the listeners through SO_REUSEPORT.
    workers: int = Field(default=1, ge=1, le=64)
    #: Fraction of new traces marked sampled in the ``traceparent`` the sidecar starts.
    trace_sample_rate: float = Field(default=0.01, ge=0.0, le=1.0)

    @property
    def node_id(self) -> str:
        """The proxy id this sidecar reports."""
        return self.node or f"{self.service}-sidecar"
