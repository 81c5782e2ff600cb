"""`factflow proxy ...`: build a proxy-tuning pair and inspect or serve a proxy config."""

from __future__ import annotations

from pathlib import Path

import typer

__all__ = ["proxy_app", "prepare_for_serving"]

proxy_app = typer.Typer(
    help="Proxy-tuned decoding (base + alpha * (expert - anti-expert)). "
    "Example: factflow proxy distill --layers 10 --out ~/pair/anti",
    no_args_is_help=True,
)


def prepare_for_serving(config_path: Path, alpha: float | None = None) -> Path:
    """Validate a proxy config and return the vLLM model folder to serve (for `factflow serve --proxy`)."""
    from factflow.agent.cli import load_settings
    from factflow.serving.proxy_prepare import proxy_served_model

    return Path(proxy_served_model(config_path, load_settings().home, alpha=alpha))


@proxy_app.command("distill")
def distill(
    out: Path = typer.Option(..., "--out", help="Folder to write the anti-expert to."),
    layers: int = typer.Option(
        10, "--layers", "-k", help="Keep the base's first k layers (fewer: faster, less discerning)."
    ),
    base: str | None = typer.Option(None, help="Base model folder (default: FACTFLOW_MODEL)."),
    epochs: int = typer.Option(3, help="Passes over the base's own outputs."),
    prompts: int = typer.Option(32, help="How many built-in prompts the base answers for distillation."),
) -> None:
    """Make a small anti-expert: the base's first k layers distilled on the base's own outputs.

    Example: factflow proxy distill -k 10 --out ~/.cache/factflow/proxy/anti
    """
    from factflow.agent.cli import console, load_settings
    from factflow.serving.models import resolve_model
    from factflow.serving.proxy_train import DISTILL_PROMPTS, distill_anti_expert

    settings = load_settings(model=base)
    path = distill_anti_expert(
        resolve_model(settings), layers, out, prompts=DISTILL_PROMPTS[: max(1, prompts)], epochs=epochs
    )
    console.print(f"anti-expert written to {path}")


@proxy_app.command("tune")
def tune(
    data: Path = typer.Argument(..., help="JSONL with one {'prompt', 'completion'} object per line."),
    anti_expert: Path = typer.Option(..., "--anti-expert", help="Folder written by `proxy distill`."),
    out: Path = typer.Option(..., "--out", help="Folder to write the expert to."),
    epochs: int = typer.Option(20, help="Passes over the examples."),
    lr: float = typer.Option(2e-4, help="Learning rate."),
    retain: int = typer.Option(
        32, help="Built-in general questions per epoch on which the expert must not change (0: off)."
    ),
    base: Path | None = typer.Option(
        None, help="Model whose answers to those questions are kept (default: the anti-expert's base)."
    ),
) -> None:
    """Make the expert: fine-tune a copy of the anti-expert on prompt/completion pairs.

    A KL term keeps the expert equal to the anti-expert on the base's answers to general questions,
    so the steer it adds to the base is the new facts and nothing else (docs/proxy.md).

    Example: factflow proxy tune facts.jsonl --anti-expert ~/pair/anti --out ~/pair/expert
    """
    from factflow.agent.cli import console
    from factflow.serving.proxy_train import tune_expert
    from factflow.serving.reft import load_examples

    path = tune_expert(
        anti_expert, load_examples(data), out, epochs=epochs, lr=lr, retain_per_epoch=retain, base=base
    )
    console.print(f"expert written to {path}")


@proxy_app.command("info")
def info(config: Path = typer.Argument(..., help="Proxy config (TOML or JSON).")) -> None:
    """Validate a proxy config and show its models, depths, sizes, alpha and plausibility.

    Example: factflow proxy info proxy.toml
    """
    import json

    from rich.table import Table

    from factflow.agent.cli import console
    from factflow.serving.proxy import load_proxy_config

    cfg = load_proxy_config(config)
    table = Table("role", "folder", "layers", "hidden", "vocab")
    for role in ("base", "expert", "anti_expert"):
        folder: Path = getattr(cfg, role)
        hf = json.loads((folder / "config.json").read_text())
        table.add_row(role, str(folder), str(hf.get("num_hidden_layers")), str(hf.get("hidden_size")),
                      str(hf.get("vocab_size")))  # fmt: skip
    console.print(table)
    console.print(
        f"alpha = {cfg.alpha}, plausibility = {cfg.plausibility}  (logits = base + alpha * (expert - "
        "anti_expert) on tokens with p_expert >= plausibility * max p_expert)"
    )


@proxy_app.command("serve")
def serve(
    config: Path = typer.Argument(..., help="Proxy config (TOML or JSON)."),
    port: int | None = typer.Option(None, help="Port (default: FACTFLOW_PORT)."),
    alpha: float | None = typer.Option(None, help="Override the config's alpha."),
) -> None:
    """Serve proxy-tuned decoding with vLLM (OpenAI-compatible) until Ctrl-C.

    Example: factflow proxy serve proxy.toml --port 8000
    """
    import time

    from factflow.agent.cli import console, load_settings
    from factflow.serving.vllm_server import VLLMServer

    settings = load_settings()
    folder = prepare_for_serving(config, alpha)
    # Eager mode: compiling three submodules on a CPU costs minutes and buys little at this size.
    with VLLMServer(str(folder), port=port or settings.port, host=settings.host,
                    extra_args=["--enforce-eager"]) as server:  # fmt: skip
        console.print(f"proxy-tuned model serving at {server.base_url} (Ctrl-C stops it)")
        try:
            while True:
                time.sleep(1)
        except KeyboardInterrupt:
            pass
