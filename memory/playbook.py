"""`Playbook`: the persistent, versioned ACE playbook handle.

    pb = Playbook.open()                          # HOME/playbook.sqlite3
    pb.apply(Delta(ops=[AddOp(section="strategies", content="Check units first.")]))
    pb.render("how fast is ...", budget_tokens=800).text
    pb.learn(question, answer, feedback, chat_model)   # reflect -> curate -> apply
    pb.rollback(3); pb.history(); pb.export_markdown()

Writes go through `apply`: one SQLite transaction per delta holding the write lock, so concurrent
writers (threads or processes) serialize; a writer whose cached state is stale first replays the
ops it missed from the log, then re-validates its delta against the current state (ops that no
longer make sense, e.g. an UPDATE of a bullet someone removed, are rejected with a reason). No
update is lost, and nothing a model emits reaches the playbook without passing `apply_ops`.
"""

from __future__ import annotations

import json
import logging
import re
import threading
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from factflow.errors import UserError
from factflow.memory.bullets import (
    DEFAULT_SECTIONS,
    ApplyResult,
    Bullet,
    Delta,
    LogOp,
    PlaybookState,
    RemoveOp,
    RestoreOp,
)
from factflow.memory.merge import apply_ops
from factflow.memory.playbook_db import PlaybookDB, VersionInfo
from factflow.memory.refine import TextEmbedder, VectorIndex, dedup_ops, prune_ops
from factflow.memory.render import RenderedPlaybook, TokenCounter, get_token_counter, render_playbook
from factflow.memory.roles import Curator, Reflection, Reflector, UsageMeter, tag_ops
from factflow.settings import Settings, get_settings

__all__ = ["Playbook", "LearnResult", "RenderedPlaybook", "replay"]

log = logging.getLogger(__name__)


