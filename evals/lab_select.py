"""Which examples to train on: `factflow eval select`, LESS-style gradient selection.

LESS (Xia et al., "LESS: Selecting Influential Data for Targeted Instruction Tuning", arXiv
2402.04333): a candidate's gradient feature is its LoRA gradient, randomly projected to a few
thousand dimensions; candidates are ranked by cosine similarity to the gradients of a few target
examples; training on the top 5% can match or beat training on everything.

Here the pool mixes the target facts' training examples (question -> object) with distracting
examples: facts of another fictional world, alike in form. The target examples whose gradients
steer the ranking are the target facts' *paraphrase* questions with their answers (LESS's few-shot
validation set). Per candidate c and target t:

    g = the gradient of the answer loss w.r.t. the LoRA parameters of the base (rank `lora_rank`)
    phi(g) = S g / ||S g||,  S a seeded count sketch (sparse Johnson-Lindenstrauss projection) to d dims
    score(c) = max_t phi(g_c) . phi(g_t)          (LESS: max over target tasks; each fact is one)

Arms: top 5% by score, a seeded random 5%, and 100% of the pool; each trained with the lab's
full fine-tuning route and budget rule (evals/lab_routes.py). Measured: recall of the target facts
(training and paraphrase questions), locality (general questions the base answers), the share
of selected examples that are targets (selection precision), and the training steps each arm ran.

Differences from LESS, stated in the report: no warm-up LoRA training before taking gradients
(the features come from the base with freshly initialised LoRA, so only the B matrices get
gradient), plain rather than Adam-preconditioned gradients, and a count sketch instead of a
dense Rademacher projection (same JL guarantee, no d x params matrix in memory).
"""

from __future__ import annotations

import gc
import math
import random
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch
from pydantic import BaseModel, ConfigDict, Field
from tqdm.auto import tqdm

from factflow.evals.lab import read_jsonl_rows
from factflow.evals.lab_data import LabFact, locality_probes, make_lab_data
from factflow.evals.lab_metrics import accuracy
from factflow.evals.lab_routes import RouteBudget, _encode, learn
from factflow.evals.stats import fmt_rate, mean_interval

__all__ = [
    "SelectConfig",
    "SelectRow",
    "ARMS",
    "CountSketch",
    "gradient_features",
    "less_scores",
    "make_pool",
    "run_select",
    "quick_select_config",
    "write_select_report",
    "load_rows",
]

ARMS = ("less", "random", "all")


class SelectConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    out: Path
    model_path: str
    cache_dir: Path
    targets: int = Field(16, ge=1, description="Target facts; their examples are hidden in the pool.")
    pool: int = Field(320, ge=2, description="Pool size (targets + distractors).")
    fraction: float = Field(0.05, gt=0, le=1, description="Share of the pool the selected arms train on.")
    seeds: list[int] = Field(default_factory=lambda: [0, 1, 2], min_length=1)
    arms: list[str] = Field(default_factory=lambda: list(ARMS))
    proj_dim: int = Field(1024, ge=8, description="Count-sketch dimensions of a gradient feature.")
    lora_rank: int = Field(8, ge=1, description="LoRA rank of the gradient features (LESS: 128 on 7B).")
    budget: RouteBudget = Field(default_factory=RouteBudget)
    locality_candidates: int | None = Field(None, description="Candidate locality probes tried (None = all).")
    threads: int = Field(1, ge=1)


def quick_select_config(out: Path, *, model_path: str, cache_dir: Path) -> SelectConfig:
    budget = RouteBudget(max_new_tokens=8, batch_size=8, max_epochs=1, recall_sample=4)
    return SelectConfig(out=out, model_path=model_path, cache_dir=cache_dir, targets=2, pool=40, seeds=[0],
                        proj_dim=64, lora_rank=2, budget=budget, locality_candidates=6)  # fmt: skip


class SelectRow(BaseModel):
    model_config = ConfigDict(extra="forbid")

    arm: str
    seed: int
    targets: int
    pool: int
    selected: int
    precision: float  # share of the selected examples that are target facts
    efficacy_hits: int
    paraphrase_hits: int
    locality_hits: int
    locality_n: int
    steps: int
    train_s: float
    finished_at: str


class CountSketch:
    """A seeded sparse JL projection: coordinate i goes to bucket h(i) with sign s(i)."""

    def __init__(self, sizes: list[int], dim: int, seed: int) -> None:
        gen = torch.Generator().manual_seed(seed)
        self.dim = dim
        self.buckets = [torch.randint(0, dim, (n,), generator=gen) for n in sizes]
        self.signs = [torch.randint(0, 2, (n,), generator=gen).float() * 2 - 1 for n in sizes]

    def __call__(self, grads: list[torch.Tensor]) -> torch.Tensor:
        out = torch.zeros(self.dim)
        for g, b, s in zip(grads, self.buckets, self.signs, strict=True):
            out.index_add_(0, b, g.flatten().float() * s)
        return out


