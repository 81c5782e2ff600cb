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
                      retention=1.0, kl=0.0, ppl_ratio=1.0, trainable_params=0, learn_s=0.0,
                      seconds_per_query=spq, latency_ratio=stale_ratio, n_eval={}, layer_change=None,
                      samples=[], notes="",
                      budget={}, finished_at="2026-11-29T00:00:00+00:00")  # fmt: skip

    rows = [row("none", 0.5, 1.0), row("store", 2.0, 99.0)]
    (tmp_path / "results.jsonl").write_text("".join(r.model_dump_json() + "\n" for r in rows))
    report = write_report(tmp_path).read_text()
    assert "| store | 16 |" in report
    store_line = next(line for line in report.splitlines() if line.startswith("| store | 16 |"))
    assert "| 4.00 " in store_line and "99" not in store_line


def _row(route: str, seed: int, efficacy: float, kl: float) -> object:
    from factflow.evals.lab import RunRow

    return RunRow(route=route, size=16, seed=seed, efficacy=efficacy, paraphrase=0.5, two_hop=0.0,
                  locality=1.0, retention=0.9, kl=kl, ppl_ratio=1.0, trainable_params=0, learn_s=1.0,
                  seconds_per_query=1.0, latency_ratio=1.0,
                  n_eval={"facts": 4, "two_hop": 2, "locality": 6, "retention": 8}, layer_change=None,
                  samples=[], notes="", budget={},
                  fit={"steps": 4 * (seed + 1), "epochs": seed + 1, "train_recall": 1.0,
                       "reached_target": True, "train_s": 1.0, "checked": 4},
                  finished_at="2026-11-29T00:00:00+00:00")  # fmt: skip


def test_report_pools_seeds_into_mean_interval_and_n(tmp_path: Path) -> None:
    """Three seeds of one cell: one line, mean with the Student-t interval, n = seeds x questions;
    a left-out cell is listed, not given numbers."""
    from factflow.evals.lab import LeftOut, write_report

    rows = [_row("none", s, 0.0, 0.0) for s in range(3)] + [
        _row("full_ft", 0, 0.5, 0.1), _row("full_ft", 1, 0.75, 0.2), _row("full_ft", 2, 1.0, 0.3)]
    text = "".join(r.model_dump_json() + "\n" for r in rows)  # type: ignore[attr-defined]
    (tmp_path / "results.jsonl").write_text(text)
    gone = LeftOut(route="lora", size=1024, seed=0, reason="3 epochs took 4000 s",
                   finished_at="2026-11-29T00:00:00+00:00")
    (tmp_path / "left_out.jsonl").write_text(gone.model_dump_json() + "\n")
    report = write_report(tmp_path).read_text()
    ft = [line for line in report.splitlines() if line.startswith("| full_ft | 16 |")]
    assert len(ft) == 1
    # mean 0.75, s = 0.25, half = 4.303 * 0.25 / sqrt(3) = 0.62 -> [0.13, 1.00] (clipped at 1)
    assert "| 3 | 0.75 [0.13, 1.00] n=3x4 |" in ft[0]
    assert "retention" in report and "0.90 [0.90, 0.90] n=3x8" in ft[0]
    assert "4/8/12 steps; target reached 3/3" in ft[0]
    assert "## Left out (CPU time)" in report and "lora @ 1024 facts, seed 0: 3 epochs took 4000 s" in report
    assert "| lora |" not in report
