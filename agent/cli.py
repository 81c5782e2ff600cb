"""The `factflow` command line (Typer + Rich): noun -> verb groups, user errors exit 2."""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

import typer
from rich.console import Console

# Libraries' weight-loading bars and advice print on every command (each `ask` loads the model);
# set before anything imports transformers/huggingface_hub, and only when the user has not chosen.
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

from factflow import __version__  # noqa: E402
from factflow.errors import UserError, format_validation_error  # noqa: E402
from factflow.settings import Settings  # noqa: E402

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
import factflow.agent.cli_eval_agentic  # noqa: E402,F401  (adds eval bfcl|adapt|appworld)
import factflow.agent.cli_eval_lab  # noqa: E402,F401  (adds eval anatomy|sequential|select)
import factflow.agent.cli_eval_lookalike  # noqa: E402,F401  (adds eval lookalike)
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


def _chat_model_for(settings: Settings, reft: Path | None, proxy: Path | None) -> Any:
    """The configured chat model, optionally with a LoReFT adapter or proxy-tuning (in-process)."""
    if reft is not None and proxy is not None:
        raise UserError("--reft and --proxy can't be combined: pick one weight-side route")
    if reft is not None:
        from factflow.serving.models import resolve_model
        from factflow.serving.reft import reft_chat_model

        return reft_chat_model(
            resolve_model(settings),
            reft,
            dtype=settings.dtype,
            max_new_tokens=settings.max_new_tokens,
            context_window=settings.context_window,
        )
    if proxy is not None:
        from factflow.serving.proxy import ProxyTunedLM, load_proxy_config

        lm = ProxyTunedLM(load_proxy_config(proxy), dtype=settings.dtype)
        return lm.chat_model(max_new_tokens=settings.max_new_tokens, context_window=settings.context_window)
    return None  # the Agent loads the configured one


@app.command()
def serve(
    model: str | None = typer.Option(None, help="Model folder or 'default' (else FACTFLOW_MODEL)."),
    host: str | None = typer.Option(None, help="Interface to listen on (default 127.0.0.1)."),
    port: int | None = typer.Option(None, help="Port (default FACTFLOW_PORT, 8765)."),
    reft: list[str] | None = typer.Option(
        None,
        help="LoReFT adapter: DIR (applied to every request) or NAME=DIR, repeatable (each request picks "
        "one with vllm_xargs {'factflow_adapter': NAME}; none = the base).",
    ),
    proxy: Path | None = typer.Option(None, help="Serve proxy-tuned decoding from this config file."),
    eager: bool = typer.Option(False, help="Skip torch.compile: starts faster, decodes slower."),
    agent: bool = typer.Option(
        False, "--agent", help="Serve the agent (memory, citations) as an OpenAI API; port 8100 by default."
    ),
) -> None:
    """Start vLLM's OpenAI-compatible server on the configured model, or with --agent the agent
    itself. Examples: factflow serve --port 8000; factflow serve --agent"""
    if agent:
        _serve_agent(model, host, port, Path(reft[0]) if reft else None, proxy)
        return
    from factflow.serving.models import resolve_model
    from factflow.serving.vllm_server import VLLMServer

    settings = load_settings(model=model, host=host, port=port)
    if reft and proxy is not None:
        raise UserError("--reft and --proxy can't be combined: pick one weight-side route")
    served = resolve_model(settings)
    if reft:
        from factflow.serving.reft import parse_adapter_specs, reft_served_model

        adapters, default = parse_adapter_specs(reft)
        served = reft_served_model(served, adapters, settings.home, default=default)
    elif proxy is not None:
        from factflow.serving.proxy_prepare import proxy_served_model

        served = proxy_served_model(proxy, settings.home)
    server = VLLMServer(
        served,
        host=settings.host,
        port=settings.port,
        dtype=settings.dtype,
        # the transformers engine's window; BFCL multi-turn prompts need more than vLLM's 4096
        max_model_len=settings.context_window,
        # Plugin models run eager: LoReFT matches transformers compiled too (bench/reft.py, docs/reft.md)
        # (tests/test_reft_vllm_multi.py serves it compiled) but starts faster eager; proxy-tuning is
        # verified in eager mode only.
        extra_args=["--enforce-eager"] if eager or reft or proxy is not None else [],
        log_path=settings.home / "logs" / f"vllm-{settings.port}.log",
    )
    # vLLM runs in its own process group, so a plain SIGTERM to us would orphan it (seen: `kill` of
    # a serve left three busy-polling vLLM workers behind): treat SIGTERM like Ctrl-C.
    signal.signal(signal.SIGTERM, _raise_keyboard_interrupt)
    try:
        with console.status(f"starting vLLM on {served} (45-60 s on a CPU)..."):
            server.start()
        console.print(
            f"vLLM listening on [bold]{server.base_url}[/] "
            f"(model '{server.served_model_name}'); Ctrl-C stops it"
        )
        console.print(f"use it: FACTFLOW_ENGINE=vllm FACTFLOW_BASE_URL={server.base_url} factflow chat")
        while server.process is not None and server.process.poll() is None:
            time.sleep(1.0)
        raise UserError(f"vLLM stopped unexpectedly (log: {server.log_path})")
    except KeyboardInterrupt:
        console.print("stopping vLLM...")
    finally:
        server.stop()


