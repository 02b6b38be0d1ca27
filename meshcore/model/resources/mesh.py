"""``Mesh`` (mesh-wide defaults) and ``ServiceDefaults`` (per-service settings)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from meshcore.model.base import Frozen
from meshcore.model.policy import (
    ConnectionLimits,
    EscapedSlashes,
    HashPolicy,
    HealthCheck,
    LbPolicy,
    LocalityPolicy,
    MtlsMode,
    OutlierDetection,
    Protocol,
    RetryBudget,
    RetryPolicy,
)
from meshcore.model.resources.envelope import Metadata, ResourceBase

#: The one name a ``Mesh`` resource may have.
MESH_NAME = "default"


class MeshSpec(Frozen):
    """Mesh-wide defaults; services and routes override them."""

    trust_domain: str = Field(default="mesh.local", pattern=r"^[a-z0-9]([a-z0-9.-]*[a-z0-9])?$")
    mtls: MtlsMode = "permissive"
    default_protocol: Protocol = "http"
    timeout_s: float = Field(default=15.0, gt=0)
    connect_timeout_s: float = Field(default=5.0, gt=0)
    retries: RetryPolicy | None = None
    #: ``%2F`` and ``%5C`` in request paths (see :data:`~meshcore.model.policy.EscapedSlashes`).
    path_with_escaped_slashes: EscapedSlashes = "keep"


class Mesh(ResourceBase):
    """Mesh-wide settings. There is at most one, named ``default``."""

    kind: Literal["Mesh"] = "Mesh"
    spec: MeshSpec = MeshSpec()

    @field_validator("metadata")
    @classmethod
    def _default_only(cls, value: Metadata) -> Metadata:
        # Reported at ``metadata``: a Metadata subclass would say ``metadata.name`` but
        # would reject plain ``Metadata`` instances built by callers.
        if value.name != MESH_NAME:
            raise ValueError(f"a Mesh must be named {MESH_NAME!r}, got {value.name!r}")
        return value


class ServiceDefaultsSpec(Frozen):
    """How callers talk to a service; unset fields take the mesh's defaults."""

    #: None: the mesh's ``default_protocol``.
    protocol: Protocol | None = None
    lb_policy: LbPolicy = "round_robin"
    connect_timeout_s: float | None = Field(default=None, gt=0)
    mtls: MtlsMode | None = None
    limits: ConnectionLimits | None = None
    outlier_detection: OutlierDetection | None = None
    health_check: HealthCheck | None = None
    #: Bounds the retries callers send this service (Linkerd's ``retryBudget``).
    retry_budget: RetryBudget = RetryBudget()
    #: Required by ``ring_hash`` and ``maglev``, refused otherwise.
    hash_policy: HashPolicy | None = None
    #: None: endpoints are chosen regardless of zone.
    locality: LocalityPolicy | None = None
    #: Below this share of healthy endpoints in every tier, all endpoints are used (panic).
    panic_threshold_percent: float = Field(default=50.0, ge=0, le=100)

    @model_validator(mode="after")
    def _hashing(self) -> ServiceDefaultsSpec:
        hashing = self.lb_policy in ("ring_hash", "maglev")
        if hashing and self.hash_policy is None:
            raise ValueError(f"lb_policy {self.lb_policy} needs hash_policy")
        if not hashing and self.hash_policy is not None:
            raise ValueError("hash_policy is only for lb_policy ring_hash or maglev")
        return self


class ServiceDefaults(ResourceBase):
    """Per-service defaults; the resource's name is the service's."""

    kind: Literal["ServiceDefaults"] = "ServiceDefaults"
    spec: ServiceDefaultsSpec = ServiceDefaultsSpec()
