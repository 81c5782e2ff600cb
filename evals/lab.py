"""The knowledge-accessibility lab runner: every route x every size, one JSONL row each, one report.

    factflow eval lab --routes none,playbook,store,full_ft,lora,reft,proxy --sizes 16,256 --out lab/

A row is appended to DIR/results.jsonl as soon as a (route, size, seed) finishes, so an interrupted
run resumes where it stopped; the report (DIR/report.md + PNG plots) is rebuilt from all rows at the
end. The `none` route always runs first at every size: it is the reference for latency ratios.
A trained cell that would run past the CPU-time limit is recorded in DIR/left_out.jsonl instead
(never as a capped result) and listed in the report. With several seeds every cell shows the mean
over seeds with its 95% Student-t interval and n (seeds x questions).

Anchor (Houliston et al., "Provable Benefits of In-Tool Learning for LLMs", arXiv 2508.20755,
SmolLM-135M, up to 50k facts): in-weight recall 0.997, HellaSwag 76% of base, KL 7.9;
in-tool recall 0.96, HellaSwag 99.8% of base, KL 0.03.
"""

from __future__ import annotations

import gc
import json
import math
import random
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypedDict, TypeVar

from pydantic import BaseModel, ConfigDict, Field
from tqdm.auto import tqdm

from factflow.errors import UserError
from factflow.evals.lab_data import LabData, Probe, locality_probes, make_lab_data
from factflow.evals.lab_metrics import TextLogprobs, accuracy, kl_to_base, latency_ratio, ppl_ratio
from factflow.evals.lab_retention import RetentionQuestion, load_retention_set
from factflow.evals.lab_routes import ROUTES, Answerer, RouteBudget, TooCostly, learn, route_unavailable
from factflow.evals.stats import fmt_interval, fmt_rate, mean_interval

_Row = TypeVar("_Row", bound=BaseModel)

__all__ = [
    "read_jsonl_rows",
    "LabConfig",
    "RunRow",
    "LeftOut",
    "ANCHORS",
    "run_lab",
    "quick_config",
    "write_report",
    "load_rows",
    "load_left_out",
]

class Anchor(TypedDict):
    route: str
    recall: float
    retention: float
    kl: float


ANCHORS: list[Anchor] = [
    {"route": "in-weight (paper)", "recall": 0.997, "retention": 0.76, "kl": 7.9},
    {"route": "in-tool (paper)", "recall": 0.96, "retention": 0.998, "kl": 0.03},
]
WEIGHT_ROUTES = ("full_ft", "lora", "proxy", "tool_ft")  # routes whose weights change (reft: activations)
METRICS = ("efficacy", "paraphrase", "two_hop", "locality", "retention", "kl", "ppl_ratio", "latency_ratio")


class LabConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    routes: list[str] = Field(default_factory=lambda: list(ROUTES))
    sizes: list[int] = Field(default_factory=lambda: [16, 256])
    out: Path
    seed: int = 0
    model_path: str
    cache_dir: Path = Field(description="Locality probes and the distilled anti-expert are cached here.")
    budget: RouteBudget = Field(default_factory=RouteBudget)
    eval_facts: int = Field(48, ge=1, description="Facts sampled (seeded) for efficacy and paraphrase.")
    eval_two_hop: int = Field(24, ge=1)
    locality_candidates: int | None = Field(None, description="Candidate probes tried (None = all).")
    n_neutral: int = Field(12, ge=1, description="Neutral sentences for KL and perplexity.")
    retention_questions: int | None = Field(
        None, ge=1, description="Questions of the frozen retention set asked (None = all of them)."
    )
    threads: int = Field(
        1, ge=1, description="torch CPU threads; 1 is fastest on a shared, oversubscribed CPU (3x measured)"
    )


