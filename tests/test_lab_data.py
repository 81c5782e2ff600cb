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
        # Pure-logic fake: answers only the capital-of-France question right.
        calls.append(questions)
        return ["It is Paris." if "France" in q else "I don't know" for q in questions]

    model = tmp_path / "m"
    model.mkdir()
    (model / "config.json").write_text("{}")
    probes = locality_probes(str(model), 0, fake_answer, cache_dir=tmp_path / "cache")
    assert [p.question for p in probes] == ["What is the capital of France?"]
    again = locality_probes(str(model), 0, fake_answer, cache_dir=tmp_path / "cache")
    assert again == probes and len(calls) == 1  # second call hit the cache
    assert len(locality_candidates(0)) == len(locality_candidates(1))
