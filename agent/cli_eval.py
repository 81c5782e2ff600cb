"""`factflow eval`: reproducible experiments. `lab` runs the knowledge-accessibility lab.

Other evaluations (bfcl, adapt, appworld) add their commands to the same `eval_app`.
"""

from __future__ import annotations

from pathlib import Path

import typer

__all__ = ["eval_app"]

eval_app = typer.Typer(
    help="Run evaluations. Example: factflow eval lab --quick --out lab-quick", no_args_is_help=True
)


def _csv(value: str) -> list[str]:
    return [v.strip() for v in value.split(",") if v.strip()]


@eval_app.command("lab")
def lab(
    routes: str = typer.Option(
        "none,playbook,store,full_ft,lora,reft,proxy,tool_ft", help="Comma-separated routes to compare."
    ),
    sizes: str = typer.Option("16,256", help="Comma-separated numbers of facts, e.g. 16,256,1024."),
    out: Path = typer.Option(Path("lab-results"), help="Folder for results.jsonl, report.md and plots."),
    seed: int = typer.Option(0, help="Data, sampling and training seed."),
    seeds: int | None = typer.Option(
        None, min=1, help="Run K seeds: SEED .. SEED+K-1, one report with mean and 95% interval "
        "per cell [default: 3; 1 with --quick]."
    ),
    quick: bool = typer.Option(False, help="CI budget, a few minutes: 8 facts, one epoch (ignores --sizes)."),
    target_recall: float = typer.Option(0.99, help="Trained routes stop once training recall reaches this."),
    max_epochs: int = typer.Option(10, help="...or after this many epochs over every training example."),
    recall_sample: int = typer.Option(64, help="Training questions whose recall is checked per epoch."),
    max_train_minutes: float = typer.Option(
        60.0, help="A cell needing longer is left out of the table and listed as such (0 = no limit)."
    ),
    retention_questions: int = typer.Option(0, help="Questions of the frozen retention set asked (0 = all)."),
    tool_demos: int = typer.Option(64, help="tool_ft: facts whose questions become lookup demonstrations."),
    tool_retain: int = typer.Option(32, help="tool_ft: general questions answered directly in training."),
    eval_facts: int = typer.Option(48, help="Facts sampled for efficacy/paraphrase questions."),
    eval_two_hop: int = typer.Option(24, help="Two-hop questions asked."),
    locality_candidates: int = typer.Option(0, help="Candidate locality probes tried (0 = all)."),
    neutral: int = typer.Option(12, help="Neutral sentences for KL and perplexity."),
    max_new_tokens: int = typer.Option(16, help="Answer length cap."),
    train_batch_size: int = typer.Option(4, help="Training batch size of weight routes."),
    ft_lr: float = typer.Option(1e-4, help="Full fine-tuning learning rate."),
    lora_lr: float = typer.Option(1e-3, help="LoRA learning rate."),
) -> None:
    """Every route to a new fact, side by side. Example: factflow eval lab --sizes 16,256 --out lab/"""
    from factflow.agent.cli import console, load_settings
    from factflow.errors import UserError
    from factflow.evals.lab import LabConfig, quick_config, run_lab
    from factflow.evals.lab_routes import RouteBudget
    from factflow.serving.models import resolve_model

    settings = load_settings()
    model_path = resolve_model(settings)
    cache_dir = settings.home / "lab"
    try:
        size_list = [int(s) for s in _csv(sizes)]
    except ValueError:
        raise UserError(f"--sizes {sizes!r} is not a list of integers: use e.g. --sizes 16,256") from None
    route_list = _csv(routes)
    if quick:
        cfg = quick_config(out, model_path=model_path, cache_dir=cache_dir, seed=seed, routes=route_list)
    else:
        budget = RouteBudget(
            target_recall=target_recall,
            max_epochs=max_epochs,
            recall_sample=recall_sample,
            max_train_s=max_train_minutes * 60 if max_train_minutes > 0 else None,
            tool_demos=tool_demos,
            tool_retain=tool_retain,
            seed=seed,
            max_new_tokens=max_new_tokens,
            train_batch_size=train_batch_size,
            ft_lr=ft_lr,
            lora_lr=lora_lr,
            playbook_budget_tokens=settings.playbook_token_budget,
        )
        cfg = LabConfig(
            routes=route_list,
            sizes=size_list,
            out=out,
            seed=seed,
            model_path=model_path,
            cache_dir=cache_dir,
            budget=budget,
            eval_facts=eval_facts,
            eval_two_hop=eval_two_hop,
            locality_candidates=locality_candidates or None,
            n_neutral=neutral,
            retention_questions=retention_questions or None,
        )
    n_seeds = seeds if seeds is not None else 1 if quick else 3
    for k in range(n_seeds):  # rows are keyed by seed, so each seed resumes on its own
        run_seed = seed + k
        budget = cfg.budget.model_copy(update={"seed": run_seed})
        report = run_lab(cfg.model_copy(update={"seed": run_seed, "budget": budget}))
    console.print(f"report: {report}")