def gradient_features(model: Any, tokenizer: Any, pairs: list[tuple[str, str]], sketch: CountSketch,
                      desc: str) -> torch.Tensor:  # fmt: skip
    """(N, d) unit-norm projected LoRA gradients of the answer loss of each (question, answer)."""
    from factflow.serving.training import pad_pairs

    params = [p for p in model.parameters() if p.requires_grad]
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    rows = []
    model.eval()  # no dropout: a feature is a function of the example only
    for enc in tqdm(_encode(tokenizer, pairs), desc=desc, leave=False):
        batch = pad_pairs([enc], pad)
        loss = model(input_ids=batch.ids, attention_mask=batch.mask, labels=batch.labels).loss
        grads = torch.autograd.grad(loss, params)
        rows.append(torch.nn.functional.normalize(sketch(list(grads)), dim=0))
    return torch.stack(rows)


def less_scores(candidates: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """(N,) max cosine of each candidate feature to any target feature (both unit-norm)."""
    return (candidates @ targets.T).max(dim=1).values


def make_pool(cfg: SelectConfig, seed: int) -> tuple[list[LabFact], list[LabFact]]:
    """(targets, shuffled pool); distractors come from another seeded world, so names never repeat."""
    targets = make_lab_data(cfg.targets, seed).facts
    distract = make_lab_data(cfg.pool - cfg.targets, seed + 10_000).facts
    taken = {f.subject for f in targets}
    distract = [f for f in distract if f.subject not in taken]
    pool = targets + distract
    random.Random(f"pool-{seed}").shuffle(pool)
    return targets, pool


def _features(cfg: SelectConfig, targets: list[LabFact], pool: list[LabFact], seed: int) -> torch.Tensor:
    from peft import LoraConfig, get_peft_model

    from factflow.evals.lab_routes import _fresh_model

    model, tok = _fresh_model(cfg.model_path)
    lora = LoraConfig(r=cfg.lora_rank, lora_alpha=2 * cfg.lora_rank, lora_dropout=0.0,
                      target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM")  # fmt: skip
    torch.manual_seed(seed)
    peft_model = get_peft_model(model, lora)
    sizes = [p.numel() for p in peft_model.parameters() if p.requires_grad]
    sketch = CountSketch(sizes, cfg.proj_dim, seed)
    cand = gradient_features(peft_model, tok, [(f.train_question, f.object) for f in pool], sketch, "pool")
    tgt = gradient_features(peft_model, tok, [(f.paraphrase, f.object) for f in targets], sketch, "targets")
    scores = less_scores(cand, tgt)
    del peft_model, model
    gc.collect()
    return scores


def _evaluate(arm: str, chosen: list[LabFact], targets: list[LabFact], probes: list[Any], cfg: SelectConfig,
              seed: int, pool: int) -> SelectRow:  # fmt: skip
    budget = cfg.budget.model_copy(update={"seed": seed})
    ans = learn("full_ft", chosen, model_path=cfg.model_path, work_dir=cfg.out / "work" / f"{arm}-s{seed}",
                budget=budget, cache_dir=cfg.cache_dir)  # fmt: skip
    golds = [f.object for f in targets]
    eff = ans.answer([f.train_question for f in targets])
    para = ans.answer([f.paraphrase for f in targets])
    loc = ans.answer([p.question for p in probes]) if probes else []
    fit = ans.fit or {}
    ans.close()
    keys = {(t.subject, t.relation) for t in targets}  # ids restart in each world; names do not
    hits = [round(accuracy(p, golds) * len(golds)) for p in (eff, para)]
    return SelectRow(
        arm=arm, seed=seed, targets=len(targets), pool=pool, selected=len(chosen),
        precision=sum((f.subject, f.relation) in keys for f in chosen) / len(chosen),
        efficacy_hits=hits[0], paraphrase_hits=hits[1],
        locality_hits=round(accuracy(loc, [p.answers for p in probes]) * len(probes)) if probes else 0,
        locality_n=len(probes), steps=int(fit.get("steps", 0)), train_s=float(fit.get("train_s", 0.0)),
        finished_at=datetime.now(UTC).isoformat(timespec="seconds"),
    )  # fmt: skip


def run_select(cfg: SelectConfig) -> Path:
    """Every missing (arm, seed): features once per seed, then each arm trained and scored."""
    from factflow.errors import UserError

    if bad := [a for a in cfg.arms if a not in ARMS]:
        raise UserError(f"unknown arm(s) {', '.join(bad)}: choose from {', '.join(ARMS)}")
    if cfg.targets >= cfg.pool:
        raise UserError(f"--pool {cfg.pool} must be larger than --targets {cfg.targets}: the pool holds both")
    torch.set_num_threads(cfg.threads)
    cfg.out.mkdir(parents=True, exist_ok=True)
    (cfg.out / "config.json").write_text(cfg.model_dump_json(indent=2))
    results = cfg.out / "select.jsonl"
    done = {(r.arm, r.seed) for r in load_rows(results)}
    base = learn("none", [], model_path=cfg.model_path, work_dir=cfg.out / "work" / "base", budget=cfg.budget,
                 cache_dir=cfg.cache_dir)  # fmt: skip
    probes = locality_probes(cfg.model_path, 0, base.answer, cache_dir=cfg.cache_dir,
                             n_candidates=cfg.locality_candidates)  # fmt: skip
    base.close()
    for seed in cfg.seeds:
        todo = [a for a in cfg.arms if (a, seed) not in done]
        if not todo:
            continue
        targets, pool = make_pool(cfg, seed)
        k = max(1, round(cfg.fraction * len(pool)))
        rand = random.Random(f"random-{seed}").sample(pool, k)
        chosen: dict[str, list[LabFact]] = {"all": pool, "random": rand}
        if "less" in todo:
            scores = _features(cfg, targets, pool, seed)
            chosen["less"] = [pool[i] for i in scores.argsort(descending=True)[:k].tolist()]
        for arm in todo:
            row = _evaluate(arm, chosen[arm], targets, probes, cfg, seed, len(pool))
            with results.open("a") as fh:
                fh.write(row.model_dump_json() + "\n")
            gc.collect()
    return write_select_report(cfg.out)


def load_rows(path: Path) -> list[SelectRow]:
    return read_jsonl_rows(path, SelectRow)


# ---- report ------------------------------------------------------------------------------------


def _pooled(rows: list[SelectRow], hits: str, n: str | int) -> str:
    """Pooled rate over seeds with its Wilson interval, and the seed-mean's t-interval when k > 1."""
    h = sum(getattr(r, hits) for r in rows)
    total = sum(getattr(r, n) if isinstance(n, str) else n for r in rows)
    text = fmt_rate(h, total)
    if len(rows) > 1:
        per = [getattr(r, hits) / (getattr(r, n) if isinstance(n, str) else n) for r in rows
               if (getattr(r, n) if isinstance(n, str) else n)]  # fmt: skip
        _m, lo, hi = mean_interval(per)
        text += f"; seeds [{lo:.2f}, {hi:.2f}] k={len(per)}"
    return text


def write_select_report(out: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from factflow.evals.stats import wilson_interval

    rows = load_rows(out / "select.jsonl")
    arms = [a for a in ARMS if any(r.arm == a for r in rows)]
    first = rows[0] if rows else None
    lines = [
        "# Which examples to train on: LESS-style selection", "",
        (f"Pool: {first.pool} examples, {first.targets} of them the target facts' (the rest facts of another "
         "fictional world). Recall: pooled over seeds, Wilson 95% interval, n = seeds x questions; "
         "then the 95% t-interval of the per-seed rates over k seeds.") if first else "No rows yet.", "",
        "| arm | trained on | target share of selection | efficacy | paraphrase | locality | steps |",
        "|---|---|---|---|---|---|---|",
    ]  # fmt: skip
    for arm in arms:
        rs = [r for r in rows if r.arm == arm]
        prec = sum(r.precision for r in rs) / len(rs)
        lines.append(
            f"| {arm} | {rs[0].selected} | {prec:.2f} | {_pooled(rs, 'efficacy_hits', rs[0].targets)} | "
            f"{_pooled(rs, 'paraphrase_hits', rs[0].targets)} | "
            f"{_pooled(rs, 'locality_hits', 'locality_n')} | "
            f"{sum(r.steps for r in rs) / len(rs):.0f} |"
        )  # fmt: skip
    lines += ["", "Differences from LESS: no warm-up training before taking gradients, plain (not "
              "Adam-preconditioned) gradients, LoRA on q/v only, a count-sketch projection. The target "
              "gradients use the paraphrase questions, so paraphrase recall is not held out from selection "
              "(it is held out from training).", "", "![arms](select.png)"]  # fmt: skip
    fig, ax = plt.subplots(figsize=(7, 4))
    width = 0.25
    for j, (metric, hits) in enumerate((("efficacy", "efficacy_hits"), ("paraphrase", "paraphrase_hits"),
                                        ("locality", "locality_hits"))):  # fmt: skip
        vals: list[float] = []
        errs: list[list[float]] = [[], []]
        for arm in arms:
            rs = [r for r in rows if r.arm == arm]
            n = sum(r.locality_n if metric == "locality" else r.targets for r in rs)
            h = sum(getattr(r, hits) for r in rs)
            lo, hi = wilson_interval(h, n)
            p = h / n if n else math.nan
            vals.append(p)
            errs[0].append(p - lo if n else 0)
            errs[1].append(hi - p if n else 0)
        xs = [i + (j - 1) * width for i in range(len(arms))]
        ax.bar(xs, vals, width, yerr=errs, capsize=3, label=metric)
    ax.set_xticks(range(len(arms)), arms)
    ax.set(ylabel="accuracy (Wilson 95%)", ylim=(0, 1.05), title="Top 5% by gradient vs random 5% vs all")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "select.png", dpi=100)
    plt.close(fig)
    report = out / "report.md"
    report.write_text("\n".join(lines) + "\n")
    return report
