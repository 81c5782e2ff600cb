"""Lab metrics on hand-made cases: matching, KL, perplexity, weight change, locality."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from factflow.evals.lab_metrics import (
    TextLogprobs,
    accuracy,
    contains_match,
    exact_match,
    kl_to_base,
    latency_ratio,
    layer_of,
    normalize,
    perplexity,
    ppl_ratio,
    relative_weight_change,
)


def _lp(logits: torch.Tensor, targets: list[int]) -> TextLogprobs:
    return TextLogprobs(torch.log_softmax(logits, -1), torch.tensor(targets))


def test_normalize_and_exact_match() -> None:
    assert normalize("  Drammel.  ") == "drammel"
    assert exact_match("Drammel.", "drammel")
    assert not exact_match("He was born in Drammel.", "Drammel")
    assert exact_match("four", ["4", "four"])


def test_contains_match_whole_words() -> None:
    assert contains_match("He was born in Drammel.", "Drammel")
    assert contains_match("The answer is 10!", ["10", "ten"])
    assert not contains_match("It boils at 100 degrees", "10")  # '10' is not a word of '100'
    assert not contains_match("Paris", "")  # an empty gold never matches
    assert contains_match("Kestrix Dynamics makes it", "kestrix dynamics")


def test_accuracy() -> None:
    assert accuracy(["Paris", "Rome", "x"], ["paris", "rome", "berlin"]) == pytest.approx(2 / 3)
    assert accuracy(["paris is it"], ["paris"], mode="exact") == 0.0
    assert math.isnan(accuracy([], []))
    with pytest.raises(ValueError):
        accuracy(["a"], [])


def test_kl_of_identical_models_is_zero() -> None:
    torch.manual_seed(0)
    texts = [_lp(torch.randn(5, 11), [1, 2, 3, 4, 5]), _lp(torch.randn(3, 11), [0, 0, 1])]
    assert kl_to_base(texts, texts) == pytest.approx(0.0, abs=1e-7)
    assert ppl_ratio(texts, texts) == pytest.approx(1.0)


def test_kl_matches_hand_computation() -> None:
    p = torch.tensor([[0.5, 0.5]])
    q = torch.tensor([[0.9, 0.1]])
    base = [TextLogprobs(p.log(), torch.tensor([0]))]
    route = [TextLogprobs(q.log(), torch.tensor([0]))]
    want = 0.5 * math.log(0.5 / 0.9) + 0.5 * math.log(0.5 / 0.1)
    assert kl_to_base(base, route) == pytest.approx(want, rel=1e-5)
    assert kl_to_base(base, route) > 0
    with pytest.raises(ValueError):
        kl_to_base(base, [TextLogprobs(torch.zeros(2, 2), torch.tensor([0, 1]))])


def test_perplexity_of_uniform_is_vocab_size() -> None:
    t = _lp(torch.zeros(4, 8), [0, 1, 2, 3])
    assert perplexity([t]) == pytest.approx(8.0)


def test_relative_weight_change_per_layer() -> None:
    before = {
        "model.layers.0.mlp.weight": torch.ones(2, 2),
        "model.layers.1.mlp.weight": torch.ones(2, 2),
        "model.embed_tokens.weight": torch.ones(3),
    }
    after = dict(before)
    after["model.layers.1.mlp.weight"] = torch.ones(2, 2) * 1.5
    change = relative_weight_change(before, after)
    assert change["0"] == 0.0
    assert change["1"] == pytest.approx(0.5)
    assert change["other"] == 0.0
    assert layer_of("model.layers.12.self_attn.q_proj.weight") == "12"
    assert layer_of("lm_head.weight") == "other"


def test_latency_ratio() -> None:
    assert latency_ratio(2.0, 1.0) == 2.0
    assert math.isnan(latency_ratio(1.0, 0.0))


def test_report_rebases_latency_on_the_current_none_row(tmp_path: Path) -> None:
    """A resumed lab whose `none` row was rerun: every ratio of that size follows the new timing."""
    from factflow.evals.lab import RunRow, write_report

    def row(route: str, spq: float, stale_ratio: float) -> RunRow:
        return RunRow(route=route, size=16, seed=0, efficacy=0.5, paraphrase=0.5, two_hop=0.0, locality=1.0,
                      kl=0.0, ppl_ratio=1.0, trainable_params=0, learn_s=0.0, seconds_per_query=spq,
                      latency_ratio=stale_ratio, n_eval={}, layer_change=None, samples=[], notes="",
                      budget={}, finished_at="2026-11-29T00:00:00+00:00")  # fmt: skip

    rows = [row("none", 0.5, 1.0), row("store", 2.0, 99.0)]
    (tmp_path / "results.jsonl").write_text("".join(r.model_dump_json() + "\n" for r in rows))
    report = write_report(tmp_path).read_text()
    assert "| store | 16 |" in report
    store_line = next(line for line in report.splitlines() if line.startswith("| store | 16 |"))
    assert "| 4.00 |" in store_line and "99" not in store_line
