"""User control over facts on real embedded Chroma + MiniLM: invalidate (and its cascade), delete
(erasure from the store and the audit log), history, re-ingest, supersedes checks, as-of search,
export -> import, and the `factflow facts` commands for them."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest
from typer.testing import CliRunner

from factflow.errors import UserError
from factflow.memory.store import FactStore
from factflow.settings import Settings

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # MiniLM: 1 thread on a shared box


@pytest.fixture
def store(tmp_path: Path):
    s = FactStore.open(Settings(home=tmp_path / "home"))
    yield s
    s.close()


def _derive(store: FactStore, source_id: str, text: str) -> str:
    """A model fact written through the gate, citing `source_id`."""
    d = store.propose(text, [source_id], [source_id])
    assert d.accepted, d.reasons
    return d.fact_ids[0]


def test_invalidate_cascades_to_derived_model_facts_and_keeps_history(store: FactStore) -> None:
    doc = store.teach("Acme makes sensors. The Kestrel sensor was launched in 2019. It sells for 40 euros.")
    other = store.teach("Brio makes valves.")
    derived = _derive(store, doc.id, "Acme's Kestrel sensor was launched in 2019.")
    second = store.propose(
        f"Acme's Kestrel sensor was launched in 2019 [{derived}] and Brio makes valves [{other.id}].",
        [],
        [derived, other.id],
    )
    assert second.accepted, second.reasons  # derived from a derived fact
    assert {f.id for f in store.derived_facts(doc.id)} == {derived, second.fact_ids[0]}

    store.invalidate(doc.id, reason="recalled")
    for fid in (doc.id, derived, second.fact_ids[0]):
        kept = store.get(fid)
        assert kept is not None and not kept.is_valid()  # history kept, no longer valid
    assert store.get(other.id).is_valid()  # type: ignore[union-attr]
    assert all(h.fact.id == other.id for h in store.search("Kestrel sensor launch", k=5))
    reasons = [e.reasons[0] for e in store.audit_log() if e.action == "invalidate"]
    assert reasons == [
        "recalled",
        f"derived from invalidated fact {doc.id}",
        f"derived from invalidated fact {doc.id}",
    ]

    v1 = store.teach("Acme Corp is headquartered in Lyon.")
    v2 = store.teach("Acme Corp is headquartered in Graz.", supersedes=v1.id)
    v3 = store.teach("Acme Corp is headquartered in Porto.", supersedes=v2.id)
    h = store.history(v2.id)
    assert [f.id for f in h.versions] == [v1.id, v2.id, v3.id]
    assert [f.superseded_by for f in h.versions] == [v2.id, v3.id, None]
    assert [e.action for e in h.audit] == ["invalidate", "invalidate"]


def test_delete_erases_the_fact_its_derivatives_and_its_text_in_the_audit_log(store: FactStore) -> None:
    doc = store.teach(
        "Acme makes sensors. The Kestrel sensor was launched in 2019 at 12 Quill Street. It costs 40 euros."
    )
    derived = _derive(store, doc.id, "Acme's Kestrel sensor was launched in 2019 at 12 Quill Street.")
    store.propose(
        "The Kestrel sensor was launched in 2021 at 12 Quill Street.", [doc.id], [doc.id]
    )  # a reject
    store.invalidate(doc.id)  # the invalidate entries quote the whole texts
    before = json.dumps([e.model_dump(mode="json") for e in store.audit_log()])
    assert "Quill Street" in before

    assert store.delete(doc.id, reason="erasure request") == [doc.id, derived]
    assert store.get(doc.id) is None and store.get(derived) is None
    log = store.audit_log()
    assert "Quill Street" not in json.dumps([e.model_dump(mode="json") for e in log])
    assert log[-1].action == "delete" and log[-1].text == "" and log[-1].fact_ids == [doc.id, derived]
    assert log[-1].reasons == ["erasure request", "with 1 model fact(s) derived from it"]
    assert store.search("Where was the Kestrel sensor launched?", k=5) == []
    with pytest.raises(UserError, match="no fact"):
        store.delete(doc.id)


def test_reingesting_an_edited_file_supersedes_its_old_chunks(store: FactStore, tmp_path: Path) -> None:
    notes = tmp_path / "notes.md"
    notes.write_text("# Acme\n\nAcme is headquartered in Lyon.\n\n# Staff\n\nAcme employs 120 people.\n")
    old = store.ingest(notes, namespace="docs", progress=False)
    again = store.ingest(notes, namespace="docs", progress=False)  # same file: upsert, nothing superseded
    assert [f.id for f in again] == [f.id for f in old]
    assert store.count("docs") == 2 and all(store.get(f.id, "docs").is_valid() for f in old)  # type: ignore[union-attr]
    notes.write_text("# Acme\n\nAcme is headquartered in Graz.\n")
    new = store.ingest(notes, namespace="docs", progress=False)
    assert all(not store.get(f.id, "docs").is_valid() for f in old)  # type: ignore[union-attr]
    assert [h.fact.id for h in store.search("Where is Acme headquartered?", k=5, namespace="docs")] == [
        new[0].id
    ]
    assert {e.reasons[0] for e in store.audit_log("docs")} == {f"superseded by {new[0].source_ids[0]}"}


def test_supersedes_is_checked_before_anything_is_written(store: FactStore) -> None:
    a = store.teach("Acme Corp is headquartered in Lyon.")
    with pytest.raises(UserError, match="no such fact"):
        store.teach("Acme Corp is headquartered in Graz.", supersedes="f-nope")
    assert store.count() == 1 and store.get(a.id).is_valid()  # type: ignore[union-attr]
    b = store.teach("Acme Corp is headquartered in Graz.", supersedes=a.id)
    with pytest.raises(UserError, match="no longer valid"):
        store.teach("Acme Corp is headquartered in Porto.", supersedes=a.id)
    with pytest.raises(UserError, match="no such fact"):
        store.teach("Acme Corp is headquartered in Porto.", namespace="fresh", supersedes=b.id)
    assert store.count() == 2 and "fresh" not in store.namespaces()


def test_search_as_of_a_past_time(store: FactStore) -> None:
    old = store.teach("Acme Corp is headquartered in Lyon.")
    time.sleep(0.05)
    between = datetime.now(UTC)
    time.sleep(0.05)
    new = store.teach("Acme Corp is headquartered in Graz.", supersedes=old.id)
    q = "Where is Acme Corp headquartered?"
    assert [h.fact.id for h in store.search(q, k=3)] == [new.id]
    assert [h.fact.id for h in store.search(q, k=3, as_of=between)] == [old.id]
    assert store.search(q, k=3, as_of=datetime(2000, 1, 1, tzinfo=UTC)) == []


def test_export_then_import_round_trips_every_field(store: FactStore, tmp_path: Path) -> None:
    doc = store.teach("Acme makes sensors. The Kestrel sensor was launched in 2019. It sells for 40 euros.")
    store.teach(
        "Graz is in Austria.", source_ids=["atlas p.3"], metadata={"topic": "geo", "page": 3, "ok": True}
    )
    derived = _derive(store, doc.id, "Acme's Kestrel sensor was launched in 2019.")
    old = store.teach("Acme Corp is headquartered in Lyon.")
    store.teach("Acme Corp is headquartered in Graz.", supersedes=old.id)
    facts = sorted(store.iter_facts(), key=lambda f: f.id)
    assert store.get(derived).verification  # type: ignore[union-attr]
    dump = tmp_path / "all.jsonl"
    dump.write_text("".join(f.model_dump_json() + "\n" for f in facts))

    with FactStore.open(Settings(home=tmp_path / "other")) as fresh:
        got = fresh.import_facts(dump)
        assert len(got) == len(facts)
        back = sorted(fresh.iter_facts(), key=lambda f: f.id)
        assert [f.model_dump() for f in back] == [f.model_dump() for f in facts]
        assert [h.fact.text for h in fresh.search("Where is Acme Corp headquartered?", k=1)] == [
            "Acme Corp is headquartered in Graz."
        ]
        moved = fresh.import_facts(dump, namespace="copy")
        assert {f.namespace for f in moved} == {"copy"} and fresh.count("copy") == len(facts)
        bad = tmp_path / "bad.jsonl"
        bad.write_text('{"text": "no id"}\n')
        with pytest.raises(UserError, match=r"bad.jsonl:1: not a fact record"):
            fresh.import_facts(bad)


def test_facts_commands_for_user_control(tmp_path: Path) -> None:
    from factflow.agent.cli import app

    env = {"FACTFLOW_HOME": str(tmp_path / "cli"), "COLUMNS": "250"}

    def run(*args: str) -> str:
        result = CliRunner().invoke(app, ["facts", *args], env=env)
        assert result.exit_code == 0, (result.output, result.exception)
        return result.output

    def error(*args: str, input: str | None = None) -> str:
        result = CliRunner().invoke(app, ["facts", *args], env=env, input=input)
        assert isinstance(result.exception, UserError), (result.output, result.exception)
        return str(result.exception)

    first = run("add", "Acme Corp is headquartered in Lyon.").split()[1]
    time.sleep(0.05)
    between = datetime.now(UTC).isoformat()
    time.sleep(0.05)
    second = run("add", "Acme Corp is headquartered in Graz.", "--supersedes", first).split()[1]
    assert "no longer valid" in error("add", "Acme Corp is in Porto.", "--supersedes", first)
    past = [
        json.loads(x)["fact"]["id"] for x in run("search", "Acme", "--json", "--as-of", between).splitlines()
    ]
    assert past == [first]
    assert "not a date" in error("search", "Acme", "--as-of", "yesterday")
    history = json.loads(run("history", second, "--json"))
    assert [v["id"] for v in history["versions"]] == [first, second]
    dump = tmp_path / "facts.jsonl"
    run("export", "--all", "-o", str(dump))
    assert f"invalidated {second}" in run("invalidate", second, "--reason", "moved again")
    assert "not deleted" in error("delete", first, input="n\n")  # no --yes, and the prompt is declined
    assert f"deleted {first}" in run("delete", first, "--yes")
    assert "Lyon" not in run("audit")
    assert json.loads(run("import", str(dump), "-n", "restored")) == {
        "imported": 2,
        "namespaces": ["restored"],
    }
    assert "Lyon" in run("show", first, "-n", "restored")