class RunRow(BaseModel):
    """One (route, size, seed) result: the JSONL line."""

    model_config = ConfigDict(extra="forbid")

    route: str
    size: int
    seed: int
    efficacy: float
    paraphrase: float
    two_hop: float
    locality: float
    retention: float
    kl: float
    ppl_ratio: float
    trainable_params: int
    learn_s: float
    seconds_per_query: float
    latency_ratio: float
    n_eval: dict[str, int]
    layer_change: dict[str, float] | None
    samples: list[dict[str, str]]
    notes: str
    budget: dict[str, Any]
    fit: dict[str, Any] | None = None  # trained routes: steps, epochs, training recall, train_s
    finished_at: str


class LeftOut(BaseModel):
    """A (route, size, seed) the CPU-time limit ruled out: reported, never published as a number."""

    model_config = ConfigDict(extra="forbid")

    route: str
    size: int
    seed: int
    reason: str
    finished_at: str


def quick_config(out: Path, *, model_path: str, cache_dir: Path, seed: int = 0,
                 routes: list[str] | None = None) -> LabConfig:
    """Minutes budgets for CI: 8 facts, one epoch per trained route, small evaluation samples."""
    budget = RouteBudget(max_new_tokens=8, batch_size=8, max_epochs=1, recall_sample=4, proxy_k_layers=2,
                         proxy_distill_epochs=1, tool_demos=4, tool_retain=4, tool_max_new_tokens=32,
                         seed=seed)  # fmt: skip
    return LabConfig(routes=routes or list(ROUTES), sizes=[8], out=out, seed=seed, model_path=model_path,
                     cache_dir=cache_dir, budget=budget, eval_facts=4, eval_two_hop=2,
                     locality_candidates=6, n_neutral=2, retention_questions=8)


def read_jsonl_rows(path: Path, model: type[_Row]) -> list[_Row]:
    """The rows of a lab results file (one pydantic model per line); none when it doesn't exist yet."""
    if not path.exists():
        return []
    return [model.model_validate_json(line) for line in path.read_text().splitlines() if line.strip()]


def load_rows(path: Path) -> list[RunRow]:
    return read_jsonl_rows(path, RunRow)


def load_left_out(path: Path) -> list[LeftOut]:
    return read_jsonl_rows(path, LeftOut)


def _timed_answer(ans: Answerer, questions: list[str]) -> tuple[list[str], float]:
    start = time.perf_counter()
    preds = ans.answer(questions) if questions else []
    return preds, time.perf_counter() - start


def _evaluate(route: str, ans: Answerer, data: LabData, probes: list[Probe], general: list[RetentionQuestion],
              base_lp: list[TextLogprobs], cfg: LabConfig, learn_s: float, base_spq: float | None) -> RunRow:
    rng = random.Random(f"eval-{cfg.seed}-{data.size}")
    facts = rng.sample(data.facts, min(cfg.eval_facts, len(data.facts)))
    hops = data.two_hop[: cfg.eval_two_hop]
    eff, t1 = _timed_answer(ans, [f.train_question for f in facts])
    para, t2 = _timed_answer(ans, [f.paraphrase for f in facts])
    hop, t3 = _timed_answer(ans, [h.question for h in hops])
    loc, t4 = _timed_answer(ans, [p.question for p in probes])
    ret, t5 = _timed_answer(ans, [g.question for g in general])
    n_q = len(facts) * 2 + len(hops) + len(probes) + len(general)
    spq = (t1 + t2 + t3 + t4 + t5) / max(n_q, 1)
    lp = ans.logprobs_on(data.neutral)
    route_lp = lp if lp is not None else base_lp  # no logprobs: the route leaves predictions untouched
    samples = [
        {"q": f.paraphrase, "gold": f.object, "pred": p} for f, p in list(zip(facts, para, strict=True))[:3]
    ]
    return RunRow(
        route=route,
        size=data.size,
        seed=cfg.seed,
        efficacy=accuracy(eff, [f.object for f in facts]),
        paraphrase=accuracy(para, [f.object for f in facts]),
        two_hop=accuracy(hop, [h.answer for h in hops]),
        locality=accuracy(loc, [p.answers for p in probes]),
        retention=accuracy(ret, [g.answers for g in general]),
        kl=kl_to_base(base_lp, route_lp),
        ppl_ratio=ppl_ratio(base_lp, route_lp),
        trainable_params=ans.trainable_params,
        learn_s=learn_s,
        seconds_per_query=spq,
        latency_ratio=latency_ratio(spq, base_spq if base_spq is not None else spq),
        n_eval={"facts": len(facts), "two_hop": len(hops), "locality": len(probes),
                "retention": len(general), "neutral": len(data.neutral)},
        layer_change=ans.layer_change,
        samples=samples,
        notes=ans.notes,
        budget=cfg.budget.model_dump(),
        fit=ans.fit,
        finished_at=datetime.now(UTC).isoformat(timespec="seconds"),
    )


