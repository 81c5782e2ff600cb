"""Drift and plasticity: `factflow eval sequential` learns fact set A, then fact set B, per route.

Per route and seed:

    recall A after A     efficacy on A's training questions once A is learned
    KL after A           KL(base || route) on neutral text once A is learned (lab_metrics.kl_to_base)
    recall A after B     the same questions after B is learned on top: forgetting = after A - after B
    B curve              recall on B's training questions after each epoch of learning B; learning speed
                         = epochs until the budget rule's target (or the cap), and recall after epoch 1
    recall B             final efficacy on B

and the question: does a route that drifts less after A (lower KL) learn B faster? A Spearman
correlation over every (route, seed) point, with a bootstrap interval.

How each route learns B on top of A, reusing the lab's routes (evals/lab_routes.py):
  full_ft  keeps training the A model with the same loop and budget rule
  lora     a fresh LoRA on the merged A model, merged again (the usual way to stack LoRA updates)
  reft     a second LoReFT adapter trained with A's adapter attached and frozen; both stay attached
  store    B's statements added to the store that holds A (teaching appends, so this is the store
           taught A then B); nothing is trained, so its curve is flat at its recall
"""

from __future__ import annotations

import gc
import math
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field

from factflow.errors import UserError
from factflow.evals.lab import read_jsonl_rows
from factflow.evals.lab_data import LabFact, make_lab_data, neutral_texts
from factflow.evals.lab_metrics import accuracy, kl_to_base
from factflow.evals.lab_routes import (
    Answerer,
    Fit,
    HFAnswerer,
    RouteBudget,
    _encode,
    _train_lm,
    learn,
    route_unavailable,
    training_examples,
)
from factflow.evals.stats import fmt_interval, fmt_rate, mean_interval

__all__ = [
    "SEQUENTIAL_ROUTES",
    "SequentialConfig",
    "SequentialRow",
    "load_rows",
    "Curve",
    "spearman",
    "run_sequential",
    "quick_sequential_config",
    "write_sequential_report",
]

SEQUENTIAL_ROUTES = ("full_ft", "lora", "reft", "store")


class SequentialConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    out: Path
    model_path: str
    cache_dir: Path
    facts: int = Field(16, ge=1, description="Facts in A and in B (disjoint, from one seeded world).")
    seeds: list[int] = Field(default_factory=lambda: [0, 1, 2], min_length=1)
    routes: list[str] = Field(default_factory=lambda: list(SEQUENTIAL_ROUTES))
    budget: RouteBudget = Field(default_factory=RouteBudget)
    n_neutral: int = Field(12, ge=1)
    threads: int = Field(1, ge=1)


def quick_sequential_config(out: Path, *, model_path: str, cache_dir: Path,
                            routes: list[str] | None = None) -> SequentialConfig:  # fmt: skip
    budget = RouteBudget(max_new_tokens=8, batch_size=8, max_epochs=2, recall_sample=4, lora_rank=4,
                         reft_layers=[0], reft_rank=2)  # fmt: skip
    return SequentialConfig(out=out, model_path=model_path, cache_dir=cache_dir, facts=4, seeds=[0],
                            routes=routes or list(SEQUENTIAL_ROUTES), budget=budget, n_neutral=2)  # fmt: skip


class SequentialRow(BaseModel):
    model_config = ConfigDict(extra="forbid")

    route: str
    seed: int
    facts: int
    recall_a_after_a: float
    recall_a_after_b: float
    recall_b: float
    kl_after_a: float
    kl_after_b: float
    b_curve: list[float]  # recall on B's checked questions after each epoch of learning B
    b_epochs: int
    b_reached: bool
    notes: str
    finished_at: str


class Curve(Fit):
    """The lab's budget rule, remembering the recall after every epoch (the learning curve)."""

    def __init__(self, facts: list[LabFact], budget: RouteBudget) -> None:
        super().__init__(facts, budget)
        self.curve: list[float] = []

    def after_epoch(self, answer: Callable[[list[str]], list[str]], steps: int) -> bool:
        try:
            return super().after_epoch(answer, steps)
        finally:
            self.curve.append(self.recall)


