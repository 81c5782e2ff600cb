"""`factflow facts ...`: add, ingest, search, show, audit, export and import verified facts, and
invalidate, delete or trace the history of one.

Examples:
    factflow facts add "Acme Corp is headquartered in Lyon." --namespace acme
    factflow facts ingest notes.md --namespace acme
    factflow facts search "where is Acme" -k 3 --namespace acme [--as-of 2026-01-31]
    factflow facts audit --namespace acme
    factflow facts invalidate f-0123 --reason "moved to Graz"; factflow facts history f-0123
    factflow facts delete f-0123 --yes; factflow facts export -o f.jsonl --all; factflow facts import f.jsonl
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import typer

__all__ = ["facts_app"]

facts_app = typer.Typer(
    help="Verified fact store. Example: factflow facts add 'Acme is in Lyon.' --namespace acme",
    no_args_is_help=True,
)

_NS = typer.Option(None, "--namespace", "-n", help="Tenant (default: FACTFLOW_NAMESPACE).")


def _open():  # type: ignore[no-untyped-def]
    from factflow.agent.cli import load_settings
    from factflow.memory.store import FactStore

    return FactStore.open(load_settings())


@facts_app.command("add")
def add(
    text: str = typer.Argument(..., help="The fact, one or a few sentences."),
    namespace: str | None = _NS,
    source: list[str] = typer.Option([], "--source", "-s", help="Provenance (URL, doc id); repeatable."),
    supersedes: str | None = typer.Option(None, help="Id of a fact this one replaces (it gets invalidated)."),
) -> None:
    """Teach one fact (origin human). Example: factflow facts add 'Acme moved to Graz.' --supersedes f-..."""
    from factflow.agent.cli import console

    with _open() as store:
        fact = store.teach(text, namespace=namespace, source_ids=source, supersedes=supersedes)
    console.print(f"stored {fact.id} in namespace {fact.namespace}")


@facts_app.command("ingest")
def ingest(
    path: Path = typer.Argument(..., help="A .txt, .md or .jsonl file."),
    namespace: str | None = _NS,
) -> None:
    """Ingest a document as chunked facts with provenance. Example: factflow facts ingest notes.md"""
    from factflow.agent.cli import console

    with _open() as store:
        facts = store.ingest(path, namespace=namespace)
    console.print(f"ingested {len(facts)} chunk(s) from {path} into {facts[0].namespace if facts else '-'}")


def _parse_when(text: str) -> datetime:
    from factflow.errors import UserError

    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        raise UserError(
            f"--as-of {text!r} is not a date: use ISO format, e.g. 2026-01-31 or 2026-01-31T12:00"
        ) from None
    return when if when.tzinfo else when.replace(tzinfo=UTC)


@facts_app.command("search")
def search(
    query: str = typer.Argument(..., help="What to look for."),
    k: int = typer.Option(5, "-k", help="How many facts."),
    namespace: str | None = _NS,
    as_json: bool = typer.Option(False, "--json", help="Print JSON lines instead of a table."),
    as_of: str | None = typer.Option(
        None, "--as-of", help="Facts valid at this time (ISO date or datetime, UTC if no zone), not now."
    ),
) -> None:
    """Hybrid search (dense + BM25, RRF). Example: factflow facts search 'who founded Acme' -k 3"""
    from rich.table import Column, Table

    from factflow.agent.cli import console

    when = _parse_when(as_of) if as_of else None
    with _open() as store:
        hits = store.search(query, k=k, namespace=namespace, as_of=when)
    if as_json:
        for h in hits:
            print(h.model_dump_json())
        return
    table = Table("score", "dense", "bm25", "origin", "text")
    table.columns.insert(0, Column("id", no_wrap=True))
    for h in hits:
        table.add_row(
            h.fact.id,
            f"{h.score:.4f}",
            str(h.dense_rank or "-"),
            str(h.lexical_rank or "-"),
            h.fact.origin,
            h.fact.text,
        )
    console.print(table)


@facts_app.command("show")
def show(fact_id: str = typer.Argument(..., help="A fact id."), namespace: str | None = _NS) -> None:
    """Show one fact with provenance and verification. Example: factflow facts show f-0123abcd"""
    from factflow.errors import UserError

    with _open() as store:
        fact = store.get(fact_id, namespace=namespace)
    if fact is None:
        raise UserError(f"no fact {fact_id!r} in that namespace: find ids with `factflow facts search`")
    print(fact.model_dump_json(indent=2))


@facts_app.command("audit")
def audit(namespace: str | None = _NS, limit: int = typer.Option(20, help="Last N entries.")) -> None:
    """Show the write-back audit log (accepts, rejects, invalidations, with reasons)."""
    from rich.table import Table

    from factflow.agent.cli import console

    with _open() as store:
        entries = store.audit_log(namespace, limit=limit)
    table = Table("at", "action", "facts", "text", "reasons")
    for e in entries:
        table.add_row(
            e.at.strftime("%Y-%m-%d %H:%M:%S"),
            e.action,
            ", ".join(e.fact_ids),
            e.text[:60],
            "; ".join(e.reasons)[:200],
        )
    console.print(table)


@facts_app.command("export")
def export(
    namespace: str | None = _NS,
    out: Path | None = typer.Option(None, "--out", "-o", help="File to write (default: stdout)."),
    include_invalid: bool = typer.Option(False, "--all", help="Also export invalidated facts."),
) -> None:
    """Export full fact records as JSON lines. Example: factflow facts export -o facts.jsonl"""
    with _open() as store:
        lines = [f.model_dump_json() for f in store.iter_facts(namespace, valid_only=not include_invalid)]
    text = "\n".join(lines) + ("\n" if lines else "")
    if out is None:
        print(text, end="")
    else:
        out.write_text(text)
        print(json.dumps({"exported": len(lines), "path": str(out)}))


@facts_app.command("import")
def import_(
    path: Path = typer.Argument(..., help="A file written by `factflow facts export`."),
    namespace: str | None = typer.Option(None, "--namespace", "-n", help="Put every fact in this namespace."),
) -> None:
    """Restore exported facts with every field (ids, validity, provenance).
    Example: factflow facts import f.jsonl"""
    with _open() as store:
        facts = store.import_facts(path, namespace=namespace)
    print(json.dumps({"imported": len(facts), "namespaces": sorted({f.namespace for f in facts})}))


@facts_app.command("invalidate")
def invalidate(
    fact_id: str = typer.Argument(..., help="A fact id."),
    namespace: str | None = _NS,
    reason: str = typer.Option("", help="Why (kept in the audit log)."),
) -> None:
    """End a fact's validity, keeping it for history; model facts derived from it end too.
    Example: factflow facts invalidate f-0123 --reason 'moved'"""
    from factflow.agent.cli import console

    with _open() as store:
        derived = [f.id for f in store.derived_facts(fact_id, namespace=namespace)]
        fact = store.invalidate(fact_id, namespace=namespace, reason=reason or "invalidated by the user")
    also = f" and {len(derived)} fact(s) derived from it: {', '.join(derived)}" if derived else ""
    console.print(f"invalidated {fact.id}{also}")


@facts_app.command("delete")
def delete(
    fact_id: str = typer.Argument(..., help="A fact id."),
    namespace: str | None = _NS,
    yes: bool = typer.Option(False, "--yes", help="Delete without asking (erasure cannot be undone)."),
    reason: str = typer.Option("", help="Why (kept in the audit log, without the fact's text)."),
) -> None:
    """Erase a fact (and model facts derived from it) and scrub its text from the audit log.
    Use `invalidate` to keep history. Example: factflow facts delete f-0123 --yes"""
    from factflow.agent.cli import console
    from factflow.errors import UserError

    if not yes and not typer.confirm(f"erase {fact_id} and the facts derived from it? this cannot be undone"):
        raise UserError("not deleted: confirm, or pass --yes")
    with _open() as store:
        gone = store.delete(fact_id, namespace=namespace, reason=reason)
    console.print(f"deleted {', '.join(gone)}")


@facts_app.command("history")
def history(
    fact_id: str = typer.Argument(..., help="A fact id."),
    namespace: str | None = _NS,
    as_json: bool = typer.Option(False, "--json", help="Print the history as JSON."),
) -> None:
    """Every version of a fact (what it replaced, what replaced it) and its audit entries.
    Example: factflow facts history f-0123"""
    from rich.table import Table

    from factflow.agent.cli import console

    with _open() as store:
        h = store.history(fact_id, namespace=namespace)
    if as_json:
        print(h.model_dump_json(indent=2))
        return
    table = Table("id", "valid from", "valid to", "superseded by", "text")
    for f in h.versions:
        table.add_row(
            f.id,
            f.valid_from.strftime("%Y-%m-%d %H:%M:%S"),
            f.valid_to.strftime("%Y-%m-%d %H:%M:%S") if f.valid_to else "-",
            f.superseded_by or "-",
            f.text[:80],
        )
    console.print(table)
    for e in h.audit:
        console.print(
            f"{e.at:%Y-%m-%d %H:%M:%S} {e.action} {', '.join(e.fact_ids)}: {'; '.join(e.reasons)[:160]}"
        )
