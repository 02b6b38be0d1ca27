"""SQLite persistence of the registry state (WAL, one transaction per write).

The in-memory state is authoritative for reads; every write is committed here, in a single
transaction, before the HTTP response goes out. With ``journal_mode=WAL`` and
``synchronous=NORMAL`` a commit is a ``write()`` of the WAL frames without ``fsync``: the pages
are in the OS page cache once ``commit`` returns, so a ``kill -9`` of the process loses
nothing (a power loss may lose the last transactions, as with Consul's default raft settings).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from controld.registry.errors import DataDirError
from controld.registry.model import (
    Check,
    KVEntry,
    Node,
    Service,
    Session,
    from_record,
    to_record,
)

__all__ = ["Batch", "Loaded", "Store", "open_store"]

SCHEMA_VERSION = 1
DB_NAME = "registry.db"
LOCK_NAME = "registry.lock"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (k TEXT PRIMARY KEY, v TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS nodes (name TEXT PRIMARY KEY, rec TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS services (node TEXT, id TEXT, rec TEXT NOT NULL, PRIMARY KEY (node, id));
CREATE TABLE IF NOT EXISTS checks (node TEXT, id TEXT, rec TEXT NOT NULL, PRIMARY KEY (node, id));
CREATE TABLE IF NOT EXISTS kv (key TEXT PRIMARY KEY, rec TEXT NOT NULL, value BLOB);
CREATE TABLE IF NOT EXISTS tombstones (key TEXT PRIMARY KEY, idx INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS sessions (id TEXT PRIMARY KEY, rec TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS acl (kind TEXT, id TEXT, rec TEXT NOT NULL, PRIMARY KEY (kind, id));
"""


@dataclass
class Loaded:
    """Everything read back at start."""

    index: int = 0
    meta: dict[str, str] = field(default_factory=dict)
    nodes: list[Node] = field(default_factory=list)
    services: list[Service] = field(default_factory=list)
    checks: list[Check] = field(default_factory=list)
    kv: list[KVEntry] = field(default_factory=list)
    tombstones: dict[str, int] = field(default_factory=dict)
    sessions: list[Session] = field(default_factory=list)
    #: ACL objects as (kind, record): kind is "token", "policy" or "role".
    acl: list[tuple[str, dict[str, Any]]] = field(default_factory=list)


def _dumps(value: object) -> str:
    return json.dumps(to_record(value), separators=(",", ":"))


class Batch:
    """The statements of one write transaction, collected then applied by :meth:`Store.commit`."""

    __slots__ = ("ops",)

    def __init__(self) -> None:
        self.ops: list[tuple[str, tuple[Any, ...]]] = []

    def __bool__(self) -> bool:
        return bool(self.ops)

    def put_meta(self, key: str, value: str) -> None:
        self.ops.append(("INSERT OR REPLACE INTO meta (k, v) VALUES (?, ?)", (key, value)))

    def put_node(self, node: Node) -> None:
        self.ops.append(
            ("INSERT OR REPLACE INTO nodes (name, rec) VALUES (?, ?)", (node.name, _dumps(node)))
        )

    def delete_node(self, name: str) -> None:
        self.ops.append(("DELETE FROM nodes WHERE name = ?", (name,)))

    def put_service(self, svc: Service) -> None:
        self.ops.append(
            (
                "INSERT OR REPLACE INTO services (node, id, rec) VALUES (?, ?, ?)",
                (svc.node, svc.id, _dumps(svc)),
            )
        )

    def delete_service(self, node: str, service_id: str) -> None:
        self.ops.append(("DELETE FROM services WHERE node = ? AND id = ?", (node, service_id)))

    def put_check(self, check: Check) -> None:
        self.ops.append(
            (
                "INSERT OR REPLACE INTO checks (node, id, rec) VALUES (?, ?, ?)",
                (check.node, check.check_id, _dumps(check)),
            )
        )

    def delete_check(self, node: str, check_id: str) -> None:
        self.ops.append(("DELETE FROM checks WHERE node = ? AND id = ?", (node, check_id)))

    def put_kv(self, entry: KVEntry) -> None:
        self.ops.append(
            (
                "INSERT OR REPLACE INTO kv (key, rec, value) VALUES (?, ?, ?)",
                (entry.key, _dumps(entry), entry.value),
            )
        )

    def delete_kv(self, key: str, index: int) -> None:
        self.ops.append(("DELETE FROM kv WHERE key = ?", (key,)))
        self.ops.append(
            ("INSERT OR REPLACE INTO tombstones (key, idx) VALUES (?, ?)", (key, index))
        )

    def delete_tombstone(self, key: str) -> None:
        self.ops.append(("DELETE FROM tombstones WHERE key = ?", (key,)))

    def put_session(self, session: Session) -> None:
        self.ops.append(
            (
                "INSERT OR REPLACE INTO sessions (id, rec) VALUES (?, ?)",
                (session.id, _dumps(session)),
            )
        )

    def delete_session(self, session_id: str) -> None:
        self.ops.append(("DELETE FROM sessions WHERE id = ?", (session_id,)))

    def put_acl(self, kind: str, object_id: str, value: object) -> None:
        self.ops.append(
            (
                "INSERT OR REPLACE INTO acl (kind, id, rec) VALUES (?, ?, ?)",
                (kind, object_id, _dumps(value)),
            )
        )

    def delete_acl(self, kind: str, object_id: str) -> None:
        self.ops.append(("DELETE FROM acl WHERE kind = ? AND id = ?", (kind, object_id)))


