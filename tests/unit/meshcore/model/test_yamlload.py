"""The strict YAML loader: duplicate keys, depth, size and alias bombs refused with a position."""

from __future__ import annotations

import contextlib
import io
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from meshcore.errors import ConfigError
from meshcore.model import Bootstrap
from meshcore.model.documents import DocumentError, load_documents
from meshcore.model.loading import load_model
from meshcore.model.yamlload import YamlError, load_yaml, load_yaml_all
from tui.cli import main

pytestmark = pytest.mark.timeout(120)

#: "Billion laughs": nine levels of ten aliases each, 10**9 leaves once expanded.
LAUGHS = "a: &a [x, x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"{chr(98 + i)}: &{chr(98 + i)} [{', '.join([f'*{chr(97 + i)}'] * 10)}]\n" for i in range(8)
)


def test_duplicate_key_refused_with_line_column_and_key() -> None:
    text = "listeners: []\nversion: 1\nspec:\n  a: 1\n  a: 2\n"
    with pytest.raises(YamlError) as err:
        load_yaml(text, "snap.yaml")
    assert str(err.value) == "snap.yaml:5:3: invalid YAML: duplicate key 'a' (first at line 4)"
    assert (err.value.line, err.value.column) == (5, 3)


def test_keys_equal_after_resolution_are_duplicates() -> None:
    # ``yes`` and ``true`` are both the boolean True in YAML 1.1: the second would win silently.
    with pytest.raises(YamlError, match="duplicate key 'true'"):
        load_yaml("yes: 1\ntrue: 2\n", "f")


def test_merge_keys_may_be_overridden() -> None:
    text = "base: &b {x: 1, y: 2}\nd:\n  <<: *b\n  x: 3\n"
    assert load_yaml(text, "f") == {"base": {"x": 1, "y": 2}, "d": {"x": 3, "y": 2}}


@pytest.mark.parametrize(
    "text",
    ["[" * 5000, "- " * 5000 + "x", "a:\n" + "".join(" " * i + f"k{i}:\n" for i in range(1, 200))],
)
def test_deep_nesting_refused_without_recursion_error(text: str) -> None:
    with pytest.raises(
        YamlError,
        match=r"^f:1:\d+: invalid YAML: nested deeper than 64 levels$|"
        r"^f:\d+:\d+: invalid YAML: nested deeper than 64 levels$",
    ):
        load_yaml(text, "f")


def test_depth_limit_is_configurable() -> None:
    assert load_yaml("[[[1]]]", "f", max_depth=3) == [[[1]]]
    with pytest.raises(YamlError, match="nested deeper than 2 levels"):
        load_yaml("[[[1]]]", "f", max_depth=2)


def test_size_limit() -> None:
    assert load_yaml("a: " + "x" * 100, "f", max_bytes=200) == {"a": "x" * 100}
    with pytest.raises(YamlError, match=r"^f: invalid YAML: larger than 50 bytes$"):
        load_yaml("a: " + "x" * 100, "f", max_bytes=50)
    # Counted in UTF-8 bytes, not characters.
    with pytest.raises(YamlError, match="larger than 50 bytes"):
        load_yaml("a: " + "é" * 30, "f", max_bytes=50)


def test_aliases_allowed_within_budget() -> None:
    assert load_yaml("a: &a [1, 2]\nb: *a\n", "f") == {"a": [1, 2], "b": [1, 2]}


def test_alias_bomb_refused() -> None:
    with pytest.raises(YamlError, match="aliases expand to more than 10000 nodes"):
        load_yaml(LAUGHS, "bomb.yaml")


def test_recursive_alias_refused() -> None:
    with pytest.raises(YamlError, match=r"f:1:8: invalid YAML: alias \*a refers to its own"):
        load_yaml("a: &a [*a]\n", "f")


def test_bad_timestamp_is_a_yaml_error() -> None:
    # PyYAML's SafeLoader raises a bare ValueError here.
    with pytest.raises(ValueError, match="month"):
        yaml.safe_load("2001-13-45")
    with pytest.raises(YamlError, match=r"f:1:4: invalid YAML: invalid timestamp"):
        load_yaml("x: 2001-13-45", "f")


