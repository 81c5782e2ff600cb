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
    task: str = typer.Option(
        "domain_rules", help="Comma-separated tasks: domain_rules, finer, formula, bfcl_<category>."
    ),
    data: Path | None = typer.Option(
        None, help="Folder with the ACE FiNER/Formula JSONL files (the ACE repository's finance/data)."
    ),
    methods: str = typer.Option(
        "none,fixed,ace_offline,ace_online,ace_online_nolabel,dc_cumulative", help="Methods to compare."
    ),
    out: Path = typer.Option(Path("adapt-results"), help="Folder for adapt_results.jsonl, report and plot."),
    limit: int | None = typer.Option(None, help="Test items per task (seeded sample; default all)."),
    limit_train: int | None = typer.Option(None, help="Training items for offline ACE (default: all)."),
    limit_val: int | None = typer.Option(None, help="Validation items for offline ACE (default: all)."),
    epochs: int = typer.Option(1, help="Offline ACE epochs over the training split."),
    eval_every: int = typer.Option(10, help="Offline ACE: validate every N training steps."),
    batch_size: int = typer.Option(1, help="Samples per Curator call."),
    rounds: int | None = typer.Option(None, help="Reflection rounds (default: setting)."),
    fixed_playbook: Path | None = typer.Option(None, help="Exported playbook (JSON/Markdown) for `fixed`."),
    quick: bool = typer.Option(False, help="CI budget: domain_rules with 12 items, 1 epoch, 1 round."),
    max_new_tokens: int = typer.Option(
        384, help="Cap of free-text calls (DC cheatsheet rewrites, BFCL tool calls); ACE roles use 512."
    ),
) -> None:
    """ACE offline/online (with and without labels) vs none, a fixed playbook and Dynamic Cheatsheet.

    Example: factflow eval adapt --task formula --data ace/finance/data --limit 50"""
    from factflow.agent.cli import console
    from factflow.errors import UserError
    from factflow.evals.adapt import AdaptConfig, AdaptRow, BfclTask, DomainRulesTask, Task, run_adaptation
    from factflow.evals.agentic_report import write_adapt_report

    cfg = AdaptConfig(
        methods=_csv(methods),
        epochs=1 if quick else epochs,
        eval_every=eval_every,
        batch_size=batch_size,
        reflector_rounds=1 if quick else rounds,
        fixed_playbook=fixed_playbook,
    )
    tasks: list[Task] = []
    for name in _csv(task):
        if name == "domain_rules":
            tasks.append(DomainRulesTask(n=(limit or 12 if quick else limit or 24) * 2))
        elif name in ("finer", "formula"):
            from factflow.evals.ace_finance import FinanceTask

            tasks.append(
                FinanceTask(name, data, limit_train=limit_train, limit_val=limit_val, limit_test=limit)
            )
        elif name.startswith("bfcl_"):
            tasks.append(BfclTask(name.removeprefix("bfcl_"), limit=limit or 40))
        else:
            raise UserError(f"unknown task {name!r}: use domain_rules, finer, formula or bfcl_<category>")
    chat = _chat(max_new_tokens)
    rows: list[AdaptRow] = []
    for t in tasks:
        rows += run_adaptation(chat, t, out, cfg)
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
