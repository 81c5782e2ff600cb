"""`factflow eval anatomy|sequential|select`: the lab's three studies, added to the shared `eval_app`.

anatomy     where fact-learning updates land (sparsity, effective rank, seed overlap)
sequential  learn facts A then B per route: forgetting of A, plasticity on B, drift after A
select      LESS-style gradient selection of training texts vs random vs everything
"""

from __future__ import annotations

from pathlib import Path

import typer

from factflow.agent.cli_eval import _csv, eval_app

__all__: list[str] = []


def _model_and_cache() -> tuple[str, Path]:
    from factflow.agent.cli import load_settings
    from factflow.serving.models import resolve_model

    settings = load_settings()
    return resolve_model(settings), settings.home / "lab"


def _seeds(value: str) -> list[int]:
    from factflow.errors import UserError

    try:
        return [int(s) for s in _csv(value)]
    except ValueError:
        raise UserError(f"--seeds {value!r} is not a list of integers: use e.g. --seeds 0,1,2") from None


@eval_app.command("anatomy")
def anatomy(
    out: Path = typer.Option(Path("lab-anatomy"), help="Folder for anatomy.jsonl, report.md and plots."),
    facts: int = typer.Option(32, min=1, help="Facts learned by every arm."),
    seeds: str = typer.Option("0,1", help="Training seeds; the first two are compared by Jaccard."),
    arms: str = typer.Option("full_ft,lora,rl", help="Arms: full_ft, lora, rl (SFT warm start + REINFORCE)."),
    tol: float = typer.Option(1e-5, help="|dW| above this counts as a changed weight."),
    max_epochs: int = typer.Option(10, help="Budget rule: epoch cap (training stops at 0.99 train recall)."),
    rank_every: int = typer.Option(1, min=1, help="Effective rank of every k-th layer (SVDs cost time)."),
    rl_steps: int = typer.Option(8, min=1, help="REINFORCE steps of the rl arm."),
    quick: bool = typer.Option(False, help="CI budget: 8 facts, one epoch, 2 RL steps."),
) -> None:
    """Where updates land. Example: factflow eval anatomy --facts 32 --out lab-anatomy"""
    from factflow.agent.cli import console
    from factflow.errors import UserError
    from factflow.evals.lab_anatomy import ARMS, AnatomyConfig, quick_anatomy_config, run_anatomy
    from factflow.evals.lab_routes import RouteBudget

    arm_list = _csv(arms)
    if bad := [a for a in arm_list if a not in ARMS]:
        raise UserError(f"unknown arm(s) {', '.join(bad)}: choose from {', '.join(ARMS)}")
    model_path, cache_dir = _model_and_cache()
    if quick:
        cfg = quick_anatomy_config(out, model_path=model_path, cache_dir=cache_dir)
        cfg = cfg.model_copy(update={"arms": arm_list})
    else:
        cfg = AnatomyConfig(out=out, model_path=model_path, cache_dir=cache_dir, facts=facts,
                            seeds=_seeds(seeds), arms=arm_list, tol=tol, rank_every=rank_every,
                            rl_steps=rl_steps,
                            budget=RouteBudget(max_epochs=max_epochs))  # fmt: skip
    console.print(f"report: {run_anatomy(cfg)}")


@eval_app.command("sequential")
def sequential(
    out: Path = typer.Option(Path("lab-sequential"), help="Folder for results, report.md, plots."),
    routes: str = typer.Option("full_ft,lora,reft,store", help="Routes: full_ft, lora, reft, store."),
    facts: int = typer.Option(16, min=1, help="Facts in set A and in set B."),
    seeds: str = typer.Option("0,1,2", help="Seeds (data and training)."),
    max_epochs: int = typer.Option(10, help="Budget rule: epoch cap per set (stops at 0.99 recall)."),
    quick: bool = typer.Option(False, help="CI budget: 4 facts per set, 2 epochs, one seed."),
) -> None:
    """Learn A then B: forgetting, plasticity, drift. Example: factflow eval sequential --facts 16"""
    from factflow.agent.cli import console
    from factflow.evals.lab_routes import RouteBudget
    from factflow.evals.lab_sequential import SequentialConfig, quick_sequential_config, run_sequential

    model_path, cache_dir = _model_and_cache()
    if quick:
        cfg = quick_sequential_config(out, model_path=model_path, cache_dir=cache_dir, routes=_csv(routes))
    else:
        cfg = SequentialConfig(out=out, model_path=model_path, cache_dir=cache_dir, facts=facts,
                               seeds=_seeds(seeds), routes=_csv(routes),
                               budget=RouteBudget(max_epochs=max_epochs, recall_sample=facts))  # fmt: skip
    console.print(f"report: {run_sequential(cfg)}")


@eval_app.command("select")
def select(
    out: Path = typer.Option(Path("lab-select"), help="Folder for select.jsonl, report.md and plots."),
    targets: int = typer.Option(16, min=1, help="Target facts hidden in the pool."),
    pool: int = typer.Option(320, min=2, help="Pool size: the targets plus distracting facts."),
    fraction: float = typer.Option(0.05, min=0.0, max=1.0, help="Share of the pool the selected arms get."),
    seeds: str = typer.Option("0,1,2", help="Seeds (data, random arm, training)."),
    arms: str = typer.Option("less,random,all", help="Arms: less (top by gradient), random, all."),
    max_epochs: int = typer.Option(10, help="Budget rule: epoch cap (training stops at 0.99 recall)."),
    quick: bool = typer.Option(False, help="CI budget: 2 targets in a pool of 40, one epoch, one seed."),
) -> None:
    """LESS-style data selection. Example: factflow eval select --targets 16 --pool 320"""
    from factflow.agent.cli import console
    from factflow.evals.lab_routes import RouteBudget
    from factflow.evals.lab_select import SelectConfig, quick_select_config, run_select

    model_path, cache_dir = _model_and_cache()
    if quick:
        cfg = quick_select_config(out, model_path=model_path, cache_dir=cache_dir)
        cfg = cfg.model_copy(update={"arms": _csv(arms)})
    else:
        cfg = SelectConfig(out=out, model_path=model_path, cache_dir=cache_dir, targets=targets, pool=pool,
                           fraction=fraction, seeds=_seeds(seeds), arms=_csv(arms),
                           budget=RouteBudget(max_epochs=max_epochs))  # fmt: skip
    console.print(f"report: {run_select(cfg)}")
