"""Grow-and-refine with the real MiniLM embedder, and rendering with the real model tokenizer."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from factflow.memory.bullets import AddOp, Delta, MergeOp, PlaybookState, TagOp
from factflow.memory.playbook import Playbook
from factflow.memory.refine import VectorIndex, dedup_ops
from factflow.memory.render import get_token_counter
from factflow.settings import Settings


@pytest.fixture(scope="module")
def embedder():  # type: ignore[no-untyped-def]
    from factflow.memory.embed import get_embedder

    return get_embedder()


def test_proactive_dedup_merges_paraphrases_and_logs_it(tmp_path: Path, embedder, model_path: str) -> None:  # type: ignore[no-untyped-def]
    settings = Settings(home=tmp_path, playbook_tokenizer=model_path, dedup_threshold=0.85)
    pb = Playbook.open(tmp_path / "pb.sqlite3", settings, embedder=embedder, dedup_mode="proactive")
    pb.apply(
        Delta(ops=[AddOp(section="strategies", content="Always convert all units to SI before computing.")])
    )
    pb.apply(Delta(ops=[TagOp(id="strat-00001", tag="helpful", count=2)]))
    pb.apply(
        Delta(
            ops=[
                AddOp(
                    section="strategies", content="Always convert every unit to SI units before computing."
                ),
                AddOp(section="strategies", content="Read the question twice before answering."),
                # same text in another section is not a duplicate: sections mean different things
                AddOp(section="common_mistakes", content="Always convert all units to SI before computing."),
            ]
        )
    )
    state = pb.state()
    assert sorted(state.bullets) == ["mist-00004", "strat-00001", "strat-00003"]
    assert state.bullets["strat-00001"].helpful == 2
    refine = pb.history()[-1]
    assert refine.author == "refine" and refine.kind == "refine"
    assert [(o.type, getattr(o, "ids", None)) for o in refine.ops] == [
        ("MERGE", ["strat-00001", "strat-00002"])
    ]
    assert pb.state_at(pb.version) == state
    # vectors are cached in the file: a new handle does not re-embed old bullets
    calls: list[int] = []

    class Counting:
        dim = embedder.dim

        def embed(self, texts: list[str]) -> np.ndarray:
            calls.append(len(texts))
            return embedder.embed(texts)

    pb2 = Playbook.open(tmp_path / "pb.sqlite3", settings, embedder=Counting(), dedup_mode="proactive")
    pb2.apply(Delta(ops=[AddOp(section="other", content="Cite the bullet ids you used.")]))
    assert calls == [1]


def test_prune_harmful_and_lazy_mode(tmp_path: Path, embedder, model_path: str) -> None:  # type: ignore[no-untyped-def]
    settings = Settings(home=tmp_path, playbook_tokenizer=model_path, playbook_prune_min_harmful=2)
    pb = Playbook.open(tmp_path / "pb.sqlite3", settings, embedder=embedder, dedup_mode="lazy")
    pb.apply(
        Delta(ops=[AddOp(section="strategies", content=f"Lesson {w} about a topic") for w in ("one", "uno")])
    )
    pb.apply(Delta(ops=[AddOp(section="formulas", content="E = m c^2")]))
    assert len(pb.state().bullets) == 3  # lazy: nothing merged while under budget
    pb.apply(Delta(ops=[TagOp(id="form-00003", tag="harmful", count=2)]))
    assert "form-00003" not in pb.state().bullets and pb.history()[-1].author == "refine"  # pruned
    assert len(pb.render(budget_tokens=10_000).bullet_ids) == 2
    r = pb.render("topic", budget_tokens=12)  # over budget -> lazy dedup runs, then selection
    assert pb.history()[-1].ops[0].type == "MERGE" and len(pb.state().bullets) == 1
    assert r.tokens <= 12


def test_dedup_is_incremental_not_all_pairs() -> None:
    rng = np.random.default_rng(0)
    state = PlaybookState()
    index = VectorIndex(8)
    bullets = {}
    for i in range(1, 201):
        from factflow.memory.bullets import Bullet

        b = Bullet(id=f"strat-{i:05d}", section="strategies", content=f"b{i}")
        bullets[b.id] = b
        v = rng.normal(size=8).astype(np.float32)
        index.put(b.id, b.section, b.content, v / np.linalg.norm(v))
    state = PlaybookState(bullets=bullets)
    # bullet 200 is made a near copy of bullet 17; only bullet 200 is checked
    index.put("strat-00200", "strategies", "b200", index.vector("strat-00017") + 1e-3)
    ops = dedup_ops(state, index, ["strat-00200"], threshold=0.95)
    assert ops == [MergeOp(ids=["strat-00017", "strat-00200"], content=None)]
    assert len(index) == 199  # the merged-away vector left the index


def test_render_with_model_tokenizer_stays_under_budget(tmp_path: Path, model_path: str) -> None:
    settings = Settings(home=tmp_path, playbook_tokenizer=model_path)
    counter = get_token_counter(settings)
    pb = Playbook.open(tmp_path / "pb.sqlite3", settings, dedup_mode="off", token_counter=counter)
    pb.apply(
        Delta(
            ops=[
                AddOp(section="strategies", content=f"Strategy number {i}: check case {i} carefully.")
                for i in range(300)
            ]
        )
    )
    for budget in (0, 5, 50, 333, 1200):
        r = pb.render(budget_tokens=budget)
        assert r.tokens == counter.count(r.text) <= budget
        assert r.omitted == 300 - len(r.bullet_ids)
        assert all(f"[{i}]" in r.text for i in r.bullet_ids)
    assert pb.render(budget_tokens=100_000).omitted == 0
