"""`factflow playbook ...`: inspect, roll back, export and import the ACE playbook.

Examples:
    factflow playbook show --query "unit conversion" --budget 400
    factflow playbook history --limit 20
    factflow playbook rollback 12
    factflow playbook export --format markdown --out playbook.md
    factflow playbook import playbook.json
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from factflow.errors import UserError
from factflow.memory.playbook import Playbook

__all__ = ["playbook_app"]

playbook_app = typer.Typer(
    help="Inspect and manage the ACE playbook. Example: factflow playbook show", no_args_is_help=True
)

console = Console()
_PATH = typer.Option(None, "--path", help="Playbook file (default: FACTFLOW_HOME/playbook.sqlite3).")


def _open(path: Path | None) -> Playbook:
    from factflow.agent.cli import load_settings  # late: cli.py imports this module while loading

    # no de-duplication from the CLI: inspecting must not load the embedding model or write
    return Playbook.open(path, load_settings(), dedup_mode="off")


@playbook_app.command("show")
def show(
    query: str = typer.Option("", help="Rank bullets by relevance to this text when over budget."),
    budget: int = typer.Option(None, help="Token budget (default FACTFLOW_PLAYBOOK_TOKEN_BUDGET)."),
    all_bullets: bool = typer.Option(False, "--all", help="Table of every bullet with its counters."),
    path: Path | None = _PATH,
) -> None:
    """Print the playbook as the model sees it (under the token budget), or every bullet."""
    with _open(path) as pb:
        if all_bullets:
            table = Table("id", "section", "helpful", "harmful", "content")
            for b in pb.state().bullets.values():
                table.add_row(b.id, b.section, str(b.helpful), str(b.harmful), b.content)
            console.print(table)
            return
        r = pb.render(query, budget)
        console.print(r.text or "(empty playbook)", markup=False)
        console.print(
            f"[dim]version {pb.version}: {len(r.bullet_ids)} bullets, "
            f"{r.tokens} tokens, {r.omitted} left out[/]"
        )


@playbook_app.command("history")
def history(
    limit: int = typer.Option(20, help="Show the newest N versions."), path: Path | None = _PATH
) -> None:
    """List versions: who changed the playbook, when, why, and how many ops applied."""
    with _open(path) as pb:
        table = Table("version", "when", "kind", "author", "applied", "rejected", "ops", "reason")
        for h in pb.history(limit):
            ops = ", ".join(sorted({o.type for o in h.ops}))
            when = datetime.fromtimestamp(h.created_at).strftime("%Y-%m-%d %H:%M:%S")
            table.add_row(
                str(h.version),
                when,
                h.kind,
                h.author,
                str(h.n_applied),
                str(h.n_rejected),
                ops,
                h.reason[:60],
            )
        console.print(table)


@playbook_app.command("rollback")
def rollback(
    version: int = typer.Argument(..., help="Version to restore."), path: Path | None = _PATH
) -> None:
    """Restore the bullets of VERSION as a new version (history is kept, so this can be undone)."""
    with _open(path) as pb:
        r = pb.rollback(version)
        console.print(f"restored version {version} as version {r.version} ({len(r.applied)} ops)")


@playbook_app.command("export")
def export(
    fmt: str = typer.Option("json", "--format", help="json or markdown."),
    out: Path | None = typer.Option(None, "--out", help="File to write (default: print)."),
    path: Path | None = _PATH,
) -> None:
    """Export the current playbook as JSON (lossless) or Markdown (readable, editable)."""
    if fmt not in ("json", "markdown", "md"):
        raise UserError(f"unknown export format {fmt!r}: use --format json or --format markdown")
    with _open(path) as pb:
        text = pb.export_json() if fmt == "json" else pb.export_markdown()
    if out is None:
        console.print(text, markup=False, highlight=False)
    else:
        out.write_text(text, encoding="utf-8")
        console.print(f"wrote {out}")


@playbook_app.command("import")
def import_(
    file: Path = typer.Argument(..., help="A .json or .md file from `factflow playbook export`."),
    path: Path | None = _PATH,
) -> None:
    """Replace the bullets with those in FILE, as one new version (roll back to undo)."""
    if not file.exists():
        raise UserError(f"{file} does not exist: export one with `factflow playbook export --out {file}`")
    text = file.read_text(encoding="utf-8")
    with _open(path) as pb:
        r = pb.import_markdown(text) if file.suffix.lower() in (".md", ".markdown") else pb.import_json(text)
        console.print(
            f"imported {len(pb.state().bullets)} bullets as version {pb.version} ({len(r.applied)} ops)"
        )