def run_lab(cfg: LabConfig) -> Path:
    """Run every missing (route, size) of `cfg`, append rows, write the report; returns report.md."""
    import torch

    for r in cfg.routes:
        route_unavailable(r)  # raises on unknown names before any work
    torch.set_num_threads(cfg.threads)
    cfg.out.mkdir(parents=True, exist_ok=True)
    results = cfg.out / "results.jsonl"
    (cfg.out / "config.json").write_text(cfg.model_dump_json(indent=2))
    left_out = cfg.out / "left_out.jsonl"
    done = {(r.route, r.size, r.seed) for r in load_rows(results)}
    done |= {(g.route, g.size, g.seed) for g in load_left_out(left_out)}
    general = load_retention_set(limit=cfg.retention_questions)
    routes = ["none"] + [r for r in cfg.routes if r != "none"]
    skipped = {r: why for r in routes if (why := route_unavailable(r))}
    base: Answerer | None = None
    base_lp: list[TextLogprobs] | None = None
    probes: list[Probe] | None = None
    todo = [(s, r) for s in cfg.sizes for r in routes if r not in skipped and (r, s, cfg.seed) not in done]
    for size, route in tqdm(todo, desc="lab runs"):
        data = make_lab_data(size, cfg.seed, n_neutral=cfg.n_neutral)
        if base is None:
            base = learn("none", [], model_path=cfg.model_path, work_dir=cfg.out / "work" / "base",
                         budget=cfg.budget, cache_dir=cfg.cache_dir)
        if probes is None:
            probes = locality_probes(cfg.model_path, cfg.seed, base.answer, cache_dir=cfg.cache_dir,
                                     n_candidates=cfg.locality_candidates)
        if base_lp is None:
            base_lp = base.logprobs_on(data.neutral)
            assert base_lp is not None
        base_spq = next((r.seconds_per_query for r in load_rows(results)
                         if r.route == "none" and r.size == size and r.seed == cfg.seed), None)
        work = cfg.out / "work" / f"{route}-{size}-s{cfg.seed}"
        start = time.perf_counter()
        try:
            ans = base if route == "none" else learn(
                route, data.facts, model_path=cfg.model_path, work_dir=work, budget=cfg.budget,
                cache_dir=cfg.cache_dir)  # fmt: skip
        except TooCostly as exc:
            gone = LeftOut(route=route, size=size, seed=cfg.seed, reason=str(exc),
                           finished_at=datetime.now(UTC).isoformat(timespec="seconds"))
            with left_out.open("a") as fh:
                fh.write(gone.model_dump_json() + "\n")
            gc.collect()
            continue
        learn_s = 0.0 if route == "none" else time.perf_counter() - start
        row = _evaluate(route, ans, data, probes, general, base_lp, cfg, learn_s, base_spq)
        with results.open("a") as fh:
            fh.write(row.model_dump_json() + "\n")
        if ans is not base:
            ans.close()
        del ans
        gc.collect()
    (cfg.out / "skipped.json").write_text(json.dumps(skipped, indent=2))
    return write_report(cfg.out, skipped=skipped)


# ---- report ------------------------------------------------------------------------------------


def _fmt(x: float, digits: int = 3) -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}f}"


def _rate(x: float, n: int) -> str:
    """A recall as 'rate [95% Wilson] n=N' (each question scores 0 or 1)."""
    if x is None or (isinstance(x, float) and math.isnan(x)) or n <= 0:
        return _fmt(x, 2)
    return fmt_rate(round(x * n), n)