class Store:
    """An open registry database; single-threaded, used from the Trio thread only."""

    def __init__(self, path: Path, conn: sqlite3.Connection, lock_fd: int) -> None:
        self.path = path
        self._conn = conn
        self._lock_fd = lock_fd

    def commit(self, batch: Batch, index: int) -> None:
        """Apply ``batch`` and record ``index`` as the latest index, atomically.

        Raises :class:`sqlite3.Error` (nothing applied) when the write fails.
        """
        conn = self._conn
        conn.execute("BEGIN IMMEDIATE")
        try:
            for sql, params in batch.ops:
                conn.execute(sql, params)
            conn.execute("INSERT OR REPLACE INTO meta (k, v) VALUES ('index', ?)", (str(index),))
            conn.execute("COMMIT")
        except BaseException:
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
            raise

    def load(self) -> Loaded:
        """Read the whole state."""
        conn = self._conn
        out = Loaded()
        out.meta = {k: v for k, v in conn.execute("SELECT k, v FROM meta")}
        out.index = int(out.meta.get("index", "0"))
        out.nodes = [
            from_record(Node, json.loads(r)) for (r,) in conn.execute("SELECT rec FROM nodes")
        ]
        out.services = [
            from_record(Service, json.loads(r)) for (r,) in conn.execute("SELECT rec FROM services")
        ]
        out.checks = [
            from_record(Check, json.loads(r)) for (r,) in conn.execute("SELECT rec FROM checks")
        ]
        for rec, value in conn.execute("SELECT rec, value FROM kv"):
            entry = from_record(KVEntry, json.loads(rec))
            out.kv.append(
                KVEntry(
                    key=entry.key,
                    value=bytes(value) if value is not None else None,
                    flags=entry.flags,
                    session=entry.session,
                    lock_index=entry.lock_index,
                    create_index=entry.create_index,
                    modify_index=entry.modify_index,
                )
            )
        out.tombstones = {k: int(i) for k, i in conn.execute("SELECT key, idx FROM tombstones")}
        out.sessions = [
            from_record(Session, json.loads(r)) for (r,) in conn.execute("SELECT rec FROM sessions")
        ]
        out.acl = [(kind, json.loads(r)) for kind, r in conn.execute("SELECT kind, rec FROM acl")]
        return out

    def close(self) -> None:
        """Checkpoint and close the database, then release the data-dir lock."""
        try:
            with contextlib.suppress(sqlite3.Error):
                self._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            self._conn.close()
        finally:
            os.close(self._lock_fd)


def _check_dir(path: Path) -> None:
    if path.exists() and not path.is_dir():
        raise DataDirError(f"data dir {path}: exists and is not a directory")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DataDirError(f"data dir {path}: cannot create it: {exc.strerror}") from exc
    if not os.access(path, os.R_OK | os.W_OK | os.X_OK):
        raise DataDirError(f"data dir {path}: not readable and writable by this user")
    db = path / DB_NAME
    if db.exists() and (not db.is_file() or not os.access(db, os.R_OK | os.W_OK)):
        raise DataDirError(f"database {db}: not a readable and writable file")


def _lock(path: Path) -> int:
    lock_path = path / LOCK_NAME
    try:
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    except OSError as exc:
        raise DataDirError(f"data dir {path}: cannot open {lock_path}: {exc.strerror}") from exc
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        os.close(fd)
        raise DataDirError(f"data dir {path}: in use by another registry process") from exc
    return fd


def open_store(path: Path) -> Store:
    """Open (creating if needed) the registry database in the data dir ``path``.

    Raises :class:`DataDirError` naming the path and the reason when the directory or the
    database can't be used; an existing database is never modified in that case.
    """
    path = Path(path)
    _check_dir(path)
    lock_fd = _lock(path)
    db = path / DB_NAME
    try:
        conn = _connect(db)
    except BaseException:
        os.close(lock_fd)
        raise
    return Store(db, conn, lock_fd)


def _connect(db: Path) -> sqlite3.Connection:
    existed = db.exists() and db.stat().st_size > 0
    try:
        conn = sqlite3.connect(db, isolation_level=None, check_same_thread=False)
    except sqlite3.Error as exc:
        raise DataDirError(f"database {db}: cannot open: {exc}") from exc
    try:
        if existed:
            _verify(conn, db)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.executescript(_SCHEMA)
        conn.execute(
            "INSERT OR IGNORE INTO meta (k, v) VALUES ('schema', ?)", (str(SCHEMA_VERSION),)
        )
    except sqlite3.Error as exc:
        conn.close()
        raise DataDirError(f"database {db}: unusable: {exc}") from exc
    except DataDirError:
        conn.close()
        raise
    return conn


def _verify(conn: sqlite3.Connection, db: Path) -> None:
    """Refuse a database that is corrupt or not ours, before anything writes to it."""
    try:
        (result,) = conn.execute("PRAGMA quick_check").fetchone()
    except sqlite3.Error as exc:
        raise DataDirError(f"database {db}: not a registry database: {exc}") from exc
    if result != "ok":
        raise DataDirError(f"database {db}: corrupt: {result}")
    tables = {name for (name,) in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    if "meta" not in tables:
        raise DataDirError(f"database {db}: not a registry database (no meta table)")
    row = conn.execute("SELECT v FROM meta WHERE k = 'schema'").fetchone()
    if row is None or row[0] != str(SCHEMA_VERSION):
        found = row[0] if row else "none"
        raise DataDirError(
            f"database {db}: schema version {found}, this registry reads version {SCHEMA_VERSION}"
        )


def iter_ops(batch: Batch) -> Iterator[str]:
    """The SQL of a batch (for debugging and tests)."""
    for sql, _ in batch.ops:
        yield sql
