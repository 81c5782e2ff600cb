"""`Playbook`: the persistent, versioned ACE playbook handle.

    pb = Playbook.open()                          # HOME/playbook.sqlite3
    pb.apply(Delta(ops=[AddOp(section="strategies", content="Check units first.")]))
    pb.render("how fast is ...", budget_tokens=800).text
    pb.learn(question, answer, feedback, chat_model)   # reflect -> curate -> apply
    pb.rollback(3); pb.history(); pb.export_markdown()

Writes go through `apply`: one SQLite transaction per delta holding the write lock, so concurrent
writers (threads or processes) serialize; a writer whose cached state is stale first replays the
ops it missed from the log, then re-validates its delta against the current state. An UPDATE,
MERGE or REMOVE of a bullet whose text changed since the writer's `base_version` is rejected as
stale (the caller re-reads and retries) instead of overwriting the newer text; TAG and ADD commute
and always apply. No update is lost, and nothing a model emits reaches the playbook without
passing `apply_ops`.
"""

from __future__ import annotations

import json
import logging
import re
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, Literal, NamedTuple

from pydantic import BaseModel, ConfigDict, Field

from factflow.errors import UserError
from factflow.memory.bullets import (
    DEFAULT_SECTIONS,
    ApplyResult,
    Bullet,
    Delta,
    LogOp,
    MergeOp,
    PlaybookState,
    RejectedOp,
    RemoveOp,
    RestoreOp,
    UpdateOp,
)
from factflow.memory.merge import apply_ops
from factflow.memory.playbook_db import PlaybookDB, VersionInfo
from factflow.memory.refine import TextEmbedder, VectorIndex, dedup_ops, prune_ops
from factflow.memory.render import (
    RenderedPlaybook,
    TokenCounter,
    bullet_line,
    get_token_counter,
    render_playbook,
)
from factflow.memory.roles import Curator, Reflection, Reflector, UsageMeter, tag_ops
from factflow.settings import Settings, get_settings

__all__ = ["Playbook", "LearnResult", "RenderedPlaybook", "replay", "playbook_path"]

log = logging.getLogger(__name__)


class Reflected(NamedTuple):
    """One reflection waiting for the Curator, with the ids of the bullets its answer used."""

    question: str
    reflection: Reflection
    used_ids: tuple[str, ...] = ()


STALE = "stale: "  # prefix of the reason an op is rejected with when its bullet changed since base


class LearnResult(BaseModel):
    """One reflect -> curate -> apply step. Skipped steps leave `delta`/`result` None with reasons."""

    model_config = ConfigDict(extra="forbid", arbitrary_types_allowed=True)

    reflection: Reflection | None = None
    delta: Delta | None = None
    result: ApplyResult | None = None
    version: int
    skipped: list[str] = Field(default_factory=list)


def playbook_path(settings: Settings, namespace: str | None = None) -> Path:
    """Each namespace (tenant) has its own playbook file.

    The default namespace keeps HOME/playbook.sqlite3; others live in HOME/playbooks/ under the
    store's injective collection name, so look-alike names (`john_doe`, `john-doe`) never share
    a file.
    """
    from factflow.memory.store import collection_name

    ns = namespace or settings.namespace
    if ns == "default":
        return settings.home / "playbook.sqlite3"
    return settings.home / "playbooks" / f"{collection_name(ns)}.sqlite3"


def replay(
    sections: dict[str, str], log_rows: Iterable[VersionInfo], start: PlaybookState | None = None
) -> PlaybookState:
    """Rebuild a state by re-applying logged ops; deterministic because `now` and ids are logged."""
    state = start if start is not None else PlaybookState(sections=dict(sections))
    for row in log_rows:
        out = apply_ops(state, row.ops, now=row.created_at, trace_id=row.trace_id)
        if out.rejected or out.state.version != row.version:
            raise RuntimeError(f"op log does not replay at version {row.version}: {out.rejected[:1]}")
        state = out.state
    return state