def _recall(ans: Answerer, facts: list[LabFact]) -> float:
    return accuracy(ans.answer([f.train_question for f in facts]), [f.object for f in facts])


def _full_ft_b(ans: HFAnswerer, b: list[LabFact], budget: RouteBudget, work: Path,
              model_path: str) -> tuple[Answerer, Curve]:  # fmt: skip
    curve = Curve(b, budget)
    _train_lm(ans.model, ans.tokenizer, _encode(ans.tokenizer, training_examples(b)), budget, budget.ft_lr,
              "full FT on B", curve, ans.answer)  # fmt: skip
    return ans, curve


def _lora_b(ans: HFAnswerer, b: list[LabFact], budget: RouteBudget, work: Path,
              model_path: str) -> tuple[Answerer, Curve]:  # fmt: skip
    from peft import LoraConfig, get_peft_model

    targets = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    cfg = LoraConfig(r=budget.lora_rank, lora_alpha=2 * budget.lora_rank, lora_dropout=0.0,
                     target_modules=targets, task_type="CAUSAL_LM")  # the lab's LoRA settings
    peft_model = get_peft_model(ans.model, cfg)
    curve = Curve(b, budget)
    _train_lm(peft_model, ans.tokenizer, _encode(ans.tokenizer, training_examples(b)), budget, budget.lora_lr,
              "LoRA on B", curve, HFAnswerer(peft_model, ans.tokenizer, budget).answer)  # fmt: skip
    return HFAnswerer(peft_model.merge_and_unload(), ans.tokenizer, budget), curve


def _reft_b(ans: HFAnswerer, b: list[LabFact], budget: RouteBudget, work: Path,
              model_path: str) -> tuple[Answerer, Curve]:  # fmt: skip
    from factflow.serving.reft import Example, ReftAdapter, ReftConfig, TrainConfig, train_reft

    curve = Curve(b, budget)
    tc = TrainConfig(epochs=budget.max_epochs, lr=budget.reft_lr, batch_size=budget.train_batch_size,
                     seed=budget.seed, stop_loss=None, patience=budget.max_epochs + 1)  # fmt: skip

    def on_epoch(adapted: Any, steps: int) -> bool:
        return curve.after_epoch(HFAnswerer(adapted, ans.tokenizer, budget).answer, steps)

    examples = [Example(prompt=p, completion=c) for p, c in training_examples(b)]
    rc = ReftConfig(layers=budget.reft_layers, rank=budget.reft_rank)
    out = train_reft(model_path, examples, rc, work / "reft-b", train=tc, model=ans.model,
                     tokenizer=ans.tokenizer, on_epoch=on_epoch)  # fmt: skip
    handle = ReftAdapter.load(out).attach(ans.model)  # on top of A's, still attached

    def close() -> None:
        handle.remove()
        ans.close()

    return HFAnswerer(ans.model, ans.tokenizer, budget, on_close=close), curve


_Continue = Callable[[HFAnswerer, list[LabFact], RouteBudget, Path, str], tuple[Answerer, Curve]]
_CONTINUE: dict[str, _Continue] = {
    "full_ft": _full_ft_b,
    "lora": _lora_b,
    "reft": _reft_b,
}


