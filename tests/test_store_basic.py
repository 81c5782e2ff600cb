"""Fact store on real embedded Chroma + real MiniLM: CRUD, provenance, isolation, bad input, tools."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import pytest

from factflow.errors import UserError
from factflow.memory.facts import Fact
from factflow.memory.store import FactStore, chunk_text, collection_name
from factflow.settings import Settings

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture
def store(tmp_path: Path):
    s = FactStore.open(Settings(home=tmp_path / "home"))
    yield s
    s.close()


def test_teach_search_get_roundtrip(store: FactStore) -> None:
    a = store.teach("Acme Corp was founded in 1998 by Maria Lopez.", source_ids=["https://acme.example"])
    store.teach("Acme Corp is headquartered in Lyon.")
    store.teach("Bananas are rich in potassium.")
    hits = store.search("Who founded Acme?", k=2)
    assert [h.fact.id for h in hits][0] == a.id
    assert hits[0].dense_rank == 1 and hits[0].lexical_rank == 1 and hits[0].score > hits[1].score
    got = store.get(a.id)
    assert got is not None and got.source_ids == ["https://acme.example"] and got.origin == "human"
    assert store.teach("Acme Corp was founded in 1998 by Maria Lopez.").id == a.id  # no duplicate rows
    assert store.count() == 3
    assert store.search("potassium", k=1, where={"origin": "human"})[0].fact.text.startswith("Bananas")


def test_invalidate_keeps_history_and_hides_fact(store: FactStore) -> None:
    old = store.teach("Acme Corp is headquartered in Lyon.")
    new = store.teach("Acme Corp is headquartered in Graz.", supersedes=old.id)
    texts = [h.fact.text for h in store.search("Where is Acme Corp headquartered?", k=5)]
    assert texts == [new.text]
    kept = store.get(old.id)
    assert kept is not None and not kept.is_valid() and kept.superseded_by == new.id
    assert [e.action for e in store.audit_log()] == ["invalidate"]
    with pytest.raises(UserError, match="no fact"):
        store.invalidate("f-does-not-exist")


def test_search_finds_the_valid_fact_behind_many_superseded_ones(store: FactStore) -> None:
    """Dense search runs unfiltered for speed; when superseded hits crowd out every candidate it
    must fall back to the validity-filtered query, never return nothing or an invalid fact."""
    fact = store.teach("Acme Corp has 1 office.")
    for n in range(2, 50):  # 48 superseded versions: more than the unfiltered candidate pool
        fact = store.teach(f"Acme Corp has {n} offices.", supersedes=fact.id)
    store.teach("Bananas are rich in potassium.")
    hits = store.search("How many offices does Acme Corp have?", k=2)
    assert fact.id in [h.fact.id for h in hits]
    assert all(h.fact.is_valid() for h in hits)


LOOKALIKES = ["john_doe", "john-doe", "John_Doe", "john.doe", "johndoe", "john__doe", "john-doe-"]


def test_collection_names_are_valid_and_injective() -> None:
    names = [collection_name(n) for n in LOOKALIKES + ["a", "x" * 128, "1:2@3"]]
    assert len(set(names)) == len(names)
    for name in names:
        assert re.fullmatch(r"[a-zA-Z0-9._-]{3,512}", name) and name[0].isalnum() and name[-1].isalnum()


def test_namespace_isolation_with_lookalike_names(store: FactStore) -> None:
    for ns in LOOKALIKES:
        store.teach(f"The secret code of this tenant is {ns.upper()}.", namespace=ns)
    for ns in LOOKALIKES:
        hits = store.search("secret code", k=10, namespace=ns)
        assert [h.fact.namespace for h in hits] == [ns]
        assert hits[0].fact.text.endswith(f"{ns.upper()}.")
    other = store.search("secret code", k=1, namespace="john_doe")[0].fact.id
    assert store.get(other, namespace="john-doe") is None
    with pytest.raises(UserError, match="unknown namespace 'jane_doe'"):
        store.search("secret", namespace="jane_doe")
    with pytest.raises(UserError, match="invalid namespace"):
        store.teach("x is y.", namespace="john doe")


def test_ingest_markdown_text_and_jsonl_with_provenance(store: FactStore, tmp_path: Path) -> None:
    md = tmp_path / "acme.md"
    md.write_text("# Acme\n\nAcme makes sensors.\n\n## History\n\nAcme was founded in 1998.\n")
    facts = store.ingest(md, namespace="docs", progress=False)
    assert [f.metadata["section"] for f in facts] == ["Acme", "Acme > History"]
    assert all(f.origin == "document" and f.source_ids[0].startswith("doc:acme.md@") for f in facts)
    again = store.ingest(md, namespace="docs", progress=False)  # idempotent: same ids, no new rows
    assert [f.id for f in again] == [f.id for f in facts] and store.count("docs") == 2

    jl = tmp_path / "facts.jsonl"
    jl.write_text(
        json.dumps({"text": "Graz is in Austria.", "id": "graz", "source": "atlas p.3"})
        + "\n\n"
        + json.dumps({"text": "Brno is in Czechia.", "metadata": {"topic": "geo"}})
        + "\n"
    )
    got = store.ingest(jl, namespace="docs", progress=False)
    assert got[0].id == "graz" and got[0].source_ids == ["atlas p.3"] and got[1].metadata["topic"] == "geo"
    assert store.search("Czechia", k=1, namespace="docs", where={"topic": "geo"})[0].fact.id == got[1].id

    txt = tmp_path / "long.txt"
    txt.write_text(" ".join(f"Sentence number {i} is here." for i in range(200)))
    chunks = store.ingest(txt, namespace="docs", progress=False)
    assert len(chunks) > 1 and all(len(c.text) <= store.settings.fact_chunk_chars for c in chunks)


def test_chunk_text_splits_long_paragraphs() -> None:
    chunks = chunk_text("# T\n\n" + "word " * 500, 100)
    assert all(len(c) <= 100 for _, c in chunks) and {s for s, _ in chunks} == {"T"}


def test_bad_input_gives_clear_errors(store: FactStore, tmp_path: Path) -> None:
    with pytest.raises(UserError, match="empty"):
        store.teach("   ")
    with pytest.raises(UserError, match="over the 4000 limit"):
        store.teach("x" * 4001)
    with pytest.raises(UserError, match="no file"):
        store.ingest(tmp_path / "missing.md")
    (tmp_path / "empty.txt").write_text("\n")
    with pytest.raises(UserError, match="is empty"):
        store.ingest(tmp_path / "empty.txt")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "ok"}\n{"txt": "typo"}\n')
    with pytest.raises(UserError, match=r"bad.jsonl:2: bad record"):
        store.ingest(bad)
    (tmp_path / "bin.txt").write_bytes(b"\xff\xfe\x00bad")
    with pytest.raises(UserError, match="not UTF-8"):
        store.ingest(tmp_path / "bin.txt")
    a = store.teach("Acme Corp is headquartered in Lyon.")
    with pytest.raises(UserError, match="unknown fact id"):
        store.propose("Acme Corp is headquartered in Lyon.", ["f-nope"], ["f-nope"])
    with pytest.raises(UserError, match="empty"):
        store.propose("", [a.id], [a.id])
    with pytest.raises(UserError, match="k=0"):
        store.search("Acme", k=0)
    with pytest.raises(UserError, match="unknown namespace"):
        store.get(a.id, namespace="nobody")
    assert store.audit_log()[-1].action == "error"


def test_model_fact_share_is_capped(store: FactStore) -> None:
    for i in range(6):
        store._write(
            "default",
            [
                Fact(
                    id=f"m-{i}",
                    text=f"Acme Corp opened office number {i} in Lyon.",
                    namespace="default",
                    origin="model",
                )
            ],
        )
    for i in range(8):
        store.teach(f"Acme Corp sells product line {i}.")
    hits = store.search("Acme Corp office Lyon", k=10)
    assert len(hits) == 10 and sum(h.fact.origin == "model" for h in hits) == 3  # floor(0.3 * 10)


def test_propose_writes_verified_claims_and_audits(store: FactStore) -> None:
    doc = store.teach("Acme makes sensors. The Kestrel sensor was launched in 2019. It sells for 40 euros.")
    staff = store.teach("Acme employs 120 people.")
    ids = [doc.id, staff.id]
    good = store.propose(
        f"Acme's Kestrel sensor was launched in 2019 [{doc.id}]. The Kestrel sensor was launched in 2019 "
        f"[{doc.id}]. Acme employs 120 people and makes sensors [{staff.id}, {doc.id}]. Acme employs "
        f"120 people and makes sensors [{staff.id}, {doc.id}].",
        [],
        ids,
    )
    # a sentence made self-contained and a synthesis; a sentence of the chunk as it stands and a
    # claim repeated within the answer add nothing
    assert [c.accepted for c in good.claims] == [True, False, True, False], good.reasons
    assert "restates stored fact" in good.claims[1].reasons[0] and good.claims[1].duplicate_of == doc.id
    assert good.claims[3].reasons == ["novelty: repeats claim 3 of this answer"]
    stored = store.get(good.fact_ids[0])
    assert stored is not None and stored.origin == "model" and stored.source_ids == [doc.id]
    assert stored.verification and stored.verification[0].accepted
    assert stored.verification[0].citation_by == "model"
    bad = store.propose("The Kestrel sensor was launched in 2021 by Maria Lopez.", [doc.id], ids)
    assert not bad.accepted and any("2021" in r for r in bad.reasons)
    unattributed = store.propose("Acme makes sensors and employs 120 people.", [doc.id, staff.id], [doc.id])
    assert not unattributed.accepted and "not retrieved" in " ".join(unattributed.reasons)
    assert [e.action for e in store.audit_log()] == ["accept", "reject", "reject"]


def test_fact_tools_record_retrievals_and_gate_proposals(store: FactStore) -> None:
    from pydantic import ValidationError

    from factflow.tools.facts import ProposeFactArgs, make_fact_tools

    doc = store.teach("Acme makes sensors. The Kestrel sensor was launched in 2019. It sells for 40 euros.")
    retrieved: set[str] = set()
    search, get, propose = make_fact_tools(store, "default", retrieved)
    assert doc.id in search.invoke({"query": "Kestrel launch", "k": 3}) and retrieved == {doc.id}
    assert "error" in get.invoke({"fact_id": "f-missing"})
    assert json.loads(get.invoke({"fact_id": doc.id}))["state"] == "valid"
    out = propose.invoke({"text": "Acme's Kestrel sensor was launched in 2019.", "cited_ids": [doc.id]})
    assert out.startswith("stored as m-")
    assert propose.invoke({"text": "Acme was sold in 2020.", "cited_ids": [doc.id]}).startswith("not stored")
    assert "unknown fact id" in propose.invoke({"text": "Acme is big.", "cited_ids": ["f-x"]})
    with pytest.raises(ValidationError):
        ProposeFactArgs.model_validate({"text": "a", "cited_ids": [], "extra": 1})


def test_calculator_is_safe() -> None:
    from factflow.tools.calculator import calculate, calculator

    assert calculate("(3 + 4) * 2.5") == 17.5 and calculator.invoke({"expression": "2**10"}) == "1024"
    for attack in [
        "__import__('os').system('id')",
        "().__class__.__bases__",
        "9**9**9",
        "lambda: 1",
        "[1] * 10**9",
        "open('x')",
        "1/0",
        "10**99 * 10**99",
    ]:
        assert calculator.invoke({"expression": attack}).startswith("error:"), attack


def test_langgraph_base_store(store: FactStore) -> None:
    import asyncio

    from langgraph.store.base import BaseStore

    from factflow.memory.langgraph_store import FactBaseStore

    lg = FactBaseStore(store)
    assert isinstance(lg, BaseStore)
    lg.put(("users", "alice"), "tea", {"text": "Alice prefers green tea.", "kind": "pref"})
    lg.put(("users", "alice"), "n", {"kind": "count", "n": 3})
    lg.put(("users", "bob"), "tea", {"text": "Bob prefers coffee.", "kind": "pref"})
    item = lg.get(("users", "alice"), "tea")
    assert item is not None and item.value == {"text": "Alice prefers green tea.", "kind": "pref"}
    assert lg.search(("users", "alice"), query="what tea does she like")[0].key == "tea"
    assert {i.namespace for i in lg.search(("users",), filter={"kind": "pref"})} == {
        ("users", "alice"),
        ("users", "bob"),
    }
    assert [i.key for i in lg.search(("users", "alice"), filter={"n": {"$gte": 2}})] == ["n"]
    assert lg.list_namespaces(prefix=("users",)) == [("users", "alice"), ("users", "bob")]
    lg.delete(("users", "alice"), "tea")
    assert lg.get(("users", "alice"), "tea") is None
    assert store.get("lg:tea", namespace="users.alice") is not None  # history kept
    assert asyncio.run(lg.aget(("users", "bob"), "tea")).value["kind"] == "pref"  # type: ignore[union-attr]


def test_legacy_chroma_audit_entries_move_to_sqlite(tmp_path: Path) -> None:
    """Stores written before the audit log moved to SQLite kept it in a Chroma collection with a
    dummy embedding: opening such a store moves every entry over and drops the collection."""
    import chromadb
    from chromadb.config import Settings as ChromaSettings

    from factflow.memory.facts import AuditEntry, utcnow
    from factflow.memory.store_audit import LEGACY_AUDIT_COLLECTION

    path = tmp_path / "home" / "facts" / "chroma"
    client = chromadb.PersistentClient(path=str(path), settings=ChromaSettings(anonymized_telemetry=False))
    old = client.get_or_create_collection(LEGACY_AUDIT_COLLECTION, embedding_function=None)
    entries = [
        AuditEntry(id=f"a-{i}", at=utcnow(), namespace="default", action="reject", text=f"claim {i}")
        for i in range(3)
    ]
    old.add(
        ids=[e.id for e in entries],
        embeddings=[[1.0]] * 3,
        documents=[e.model_dump_json() for e in entries],
        metadatas=[{"namespace": "default", "at": e.at.timestamp(), "action": e.action} for e in entries],
    )
    del old, client
    with FactStore.open(Settings(home=tmp_path / "home")) as store:
        assert [e.text for e in store.audit_log()] == ["claim 0", "claim 1", "claim 2"]
        assert LEGACY_AUDIT_COLLECTION not in [c.name for c in store._client.list_collections()]
        store.teach("Acme Corp is headquartered in Lyon.")
        store.invalidate(store.search("Acme", k=1)[0].fact.id)
    with FactStore.open(Settings(home=tmp_path / "home")) as store:  # kept across reopen, no duplicates
        assert [e.action for e in store.audit_log()] == ["reject"] * 3 + ["invalidate"]
        assert (path / "factflow-audit.sqlite3").is_file()


def test_lexical_index_follows_writes_without_a_rebuild(store: FactStore) -> None:
    """Teach / invalidate / delete / rewrite after the BM25 index is built: the same cache object
    answers (no rebuild), and it finds what a fresh build finds."""
    from factflow.memory.store_search import lexical

    for i in range(30):
        store.teach(f"Warehouse {i} in Lyon stores {i * 10} crates of apples.")
    store.search("crates of apples", k=3)
    cache = lexical(store, "default")
    new = store.teach("The Zephyrine lighthouse guards the harbour of Brest.")
    gone = store.teach("The Quorlax observatory sits on a hill near Graz.")
    old = store.search("Warehouse 7 crates", k=1)[0].fact
    store.invalidate(old.id)
    store.delete(gone.id)
    rewritten = Fact(
        id=new.id,
        text="The Zephyrine lighthouse guards the port of Vannes.",
        namespace="default",
        origin="human",
    )
    store._write("default", [rewritten])
    assert lexical(store, "default") is cache and new.id in cache.delta

    def ranked(query: str) -> list[str]:
        return lexical(store, "default").search(query, 5, time.time(), None)

    incremental = {q: ranked(q) for q in ["Zephyrine Vannes", "Quorlax observatory", "harbour of Brest"]}
    assert old.id not in lexical(store, "default").search("crates of apples", 40, time.time(), None)
    store.lexical_caches.clear()
    assert lexical(store, "default") is not cache  # a fresh build from Chroma
    assert incremental == {q: ranked(q) for q in incremental}
    assert incremental["Zephyrine Vannes"][0] == new.id and incremental["Quorlax observatory"] == []
    assert incremental["harbour of Brest"] == []
