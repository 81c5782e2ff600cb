"""The lab's three studies: eval anatomy, sequential and select.

Pure pieces (effective rank, Jaccard, count sketch, Spearman) are checked on tensors whose answer
is known. Each command then runs end to end through the CLI with `--quick` on a tiny randomly
initialised Llama that carries the default model's tokenizer and chat template (the default model
trains too slowly for CI here; the real runs use it), so these check the plumbing and the reports,
not what a 135M model learns.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner, Result

from factflow.agent.cli import app
from factflow.errors import UserError
from factflow.evals.lab_anatomy import (
    changed_mask,
    effective_rank,
    independent_jaccard,
    jaccard,
    module_of,
    tensor_stats,
)
from factflow.evals.lab_data import make_lab_data
from factflow.evals.lab_routes import RouteBudget
from factflow.evals.lab_select import CountSketch, SelectConfig, less_scores, make_pool
from factflow.evals.lab_sequential import Curve, spearman


def test_effective_rank_of_known_spectra() -> None:
    torch.manual_seed(0)
    u = torch.randn(64, 1)
    assert effective_rank(u @ torch.randn(1, 32)) == pytest.approx(1.0, abs=1e-4)  # rank one (fp32 noise)
    assert effective_rank(torch.eye(16)) == pytest.approx(16.0, rel=1e-6)  # flat spectrum: full
    assert effective_rank(torch.zeros(8, 8)) == 0.0


def test_masks_jaccard_and_the_independent_baseline() -> None:
    before = torch.zeros(4)
    a = changed_mask(before, torch.tensor([1.0, 0.0, 1e-7, 1.0]), tol=1e-5)
    b = changed_mask(before, torch.tensor([1.0, 1.0, 0.0, 0.0]), tol=1e-5)
    assert a.tolist() == [True, False, False, True]
    assert jaccard(a, b) == pytest.approx(1 / 3)
    assert math.isnan(jaccard(torch.zeros(3, dtype=torch.bool), torch.zeros(3, dtype=torch.bool)))
    assert independent_jaccard(1.0, 1.0) == 1.0
    assert independent_jaccard(0.1, 0.1) == pytest.approx(0.01 / 0.19)


def test_tensor_stats_counts_bf16_visible_changes() -> None:
    w = torch.ones(10, 10)
    after = w.clone()
    after[0, 0] += 1e-4  # below bf16's resolution at 1.0 (2^-7)
    after[1, :] += 0.5
    s = tensor_stats("model.layers.3.mlp.up_proj.weight", w, after, tol=1e-5, rank=True)
    assert (s.layer, s.module) == ("3", "up_proj")
    assert s.changed == pytest.approx(0.11)
    assert s.changed_bf16 == pytest.approx(0.10)
    assert s.erank is not None and s.erank < 0.2  # two rows moved: rank <= 2 of 10
    assert module_of("model.embed_tokens.weight") == "embed_tokens"


def test_count_sketch_keeps_the_nearest_target_first() -> None:
    torch.manual_seed(0)
    sketch = CountSketch([500, 300], dim=256, seed=0)
    targets = [torch.randn(500), torch.randn(300)]
    near = [targets[0] + 0.1 * torch.randn(500), targets[1] + 0.1 * torch.randn(300)]
    far = [torch.randn(500), torch.randn(300)]
    feats = torch.stack([torch.nn.functional.normalize(sketch(g), dim=0) for g in (far, near)])
    tgt = torch.nn.functional.normalize(sketch(targets), dim=0).unsqueeze(0)
    scores = less_scores(feats, tgt)
    assert scores[1] > 0.9 and scores[0] < 0.3


def test_pool_hides_every_target_among_distractors(tmp_path: Path) -> None:
    cfg = SelectConfig(out=tmp_path, model_path="unused", cache_dir=tmp_path, targets=8, pool=160)
    targets, pool = make_pool(cfg, seed=0)
    keys = {(f.subject, f.relation) for f in pool}
    assert all((t.subject, t.relation) in keys for t in targets)
    assert len(pool) <= 160 and sum((f.subject, f.relation) in {(t.subject, t.relation) for t in targets}
                                    for f in pool) == 8  # fmt: skip


def test_spearman_ties_and_direction() -> None:
    assert spearman([1, 2, 3, 4], [4, 3, 2, 1])[0] == pytest.approx(-1.0)
    assert math.isnan(spearman([1, 2, 3], [0, 0, 0])[0])  # a constant says nothing
    assert math.isnan(spearman([1, 2], [1, 2])[0])


def test_curve_records_every_epoch() -> None:
    facts = make_lab_data(4, 0).facts
    curve = Curve(facts, RouteBudget(max_epochs=3, recall_sample=4, target_recall=1.0, max_train_s=None))
    gold = {f.train_question: f.object for f in facts}

    def knowing(k: int) -> list[str]:  # an answerer that knows the first k facts
        known = {f.train_question for f in facts[:k]}
        return [gold[q] if q in known else "no idea" for q in (f.train_question for f in curve.check)]

    stops = [curve.after_epoch(lambda qs, k=k: knowing(k), steps) for steps, k in ((1, 0), (2, 2), (3, 4))]
    assert stops == [False, False, True] and curve.curve == [0.0, 0.5, 1.0] and curve.reached


# ---- the commands, end to end on a tiny model ---------------------------------------------------


@pytest.fixture(scope="module")
def tiny_model(model_path: str, tmp_path_factory: pytest.TempPathFactory) -> str:
    """A 2-layer random Llama with the default model's tokenizer and chat template."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    folder = tmp_path_factory.mktemp("tiny-llama")
    tok = AutoTokenizer.from_pretrained(model_path)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                      tie_word_embeddings=True, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    torch.manual_seed(0)
    LlamaForCausalLM(cfg).save_pretrained(folder)
    tok.save_pretrained(folder)
    return str(folder)