def _one(route: str, seed: int, cfg: SequentialConfig, base_lp: Any, neutral: list[str]) -> SequentialRow:
    data = make_lab_data(2 * cfg.facts, seed)
    a, b = data.facts[: cfg.facts], data.facts[cfg.facts :]
    budget = cfg.budget.model_copy(update={"seed": seed})
    work = cfg.out / "work" / f"{route}-s{seed}"

    def go(facts: list[LabFact], sub: str) -> Answerer:
        return learn(route, facts, model_path=cfg.model_path, work_dir=work / sub, budget=budget,
                     cache_dir=cfg.cache_dir)  # fmt: skip

    ans_a = go(a, "a")
    recall_aa = _recall(ans_a, a)
    kl_a = kl_to_base(base_lp, ans_a.logprobs_on(neutral) or base_lp)
    if route == "store":  # the store taught A then B holds exactly what teaching A + B in order gives
        ans_a.close()
        ans_b = go(a + b, "ab")
        flat = _recall(ans_b, b)
        curve_list, epochs, reached = [flat], 0, True
    else:
        assert isinstance(ans_a, HFAnswerer)
        ans_b, curve = _CONTINUE[route](ans_a, b, budget, work, cfg.model_path)
        curve_list, epochs, reached = curve.curve, curve.epochs, curve.reached
    kl_b = kl_to_base(base_lp, ans_b.logprobs_on(neutral) or base_lp)
    row = SequentialRow(
        route=route, seed=seed, facts=cfg.facts, recall_a_after_a=recall_aa,
        recall_a_after_b=_recall(ans_b, a), recall_b=_recall(ans_b, b), kl_after_a=kl_a, kl_after_b=kl_b,
        b_curve=curve_list, b_epochs=epochs, b_reached=reached, notes=ans_a.notes,
        finished_at=datetime.now(UTC).isoformat(timespec="seconds"),
    )  # fmt: skip
    ans_b.close()
    return row


def run_sequential(cfg: SequentialConfig) -> Path:
    """Every missing (route, seed) of `cfg`, one JSONL row each (resumable), then the report."""
    for r in cfg.routes:
        if r not in SEQUENTIAL_ROUTES:
            raise UserError(f"unknown sequential route {r!r}: choose from {', '.join(SEQUENTIAL_ROUTES)}")
        if why := route_unavailable(r):
            raise UserError(f"route {r!r} cannot run: {why}; drop it from --routes")
    torch.set_num_threads(cfg.threads)
    cfg.out.mkdir(parents=True, exist_ok=True)
    (cfg.out / "config.json").write_text(cfg.model_dump_json(indent=2))
    results = cfg.out / "sequential.jsonl"
    done = {(r.route, r.seed) for r in load_rows(results)}
    neutral = neutral_texts(0, cfg.n_neutral)
    base = learn("none", [], model_path=cfg.model_path, work_dir=cfg.out / "work" / "base", budget=cfg.budget,
                 cache_dir=cfg.cache_dir)  # fmt: skip
    base_lp = base.logprobs_on(neutral)
    base.close()
    for seed in cfg.seeds:
        for route in cfg.routes:
            if (route, seed) in done:
                continue
            row = _one(route, seed, cfg, base_lp, neutral)
            with results.open("a") as fh:
                fh.write(row.model_dump_json() + "\n")
            gc.collect()
    return write_sequential_report(cfg.out)


def load_rows(path: Path) -> list[SequentialRow]:
    return read_jsonl_rows(path, SequentialRow)


# ---- report ------------------------------------------------------------------------------------


def spearman(x: list[float], y: list[float], iters: int = 2000, seed: int = 0) -> tuple[float, float, float]:
    """Spearman's rho with a percentile bootstrap 95% interval over the points (NaN when undefined)."""
    from scipy.stats import rankdata

    def rho(xs: np.ndarray, ys: np.ndarray) -> float:
        rx, ry = rankdata(xs), rankdata(ys)  # ties share their mean rank
        if rx.std() == 0 or ry.std() == 0:
            return math.nan
        return float(np.corrcoef(rx, ry)[0, 1])

    xa, ya = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    if len(xa) < 3:
        return math.nan, math.nan, math.nan
    rng = np.random.default_rng(seed)
    boots = [rho(xa[i], ya[i]) for i in rng.integers(0, len(xa), size=(iters, len(xa)))]
    boots = [b for b in boots if not math.isnan(b)]
    lo, hi = (np.quantile(boots, [0.025, 0.975]) if boots else (math.nan, math.nan))
    return rho(xa, ya), float(lo), float(hi)


def _mi(values: list[float], digits: int = 2) -> str:
    m, lo, hi = mean_interval(values)
    ci = "" if math.isnan(lo) else f" [{lo:.{digits}f}, {hi:.{digits}f}]"
    return f"{m:.{digits}f}{ci} n={len(values)}"


