"""A sidecar's bootstrap file: who it is, where its app is, where its snapshots come from."""

from __future__ import annotations

from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

from pydantic import Field, SecretStr, field_validator, model_validator

from meshcore.model.base import Frozen, SocketAddr
from meshcore.model.proxy import ProxyDescriptor, Upstream


def _check_http_url(value: str) -> str:
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"expected http(s)://host[:port], got {value!r}")
    if parts.path not in ("", "/") or parts.query or parts.username:
        raise ValueError(f"expected http(s)://host[:port] without path or user, got {value!r}")
    try:
        parts.port  # noqa: B018 -- raises ValueError on a bad port
    except ValueError as exc:
        raise ValueError(f"bad port in {value!r}") from exc
    return value


class ControlSource(Frozen):
    """Snapshots pushed by controld: register the descriptor, long-poll, ACK/NACK."""

    #: controld's API, ``http(s)://host:port``.
    url: str
    #: Sidecar token (``sidecar.<service>.<hmac>``), or read from ``token_file``.
    token: SecretStr | None = None
    #: File holding the token; relative paths are relative to the bootstrap file.
    token_file: Path | None = None
    #: How long controld may hold a poll open when nothing changed.
    wait_s: float = Field(default=30.0, ge=1, le=300)
    #: The last applied snapshot is kept here (0600) and served at start if controld is down.
    cache_file: Path | None = None
    #: Bound of one request beyond the poll's ``wait_s`` (connect plus answer).
    timeout_s: float = Field(default=10.0, gt=0, le=300)
    #: Longest pause between reconnection attempts (jittered exponential backoff).
    retry_max_s: float = Field(default=10.0, gt=0, le=3600)

    _url = field_validator("url")(_check_http_url)

    @model_validator(mode="after")
    def _one_token(self) -> ControlSource:
        if self.token is not None and self.token_file is not None:
            raise ValueError("set token or token_file, not both")
        return self


class SnapshotSource(Frozen):
    """Where the sidecar's snapshots come from: exactly one of a ``file`` or ``controld``."""

    file: Path | None = None
    controld: ControlSource | None = None

    @model_validator(mode="after")
    def _one(self) -> SnapshotSource:
        if (self.file is None) == (self.controld is None):
            raise ValueError("set file or controld (exactly one of them)")
        return self


class AccessLogConfig(Frozen):
    """JSON access log lines through structlog."""

    enabled: bool = False
    #: Fraction of requests logged (errors are always logged when enabled).
    sample_rate: float = Field(default=1.0, ge=0.0, le=1.0)


class TracingConfig(Frozen):
    """Span export over OTLP/HTTP (JSON) to a collector (Jaeger, the OpenTelemetry collector)."""

    #: The collector's OTLP/HTTP base URL; spans go to ``<url>/v1/traces`` (plain http).
    otlp_endpoint: str
    #: How often queued spans are sent.
    export_interval_s: float = Field(default=1.0, ge=0.05, le=60.0)
    #: Most spans per export request.
    max_batch: int = Field(default=512, ge=1, le=10_000)
    #: Most spans waiting for export; more are dropped (``meshd_trace_spans_total{result=
    #: "dropped"}``).
    max_queue: int = Field(default=2048, ge=1, le=100_000)
    #: Time limit of one export request (connect included).
    timeout_s: float = Field(default=2.0, gt=0.0, le=60.0)

    @field_validator("otlp_endpoint")
    @classmethod
    def _plain_http(cls, value: str) -> str:
        if urlsplit(value).scheme != "http":
            raise ValueError(f"must be an http:// URL (no TLS to the collector yet), got {value!r}")
        return _check_http_url(value)


class TelemetryConfig(Frozen):
    """Telemetry reports to controld (``snapshot.controld`` only)."""

    enabled: bool = True
    #: Seconds between two reports.
    interval_s: float = Field(default=1.0, ge=0.1, le=60.0)


class AppCheck(Frozen):
    """How the sidecar probes its local app to drive the app's registry health check."""

    #: ``tcp``: the app accepts a connection; ``http``: ``GET path`` answers 2xx (429: warning).
    kind: Literal["tcp", "http"] = "tcp"
    path: str = Field(default="/", pattern=r"^/[^\s]*$")
    interval_s: float = Field(default=5.0, gt=0, le=3600)
    timeout_s: float = Field(default=2.0, gt=0, le=3600)
    #: TTL of the registry checks the sidecar keeps alive; default three probe intervals.
    ttl_s: float | None = Field(default=None, gt=0)
    #: Let the registry drop an instance whose check stayed critical this long.
    deregister_critical_after_s: float | None = Field(default=None, gt=0)

    @model_validator(mode="after")
    def _ttl(self) -> AppCheck:
        if self.ttl_s is not None and self.ttl_s < 2 * self.interval_s:
            raise ValueError("ttl_s must be at least twice interval_s")
        return self

    @property
    def ttl(self) -> float:
        """The TTL in force (``ttl_s`` or three intervals)."""
        return self.ttl_s if self.ttl_s is not None else 3 * self.interval_s


