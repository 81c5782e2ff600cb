"""Playbook data model, deterministic merge, op log, rollback, export/import (no model needed)."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from factflow.errors import UserError
from factflow.memory.bullets import (
    AddOp,
    Delta,
    MergeOp,
    PlaybookState,
    RemoveOp,
    TagOp,
    UpdateOp,
)
from factflow.memory.merge import apply_ops
from factflow.memory.playbook import Playbook
from factflow.settings import Settings


class WordCounter:
    """Whitespace token counter: pure-logic tests need a budget, not a real tokenizer."""

    def count(self, text: str) -> int:
        return len(text.split())


def open_pb(path: Path) -> Playbook:
    return Playbook.open(path, Settings(home=path.parent), dedup_mode="off", token_counter=WordCounter())


# ---- strategies: small id/content pools so ops collide often (that is where bugs live) ----
IDS = [f"{p}-{n:05d}" for p in ("strat", "form", "mist") for n in range(1, 8)] + ["nope-1", ""]
SECTIONS = ["strategies", "formulas", "common_mistakes", "bogus"]
CONTENT = st.sampled_from(
    ["check units", "v = d / t", "  ", "", "read twice", "Check  units", "x" * 2001, "a b c"]
)
op_st = st.one_of(
    st.builds(AddOp, section=st.sampled_from(SECTIONS), content=CONTENT),
    st.builds(UpdateOp, id=st.sampled_from(IDS), content=CONTENT),
    st.builds(
        MergeOp,
        ids=st.lists(st.sampled_from(IDS), min_size=2, max_size=3),
        content=st.one_of(st.none(), CONTENT),
    ),
    st.builds(RemoveOp, id=st.sampled_from(IDS)),
    st.builds(TagOp, id=st.sampled_from(IDS), tag=st.sampled_from(["helpful", "harmful", "neutral"])),
)
delta_st = st.builds(Delta, ops=st.lists(op_st, max_size=6))
PROP = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@PROP
@given(st.lists(delta_st, min_size=1, max_size=8), st.floats(0, 2e9))
def test_merge_is_deterministic(deltas: list[Delta], now: float) -> None:
    a = b = PlaybookState()
    for d in deltas:
        oa = apply_ops(a, list(d.ops), now=now, trace_id="t")
        ob = apply_ops(b, list(d.ops), now=now, trace_id="t")
        assert oa.state == ob.state and oa.applied == ob.applied and oa.rejected == ob.rejected
        a, b = oa.state, ob.state


@PROP
@given(st.lists(delta_st, min_size=1, max_size=8))
def test_invalid_ops_never_change_state(deltas: list[Delta]) -> None:
    state = PlaybookState()
    for d in deltas:
        out = apply_ops(state, list(d.ops), now=1.0)
        # a rejected op, applied alone to the state it met (after the delta's earlier ops), is a no-op
        # rejected for the same reason
        rejected = iter(out.rejected)
        for i, op in enumerate(d.ops):
            met = apply_ops(state, list(d.ops[:i]), now=1.0)
            after = apply_ops(state, list(d.ops[: i + 1]), now=1.0)
            if len(after.rejected) > len(met.rejected):
                alone = apply_ops(met.state, [op], now=1.0)
                assert alone.state is met.state and not alone.applied
                assert [r.reason for r in alone.rejected] == [next(rejected).reason]
        assert next(rejected, None) is None  # every rejection of the delta was met above
        # the applied ops alone reproduce the whole delta's effect
        assert apply_ops(state, out.applied, now=1.0).state == out.state
        if not out.applied:
            assert out.state is state
        state = out.state


@PROP
@given(st.lists(delta_st, min_size=1, max_size=8), st.data())
def test_replay_and_rollback_rebuild_exact_states(deltas: list[Delta], data: st.DataObject) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        pb = open_pb(Path(tmp) / "pb.sqlite3")
        seen = {0: pb.state()}
        for d in deltas:
            pb.apply(d, author="hyp")
            seen[pb.version] = pb.state()
        # replaying the op log rebuilds exactly the current playbook, and a fresh load agrees
        assert pb.state_at(pb.version) == pb.state()
        fresh = open_pb(Path(tmp) / "pb.sqlite3")
        assert fresh.state() == pb.state()
        for v, s in seen.items():
            assert pb.state_at(v).same_content(s)
        k = data.draw(st.sampled_from(sorted(seen)))
        pb.rollback(k)
        assert pb.state().same_content(seen[k])
        assert pb.state_at(pb.version) == pb.state()  # the rollback itself replays too
        pb.close()
        fresh.close()


def test_ops_validate_and_reject_with_reasons(tmp_path: Path) -> None:
    pb = open_pb(tmp_path / "pb.sqlite3")
    r = pb.apply(
        Delta(
            ops=[
                AddOp(section="strategies", content="Check the units first."),
                AddOp(section="nowhere", content="x"),
                AddOp(section="formulas", content="   "),
                UpdateOp(id="strat-99999", content="y"),
                AddOp(section="strategies", content="check   the units FIRST."),
                TagOp(id="strat-00001", tag="helpful", count=2),
            ]
        ),
        author="unit",
        trace_id="trace-1",
    )
    reasons = [x.reason for x in r.rejected]
    assert r.version == 1 and len(r.applied) == 2
    assert "unknown section 'nowhere'" in reasons[0]
    assert reasons[1] == "empty content"
    assert "unknown bullet id" in reasons[2]
    assert "same content as strat-00001" in reasons[3]
    b = pb.state().bullets["strat-00001"]
    assert b.helpful == 2 and b.trace_ids == ["trace-1"] and b.sources == ["v1:ADD", "v1:TAG:helpful"]
    # a delta with only invalid ops writes no version
    r2 = pb.apply(Delta(ops=[RemoveOp(id="form-00042")]))
    assert r2.version == 1 and pb.version == 1 and len(pb.history()) == 1


def test_merge_sums_counters_and_keeps_first_id(tmp_path: Path) -> None:
    pb = open_pb(tmp_path / "pb.sqlite3")
    pb.apply(Delta(ops=[AddOp(section="strategies", content=c) for c in ("a one", "a two", "a three")]))
    pb.apply(
        Delta(ops=[TagOp(id="strat-00001", tag="helpful"), TagOp(id="strat-00002", tag="harmful", count=2)])
    )
    r = pb.apply(Delta(ops=[MergeOp(ids=["strat-00002", "strat-00001"], content="a merged")]))
    assert not r.rejected
    assert list(pb.state().bullets) == ["strat-00002", "strat-00003"]
    merged = pb.state().bullets["strat-00002"]
    assert (merged.content, merged.helpful, merged.harmful) == ("a merged", 1, 2)
    # the next ADD does not reuse a freed id
    r = pb.apply(Delta(ops=[AddOp(section="strategies", content="a four")]))
    assert r.applied[0].id == "strat-00004"  # type: ignore[union-attr]


def test_stale_base_version_is_rebased_not_lost(tmp_path: Path) -> None:
    a, b = open_pb(tmp_path / "pb.sqlite3"), open_pb(tmp_path / "pb.sqlite3")
    a.apply(Delta(ops=[AddOp(section="strategies", content="shared")]))
    base = b.version
    a.apply(Delta(ops=[RemoveOp(id="strat-00001")]))
    r = b.apply(
        Delta(ops=[TagOp(id="strat-00001", tag="helpful"), AddOp(section="other", content="mine")]),
        base_version=base,
    )
    assert r.rebased and r.conflicts == ["strat-00001"] and r.base_version == base
    assert [x.reason for x in r.rejected] == ["unknown bullet id 'strat-00001'"]
    assert set(a.state().bullets) == {"misc-00002"} == set(b.state().bullets)


def test_history_rollback_export_import_roundtrip(tmp_path: Path) -> None:
    pb = open_pb(tmp_path / "pb.sqlite3")
    pb.apply(Delta(ops=[AddOp(section="strategies", content="plan first")]), author="alice", reason="r1")
    pb.apply(Delta(ops=[AddOp(section="formulas", content="a = F / m")]), author="bob", trace_id="t9")
    pb.apply(Delta(ops=[TagOp(id="form-00002", tag="helpful")]))
    hist = pb.history()
    assert [(h.version, h.author, h.kind) for h in hist] == [
        (1, "alice", "delta"),
        (2, "bob", "delta"),
        (3, "", "delta"),
    ]
    assert hist[1].trace_id == "t9" and hist[0].reason == "r1"

    js, md = pb.export_json(), pb.export_markdown()
    assert json.loads(js)["format"] == "factflow-playbook/1"
    assert "- [form-00002] a = F / m (helpful 1, harmful 0)" in md
    snapshot = pb.state()

    r = pb.rollback(1)
    assert set(pb.state().bullets) == {"strat-00001"} and r.version == 4
    assert pb.history()[-1].kind == "rollback"

    pb.import_json(js)
    assert pb.state().same_content(snapshot)
    pb.rollback(0)
    assert not pb.state().bullets
    pb.import_markdown(md)
    assert {i: (b.content, b.helpful) for i, b in pb.state().bullets.items()} == {
        "strat-00001": ("plan first", 0),
        "form-00002": ("a = F / m", 1),
    }
    with pytest.raises(UserError, match="not a factflow playbook export"):
        pb.import_json("{not json")
    with pytest.raises(UserError, match="does not exist"):
        pb.rollback(999)


def test_render_budget_selects_relevant_and_helpful(tmp_path: Path) -> None:
    class KeywordEmbedder:
        dim = 3

        def embed(self, texts: list[str]):  # type: ignore[no-untyped-def]
            import numpy as np

            rows = [[t.count("unit") + 0.01, t.count("speed") + 0.01, 0.01] for t in texts]
            m = np.asarray(rows, dtype=np.float32)
            return m / np.linalg.norm(m, axis=1, keepdims=True)

    pb = Playbook.open(
        tmp_path / "pb.sqlite3",
        Settings(home=tmp_path),
        dedup_mode="off",
        token_counter=WordCounter(),
        embedder=KeywordEmbedder(),
    )
    contents = [f"filler lesson number {i} about nothing much" for i in range(30)]
    contents[7] = "always convert unit before dividing"
    contents[20] = "speed is distance over time"
    pb.apply(Delta(ops=[AddOp(section="strategies", content=c) for c in contents]))
    pb.apply(Delta(ops=[TagOp(id="strat-00021", tag="helpful", count=5)]))
    full = pb.render(budget_tokens=10_000)
    assert full.omitted == 0 and len(full.bullet_ids) == 30
    assert "[strat-00008] helpful=0 harmful=0 :: always convert" in full.text
    small = pb.render("what unit should I use", budget_tokens=50)
    assert small.tokens <= 50 and small.omitted == 30 - len(small.bullet_ids) > 0
    assert "strat-00008" in small.bullet_ids  # most relevant
    assert "strat-00021" in small.bullet_ids  # most helpful
    assert f"({small.omitted} more bullets left out" in small.text
    # the helpful half comes first and does not depend on the question: a stable prompt prefix
    other = pb.render("how fast is it, what speed", budget_tokens=50)
    stable = small.text.split("## strategies (for this question)")[0]
    assert stable.startswith("## strategies\n[strat-00021]") and other.text.startswith(stable)
    assert "strat-00008" not in other.bullet_ids  # the query's picks differ
