"""KV store: get/put/delete, recurse, keys + separator, cas (incl. 0), flags, acquire/release.

Consul docs followed: api-docs/kv (read key: 404 when missing, ``recurse``, ``keys`` with
``separator``, ``raw``; create/update key: body is the value, answers ``true``/``false``,
``cas=0`` only creates, ``flags`` 0..2^64-1, ``acquire``/``release`` with a session, value size
limit 512 KiB -> 413; delete: ``recurse``, ``cas`` must match ModifyIndex).
"""

from __future__ import annotations

import base64
import struct
from typing import Any

import consul
import httpx
import pytest

from .compat_support import x_index


def test_get_missing_key(consul_client: Any, http: httpx.Client) -> None:
    index, data = consul_client.kv.get("foo")
    assert data is None
    assert int(index) > 0
    resp = http.get("/v1/kv/foo")
    assert resp.status_code == 404
    x_index(resp)  # X-Consul-Index on 404s too, so a client can block on creation


def test_put_get(consul_client: Any) -> None:
    c = consul_client
    assert c.kv.put("foo", "bar") is True
    _, data = c.kv.get("foo")
    assert data["Value"] == b"bar"
    assert data["Key"] == "foo"
    assert data["Flags"] == 0
    assert data["LockIndex"] == 0
    assert data["CreateIndex"] > 0
    assert data["ModifyIndex"] == data["CreateIndex"]
    assert "Session" not in data or not data["Session"]


def test_raw_shapes(http: httpx.Client) -> None:
    put = http.put("/v1/kv/raw/key", content=b"hello")
    assert (put.status_code, put.json()) == (200, True)
    got = http.get("/v1/kv/raw/key")
    assert got.status_code == 200
    x_index(got)
    body = got.json()
    assert isinstance(body, list)
    assert len(body) == 1
    assert base64.b64decode(body[0]["Value"]) == b"hello"
    raw = http.get("/v1/kv/raw/key", params={"raw": ""})
    assert (raw.status_code, raw.content) == (200, b"hello")


def test_encoding(consul_client: Any) -> None:
    """py-consul test_kv_encoding."""
    c = consul_client
    c.kv.put("foo", struct.pack("i", 1000))
    _, data = c.kv.get("foo")
    assert struct.unpack("i", data["Value"]) == (1000,)
    c.kv.put("foo", "bär")
    _, data = c.kv.get("foo")
    assert data["Value"] == "bär".encode()
    c.kv.put("foo", "")
    _, data = c.kv.get("foo")
    assert data["Value"] is None
    c.kv.put("foo", None)
    _, data = c.kv.get("foo")
    assert data["Value"] is None


def test_modify_index_moves_create_index_stays(consul_client: Any) -> None:
    c = consul_client
    c.kv.put("k", "1")
    _, first = c.kv.get("k")
    c.kv.put("k", "2")
    _, second = c.kv.get("k")
    assert second["CreateIndex"] == first["CreateIndex"]
    assert second["ModifyIndex"] > first["ModifyIndex"]


def test_put_cas(consul_client: Any) -> None:
    """py-consul test_kv_put_cas: cas=0 only creates, cas=N only if ModifyIndex is N."""
    c = consul_client
    assert c.kv.put("foo", "bar", cas=50) is False
    assert c.kv.put("foo", "bar", cas=0) is True
    assert c.kv.put("foo", "again", cas=0) is False
    _, data = c.kv.get("foo")
    assert data["Value"] == b"bar"
    assert c.kv.put("foo", "bar2", cas=data["ModifyIndex"] - 1) is False
    assert c.kv.put("foo", "bar2", cas=data["ModifyIndex"]) is True
    _, data = c.kv.get("foo")
    assert data["Value"] == b"bar2"


def test_put_flags(consul_client: Any) -> None:
    c = consul_client
    c.kv.put("foo", "bar")
    _, data = c.kv.get("foo")
    assert data["Flags"] == 0
    assert c.kv.put("foo", "bar", flags=50) is True
    _, data = c.kv.get("foo")
    assert data["Flags"] == 50
    big = 2**64 - 1
    assert c.kv.put("foo", "bar", flags=big) is True
    _, data = c.kv.get("foo")
    assert data["Flags"] == big


def test_recurse(consul_client: Any) -> None:
    """py-consul test_kv_recurse."""
    c = consul_client
    _, data = c.kv.get("foo/", recurse=True)
    assert data is None
    c.kv.put("foo/", None)
    _, data = c.kv.get("foo/", recurse=True)
    assert len(data) == 1
    c.kv.put("foo/bar3", "3")
    c.kv.put("foo/bar1", "1")
    c.kv.put("foo/bar2", "2")
    c.kv.put("food", "not under foo/")
    _, data = c.kv.get("foo/", recurse=True)
    assert [x["Key"] for x in data] == ["foo/", "foo/bar1", "foo/bar2", "foo/bar3"]
    assert [x["Value"] for x in data] == [None, b"1", b"2", b"3"]