def _rate(values: list[float], n: int) -> str:
    """A recall cell: one seed -> Wilson interval over its n questions; several -> t-interval over seeds."""
    if len(values) == 1:
        return fmt_rate(round(values[0] * n), n)
    return _mi(values)


def write_sequential_report(out: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = load_rows(out / "sequential.jsonl")
    routes = list(dict.fromkeys(r.route for r in rows))
    n = rows[0].facts if rows else 0
    lines = [
        "# Drift and plasticity: learn A, then B", "",
        f"{n} facts in A and {n} in B. Cells: mean over seeds [95% t-interval] n=seeds; with one seed, "
        f"recalls show the Wilson interval of its {n} training questions.", "",
        "| route | recall A after A | KL after A | recall A after B | forgetting | B recall after epoch 1 | "
        "B epochs (to target or cap) | recall B | KL after B |", "|---|---|---|---|---|---|---|---|---|",
    ]  # fmt: skip
    for route in routes:
        rs = [r for r in rows if r.route == route]
        lines.append(" | ".join([
            f"| {route}", _rate([r.recall_a_after_a for r in rs], n), _mi([r.kl_after_a for r in rs], 4),
            _rate([r.recall_a_after_b for r in rs], n),
            _mi([r.recall_a_after_a - r.recall_a_after_b for r in rs]),
            _mi([r.b_curve[0] for r in rs]), _mi([float(r.b_epochs) for r in rs]),
            _rate([r.recall_b for r in rs], n), _mi([r.kl_after_b for r in rs], 4),
        ]) + " |")  # fmt: skip
    trained = [r for r in rows if r.route != "store"]
    rho_first = spearman([r.kl_after_a for r in trained], [r.b_curve[0] for r in trained])
    rho_final = spearman([r.kl_after_a for r in trained], [r.recall_b for r in trained])
    rho_forget = spearman([r.kl_after_a for r in trained],
                          [r.recall_a_after_a - r.recall_a_after_b for r in trained])  # fmt: skip

    def rho_text(v: tuple[float, float, float]) -> str:
        return "n/a" if math.isnan(v[0]) else f"{v[0]:+.2f} {fmt_interval(v[1], v[2])}"

    lines += [
        "", f"Does lower drift after A predict better learning of B? Over the {len(trained)} trained "
        "(route, seed) points, Spearman rho (bootstrap 95% interval):", "",
        f"- KL after A vs B recall after epoch 1: {rho_text(rho_first)}",
        f"- KL after A vs final B recall: {rho_text(rho_final)}",
        f"- KL after A vs forgetting of A: {rho_text(rho_forget)}",
        "", "A negative rho with B recall means lower drift went with better learning of B. The store "
        "trains nothing (KL comes from its notes in the prompt), so it is left out of the correlation.",
        "", "![curves](sequential.png)",
    ]  # fmt: skip
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for i, route in enumerate(routes):
        rs = [r for r in rows if r.route == route]
        width = max(len(r.b_curve) for r in rs)
        # a curve that stopped at the target stays there for the remaining epochs
        padded = [r.b_curve + [r.b_curve[-1]] * (width - len(r.b_curve)) for r in rs]
        axes[0].plot(range(1, width + 1), np.mean(padded, axis=0), marker="o", label=route, color=f"C{i}")
        axes[1].scatter([r.kl_after_a for r in rs], [r.b_curve[0] for r in rs], label=route, color=f"C{i}")
    axes[0].set(xlabel="epoch on B", ylabel="recall on B (mean over seeds)", title="Plasticity")
    axes[1].set(xlabel="KL(base || route) after A", ylabel="B recall after epoch 1",
                title="Drift vs learning")  # fmt: skip
    axes[1].set_xscale("symlog", linthresh=1e-3)
    for ax in axes:
        ax.legend()
    fig.tight_layout()
    fig.savefig(out / "sequential.png", dpi=100)
    plt.close(fig)
    report = out / "report.md"
    report.write_text("\n".join(lines) + "\n")
    return report

