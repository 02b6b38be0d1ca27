"""The data dir: created when missing, refused (untouched) when unusable."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from controld.registry.errors import DataDirError
from controld.registry.model import Node
from controld.registry.persist import DB_NAME, open_store
from controld.registry.state import State


def test_a_missing_data_dir_is_created(tmp_path: Path) -> None:
    target = tmp_path / "a" / "b"
    store = open_store(target)
    store.close()
    assert (target / DB_NAME).is_file()


def test_a_file_is_not_a_data_dir(tmp_path: Path) -> None:
    path = tmp_path / "file"
    path.write_text("hello")
    with pytest.raises(DataDirError, match=r"file: exists and is not a directory"):
        open_store(path)
    assert path.read_text() == "hello"


def test_a_corrupt_database_is_refused_untouched(tmp_path: Path) -> None:
    db = tmp_path / DB_NAME
    garbage = b"this is not sqlite" * 100
    db.write_bytes(garbage)
    with pytest.raises(DataDirError, match=str(db)):
        open_store(tmp_path)
    assert db.read_bytes() == garbage
    assert not (tmp_path / (DB_NAME + "-wal")).exists()


def test_a_foreign_database_is_refused(tmp_path: Path) -> None:
    db = tmp_path / DB_NAME
    with sqlite3.connect(db) as conn:
        conn.execute("CREATE TABLE other (x)")
    conn.close()
    with pytest.raises(DataDirError, match="not a registry database"):
        open_store(tmp_path)


def test_a_data_dir_in_use_is_refused(tmp_path: Path) -> None:
    store = open_store(tmp_path)
    try:
        with pytest.raises(DataDirError, match="in use"):
            open_store(tmp_path)
    finally:
        store.close()
    open_store(tmp_path).close()


def test_a_database_path_that_is_a_directory_is_refused(tmp_path: Path) -> None:
    (tmp_path / DB_NAME).mkdir()
    with pytest.raises(DataDirError, match="not a readable and writable file"):
        open_store(tmp_path)


def test_the_index_never_goes_backwards_across_restarts(tmp_path: Path) -> None:
    store = open_store(tmp_path)
    state = State(store)
    with state.write() as txn:
        txn.put_node(Node(name="n", address="a"))
    with state.write() as txn:
        txn.delete_node("n")
    index = state.index
    store.close()
    store = open_store(tmp_path)
    try:
        state = State(store)
        assert state.index == index
        with state.write() as txn:
            txn.put_node(Node(name="n", address="a"))
        assert state.index == index + 1
    finally:
        store.close()