def test_delete(consul_client: Any, http: httpx.Client) -> None:
    """py-consul test_kv_delete."""
    c = consul_client
    c.kv.put("foo1", "1")
    c.kv.put("foo2", "2")
    c.kv.put("foo3", "3")
    _, data = c.kv.get("foo", recurse=True)
    assert [x["Key"] for x in data] == ["foo1", "foo2", "foo3"]
    assert c.kv.delete("foo2") is True
    _, data = c.kv.get("foo", recurse=True)
    assert [x["Key"] for x in data] == ["foo1", "foo3"]
    assert c.kv.delete("foo", recurse=True) is True
    _, data = c.kv.get("foo", recurse=True)
    assert data is None
    resp = http.delete("/v1/kv/never-existed")
    assert (resp.status_code, resp.json()) == (200, True)


def test_delete_cas(consul_client: Any) -> None:
    """py-consul test_kv_delete_cas."""
    c = consul_client
    c.kv.put("foo", "bar")
    index, data = c.kv.get("foo")
    assert c.kv.delete("foo", cas=data["ModifyIndex"] - 1) is False
    assert c.kv.get("foo") == (index, data)
    assert c.kv.delete("foo", cas=data["ModifyIndex"]) is True
    _, data = c.kv.get("foo")
    assert data is None


def test_keys_and_separator(consul_client: Any) -> None:
    """py-consul test_kv_keys_only, plus keys without separator."""
    c = consul_client
    assert c.kv.put("bar", "4") is True
    assert c.kv.put("base/foo", "1") is True
    assert c.kv.put("base/base/foo", "5") is True
    assert c.kv.put("base/base/zoo", "6") is True
    _, data = c.kv.get("base/", keys=True, separator="/")
    assert data == ["base/base/", "base/foo"]
    _, data = c.kv.get("base/", keys=True)
    assert data == ["base/base/foo", "base/base/zoo", "base/foo"]
    _, data = c.kv.get("", keys=True, separator="/")
    assert data == ["bar", "base/"]
    _, data = c.kv.get("nothing/", keys=True)
    assert data is None


def test_acquire_release(consul_client: Any) -> None:
    """py-consul test_kv_acquire_release, plus LockIndex/Session bookkeeping."""
    c = consul_client
    with pytest.raises(consul.ConsulException):
        c.kv.put("foo", "bar", acquire="foo")
    s1 = c.session.create()
    s2 = c.session.create()
    assert c.kv.put("foo", "1", acquire=s1) is True
    _, data = c.kv.get("foo")
    assert data["Session"] == s1
    assert data["LockIndex"] == 1
    assert c.kv.put("foo", "2", acquire=s2) is False
    assert c.kv.put("foo", "1", acquire=s1) is True  # re-acquire by the holder: allowed
    _, data = c.kv.get("foo")
    assert data["LockIndex"] == 1
    assert c.kv.put("foo", "1", release="foo") is False
    assert c.kv.put("foo", "2", release=s2) is False
    assert c.kv.put("foo", "2", release=s1) is True
    _, data = c.kv.get("foo")
    assert data["Value"] == b"2"
    assert not data.get("Session")
    assert data["LockIndex"] == 1
    assert c.kv.put("foo", "3", acquire=s2) is True
    _, data = c.kv.get("foo")
    assert (data["Session"], data["LockIndex"]) == (s2, 2)
    c.session.destroy(s1)
    c.session.destroy(s2)


def test_odd_keys(consul_client: Any) -> None:
    c = consul_client
    for key in ("a b/c", "ünï/cödé", "x?y", "p%20q", "deep/" * 10 + "leaf"):
        assert c.kv.put(key, key) is True, key
        _, data = c.kv.get(key)
        assert data["Key"] == key
        assert data["Value"] == key.encode()


def test_value_too_large_is_413(http: httpx.Client) -> None:
    resp = http.put("/v1/kv/big", content=b"x" * (512 * 1024 + 1))
    assert resp.status_code == 413, resp.text
    assert http.get("/v1/kv/big").status_code == 404
    ok = http.put("/v1/kv/big", content=b"x" * (512 * 1024))
    assert ok.status_code == 200


@pytest.mark.parametrize("param", ["cas", "flags"])
def test_non_numeric_params_are_400(http: httpx.Client, param: str) -> None:
    resp = http.put("/v1/kv/k", params={param: "abc"}, content=b"v")
    assert resp.status_code == 400, resp.text
