"""Lab data: deterministic, disjoint training/paraphrase phrasings, valid two-hop chains."""

from __future__ import annotations

import pytest

from factflow.errors import UserError
from factflow.evals.lab_data import RELATIONS, locality_candidates, locality_probes, make_lab_data


def test_same_seed_same_data_and_other_seed_differs() -> None:
    a, b = make_lab_data(64, seed=3), make_lab_data(64, seed=3)
    assert a == b
    assert make_lab_data(64, seed=4).facts != a.facts


@pytest.mark.parametrize("size", [1, 16, 256, 4096])
def test_sizes_and_unique_questions(size: int) -> None:
    data = make_lab_data(size, seed=0)
    assert len(data.facts) == size
    assert len({f.id for f in data.facts}) == size
    assert len({f.train_question for f in data.facts}) == size  # each question has one answer
    assert data.neutral


def test_smaller_size_is_a_prefix() -> None:
    small, big = make_lab_data(16, seed=1), make_lab_data(256, seed=1)
    assert big.facts[:16] == small.facts


def test_paraphrases_never_use_training_templates() -> None:
    data = make_lab_data(256, seed=0)
    train = {RELATIONS[f.relation].train_question.format(s=f.subject) for f in data.facts}
    for f in data.facts:
        assert f.paraphrase not in train
        assert f.paraphrase != f.train_question
        assert f.object in f.statement


def test_two_hop_answers_follow_the_facts() -> None:
    data = make_lab_data(256, seed=0)
    by_id = {f.id: f for f in data.facts}
    assert len(data.two_hop) >= 64
    for h in data.two_hop:
        first, second = by_id[h.fact_ids[0]], by_id[h.fact_ids[1]]
        assert first.subject in h.question
        assert first.object == second.subject  # the bridge entity
        assert h.answer == second.object


def test_bad_size_is_a_user_error() -> None:
    with pytest.raises(UserError):
        make_lab_data(0)


def test_locality_probes_filter_and_cache(tmp_path) -> None:  # type: ignore[no-untyped-def]
    calls: list[list[str]] = []

    def fake_answer(questions: list[str]) -> list[str]:
        # Pure-logic fake: answers only the capital-of-Scotland question right.
        calls.append(questions)
        return ["It is Edinburgh." if "Scotland" in q else "I don't know" for q in questions]

    model = tmp_path / "m"
    model.mkdir()
    (model / "config.json").write_text("{}")
    probes = locality_probes(str(model), 0, fake_answer, cache_dir=tmp_path / "cache")
    assert [p.question for p in probes] == ["What is the capital of Scotland?"]
    again = locality_probes(str(model), 0, fake_answer, cache_dir=tmp_path / "cache")
    assert again == probes and len(calls) == 1  # second call hit the cache
    assert len(locality_candidates(0)) == len(locality_candidates(1))


def test_same_question_catches_rewordings_not_siblings() -> None:
    from factflow.evals.lab_data import same_question

    assert same_question("Which season comes after winter?", "What season comes after winter?")
    assert same_question("What is the largest ocean on Earth?", "What is the largest ocean?")
    assert same_question("What is the capital of France?", "what is the capital of france")
    assert not same_question("What is the capital of France?", "What is the capital of Spain?")
    assert not same_question("What is the opposite of hot?", "What is the opposite of up?")


def test_no_probe_or_retention_question_is_trained_retained_or_distilled() -> None:
    """Locality probes and the retention set share no question (near-verbatim) with any prompt a
    route trains, retains or distils on: the proxy pair's retain and distillation sets, and the
    fact questions and statements every weight / in-context route learns."""
    from factflow.evals.lab_data import same_question
    from factflow.evals.lab_retention import load_retention_set
    from factflow.evals.lab_routes import route_prompts

    data = make_lab_data(256, seed=0)
    trained = route_prompts() + [f.train_question for f in data.facts] + [f.statement for f in data.facts]
    probes = [p.question for p in locality_candidates(0)] + [q.question for q in load_retention_set()]
    clashes = [(p, t) for p in probes for t in trained if same_question(p, t)]
    assert clashes == []


def test_retention_set_is_frozen_broad_and_regenerable() -> None:
    from factflow.evals.lab_retention import load_retention_set, retention_candidates

    kept = load_retention_set()
    assert len(kept) >= 200
    assert len({k.question for k in kept}) == len(kept)
    assert len({k.domain for k in kept}) >= 8
    # every frozen question comes from the generator, answers included (the file can be rebuilt)
    generated = {c.question: c for c in retention_candidates()}
    assert all(generated[k.question] == k for k in kept)
    sample = load_retention_set(limit=8)
    assert len(sample) == 8 and len({k.domain for k in sample}) == 8  # a small slice spans domains
