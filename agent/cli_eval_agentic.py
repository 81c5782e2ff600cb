"""`factflow eval bfcl|adapt|appworld`: the agentic benchmarks, added to the shared `eval_app`."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

from factflow.agent.cli_eval import eval_app

if TYPE_CHECKING:
    from langchain_core.language_models import BaseChatModel

__all__ = ["bfcl", "adapt", "appworld"]


def _csv(value: str) -> list[str]:
    return [v.strip() for v in value.split(",") if v.strip()]


def _chat(max_new_tokens: int | None, **overrides: Any) -> BaseChatModel:
    from factflow.agent.cli import load_settings
    from factflow.serving.engines import load_chat_model

    settings = load_settings()
    if max_new_tokens:
        overrides["max_new_tokens"] = max_new_tokens
    return load_chat_model(settings, **overrides)


def _endpoint(endpoint: str | None, model_id: str | None) -> tuple[str | None, str, str]:
    """(base_url, served model id, api key) of the OpenAI-compatible endpoint, if any: --endpoint,
    else the configured one (engine vllm or openai)."""
    from factflow.agent.cli import load_settings
    from factflow.serving.engines import vllm_base_url
    from factflow.serving.vllm_server import SERVED_MODEL_NAME

    settings = load_settings()
    key = settings.api_key.get_secret_value() if settings.api_key else "EMPTY"
    if endpoint is None and settings.engine == "transformers":
        return None, "", key
    url = endpoint or vllm_base_url(settings)
    if model_id:
        return url, model_id, key
    if endpoint is None and settings.engine == "vllm":
        return url, SERVED_MODEL_NAME, key
    if settings.served_model:
        return url, settings.served_model, key
    import openai

    try:
        return url, openai.OpenAI(base_url=url, api_key=key, max_retries=1).models.list().data[0].id, key
    except (openai.APIError, IndexError) as exc:
        from factflow.errors import UserError

        raise UserError(f"no model listed at {url}/models ({exc}): pass --model-id") from exc


@eval_app.command("bfcl")
def bfcl(
    categories: str = typer.Option(
        "quick",
        help="Comma-separated BFCL categories or groups (all, non_live, live, ast, relevance, multi_turn, "
        "memory, quick).",
    ),
    modes: str = typer.Option(
        "constrained",
        help="Comma-separated: fc (BFCL's FC mode, native tools= on an endpoint), prompt (BFCL's "
        "system prompt and parser), constrained (ours: factflow's one-call JSON action).",
    ),
    out: Path = typer.Option(Path("bfcl-results"), help="Folder: one subfolder per mode, and the report."),
    limit: int | None = typer.Option(
        None, help="Seeded random sample of N cases per category (default all)."
    ),
    seed: int = typer.Option(0, help="Seed of the --limit sample."),
    quick: bool = typer.Option(False, help="CI budget: quick categories, 2 cases each."),
    workers: int = typer.Option(1, help="Parallel cases; use 8+ against a server."),
    endpoint: str | None = typer.Option(
        None, help="OpenAI-compatible /v1 URL for fc and prompt (default: the configured engine's)."
    ),
    model_id: str | None = typer.Option(None, help="Model id at --endpoint (default: its first listed)."),
    max_new_tokens: int = typer.Option(256, help="Token cap per model step (the same in every mode)."),
) -> None:
    """BFCL v4 scored by bfcl-eval's own checker.

    Example: factflow eval bfcl --modes prompt,constrained --categories ast --limit 50"""
    import openai

    from factflow.agent.cli import console, load_settings
    from factflow.errors import UserError
    from factflow.evals.agentic_report import summarize, write_bfcl_report
    from factflow.evals.bfcl_data import QUICK_CATEGORIES, expand_categories
    from factflow.evals.bfcl_handlers import make_handler
    from factflow.evals.bfcl_official import MODES, bfcl_version
    from factflow.evals.bfcl_runner import Manifest, git_commit, run_bfcl

    mode_list = _csv(modes)
    for mode in mode_list:
        if mode not in MODES:
            raise UserError(f"unknown BFCL mode {mode!r}: use {', '.join(MODES)}")
    cats = expand_categories(list(QUICK_CATEGORIES) if quick and categories == "quick" else _csv(categories))
    if quick:
        limit = limit or 2
    settings = load_settings()
    url, served, key = _endpoint(endpoint, model_id) if ("fc" in mode_list or endpoint) else (None, "", "")
    if "fc" in mode_list and url is None:
        raise UserError(
            "fc mode needs an OpenAI-compatible endpoint that returns tool_calls: pass --endpoint "
            "http://HOST:PORT/v1 (vLLM: --enable-auto-tool-choice --tool-call-parser ...)"
        )
    start = time.perf_counter()
    by_mode = {}
    rows_by_mode = {}
    for mode in mode_list:
        on_endpoint = mode == "fc" or (mode == "prompt" and endpoint is not None)
        # constrained is factflow's JSON action by definition, even on a server with native tool calls
        chat = None if on_endpoint else _chat(max_new_tokens, tool_calls="json_action")
        handler = make_handler(
            mode, chat=chat, base_url=url if on_endpoint else None, api_key=key, served_model=served,
            max_tokens=max_new_tokens,
        )
        manifest = Manifest(
            mode=mode,
            model=served if on_endpoint else settings.model,
            engine="openai-endpoint" if on_endpoint else settings.engine,
            endpoint=url if on_endpoint else (None if settings.engine == "transformers" else url),
            decoding={"temperature": 0.0, "max_new_tokens": max_new_tokens},
            commit=git_commit(),
            bfcl_eval=bfcl_version(),
            seed=seed,
            limit=limit,
        )
        try:
            rows = run_bfcl(handler, cats, out / mode, manifest, limit=limit, seed=seed, workers=workers)
        except openai.APIConnectionError as exc:
            where = url or "the factflow engine"
            raise UserError(
                f"{mode}: the model server at {where} stopped answering ({exc}); fix it and rerun to resume"
            ) from exc
        by_mode[mode] = summarize(rows)
        rows_by_mode[mode] = rows
    report = write_bfcl_report(by_mode, out, rows_by_mode=rows_by_mode)
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
            tasks.append(DomainRulesTask.with_test_items(limit or (12 if quick else 24)))
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
