"""FactStore: facts with provenance in Chroma, hybrid retrieval, and gated write-back.

This file holds the store itself: opening (embedded or server), namespaces, writes (teach,
ingest, invalidate) and reads by id. The other concepts each have their own file:

| `store_chroma.py` | Chroma clients, the embedded single-writer lock, namespace naming, records |
| `store_ingest.py` | files -> chunked document facts |
| `store_search.py` | hybrid search and the gate's nearest-facts lookup |
| `store_gate.py`   | write-back gate orchestration (`propose`) |
| `store_audit.py`  | the audit log (SQLite) |
| `store_control.py` | user control: invalidate cascade, delete (erasure), history, import |
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np

from factflow.errors import UserError
from factflow.memory.facts import AuditEntry, Fact, FactHistory, Origin, ScoredFact, WritebackDecision, utcnow
from factflow.memory.store_audit import AuditLog
from factflow.memory.store_chroma import (
    NAMESPACE_RE,
    acquire_embedded,
    collection_name,
    from_meta,
    http_client,
    is_not_found,
    release_embedded,
    text_sha,
    to_meta,
    to_ts,
    unreachable_message,
    validate_namespace,
)
from factflow.memory.store_control import delete as delete_fact
from factflow.memory.store_control import derived_from, import_facts
from factflow.memory.store_control import history as fact_history
from factflow.memory.store_gate import default_verifiers
from factflow.memory.store_gate import propose as gate_propose
from factflow.memory.store_ingest import check_text, chunk_text, read_document
from factflow.memory.store_search import LexicalCache, nearest
from factflow.memory.store_search import search as hybrid_search
from factflow.memory.verify import Neighbor, Verifier
from factflow.settings import Settings, get_settings

__all__ = ["FactStore", "collection_name", "validate_namespace", "chunk_text", "NAMESPACE_RE"]


class FactStore:
    """Facts per namespace in Chroma; `search` is hybrid; `propose` runs the write-back gate."""

    def __init__(
        self,
        client: Any,
        settings: Settings,
        embedded_path: Path | None = None,
        *,
        audit_path: Path | None = None,
    ) -> None:
        self._client = client
        self.settings = settings
        self.embedded_path = embedded_path
        self._cols: dict[str, Any] = {}
        self.lexical_caches: dict[str, LexicalCache] = {}
        self._closed = False
        self._verifiers: list[Verifier] | None = None
        if audit_path is None:
            base = embedded_path if embedded_path is not None else settings.home / "facts"
            audit_path = base / "factflow-audit.sqlite3"
        self.audit = AuditLog(audit_path)
        try:
            self.audit.migrate_from_chroma(client)
            self.collection(settings.namespace, create=True)  # the configured namespace always exists
        except Exception:
            self.audit.close()
            raise

    # -- lifecycle ---------------------------------------------------------------------------

    @classmethod
    def open(cls, settings: Settings | None = None, *, path: Path | None = None) -> FactStore:
        """Embedded store under HOME/facts/chroma (or `path`), or the server at settings.chroma_url."""
        settings = settings or get_settings()
        if settings.chroma_url and path is None:
            return cls(http_client(settings.chroma_url), settings)
        path = Path(path or settings.home / "facts" / "chroma").expanduser()
        client = acquire_embedded(path, serve=settings.store_shared)
        try:
            return cls(client, settings, embedded_path=path)
        except Exception:
            release_embedded(path)
            raise

    def close(self) -> None:
        if self._closed:
            return
        self.audit.close()
        if self.embedded_path is not None:
            release_embedded(self.embedded_path)
        self._closed = True

    def __enter__(self) -> FactStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- namespaces --------------------------------------------------------------------------

    def namespace_of(self, namespace: str | None) -> str:
        """The validated namespace (default: settings.namespace); a closed store is a UserError."""
        if self._closed:
            raise UserError("this FactStore is closed: open a new one with FactStore.open()")
        return validate_namespace(namespace or self.settings.namespace)

    _ns = namespace_of

    def _chroma_failed(self, exc: Exception) -> UserError:
        if self.settings.chroma_url and self.embedded_path is None:
            return UserError(unreachable_message(self.settings.chroma_url, exc))
        return UserError(
            f"the embedded fact store at {self.embedded_path} failed: {type(exc).__name__}: {exc}"
        )

    def collection(self, namespace: str | None = None, *, create: bool = False) -> Any:
        ns = self.namespace_of(namespace)
        if ns in self._cols:
            return self._cols[ns]
        name = collection_name(ns)
        try:
            if create:
                col = self._client.get_or_create_collection(
                    name,
                    metadata={"factflow_namespace": ns},
                    configuration={"hnsw": {"space": "cosine"}},
                    embedding_function=None,
                )
            else:
                col = self._client.get_collection(name, embedding_function=None)
        except Exception as exc:
            if create or not is_not_found(exc):
                raise self._chroma_failed(exc) from exc
            known = ", ".join(self.namespaces()[:10]) or "none"
            raise UserError(
                f"unknown namespace {ns!r} (known: {known}): check the spelling or add a fact there first"
            ) from None
        if (col.metadata or {}).get("factflow_namespace") != ns:
            raise UserError(f"collection {name} does not belong to namespace {ns!r}: the store is corrupted")
        self._cols[ns] = col
        return col

    def namespaces(self) -> list[str]:
        try:
            cols = self._client.list_collections()
        except Exception as exc:
            raise self._chroma_failed(exc) from exc
        return sorted(ns for col in cols if (ns := (col.metadata or {}).get("factflow_namespace")))

    def count(self, namespace: str | None = None) -> int:
        return int(self.collection(namespace).count())

    def lexical_update(
        self,
        namespace: str,
        *,
        added: Sequence[Fact] = (),
        ended: Sequence[str] = (),
        at: float = 0.0,
        removed: Sequence[str] = (),
    ) -> None:
        """Keep the namespace's BM25 cache in step with a write this store made (no rebuild)."""
        cache = self.lexical_caches.get(namespace)
        if cache is None:
            return
        if added:
            cache.add(list(added))
        if ended:
            cache.end(ended, at)
        if removed:
            cache.remove(removed)

    # -- writes ------------------------------------------------------------------------------

    def _check_text(self, text: str, what: str = "fact") -> str:
        return check_text(text, self.settings.fact_max_chars, what)

    def embed(self, texts: list[str]) -> np.ndarray:
        from factflow.memory.embed import get_embedder

        return get_embedder().embed(texts)

    _embed = embed

    def _write(self, ns: str, facts: list[Fact], embeddings: np.ndarray | None = None) -> None:
        """Embed (unless given) and upsert; returns only after Chroma has acknowledged (durable
        in its WAL)."""
        if not facts:
            return
        col = self.collection(ns, create=True)
        vecs = self.embed([f.text for f in facts]) if embeddings is None else embeddings
        col.upsert(
            ids=[f.id for f in facts],
            embeddings=vecs,
            documents=[f.text for f in facts],
            metadatas=[to_meta(f) for f in facts],
        )
        self.lexical_update(ns, added=facts)

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
        ns = self.namespace_of(namespace)
        text = self._check_text(text)
        if supersedes is not None:  # checked before anything is written
            old = self.get(supersedes, namespace=ns) if ns in self.namespaces() else None
            if old is None:
                raise UserError(
                    f"--supersedes {supersedes!r}: no such fact in namespace {ns!r}; "
                    "find its id with `factflow facts search`"
                )
            if not old.is_valid():
                raise UserError(
                    f"--supersedes {supersedes!r}: that fact is no longer valid (superseded by "
                    f"{old.superseded_by or 'nothing'}); supersede the current version instead"
                )
        col = self.collection(ns, create=True)
        same = col.get(
            where={"$and": [{"text_sha": text_sha(text)}, {"valid_to": {"$gt": time.time()}}]}, limit=1
        )
        if same["ids"] and supersedes is None:
            return from_meta(same["ids"][0], same["documents"][0], same["metadatas"][0])
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
        ns = self.namespace_of(namespace)
        facts = read_document(
            path, ns, chunk_chars=self.settings.fact_chunk_chars, max_chars=self.settings.fact_max_chars
        )
        from tqdm import tqdm

        bar = tqdm(total=len(facts), desc=f"ingest {Path(path).name}", unit="chunk", disable=not progress)
        for start in range(0, len(facts), batch_size):
            batch = facts[start : start + batch_size]
            self._write(ns, batch)
            bar.update(len(batch))
            if on_batch is not None:
                on_batch(batch)
        bar.close()
        self._supersede_old_chunks(ns, facts)
        return facts

    def _supersede_old_chunks(self, ns: str, facts: list[Fact]) -> None:
        """Re-ingesting an edited file: chunks of its earlier version that the new one doesn't
        have any more stop being valid (kept for history)."""
        if not facts:
            return
        source_path = facts[0].metadata["source_path"]
        res = self.collection(ns).get(
            where={"$and": [{"source_path": source_path}, {"valid_to": {"$gt": time.time()}}]}, include=[]
        )
        new_ids = {f.id for f in facts}
        for old_id in res["ids"]:
            if old_id not in new_ids:
                self.invalidate(old_id, namespace=ns, reason=f"superseded by {facts[0].source_ids[0]}")

    def invalidate(
        self,
        fact_id: str,
        *,
        namespace: str | None = None,
        at: datetime | None = None,
        superseded_by: str | None = None,
        reason: str = "",
        cascade: bool = True,
    ) -> Fact:
        """End a fact's validity (kept for history, no longer retrieved). With `cascade`, model
        facts derived from it are invalidated too: their evidence is gone."""
        ns = self.namespace_of(namespace)
        fact = self.get(fact_id, namespace=ns)
        if fact is None:
            raise UserError(
                f"no fact {fact_id!r} in namespace {ns!r}: check the id with `factflow facts search`"
            )
        at = at or utcnow()
        derived = derived_from(self, ns, fact_id, valid_only=True) if cascade else []
        self.collection(ns).update(
            ids=[fact_id, *(f.id for f in derived)],
            metadatas=[
                {"valid_to": to_ts(at), "superseded_by": superseded_by or ""},
                *({"valid_to": to_ts(at), "superseded_by": ""} for _ in derived),
            ],
        )
        self.lexical_update(ns, ended=[fact_id, *(f.id for f in derived)], at=to_ts(at))
        self.log(ns, "invalidate", fact.text, [fact_id], [reason or "invalidated"])
        for f in derived:
            self.log(ns, "invalidate", f.text, [f.id], [f"derived from invalidated fact {fact_id}"])
        return fact.model_copy(update={"valid_to": at, "superseded_by": superseded_by})

    def derived_facts(self, fact_id: str, *, namespace: str | None = None) -> list[Fact]:
        """Valid model facts that cite this fact, directly or through other derived facts."""
        return derived_from(self, self.namespace_of(namespace), fact_id, valid_only=True)

    def delete(self, fact_id: str, *, namespace: str | None = None, reason: str = "") -> list[str]:
        """Remove a fact and the model facts derived from it, and scrub their text from the
        audit log (erasure). Returns the deleted ids. `invalidate` keeps history instead."""
        return delete_fact(self, fact_id, self.namespace_of(namespace), reason)

    def history(self, fact_id: str, *, namespace: str | None = None) -> FactHistory:
        """The fact's versions (supersede chain, oldest first) and the audit entries naming them."""
        return fact_history(self, fact_id, self.namespace_of(namespace))

    def import_facts(self, path: str | Path, *, namespace: str | None = None) -> list[Fact]:
        """Restore facts written by `facts export` (every field kept; same ids are replaced)."""
        return import_facts(self, path, namespace)

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
            i: from_meta(i, d, m)
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
                f = from_meta(i, d, m)
                if not valid_only or f.is_valid():
                    yield f
            offset += len(res["ids"])

    def search(
        self,
        query: str,
        *,
        k: int = 5,
        namespace: str | None = None,
        where: dict[str, Any] | None = None,
        as_of: datetime | None = None,
    ) -> list[ScoredFact]:
        """Hybrid search over facts valid at `as_of` (default now): dense + BM25, RRF-fused,
        model share capped. See `store_search.py`."""
        return hybrid_search(self, query, k=k, namespace=namespace, where=where, as_of=as_of)

    # -- write-back gate ---------------------------------------------------------------------

    def verifiers(self) -> list[Verifier]:
        """Default gate: deterministic grounding, + NLI / HF judge when configured in settings."""
        if self._verifiers is None:
            self._verifiers = default_verifiers(self.settings)
        return self._verifiers

    def neighbors(self, texts: list[str], namespace: str, n: int = 5) -> list[list[Neighbor]]:
        return nearest(self, texts, namespace, n)

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
        system_cited: bool = False,
    ) -> WritebackDecision:
        """Run the write-back gate; every accepted claim becomes one model fact (unless dry_run).

        Raises UserError for empty/oversized answers and citations to unknown ids (these are
        logged too). `chat_model` adds an LLM judge; `verifiers` replaces the default list;
        `system_cited` marks citations the system attached, not the model (weaker evidence).
        See `store_gate.py`.
        """
        return gate_propose(
            self,
            answer,
            cited_ids,
            retrieved_ids,
            namespace=namespace,
            chat_model=chat_model,
            verifiers=verifiers,
            dry_run=dry_run,
            system_cited=system_cited,
        )

    # -- audit -------------------------------------------------------------------------------

    def log(
        self,
        ns: str,
        action: str,
        text: str,
        fact_ids: list[str],
        reasons: list[str],
        decision: WritebackDecision | None = None,
    ) -> AuditEntry:
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
        self.audit.add([entry])
        return entry

    def audit_log(self, namespace: str | None = None, *, limit: int | None = None) -> list[AuditEntry]:
        """Audit entries of a namespace, oldest first (the last `limit` if given)."""
        return self.audit.entries(self.namespace_of(namespace), limit=limit)