class LearnResult(BaseModel):
    """One reflect -> curate -> apply step. Skipped steps leave `delta`/`result` None with reasons."""

    model_config = ConfigDict(extra="forbid", arbitrary_types_allowed=True)

    reflection: Reflection | None = None
    delta: Delta | None = None
    result: ApplyResult | None = None
    version: int
    skipped: list[str] = Field(default_factory=list)


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
    ) -> Playbook:
        """Open (creating if needed) the playbook at `path` (default HOME/playbook.sqlite3).

        `sections` (name -> id prefix) applies only when the file is created.
        """
        settings = settings or get_settings()
        file = Path(path) if path is not None else settings.home / "playbook.sqlite3"
        try:
            db = PlaybookDB(file.expanduser(), sections or dict(DEFAULT_SECTIONS))
        except Exception as exc:
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
        ops: list[LogOp],
        *,
        base_version: int | None,
        author: str,
        reason: str,
        trace_id: str | None,
        kind: str,
    ) -> tuple[ApplyResult, set[str]]:
        with self._lock:
            with self._db.transaction() as conn:
                db_version = self._db.read_version_locked()
                before = self._state.version
                self._catch_up(db_version)
                conflicts: list[str] = []
                rebased = base_version is not None and base_version != db_version
                if rebased and base_version is not None:
                    touched = {i for row in self._db.log_since(base_version) for i in _op_ids(row.ops)}
                    conflicts = sorted(touched & {i for i in _op_ids(ops)})
                now = time.time()
                out = apply_ops(self._state, ops, now=now, trace_id=trace_id)
                result = ApplyResult(
                    version=out.state.version,
                    base_version=base_version if base_version is not None else before,
                    applied=out.applied,
                    rejected=out.rejected,
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
                        n_rejected=len(out.rejected),
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
    ) -> ApplyResult:
        """Validate and apply `delta` as one new version; invalid ops are rejected with reasons.

        Changed bullets are then refined: pruned if their harmful tags dominate, and with
        `dedup_mode="proactive"` de-duplicated; when that finds anything it commits one more
        version authored "refine" (so `result.version` may not be the newest version).
        """
        result, changed = self._commit(
            list(delta.ops),
            base_version=base_version,
            author=author,
            reason=reason or delta.reason,
            trace_id=trace_id,
            kind="delta",
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
            result, _ = self._commit(
                ops,
                base_version=state.version,
                author="refine",
                reason=f"dedup >= {self.settings.dedup_threshold} / prune harmful",
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
        """The playbook as a prompt block of at most `budget_tokens` (default from settings)."""
        budget = self.settings.playbook_token_budget if budget_tokens is None else budget_tokens
        counter = self._get_counter()
        cache = self._line_tokens

        def line_tokens(b: Bullet) -> int:
            key = f"{b.id}\0{b.content}"
            if key not in cache:
                cache[key] = counter.count(f"[{b.id}] {b.content}") + 1
            return cache[key]

        state = self.state()
        relevance: dict[str, float] | None = None
        rendered = render_playbook(state, counter, budget, None, line_tokens)
        if rendered.omitted and self.dedup_mode == "lazy" and self.refine() is not None:
            state = self.state()  # lazy mode: de-duplicate only once the budget is actually exceeded
            rendered = render_playbook(state, counter, budget, None, line_tokens)
        if rendered.omitted and query:  # over budget: relevance to the query picks half of the bullets
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
        trace_id: str | None = None,
        reflector_rounds: int = 1,
        meter: UsageMeter | None = None,
    ) -> LearnResult:
        """Reflect on one answered question, curate a delta, apply it (ACE's online step)."""
        reflection, skipped = self.reflect(
            question,
            answer,
            feedback,
            chat_model,
            trajectory,
            used_bullet_ids,
            reflector_rounds=reflector_rounds,
            meter=meter,
        )
        if reflection is None:
            return LearnResult(version=self.version, skipped=skipped)
        return self.curate([(question, reflection)], chat_model, trace_id=trace_id, meter=meter)

    def reflect(
        self,
        question: str,
        answer: str,
        feedback: str,
        chat_model: Any,
        trajectory: str = "",
        used_bullet_ids: Iterable[str] = (),
        *,
        reflector_rounds: int = 1,
        meter: UsageMeter | None = None,
    ) -> tuple[Reflection | None, list[str]]:
        state = self.state()
        shown = [state.bullets[i] for i in dict.fromkeys(used_bullet_ids) if i in state.bullets]
        reflector = Reflector(chat_model, meter=meter, rounds=reflector_rounds)
        traj = trajectory or f"answer: {answer}"
        reflection, reason = reflector.reflect(question, traj, feedback, shown)
        return reflection, ([reason] if reason else [])

    def curate(
        self,
        reflections: list[tuple[str, Reflection]],
        chat_model: Any,
        *,
        shown_ids: Iterable[str] = (),
        trace_id: str | None = None,
        meter: UsageMeter | None = None,
    ) -> LearnResult:
        """Batch curation: one Curator call for several reflections, then one apply."""
        state = self.state()
        base = state.version
        rendered = self.render(" ".join(q for q, _ in reflections))
        allowed = set(shown_ids) | set(rendered.bullet_ids)
        ops = [op for _, r in reflections for op in tag_ops(r, allowed)]
        curated, notes = Curator(chat_model, meter=meter).curate(
            reflections, rendered.text, list(state.sections), add_only=not rendered.bullet_ids
        )
        skipped = list(notes)
        if curated is not None:
            ops.extend(curated)
        last = reflections[-1][1]
        delta = Delta(ops=ops, reason=last.key_insight[:300])
        if not ops:
            return LearnResult(reflection=last, delta=delta, version=self.version, skipped=skipped)
        result = self.apply(delta, base_version=base, author="curator", trace_id=trace_id)
        for r in result.rejected:
            log.info("curator op rejected: %s", r.reason)
        return LearnResult(reflection=last, delta=delta, result=result, version=self.version, skipped=skipped)

    # ---- rollback, export, import ----------------------------------------------------------------
    def _restore_to(self, target: PlaybookState, *, author: str, reason: str, kind: str) -> ApplyResult:
        current = self.state()
        ops: list[LogOp] = [RemoveOp(id=i) for i in current.bullets if i not in target.bullets]
        ops += [RestoreOp(bullet=b) for i, b in target.bullets.items() if current.bullets.get(i) != b]
        result, _ = self._commit(
            ops, base_version=None, author=author, reason=reason, trace_id=None, kind=kind
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
        except Exception as exc:
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