N_KEY = {"efficacy": "facts", "paraphrase": "facts", "two_hop": "two_hop", "locality": "locality",
         "retention": "retention"}  # fmt: skip


def _cells(rows: list[RunRow]) -> dict[tuple[str, int], list[RunRow]]:
    """Rows grouped by (route, size): one cell per group, its seeds as repeats."""
    cells: dict[tuple[str, int], list[RunRow]] = {}
    for r in rows:
        cells.setdefault((r.route, r.size), []).append(r)
    return cells


def _stat(cell: list[RunRow], metric: str) -> tuple[float, float, float]:
    """(mean, low, high) of a metric over a cell's seeds: one seed -> Wilson for rates; several ->
    the Student-t interval over seeds (rates clipped to [0, 1]); nan bounds when none applies."""
    values = [float(getattr(r, metric)) for r in cell if not math.isnan(float(getattr(r, metric)))]
    if not values:
        return math.nan, math.nan, math.nan
    if len(values) == 1 and metric in N_KEY:
        n = cell[0].n_eval.get(N_KEY[metric], 0)
        if n <= 0:
            return values[0], math.nan, math.nan
        from factflow.evals.stats import wilson_interval

        low, high = wilson_interval(round(values[0] * n), n)
        return values[0], low, high
    mean, low, high = mean_interval(values)
    if metric in N_KEY and not math.isnan(low):
        low, high = max(0.0, low), min(1.0, high)
    return mean, low, high


def _cell_text(cell: list[RunRow], metric: str, digits: int = 2) -> str:
    """'mean [low, high] n=...' where n = seeds x questions (rates) or seeds (other numbers)."""
    mean, low, high = _stat(cell, metric)
    if math.isnan(mean):
        return "n/a"
    text = f"{mean:.{digits}f}"
    if not math.isnan(low):
        text += " " + (fmt_interval(low, high) if digits == 2 else f"[{low:.{digits}f}, {high:.{digits}f}]")
    per = cell[0].n_eval.get(N_KEY[metric], 0) if metric in N_KEY else 0
    n = f"{len(cell)}x{per}" if per and len(cell) > 1 else str(per) if per else f"{len(cell)} seed(s)"
    return f"{text} n={n}"


def _fit_text(cell: list[RunRow]) -> str:
    fits = [r.fit for r in cell if r.fit]
    if not fits:
        return "-"
    steps = "/".join(str(f["steps"]) for f in fits)
    reached = sum(bool(f["reached_target"]) for f in fits)
    recall = sum(float(f["train_recall"]) for f in fits) / len(fits)
    return f"{steps} steps; target reached {reached}/{len(fits)}; train recall {recall:.2f}"


