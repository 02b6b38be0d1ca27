"""Wire models of controld's status and schema routes (``meshctl status``, ``schema``).

Paths (admin listener):

* ``GET /v1/status`` (admin token) -> :class:`StatusAnswer`: ``registry`` (mode, address,
  connected, ...), ``discovery``, ``push``, ``telemetry``, ``store`` and ``endpoint_mix``
* ``GET /v1/schema`` (any token) -> ``{kind: JSON Schema}``

The status models name the fields clients read and keep every other one they are sent
(``extra="allow"``: the sections mirror the daemon's state and grow with it), so a client
prints back the whole answer. The answer of schema is a JSON object this module doesn't model
field by field (JSON Schemas); clients check that it is one
(:data:`~meshcore.api.base.JSON_OBJECT`). Explain's models are in :mod:`meshcore.api.explain`.
"""

from __future__ import annotations

from pydantic import ConfigDict, Field

from meshcore.api.base import Answer, JsonObject

__all__ = [
    "SCHEMA_PATH",
    "STATUS_PATH",
    "RegistryState",
    "StatusAnswer",
    "StoreState",
]

STATUS_PATH = "/v1/status"
SCHEMA_PATH = "/v1/schema"


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
