"""`factflow eval lookalike`: answer recall over look-alike facts, through the real agent."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Any, Literal

import typer

from factflow.agent.cli_eval import eval_app

__all__ = ["lookalike"]


@eval_app.command("lookalike")
def lookalike(
    engines: str = typer.Option("transformers", help="Comma-separated engines: transformers, vllm."),
    cases: Path | None = typer.Option(None, help="Cases jsonl [default: tests/data/lookalike_cases.jsonl]."),
    limit: int = typer.Option(
        0, min=0, help="Ask about N questions spread over the set: every (total // N)-th (0 = all)."
    ),
    fact_gap: float | None = typer.Option(None, help="Override FACTFLOW_AGENT_FACT_GAP for the run."),
    fact_order: str | None = typer.Option(
        None, help="Override FACTFLOW_AGENT_FACT_ORDER for the run (best_first or best_last)."
    ),
    answer_span: bool | None = typer.Option(
        None, "--answer-span/--no-answer-span", help="Override FACTFLOW_AGENT_ANSWER_SPAN for the run."
    ),
    out: Path | None = typer.Option(None, help="Write one graded row per question to this jsonl."),
) -> None:
    """Ask the look-alike questions through the agent; print answer recall and citation rates.

    Example: factflow eval lookalike --engines transformers,vllm --fact-gap 0.05 --out la.jsonl
    """
    from factflow.agent.cli import console, load_settings
    from factflow.errors import UserError
    from factflow.evals.lookalike import DEFAULT_CASES, load_cases, run_lookalike, summary_lines
    from factflow.serving.engines import load_chat_model
    from factflow.serving.models import resolve_model

    settings = load_settings()
    names = [e.strip() for e in engines.split(",") if e.strip()]
    bad = [e for e in names if e not in ("transformers", "vllm")]
    if bad or not names:
        raise UserError(f"--engines {engines!r}: use transformers, vllm or both, comma-separated")
    if fact_order not in (None, "best_first", "best_last"):
        raise UserError(f"--fact-order {fact_order!r}: use best_first or best_last")
    chosen = load_cases(cases or DEFAULT_CASES)
    chosen = chosen[:: max(1, len(chosen) // limit)] if limit else chosen  # every family, not the first
    overrides: dict[str, Any] = {
        k: v
        for k, v in {
            "agent_fact_gap": fact_gap,
            "agent_fact_order": fact_order,
            "agent_answer_span": answer_span,
        }.items()
        if v is not None
    }
    rows: list[dict[str, Any]] = []
    for engine in names:
        with contextlib.ExitStack() as stack:
            base_url: dict[str, Any] = {}
            if engine == "vllm":
                from factflow.serving.vllm_server import VLLMServer

                # eager: no compile warm-up; greedy outputs are the same
                server = VLLMServer(str(resolve_model(settings)), extra_args=["--enforce-eager"])
                stack.enter_context(server)
                base_url = {"base_url": server.base_url}
            kind: Literal["transformers", "vllm"] = "vllm" if engine == "vllm" else "transformers"
            chat = load_chat_model(settings, engine=kind, temperature=0.0, **base_url)
            results = run_lookalike(chat, chosen, settings=settings, settings_overrides=overrides)
        for line in summary_lines(results, engine):
            console.print(line)
        rows += [{"engine": engine, **overrides, **r.model_dump()} for r in results]
    if out is not None:
        out.write_text("".join(json.dumps(r, sort_keys=True) + "\n" for r in rows), encoding="utf-8")
        console.print(f"rows: {out}")
