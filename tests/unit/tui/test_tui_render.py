"""Tables, YAML/JSON output and resource diffs of meshctl (pure)."""

from __future__ import annotations

import json

import yaml

from tui import render


def test_table_aligns_columns_without_trailing_blanks() -> None:
    text = render.table(["KIND", "NAME"], [["HTTPRoute", "api"], ["Mesh", "default"]])
    assert text.splitlines() == [
        "KIND        NAME",
        "HTTPRoute   api",
        "Mesh        default",
    ]


def test_table_renders_none_as_empty() -> None:
    assert render.table(["A", "B"], [[None, "x"]]).splitlines()[1] == "    x"


def test_manifest_keeps_kind_metadata_spec_only() -> None:
    res = {
        "apiVersion": "meshd.io/v1",
        "kind": "HTTPRoute",
        "metadata": {"name": "api"},
        "spec": {"service": "api", "rules": []},
        "meta": {"revision": 3, "author": "admin"},
    }
    assert list(render.manifest(res)) == ["kind", "metadata", "spec"]


def test_manifest_yaml_is_reloadable_multi_document() -> None:
    resources = [
        {"kind": "Mesh", "metadata": {"name": "default"}, "spec": {}, "meta": {"revision": 1}},
        {"kind": "HTTPRoute", "metadata": {"name": "api"}, "spec": {"service": "api"}},
    ]
    text = render.manifest_yaml(resources)
    docs = list(yaml.safe_load_all(text))
    assert docs == [render.manifest(r) for r in resources]
    assert text.index("kind:") < text.index("metadata:") < text.index("spec:")


def test_yaml_multiline_strings_are_blocks() -> None:
    text = render.to_yaml({"error": "line one\nline two\n"})
    assert "|" in text
    assert yaml.safe_load(text) == {"error": "line one\nline two\n"}


def test_json_round_trips() -> None:
    value = {"b": [1, 2], "a": "é"}
    assert json.loads(render.to_json(value)) == value


def test_unified_diff_of_changed_resource() -> None:
    old = {"kind": "HTTPRoute", "metadata": {"name": "api"}, "spec": {"service": "api"}}
    new = {"kind": "HTTPRoute", "metadata": {"name": "api"}, "spec": {"service": "web"}}
    text = render.unified_diff(old, new, before_label="controld/x", after_label="file/x")
    assert text.startswith("--- controld/x\n+++ file/x\n")
    assert "-  service: api\n" in text
    assert "+  service: web\n" in text


def test_unified_diff_of_new_resource_and_equal_ones() -> None:
    new = {"kind": "Mesh", "metadata": {"name": "default"}}
    text = render.unified_diff(None, new, before_label="a", after_label="b")
    assert "+kind: Mesh\n" in text
    assert not [line for line in text.splitlines()[2:] if line.startswith("-")]
    assert render.unified_diff(new, new, before_label="a", after_label="b") == ""


def test_age() -> None:
    assert render.age(None) == "-"
    assert render.age(-3) == "0s"
    assert render.age(4.9) == "4s"
    assert render.age(60) == "1m"
    assert render.age(192) == "3m12s"
    assert render.age(2 * 3600 + 300) == "2h5m"
    assert render.age(3 * 86400 + 4 * 3600) == "3d4h"