def _raise_keyboard_interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


AGENT_PORT = 8100


def _serve_agent(
    model: str | None, host: str | None, port: int | None, reft: Path | None, proxy: Path | None
) -> None:
    """`serve --agent`: the agent over HTTP (agent/server.py); its model comes from the settings."""
    from factflow.agent.server import serve_agent

    if reft is not None or proxy is not None:
        raise UserError("--agent serves the configured engine; --reft/--proxy apply to `factflow serve` only")
    settings = load_settings(model=model)  # --host/--port are the agent's, not the model server's
    serve_agent(settings, host or "127.0.0.1", port or AGENT_PORT, ready=lambda line: console.print(line))


@app.command()
def ask(
    question: str | None = typer.Argument(
        None, help="The question ('-' or none: read it from stdin); the answer is printed to stdout."
    ),
    thread: str | None = typer.Option(None, help="Continue this conversation thread."),
    engine: str | None = typer.Option(None, help="transformers or vllm (else FACTFLOW_ENGINE)."),
    reft: Path | None = typer.Option(None, help="Apply this LoReFT adapter (transformers engine)."),
    proxy: Path | None = typer.Option(None, help="Proxy-tuned decoding from this config file."),
    show_sources: bool = typer.Option(False, "--sources", help="Also print cited fact and bullet ids."),
    as_json: bool = typer.Option(False, "--json", help="Print the whole result as one JSON object."),
) -> None:
    """One-shot question for scripts. Example: factflow ask 'What is the capital of France?'

    The thread id goes to stderr (`--thread ID` continues it); `echo 'question' | factflow ask`
    reads the question from stdin.
    """
    from factflow.agent.api import Agent

    if question is None or question == "-":
        if sys.stdin is None or sys.stdin.isatty():
            raise UserError(
                "no question given: pass it as an argument or pipe it in, e.g. echo 'Hi?' | factflow ask"
            )
        question = sys.stdin.read()
    settings = load_settings(engine=engine)
    with Agent(settings, chat_model=_chat_model_for(settings, reft, proxy)) as agent:
        result = agent.ask(question, thread_id=thread)
    if as_json:
        typer.echo(result.model_dump_json())
    else:
        typer.echo(result.answer)
    if show_sources and not as_json:
        typer.echo(f"facts: {', '.join(result.cited_fact_ids) or '-'}")
        typer.echo(f"bullets: {', '.join(result.used_bullet_ids) or '-'}")
    # stderr keeps stdout the bare answer (or JSON) for scripts; `--thread ID` continues it
    err_console.print(f"thread: {result.thread_id}", highlight=False, style="dim")


@app.command()
def chat(
    thread: str | None = typer.Option(None, help="Resume this conversation thread."),
    engine: str | None = typer.Option(None, help="transformers or vllm (else FACTFLOW_ENGINE)."),
    reft: Path | None = typer.Option(None, help="Apply this LoReFT adapter (transformers engine)."),
    proxy: Path | None = typer.Option(None, help="Proxy-tuned decoding from this config file."),
) -> None:
    """The terminal REPL: streaming answers, /teach, /why, /help. Example: factflow chat"""
    from factflow.agent.repl import run_repl

    # shared: `factflow facts add` in another terminal reaches the store while the REPL runs
    settings = load_settings(engine=engine, store_shared=True)
    run_repl(settings, thread_id=thread, chat_model=_chat_model_for(settings, reft, proxy))


@app.command()
def mcp(
    port: int | None = typer.Option(
        None, help="Serve streamable HTTP on http://127.0.0.1:PORT/mcp instead of stdio."
    ),
    namespace: str | None = typer.Option(
        None, help="Tenant this server reads and writes (else FACTFLOW_NAMESPACE)."
    ),
) -> None:
    """factflow's memory and agent as an MCP server (stdio by default). Example: factflow mcp --port 8931"""
    from factflow.agent.mcp_server import run_server
    from factflow.memory.store import validate_namespace

    settings = load_settings(store_shared=True)  # other processes may use the store meanwhile
    if port is not None and not 1 <= port <= 65535:
        raise UserError(f"--port {port} is out of range: use 1..65535")
    run_server(settings, namespace=validate_namespace(namespace or settings.namespace), port=port)


def _exit_on_sigterm(signum: int, frame: Any) -> None:
    raise SystemExit(128 + signum)


def main() -> None:
    """Entry point: run the app, turning user errors into one line and exit code 2."""
    # `kill`/service stops: unwind normally, so stores close and stop the Chroma server they started
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    try:
        app()
    except UserError as exc:
        if os.environ.get("FACTFLOW_DEBUG") == "1":
            raise
        err_console.print(f"[bold red]error:[/] {exc}", soft_wrap=True, highlight=False)
        sys.exit(2)


if __name__ == "__main__":
    main()
