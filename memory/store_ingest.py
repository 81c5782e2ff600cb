"""Ingest: a text, Markdown or JSONL file -> chunked document facts with provenance.

Pure reading and chunking; `FactStore.ingest` writes the result and supersedes the chunks of an
earlier version of the same file. Ids derive from (namespace, file content, chunk index), so
ingesting the same file again (e.g. after a crash) upserts instead of duplicating.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, ValidationError

from factflow.errors import UserError
from factflow.memory.facts import Fact, utcnow
from factflow.memory.verify_text import split_sentences

__all__ = ["chunk_text", "read_document", "check_text", "jsonl_records"]

M = TypeVar("M", bound=BaseModel)

_ID_RE = re.compile(r"^[A-Za-z0-9_:.\-#]{1,128}$")


def check_text(text: str, max_chars: int, what: str = "fact") -> str:
    """The stripped text, or a UserError when it is empty or longer than max_chars."""
    if not isinstance(text, str) or not text.strip():
        raise UserError(f"the {what} text is empty: pass a non-empty sentence")
    if len(text) > max_chars:
        raise UserError(
            f"the {what} text has {len(text)} characters, over the {max_chars} limit: "
            "split it or use `factflow facts ingest` (which chunks)"
        )
    return text.strip()


def chunk_text(text: str, max_chars: int) -> list[tuple[str, str]]:
    """(section, chunk) pairs: Markdown headings start sections, paragraphs are packed up to
    max_chars, a longer paragraph is split on sentences (a longer sentence is cut hard)."""
    sections: list[tuple[str, list[str]]] = [("", [])]
    heading_path: list[str] = []
    for para in re.split(r"\n\s*\n", text):
        body: list[str] = []
        for line in para.strip().splitlines():
            m = re.match(r"^(#{1,6})\s+(.*)$", line.strip())
            if m:
                if body:
                    sections[-1][1].append("\n".join(body))
                    body = []
                heading_path = heading_path[: len(m.group(1)) - 1] + [m.group(2).strip()]
                sections.append((" > ".join(heading_path), []))
            else:
                body.append(line)
        if "\n".join(body).strip():
            sections[-1][1].append("\n".join(body).strip())
    out: list[tuple[str, str]] = []
    for section, paras in sections:
        pieces: list[str] = []
        for p in paras:
            if len(p) <= max_chars:
                pieces.append(p)
                continue
            for s in split_sentences(p):
                pieces.extend(s[i : i + max_chars] for i in range(0, len(s), max_chars))
        buf = ""
        for piece in pieces:
            if buf and len(buf) + 1 + len(piece) > max_chars:
                out.append((section, buf))
                buf = ""
            buf = f"{buf}\n{piece}" if buf else piece
        if buf:
            out.append((section, buf))
    return out


class _JsonlRecord(BaseModel):
    model_config = ConfigDict(extra="forbid")
    text: str
    id: str | None = None
    source: str | None = None
    valid_from: datetime | None = None
    metadata: dict[str, str | int | float | bool] = {}


def jsonl_records(path: Path, raw: str, model: type[M], what: str, fix: str) -> Iterator[tuple[int, M]]:
    """(line number, record) for each non-empty line; a bad line is a UserError naming it."""
    for lineno, line in enumerate(raw.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            yield lineno, model.model_validate_json(line)
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(map(str, first["loc"]))
            raise UserError(f"{path}:{lineno}: {what} ({where}: {first['msg']}): {fix}") from None


def read_document(path: str | Path, namespace: str, *, chunk_chars: int, max_chars: int) -> list[Fact]:
    """Document facts of one file (nothing written). `.jsonl`: one record per line, unknown keys
    are an error naming the line; `.md`: heading path kept as `section`; else UTF-8 text."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise UserError(f"no file at {p}: pass a path to a .txt, .md or .jsonl file")
    try:
        raw = p.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise UserError(f"{p} is not UTF-8 text: convert it to UTF-8 (.txt, .md or .jsonl)") from None
    if not raw.strip():
        raise UserError(f"{p} is empty: nothing to ingest")
    doc_sha = hashlib.sha256(raw.encode()).hexdigest()[:16]
    doc_ref = f"doc:{p.name}@{doc_sha}"
    now = utcnow()
    facts: list[Fact] = []

    def make(
        text: str,
        extra: dict[str, Any],
        fid: str | None = None,
        source: str | None = None,
        valid_from: datetime | None = None,
    ) -> Fact:
        i = len(facts)
        digest = hashlib.sha256(f"{namespace}|{doc_sha}|{i}".encode()).hexdigest()[:20]
        return Fact(
            id=fid or f"d-{digest}",
            text=text,
            namespace=namespace,
            origin="document",
            source_ids=[source or doc_ref],
            metadata={"source_path": str(p.resolve()), "chunk": i, **extra},
            created_at=now,
            valid_from=valid_from or now,
        )

    if p.suffix.lower() != ".jsonl":
        for section, chunk in chunk_text(raw, chunk_chars):
            facts.append(make(chunk, {"section": section} if section else {}))
        return facts
    fix = 'each line must be {"text": ..., optional "id", "source", "valid_from", "metadata"}'
    for lineno, rec in jsonl_records(p, raw, _JsonlRecord, "bad record", fix):
        check_text(rec.text[:max_chars] or " ", max_chars, "record")
        parts = chunk_text(rec.text, chunk_chars)
        for j, (_, chunk) in enumerate(parts):
            fid = None if rec.id is None else (rec.id if len(parts) == 1 else f"{rec.id}#{j}")
            if fid is not None and not _ID_RE.match(fid):
                raise UserError(f"{p}:{lineno}: bad id {rec.id!r}: use letters, digits and _ : . -")
            facts.append(make(chunk, {"line": lineno, **rec.metadata}, fid, rec.source, rec.valid_from))
    return facts
