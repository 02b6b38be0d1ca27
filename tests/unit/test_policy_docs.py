"""docs/policy.md documents every field of every policy kind, with the model's default.

The models in ``meshcore/model`` are authoritative; this keeps the reference in step with
them: each model's fields must be rows of the table under its heading, and a scalar default
must be the row's ``default`` cell.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from pydantic import BaseModel

from meshcore.model.match import HeaderMatch, QueryMatch, RouteMatch
from meshcore.model.policy import (
    AccessRule,
    ConnectionLimits,
    FaultPolicy,
    HashPolicy,
    HeaderMutation,
    HealthCheck,
    JwtRequirement,
    LocalityPolicy,
    OutlierDetection,
    Redirect,
    RetryBudget,
    RetryPolicy,
    Rewrite,
    SuccessRateEjection,
)
from meshcore.model.resources import (
    AccessPolicySpec,
    HTTPRouteRule,
    HTTPRouteSpec,
    MeshSpec,
    RateLimitSpec,
    ServiceDefaultsSpec,
    ServiceResolverSpec,
)
from meshcore.model.resources.resolver import FailoverTarget, SubsetFilter
from meshcore.model.resources.route import Mirror, RouteBackend

pytestmark = pytest.mark.timeout(30)

DOC = Path(__file__).resolve().parents[2] / "docs" / "policy.md"

#: Heading -> the models whose fields its tables list.
SECTIONS: dict[str, tuple[type[BaseModel], ...]] = {
    "## Mesh": (MeshSpec,),
    "## ServiceDefaults": (ServiceDefaultsSpec,),
    "#### Hash policy": (HashPolicy,),
    "#### Locality": (LocalityPolicy,),
    "### Retry budget": (RetryBudget,),
    "### Connection limits (circuit breaking)": (ConnectionLimits,),
    "### Outlier detection": (OutlierDetection,),
    "#### Success-rate ejection": (SuccessRateEjection,),
    "### Health check": (HealthCheck,),
    "## HTTPRoute": (HTTPRouteSpec,),
    "### Rule": (HTTPRouteRule,),
    "### Match": (RouteMatch, HeaderMatch, QueryMatch),
    "### Backends": (RouteBackend,),
    "### Retry policy": (RetryPolicy,),
    "### Fault injection": (FaultPolicy,),
    "### Header changes": (HeaderMutation,),
    "### Rewrite": (Rewrite,),
    "### Redirect": (Redirect,),
    "### Mirroring": (Mirror,),
    "## ServiceResolver": (ServiceResolverSpec,),
    "### Subset filter": (SubsetFilter,),
    "### Failover target": (FailoverTarget,),
    "## AccessPolicy": (AccessPolicySpec,),
    "### Access rule": (AccessRule,),
    "### JWT requirement": (JwtRequirement,),
    "## RateLimit": (RateLimitSpec,),
}


def _section(text: str, heading: str) -> str:
    lines = text.splitlines()
    start = lines.index(heading)
    body: list[str] = []
    for line in lines[start + 1 :]:
        if line.startswith("#"):
            break
        body.append(line)
    return "\n".join(body)


def _rows(section: str) -> dict[str, list[str]]:
    """First-cell field names -> the row's cells (a cell naming several fields gives each)."""
    out: dict[str, list[str]] = {}
    for line in section.splitlines():
        if not line.startswith("|") or set(line) <= {"|", "-", " "}:
            continue
        # ``\|`` inside a cell is a literal bar (enumerations), not a column break.
        cells = [c.strip() for c in re.split(r"(?<!\\)\|", line.strip().strip("|"))]
        for name in re.findall(r"`([a-z_0-9]+)`", cells[0]):
            out[name] = cells
    return out


def _expected_default(value: object) -> str | None:
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    if isinstance(value, int | float):
        return f"`{value:g}`"
    if isinstance(value, str):
        return f"`{value}`"
    return None


@pytest.mark.parametrize("heading", list(SECTIONS))
def test_every_field_is_a_row_with_its_default(heading: str) -> None:
    text = DOC.read_text(encoding="utf-8")
    assert heading in text.splitlines(), f"docs/policy.md lacks the heading {heading!r}"
    rows = _rows(_section(text, heading))
    for model in SECTIONS[heading]:
        for name, info in model.model_fields.items():
            assert name in rows, f"{heading}: no row for {model.__name__}.{name}"
            cells = rows[name]
            assert len(cells) == 4, f"{heading}: row {name!r} is not field|type|default|meaning"
            if info.is_required():
                assert cells[2] == "required", f"{heading}: {name} is required"
                continue
            expected = _expected_default(info.default)
            if expected is not None and "`, `" not in cells[0]:
                assert cells[2] == expected, f"{heading}: default of {name}"


def test_links_to_sections_exist() -> None:
    text = DOC.read_text(encoding="utf-8")
    anchors = set()
    for line in text.splitlines():
        if line.startswith("#"):
            title = line.lstrip("#").strip().lower()
            anchors.add(re.sub(r"[^a-z0-9 -]", "", title).replace(" ", "-"))
    for target in re.findall(r"\]\(#([^)]+)\)", text):
        assert target in anchors, f"link to missing section #{target}"
