"""The fact store as a LangGraph `BaseStore`, so any LangGraph app can use it as long-term memory.

Mapping: a LangGraph namespace tuple ("users", "alice") is the fact namespace "users.alice"
(LangGraph labels cannot contain ".", so the join is injective); an item is a fact with id
`lg:<key>` whose text is `value["text"]` (or the JSON of the value) and whose full value is kept
in metadata. Other facts of the namespace (taught, ingested, model-written) show up in `search`
and `get` too, with value {"text", "origin", "source_ids"}. Deleting invalidates (history stays).
`search(query=...)` is the store's hybrid search; `filter` matches value keys ($eq, $ne, $gt, $gte,
$lt, $lte or a plain value).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterable
from datetime import datetime
from typing import Any

from langgraph.store.base import (
    BaseStore,
    GetOp,
    Item,
    ListNamespacesOp,
    Op,
    PutOp,
    Result,
    SearchItem,
    SearchOp,
)

from factflow.errors import UserError
from factflow.memory.facts import Fact
from factflow.memory.store import FactStore

__all__ = ["FactBaseStore"]

_VALUE = "lg_value"
_UPDATED = "lg_updated_at"
_OPS = {
    "$eq": lambda a, b: a == b,
    "$ne": lambda a, b: a != b,
    "$gt": lambda a, b: a is not None and a > b,
    "$gte": lambda a, b: a is not None and a >= b,
    "$lt": lambda a, b: a is not None and a < b,
    "$lte": lambda a, b: a is not None and a <= b,
}


def _ns_name(namespace: tuple[str, ...]) -> str:
    return ".".join(namespace)


def _matches(value: dict[str, Any], flt: dict[str, Any] | None) -> bool:
    for key, cond in (flt or {}).items():
        have = value.get(key)
        if isinstance(cond, dict) and cond and all(k in _OPS for k in cond):
            if not all(_OPS[op](have, want) for op, want in cond.items()):
                return False
        elif have != cond:
            return False
    return True


class FactBaseStore(BaseStore):
    """LangGraph BaseStore over a FactStore (sync ops; async ones run in a worker thread)."""

    def __init__(self, store: FactStore) -> None:
        self.store = store

    # -- conversion --------------------------------------------------------------------------

    @staticmethod
    def _key(fact: Fact) -> str:
        return fact.id[3:] if fact.id.startswith("lg:") else fact.id

    @staticmethod
    def _value(fact: Fact) -> dict[str, Any]:
        raw = fact.metadata.get(_VALUE)
        if isinstance(raw, str):
            return json.loads(raw)  # type: ignore[no-any-return]
        return {"text": fact.text, "origin": fact.origin, "source_ids": fact.source_ids}

    def _item(self, fact: Fact, namespace: tuple[str, ...]) -> Item:
        updated = fact.metadata.get(_UPDATED)
        return Item(
            value=self._value(fact),
            key=self._key(fact),
            namespace=namespace,
            created_at=fact.created_at,
            updated_at=datetime.fromisoformat(updated) if isinstance(updated, str) else fact.created_at,
        )

    def _known(self, ns: str) -> bool:
        return ns in self.store.namespaces()

    # -- ops ---------------------------------------------------------------------------------

    def _get(self, op: GetOp) -> Item | None:
        ns = _ns_name(op.namespace)
        if not self._known(ns):
            return None
        fact = self.store.get(f"lg:{op.key}", namespace=ns) or self.store.get(op.key, namespace=ns)
        return self._item(fact, op.namespace) if fact and fact.is_valid() else None

    def _put(self, op: PutOp) -> None:
        ns = _ns_name(op.namespace)
        fid = f"lg:{op.key}"
        old = self.store.get(fid, namespace=ns) if self._known(ns) else None
        if op.value is None:
            if old is not None and old.is_valid():
                self.store.invalidate(fid, namespace=ns, reason="deleted through LangGraph BaseStore")
            return
        value = dict(op.value)
        text = value["text"] if isinstance(value.get("text"), str) else json.dumps(value, sort_keys=True)
        from factflow.memory.facts import utcnow

        now = utcnow()
        fact = Fact(
            id=fid,
            text=text,
            namespace=ns,
            origin="human",
            created_at=old.created_at if old else now,
            valid_from=old.valid_from if old else now,
            metadata={_VALUE: json.dumps(value), _UPDATED: now.isoformat()},
        )
        self.store._check_text(text, "item")
        self.store._write(ns, [fact])

    def _search(self, op: SearchOp) -> list[SearchItem]:
        prefix = _ns_name(op.namespace_prefix)
        spaces = [
            ns for ns in self.store.namespaces() if not prefix or ns == prefix or ns.startswith(prefix + ".")
        ]
        hits: list[tuple[float | None, Fact]] = []
        for ns in spaces:
            if op.query:
                want = min(100, op.limit + op.offset + 20)
                hits += [(h.score, h.fact) for h in self.store.search(op.query, k=want, namespace=ns)]
            else:
                hits += [(None, f) for f in self.store.iter_facts(ns, valid_only=True)]
        if op.query:
            hits.sort(key=lambda h: -(h[0] or 0.0))
        else:
            hits.sort(key=lambda h: h[1].created_at, reverse=True)
        out: list[SearchItem] = []
        for score, fact in hits:
            value = self._value(fact)
            if not _matches(value, op.filter):
                continue
            item = self._item(fact, tuple(fact.namespace.split(".")))
            out.append(
                SearchItem(
                    namespace=item.namespace,
                    key=item.key,
                    value=item.value,
                    created_at=item.created_at,
                    updated_at=item.updated_at,
                    score=score,
                )
            )
        return out[op.offset : op.offset + op.limit]

    def _list(self, op: ListNamespacesOp) -> list[tuple[str, ...]]:
        found: set[tuple[str, ...]] = set()
        for ns in self.store.namespaces():
            path = tuple(ns.split("."))
            ok = True
            for cond in op.match_conditions or ():
                pat = tuple(cond.path)
                if len(pat) > len(path):
                    ok = False
                    break
                seg = path[: len(pat)] if cond.match_type == "prefix" else path[len(path) - len(pat) :]
                if not all(p == "*" or p == s for p, s in zip(pat, seg, strict=True)):
                    ok = False
                    break
            if ok:
                found.add(path[: op.max_depth] if op.max_depth else path)
        return sorted(found)[op.offset : op.offset + op.limit]

    def batch(self, ops: Iterable[Op]) -> list[Result]:
        results: list[Result] = []
        for op in ops:
            try:
                if isinstance(op, GetOp):
                    results.append(self._get(op))
                elif isinstance(op, PutOp):
                    self._put(op)
                    results.append(None)
                elif isinstance(op, SearchOp):
                    results.append(self._search(op))
                elif isinstance(op, ListNamespacesOp):
                    results.append(self._list(op))
                else:
                    raise TypeError(f"unknown store op {type(op).__name__}")
            except UserError as exc:
                raise ValueError(str(exc)) from None
        return results

    async def abatch(self, ops: Iterable[Op]) -> list[Result]:
        return await asyncio.to_thread(self.batch, list(ops))
