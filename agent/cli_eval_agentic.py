"""`factflow eval bfcl|adapt|appworld`: the agentic benchmarks, added to the shared `eval_app`."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import TYPE_CHECKING

import typer

from factflow.agent.cli_eval import eval_app

if TYPE_CHECKING:
    from langchain_core.language_models import BaseChatModel

__all__ = ["bfcl", "adapt", "appworld"]


def _csv(value: str) -> list[str]:
    return [v.strip() for v in value.split(",") if v.strip()]


def _chat(max_new_tokens: int | None) -> BaseChatModel:
    from factflow.agent.cli import load_settings
    from factflow.serving.engines import load_chat_model

    settings = load_settings()
    overrides = {"max_new_tokens": max_new_tokens} if max_new_tokens else {}
    return load_chat_model(settings, **overrides)


@eval_app.command("bfcl")
def bfcl(
    categories: str = typer.Option(
        "quick", help="Comma-separated categories or groups (all, ast, live, relevance, multi_turn, quick)."
    ),
    out: Path = typer.Option(Path("bfcl-results"), help="Folder for bfcl_results.jsonl, report and plot."),
    limit: int | None = typer.Option(None, help="Cases per category (default: all; --quick: 2)."),
    quick: bool = typer.Option(
        False, help="CI budget: quick categories, 2 cases each, short memory prereqs."
    ),
    workers: int = typer.Option(
        1, help="Parallel cases; use 8+ against a vLLM server (FACTFLOW_ENGINE=vllm)."
    ),
    memory_backend: str = typer.Option("kv", help="Memory backend for the memory category: kv or rec_sum."),
    max_new_tokens: int = typer.Option(160, help="Token cap per model step (tool-call JSON needs ~100)."),
) -> None:
    """BFCL v4 per category. Example: factflow eval bfcl --categories simple,parallel,memory --limit 20"""
    from factflow.agent.cli import console
    from factflow.errors import UserError
    from factflow.evals.agentic_report import write_bfcl_report
    from factflow.evals.bfcl_data import expand_categories
    from factflow.evals.bfcl_runner import RunConfig, run_bfcl, summarize

    if memory_backend not in ("kv", "rec_sum"):
        raise UserError(f"--memory-backend {memory_backend!r} is not supported: use kv or rec_sum")
    cats = expand_categories(_csv("quick" if quick and categories == "quick" else categories))
    if quick:
        limit = limit or 2
    config = RunConfig(memory_prereq_turns=2 if quick else None, max_steps=2 if quick else 4)
    chat = _chat(max_new_tokens)
    start = time.perf_counter()
    results = run_bfcl(
        chat,
        cats,
        out,
        limit=limit,
        workers=workers,
        config=config,  # type: ignore[arg-type]
        memory_backend=f"MemoryAPI_{memory_backend}",
    )
    table = summarize(results)
    report = write_bfcl_report(table, out)
    console.print(report.read_text())
    console.print(f"report: {report} ({time.perf_counter() - start:.0f} s)")


@eval_app.command("adapt")
def adapt(
    suites: str = typer.Option(
        "domain_rules,bfcl_simple", help="Comma-separated: domain_rules, bfcl_<category>."
    ),
    methods: str = typer.Option("none,ace_offline,ace_online,dc_rewrite", help="Methods to compare."),
    out: Path = typer.Option(Path("adapt-results"), help="Folder for adapt_results.jsonl, report and plot."),
    limit: int | None = typer.Option(None, help="Items per suite (train + test); default 48 / 40."),
    epochs: int = typer.Option(2, help="Offline ACE epochs over the training split."),
    quick: bool = typer.Option(False, help="CI budget: 12 items (2 per rule), 1 epoch."),
    max_new_tokens: int = typer.Option(384, help="Token cap per model call (reflector JSON needs 200+)."),
) -> None:
    """ACE offline/online vs no playbook vs DC rewrite. Example: factflow eval adapt --quick"""
    from factflow.agent.cli import console
    from factflow.errors import UserError
    from factflow.evals import domain_rules
    from factflow.evals.adapt import AdaptRow, BfclSuite, DomainRulesSuite, Suite, run_adaptation
    from factflow.evals.agentic_report import write_adapt_report

    if quick:
        limit, epochs = limit or 12, 1
    chat = _chat(max_new_tokens)
    rows: list[AdaptRow] = []
    for name in _csv(suites):
        suite: Suite
        fixed = None
        if name == "domain_rules":
            suite = DomainRulesSuite(n=limit or 48)
            fixed = domain_rules.rulebook()
        elif name.startswith("bfcl_"):
            suite = BfclSuite(name.removeprefix("bfcl_"), limit=limit or 40)
        else:
            raise UserError(f"unknown suite {name!r}: use domain_rules or bfcl_<category> (e.g. bfcl_simple)")
        rows += run_adaptation(
            chat,
            suite,
            out,
            methods=_csv(methods),
            epochs=epochs,  # type: ignore[arg-type]
            fixed_context=fixed,
        )
    report = write_adapt_report(rows, out)
    console.print(report.read_text())
    console.print(f"report: {report}")


@eval_app.command("appworld")
def appworld(
    out: Path = typer.Option(Path("appworld-results"), help="Folder for appworld_results.jsonl and report."),
    split: str = typer.Option("dev", help="AppWorld split: train, dev, test_normal, test_challenge."),
    limit: int | None = typer.Option(None, help="Tasks to run (default: all of the split; --quick: 1)."),
    quick: bool = typer.Option(False, help="CI budget: one task, few steps."),
    max_steps: int = typer.Option(20, help="ReAct steps per task."),
) -> None:
    """ACE's ReAct setup on AppWorld (needs `pip install appworld` + `appworld install` + data)."""
    from factflow.agent.cli import console
    from factflow.evals.appworld import require_appworld, run_appworld

    require_appworld()
    chat = _chat(None)
    rows = run_appworld(
        chat,
        out,
        split=split,
        limit=(limit or 1) if quick else limit,  # type: ignore[arg-type]
        max_steps=min(max_steps, 5) if quick else max_steps,
    )
    console.print(json.dumps(rows[-1] if rows else {}, indent=2))
