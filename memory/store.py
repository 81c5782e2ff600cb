"""FactStore: facts with provenance in Chroma, hybrid retrieval, and gated write-back.

Embedded mode (default): a Chroma PersistentClient under HOME/facts/chroma. Chroma's embedded
client is not safe across processes (Chroma docs; chroma issue #3769), so the first process
takes an exclusive file lock and a second one gets a clear error. Server mode: set
FACTFLOW_CHROMA_URL to a `chroma run` server and any number of processes share it.

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
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, ValidationError

from factflow.errors import UserError
from factflow.memory.facts import (
    AuditEntry,
    ClaimVerdict,
    Fact,
    Origin,
    ScoredFact,
    WritebackDecision,
    utcnow,
)
from factflow.memory.retrieval import LexicalIndex, cap_model_share, rrf_fuse
from factflow.memory.verify import (
    GroundingVerifier,
    LLMJudgeVerifier,
    Neighbor,
    NLIVerifier,
    Verifier,
    judge_claim,
    looks_like_instruction,
    split_claims,
    split_sentences,
)
from factflow.settings import Settings, get_settings

__all__ = ["FactStore", "collection_name", "validate_namespace", "chunk_text", "NAMESPACE_RE"]

NAMESPACE_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:@\-]{0,127}$")
_OPEN_END = 4.0e12  # valid_to of a fact still valid (Chroma metadata cannot hold None)
_AUDIT = "ff__audit"
_RESERVED = {
    "namespace",
    "origin",
    "source_ids",
    "created_at",
    "valid_from",
    "valid_to",
    "superseded_by",
    "text_sha",
    "verification",
}


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


def _ts(dt: datetime) -> float:
    return dt.timestamp()


def _dt(ts: float) -> datetime:
    return datetime.fromtimestamp(ts, UTC)


def _sha(text: str) -> str:
    return hashlib.sha256(" ".join(text.split()).lower().encode()).hexdigest()[:32]


def chunk_text(text: str, max_chars: int) -> list[tuple[str, str]]:
    """(section, chunk) pairs: Markdown headings start sections, paragraphs are packed up to
    max_chars, a longer paragraph is split on sentences (a longer sentence is cut hard)."""
    sections: list[tuple[str, list[str]]] = [("", [])]
    heading_path: list[str] = []
    for para in re.split(r"\n\s*\n", text):
        lines = para.strip().splitlines()
        body: list[str] = []
        for line in lines:
            m = re.match(r"^(#{1,6})\s+(.*)$", line.strip())
            if m:
                if body:
                    sections[-1][1].append("\n".join(body))
                    body = []
                heading_path = heading_path[: len(m.group(1)) - 1] + [m.group(2).strip()]
                sections.append((" > ".join(heading_path), []))
            else:
                body.append(line)
        if "\n".join(body).strip():
            sections[-1][1].append("\n".join(body).strip())
    out: list[tuple[str, str]] = []
    for section, paras in sections:
        pieces: list[str] = []
        for p in paras:
            if len(p) <= max_chars:
                pieces.append(p)
                continue
            for s in split_sentences(p):
                pieces.extend(s[i : i + max_chars] for i in range(0, len(s), max_chars))
        buf = ""
        for piece in pieces:
            if buf and len(buf) + 1 + len(piece) > max_chars:
                out.append((section, buf))
                buf = ""
            buf = f"{buf}\n{piece}" if buf else piece
        if buf:
            out.append((section, buf))
    return out


class _JsonlRecord(BaseModel):
    model_config = ConfigDict(extra="forbid")
    text: str
    id: str | None = None
    source: str | None = None
    valid_from: datetime | None = None
    metadata: dict[str, str | int | float | bool] = {}


# --------------------------------------------------------------------------- embedded lock


@dataclass
class _Embedded:
    client: Any
    lock_fd: int
    refs: int


_EMBEDDED: dict[str, _Embedded] = {}
_EMBEDDED_GUARD = threading.Lock()


def _acquire_embedded(path: Path) -> Any:
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


def _release_embedded(path: Path) -> None:
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


def _http_client(url: str) -> Any:
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
        raise UserError(
            f"cannot reach the Chroma server at {url} ({type(exc).__name__}): start it with "
            "`chroma run --path DIR --port N` or unset FACTFLOW_CHROMA_URL"
        ) from None
    return client


# --------------------------------------------------------------------------- the store


@dataclass
class _LexCache:
    key: tuple[int, int]
    index: LexicalIndex
    valid_from: np.ndarray
    valid_to: np.ndarray
    pos: dict[str, int]


class FactStore:
    """Facts per namespace in Chroma; `search` is hybrid; `propose` runs the write-back gate."""

    def __init__(self, client: Any, settings: Settings, embedded_path: Path | None = None) -> None:
        self._client = client
        self.settings = settings
        self.embedded_path = embedded_path
        self._cols: dict[str, Any] = {}
        self._lex: dict[str, _LexCache] = {}
        self._writes: dict[str, int] = {}
        self._closed = False
        self._verifiers: list[Verifier] | None = None
        self._audit = client.get_or_create_collection(
            _AUDIT, metadata={"factflow": "audit"}, embedding_function=None
        )
        self.collection(settings.namespace, create=True)  # the configured namespace always exists

    # -- lifecycle ---------------------------------------------------------------------------

    @classmethod
    def open(cls, settings: Settings | None = None, *, path: Path | None = None) -> FactStore:
        """Embedded store under HOME/facts/chroma (or `path`), or the server at settings.chroma_url."""
        settings = settings or get_settings()
        if settings.chroma_url and path is None:
            return cls(_http_client(settings.chroma_url), settings)
        path = Path(path or settings.home / "facts" / "chroma").expanduser()
        client = _acquire_embedded(path)
        try:
            return cls(client, settings, embedded_path=path)
        except Exception:
            _release_embedded(path)
            raise

    def close(self) -> None:
        if not self._closed and self.embedded_path is not None:
            _release_embedded(self.embedded_path)
        self._closed = True

    def __enter__(self) -> FactStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- namespaces --------------------------------------------------------------------------

    def _ns(self, namespace: str | None) -> str:
        if self._closed:
            raise UserError("this FactStore is closed: open a new one with FactStore.open()")
        return validate_namespace(namespace or self.settings.namespace)

    def collection(self, namespace: str | None = None, *, create: bool = False) -> Any:
        ns = self._ns(namespace)
        if ns in self._cols:
            return self._cols[ns]
        name = collection_name(ns)
        if create:
            col = self._client.get_or_create_collection(
                name,
                metadata={"factflow_namespace": ns},
                configuration={"hnsw": {"space": "cosine"}},
                embedding_function=None,
            )
        else:
            try:
                col = self._client.get_collection(name, embedding_function=None)
            except Exception:
                known = ", ".join(self.namespaces()[:10]) or "none"
                raise UserError(
                    f"unknown namespace {ns!r} (known: {known}): check the spelling or add a fact there first"
                ) from None
        if (col.metadata or {}).get("factflow_namespace") != ns:
            raise UserError(f"collection {name} does not belong to namespace {ns!r}: the store is corrupted")
        self._cols[ns] = col
        return col

    def namespaces(self) -> list[str]:
        names = []
        for col in self._client.list_collections():
            ns = (col.metadata or {}).get("factflow_namespace")
            if ns:
                names.append(ns)
        return sorted(names)

    def count(self, namespace: str | None = None) -> int:
        return int(self.collection(namespace).count())

    # -- conversion --------------------------------------------------------------------------

    def _check_text(self, text: str, what: str = "fact") -> str:
        if not isinstance(text, str) or not text.strip():
            raise UserError(f"the {what} text is empty: pass a non-empty sentence")
        if len(text) > self.settings.fact_max_chars:
            raise UserError(
                f"the {what} text has {len(text)} characters, over the {self.settings.fact_max_chars} limit: "
                "split it or use `factflow facts ingest` (which chunks)"
            )
        return text.strip()

    @staticmethod
    def _to_meta(f: Fact) -> dict[str, Any]:
        bad = _RESERVED & set(f.metadata)
        if bad:
            raise UserError(f"metadata keys {sorted(bad)} are reserved: rename them")
        return {
            **f.metadata,
            "namespace": f.namespace,
            "origin": f.origin,
            "source_ids": json.dumps(f.source_ids),
            "created_at": _ts(f.created_at),
            "valid_from": _ts(f.valid_from),
            "valid_to": _ts(f.valid_to) if f.valid_to else _OPEN_END,
            "superseded_by": f.superseded_by or "",
            "text_sha": _sha(f.text),
            "verification": json.dumps([v.model_dump(mode="json") for v in f.verification])
            if f.verification is not None
            else "",
        }

    @staticmethod
    def _from_meta(fid: str, text: str, meta: dict[str, Any]) -> Fact:
        ver = meta.get("verification") or ""
        return Fact(
            id=fid,
            text=text,
            namespace=meta["namespace"],
            origin=meta["origin"],
            source_ids=json.loads(meta.get("source_ids") or "[]"),
            created_at=_dt(meta["created_at"]),
            valid_from=_dt(meta["valid_from"]),
            valid_to=None if meta["valid_to"] >= _OPEN_END else _dt(meta["valid_to"]),
            superseded_by=meta.get("superseded_by") or None,
            metadata={k: v for k, v in meta.items() if k not in _RESERVED},
            verification=[ClaimVerdict.model_validate(v) for v in json.loads(ver)] if ver else None,
        )

    def _embed(self, texts: list[str]) -> np.ndarray:
        from factflow.memory.embed import get_embedder

        return get_embedder().embed(texts)

    def _write(self, ns: str, facts: list[Fact]) -> None:
        """Embed and upsert; returns only after Chroma has acknowledged (durable in its WAL)."""
        if not facts:
            return
        col = self.collection(ns, create=True)
        vecs = self._embed([f.text for f in facts])
        col.upsert(
            ids=[f.id for f in facts],
            embeddings=vecs,
            documents=[f.text for f in facts],
            metadatas=[self._to_meta(f) for f in facts],
        )
        self._writes[ns] = self._writes.get(ns, 0) + 1

    # -- writes ------------------------------------------------------------------------------

    def teach(
        self,
        text: str,
        *,
        namespace: str | None = None,
        source_ids: Sequence[str] = (),
        metadata: dict[str, str | int | float | bool] | None = None,
        valid_from: datetime | None = None,
        supersedes: str | None = None,
        origin: Origin = "human",
    ) -> Fact:
        """Store one fact as given (origin human). Teaching a still-valid text again returns it."""
        ns = self._ns(namespace)
        text = self._check_text(text)
        col = self.collection(ns, create=True)
        same = col.get(
            where={"$and": [{"text_sha": _sha(text)}, {"valid_to": {"$gt": time.time()}}]}, limit=1
        )
        if same["ids"] and supersedes is None:
            return self._from_meta(same["ids"][0], same["documents"][0], same["metadatas"][0])
        fact = Fact(
            id=f"f-{uuid.uuid4().hex[:16]}",
            text=text,
            namespace=ns,
            origin=origin,
            source_ids=list(source_ids),
            metadata=dict(metadata or {}),
            valid_from=valid_from or utcnow(),
        )
        self._write(ns, [fact])
        if supersedes:
            self.invalidate(supersedes, namespace=ns, superseded_by=fact.id, reason="superseded")
        return fact

    def ingest(
        self,
        path: str | Path,
        *,
        namespace: str | None = None,
        batch_size: int = 64,
        on_batch: Callable[[list[Fact]], None] | None = None,
        progress: bool = True,
    ) -> list[Fact]:
        """Ingest a text, Markdown or JSONL file as document facts, chunked, with provenance.

        Ids are derived from (namespace, file content, chunk index), so ingesting the same file
        again (e.g. after a crash) upserts instead of duplicating. `on_batch` is called after
        each batch is acknowledged by Chroma.
        """
        ns = self._ns(namespace)
        p = Path(path).expanduser()
        if not p.is_file():
            raise UserError(f"no file at {p}: pass a path to a .txt, .md or .jsonl file")
        try:
            raw = p.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            raise UserError(f"{p} is not UTF-8 text: convert it to UTF-8 (.txt, .md or .jsonl)") from None
        if not raw.strip():
            raise UserError(f"{p} is empty: nothing to ingest")
        doc_sha = hashlib.sha256(raw.encode()).hexdigest()[:16]
        doc_ref = f"doc:{p.name}@{doc_sha}"
        now = utcnow()
        facts: list[Fact] = []
        max_chars = self.settings.fact_chunk_chars

        def make(
            i: int,
            text: str,
            extra: dict[str, Any],
            fid: str | None = None,
            source: str | None = None,
            valid_from: datetime | None = None,
        ) -> Fact:
            digest = hashlib.sha256(f"{ns}|{doc_sha}|{i}".encode()).hexdigest()[:20]
            return Fact(
                id=fid or f"d-{digest}",
                text=text,
                namespace=ns,
                origin="document",
                source_ids=[source or doc_ref],
                metadata={"source_path": str(p.resolve()), "chunk": i, **extra},
                created_at=now,
                valid_from=valid_from or now,
            )

        if p.suffix.lower() == ".jsonl":
            for lineno, line in enumerate(raw.splitlines(), start=1):
                if not line.strip():
                    continue
                try:
                    rec = _JsonlRecord.model_validate_json(line)
                except ValidationError as exc:
                    first = exc.errors()[0]
                    raise UserError(
                        f"{p}:{lineno}: bad record ({'.'.join(map(str, first['loc']))}: {first['msg']}): "
                        'each line must be {"text": ..., optional "id", "source", "valid_from", "metadata"}'
                    ) from None
                self._check_text(rec.text[: self.settings.fact_max_chars] or " ", "record")
                parts = chunk_text(rec.text, max_chars)
                for j, (_, chunk) in enumerate(parts):
                    fid = None if rec.id is None else (rec.id if len(parts) == 1 else f"{rec.id}#{j}")
                    if fid is not None and not re.match(r"^[A-Za-z0-9_:.\-#]{1,128}$", fid):
                        raise UserError(f"{p}:{lineno}: bad id {rec.id!r}: use letters, digits and _ : . -")
                    facts.append(
                        make(
                            len(facts),
                            chunk,
                            {"line": lineno, **rec.metadata},
                            fid,
                            rec.source,
                            rec.valid_from,
                        )
                    )
        else:
            for section, chunk in chunk_text(raw, max_chars):
                facts.append(make(len(facts), chunk, {"section": section} if section else {}))

        from tqdm import tqdm

        bar = tqdm(total=len(facts), desc=f"ingest {p.name}", unit="chunk", disable=not progress)
        for start in range(0, len(facts), batch_size):
            batch = facts[start : start + batch_size]
            self._write(ns, batch)
            bar.update(len(batch))
            if on_batch is not None:
                on_batch(batch)
        bar.close()
        return facts

    def invalidate(
        self,
        fact_id: str,
        *,
        namespace: str | None = None,
        at: datetime | None = None,
        superseded_by: str | None = None,
        reason: str = "",
    ) -> Fact:
        """End a fact's validity (kept for history, no longer retrieved)."""
        ns = self._ns(namespace)
        fact = self.get(fact_id, namespace=ns)
        if fact is None:
            raise UserError(
                f"no fact {fact_id!r} in namespace {ns!r}: check the id with `factflow facts search`"
            )
        at = at or utcnow()
        self.collection(ns).update(
            ids=[fact_id], metadatas=[{"valid_to": _ts(at), "superseded_by": superseded_by or ""}]
        )
        self._writes[ns] = self._writes.get(ns, 0) + 1
        self._log(ns, "invalidate", fact.text, [fact_id], [reason or "invalidated"])
        return fact.model_copy(update={"valid_to": at, "superseded_by": superseded_by})

    # -- reads -------------------------------------------------------------------------------

    def get(self, fact_id: str, namespace: str | None = None) -> Fact | None:
        """The fact with this id in the namespace (valid or not), or None."""
        got = self.get_many([fact_id], namespace=namespace)
        return got[0] if got else None

    def get_many(self, fact_ids: Sequence[str], namespace: str | None = None) -> list[Fact]:
        if not fact_ids:
            return []
        res = self.collection(namespace).get(ids=list(fact_ids))
        by_id = {
            i: self._from_meta(i, d, m)
            for i, d, m in zip(res["ids"], res["documents"], res["metadatas"], strict=True)
        }
        return [by_id[i] for i in fact_ids if i in by_id]

    def iter_facts(
        self, namespace: str | None = None, *, valid_only: bool = False, page: int = 2000
    ) -> Iterator[Fact]:
        col = self.collection(namespace)
        offset = 0
        while True:
            res = col.get(limit=page, offset=offset)
            if not res["ids"]:
                return
            for i, d, m in zip(res["ids"], res["documents"], res["metadatas"], strict=True):
                f = self._from_meta(i, d, m)
                if not valid_only or f.is_valid():
                    yield f
            offset += len(res["ids"])

    def _lexical(self, ns: str) -> _LexCache:
        col = self.collection(ns)
        key = (int(col.count()), self._writes.get(ns, 0))
        cached = self._lex.get(ns)
        if cached is not None and cached.key == key:
            return cached
        ids: list[str] = []
        texts: list[str] = []
        vf: list[float] = []
        vt: list[float] = []
        offset = 0
        while True:
            res = col.get(limit=5000, offset=offset, include=["documents", "metadatas"])
            if not res["ids"]:
                break
            ids += res["ids"]
            texts += res["documents"]
            vf += [m["valid_from"] for m in res["metadatas"]]
            vt += [m["valid_to"] for m in res["metadatas"]]
            offset += len(res["ids"])
        cache = _LexCache(
            key, LexicalIndex.build(ids, texts), np.array(vf), np.array(vt), {d: i for i, d in enumerate(ids)}
        )
        self._lex[ns] = cache
        return cache

    @staticmethod
    def _valid_where(where: dict[str, Any] | None) -> dict[str, Any]:
        now = time.time()
        clauses: list[dict[str, Any]] = [{"valid_to": {"$gt": now}}, {"valid_from": {"$lte": now}}]
        if where:
            clauses.append(where)
        return {"$and": clauses}

    def _dense(
        self, col: Any, embedding: Any, n: int, n_cand: int, k: int, where: dict[str, Any] | None
    ) -> tuple[list[str], dict[str, str]]:
        """Dense candidates (ids, id -> origin) among valid facts.

        A Chroma `where` makes HNSW search pre-filter every record: 455 ms vs 16 ms unfiltered at
        30k facts. Validity rarely removes a hit, so query unfiltered, drop invalid hits here, and
        pay for the filtered query only when too few valid ones are left (or the caller filters).
        """
        now = time.time()

        def query(flt: dict[str, Any] | None, n_results: int) -> Any:
            try:
                return col.query(
                    query_embeddings=embedding, n_results=n_results, where=flt, include=["metadatas"]
                )
            except Exception as exc:
                if where:
                    msg = f"bad metadata filter {where!r} ({exc}): use Chroma where syntax"
                    raise UserError(msg) from None
                raise

        if not where:
            res = query(None, min(n, 2 * n_cand))
            hits = [
                (i, m["origin"])
                for i, m in zip(res["ids"][0], res["metadatas"][0], strict=True)
                if m["valid_from"] <= now < m["valid_to"]
            ][:n_cand]
            if len(hits) >= min(k, n_cand):
                return [i for i, _ in hits], dict(hits)
        res = query(self._valid_where(where), n_cand)
        ids = res["ids"][0]
        return ids, {i: m["origin"] for i, m in zip(ids, res["metadatas"][0], strict=True)}

    def search(
        self,
        query: str,
        *,
        k: int = 5,
        namespace: str | None = None,
        where: dict[str, Any] | None = None,
    ) -> list[ScoredFact]:
        """Hybrid search over valid facts of one namespace: dense + BM25, RRF-fused, model share capped."""
        ns = self._ns(namespace)
        if not isinstance(query, str) or not query.strip():
            raise UserError("the search query is empty: pass some words to search for")
        if not 1 <= k <= 100:
            raise UserError(f"k={k} is out of range: use 1..100")
        col = self.collection(ns)
        n = int(col.count())
        if n == 0:
            return []
        n_cand = min(n, max(4 * k, 20))
        dense, origins = self._dense(col, self._embed([query]), n, n_cand, k, where)

        lex = self._lexical(ns)
        now = time.time()
        mask = ((lex.valid_from <= now) & (lex.valid_to > now)).astype(np.float32)
        if where:
            allowed = col.get(where=where, include=[])["ids"]
            keep = np.zeros_like(mask)
            keep[[lex.pos[i] for i in allowed if i in lex.pos]] = 1.0
            mask *= keep
        lexical = lex.index.search(query, n_cand, mask=mask)

        fused = rrf_fuse([dense, lexical])
        missing = [d for d, _, _ in fused if d not in origins]
        facts = {f.id: f for f in self.get_many([d for d, _, _ in fused], namespace=ns)}
        origins.update({d: facts[d].origin for d in missing if d in facts})
        valid = [d for d, _, _ in fused if d in facts and facts[d].is_valid()]
        chosen = set(
            cap_model_share(valid, lambda d: origins.get(d) == "model", k, self.settings.model_fact_share)
        )
        return [
            ScoredFact(fact=facts[d], score=s, dense_rank=r[0], lexical_rank=r[1])
            for d, s, r in fused
            if d in chosen
        ]

    # -- write-back gate ---------------------------------------------------------------------

    def verifiers(self) -> list[Verifier]:
        """Default gate: deterministic grounding, + NLI / HF judge when configured in settings."""
        if self._verifiers is None:
            vs: list[Verifier] = [GroundingVerifier()]
            if self.settings.fact_nli_model:
                vs.append(NLIVerifier(self.settings.fact_nli_model, self.settings.fact_nli_threshold))
            if self.settings.fact_judge_model:
                from factflow.serving.models import resolve_model

                path = resolve_model(
                    self.settings.model_copy(update={"model": self.settings.fact_judge_model})
                )
                vs.append(LLMJudgeVerifier.from_model_path(path, self.settings.fact_judge_threshold))
            self._verifiers = vs
        return self._verifiers

    def neighbors(self, texts: list[str], namespace: str, n: int = 5) -> list[list[Neighbor]]:
        col = self.collection(namespace)
        count = int(col.count())
        if count == 0 or not texts:
            return [[] for _ in texts]
        res = col.query(
            query_embeddings=self._embed(texts),
            n_results=min(n, count),
            where=self._valid_where(None),
            include=["documents", "distances"],
        )
        return [
            [Neighbor(i, d, 1.0 - float(dist)) for i, d, dist in zip(ids, docs, dists, strict=True)]
            for ids, docs, dists in zip(res["ids"], res["documents"], res["distances"], strict=True)
        ]

    def propose(
        self,
        answer: str,
        cited_ids: list[str],
        retrieved_ids: list[str],
        *,
        namespace: str | None = None,
        chat_model: Any = None,
        verifiers: Sequence[Verifier] | None = None,
        dry_run: bool = False,
    ) -> WritebackDecision:
        """Run the write-back gate; every accepted claim becomes one model fact (unless dry_run).

        Raises UserError for empty/oversized answers and citations to unknown ids (these are
        logged too). `chat_model` adds an LLM judge; `verifiers` replaces the default list.
        """
        ns = self._ns(namespace)
        answer = self._check_text(answer, "answer")
        claims = split_claims(answer, cited_ids)
        all_cited = sorted({c for cl in claims for c in cl.cited_ids} | set(cited_ids))
        known = {f.id: f for f in self.get_many(all_cited, namespace=ns)}
        unknown = [c for c in all_cited if c not in known]
        if unknown:
            self._log(ns, "error", answer, [], [f"unknown cited ids: {', '.join(unknown)}"])
            raise UserError(
                f"unknown fact id(s) {', '.join(unknown)} in namespace {ns!r}: "
                "cite ids returned by search_facts"
            )
        active = list(verifiers) if verifiers is not None else list(self.verifiers())
        if chat_model is not None:
            active.append(LLMJudgeVerifier.from_chat_model(chat_model, self.settings.fact_judge_threshold))
        sources = {i: f.text for i, f in known.items() if f.is_valid()}
        near = self.neighbors([c.text for c in claims], ns)
        verdicts = [
            judge_claim(
                c,
                retrieved=set(retrieved_ids),
                sources=sources,
                neighbors=nb,
                verifiers=active,
                novelty_threshold=self.settings.fact_novelty_threshold,
            )
            for c, nb in zip(claims, near, strict=True)
        ]
        reasons: list[str] = []
        if not claims:
            reasons.append("no factual claims found in the answer")
        if looks_like_instruction(answer):
            reasons.append("the answer contains an instruction: nothing is written")
            for v in verdicts:
                v.accepted = False
        written: list[str] = []
        for v in verdicts:
            if not v.accepted:
                continue
            fact = Fact(
                id=f"m-{uuid.uuid4().hex[:16]}",
                text=v.claim,
                namespace=ns,
                origin="model",
                source_ids=v.cited_ids,
                verification=[v],
            )
            if not dry_run:
                self._write(ns, [fact])
            written.append(fact.id)
        for v in verdicts:
            if not v.accepted:
                reasons.append(f"rejected '{v.claim[:80]}': {'; '.join(v.reasons)}")
        decision = WritebackDecision(
            accepted=bool(written),
            fact_id=written[0] if written else None,
            fact_ids=written,
            claims=verdicts,
            reasons=reasons,
        )
        if not dry_run:
            self._log(ns, "accept" if written else "reject", answer, written, reasons, decision)
        return decision

    # -- audit -------------------------------------------------------------------------------

    def _log(
        self,
        ns: str,
        action: str,
        text: str,
        fact_ids: list[str],
        reasons: list[str],
        decision: WritebackDecision | None = None,
    ) -> None:
        entry = AuditEntry(
            id=f"a-{uuid.uuid4().hex[:16]}",
            at=utcnow(),
            namespace=ns,
            action=action,  # type: ignore[arg-type]
            text=text[:2000],
            fact_ids=fact_ids,
            reasons=reasons,
            decision=decision,
        )
        self._audit.add(
            ids=[entry.id],
            embeddings=[[1.0]],
            documents=[entry.model_dump_json()],
            metadatas=[{"namespace": ns, "at": _ts(entry.at), "action": action}],
        )

    def audit_log(self, namespace: str | None = None, *, limit: int | None = None) -> list[AuditEntry]:
        """Audit entries of a namespace, oldest first (the last `limit` if given)."""
        ns = self._ns(namespace)
        res = self._audit.get(where={"namespace": ns})
        entries = sorted((AuditEntry.model_validate_json(d) for d in res["documents"]), key=lambda e: e.at)
        return entries[-limit:] if limit else entries
