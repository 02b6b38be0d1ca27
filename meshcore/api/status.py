"""Wire models of controld's status, schema and explain routes (``meshctl status``,
``schema``, ``explain``).

Paths (admin listener):

* ``GET /v1/status`` (admin token) -> a JSON object: ``registry`` (mode, address, connected,
  ...), ``discovery``, ``push``, ``telemetry``, ``store`` and ``endpoint_mix``
* ``GET /v1/schema`` (any token) -> ``{kind: JSON Schema}``
* ``POST /v1/explain`` (:class:`ExplainRequest`, admin token) -> a JSON object: route,
  backends, clusters, access, rate limits, and ``sidecars`` (what each sidecar of the path
  enforces)

The three answers are JSON objects this module doesn't model field by field (they mirror the
compiler's and the daemon's state and grow with them); clients check that they are objects
(:data:`~meshcore.api.base.JSON_OBJECT`) and read them leniently.
"""

from __future__ import annotations

from pydantic import Field, field_validator

from meshcore.api.base import Request
from meshcore.model.policy import SERVICE_PATTERN
from meshcore.pathnorm import MalformedPath, normalize_target

__all__ = ["EXPLAIN_PATH", "SCHEMA_PATH", "STATUS_PATH", "ExplainRequest"]

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
