"""Chroma plumbing of the fact store: namespace -> collection naming, the embedded client and its
single-writer lock, the server client, and the Fact <-> Chroma record conversion.

Embedded mode: a Chroma PersistentClient under HOME/facts/chroma. Chroma's embedded client is not
safe across processes (Chroma docs; chroma issue #3769), so the first process takes an exclusive
file lock and a second one gets a clear error. Server mode: FACTFLOW_CHROMA_URL names a
`chroma run` server and any number of processes share it.

Each namespace (tenant) is its own collection, named `ff_<slug>_<sha256(name)[:16]>`: the hash
makes the mapping injective (`john_doe` and `john-doe` share a slug, not a collection), and the
collection's metadata records the exact name, checked on every open.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
import threading
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from factflow.errors import UserError
from factflow.memory.facts import ClaimVerdict, Fact

__all__ = [
    "NAMESPACE_RE",
    "OPEN_END",
    "RESERVED_KEYS",
    "validate_namespace",
    "collection_name",
    "text_sha",
    "to_ts",
    "from_ts",
    "to_meta",
    "from_meta",
    "acquire_embedded",
    "release_embedded",
    "http_client",
    "unreachable_message",
    "is_not_found",
]

NAMESPACE_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:@\-]{0,127}$")
OPEN_END = 4.0e12  # valid_to of a fact still valid (Chroma metadata cannot hold None)
_RESERVED = "namespace origin source_ids created_at valid_from valid_to superseded_by text_sha verification"
RESERVED_KEYS = frozenset(_RESERVED.split())


def validate_namespace(name: str) -> str:
    if not isinstance(name, str) or not NAMESPACE_RE.match(name):
        raise UserError(
            f"invalid namespace {name!r}: use 1-128 characters of letters, digits and . _ : @ - "
            "starting with a letter or digit"
        )
    return name


def collection_name(namespace: str) -> str:
    """Injective, Chroma-valid (3-512 chars of [a-zA-Z0-9._-]) collection name for a namespace."""
    validate_namespace(namespace)
    slug = re.sub(r"[^a-zA-Z0-9]+", "-", namespace)[:40].strip("-") or "ns"
    return f"ff_{slug}_{hashlib.sha256(namespace.encode()).hexdigest()[:16]}"


def to_ts(dt: datetime) -> float:
    return dt.timestamp()


def from_ts(ts: float) -> datetime:
    return datetime.fromtimestamp(ts, UTC)


def text_sha(text: str) -> str:
    """Hash of the whitespace- and case-normalised text: finds an identical still-valid fact."""
    return hashlib.sha256(" ".join(text.split()).lower().encode()).hexdigest()[:32]


def to_meta(f: Fact) -> dict[str, Any]:
    bad = RESERVED_KEYS & set(f.metadata)
    if bad:
        raise UserError(f"metadata keys {sorted(bad)} are reserved: rename them")
    return {
        **f.metadata,
        "namespace": f.namespace,
        "origin": f.origin,
        "source_ids": json.dumps(f.source_ids),
        "created_at": to_ts(f.created_at),
        "valid_from": to_ts(f.valid_from),
        "valid_to": to_ts(f.valid_to) if f.valid_to else OPEN_END,
        "superseded_by": f.superseded_by or "",
        "text_sha": text_sha(f.text),
        "verification": json.dumps([v.model_dump(mode="json") for v in f.verification])
        if f.verification is not None
        else "",
    }


def from_meta(fid: str, text: str, meta: dict[str, Any]) -> Fact:
    ver = meta.get("verification") or ""
    return Fact(
        id=fid,
        text=text,
        namespace=meta["namespace"],
        origin=meta["origin"],
        source_ids=json.loads(meta.get("source_ids") or "[]"),
        created_at=from_ts(meta["created_at"]),
        valid_from=from_ts(meta["valid_from"]),
        valid_to=None if meta["valid_to"] >= OPEN_END else from_ts(meta["valid_to"]),
        superseded_by=meta.get("superseded_by") or None,
        metadata={k: v for k, v in meta.items() if k not in RESERVED_KEYS},
        verification=[ClaimVerdict.model_validate(v) for v in json.loads(ver)] if ver else None,
    )


def is_not_found(exc: Exception) -> bool:
    """True when Chroma says the collection does not exist (not a transport or server failure)."""
    from chromadb.errors import NotFoundError

    return isinstance(exc, NotFoundError) or (
        isinstance(exc, ValueError) and "does not exist" in str(exc).lower()
    )


# --------------------------------------------------------------------------- embedded client


@dataclass
class _Embedded:
    client: Any
    lock_fd: int
    refs: int


_EMBEDDED: dict[str, _Embedded] = {}
_EMBEDDED_GUARD = threading.Lock()


def acquire_embedded(path: Path) -> Any:
    """One PersistentClient per path per process, guarded by an exclusive flock across processes."""
    key = str(path.resolve())
    with _EMBEDDED_GUARD:
        if key in _EMBEDDED:
            _EMBEDDED[key].refs += 1
            return _EMBEDDED[key].client
        path.mkdir(parents=True, exist_ok=True)
        lock_path = path / "factflow-writer.lock"
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise UserError(
                f"the fact store at {path} is already open in another process (pid {holder}); close it, "
                "or serve the store with `chroma run --path DIR` and set FACTFLOW_CHROMA_URL to share it"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        import chromadb
        from chromadb.config import Settings as ChromaSettings

        client = chromadb.PersistentClient(
            path=str(path), settings=ChromaSettings(anonymized_telemetry=False)
        )
        _EMBEDDED[key] = _Embedded(client, fd, 1)
        return client


def release_embedded(path: Path) -> None:
    key = str(path.resolve())
    with _EMBEDDED_GUARD:
        entry = _EMBEDDED.get(key)
        if entry is None:
            return
        entry.refs -= 1
        if entry.refs <= 0:
            del _EMBEDDED[key]
            fcntl.flock(entry.lock_fd, fcntl.LOCK_UN)
            os.close(entry.lock_fd)


# --------------------------------------------------------------------------- server client


def http_client(url: str) -> Any:
    from urllib.parse import urlparse

    import chromadb
    from chromadb.config import Settings as ChromaSettings

    u = urlparse(url if "://" in url else f"http://{url}")
    if not u.hostname:
        raise UserError(f"bad FACTFLOW_CHROMA_URL {url!r}: use http://HOST:PORT")
    try:
        client = chromadb.HttpClient(
            host=u.hostname,
            port=u.port or (443 if u.scheme == "https" else 8000),
            ssl=u.scheme == "https",
            settings=ChromaSettings(anonymized_telemetry=False),
        )
        client.heartbeat()
    except Exception as exc:
        raise UserError(unreachable_message(url, exc)) from None
    return client


def unreachable_message(url: str, exc: BaseException) -> str:
    return (
        f"cannot reach the Chroma server at {url} ({type(exc).__name__}): start it with "
        "`chroma run --path DIR --port N` or unset FACTFLOW_CHROMA_URL"
    )
