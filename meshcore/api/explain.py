"""Wire models of controld's explain route (``meshctl explain``).

Path (admin listener, admin token):

* ``POST /v1/explain`` (:class:`ExplainRequest`) -> :class:`ExplainAnswer`: the route, its
  backends and clusters, the access decision, the rate limits, and ``sidecars`` (what each
  sidecar of the path enforces)

controld's compiler builds an :class:`Explanation` (everything but ``sidecars``) from the
compiled snapshots; the API adds the ``sidecars`` it knows from the push hub. The fields are
sent in the order they are declared here.

``settings``, ``redirect`` and ``route_policy`` carry parts of the snapshot models
(:mod:`meshcore.model.snapshot`) as the snapshot dumps them; they stay JSON objects here, so a
newer controld whose snapshot models grew a field doesn't break an older client (those models
refuse unknown fields), and clients show them as they come.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, JsonValue, field_validator

from meshcore.api.base import Answer, Request
from meshcore.model.policy import SERVICE_PATTERN
from meshcore.pathnorm import MalformedPath, normalize_target

__all__ = [
    "EXPLAIN_PATH",
    "EndpointMix",
    "ExcludedEndpoint",
    "ExplainAccess",
    "ExplainAnswer",
    "ExplainBackend",
    "ExplainCluster",
    "ExplainEndpoint",
    "ExplainMirror",
    "ExplainRequest",
    "Explanation",
    "FeatureUse",
    "JsonValues",
    "SidecarEnforcement",
]

EXPLAIN_PATH = "/v1/explain"

#: A JSON object carried as it is (parts of a snapshot model, see the module's docstring).
JsonValues = dict[str, JsonValue]


class ExplainRequest(Request):
    """Body of ``POST /v1/explain``: one request from ``source`` to ``destination``."""

    source: str = Field(min_length=1)
    destination: str = Field(pattern=SERVICE_PATTERN)
    method: str = Field(default="GET", min_length=1)
    path: str = Field(default="/", pattern=r"^/")
    headers: dict[str, str] = Field(default_factory=dict)

    @field_validator("path")
    @classmethod
    def _well_formed(cls, value: str) -> str:
        # A path the sidecar would refuse (400) has no route to explain.
        try:
            normalize_target(value.encode("utf-8", "surrogateescape"))
        except MalformedPath as exc:
            raise ValueError(f"{exc} (the sidecar answers 400 bad_request)") from exc
        return value


class ExplainBackend(Answer):
    """A backend of the matched route: its cluster and share of the traffic."""

    cluster: str
    weight: int
    #: Share of the route's traffic, 0-100 (3 decimals).
    percent: float


class ExplainMirror(Answer):
    """The matched route's mirror: ``percent`` of its requests are copied to ``cluster``."""

    cluster: str
    percent: float = 100.0


class ExplainEndpoint(Answer):
    """One endpoint of a cluster (priority 0: primary, 1..: failover tiers)."""

    host: str
    port: int
    priority: int = 0
    tags: tuple[str, ...] = ()
    #: How the source's sidecar reaches it.
    tls: Literal["mtls", "plaintext"] = "plaintext"
    #: The instance's zone (registry meta), for locality.
    zone: str | None = None


class ExcludedEndpoint(Answer):
    """An endpoint left out of a cluster (a plain one under STRICT mTLS) and why."""

    host: str
    port: int
    #: The service it belongs to (a failover tier's may differ from the cluster's).
    service: str
    reason: str


class EndpointMix(Answer):
    """A cluster's (or service's) sidecar and plain endpoints, how many of them are reached
    over mTLS and plaintext, and the excluded ones."""

    sidecar: int = 0
    plain: int = 0
    mtls: int = 0
    plaintext: int = 0
    excluded: tuple[ExcludedEndpoint, ...] = ()


class ExplainCluster(Answer):
    """A cluster the request may go to (a backend's or the mirror's)."""

    name: str
    service: str
    subset: str | None = None
    lb_policy: str = "round_robin"
    endpoints: tuple[ExplainEndpoint, ...] = ()
    mix: EndpointMix = Field(default_factory=EndpointMix)
    #: The cluster's resilience and balancing settings as the snapshot carries them: always
    #: ``lb_policy``, ``connect_timeout_s``, ``panic_threshold_percent`` and
    #: ``retry_budget``; ``hash_policy``, ``locality``, ``limits``, ``outlier_detection`` and
    #: ``health_check`` when set. Free-form: each is the snapshot model's dump.
    settings: JsonValues = Field(default_factory=dict)


class ExplainAccess(Answer):
    """The destination's access-policy decision."""

    action: str
    #: The deciding rule of the destination's inbound policy (None: the default decided).
    rule_index: int | None = None
    #: The AccessPolicy the deciding rule belongs to (None: the default decided).
    policy: str | None = None
    reason: str = ""


class FeatureUse(Answer):
    """A snapshot feature and the first field of the snapshot using it."""

    feature: str
    path: str


class SidecarEnforcement(Answer):
    """What one sidecar of the explained request's path enforces."""

    proxy_id: str
    service: str
    #: ``source``: it sends the request; ``destination``: it enforces access and rate limits.
    role: Literal["source", "destination"]
    connected: bool = False
    acked_version: int | None = None
    latest_version: int | None = None
    #: How many features it declares (None: none, an older meshd: unknown).
    features: int | None = None
    #: Features of this request's path in the snapshot it ACKed.
    enforces: tuple[FeatureUse, ...] = ()
    #: Features of this request's path in its latest snapshot that it doesn't declare.
    not_enforced: tuple[FeatureUse, ...] = ()


class Explanation(Answer):
    """What the mesh would do with one request (what controld's compiler works out)."""

    source: str
    #: The source's SPIFFE ID.
    source_id: str | None = None
    destination: str
    method: str
    path: str
    #: ``http`` or ``tcp``: the destination's protocol.
    protocol: str
    #: The source sidecar's listener for the destination.
    listener: str
    #: The matched route's name (None: TCP, or no route matched).
    route: str | None = None
    timeout_s: float | None = None
    backends: tuple[ExplainBackend, ...] = ()
    #: The matched route's redirect (the snapshot's form), when it answers with one.
    redirect: JsonValues | None = None
    mirror: ExplainMirror | None = None
    #: The clusters of the backends, then the mirror's (each once).
    clusters: tuple[ExplainCluster, ...] = ()
    access: ExplainAccess
    #: The destination's mTLS mode.
    mtls: str
    #: Names of the destination's rate limits that count this request.
    rate_limits: tuple[str, ...] = ()
    #: The matched route's retries, fault, header changes and rewrite, as the source's
    #: sidecar applies them (only those set; the snapshot's form).
    route_policy: JsonValues = Field(default_factory=dict)
    notes: tuple[str, ...] = ()


class ExplainAnswer(Explanation):
    """Answer of ``POST /v1/explain``: the :class:`Explanation` and ``sidecars``."""

    #: Each registered sidecar of the source service (and of the destination).
    sidecars: tuple[SidecarEnforcement, ...] = ()
