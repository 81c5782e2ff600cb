"""The `factflow` command line (Typer + Rich): noun -> verb groups, user errors exit 2."""

from __future__ import annotations

import os
import sys

import typer
from rich.console import Console

from factflow import __version__
from factflow.errors import UserError, format_validation_error
from factflow.settings import Settings

__all__ = ["app", "main"]

console = Console()
err_console = Console(stderr=True)

app = typer.Typer(
    name="factflow",
    help="Agent framework that keeps newly learned knowledge usable: ACE playbook + verified facts.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
models_app = typer.Typer(help="Pull and list models. Example: factflow models pull", no_args_is_help=True)
app.add_typer(models_app, name="models")
from factflow.agent.cli_facts import facts_app  # noqa: E402

app.add_typer(facts_app, name="facts")
from factflow.agent.cli_playbook import playbook_app  # noqa: E402

app.add_typer(playbook_app, name="playbook")
from factflow.agent.cli_eval import eval_app  # noqa: E402

app.add_typer(eval_app, name="eval")
from factflow.agent.cli_proxy import proxy_app  # noqa: E402

app.add_typer(proxy_app, name="proxy")
from factflow.agent.cli_reft import reft_app  # noqa: E402

app.add_typer(reft_app, name="reft")


def load_settings(**overrides: object) -> Settings:
    """Settings with CLI overrides; validation errors become one-line user errors."""
    from pydantic import ValidationError

    try:
        clean = {k: v for k, v in overrides.items() if v is not None}
        return Settings(**clean)  # type: ignore[arg-type]
    except ValidationError as exc:
        raise UserError(format_validation_error(exc)) from None


def _version_callback(value: bool) -> None:
    if value:
        console.print(f"factflow {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(
        False, "--version", callback=_version_callback, is_eager=True, help="Print the version and exit."
    ),
) -> None:
    """factflow command line."""


@models_app.command("pull")
def models_pull(force: bool = typer.Option(False, help="Convert again even if present.")) -> None:
    """Install and convert the embedded default model (SmolLM2-135M-Instruct, fp32)."""
    from factflow.serving.models import default_model_dir, pull_default_model

    settings = load_settings()
    if default_model_dir(settings).joinpath(".factflow-complete").exists() and not force:
        console.print(f"default model ready at {default_model_dir(settings)}")
        return
    with console.status("converting SmolLM2-135M-Instruct (GGUF -> fp32 safetensors)..."):
        path = pull_default_model(settings, force=force)
    console.print(f"default model ready at {path}")


@models_app.command("list")
def models_list() -> None:
    """List pulled models and the one the settings select."""
    from rich.table import Table

    from factflow.serving.models import list_models

    settings = load_settings()
    table = Table("name", "folder", "status")
    for name, folder, complete in list_models(settings):
        table.add_row(name, str(folder), "ready" if complete else "incomplete (run pull again)")
    console.print(table)
    console.print(f"selected: FACTFLOW_MODEL={settings.model}")


def main() -> None:
    """Entry point: run the app, turning user errors into one line and exit code 2."""
    try:
        app()
    except UserError as exc:
        if os.environ.get("FACTFLOW_DEBUG") == "1":
            raise
        err_console.print(f"[bold red]error:[/] {exc}")
        sys.exit(2)


if __name__ == "__main__":
    main()