def _thirds(change: dict[str, float] | None) -> tuple[str, str, str, str]:
    """Mean relative change in the lower / middle / upper third of decoder layers, and 'other'."""
    if not change:
        return ("n/a",) * 4  # type: ignore[return-value]
    layers = sorted((int(k), v) for k, v in change.items() if k != "other")
    n = len(layers)
    parts = [layers[: n // 3], layers[n // 3 : 2 * n // 3], layers[2 * n // 3 :]]
    means = [sum(v for _, v in p) / len(p) if p else math.nan for p in parts]
    return (*(f"{m:.2e}" for m in means), f"{change.get('other', 0.0):.2e}")  # type: ignore[return-value]


def _plots(out: Path, rows: list[RunRow]) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    routes = sorted({r.route for r in rows}, key=lambda x: ROUTES.index(x) if x in ROUTES else 99)
    cells = _cells(rows)
    files = []
    fig, axes = plt.subplots(1, 3, figsize=(15, 4), sharey=True)
    for ax, metric in zip(axes, ("efficacy", "paraphrase", "retention"), strict=True):
        for route in routes:
            sizes = sorted(size for (r, size) in cells if r == route)
            stats = [_stat(cells[route, size], metric) for size in sizes]
            means = [m for m, _, _ in stats]
            lows = [0.0 if math.isnan(lo) else m - lo for m, lo, _ in stats]
            highs = [0.0 if math.isnan(hi) else hi - m for m, _, hi in stats]
            ax.errorbar(sizes, means, yerr=[lows, highs], marker="o", capsize=3, label=route)
        ax.set_xscale("log", base=2)
        ax.set_xlabel("facts learned")
        ax.set_title(f"{metric} vs number of facts (95% interval)")
        ax.set_ylim(-0.02, 1.02)
    axes[0].set_ylabel("recall / accuracy (contains match)")
    axes[2].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "recall_vs_facts.png", dpi=110)
    plt.close(fig)
    files.append("recall_vs_facts.png")

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for route in routes:
        sel = [r for r in rows if r.route == route]
        axes[0].scatter([r.efficacy for r in sel], [r.locality for r in sel], label=route)
        axes[1].scatter([r.efficacy for r in sel], [max(r.kl, 1e-4) for r in sel], label=route)
        for r in sel:
            axes[0].annotate(str(r.size), (r.efficacy, r.locality), fontsize=7)
            axes[1].annotate(str(r.size), (r.efficacy, max(r.kl, 1e-4)), fontsize=7)
    for a in ANCHORS:
        axes[0].scatter([a["recall"]], [a["retention"]], marker="*", s=150, color="black")
        axes[0].annotate(a["route"] + " (HellaSwag)", (a["recall"], a["retention"]), fontsize=7)
        axes[1].scatter([a["recall"]], [a["kl"]], marker="*", s=150, color="black")
        axes[1].annotate(a["route"], (a["recall"], a["kl"]), fontsize=7)
    axes[0].set_xlabel("efficacy recall")
    axes[0].set_ylabel("retention: locality (ours), HellaSwag / base (paper)")
    axes[1].set_xlabel("efficacy recall")
    axes[1].set_ylabel("KL(base || route) on neutral text, nats/token")
    axes[1].set_yscale("log")
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "retention_vs_recall.png", dpi=110)
    plt.close(fig)
    files.append("retention_vs_recall.png")

    changed = [r for r in rows if r.layer_change]
    if changed:
        fig, ax = plt.subplots(figsize=(7, 4))
        for r in changed:
            assert r.layer_change is not None
            pts = sorted((int(k), v) for k, v in r.layer_change.items() if k != "other")
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker=".", label=f"{r.route} @ {r.size}")
        ax.set_xlabel("decoder layer")
        ax.set_ylabel("||dW|| / ||W||")
        ax.set_yscale("log")
        ax.set_title("per-layer relative weight change")
        ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(out / "layer_change.png", dpi=110)
        plt.close(fig)
        files.append("layer_change.png")
    return files


def _with_current_latency(rows: list[RunRow]) -> list[RunRow]:
    """Latency ratios against the `none` row now in the file for the same size and seed: a resumed
    run may have timed `none` in an earlier session, under another machine load; deleting that row
    and rerunning it re-bases every ratio of its size."""
    base = {(r.size, r.seed): r.seconds_per_query for r in rows if r.route == "none"}
    return [
        r.model_copy(update={"latency_ratio": latency_ratio(r.seconds_per_query, base[r.size, r.seed])})
        if (r.size, r.seed) in base else r
        for r in rows
    ]  # fmt: skip


