"""Wire models of controld's status, schema and explain routes (``meshctl status``,
``schema``, ``explain``).

Paths (admin listener):

* ``GET /v1/status`` (admin token) -> :class:`StatusAnswer`: ``registry`` (mode, address,
  connected, ...), ``discovery``, ``push``, ``telemetry``, ``store`` and ``endpoint_mix``
* ``GET /v1/schema`` (any token) -> ``{kind: JSON Schema}``
* ``POST /v1/explain`` (:class:`ExplainRequest`, admin token) -> a JSON object: route,
  backends, clusters, access, rate limits, and ``sidecars`` (what each sidecar of the path
  enforces)

The status models name the fields clients read and keep every other one they are sent
(``extra="allow"``: the sections mirror the daemon's state and grow with it), so a client
prints back the whole answer. The answers of explain and schema are JSON objects this module
doesn't model field by field (they mirror the compiler's output); clients check that they are
objects (:data:`~meshcore.api.base.JSON_OBJECT`) and read them leniently.
"""

from __future__ import annotations

from pydantic import ConfigDict, Field, field_validator

from meshcore.api.base import Answer, JsonObject, Request
from meshcore.model.policy import SERVICE_PATTERN
from meshcore.pathnorm import MalformedPath, normalize_target

__all__ = [
    "EXPLAIN_PATH",
    "SCHEMA_PATH",
    "STATUS_PATH",
    "ExplainRequest",
    "RegistryState",
    "StatusAnswer",
    "StoreState",
]

STATUS_PATH = "/v1/status"
SCHEMA_PATH = "/v1/schema"
EXPLAIN_PATH = "/v1/explain"


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


class _Open(Answer):
    """A status section: the fields clients read, plus any other kept as sent."""

    model_config = ConfigDict(frozen=True, extra="allow")


class RegistryState(_Open):
    """``registry`` of ``/v1/status``: controld's link to the registry."""

    #: ``embedded`` or ``external``.
    mode: str = "?"
    address: str | None = None
    #: The last exchange with the registry worked and the watches are parked.
    connected: bool = False
    last_error: str | None = None
    #: Unix seconds of the last answer from the registry.
    last_contact: float | None = None
    last_index: int | None = None
    #: Sessions that ended in an error.
    errors: int = 0


class StoreState(_Open):
    """``store`` of ``/v1/status``: how current the policy controld follows is."""

    connected: bool = True
    loaded: bool = False
    #: The revision in force.
    revision: int | None = None
    #: Resources in force.
    resources: int | None = None
    last_error: str | None = None
    last_contact: float | None = None
    errors: int = 0
    invalid_values: int = 0
    #: The registry KV prefix of the store.
    prefix: str | None = None
    #: Resources in force per kind.
    kinds: dict[str, int] = Field(default_factory=dict)


class StatusAnswer(_Open):
    """Answer of ``GET /v1/status`` (sections absent from an answer stay unset)."""

    registry: RegistryState = Field(default_factory=RegistryState)
    #: The discovery view: its version and the endpoints of each service.
    discovery: JsonObject | None = None
    #: The push hub: sidecars, connected ones, rollouts pending, reconciler rounds.
    push: JsonObject | None = None
    telemetry: JsonObject | None = None
    #: None: controld runs without a policy store.
    store: StoreState | None = None
    #: Services with plain (no sidecar) endpoints: how each endpoint is reached.
    endpoint_mix: dict[str, JsonObject] = Field(default_factory=dict)
