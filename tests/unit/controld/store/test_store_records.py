"""Pure parts of the resource store: key layout, sealed value codecs, planning an apply."""

from __future__ import annotations

import json

import pytest

from controld.sealed import RecordKey
from controld.store import ApplyResult, Change, KeyLayout, ResourceNotFound, RevisionRecord
from controld.store.records import UNSEALED_HINT, InvalidValue, RecordCodec, rfc3339
from controld.store.state import plan_apply, plan_delete, prospective, read_state, unique
from meshcore.model.resources import Resource, parse_resource
from meshcore.registry import KvEntry

KEY = RecordKey(b"k" * 32)
CODEC = RecordCodec(KeyLayout(), KEY)


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
    raw = CODEC.encode_resource(route("r"), revision=3, author="alice", time="T")
    stored = CODEC.decode_resource(raw, ("HTTPRoute", "r"))
    assert (stored.resource, stored.revision, stored.author, stored.time) == (
        route("r"),
        3,
        "alice",
        "T",
    )
    assert stored.meta_json() == {"revision": 3, "author": "alice", "time": "T"}
    # The seal binds the key: a record copied under another name doesn't open.
    with pytest.raises(InvalidValue, match="seal does not verify"):
        CODEC.decode_resource(raw, ("HTTPRoute", "other"))
    body = json.loads(raw)["body"]
    for broken, message in [
        ({**body, "revision": True}, "'revision' must be a int"),
        ({**body, "revision": 0}, "'revision' must be positive"),
        ({**body, "author": None}, "'author' must be a str"),
        ({**body, "resource": {"kind": "Nope"}}, "resource"),
        ({**body, "resource": route("x").to_json()}, "holds HTTPRoute/x, not HTTPRoute/r"),
    ]:
        # Sealed by controld yet off-schema: refused by the schema check.
        sealed = KEY.seal("store.resource", "meshd/resources/HTTPRoute/r", broken)
        with pytest.raises(InvalidValue, match=message):
            CODEC.decode_resource(sealed, ("HTTPRoute", "r"))


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (b"{nope", "not JSON"),
        (b"[" * 5000 + b"]" * 5000, "nested 5000 levels deep"),
        (b'"' + b"x" * 70_000 + b'"', "exceeds"),
        (b"\xff\xfe", "not JSON"),
        (b'{"v": 1, "body": {}, "mac": "forged"}', "seal does not verify"),
        (b"[]", "unsealed"),
    ],
)
def test_bad_values_are_invalid_not_errors(raw: bytes, message: str) -> None:
    for decode in (
        lambda: CODEC.decode_resource(raw, ("HTTPRoute", "r")),
        lambda: CODEC.decode_counter(raw),
        lambda: CODEC.decode_history("meshd/history/000000000001", raw),
    ):
        with pytest.raises(InvalidValue, match=message):
            decode()


def test_an_unsealed_value_of_an_earlier_version_is_refused_with_a_hint() -> None:
    legacy = {"resource": route("r").to_json(), "revision": 1, "author": "admin", "time": "T"}
    with pytest.raises(InvalidValue) as info:
        CODEC.decode_resource(json.dumps(legacy).encode(), ("HTTPRoute", "r"))
    assert str(info.value) == UNSEALED_HINT
    assert "meshctl apply" in UNSEALED_HINT
    with pytest.raises(InvalidValue, match="unsealed"):
        CODEC.decode_counter(b"17")
    # Sealed with another controld's key: forged.
    other = RecordCodec(KeyLayout(), RecordKey(b"o" * 32))
    with pytest.raises(InvalidValue, match="seal does not verify"):
        CODEC.decode_counter(other.encode_counter(17))


def test_counter_and_history_codecs() -> None:
    assert CODEC.decode_counter(CODEC.encode_counter(17)) == 17
    negative = KEY.seal("store.revision", "meshd/revision", {"revision": -1})
    with pytest.raises(InvalidValue, match="negative"):
        CODEC.decode_counter(negative)
    record = RevisionRecord(5, "bob", "T", "delete", (Change("HTTPRoute", "r", "deleted"),))
    key = KeyLayout().history_record(5)
    assert CODEC.decode_history(key, CODEC.encode_history(record)) == record
    explode = KEY.seal("store.history", key, {**record.as_json(), "action": "explode"})
    with pytest.raises(InvalidValue, match="unknown action"):
        CODEC.decode_history(key, explode)
    # A sealed record can't be moved to another revision's key.
    with pytest.raises(InvalidValue, match="seal does not verify"):
        CODEC.decode_history(KeyLayout().history_record(6), CODEC.encode_history(record))
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
            CODEC.encode_resource(route("a"), revision=1, author="x", time="T"),
            11,
            11,
        ),
        KvEntry("meshd/resources/HTTPRoute/bad", b"garbage", 12, 12),
        KvEntry("meshd/resources/odd", b"{}", 13, 13),
        KvEntry("meshd/revision", CODEC.encode_counter(2), 14, 3),
        KvEntry("meshd/retired-neighbour", b"x", 15, 15),
    ]
    state = read_state(CODEC, 20, entries)
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

    corrupt = read_state(CODEC, 21, [KvEntry("meshd/revision", b"zz", 3, 3)])
    assert (corrupt.counter_ok, corrupt.revision, len(corrupt.bad)) == (False, 0, 1)
    assert corrupt.bad[0].kind == "revision"
    # A refused counter: the newest valid resource's revision stands in (never back to 0).
    newer = CODEC.encode_resource(route("b"), revision=7, author="x", time="T")
    refused = read_state(
        CODEC,
        22,
        [
            KvEntry("meshd/resources/HTTPRoute/b", newer, 5, 5),
            KvEntry("meshd/revision", b"9", 6, 6),
        ],
    )
    assert (refused.counter_ok, refused.revision, refused.revision_cas) == (False, 7, 6)
