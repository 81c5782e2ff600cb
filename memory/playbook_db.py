"""SQLite (WAL) persistence for the playbook: current bullets, an append-only op log, versions.

One applied delta = one `BEGIN IMMEDIATE` transaction that upserts the touched bullets, appends
the resolved ops to `ops`, writes one `versions` row and bumps `meta.version`. Readers never block
writers (WAL). A process killed mid-transaction leaves no trace: SQLite rolls the WAL frames of an
uncommitted transaction back on the next open, so the last committed version is what you get.
`synchronous=NORMAL` is durable against process crashes; a power cut may lose the newest commits
but never corrupts the file.

Any version k is `replay(ops of versions 1..k)` from an empty state with the stored sections.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
from filelock import FileLock
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter

from factflow.memory.bullets import Bullet, LogOp, PlaybookState

__all__ = ["PlaybookDB", "VersionInfo"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS bullets (id TEXT PRIMARY KEY, section TEXT NOT NULL, data TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS versions (
    version INTEGER PRIMARY KEY, created_at REAL NOT NULL, author TEXT NOT NULL, reason TEXT NOT NULL,
    trace_id TEXT, kind TEXT NOT NULL, base_version INTEGER, n_applied INTEGER NOT NULL,
    n_rejected INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS ops (
    version INTEGER NOT NULL, seq INTEGER NOT NULL, op TEXT NOT NULL, PRIMARY KEY (version, seq)
);
CREATE TABLE IF NOT EXISTS embeddings (
    bullet_id TEXT PRIMARY KEY, content TEXT NOT NULL, vec BLOB NOT NULL
);
"""
_OP = TypeAdapter(LogOp)
_PATH_LOCKS: dict[str, threading.Lock] = {}
_PATH_LOCKS_GUARD = threading.Lock()

# How often a writer waiting on another process re-tries the lock file: short, because a queue of
# writers would otherwise spend its time asleep (SQLite's own busy handler sleeps up to 100 ms).
_LOCK_POLL_S = 0.002


def _path_lock(path: Path) -> threading.Lock:
    with _PATH_LOCKS_GUARD:
        return _PATH_LOCKS.setdefault(str(path.resolve()), threading.Lock())


class VersionInfo(BaseModel):
    """One row of the history: who changed the playbook, when, why, and with which ops."""

    model_config = ConfigDict(extra="forbid")

    version: int
    created_at: float
    author: str
    reason: str
    trace_id: str | None
    kind: str = Field(description="delta | refine | rollback | import")
    base_version: int | None
    n_applied: int
    n_rejected: int
    ops: list[LogOp] = Field(default_factory=list)