def _run(tiny_model: str, *args: str) -> Result:
    env = {"FACTFLOW_MODEL": tiny_model, "COLUMNS": "250", "OMP_NUM_THREADS": "1"}
    return CliRunner().invoke(app, ["eval", *args], env=env)


def test_anatomy_quick_writes_a_report(tiny_model: str, tmp_path: Path) -> None:
    out = tmp_path / "anatomy"
    res = _run(tiny_model, "anatomy", "--quick", "--out", str(out))
    assert res.exit_code == 0, res.output
    rows = [json.loads(line) for line in (out / "anatomy.jsonl").read_text().splitlines()]
    runs = [r for r in rows if "tensors" in r]
    arms = ("full_ft", "lora", "rl")
    assert {(r["arm"], r["seed"]) for r in runs} == {(a, s) for a in arms for s in (0, 1)}
    full = next(r for r in runs if r["arm"] == "full_ft")
    lora = next(r for r in runs if r["arm"] == "lora")
    by_name = {t["name"]: t for t in full["tensors"]}
    assert by_name["model.layers.0.self_attn.q_proj.weight"]["changed"] > 0.5  # Adam moves every weight
    lora_q = next(t for t in lora["tensors"] if t["name"] == "model.layers.0.self_attn.q_proj.weight")
    assert lora_q["erank"] is not None and lora_q["erank"] * 64 <= 4 + 1e-6  # merged rank-4 LoRA
    assert all(t["changed"] == 0 for t in lora["tensors"] if t["module"] == "embed_tokens")  # frozen
    assert "lm_head" not in by_name  # tied to the embedding: counted once
    assert any("jaccard" in r and r["arm"] == "full_ft" for r in rows)
    report = (out / "report.md").read_text()
    assert "| full_ft |" in report and (out / "anatomy.png").exists()


def test_sequential_quick_writes_a_report(tiny_model: str, tmp_path: Path) -> None:
    out = tmp_path / "seq"
    res = _run(tiny_model, "sequential", "--quick", "--routes", "full_ft,lora,reft,store", "--out", str(out))
    assert res.exit_code == 0, res.output
    rows = [json.loads(line) for line in (out / "sequential.jsonl").read_text().splitlines()]
    assert [r["route"] for r in rows] == ["full_ft", "lora", "reft", "store"]
    for r in rows:
        assert len(r["b_curve"]) == max(r["b_epochs"], 1) and 0 <= r["recall_a_after_b"] <= 1
    full = rows[0]
    assert full["kl_after_b"] > full["kl_after_a"] > 0  # the same weights kept moving
    assert rows[3]["b_epochs"] == 0  # the store trains nothing
    assert "Spearman" in (out / "report.md").read_text() and (out / "sequential.png").exists()


def test_select_quick_finds_the_targets(tiny_model: str, tmp_path: Path) -> None:
    out = tmp_path / "select"
    res = _run(tiny_model, "select", "--quick", "--out", str(out))
    assert res.exit_code == 0, res.output
    rows = {r["arm"]: r for r in map(json.loads, (out / "select.jsonl").read_text().splitlines())}
    assert set(rows) == {"less", "random", "all"}
    assert rows["less"]["selected"] == rows["random"]["selected"] == 2 and rows["all"]["selected"] == 40
    # even a random network's gradients tie a question to its paraphrase (shared names and answer)
    assert rows["less"]["precision"] > rows["all"]["precision"]
    assert "| less |" in (out / "report.md").read_text() and (out / "select.png").exists()


def test_bad_arguments_are_user_errors(tiny_model: str, tmp_path: Path) -> None:
    """`main` prints a UserError's message and exits 2; through CliRunner it is the exception."""

    def message(*args: str) -> str:
        res = _run(tiny_model, *args, "--out", str(tmp_path))
        assert isinstance(res.exception, UserError), (res.output, res.exception)
        return str(res.exception)

    assert "unknown arm(s) dpo" in message("anatomy", "--arms", "full_ft,dpo")
    assert "unknown sequential route 'proxy'" in message("sequential", "--routes", "proxy")
    assert "must be larger than --targets" in message("select", "--targets", "8", "--pool", "8")
