"""Reports for the agentic benchmarks: Markdown tables and matplotlib PNG plots.

`write_bfcl_report` and `write_adapt_report` read the rows the runners produced and write
`bfcl_report.md` / `bfcl_accuracy.png` and `adapt_report.md` / `adapt_accuracy.png` into OUT.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from factflow.evals.adapt import AdaptRow, adapt_markdown
from factflow.evals.bfcl_data import ALL_CATEGORIES
from factflow.evals.bfcl_runner import CaseResult
from factflow.evals.stats import fmt_rate, paired_bootstrap, wilson_interval

__all__ = [
    "MODE_LABELS",
    "CategoryScore",
    "summarize",
    "paired_differences",
    "write_bfcl_report",
    "write_adapt_report",
    "bfcl_markdown",
    "adapt_markdown",
]

# Below this a resampled mean is nearly constant and its p-value says nothing.
MIN_PAIRED = 10
MODE_LABELS = {"fc": "fc (BFCL FC)", "prompt": "prompt (BFCL prompt)", "constrained": "constrained (ours)"}


@dataclass(frozen=True)
class CategoryScore:
    correct: int
    n: int
    seconds: float
    tokens: int


def summarize(rows: Sequence[CaseResult]) -> dict[str, CategoryScore]:
    """Per-category correct / n / seconds / tokens, in BFCL's category order (prereqs left out)."""
    out: dict[str, CategoryScore] = {}
    for r in rows:
        if not r.scored:
            continue
        old = out.get(r.category, CategoryScore(0, 0, 0.0, 0))
        out[r.category] = CategoryScore(
            old.correct + int(r.valid), old.n + 1, old.seconds + r.seconds, old.tokens + r.tokens
        )
    return dict(sorted(out.items(), key=lambda kv: _order(kv[0])))


def _order(category: str) -> int:
    return ALL_CATEGORIES.index(category) if category in ALL_CATEGORIES else len(ALL_CATEGORIES)


def paired_differences(rows_by_mode: Mapping[str, Sequence[CaseResult]]) -> list[str]:
    """Markdown rows: each pair of modes on the cases both scored, paired bootstrap of the difference."""
    lines = []
    modes = list(rows_by_mode)
    verdicts = {m: {r.id: float(r.valid) for r in rows if r.scored} for m, rows in rows_by_mode.items()}
    for i, a in enumerate(modes):
        for b in modes[i + 1 :]:
            common = sorted(set(verdicts[a]) & set(verdicts[b]))
            if len(common) < MIN_PAIRED:
                lines.append(f"| {a} - {b} | n/a (< {MIN_PAIRED} shared cases) | | | {len(common)} |")
                continue
            res = paired_bootstrap([verdicts[a][c] for c in common], [verdicts[b][c] for c in common])
            interval = f"[{res.low:+.3f}, {res.high:+.3f}]"
            lines.append(f"| {a} - {b} | {res.mean_diff:+.3f} | {interval} | {res.p_value:.3f} | {res.n} |")
    return lines


