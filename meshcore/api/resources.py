"""Wire models of controld's policy resource API (``meshctl apply/get/delete``, the dashboard).

Paths (admin listener, admin token):

* ``PUT /v1/resources`` (:class:`ApplyRequest`) -> :class:`ApplyAnswer`; invalid resources:
  422 with a :class:`~meshcore.api.errors.Problem` per field (nothing stored)
* ``GET /v1/resources[?kind=K]`` -> :class:`ResourceList`
* ``GET /v1/resources/{kind}/{name}`` -> the resource document plus ``meta``
  (``{"revision", "author", "time"}`` of its last change)
* ``DELETE /v1/resources/{kind}/{name}`` -> :class:`ApplyAnswer`
* ``GET /v1/revisions?limit=N`` -> ``{"revisions": [...]}``

Resource documents travel as JSON objects (``apiVersion``, ``kind``, ``metadata``, ``spec``):
:mod:`meshcore.model.resources` parses them, and a client passes on a kind it doesn't know.
"""

from __future__ import annotations

from typing import Any

from pydantic import Field

from meshcore.api.base import Answer, JsonObject, Request

__all__ = [
    "MAX_DOCUMENTS",
    "RESOURCES_PATH",
    "REVISIONS_PATH",
    "ApplyAnswer",
    "ApplyRequest",
    "Change",
    "FeatureWarning",
    "ResourceList",
    "resource_path",
]

RESOURCES_PATH = "/v1/resources"
REVISIONS_PATH = "/v1/revisions"
#: Documents one PUT may carry (bounds the work of one request).
MAX_DOCUMENTS = 5000


def resource_path(kind: str, name: str) -> str:
    """``/v1/resources/{kind}/{name}`` (GET one, DELETE one)."""
    return f"{RESOURCES_PATH}/{kind}/{name}"


class ApplyRequest(Request):
    """Body of ``PUT /v1/resources``."""

    #: Resource documents as JSON (``apiVersion``, ``kind``, ``metadata``, ``spec``).
    resources: list[dict[str, Any]] = Field(max_length=MAX_DOCUMENTS)
    #: Validate and report the changes without storing anything.
    dry_run: bool = False
    #: Refuse (422, nothing stored) when a connected sidecar would get a snapshot feature it
    #: doesn't enforce, instead of storing and warning.
    strict: bool = False


class Change(Answer):
    """One resource a call created, updated, deleted or left unchanged."""

    kind: str
    name: str
    #: ``created``, ``updated``, ``deleted`` or ``unchanged``.
    action: str


class FeatureWarning(Answer):
    """A connected sidecar would get a snapshot using a feature it doesn't enforce (it will
    NACK it and keep its current one)."""

    proxy_id: str
    service: str
    feature: str
    #: The first field of that sidecar's snapshot using it.
    path: str
    message: str


class ApplyAnswer(Answer):
    """Answer of ``PUT`` and ``DELETE``: the revision in force after the call (the current
    one for a dry run or when nothing changed), and the feature warnings of ``PUT``."""

    revision: int
    changes: tuple[Change, ...]
    dry_run: bool = False
    warnings: tuple[FeatureWarning, ...] = ()


class ResourceList(Answer):
    """Answer of ``GET /v1/resources``: the revision in force and its resources, sorted by
    kind and name."""

    revision: int
    resources: tuple[JsonObject, ...]
