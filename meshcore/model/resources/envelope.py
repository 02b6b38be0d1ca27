"""The envelope every policy resource shares: ``apiVersion``, ``kind``, ``metadata``, ``spec``."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import ConfigDict, Field

from meshcore.model.base import Frozen

API_VERSION: Literal["meshd.io/v1"] = "meshd.io/v1"

#: Resource names: lower-case DNS-label-like, at most 63 characters.
NAME_PATTERN = r"^[a-z0-9]([a-z0-9.-]{0,61}[a-z0-9])?$"


class Metadata(Frozen):
    """A resource's name (unique per kind) and free-form labels."""

    name: str = Field(pattern=NAME_PATTERN)
    labels: dict[str, str] = Field(default_factory=dict)


class ResourceBase(Frozen):
    """Fields common to every kind; subclasses add ``kind`` (a literal) and ``spec``."""

    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True)

    api_version: Literal["meshd.io/v1"] = Field(default=API_VERSION, alias="apiVersion")
    #: Narrowed to one literal by each kind (declared here so dumps list it second).
    kind: str
    metadata: Metadata

    @property
    def name(self) -> str:
        """Shorthand for ``metadata.name``."""
        return self.metadata.name

    def to_json(self) -> dict[str, Any]:
        """The resource as JSON data (``apiVersion`` spelled as in YAML); parses back equal."""
        return self.model_dump(mode="json", by_alias=True)