class PlaybookDB:
    """Thin typed layer over one SQLite file; one connection per instance, guarded by a lock."""

    def __init__(self, path: Path, sections: dict[str, str]) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        # isolation_level=None: we issue BEGIN IMMEDIATE ourselves so the write lock is taken
        # before we read the version (no read-then-upgrade deadlocks between processes).
        self._conn = sqlite3.connect(str(path), timeout=60.0, isolation_level=None, check_same_thread=False)
        self._lock = threading.RLock()
        # Writers queue on a thread lock + a lock file before BEGIN IMMEDIATE: SQLite's busy handler
        # sleeps up to 100 ms between retries, so with 8 writers most time went to sleeping. The
        # lock file (filelock: flock on POSIX, msvcrt on Windows) is dropped by the OS if we are killed.
        self._writer_lock = _path_lock(path)
        self._file_lock = FileLock(str(path) + ".lock", thread_local=False)
        self._conn.execute("PRAGMA busy_timeout=60000")
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.execute("PRAGMA synchronous=NORMAL")
        with self.transaction():
            for stmt in _SCHEMA.strip().split(";"):
                if stmt.strip():
                    self._conn.execute(stmt)
            if self._meta("version") is None:
                self._set_meta("version", "0")
                self._set_meta("next_id", "1")
                self._set_meta("sections", json.dumps(sections))

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """Write transaction holding the database write lock from the first statement."""
        with self._lock, self._writer_lock, self._file_lock.acquire(poll_interval=_LOCK_POLL_S):
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                yield self._conn
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            else:
                self._conn.execute("COMMIT")

    def _meta(self, key: str) -> str | None:
        row = self._conn.execute("SELECT value FROM meta WHERE key=?", (key,)).fetchone()
        return None if row is None else str(row[0])

    def _set_meta(self, key: str, value: str) -> None:
        self._conn.execute("INSERT OR REPLACE INTO meta(key, value) VALUES (?, ?)", (key, value))

    def version(self) -> int:
        with self._lock:
            return int(self._meta("version") or 0)

    def sections(self) -> dict[str, str]:
        with self._lock:
            return dict(json.loads(self._meta("sections") or "{}"))

    def load_state(self) -> PlaybookState:
        """The current state in one read snapshot."""
        with self._lock:
            self._conn.execute("BEGIN")
            try:
                version = int(self._meta("version") or 0)
                next_id = int(self._meta("next_id") or 1)
                sections = json.loads(self._meta("sections") or "{}")
                rows = self._conn.execute("SELECT data FROM bullets ORDER BY rowid").fetchall()
            finally:
                self._conn.execute("COMMIT")
        bullets = {b.id: b for b in (Bullet.model_validate_json(r[0]) for r in rows)}
        return PlaybookState(sections=sections, bullets=bullets, version=version, next_id=next_id)

    def log_since(self, version: int, until: int | None = None) -> list[VersionInfo]:
        """Versions (version, until] with their ops, oldest first."""
        with self._lock:
            hi = until if until is not None else 2**62
            rows = self._conn.execute(
                "SELECT version, created_at, author, reason, trace_id, kind, base_version, n_applied, "
                "n_rejected FROM versions WHERE version > ? AND version <= ? ORDER BY version",
                (version, hi),
            ).fetchall()
            op_rows = self._conn.execute(
                "SELECT version, op FROM ops WHERE version > ? AND version <= ? ORDER BY version, seq",
                (version, hi),
            ).fetchall()
        ops: dict[int, list[LogOp]] = {}
        for v, op in op_rows:
            ops.setdefault(int(v), []).append(_OP.validate_json(op))
        keys = list(VersionInfo.model_fields)[:-1]
        return [VersionInfo(**dict(zip(keys, r, strict=True)), ops=ops.get(int(r[0]), [])) for r in rows]

    def write_version(
        self,
        conn: sqlite3.Connection,
        new: PlaybookState,
        info: VersionInfo,
        changed: set[str],
        removed: set[str],
    ) -> None:
        """Inside `transaction()`: persist the touched bullets, the ops and the version row."""
        if removed:
            conn.executemany("DELETE FROM bullets WHERE id=?", [(i,) for i in removed])
        rows = [(i, new.bullets[i].section, new.bullets[i].model_dump_json()) for i in changed]
        # UPSERT keeps the rowid (= insertion order) of an updated bullet
        conn.executemany(
            "INSERT INTO bullets(id, section, data) VALUES (?, ?, ?) "
            "ON CONFLICT(id) DO UPDATE SET section=excluded.section, data=excluded.data",
            rows,
        )
        conn.executemany(
            "INSERT INTO ops(version, seq, op) VALUES (?, ?, ?)",
            [(info.version, k, _OP.dump_json(op).decode()) for k, op in enumerate(info.ops)],
        )
        conn.execute(
            "INSERT INTO versions VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                info.version,
                info.created_at,
                info.author,
                info.reason,
                info.trace_id,
                info.kind,
                info.base_version,
                info.n_applied,
                info.n_rejected,
            ),
        )
        self._set_meta("version", str(new.version))
        self._set_meta("next_id", str(new.next_id))

    def has_trace(self, trace_id: str) -> bool:
        """A version with this trace id is committed (used to apply a resumed batch only once)."""
        with self._lock:
            row = self._conn.execute(
                "SELECT 1 FROM versions WHERE trace_id=? LIMIT 1", (trace_id,)
            ).fetchone()
        return row is not None

    def read_version_locked(self) -> int:
        """Inside `transaction()`: the committed version (the write lock is already ours)."""
        return int(self._meta("version") or 0)

    # Embedding cache: vectors survive restarts so de-duplication never re-embeds old bullets.
    def load_embeddings(self) -> dict[str, tuple[str, np.ndarray]]:
        with self._lock:
            rows = self._conn.execute("SELECT bullet_id, content, vec FROM embeddings").fetchall()
        return {r[0]: (r[1], np.frombuffer(r[2], dtype=np.float32)) for r in rows}

    def save_embeddings(self, items: list[tuple[str, str, np.ndarray]]) -> None:
        if not items:
            return
        with self.transaction() as conn:
            conn.executemany(
                "INSERT OR REPLACE INTO embeddings(bullet_id, content, vec) VALUES (?, ?, ?)",
                [(i, c, np.asarray(v, dtype=np.float32).tobytes()) for i, c, v in items],
            )

    def integrity_ok(self) -> bool:
        with self._lock:
            return self._conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
