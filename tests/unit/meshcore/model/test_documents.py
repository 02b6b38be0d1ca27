"""Multi-document YAML loading and its error report."""

from __future__ import annotations

from pathlib import Path

import pytest

from meshcore.errors import ConfigError
from meshcore.model.documents import (
    DocumentError,
    Problem,
    dotted_path,
    load_documents,
    load_paths,
    resource_from_data,
)
from meshcore.model.resources import HTTPRoute, Mesh

GOOD = """\
# comment
apiVersion: meshd.io/v1
kind: Mesh
metadata: {name: default}
---
kind: HTTPRoute
metadata: {name: api-split}
spec:
  service: api
  rules:
    - backends: [{subset: v1, weight: 9}, {subset: v2}]
---
"""


def test_loads_every_document_in_order() -> None:
    resources = load_documents(GOOD, "policy.yaml")
    assert [type(r) for r in resources] == [Mesh, HTTPRoute]


def test_json_text_loads() -> None:
    [mesh] = load_documents('{"kind": "Mesh", "metadata": {"name": "default"}}', "m.json")
    assert isinstance(mesh, Mesh)


def test_empty_text() -> None:
    assert load_documents("", "empty.yaml") == []
    assert load_documents("# nothing\n---\n", "empty.yaml") == []


def test_error_lines_name_source_document_kind_name_path() -> None:
    text = """\
kind: Mesh
metadata: {name: default}
---
kind: HTTPRoute
metadata: {name: api-split}
spec:
  service: api
  rules: [{backends: [{weight: -1}]}]
---
kind: Mesh
metadata: {name: other}
---
kind: Gateway
metadata: {name: g}
---
- a list
---
metadata: {name: nokind}
"""
    with pytest.raises(DocumentError) as info:
        load_documents(text, "policy.yaml")
    assert str(info.value).splitlines() == [
        "policy.yaml: document 2 (HTTPRoute/api-split): spec.rules.0.backends.0.weight: "
        "Input should be greater than or equal to 0",
        "policy.yaml: document 3 (Mesh/other): metadata: "
        "a Mesh must be named 'default', got 'other'",
        "policy.yaml: document 4 (Gateway/g): kind: unknown kind 'Gateway'; expected one of "
        "Mesh, ServiceDefaults, HTTPRoute, ServiceResolver, AccessPolicy, RateLimit",
        "policy.yaml: document 5: (top level): expected a mapping, got list",
        "policy.yaml: document 6: kind: missing; expected one of "
        "Mesh, ServiceDefaults, HTTPRoute, ServiceResolver, AccessPolicy, RateLimit",
    ]
    first = info.value.problems[0]
    assert first == Problem(
        source="policy.yaml",
        document=2,
        kind="HTTPRoute",
        name="api-split",
        path="spec.rules.0.backends.0.weight",
        message="Input should be greater than or equal to 0",
    )
    assert first.as_json()["path"] == "spec.rules.0.backends.0.weight"
    assert isinstance(info.value, ConfigError)


def test_yaml_syntax_error_names_document_and_line() -> None:
    with pytest.raises(DocumentError) as info:
        load_documents("kind: Mesh\nmetadata: {name: default}\n---\na: [\n", "bad.yaml")
    [problem] = info.value.problems
    assert problem.document == 2
    assert str(problem).startswith("bad.yaml: document 2: invalid YAML at line 5, column 1: ")


def test_duplicates_are_reported() -> None:
    text = "kind: Mesh\nmetadata: {name: default}\n---\nkind: Mesh\nmetadata: {name: default}\n"
    with pytest.raises(DocumentError) as info:
        load_documents(text, "m.yaml")
    assert str(info.value) == (
        "m.yaml: document 2 (Mesh/default): metadata.name: duplicate (also document 1)"
    )


def test_resource_from_data_single_document() -> None:
    mesh = resource_from_data({"kind": "Mesh", "metadata": {"name": "default"}})
    assert isinstance(mesh, Mesh)
    with pytest.raises(DocumentError) as info:
        resource_from_data({"kind": "Mesh", "metadata": {}}, source="", document=0)
    assert str(info.value) == "document 0 (Mesh): metadata.name: Field required"


def test_dotted_path() -> None:
    assert dotted_path(("spec", "rules", 0, "weight")) == "spec.rules.0.weight"
    assert dotted_path(()) == "(top level)"


def test_load_paths_directory_recursive_sorted(tmp_path: Path) -> None:
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "route.yml").write_text(
        "kind: HTTPRoute\nmetadata: {name: r}\nspec: {service: api}\n", encoding="utf-8"
    )
    (tmp_path / "a.yaml").write_text("kind: Mesh\nmetadata: {name: default}\n", encoding="utf-8")
    (tmp_path / "notes.txt").write_text("not yaml: [", encoding="utf-8")
    single = tmp_path / "extra.json"
    single.write_text('{"kind": "ServiceDefaults", "metadata": {"name": "api"}}', encoding="utf-8")
    loaded = load_paths([tmp_path, single])
    assert [(p.name, r.kind) for p, r in loaded] == [
        ("a.yaml", "Mesh"),
        ("route.yml", "HTTPRoute"),
        ("extra.json", "ServiceDefaults"),
    ]


def test_load_paths_reports_every_file_and_cross_file_duplicates(tmp_path: Path) -> None:
    one = tmp_path / "1.yaml"
    two = tmp_path / "2.yaml"
    one.write_text("kind: Mesh\nmetadata: {name: default}\n", encoding="utf-8")
    two.write_text(
        "kind: Mesh\nmetadata: {name: default}\n---\nkind: RateLimit\nmetadata: {name: x}\n",
        encoding="utf-8",
    )
    with pytest.raises(DocumentError) as info:
        load_paths([tmp_path])
    lines = str(info.value).splitlines()
    assert lines[0].startswith(f"{two}: document 2 (RateLimit/x): spec: Field required")
    assert (
        lines[-1]
        == f"{two}: document 1 (Mesh/default): metadata.name: duplicate (also {one} document 1)"
    )


def test_load_paths_unreadable(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_paths([tmp_path / "missing.yaml"])
