"""Pure parts of the resource store: key layout, value codecs, planning an apply."""

from __future__ import annotations

import json

import pytest

from controld.store import ApplyResult, Change, KeyLayout, ResourceNotFound, RevisionRecord
from controld.store.records import (
    InvalidValue,
    decode_counter,
    decode_history,
    decode_stored,
    encode_history,
    encode_stored,
    rfc3339,
)
from controld.store.state import plan_apply, plan_delete, prospective, read_state, unique
from meshcore.model.resources import Resource, parse_resource
from meshcore.registry import KvEntry


def route(name: str, weight: int = 1) -> Resource:
    return parse_resource(
        {
            "kind": "HTTPRoute",
            "metadata": {"name": name},
            "spec": {"service": "api", "rules": [{"backends": [{"weight": weight}]}]},
        }
    )


def test_layout() -> None:
    layout = KeyLayout("mesh")
    assert layout.prefix == "mesh/"
    assert layout.resource("HTTPRoute", "a.b") == "mesh/resources/HTTPRoute/a.b"
    assert layout.parse_resource("mesh/resources/HTTPRoute/a.b") == ("HTTPRoute", "a.b")
    for key in ("mesh/resources/HTTPRoute", "mesh/resources/A/b/c", "mesh/revision", "other"):
        assert layout.parse_resource(key) is None
    assert layout.history_record(42) == "mesh/history/000000000042"
    assert layout.revision.startswith(layout.state)
    assert layout.resources.startswith(layout.state)
    assert not layout.history.startswith(layout.state)
    with pytest.raises(ValueError, match="prefix"):
        KeyLayout("/abs/")


def test_rfc3339() -> None:
    assert rfc3339(1_700_000_000.5) == "2023-11-14T22:13:20.500Z"


def test_stored_roundtrip_and_breakage() -> None:
    raw = encode_stored(route("r"), revision=3, author="alice", time="T")
    stored = decode_stored(raw, ("HTTPRoute", "r"))
    assert (stored.resource, stored.revision, stored.author, stored.time) == (
        route("r"),
        3,
        "alice",
        "T",
    )
    assert stored.meta_json() == {"revision": 3, "author": "alice", "time": "T"}
    with pytest.raises(InvalidValue, match="holds HTTPRoute/r, not HTTPRoute/other"):
        decode_stored(raw, ("HTTPRoute", "other"))
    body = json.loads(raw)
    for broken, message in [
        (b"{nope", "not JSON"),
        (b"[]", "expected a JSON object"),
        (json.dumps({**body, "revision": True}).encode(), "'revision' must be a int"),
        (json.dumps({**body, "author": None}).encode(), "'author' must be a str"),
        (json.dumps({**body, "resource": {"kind": "Nope"}}).encode(), "resource"),
    ]:
        with pytest.raises(InvalidValue, match=message):
            decode_stored(broken, ("HTTPRoute", "r"))


def test_counter_and_history_codecs() -> None:
    assert decode_counter(b"17") == 17
    for bad in (b"", b"-1", b"x", b"1.5"):
        with pytest.raises(InvalidValue):
            decode_counter(bad)
    record = RevisionRecord(5, "bob", "T", "delete", (Change("HTTPRoute", "r", "deleted"),))
    assert decode_history(encode_history(record)) == record
    with pytest.raises(InvalidValue, match="unknown action"):
        decode_history(json.dumps({**record.as_json(), "action": "explode"}).encode())
    result = ApplyResult(5, (Change("A", "b", "unchanged"),))
    assert not result.changed
    assert result.as_json() == {
        "revision": 5,
        "changes": [{"kind": "A", "name": "b", "action": "unchanged"}],
    }


def test_read_state_and_plans() -> None:
    layout = KeyLayout()
    entries = [
        KvEntry(
            "meshd/resources/HTTPRoute/a",
            encode_stored(route("a"), revision=1, author="x", time="T"),
            11,
            11,
        ),
        KvEntry("meshd/resources/HTTPRoute/bad", b"garbage", 12, 12),
        KvEntry("meshd/resources/odd", b"{}", 13, 13),
        KvEntry("meshd/revision", b"2", 14, 3),
        KvEntry("meshd/retired-neighbour", b"x", 15, 15),
    ]
    state = read_state(layout, 20, entries)
    assert (state.index, state.revision, state.revision_cas, state.counter_ok) == (20, 2, 14, True)
    assert list(state.stored) == [("HTTPRoute", "a")]
    assert [b.key for b in state.bad] == ["meshd/resources/HTTPRoute/bad", "meshd/resources/odd"]
    assert state.resource_set().revision == 2
    assert list(state.resource_set().resources) == [("HTTPRoute", "a")]

    wanted = unique([route("a"), route("bad"), route("new")])
    changes, writes = plan_apply(layout, state, wanted)
    assert [c.action for c in changes] == ["unchanged", "updated", "created"]
    assert [(w.key, w.cas) for w in writes] == [
        ("meshd/resources/HTTPRoute/bad", 12),
        ("meshd/resources/HTTPRoute/new", 0),
    ]
    assert sorted(prospective(state, wanted).resources) == [
        ("HTTPRoute", "a"),
        ("HTTPRoute", "bad"),
        ("HTTPRoute", "new"),
    ]
    delete = plan_delete(layout, state, "HTTPRoute", "bad")
    assert (delete.key, delete.cas, delete.change.action) == (
        "meshd/resources/HTTPRoute/bad",
        12,
        "deleted",
    )
    with pytest.raises(ResourceNotFound):
        plan_delete(layout, state, "HTTPRoute", "missing")
    with pytest.raises(ValueError, match="more than once"):
        unique([route("a"), route("a", 2)])

    corrupt = read_state(layout, 21, [KvEntry("meshd/revision", b"zz", 3, 3)])
    assert (corrupt.counter_ok, corrupt.revision, len(corrupt.bad)) == (False, 0, 1)
