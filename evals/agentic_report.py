"""Reports for the agentic benchmarks: Markdown tables and matplotlib PNG plots.

`write_bfcl_report` and `write_adapt_report` read the rows the runners produced and write
`bfcl_report.md` / `bfcl_accuracy.png` and `adapt_report.md` / `adapt_accuracy.png` into OUT.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from factflow.evals.adapt import AdaptRow, adapt_markdown

__all__ = ["write_bfcl_report", "write_adapt_report", "bfcl_markdown", "adapt_markdown"]


def bfcl_markdown(table: dict[str, dict[str, float]], title: str = "BFCL v4") -> str:
    lines = [
        f"# {title}",
        "",
        "| category | n | accuracy | seconds | tokens |",
        "|---|---:|---:|---:|---:|",
    ]
    for name, row in table.items():
        lines.append(
            f"| {name} | {int(row['n'])} | {row['accuracy']:.3f} | {row['seconds']:.1f} "
            f"| {int(row['tokens'])} |"
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


def write_bfcl_report(table: dict[str, dict[str, float]], out_dir: Path, title: str = "BFCL v4") -> Path:
    """Markdown + PNG of per-category accuracy; returns the Markdown path."""
    out_dir.mkdir(parents=True, exist_ok=True)
    md = out_dir / "bfcl_report.md"
    md.write_text(bfcl_markdown(table, title), encoding="utf-8")
    names = list(table)
    _bar_png(out_dir / "bfcl_accuracy.png", names, [table[n]["accuracy"] for n in names], title)
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
