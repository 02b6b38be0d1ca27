"""Mapping controld's problems back to files and document numbers (pure)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from meshcore.api.errors import Problem
from tui.cli.local import Origin, _groups, document_numbers, problem_lines

ORIGINS = [
    Origin("mesh.yaml", 1, "Mesh", "default"),
    Origin("routes/api.yaml", 1, "HTTPRoute", "api-split"),
    Origin("routes/api.yaml", 3, "ServiceResolver", "api"),
]


def _lines(problems: list[dict[str, Any]]) -> list[str]:
    """controld's problems (as it sends them) as ``meshctl`` prints them."""
    return problem_lines([Problem.model_validate(p) for p in problems], ORIGINS)


def test_problem_by_request_index() -> None:
    problems = [
        {
            "document": 1,
            "kind": "HTTPRoute",
            "name": "api-split",
            "path": "spec.rules.0.backends.0.subset",
            "message": "subset v3 is not defined by ServiceResolver/api",
        }
    ]
    assert _lines(problems) == [
        "routes/api.yaml: document 1 (HTTPRoute/api-split): spec.rules.0.backends.0.subset: "
        "subset v3 is not defined by ServiceResolver/api"
    ]


def test_problem_by_kind_and_name_when_no_index() -> None:
    problems = [
        {"document": None, "kind": "ServiceResolver", "name": "api", "path": "spec", "message": "x"}
    ]
    assert _lines(problems) == ["routes/api.yaml: document 3 (ServiceResolver/api): spec: x"]


def test_problem_not_from_the_request() -> None:
    problems: list[dict[str, Any]] = [
        {"kind": "HTTPRoute", "name": "other", "path": "spec.service", "message": "dup"},
        {"path": "", "message": "too many resources"},
        {"document": 99, "message": "bad"},
    ]
    assert _lines(problems) == [
        "controld: HTTPRoute/other: spec.service: dup",
        "controld: (top level): too many resources",
        "controld: (top level): bad",
    ]


def test_problem_without_kind_uses_origin() -> None:
    problems = [{"document": 0, "path": "kind", "message": "unknown kind"}]
    assert _lines(problems) == ["mesh.yaml: document 1 (Mesh/default): kind: unknown kind"]


def test_document_numbers_skip_empty_documents() -> None:
    text = "---\nkind: A\n---\n---\nkind: B\n...\n---\n# only a comment\n---\nkind: C\n"
    assert document_numbers(text) == [1, 3, 5]
    assert document_numbers("kind: A\n") == [1]
    assert document_numbers("a: [") == []


def test_groups_keep_stdin_apart() -> None:
    assert _groups(["a", "b", "-", "c"]) == [["a", "b"], ["-"], ["c"]]
    assert _groups(["-", "-"]) == [["-"], ["-"]]


def test_load_local_numbers_documents(tmp_path: Path) -> None:
    from tui.cli.local import load_local

    policy = tmp_path / "policy"
    policy.mkdir()
    (policy / "b.yaml").write_text(
        "---\n# comment only\n---\nkind: Mesh\nmetadata: {name: default}\nspec: {timeout_s: 3}\n"
        "---\nkind: ServiceResolver\nmetadata: {name: api}\n"
        "spec: {subsets: {v1: {tags: [v1]}}}\n"
    )
    (policy / "a.yml").write_text("kind: HTTPRoute\nmetadata: {name: r}\nspec: {service: api}\n")
    loaded = load_local([str(policy)])
    assert [r.origin for r in loaded] == [
        Origin(str(policy / "a.yml"), 1, "HTTPRoute", "r"),
        Origin(str(policy / "b.yaml"), 2, "Mesh", "default"),
        Origin(str(policy / "b.yaml"), 3, "ServiceResolver", "api"),
    ]
    assert loaded[0].body["apiVersion"] == "meshd.io/v1"
    assert loaded[1].manifest == {
        "kind": "Mesh",
        "metadata": {"name": "default"},
        "spec": {"timeout_s": 3.0},
    }


def test_load_local_reports_every_problem(tmp_path: Path) -> None:
    from meshcore.errors import ConfigError
    from tui.cli.local import load_local

    bad = tmp_path / "bad.yaml"
    bad.write_text("kind: Mesh\nmetadata: {name: Bad}\n---\nkind: Nope\n")
    with pytest.raises(ConfigError) as info:
        load_local([str(bad)])
    text = str(info.value)
    assert f"{bad}: document 1 (Mesh/Bad): metadata.name:" in text
    assert f"{bad}: document 2 (Nope): kind:" in text
