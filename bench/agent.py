"""Agent turn time on both engines: `python -m factflow.bench.agent [--engines transformers vllm]`.

Fills a fresh HOME with N synthetic facts (default 10k, one JSONL ingest) and M playbook bullets
(default 1k, one delta), then runs the same few turns through `Agent.ask` on each engine (vLLM: a
server started here) and reads each turn's timings from the graph: retrieve (hybrid search),
render (playbook within the token budget), decide + generate (model calls), tools, cite,
writeback (the gate). Beside them: p50 turn (goals: <= 3 s on vLLM, <= 6 s on transformers),
model calls per turn, prompt tokens per call and the share of them vLLM served from its prefix
cache. Memory overhead = everything but the model calls, as a share of the turn (target < 10%).
The first turn per engine is a warm-up (grammar compilation, caches) and is reported apart.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import random
import statistics
import tempfile
import time
from contextvars import ContextVar
from pathlib import Path
from typing import Any

from langchain_core.callbacks import BaseCallbackHandler
from langchain_core.outputs import LLMResult
from langchain_core.tracers.context import register_configure_hook
from rich.console import Console
from rich.table import Table

__all__ = ["main", "run", "synthetic_facts", "synthetic_bullets", "PHASES", "MODEL_PHASES"]

PHASES = ("retrieve", "render", "decide", "generate", "tools", "cite", "writeback")
MODEL_PHASES = ("decide", "generate")  # the model's own work; the rest is what memory adds
TURN_GOAL_S = {"vllm": 3.0, "transformers": 6.0}  # p50 turn at 10k facts / 1k bullets
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


class _CallLog(BaseCallbackHandler):
    """Prompt tokens of each model call, and how many of them the server served from its prefix cache."""

    def __init__(self) -> None:
        self.calls: list[tuple[int, int]] = []  # (prompt tokens, cached prompt tokens)

    def on_llm_end(self, response: LLMResult, **kwargs: Any) -> None:
        for generations in response.generations:
            for generation in generations:
                usage = getattr(getattr(generation, "message", None), "usage_metadata", None) or {}
                if usage:
                    cached = int((usage.get("input_token_details") or {}).get("cache_read", 0) or 0)
                    self.calls.append((int(usage.get("input_tokens", 0)), cached))


_CALL_LOG: ContextVar[_CallLog | None] = ContextVar("factflow_bench_call_log", default=None)
register_configure_hook(_CALL_LOG, inheritable=True)  # every model call of the graph reports to it


def run_engine(settings: Any, turns: int, console: Console) -> dict[str, Any]:
    """`turns` questions (+1 warm-up) on one engine; per-phase seconds, p50 turn, prompt tokens per call."""
    from factflow.agent.api import Agent

    rows: list[dict[str, float]] = []
    calls: list[list[tuple[int, int]]] = []
    with Agent(settings) as agent:
        for i in range(turns + 1):
            question = QUESTIONS[i % len(QUESTIONS)]
            log = _CallLog()
            token = _CALL_LOG.set(log)
            t0 = time.perf_counter()
            try:
                result = agent.ask(question)
            finally:
                _CALL_LOG.reset(token)
            wall = time.perf_counter() - t0
            row = {p: float(result.timings.get(p, 0.0)) for p in PHASES}
            row["turn"] = wall
            rows.append(row)
            calls.append(log.calls)
            console.print(
                f"{settings.engine} turn {i}{' (warm-up)' if i == 0 else ''}: {wall:.2f}s, "
                f"{len(log.calls)} model calls, prompt tokens {[c[0] for c in log.calls]}, "
                f"cited {result.cited_fact_ids or '-'}: {result.answer[:70]!r}"
            )
    measured, measured_calls = (rows[1:], calls[1:]) if turns else (rows, calls)
    mean = {k: statistics.mean(r[k] for r in measured) for k in measured[0]}
    overhead = sum(v for k, v in mean.items() if k in PHASES and k not in MODEL_PHASES)
    flat = [c for turn in measured_calls for c in turn]
    prompt_tokens = sum(c[0] for c in flat)
    return {
        "engine": settings.engine,
        "turns": len(measured),
        "warmup": rows[0],
        "mean": mean,
        "p50_turn_s": statistics.median(r["turn"] for r in measured),
        "calls_per_turn": len(flat) / len(measured),
        "prompt_tokens_per_call": prompt_tokens / len(flat) if flat else 0.0,
        "cached_share": sum(c[1] for c in flat) / prompt_tokens if prompt_tokens else 0.0,
        "overhead_s": overhead,
        "overhead_share": overhead / mean["turn"] if mean["turn"] else 0.0,
    }


def run(
    n_facts: int,
    n_bullets: int,
    turns: int,
    home: Path,
    console: Console,
    engines: list[str],
    base_url: str | None,
) -> list[dict[str, Any]]:
    """Populate `home` once, then run the same turns on each engine (vLLM: a server started here)."""
    from factflow.serving.models import resolve_model
    from factflow.serving.vllm_server import VLLMServer
    from factflow.settings import get_settings

    # fresh state, but the already pulled model of this machine (not a new conversion per run)
    settings = get_settings(home=home, models_dir=get_settings().resolved_models_dir)
    _populate(settings, n_facts, n_bullets, console)
    reports = []
    for engine in engines:
        with contextlib.ExitStack() as stack:
            url = base_url
            if engine == "vllm" and not url:
                url = stack.enter_context(VLLMServer(resolve_model(settings))).base_url
            engine_settings = settings.model_copy(update={"engine": engine, "base_url": url})
            reports.append(run_engine(engine_settings, turns, console))
    for report in reports:
        report.update(facts=n_facts, bullets=n_bullets)
    return reports


def _table(reports: list[dict[str, Any]]) -> Table:
    first = reports[0]
    table = Table(
        title=f"agent turn, {first['facts']} facts / {first['bullets']} bullets, "
        f"mean of {first['turns']} turns"
    )
    table.add_column("phase")
    for report in reports:
        table.add_column(f"{report['engine']} s", justify="right")
        table.add_column("share", justify="right")
    for phase in (*PHASES, "turn"):
        cells = []
        for report in reports:
            mean = report["mean"]
            share = mean[phase] / mean["turn"] if mean["turn"] else 0.0
            cells += [f"{mean[phase]:.3f}", f"{100 * share:.1f}%"]
        table.add_row(phase, *cells)
    rows = {
        "memory overhead": lambda r: (f"{r['overhead_s']:.3f}", f"{100 * r['overhead_share']:.1f}%"),
        "p50 turn": lambda r: (f"{r['p50_turn_s']:.2f}", ""),
        "model calls / turn": lambda r: (f"{r['calls_per_turn']:.1f}", ""),
        "prompt tokens / call": lambda r: (f"{r['prompt_tokens_per_call']:.0f}", ""),
        "cached prompt share": lambda r: (f"{100 * r['cached_share']:.0f}%", ""),
    }
    for name, cell in rows.items():
        table.add_row(name, *[c for r in reports for c in cell(r)])
    return table


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--facts", type=int, default=10_000, help="Synthetic facts in the store.")
    parser.add_argument("--bullets", type=int, default=1_000, help="Synthetic playbook bullets.")
    parser.add_argument("--turns", type=int, default=3, help="Measured turns (after one warm-up).")
    parser.add_argument(
        "--engines", nargs="+", choices=["transformers", "vllm"], default=["transformers", "vllm"]
    )
    parser.add_argument("--base-url", help="an already running vLLM server's /v1 root (else one is started)")
    parser.add_argument("--home", type=Path, default=None, help="State folder (default: a temp dir).")
    parser.add_argument("--json", type=Path, default=None, help="Also write the report here.")
    from factflow.bench.machine import add_busy_flag, prelude

    add_busy_flag(parser)
    args = parser.parse_args(argv)
    prelude(args.allow_busy, own_engine=args.base_url is not None)
    console = Console()
    with tempfile.TemporaryDirectory(prefix="factflow-bench-agent-") as tmp:
        home = args.home or Path(tmp)
        reports = run(args.facts, args.bullets, args.turns, home, console, args.engines, args.base_url)
    console.print(_table(reports))
    for report in reports:
        goal = TURN_GOAL_S[report["engine"]]
        verdict = "meets" if report["p50_turn_s"] <= goal else "misses"
        console.print(
            f"{report['engine']}: p50 turn {report['p50_turn_s']:.2f}s ({verdict} the <= {goal:.0f}s goal), "
            f"memory overhead {100 * report['overhead_share']:.1f}% of the turn"
        )
    if args.json:
        args.json.write_text(json.dumps(reports, indent=2))


if __name__ == "__main__":
    main()
