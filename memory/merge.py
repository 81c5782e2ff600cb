"""Deterministic, non-LLM application of delta ops to a playbook state.

    state_{v+1} = fold(apply_one, ops, state_v)        (ops that fail validation are skipped)

Same state + same ops + same `now` -> same result, which is what makes the op log replayable.
The new state shares unchanged `Bullet` objects with the old one (bullets are never mutated in
place), so a 10-op delta on 10k bullets costs one dict copy plus the touched bullets.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from factflow.memory.bullets import (
    MAX_CONTENT_CHARS,
    AddOp,
    Bullet,
    LogOp,
    MergeOp,
    PlaybookState,
    RejectedOp,
    RemoveOp,
    RestoreOp,
    TagOp,
    UpdateOp,
    normalize_content,
    parse_bullet_id,
)

__all__ = ["MergeOutcome", "apply_ops"]


@dataclass
class MergeOutcome:
    state: PlaybookState
    applied: list[LogOp] = field(default_factory=list)
    rejected: list[RejectedOp] = field(default_factory=list)
    changed: set[str] = field(default_factory=set)  # ids written (added, updated, tagged, restored)
    removed: set[str] = field(default_factory=set)  # ids deleted


class _Reject(Exception):
    pass


def _clean(content: str | None) -> str:
    text = normalize_content(content or "")
    if not text:
        raise _Reject("empty content")
    if len(text) > MAX_CONTENT_CHARS:
        raise _Reject(f"content longer than {MAX_CONTENT_CHARS} characters")
    return text


def apply_ops(
    state: PlaybookState, ops: list[LogOp], *, now: float, trace_id: str | None = None
) -> MergeOutcome:
    """Apply `ops` in order to a copy of `state`; the version advances by one iff any op applied."""
    version = state.version + 1
    bullets = dict(state.bullets)
    index = dict(state.content_index())
    next_id = state.next_id
    out = MergeOutcome(state=state)

    def get(bullet_id: str) -> Bullet:
        b = bullets.get(bullet_id)
        if b is None:
            raise _Reject(f"unknown bullet id {bullet_id!r}")
        return b

    def key(b: Bullet) -> tuple[str, str]:
        return (b.section, normalize_content(b.content).lower())

    def put(b: Bullet) -> None:
        old = bullets.get(b.id)
        if old is not None and index.get(key(old)) == old.id:
            del index[key(old)]
        bullets[b.id] = b
        index.setdefault(key(b), b.id)
        out.changed.add(b.id)
        out.removed.discard(b.id)

    def drop(bullet_id: str) -> None:
        old = bullets.pop(bullet_id)
        if index.get(key(old)) == bullet_id:
            del index[key(old)]
        out.removed.add(bullet_id)
        out.changed.discard(bullet_id)

    def check_duplicate(section: str, content: str, own_id: str | None = None) -> None:
        other = index.get((section, content.lower()))
        if other is not None and other != own_id:
            raise _Reject(f"same content as {other}")

    for op in ops:
        try:
            resolved: LogOp = op
            if isinstance(op, AddOp):
                if op.section not in state.sections:
                    raise _Reject(f"unknown section {op.section!r} (known: {', '.join(state.sections)})")
                content = _clean(op.content)
                check_duplicate(op.section, content)
                if op.id is None:
                    new_id = f"{state.sections[op.section]}-{next_id:05d}"
                else:
                    parsed = parse_bullet_id(op.id)
                    if parsed is None or op.id in bullets:
                        raise _Reject(f"bad or taken id {op.id!r}")
                    new_id = op.id
                parsed = parse_bullet_id(new_id)
                assert parsed is not None
                next_id = max(next_id, parsed[1] + 1)
                b = Bullet(
                    id=new_id,
                    section=op.section,
                    content=content,
                    created_at=now,
                    updated_at=now,
                    created_version=version,
                    updated_version=version,
                )
                put(b.with_provenance(version, "ADD", trace_id))
                resolved = op.model_copy(update={"id": new_id, "content": content})
            elif isinstance(op, UpdateOp):
                old = get(op.id)
                section = op.section or old.section
                if section not in state.sections:
                    raise _Reject(f"unknown section {section!r}")
                content = _clean(op.content)
                check_duplicate(section, content, own_id=op.id)
                changes: dict[str, object] = {
                    "content": content,
                    "section": section,
                    "updated_at": now,
                    "updated_version": version,
                }
                if op.counters == "reset":
                    changes.update(helpful=0, harmful=0, neutral=0)
                b = old.model_copy(update=changes)
                put(b.with_provenance(version, "UPDATE", trace_id))
                resolved = op.model_copy(update={"content": content})
            elif isinstance(op, MergeOp):
                if len(set(op.ids)) != len(op.ids):
                    raise _Reject("MERGE lists an id twice")
                parts = [get(i) for i in op.ids]
                keep = parts[0]
                content = _clean(op.content) if op.content is not None else keep.content
                other = index.get((keep.section, content.lower()))
                if other is not None and other not in op.ids:
                    raise _Reject(f"same content as {other}")
                for p in parts[1:]:
                    drop(p.id)
                traces = list(dict.fromkeys(t for p in parts for t in p.trace_ids))
                merged = keep.model_copy(
                    update={
                        "content": content,
                        "helpful": sum(p.helpful for p in parts),
                        "harmful": sum(p.harmful for p in parts),
                        "neutral": sum(p.neutral for p in parts),
                        "trace_ids": traces[-20:],
                        "updated_at": now,
                        "updated_version": version,
                    }
                )
                put(merged.with_provenance(version, "MERGE", trace_id))
            elif isinstance(op, RemoveOp):
                get(op.id)
                drop(op.id)
            elif isinstance(op, TagOp):
                old = get(op.id)
                b = old.model_copy(
                    update={
                        op.tag: getattr(old, op.tag) + op.count,
                        "updated_at": now,
                        "updated_version": version,
                    }
                )
                put(b.with_provenance(version, f"TAG:{op.tag}", trace_id))
            elif isinstance(op, RestoreOp):
                b = op.bullet
                parsed = parse_bullet_id(b.id)
                if parsed is None or b.section not in state.sections:
                    raise _Reject(f"cannot restore {b.id!r} into section {b.section!r}")
                next_id = max(next_id, parsed[1] + 1)
                put(b)
            else:  # pragma: no cover - the union is closed
                raise _Reject(f"unknown op {op!r}")
            out.applied.append(resolved)
        except _Reject as exc:
            out.rejected.append(RejectedOp(op=op, reason=str(exc)))

    if not out.applied:
        return out
    # model_construct: every bullet was validated on the way in; re-checking 10k of them costs ms
    new = PlaybookState.model_construct(
        sections=state.sections, bullets=bullets, version=version, next_id=next_id
    )
    new._content_index = index
    out.state = new
    return out