class Playbook:
    """Thread-safe handle on one playbook file. Open one per process (or per thread, both work)."""

    def __init__(
        self,
        db: PlaybookDB,
        settings: Settings,
        embedder: TextEmbedder | None = None,
        token_counter: TokenCounter | None = None,
        dedup_mode: Literal["proactive", "lazy", "off"] | None = None,
    ) -> None:
        self._db = db
        self.settings = settings
        self.dedup_mode = dedup_mode or settings.dedup_mode
        self._embedder = embedder
        self._counter = token_counter
        self._lock = threading.RLock()
        self._state = db.load_state()
        self._index: VectorIndex | None = None
        self._line_tokens: dict[str, int] = {}

    @classmethod
    def open(
        cls,
        path: Path | str | None = None,
        settings: Settings | None = None,
        *,
        sections: dict[str, str] | None = None,
        embedder: TextEmbedder | None = None,
        token_counter: TokenCounter | None = None,
        dedup_mode: Literal["proactive", "lazy", "off"] | None = None,
        namespace: str | None = None,
    ) -> Playbook:
        """Open (creating if needed) the playbook at `path` (default: the namespace's playbook,
        `playbook_path(settings, namespace)`; namespace defaults to settings.namespace).

        `sections` (name -> id prefix) applies only when the file is created.
        """
        settings = settings or get_settings()
        file = Path(path) if path is not None else playbook_path(settings, namespace)
        try:
            db = PlaybookDB(file.expanduser(), sections or dict(DEFAULT_SECTIONS))
        except (OSError, sqlite3.Error) as exc:  # path, permissions, not a database
            raise UserError(
                f"cannot open the playbook at {file} ({exc}): check the path and permissions"
            ) from None
        return cls(db, settings, embedder, token_counter, dedup_mode)

    @property
    def path(self) -> Path:
        return self._db.path

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> Playbook:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- reading -------------------------------------------------------------------------------
    def _catch_up(self, db_version: int) -> None:
        """Bring the cached state to `db_version` by replaying only the versions we missed."""
        if db_version == self._state.version:
            return
        if db_version < self._state.version:  # the file was replaced under us
            self._state = self._db.load_state()
            return
        self._state = replay(self._state.sections, self._db.log_since(self._state.version), self._state)

    def state(self) -> PlaybookState:
        with self._lock:
            self._catch_up(self._db.version())
            return self._state

    @property
    def version(self) -> int:
        return self._db.version()

    def history(self, limit: int | None = None) -> list[VersionInfo]:
        rows = self._db.log_since(0)
        return rows[-limit:] if limit else rows

    def state_at(self, version: int) -> PlaybookState:
        """The playbook as it was right after `version` was committed."""
        current = self.version
        if not 0 <= version <= current:
            raise UserError(f"version {version} does not exist: pick one between 0 and {current}")
        return replay(self._db.sections(), self._db.log_since(0, until=version))

    # ---- writing -------------------------------------------------------------------------------
    def _commit(
        self,
        ops: list[LogOp] | Callable[[PlaybookState], list[LogOp]],
        *,
        base_version: int | None,
        author: str,
        reason: str,
        trace_id: str | None,
        kind: str,
        once: bool = False,
    ) -> tuple[ApplyResult, set[str]]:
        """One transaction. `ops` may be a function of the current state, evaluated under the write
        lock (rollback and import: their diff must be against what is committed, not a stale read).
        `once`: a version with this `trace_id` already committed makes this a no-op."""
        with self._lock:
            with self._db.transaction() as conn:
                db_version = self._db.read_version_locked()
                before = self._state.version
                self._catch_up(db_version)
                if callable(ops):
                    ops = ops(self._state)
                    base_version = db_version if base_version is None else base_version
                if once and trace_id is not None and self._db.has_trace(trace_id):
                    reason_done = f"trace {trace_id} was already applied (a resumed batch re-ran)"
                    rejected = [RejectedOp(op=op, reason=reason_done) for op in ops]
                    return ApplyResult(
                        version=db_version, base_version=base_version, rejected=rejected
                    ), set()
                conflicts: list[str] = []
                stale: list[RejectedOp] = []
                rebased = base_version is not None and base_version != db_version
                if rebased and base_version is not None:
                    since = self._db.log_since(base_version)
                    touched = {i for row in since for i in _op_ids(row.ops)}
                    rewritten = {
                        i for row in since for op in row.ops if op.type != "TAG" for i in _op_ids([op])
                    }
                    conflicts = sorted(touched & _op_ids(ops))
                    keep: list[LogOp] = []
                    for op in ops:
                        hit = (
                            sorted(_op_ids([op]) & rewritten)
                            if isinstance(op, UpdateOp | MergeOp | RemoveOp)
                            else []
                        )
                        if hit:
                            stale.append(
                                RejectedOp(
                                    op=op,
                                    reason=f"{STALE}{', '.join(hit)} changed since base version "
                                    f"{base_version} (now {db_version}); re-read and retry",
                                )
                            )
                        else:
                            keep.append(op)
                    ops = keep
                now = time.time()
                out = apply_ops(self._state, ops, now=now, trace_id=trace_id)
                result = ApplyResult(
                    version=out.state.version,
                    base_version=base_version if base_version is not None else before,
                    applied=out.applied,
                    rejected=stale + out.rejected,
                    rebased=rebased,
                    conflicts=conflicts,
                )
                if out.applied:
                    info = VersionInfo(
                        version=out.state.version,
                        created_at=now,
                        author=author,
                        reason=reason,
                        trace_id=trace_id,
                        kind=kind,
                        base_version=base_version,
                        n_applied=len(out.applied),
                        n_rejected=len(result.rejected),
                        ops=out.applied,
                    )
                    self._db.write_version(conn, out.state, info, out.changed, out.removed)
            # only after COMMIT succeeded does the cache move forward
            if out.applied:
                self._state = out.state
        return result, out.changed

    def apply(
        self,
        delta: Delta,
        *,
        base_version: int | None = None,
        author: str = "",
        reason: str = "",
        trace_id: str | None = None,
        once: bool = False,
    ) -> ApplyResult:
        """Validate and apply `delta` as one new version; invalid ops are rejected with reasons.

        With `base_version`, UPDATE/MERGE/REMOVE of bullets rewritten since then are rejected as
        stale (reason starts with "stale: "). With `once`, a `trace_id` already in the log makes
        the call a no-op (a resumed adaptation batch must not tag twice).
        Changed bullets are then refined: pruned only if their harmful tags dominate
        overwhelmingly, and with `dedup_mode="proactive"` de-duplicated; when that finds anything
        it commits one more version authored "refine" (so `result.version` may not be the newest).
        """
        result, changed = self._commit(
            list(delta.ops),
            base_version=base_version,
            author=author,
            reason=reason or delta.reason,
            trace_id=trace_id,
            kind="delta",
            once=once,
        )
        if changed:  # pruning is cheap and always on; de-duplication only when proactive
            self.refine(sorted(changed), dedup=self.dedup_mode == "proactive")
        return result

    # ---- grow and refine ---------------------------------------------------------------------
    def _get_embedder(self) -> TextEmbedder:
        if self._embedder is None:
            from factflow.memory.embed import get_embedder

            self._embedder = get_embedder()
        return self._embedder

    def _synced_index(self) -> VectorIndex:
        embedder = self._get_embedder()
        if self._index is None:
            cached = self._db.load_embeddings()
            dim = next(iter(cached.values()))[1].shape[0] if cached else int(getattr(embedder, "dim", 384))
            self._index = VectorIndex(dim)
            state = self.state()
            for bullet_id, (content, vec) in cached.items():
                b = state.bullets.get(bullet_id)
                if b is not None and b.content == content:
                    self._index.put(bullet_id, b.section, content, vec)
        new_rows = self._index.sync(self.state(), embedder)
        self._db.save_embeddings(new_rows)
        return self._index

    def refine(self, ids: list[str] | None = None, *, dedup: bool = True) -> ApplyResult | None:
        """De-duplicate `ids` (default: every bullet) against the rest, prune harmful bullets.

        The resulting MERGE/REMOVE ops are committed as one version authored "refine".
        """
        with self._lock:
            state = self.state()
            check = list(state.bullets) if ids is None else [i for i in ids if i in state.bullets]
            ops: list[LogOp] = list(prune_ops(state, self.settings.playbook_prune_min_harmful, check))
            pruned = {op.id for op in ops if isinstance(op, RemoveOp)}
            if dedup and self.dedup_mode != "off" and check:
                index = self._synced_index()
                ops.extend(
                    dedup_ops(
                        state, index, [i for i in check if i not in pruned], self.settings.dedup_threshold
                    )
                )
            if not ops:
                return None
            pruned_why = "; ".join(f"{op.id} {op.reason}" for op in ops if isinstance(op, RemoveOp))
            for op in ops:
                if isinstance(op, RemoveOp):
                    log.info("pruning %s: %s", op.id, op.reason)
            result, _ = self._commit(
                ops,
                base_version=state.version,
                author="refine",
                reason=f"dedup >= {self.settings.dedup_threshold}"
                + (f"; {pruned_why}" if pruned_why else ""),
                trace_id=None,
                kind="refine",
            )
            return result

    # ---- rendering -----------------------------------------------------------------------------
    def _get_counter(self) -> TokenCounter:
        if self._counter is None:
            self._counter = get_token_counter(self.settings)
        return self._counter

    def render(self, query: str = "", budget_tokens: int | None = None) -> RenderedPlaybook:
        """The playbook as a prompt block of at most `budget_tokens` (default from settings).

        Holds the handle's lock: the token cache and the vector index are shared by threads."""
        budget = self.settings.playbook_token_budget if budget_tokens is None else budget_tokens
        with self._lock:
            counter = self._get_counter()
            cache = self._line_tokens

            def line_tokens(b: Bullet) -> int:
                line = bullet_line(b)
                if line not in cache:
                    cache[line] = counter.count(line) + 1
                return cache[line]

            state = self.state()
            relevance: dict[str, float] | None = None
            rendered = render_playbook(state, counter, budget, None, line_tokens)
            if rendered.omitted and self.dedup_mode == "lazy" and self.refine() is not None:
                state = self.state()  # lazy mode: de-duplicate only once the budget is exceeded
                rendered = render_playbook(state, counter, budget, None, line_tokens)
            if rendered.omitted and query:  # over budget: relevance to the query picks half the bullets
                index = self._synced_index()
                relevance = index.scores(self._get_embedder().embed([query])[0])
                rendered = render_playbook(state, counter, budget, relevance, line_tokens)
            return rendered

    # ---- learning ------------------------------------------------------------------------------
    def learn(
        self,
        question: str,
        answer: str,
        feedback: str,
        chat_model: Any,
        trajectory: str = "",
        used_bullet_ids: Iterable[str] = (),
        *,
        reasoning: str = "",
        trace_id: str | None = None,
        meter: UsageMeter | None = None,
    ) -> LearnResult:
        """Reflect on one answered question, curate a delta, apply it (ACE's online step).

        Only `used_bullet_ids` (the bullets the answer cited) are shown to the Reflector and can
        be tagged; an answer that cited none tags nothing."""
        used = self.known_ids(used_bullet_ids)
        reflection, skipped = self.reflect(
            question, answer, feedback, chat_model, trajectory, used, reasoning=reasoning, meter=meter
        )
        if reflection is None:
            return LearnResult(version=self.version, skipped=skipped)
        return self.curate(
            [Reflected(question, reflection, tuple(used))], chat_model, trace_id=trace_id, meter=meter
        )

    def known_ids(self, ids: Iterable[str]) -> list[str]:
        """`ids` that name current bullets, de-duplicated, in order."""
        bullets = self.state().bullets
        return [i for i in dict.fromkeys(ids) if i in bullets]

    def reflect(
        self,
        question: str,
        answer: str,
        feedback: str,
        chat_model: Any,
        trajectory: str = "",
        used_bullet_ids: Iterable[str] = (),
        *,
        reasoning: str = "",
        meter: UsageMeter | None = None,
    ) -> tuple[Reflection | None, list[str]]:
        """The Reflector's diagnosis of one answer: it sees the question, the reasoning and answer,
        the tool trajectory, the feedback and the bullets used (with their counters)."""
        state = self.state()
        shown = [state.bullets[i] for i in self.known_ids(used_bullet_ids)]
        reflection, reason = Reflector(chat_model, meter=meter).reflect(
            question, answer, feedback, shown, reasoning=reasoning, trajectory=trajectory
        )
        return reflection, ([reason] if reason else [])

    def curator_stats(self, rendered: RenderedPlaybook) -> str:
        """What the Curator is told about size: bullets, rendered tokens against the budget."""
        n = len(self.state().bullets)
        budget = self.settings.playbook_token_budget
        left_out = f", {rendered.omitted} left out of the prompt" if rendered.omitted else ""
        return f"{n} bullets; the rendered playbook uses {rendered.tokens} of {budget} tokens{left_out}."

    def curate(
        self,
        reflections: Sequence[Reflected | tuple[str, Reflection] | tuple[str, Reflection, Sequence[str]]],
        chat_model: Any,
        *,
        trace_id: str | None = None,
        once: bool = False,
        meter: UsageMeter | None = None,
    ) -> LearnResult:
        """Batch curation: the reflections' tags (each only for the bullets its answer used) plus
        one Curator call, applied as one delta. A Curator op rejected as stale (another writer
        rewrote its bullet meanwhile) is retried once against the fresh playbook. `once` with a
        `trace_id`: a batch already applied under that id (a resumed run) is not applied again."""
        items = [Reflected(r[0], r[1], tuple(r[2]) if len(r) > 2 else ()) for r in reflections]  # type: ignore[misc]
        pairs = [(it.question, it.reflection) for it in items]
        tags = [op for it in items for op in tag_ops(it.reflection, set(it.used_ids))]
        last = items[-1].reflection
        skipped: list[str] = []
        result: ApplyResult | None = None
        delta = Delta(ops=list(tags), reason=last.key_insight[:300])
        for attempt in (1, 2):
            state = self.state()
            base = state.version
            rendered = self.render(" ".join(q for q, _ in pairs))
            curated, notes = Curator(chat_model, meter=meter).curate(
                pairs,
                rendered.text,
                list(state.sections),
                add_only=not rendered.bullet_ids,
                stats=self.curator_stats(rendered),
            )
            skipped += notes
            ops = (list(tags) if attempt == 1 else []) + list(curated or [])
            if not ops:
                break
            delta = Delta(ops=ops, reason=last.key_insight[:300])
            result = self.apply(
                delta, base_version=base, author="curator", trace_id=trace_id, once=once and attempt == 1
            )
            for r in result.rejected:
                log.info("curator op rejected: %s", r.reason)
            if (
                attempt == 1
                and once
                and result.rejected
                and not result.applied
                and all("already applied" in r.reason for r in result.rejected)
            ):
                skipped.append(f"batch {trace_id} was already applied: not applied again")
                break
            if not any(r.reason.startswith(STALE) for r in result.rejected):
                break
            skipped.append("curator ops were stale (the playbook changed meanwhile): curating again")
        return LearnResult(reflection=last, delta=delta, result=result, version=self.version, skipped=skipped)

    # ---- rollback, export, import ----------------------------------------------------------------
    def _restore_to(self, target: PlaybookState, *, author: str, reason: str, kind: str) -> ApplyResult:
        """Make `target`'s bullets current as one version. The diff is computed inside the write
        transaction, against the committed state, so a concurrent writer is never overwritten by
        a diff made from an older read; the version row records the base it was computed on."""

        def diff(current: PlaybookState) -> list[LogOp]:
            ops: list[LogOp] = [
                RemoveOp(id=i, reason=reason) for i in current.bullets if i not in target.bullets
            ]
            ops += [RestoreOp(bullet=b) for i, b in target.bullets.items() if current.bullets.get(i) != b]
            return ops

        result, _ = self._commit(
            diff, base_version=None, author=author, reason=reason, trace_id=None, kind=kind
        )
        return result

    def rollback(self, version: int, *, author: str = "rollback") -> ApplyResult:
        """Make the state of `version` current again, as a new version (history is kept)."""
        target = self.state_at(version)
        return self._restore_to(target, author=author, reason=f"rollback to v{version}", kind="rollback")

    def export_json(self) -> str:
        state = self.state()
        payload = {"format": "factflow-playbook/1", **json.loads(state.model_dump_json())}
        return json.dumps(payload, indent=2, ensure_ascii=False)

    def export_markdown(self) -> str:
        state = self.state()
        lines = [f"# Playbook (version {state.version})", ""]
        for section in state.sections:
            items = [b for b in state.bullets.values() if b.section == section]
            lines.append(f"## {section}")
            lines += [f"- [{b.id}] {b.content} (helpful {b.helpful}, harmful {b.harmful})" for b in items]
            lines.append("")
        return "\n".join(lines)

    def import_json(self, data: str | Path | dict[str, Any], *, author: str = "import") -> ApplyResult:
        """Replace the bullets with those of an exported JSON playbook (as one new version)."""
        try:
            if isinstance(data, Path):
                data = data.read_text(encoding="utf-8")
            raw = json.loads(data) if isinstance(data, str) else dict(data)
            raw.pop("format", None)
            target = PlaybookState.model_validate(raw)
        except (OSError, ValueError, TypeError) as exc:  # unreadable, not JSON, wrong shape
            # (pydantic's ValidationError and json's JSONDecodeError are ValueErrors)
            raise UserError(
                f"not a factflow playbook export ({type(exc).__name__}): export one with "
                "`factflow playbook export --format json`"
            ) from None
        unknown = {b.section for b in target.bullets.values()} - set(self.state().sections)
        if unknown:
            raise UserError(f"the import uses unknown sections {sorted(unknown)}: add them or edit the file")
        return self._restore_to(target, author=author, reason="import json", kind="import")

    def import_markdown(self, text: str, *, author: str = "import") -> ApplyResult:
        """Replace the bullets with those of an exported Markdown playbook (`- [id] content` lines)."""
        state = self.state()
        bullets: dict[str, Bullet] = {}
        section = None
        for line in text.splitlines():
            if line.startswith("## "):
                section = line[3:].strip()
                if section not in state.sections:
                    raise UserError(
                        f"unknown section {section!r} in the Markdown: use one of {list(state.sections)}"
                    )
                continue
            m = _MD_LINE.match(line)
            if m and section:
                bid, content, helpful, harmful = m.group(1), m.group(2), m.group(3), m.group(4)
                old = state.bullets.get(bid)
                base = old.model_dump() if old else {"id": bid}
                base.update(section=section, content=content.strip())
                if helpful is not None:
                    base.update(helpful=int(helpful), harmful=int(harmful))
                bullets[bid] = Bullet.model_validate(base)
        target = PlaybookState(sections=state.sections, bullets=bullets)
        return self._restore_to(target, author=author, reason="import markdown", kind="import")


_MD_LINE = re.compile(r"^- \[([a-z][a-z0-9_]*-\d+)\] (.*?)(?: \(helpful (\d+), harmful (\d+)\))?$")


def _op_ids(ops: Iterable[LogOp]) -> set[str]:
    ids: set[str] = set()
    for op in ops:
        for attr in ("id",):
            value = getattr(op, attr, None)
            if isinstance(value, str):
                ids.add(value)
        ids.update(getattr(op, "ids", []) or [])
        bullet = getattr(op, "bullet", None)
        if bullet is not None:
            ids.add(bullet.id)
    return ids
