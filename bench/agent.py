"""Per-turn time split of the agent on the default setup: `python -m factflow.bench.agent`.

Fills a fresh HOME with N synthetic facts (default 10k, one JSONL ingest) and M playbook bullets
(default 1k, one delta), then runs a few turns through `Agent.ask` and reads each turn's timings
from the graph: retrieve (hybrid search), render (playbook within the token budget), decide +
generate (model calls), tools, cite, writeback (the gate). Memory overhead = everything but the
model calls, as a share of the turn; the target is < 10%. The first turn is a warm-up (grammar
compilation, caches) and is reported apart.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

__all__ = ["main", "run", "synthetic_facts", "synthetic_bullets", "PHASES", "MODEL_PHASES"]

PHASES = ("retrieve", "render", "decide", "generate", "tools", "cite", "writeback")
MODEL_PHASES = ("decide", "generate")  # the model's own work; the rest is what memory adds
QUESTIONS = [
    "Which city is the seat of government of Zorbia?",
    "What does the Quillmar river flow into?",
    "Who founded the Velkor observatory?",
    "What is the population of Drassen?",
    "Which metal is mined in Orlath?",
]
_WORD_LIST = (
    "amber basalt cedar delta ember fjord garnet harbor island juniper kestrel lumen marble nectar "
    "onyx prairie quartz raven sable tundra umber violet willow xenon yarrow zephyr"
)
_WORDS = _WORD_LIST.split()
_ATTRS = ["capital", "largest export", "founder", "oldest bridge", "national bird", "river", "festival"]


def synthetic_facts(n: int, seed: int = 0) -> list[str]:
    """n distinct one-sentence facts about made-up places, plus the ones the questions ask for."""
    rng = random.Random(seed)
    base = [
        "The capital of Zorbia is Quillmar.",
        "The Quillmar river flows into the Sea of Tarn.",
        "The Velkor observatory was founded by Ines Marlow.",
        "Drassen has a population of 41,000 people.",
        "Orlath is known for its copper mines.",
    ]
    out = list(base)
    while len(out) < n:
        place = f"{rng.choice(_WORDS).title()}{rng.choice(_WORDS)}"
        value = f"{rng.choice(_WORDS).title()} {rng.choice(_WORDS)}"
        out.append(f"The {rng.choice(_ATTRS)} of {place} {len(out)} is {value}.")
    return out[:n]


def synthetic_bullets(n: int, seed: int = 1) -> list[str]:
    rng = random.Random(seed)
    return [
        f"When a question mentions {rng.choice(_WORDS)} or {rng.choice(_WORDS)} ({i}), "
        f"quote the fact that names it and cite its id."
        for i in range(n)
    ]


def _populate(settings: Any, n_facts: int, n_bullets: int, console: Console) -> None:
    from factflow.memory.bullets import AddOp, Delta
    from factflow.memory.playbook import Playbook
    from factflow.memory.store import FactStore

    path = settings.home / "bench-facts.jsonl"
    path.write_text("\n".join(json.dumps({"text": t}) for t in synthetic_facts(n_facts)) + "\n")
    t0 = time.perf_counter()
    with FactStore.open(settings) as store:
        store.ingest(path, progress=True)
    console.print(f"ingested {n_facts} facts in {time.perf_counter() - t0:.1f}s")
    t0 = time.perf_counter()
    with Playbook.open(settings=settings, dedup_mode="off") as playbook:  # synthetic bullets are distinct
        ops = [AddOp(section="strategies", content=c, id=None) for c in synthetic_bullets(n_bullets)]
        playbook.apply(Delta(ops=list(ops), reason="bench setup"), author="bench")
    console.print(f"added {n_bullets} bullets in {time.perf_counter() - t0:.1f}s")


def run(n_facts: int, n_bullets: int, turns: int, home: Path, console: Console) -> dict[str, Any]:
    """Populate `home`, run `turns` questions (+1 warm-up), return per-phase seconds."""
    from factflow.agent.api import Agent
    from factflow.settings import get_settings

    # fresh state, but the already pulled model of this machine (not a new conversion per run)
    settings = get_settings(home=home, models_dir=get_settings().resolved_models_dir)
    _populate(settings, n_facts, n_bullets, console)
    rows: list[dict[str, float]] = []
    with Agent(settings) as agent:
        for i in range(turns + 1):
            question = QUESTIONS[i % len(QUESTIONS)]
            t0 = time.perf_counter()
            result = agent.ask(question)
            wall = time.perf_counter() - t0
            row = {p: float(result.timings.get(p, 0.0)) for p in PHASES}
            row["turn"] = wall
            rows.append(row)
            console.print(
                f"turn {i}{' (warm-up)' if i == 0 else ''}: {wall:.2f}s, "
                f"cited {result.cited_fact_ids or '-'}: {result.answer[:80]!r}"
            )
    measured = rows[1:] or rows
    mean = {k: statistics.mean(r[k] for r in measured) for k in measured[0]}
    overhead = sum(v for k, v in mean.items() if k in PHASES and k not in MODEL_PHASES)
    return {
        "facts": n_facts,
        "bullets": n_bullets,
        "turns": len(measured),
        "warmup": rows[0],
        "mean": mean,
        "overhead_s": overhead,
        "overhead_share": overhead / mean["turn"] if mean["turn"] else 0.0,
    }


def _table(report: dict[str, Any]) -> Table:
    mean = report["mean"]
    table = Table(
        title=f"agent turn, {report['facts']} facts / {report['bullets']} bullets, mean of {report['turns']}"
    )
    table.add_column("phase")
    table.add_column("seconds", justify="right")
    table.add_column("share", justify="right")
    for phase in (*PHASES, "turn"):
        share = mean[phase] / mean["turn"] if mean["turn"] else 0.0
        table.add_row(phase, f"{mean[phase]:.3f}", f"{100 * share:.1f}%")
    table.add_row("memory overhead", f"{report['overhead_s']:.3f}", f"{100 * report['overhead_share']:.1f}%")
    return table


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--facts", type=int, default=10_000, help="Synthetic facts in the store.")
    parser.add_argument("--bullets", type=int, default=1_000, help="Synthetic playbook bullets.")
    parser.add_argument("--turns", type=int, default=3, help="Measured turns (after one warm-up).")
    parser.add_argument("--home", type=Path, default=None, help="State folder (default: a temp dir).")
    parser.add_argument("--json", type=Path, default=None, help="Also write the report here.")
    from factflow.bench.machine import add_busy_flag, prelude

    add_busy_flag(parser)
    args = parser.parse_args(argv)
    prelude(args.allow_busy)
    console = Console()
    with tempfile.TemporaryDirectory(prefix="factflow-bench-agent-") as tmp:
        home = args.home or Path(tmp)
        report = run(args.facts, args.bullets, args.turns, home, console)
    console.print(_table(report))
    target = "meets" if report["overhead_share"] < 0.10 else "misses"
    console.print(
        f"memory overhead {100 * report['overhead_share']:.1f}% of the turn ({target} the < 10% target)"
    )
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
