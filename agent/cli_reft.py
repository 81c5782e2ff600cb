"""`factflow reft train|info|eval`: LoReFT adapters from the command line."""

from __future__ import annotations

import json
from pathlib import Path

import typer

__all__ = ["reft_app"]

reft_app = typer.Typer(
    help="Train and inspect LoReFT adapters. Example: factflow reft train facts.jsonl --out ./my-adapter",
    no_args_is_help=True,
)


def _layers(text: str) -> list[int]:
    from factflow.errors import UserError

    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise UserError(
            f"--layers {text!r} is not a comma-separated list of layer numbers; use e.g. 8,16."
        ) from None


@reft_app.command("train")
def reft_train(
    data: Path = typer.Argument(..., help="JSONL with one {'prompt': ..., 'completion': ...} per line."),
    out: Path = typer.Option(..., "--out", "-o", help="Adapter folder to write."),
    layers: str = typer.Option("6,12,18,24", help="Decoder layers to edit, comma-separated (0-based)."),
    rank: int = typer.Option(4, help="LoReFT rank r."),
    positions: str = typer.Option("all", help="'all' (servable in vLLM) or 'prefix+suffix'."),
    prefix: int = typer.Option(7, help="prefix+suffix: first prompt tokens edited."),
    suffix: int = typer.Option(7, help="prefix+suffix: last prompt tokens edited."),
    untie: bool = typer.Option(False, help="prefix+suffix: separate interventions for the two spans."),
    epochs: int = typer.Option(40, help="Maximum epochs (early stopping may end sooner)."),
    lr: float = typer.Option(4e-3, help="AdamW learning rate."),
    batch_size: int = typer.Option(8, help="Examples per micro-batch."),
    grad_accum: int = typer.Option(1, help="Micro-batches per optimizer step."),
    val_fraction: float = typer.Option(0.0, help="Held-out share for early stopping (0: the training set)."),
    patience: int = typer.Option(5, help="Epochs without improvement before stopping."),
    seed: int = typer.Option(0, help="Random seed."),
    model: str | None = typer.Option(None, help="Base model (default: the settings' model)."),
) -> None:
    """Train a LoReFT adapter on a frozen base model. Example: factflow reft train facts.jsonl -o ad/"""
    from pydantic import ValidationError

    from factflow.agent.cli import console, load_settings
    from factflow.errors import UserError, format_validation_error
    from factflow.serving.models import resolve_model
    from factflow.serving.reft import ReftConfig, TrainConfig, load_examples, train_reft

    settings = load_settings(model=model)
    try:
        cfg = ReftConfig(
            layers=_layers(layers),
            rank=rank,
            positions=positions,  # type: ignore[arg-type]
            prefix=prefix,
            suffix=suffix,
            tie_positions=not untie,
        )
        tc = TrainConfig(
            epochs=epochs,
            lr=lr,
            batch_size=batch_size,
            grad_accum=grad_accum,
            val_fraction=val_fraction,
            patience=patience,
            seed=seed,
        )
    except ValidationError as exc:
        raise UserError(format_validation_error(exc, prefix="--")) from None
    examples = load_examples(data)
    folder = train_reft(resolve_model(settings), examples, cfg, out, train=tc)
    report = json.loads((folder / "training.json").read_text())
    console.print(
        f"adapter saved to {folder}: {report['trainable_params']:,} trainable parameters, "
        f"{report['epochs_run']} epochs, best loss {report['best_val_loss']:.4f}, "
        f"{sum(report['seconds_per_epoch']) / len(report['seconds_per_epoch']):.1f} s/epoch"
    )


@reft_app.command("info")
def reft_info(adapter: Path = typer.Argument(..., help="Adapter folder.")) -> None:
    """Show an adapter's settings, base model identity and size. Example: factflow reft info ad/"""
    from rich.table import Table

    from factflow.agent.cli import console
    from factflow.serving.reft import ReftAdapter

    ad = ReftAdapter.load(adapter)
    table = Table("field", "value")
    for key, value in ad.config.model_dump().items():
        table.add_row(key, str(value))
    table.add_row("base", ad.base.describe())
    table.add_row("trainable params", f"{ad.trainable_params():,}")
    report = adapter / "training.json"
    if report.is_file():
        data = json.loads(report.read_text())
        table.add_row("epochs run", str(data["epochs_run"]))
        table.add_row("best loss", f"{data['best_val_loss']:.4f}")
    console.print(table)


@reft_app.command("eval")
def reft_eval(
    adapter: Path = typer.Argument(..., help="Adapter folder."),
    data: Path = typer.Argument(..., help="JSONL prompt/completion pairs to check."),
    model: str | None = typer.Option(None, help="Base model (default: the settings' model)."),
    show: bool = typer.Option(False, help="Print each answer."),
) -> None:
    """Exact recall with and without the adapter. Example: factflow reft eval ad/ facts.jsonl"""
    from factflow.agent.cli import console, load_settings
    from factflow.serving.models import resolve_model
    from factflow.serving.reft import ReftAdapter, load_base_model, load_examples, recall

    settings = load_settings(model=model)
    ad = ReftAdapter.load(adapter)
    examples = load_examples(data)
    hf_model, tok = load_base_model(resolve_model(settings))
    base_recall, _ = recall(hf_model, tok, examples, progress=True)
    with ad.attach(hf_model):
        reft_recall, outputs = recall(hf_model, tok, examples, progress=True)
    if show:
        for ex, out in zip(examples, outputs, strict=True):
            console.print(f"[bold]{ex.prompt}[/] -> {out!r} (want {ex.completion!r})")
    console.print(
        f"exact recall: base {base_recall:.0%}, with adapter {reft_recall:.0%} ({len(examples)} examples)"
    )
