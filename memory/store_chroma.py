"""Chroma plumbing of the fact store: namespace -> collection naming, the embedded client and its
single-writer lock, the server client, and the Fact <-> Chroma record conversion.

Embedded mode: the store's files under HOME/facts/chroma. Chroma's embedded client is not safe
across processes (Chroma docs; chroma issue #3769), so one process owns the files at a time (a
portable filelock). An owner opened with `serve` (settings.store_shared: `factflow chat`,
`factflow mcp`) runs a local `chroma run` server on them, which it starts and stops, and other
processes (`factflow facts add` in a second terminal) use that server. Server mode:
FACTFLOW_CHROMA_URL names a `chroma run` server and any number of processes share it.

Each namespace (tenant) is its own collection, named `ff_<slug>_<sha256(name)[:16]>`: the hash
makes the mapping injective (`john_doe` and `john-doe` share a slug, not a collection), and the
collection's metadata records the exact name, checked on every open.
"""

from __future__ import annotations

import atexit
import hashlib
import json
import os
import re
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from filelock import FileLock, Timeout

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
    lock: FileLock | None  # held while this process owns the files (its own client or its server)
    server: subprocess.Popen[bytes] | None  # the local Chroma server this process started
    refs: int


_EMBEDDED: dict[str, _Embedded] = {}
_EMBEDDED_GUARD = threading.Lock()
_SERVER_FILE = "factflow-server.json"  # {"url", "pid"} of the local server sharing this store
_LOCK_WAIT = {True: 60.0, False: 5.0}  # s; a short-lived holder (`facts add`, `ask`) is done by then


def _served_client(path: Path) -> Any | None:
    """A client of the local server another process runs for this store, if one is up."""
    try:
        info = json.loads((path / _SERVER_FILE).read_text())
        return http_client(str(info["url"]))
    except (OSError, ValueError, KeyError, UserError):
        return None  # none, or a stale file left by a killed process (its lock is free again)


def _start_server(path: Path) -> tuple[subprocess.Popen[bytes], Any]:
    """`chroma run` on this store, on a free loopback port; returns it and a client once it answers."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = int(s.getsockname()[1])
    chroma = Path(sys.executable).with_name("chroma")
    log = (path / "factflow-server.log").open("ab")
    proc = subprocess.Popen(
        [str(chroma), "run", "--path", str(path), "--host", "127.0.0.1", "--port", str(port)],
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,  # Ctrl-C in a REPL must not kill the store under it
    )
    log.close()
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            client = http_client(url)
            break
        except UserError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                raise UserError(
                    f"the local Chroma server for {path} did not start: see {path / 'factflow-server.log'}, "
                    "or set FACTFLOW_CHROMA_URL to a server you run"
                ) from None
            time.sleep(0.2)
    (path / _SERVER_FILE).write_text(json.dumps({"url": url, "pid": proc.pid}))
    return proc, client


def acquire_embedded(path: Path, *, serve: bool = False) -> Any:
    """A client of the embedded store at `path`: one per path per process, shared across processes.

    Chroma's embedded client is not safe across processes (chroma issue #3769), so one process at
    a time owns the files, holding a portable lock (filelock). With `serve` the owner runs a local
    Chroma server on them and every other process that opens the store talks to that server; a
    plain owner keeps them to itself, and others wait a few seconds, then get a clear error.
    """
    key = str(path.resolve())
    with _EMBEDDED_GUARD:
        if key in _EMBEDDED:
            _EMBEDDED[key].refs += 1
            return _EMBEDDED[key].client
        path.mkdir(parents=True, exist_ok=True)
        client = _served_client(path)
        if client is not None:
            _EMBEDDED[key] = _Embedded(client, None, None, 1)
            return client
        # thread_local=False: Agent/MCP handles are opened and closed on different threads
        lock = FileLock(path / "factflow-writer.lock", thread_local=False)
        try:
            lock.acquire(timeout=_LOCK_WAIT[serve])
        except Timeout:
            client = _served_client(path)  # the holder may have just started serving
            if client is not None:
                _EMBEDDED[key] = _Embedded(client, None, None, 1)
                return client
            try:
                holder = (path / "factflow-writer.pid").read_text().strip() or "unknown"
            except OSError:
                holder = "unknown"
            raise UserError(
                f"the fact store at {path} is already open in another process (pid {holder}) that does not "
                "share it; close it, or share it: `factflow chat` and `factflow mcp` serve it to other "
                "processes (FACTFLOW_STORE_SHARED=1 in your app), or run `chroma run --path DIR` and set "
                "FACTFLOW_CHROMA_URL"
            ) from None
        server = None
        try:
            (path / "factflow-writer.pid").write_text(str(os.getpid()))
            (path / _SERVER_FILE).unlink(missing_ok=True)  # stale: its owner died holding the lock
            if serve:
                server, client = _start_server(path)
            else:
                import chromadb
                from chromadb.config import Settings as ChromaSettings

                client = chromadb.PersistentClient(
                    path=str(path), settings=ChromaSettings(anonymized_telemetry=False)
                )
        except BaseException:
            lock.release()
            raise
        _EMBEDDED[key] = _Embedded(client, lock, server, 1)
        return client


@atexit.register
def _stop_servers() -> None:
    """A store left open at exit must not leave its Chroma server running (it has its own session)."""
    for key, entry in list(_EMBEDDED.items()):
        entry.refs = 1
        release_embedded(Path(key))


def release_embedded(path: Path) -> None:
    key = str(path.resolve())
    with _EMBEDDED_GUARD:
        entry = _EMBEDDED.get(key)
        if entry is None:
            return
        entry.refs -= 1
        if entry.refs <= 0:
            del _EMBEDDED[key]
            if entry.server is not None:
                (path / _SERVER_FILE).unlink(missing_ok=True)  # new openers stop coming first
                entry.server.terminate()
                try:
                    entry.server.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    entry.server.kill()
            if entry.lock is not None:
                entry.lock.release()


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