def bfcl_markdown(
    by_mode: Mapping[str, Mapping[str, CategoryScore]],
    title: str = "BFCL v4",
    rows_by_mode: Mapping[str, Sequence[CaseResult]] | None = None,
) -> str:
    """One column per mode: accuracy [95% Wilson] n per category, pooled mean, BFCL's sections."""
    from factflow.evals.bfcl_leaderboard import WEIGHTS, leaderboard

    labels = [MODE_LABELS.get(m, m) for m in by_mode]
    row_sep = "|---|" + "---:|" * len(labels)
    lines = [
        f"# {title}",
        "",
        "Accuracy [95% Wilson interval] n=cases, each case scored by bfcl-eval's own checker.",
        "",
        "| category | " + " | ".join(labels) + " |",
        row_sep,
    ]
    categories = sorted({c for t in by_mode.values() for c in t}, key=_order)
    for cat in categories:
        cells = [fmt_rate(t[cat].correct, t[cat].n) if cat in t else "not run" for t in by_mode.values()]
        lines.append(f"| {cat} | " + " | ".join(cells) + " |")
    pooled = [
        fmt_rate(sum(s.correct for s in t.values()), sum(s.n for s in t.values())) for t in by_mode.values()
    ]
    lines.append("| pooled mean (every case run) | " + " | ".join(pooled) + " |")
    boards = [leaderboard({c: (s.correct, s.n) for c, s in t.items()}) for t in by_mode.values()]
    lines += [
        "",
        "BFCL's overall formula (weights in %; a category not run counts as 0 and is listed as missing):",
        "",
        "| section | weight | " + " | ".join(labels) + " | missing |",
        "|---|---:|" + "---:|" * len(labels) + "---|",
    ]
    for i, section in enumerate(boards[0]):
        cells = [f"{b[i].accuracy:.3f}" for b in boards]
        missing = sorted({c for b in boards for c in b[i].missing}, key=_order)
        weight = WEIGHTS.get(section.name, 100)
        lines.append(
            f"| {section.name} | {weight} | " + " | ".join(cells) + f" | {', '.join(missing) or '-'} |"
        )
    pairs = paired_differences(rows_by_mode) if rows_by_mode else []
    if pairs:
        lines += [
            "",
            "Paired differences on the same cases (bootstrap, 10,000 resamples, 95% interval, two-sided p):",
            "",
            "| modes | difference | 95% interval | p | n |",
            "|---|---:|---:|---:|---:|",
            *pairs,
        ]
    lines += ["", "| cost | " + " | ".join(labels) + " |", row_sep]
    lines.append(
        "| seconds | "
        + " | ".join(f"{sum(s.seconds for s in t.values()):.0f}" for t in by_mode.values())
        + " |"
    )
    lines.append(
        "| tokens | " + " | ".join(str(sum(s.tokens for s in t.values())) for t in by_mode.values()) + " |"
    )
    return "\n".join(lines) + "\n"


def _bar_png(path: Path, labels: list[str], values: list[float], title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(max(4.0, 0.7 * len(labels) + 2), 3.2))
    ax.bar(labels, values, color="#4C72B0")
    ax.set_ylim(0, 1)
    ax.set_ylabel("accuracy")
    ax.set_title(title)
    ax.tick_params(axis="x", labelrotation=35)
    for i, v in enumerate(values):
        ax.text(i, v + 0.02, f"{v:.2f}", ha="center", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_bfcl_report(
    by_mode: Mapping[str, Mapping[str, CategoryScore]],
    out_dir: Path,
    title: str = "BFCL v4",
    rows_by_mode: Mapping[str, Sequence[CaseResult]] | None = None,
) -> Path:
    """Markdown + PNG (accuracy per category, one bar per mode, 95% interval whiskers)."""
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    out_dir.mkdir(parents=True, exist_ok=True)
    md = out_dir / "bfcl_report.md"
    md.write_text(bfcl_markdown(by_mode, title, rows_by_mode), encoding="utf-8")
    categories = sorted({c for t in by_mode.values() for c in t}, key=_order)
    width = 0.8 / max(1, len(by_mode))
    fig, ax = plt.subplots(figsize=(max(5.0, 0.8 * len(categories) + 2), 3.6))
    for k, (mode, table) in enumerate(by_mode.items()):
        xs, ys, lo, hi = [], [], [], []
        for i, cat in enumerate(categories):
            if cat in table:
                s = table[cat]
                low, high = wilson_interval(s.correct, s.n)
                xs.append(i + k * width)
                ys.append(s.correct / s.n)
                lo.append(s.correct / s.n - low)
                hi.append(high - s.correct / s.n)
        ax.bar(xs, ys, width, yerr=[lo, hi], capsize=2, label=MODE_LABELS.get(mode, mode))
    ax.set_xticks([i + 0.4 - width / 2 for i in range(len(categories))], categories, rotation=35, ha="right")
    ax.set_ylim(0, 1)
    ax.set_ylabel("accuracy (95% CI)")
    ax.set_title(title)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out_dir / "bfcl_accuracy.png", dpi=110)
    plt.close(fig)
    return md


def write_adapt_report(rows: Sequence[AdaptRow], out_dir: Path, title: str = "ACE adaptation") -> Path:
    """Markdown + PNG (one bar per suite/method); returns the Markdown path."""
    out_dir.mkdir(parents=True, exist_ok=True)
    md = out_dir / "adapt_report.md"
    md.write_text(adapt_markdown(rows, title), encoding="utf-8")
    _bar_png(
        out_dir / "adapt_accuracy.png",
        [f"{r.suite}\n{r.method}" for r in rows],
        [r.accuracy for r in rows],
        title,
    )
    return md