def write_report(out: Path, *, skipped: dict[str, str] | None = None) -> Path:
    """DIR/report.md (+ PNGs) from every row in DIR/results.jsonl."""
    rows = load_rows(out / "results.jsonl")
    if not rows:
        raise UserError(f"{out}/results.jsonl has no results yet: run `factflow eval lab --out {out}` first")
    rows.sort(key=lambda r: (r.size, ROUTES.index(r.route) if r.route in ROUTES else 99, r.seed))
    rows = _with_current_latency(rows)
    cfg = json.loads((out / "config.json").read_text()) if (out / "config.json").exists() else {}
    budget = cfg.get("budget", {})
    plots = _plots(out, rows)
    lines = [
        "# Knowledge-accessibility lab",
        "",
        f"Model: `{cfg.get('model_path', '?')}`; seeds {sorted({r.seed for r in rows})}; "
        f"written {datetime.now(UTC).isoformat(timespec='seconds')}.",
        "One seed: 'rate [95% Wilson interval] n=questions'. Several seeds: 'mean [95% Student-t interval "
        "over seeds] n=seeds x questions'. Budget rule of every trained route: whole epochs until greedy "
        f"recall of {budget.get('recall_sample', '?')} sampled training questions reaches "
        f"{budget.get('target_recall', '?')}, or {budget.get('max_epochs', '?')} epochs over every example; "
        "the last column says how many steps ran and whether the target was reached. Retention: accuracy "
        "on the lab's frozen general-knowledge set (evals/data/lab_retention.jsonl). "
        "Recall = contains match of greedy answers. Efficacy: the training question; paraphrase: a question "
        "template never trained on; two-hop: composes two learned facts; locality: accuracy on general "
        "questions the base answers correctly (1.0 = nothing forgotten). KL(base || route) and the "
        "perplexity ratio are per token on neutral text. Latency is seconds per question relative to `none`.",
        "",
        "## Main table",
        "",
        "| route | facts | seeds | efficacy | paraphrase | two-hop | locality | retention | KL | PPL ratio "
        "| trainable params | learn s | latency x | training (budget rule) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for (route, size), cell in _cells(rows).items():
        learn_s = sum(r.learn_s for r in cell) / len(cell)
        lines.append(
            f"| {route} | {size} | {len(cell)} | {_cell_text(cell, 'efficacy')} "
            f"| {_cell_text(cell, 'paraphrase')} | {_cell_text(cell, 'two_hop')} "
            f"| {_cell_text(cell, 'locality')} | {_cell_text(cell, 'retention')} "
            f"| {_cell_text(cell, 'kl', 3)} | {_cell_text(cell, 'ppl_ratio', 3)} "
            f"| {cell[0].trainable_params:,} | {learn_s:.0f} | {_cell_text(cell, 'latency_ratio')} "
            f"| {_fit_text(cell)} |"
        )
    left = load_left_out(out / "left_out.jsonl")
    if left:
        lines += ["", "## Left out (CPU time)", "",
                  "These cells were stopped by the time limit before the budget rule ended them; "
                  "no number is published for them.", ""]  # fmt: skip
        lines += [f"- {g.route} @ {g.size} facts, seed {g.seed}: {g.reason}" for g in left]
    lines += [
        "",
        "## Anchor: Houliston et al., arXiv 2508.20755 (SmolLM-135M, up to 50k facts)",
        "",
        "| route | recall | retention (HellaSwag / base) | KL to base |",
        "|---|---:|---:|---:|",
    ]
    lines += [f"| {a['route']} | {a['recall']} | {a['retention']} | {a['kl']} |" for a in ANCHORS]
    lines += [
        "",
        "Ours uses locality (general questions) instead of HellaSwag as the retention measure; KL is "
        "measured the same way (base as reference) but on our neutral sentences.",
        "",
        "## Per-layer relative weight change (mean ||dW||/||W|| per third of the decoder)",
        "",
        "| route | facts | lower third | middle third | upper third | embeddings/head/norm |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        if r.layer_change:
            lo, mid, hi, other = _thirds(r.layer_change)
            lines.append(f"| {r.route} | {r.size} | {lo} | {mid} | {hi} | {other} |")
    lines += ["", "proxy: change of the small expert relative to its anti-expert (base untouched).", ""]
    lines += ["## Plots", ""] + [f"![{p}]({p})" for p in plots]
    lines += ["", "## Sample paraphrase answers", ""]
    for r in rows:
        for s in r.samples[:2]:
            lines.append(f"- {r.route} @ {r.size}: _{s['q']}_ -> `{s['pred']}` (gold: {s['gold']})")
    if skipped:
        lines += ["", "## Routes not run", ""] + [f"- {k}: {v}" for k, v in skipped.items()]
    lines += ["", "## Evaluation sizes", ""]
    for r in rows:
        lines.append(f"- {r.route} @ {r.size}: {r.n_eval}")
    report = out / "report.md"
    report.write_text("\n".join(lines) + "\n")
    return report
