"""User control over stored facts: invalidate (with its cascade), delete (erasure), history,
export and import.

* **invalidate** ends a fact's validity and keeps it for history; model-written facts derived
  from it (they cite it, directly or through another derived fact) are invalidated with it,
  because their evidence is gone.
* **delete** removes a fact and every model fact derived from it, and scrubs the fact's text
  from the audit log (the right to erasure); the log keeps one `delete` entry with the ids only.
* **history** is the supersede chain of a fact (older and newer versions) and its audit entries.
* **export / import**: full `Fact` records as JSON lines; importing an export restores every
  field (ids, origin, validity, provenance, metadata, gate reports).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING

from factflow.errors import UserError
from factflow.memory.facts import Fact, FactHistory
from factflow.memory.store_chroma import from_meta, validate_namespace
from factflow.memory.store_ingest import jsonl_records

if TYPE_CHECKING:
    from factflow.memory.store import FactStore

__all__ = ["derived_from", "delete", "history", "import_facts"]


def derived_from(store: FactStore, ns: str, fact_id: str, *, valid_only: bool) -> list[Fact]:
    """Model facts citing `fact_id`, directly or through other derived facts (breadth first)."""
    col = store.collection(ns)
    where: dict[str, object] = {"origin": "model"}
    if valid_only:
        where = {"$and": [{"origin": "model"}, {"valid_to": {"$gt": time.time()}}]}
    res = col.get(where=where)
    model = [
        from_meta(i, d, m) for i, d, m in zip(res["ids"], res["documents"], res["metadatas"], strict=True)
    ]
    found: dict[str, Fact] = {}
    frontier = {fact_id}
    while frontier:
        nxt = {f.id for f in model if f.id not in found and frontier & set(f.source_ids)}
        found.update({f.id: f for f in model if f.id in nxt})
        frontier = nxt
    return list(found.values())


def delete(store: FactStore, fact_id: str, ns: str, reason: str = "") -> list[str]:
    """Remove a fact and the model facts derived from it; scrub their texts from the audit log.
    Returns the deleted ids (the fact first)."""
    fact = store.get(fact_id, namespace=ns)
    if fact is None:
        raise UserError(f"no fact {fact_id!r} in namespace {ns!r}: check the id with `factflow facts search`")
    gone = [fact, *derived_from(store, ns, fact_id, valid_only=False)]
    store.collection(ns).delete(ids=[f.id for f in gone])
    store.lexical_update(ns, removed=[f.id for f in gone])
    for f in gone:
        store.audit.scrub(ns, f.id, f.text)
    reasons = [reason or "deleted on request"]
    if len(gone) > 1:
        reasons.append(f"with {len(gone) - 1} model fact(s) derived from it")
    store.log(ns, "delete", "", [f.id for f in gone], reasons)
    return [f.id for f in gone]


def history(store: FactStore, fact_id: str, ns: str) -> FactHistory:
    """Every version of the fact (what it superseded, what superseded it), oldest first, and
    the audit entries that name any of them."""
    fact = store.get(fact_id, namespace=ns)
    if fact is None:
        raise UserError(
            f"no fact {fact_id!r} in namespace {ns!r}: it may have been deleted (see `facts audit`)"
        )
    col = store.collection(ns)
    versions = {fact.id: fact}
    older = [fact.id]
    while older:  # facts whose superseded_by points at one we have
        res = col.get(where={"superseded_by": {"$in": older}})
        new = [
            from_meta(i, d, m) for i, d, m in zip(res["ids"], res["documents"], res["metadatas"], strict=True)
        ]
        older = [f.id for f in new if f.id not in versions]
        versions.update({f.id: f for f in new})
    nxt = fact.superseded_by
    while nxt and nxt not in versions:
        later = store.get(nxt, namespace=ns)
        if later is None:
            break
        versions[later.id] = later
        nxt = later.superseded_by
    ordered = sorted(versions.values(), key=lambda f: (f.valid_from, f.created_at))
    ids = set(versions)
    entries = [e for e in store.audit.entries(ns) if ids & set(e.fact_ids)]
    return FactHistory(fact_id=fact_id, versions=ordered, audit=entries)


def import_facts(store: FactStore, path: str | Path, namespace: str | None = None) -> list[Fact]:
    """Write every `Fact` record of a `facts export` file as it is (ids and all fields kept;
    an existing fact with the same id is replaced). `namespace` moves them all into one."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise UserError(f"no file at {p}: pass a file written by `factflow facts export`")
    facts: list[Fact] = []
    fix = "import reads what `factflow facts export` writes"
    for _, fact in jsonl_records(p, p.read_text(encoding="utf-8"), Fact, "not a fact record", fix):
        if namespace:
            fact = fact.model_copy(update={"namespace": namespace})
        validate_namespace(fact.namespace)
        store._check_text(fact.text)
        facts.append(fact)
    by_ns: dict[str, list[Fact]] = {}
    for f in facts:
        by_ns.setdefault(f.namespace, []).append(f)
    for ns, group in by_ns.items():
        for start in range(0, len(group), 64):
            store._write(ns, group[start : start + 64])
    return facts