class RegistryConfig(Frozen):
    """Self-registration in a Consul-compatible registry (read on start, not on reload)."""

    address: str = "http://127.0.0.1:8500"
    #: Registry ACL token (e.g. one with a service identity: ``meshctl token registry``).
    token: SecretStr | None = None
    #: File holding that token; relative paths are relative to the bootstrap file.
    token_file: Path | None = None
    datacenter: str | None = None
    #: Instance ID of the local service; default ``<service>-<node>`` (unique per instance).
    service_id: str | None = Field(default=None, min_length=1)
    tags: tuple[str, ...] = ()
    meta: dict[str, str] = Field(default_factory=dict)
    #: Address other hosts reach this instance at; default the inbound listener's host.
    advertise_address: str | None = Field(default=None, min_length=1)
    #: Inbound listener registered as the sidecar proxy; default the first inbound one.
    inbound_listener: str | None = None
    check: AppCheck = AppCheck()
    #: Bound of one registry request (connect plus answer).
    timeout_s: float = Field(default=5.0, gt=0, le=300)

    _address = field_validator("address")(_check_http_url)

    @model_validator(mode="after")
    def _one_token(self) -> RegistryConfig:
        if self.token is not None and self.token_file is not None:
            raise ValueError("set token or token_file, not both")
        return self


class StaticIdentityFiles(Frozen):
    """Certificate material read from files instead of enrolling (an operator's own PKI).

    Paths are relative to the bootstrap file; SIGHUP reads them again.
    """

    #: PEM leaf certificate (with one SPIFFE URI SAN), then any intermediates.
    cert_file: Path
    #: PEM private key of the leaf.
    key_file: Path
    #: PEM roots peers are verified with.
    bundle_file: Path


class IdentityConfig(Frozen):
    """The sidecar's workload identity: a key made here, a leaf certificate from controld."""

    #: Key, leaf and trust bundle live here (0700); relative to the bootstrap file.
    state_dir: Path
    #: File holding a single-use join token for the first enrollment (deleted once used).
    join_token_file: Path | None = None
    #: controld's TLS listener (``https://host:8503``) for enrollment and renewal (mutual
    #: TLS); required to enroll.
    controld_url: str | None = None
    #: PEM roots to verify controld's certificate with on first contact, instead of the pins
    #: in the join token; relative to the bootstrap file.
    ca_file: Path | None = None
    #: Load the identity from these files instead of enrolling with controld.
    static: StaticIdentityFiles | None = None
    #: When the root that signs new leaves is not the current leaf's issuer (a root
    #: rotation), renew after a random delay up to this (instead of at 50-70 % of the life).
    rotation_renew_jitter_s: float = Field(default=10.0, ge=0.0, le=3600.0)
    #: Longest wait of one trust bundle long-poll to controld.
    bundle_wait_s: float = Field(default=300.0, ge=1.0, le=300.0)

    @field_validator("controld_url")
    @classmethod
    def _url(cls, value: str | None) -> str | None:
        if value is None:
            return None
        if urlsplit(value).scheme != "https":
            raise ValueError(f"must be https (renewal uses mutual TLS), got {value!r}")
        return _check_http_url(value)


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
    #: On SIGTERM, first deregister and answer 503 on ``/ready`` but keep serving for this
    #: long, so callers learn the new endpoint list before the listeners close.
    drain_delay_s: float = Field(default=5.0, ge=0, le=3600)
    #: This host's zone: registered as service meta ``zone`` and preferred by locality-aware
    #: load balancing.
    zone: str | None = Field(default=None, pattern=r"^[A-Za-z0-9]([A-Za-z0-9_.-]{0,62})$")
    #: Worker processes sharing the listeners through SO_REUSEPORT.
    workers: int = Field(default=1, ge=1, le=64)
    #: Fraction of new traces marked sampled in the ``traceparent`` the sidecar starts.
    trace_sample_rate: float = Field(default=0.01, ge=0.0, le=1.0)
    #: Export spans of sampled traces (absent: no span is recorded).
    tracing: TracingConfig | None = None
    #: Telemetry reports to controld (with ``snapshot.controld``).
    telemetry: TelemetryConfig = TelemetryConfig()
    #: Register the service and this sidecar in a registry (absent: no registration).
    registry: RegistryConfig | None = None
    #: controld mode: the inbound listener's address (absent: no inbound listener).
    inbound: SocketAddr | None = None
    #: controld mode: one local outbound listener per upstream service.
    upstreams: tuple[Upstream, ...] = ()
    #: Enroll with controld and keep a workload certificate (absent: no identity).
    identity: IdentityConfig | None = None

    @model_validator(mode="after")
    def _source_fields(self) -> Bootstrap:
        # A snapshot file defines its listeners itself; silently ignoring these would mislead.
        if self.snapshot.file is not None and (self.inbound is not None or self.upstreams):
            raise ValueError(
                "inbound and upstreams are only used with snapshot.controld "
                "(a snapshot file defines its listeners itself)"
            )
        return self

    @property
    def node_id(self) -> str:
        """The proxy id this sidecar reports."""
        return self.node or f"{self.service}-sidecar"

    def descriptor(self, meshd_version: str = "") -> ProxyDescriptor:
        """What this sidecar tells controld about itself (``proxy_id`` is :attr:`node_id`)."""
        return ProxyDescriptor(
            proxy_id=self.node_id,
            service=self.service,
            namespace=self.namespace,
            inbound=self.inbound,
            upstreams=self.upstreams,
            meshd_version=meshd_version,
        )