def test_documents_of_a_stream() -> None:
    assert list(load_yaml_all("a: 1\n---\n---\nb: 2\n", "f")) == [{"a": 1}, None, {"b": 2}]
    with pytest.raises(YamlError, match="f:4:1: invalid YAML: duplicate key 'b'"):
        list(load_yaml_all("a: 1\n---\nb: 2\nb: 3\n", "f"))


def test_bootstrap_file_duplicate_key(tmp_path: Path) -> None:
    path = tmp_path / "boot.yaml"
    path.write_text("service: a\nservice: b\n")
    with pytest.raises(ConfigError, match=rf"^{path}:2:1: invalid YAML: duplicate key 'service'"):
        load_model(Bootstrap, path)


def test_policy_documents_name_document_and_line() -> None:
    text = "kind: Mesh\nmetadata: {name: default}\n---\nkind: Mesh\nkind: Mesh\n"
    with pytest.raises(DocumentError) as err:
        load_documents(text, "policy.yaml")
    assert str(err.value) == (
        "policy.yaml: document 2: invalid YAML at line 5, column 1: "
        "duplicate key 'kind' (first at line 4)"
    )


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ("kind: Mesh\nmetadata:\n  name: a\n  name: b\n", "line 4, column 3: duplicate key 'name'"),
        ("kind: Mesh\nspec: " + "[" * 3000 + "\n", "line 2, column 70: nested deeper than 64"),
    ],
)
def test_meshctl_apply_one_clear_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], body: str, expected: str
) -> None:
    path = tmp_path / "policy.yaml"
    path.write_text(body)
    # The file is refused before any request: the server address is never used.
    code = main(["--server", "http://127.0.0.1:9", "apply", "-f", str(path)])
    out = capsys.readouterr()
    assert code != 0
    lines = out.err.strip().splitlines()
    assert len(lines) == 1, out.err
    assert lines[0].startswith(f"{path}: document 1: invalid YAML at {expected}")
    assert "Traceback" not in out.err + out.out


def test_meshctl_apply_stdin_deep(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(sys, "stdin", io.StringIO("a: " + "[" * 3000))
    code = main(["--server", "http://127.0.0.1:9", "apply", "-f", "-"])
    err = capsys.readouterr().err
    assert code != 0
    assert (
        err.strip()
        == "<stdin>: document 1: invalid YAML at line 1, column 67: nested deeper than 64 levels"
    )


# -- properties ----------------------------------------------------------------------------

_FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
_YAMLISH = st.text(
    alphabet=st.sampled_from(list("ab:-[]{},&*!?|>'\"#%@`\n\t 01.~<=")), max_size=200
)


@_FUZZ
@given(st.one_of(st.text(max_size=300), _YAMLISH))
def test_any_text_gives_data_or_yaml_error(text: str) -> None:
    with contextlib.suppress(YamlError):
        list(load_yaml_all(text, "fuzz"))


@_FUZZ
@given(st.one_of(st.text(max_size=300), _YAMLISH))
def test_policy_loader_gives_resources_or_document_error(text: str) -> None:
    with contextlib.suppress(DocumentError):
        load_documents(text, "fuzz")


@_FUZZ
@given(st.binary(max_size=300))
def test_any_bytes_give_data_or_yaml_error(raw: bytes) -> None:
    with contextlib.suppress(YamlError):
        load_yaml(raw, "fuzz")


_SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(allow_nan=False),
    # Printable text: PyYAML's dumper writes some line-break characters (NEL) it can't read back.
    st.text(st.characters(blacklist_categories=("Cs", "Cc", "Zl", "Zp")), max_size=20),
)
_VALUES = st.recursive(
    _SCALARS,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.dictionaries(
            st.text(st.characters(blacklist_categories=("Cs", "Cc", "Zl", "Zp")), max_size=8),
            inner,
            max_size=4,
        ),
    ),
    max_leaves=30,
)


@_FUZZ
@given(_VALUES, st.booleans())
def test_valid_documents_round_trip(value: Any, flow: bool) -> None:
    text = yaml.safe_dump(value, default_flow_style=flow, allow_unicode=True)
    assert load_yaml(text, "rt") == value
