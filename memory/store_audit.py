"""The fact store's audit log: one row per accept / reject / invalidate / delete / error, in SQLite.

Rows are `AuditEntry` JSON keyed by id, indexed by (namespace, at). SQLite in WAL mode lets
several processes on one machine append to the same log. Stores written before the log moved
here kept it in a Chroma collection `ff__audit` (with a dummy embedding); `migrate_from_chroma`
copies those entries in (idempotent: keyed by id) and only then drops the collection, so a crash
in between loses nothing.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from pathlib import Path
from typing import Any

from factflow.memory.facts import AuditEntry

__all__ = ["AuditLog", "LEGACY_AUDIT_COLLECTION", "ERASED"]

LEGACY_AUDIT_COLLECTION = "ff__audit"
ERASED = "[erased]"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS audit (
    id TEXT PRIMARY KEY,
    namespace TEXT NOT NULL,
    at REAL NOT NULL,
    action TEXT NOT NULL,
    entry TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS audit_ns_at ON audit (namespace, at);
"""


class AuditLog:
    """Append-only (except erasure) audit entries of every namespace of one store."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._lock = threading.Lock()
        self._db = sqlite3.connect(str(path), timeout=30.0, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.executescript(_SCHEMA)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def add(self, entries: list[AuditEntry]) -> None:
        rows = [(e.id, e.namespace, e.at.timestamp(), e.action, e.model_dump_json()) for e in entries]
        with self._lock:
            self._db.executemany("INSERT OR IGNORE INTO audit VALUES (?, ?, ?, ?, ?)", rows)

    def entries(self, namespace: str, *, limit: int | None = None) -> list[AuditEntry]:
        """Entries of a namespace, oldest first (the last `limit` if given)."""
        sql = "SELECT entry FROM audit WHERE namespace = ? ORDER BY at DESC, rowid DESC"
        args: tuple[Any, ...] = (namespace,)
        if limit:
            sql += " LIMIT ?"
            args = (namespace, limit)
        with self._lock:
            rows = self._db.execute(sql, args).fetchall()
        return [AuditEntry.model_validate_json(r[0]) for r in reversed(rows)]

    def scrub(self, namespace: str, fact_id: str, text: str) -> int:
        """Erase a deleted fact's text from every entry of the namespace; returns entries changed.

        Every string holding the text loses it; an entry that names the fact (wrote, cited,
        invalidated or compared against it) loses all its free text (answer, claims, reasons),
        since they may quote or reword it. Ids, actions and times stay.
        """
        changed = 0
        with self._lock:
            rows = self._db.execute(
                "SELECT id, entry FROM audit WHERE namespace = ?", (namespace,)
            ).fetchall()
            for row_id, raw in rows:
                data = json.loads(raw)
                new = _erase(data) if fact_id in raw else _replace(data, text.strip())
                if new != data:
                    self._db.execute("UPDATE audit SET entry = ? WHERE id = ?", (json.dumps(new), row_id))
                    changed += 1
        return changed

    def migrate_from_chroma(self, client: Any) -> int:
        """Move the entries of a legacy Chroma audit collection here; returns how many moved."""
        from factflow.memory.store_chroma import is_not_found

        try:
            col = client.get_collection(LEGACY_AUDIT_COLLECTION, embedding_function=None)
        except Exception as exc:
            if is_not_found(exc):
                return 0
            raise
        docs = col.get(include=["documents"])["documents"] or []
        self.add([AuditEntry.model_validate_json(d) for d in docs])
        client.delete_collection(LEGACY_AUDIT_COLLECTION)
        return len(docs)


_KEEP = frozenset(
    ["id", "at", "namespace", "action", "fact_ids", "fact_id", "cited_ids", "duplicate_of", "contradicts"]
    + ["verifier", "label", "citation_by"]
)


def _erase(value: Any, key: str = "") -> Any:
    """Every free-text string replaced by ERASED (ids and labels kept)."""
    if isinstance(value, str):
        return value if key in _KEEP or not value else ERASED
    if isinstance(value, list):
        return [_erase(v, key) for v in value]
    if isinstance(value, dict):
        return {k: _erase(v, k) for k, v in value.items()}
    return value


def _replace(value: Any, text: str) -> Any:
    if isinstance(value, str):
        return value.replace(text, ERASED) if text and text in value else value
    if isinstance(value, list):
        return [_replace(v, text) for v in value]
    if isinstance(value, dict):
        return {k: _replace(v, text) for k, v in value.items()}
    return value
