"""The three ACE roles: Generator, Reflector, Curator (Zhang et al., ICLR 2026, section 3).

    Generator:  (question, playbook)                    -> answer + cited bullet ids
    Reflector:  (question, trajectory, feedback, bullets) -> diagnosis, key insight, bullet tags
    Curator:    (reflections, playbook)                 -> delta ops (ADD/UPDATE/MERGE/REMOVE)

Each role asks the chat model for a pydantic object through `with_structured_output`, which both
engines back with constrained decoding, so even a 135M model emits parseable JSON. Anything that
still fails (a validation error, an engine error) is retried once and then *skipped* with a logged
reason: a role never returns half an object, and the Curator's ops still pass through the
deterministic validator in `factflow.memory.merge` before they touch the playbook.
Prompts live in `memory/prompts/*.md`.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, create_model

from factflow.memory.bullets import AddOp, Bullet, DeltaOp, MergeOp, RemoveOp, TagOp, UpdateOp

__all__ = [
    "GeneratorOutput",
    "BulletTag",
    "Reflection",
    "CuratorOperation",
    "CuratorOutput",
    "RoleCall",
    "UsageMeter",
    "Generator",
    "Reflector",
    "Curator",
    "load_prompt",
    "call_structured",
    "tag_ops",
]

log = logging.getLogger(__name__)
_PROMPTS = Path(__file__).parent / "prompts"


class _Out(BaseModel):
    model_config = ConfigDict(extra="forbid")


def _cut(n: int) -> Any:
    return AfterValidator(lambda v: v[:n])


# Strings cut *after* decoding, not `max_length`: xgrammar compiles a JSON-schema maxLength into
# a counted repetition costing ~9 s of CPU per schema; max_new_tokens already bounds the output.
_S24 = Annotated[str, _cut(24)]
_S200 = Annotated[str, _cut(200)]
_S300 = Annotated[str, _cut(300)]
_S400 = Annotated[str, _cut(400)]
_S600 = Annotated[str, _cut(600)]


class GeneratorOutput(_Out):
    # length caps bound decode time on CPU and keep a rambling small model in check
    reasoning: _S600 = ""
    answer: _S200
    bullet_ids: list[str] = Field(default_factory=list, max_length=8)


class BulletTag(_Out):
    id: _S24
    tag: Literal["helpful", "harmful", "neutral"]


class Reflection(_Out):
    diagnosis: _S400
    key_insight: _S300
    bullet_tags: list[BulletTag] = Field(default_factory=list, max_length=8)


class CuratorOperation(_Out):
    """Flat on purpose: one shape for every op is far easier for a small model than a union."""

    type: Literal["ADD", "UPDATE", "MERGE", "REMOVE"]
    section: str = ""
    content: _S300 = ""
    bullet_ids: list[str] = Field(default_factory=list, max_length=4)


class CuratorOutput(_Out):
    operations: list[CuratorOperation] = Field(default_factory=list, max_length=3)


@lru_cache(maxsize=16)
def _curator_schema(sections: tuple[str, ...], add_only: bool = False) -> type[BaseModel]:
    """CuratorOutput whose `section` is an enum of the playbook's sections (constrained decoding
    then cannot invent one). `add_only` when the Curator sees no bullets: UPDATE/MERGE/REMOVE need
    ids it has not got, and a 135M model otherwise emits them anyway (seen: MERGE with no ids)."""
    section_t: Any = Literal[sections]  # type: ignore[valid-type]
    type_t: Any = Literal["ADD"] if add_only else Literal["ADD", "UPDATE", "MERGE", "REMOVE"]
    op = create_model(
        "CuratorOperation",
        __base__=CuratorOperation,
        type=(type_t, ...),
        section=(section_t, sections[0]),
        content=(_S300, ...),  # required: with a default the model leaves ADD content out
    )
    return create_model(
        "CuratorOutput",
        __base__=_Out,
        operations=(list[op], Field(default_factory=list, max_length=3)),  # type: ignore[valid-type]
    )


@dataclass
class RoleCall:
    role: str
    prompt: str
    output: str
    seconds: float
    ok: bool


@dataclass
class UsageMeter:
    """Records every role call (prompt, JSON output, seconds) so benchmarks can count tokens."""

    calls: list[RoleCall] = field(default_factory=list)

    def record(self, call: RoleCall) -> None:
        self.calls.append(call)


def load_prompt(name: str) -> str:
    return (_PROMPTS / f"{name}.md").read_text(encoding="utf-8")


def _fill(template: str, **values: str) -> str:
    # str.replace, not str.format: bullet text and answers may contain braces
    for key, value in values.items():
        template = template.replace("{" + key + "}", value)
    return template


ROLE_MAX_TOKENS = 512  # a reflection or delta cut off by a short answer cap can never parse
# Without a penalty SmolLM2-135M repeats one sentence inside "diagnosis" until ROLE_MAX_TOKENS
# (2 of 3 reflections in a probe); at 1.1 all 3 closed their JSON in 32-51 tokens.
ROLE_REPETITION_PENALTY = 1.1


def _structured(chat_model: Any, schema: type[BaseModel]) -> Any:
    """factflow's engines take a per-output token cap; any other chat model gets its default."""
    from factflow.serving.structured import StructuredOutputMixin

    if isinstance(chat_model, StructuredOutputMixin):
        return chat_model.with_structured_output(
            schema, max_tokens=ROLE_MAX_TOKENS, repetition_penalty=ROLE_REPETITION_PENALTY
        )
    return chat_model.with_structured_output(schema)


def call_structured(
    chat_model: Any, schema: type[BaseModel], prompt: str, role: str, meter: UsageMeter | None = None
) -> tuple[BaseModel | None, str | None]:
    """Structured call with one retry. Returns (object, None) or (None, reason it was skipped)."""
    from langchain_core.messages import HumanMessage

    reason = ""
    for attempt in (1, 2):
        t0 = time.perf_counter()
        out: Any = None
        try:
            out = _structured(chat_model, schema).invoke([HumanMessage(content=prompt)])
            if isinstance(out, BaseModel) and not isinstance(out, schema):
                out = out.model_dump()
            obj = out if isinstance(out, schema) else schema.model_validate(out)
        except Exception as exc:  # any failure of a role is a skipped step, never a crash
            reason = f"{type(exc).__name__}: {str(exc)[:300]}"
            log.warning("%s output invalid (attempt %d of 2): %s", role, attempt, reason)
            if meter is not None:
                meter.record(RoleCall(role, prompt, str(out or ""), time.perf_counter() - t0, False))
            continue
        if meter is not None:
            meter.record(RoleCall(role, prompt, obj.model_dump_json(), time.perf_counter() - t0, True))
        return obj, None
    log.warning("%s step skipped after 2 invalid outputs: %s", role, reason)
    return None, f"{role} skipped: {reason}"


def _bullet_block(bullets: list[Bullet]) -> str:
    return "\n".join(f"[{b.id}] {b.content}" for b in bullets) or "(none)"


class Generator:
    def __init__(self, chat_model: Any, meter: UsageMeter | None = None) -> None:
        self.chat_model, self.meter = chat_model, meter

    def generate(self, question: str, playbook_text: str) -> tuple[GeneratorOutput | None, str | None]:
        prompt = _fill(load_prompt("generator"), playbook=playbook_text or "(empty)", question=question)
        out, reason = call_structured(self.chat_model, GeneratorOutput, prompt, "generator", self.meter)
        return (out if isinstance(out, GeneratorOutput) else None), reason


class Reflector:
    def __init__(self, chat_model: Any, meter: UsageMeter | None = None, rounds: int = 1) -> None:
        self.chat_model, self.meter, self.rounds = chat_model, meter, max(1, rounds)

    def reflect(
        self, question: str, trajectory: str, feedback: str, bullets: list[Bullet]
    ) -> tuple[Reflection | None, str | None]:
        """Up to `rounds` passes; each later pass sees the previous reflection and refines it."""
        best: Reflection | None = None
        reason: str | None = None
        for _ in range(self.rounds):
            previous = ""
            if best is not None:
                previous = f"\nPREVIOUS REFLECTION (improve it):\n{best.model_dump_json()}\n"
            prompt = _fill(
                load_prompt("reflector"),
                question=question,
                trajectory=trajectory or "(none)",
                feedback=feedback or "(no feedback)",
                bullets=_bullet_block(bullets),
                previous=previous,
            )
            out, reason = call_structured(self.chat_model, Reflection, prompt, "reflector", self.meter)
            if isinstance(out, Reflection):
                best = out
            elif best is not None:
                break  # keep the last good round
        return best, (None if best is not None else reason)


class Curator:
    def __init__(self, chat_model: Any, meter: UsageMeter | None = None) -> None:
        self.chat_model, self.meter = chat_model, meter

    def curate(
        self,
        reflections: list[tuple[str, Reflection]],
        playbook_text: str,
        sections: list[str],
        add_only: bool = False,
    ) -> tuple[list[DeltaOp] | None, list[str]]:
        """Ops for a batch of (question, reflection) pairs; (None, [reason]) when skipped.
        `add_only` restricts the ops to ADD (the caller shows no bullets to edit)."""
        block = "\n".join(
            f"- question: {q}\n  diagnosis: {r.diagnosis}\n  key insight: {r.key_insight}"
            for q, r in reflections
        )
        prompt = _fill(
            load_prompt("curator"),
            sections=", ".join(sections),
            playbook=playbook_text or "(empty)",
            reflections=block,
        )
        schema = _curator_schema(tuple(sections), add_only)
        out, reason = call_structured(self.chat_model, schema, prompt, "curator", self.meter)
        if out is None:
            return None, [reason or "curator skipped"]
        ops, notes = curator_ops(out.model_dump()["operations"])
        return ops, notes


def curator_ops(operations: list[dict[str, Any]]) -> tuple[list[DeltaOp], list[str]]:
    """Flat curator operations -> typed delta ops; shapes that cannot become an op are noted."""
    ops: list[DeltaOp] = []
    notes: list[str] = []
    for raw in operations:
        kind, ids, content = raw["type"], list(raw.get("bullet_ids") or []), raw.get("content") or ""
        try:
            if kind == "ADD":
                ops.append(AddOp(section=raw.get("section") or "other", content=content))
            elif kind == "UPDATE":
                ops.append(UpdateOp(id=ids[0], content=content))
            elif kind == "MERGE":
                ops.append(MergeOp(ids=ids, content=content or None))
            elif kind == "REMOVE":
                ops.append(RemoveOp(id=ids[0]))
        except (IndexError, ValidationError) as exc:
            notes.append(f"dropped curator {kind} op without the ids it needs: {type(exc).__name__}")
    return ops, notes


def tag_ops(reflection: Reflection, allowed_ids: set[str]) -> list[DeltaOp]:
    """TAG ops from the Reflector's tags, limited to bullets it was actually shown."""
    seen: set[str] = set()
    ops: list[DeltaOp] = []
    for t in reflection.bullet_tags:
        if t.id in allowed_ids and t.id not in seen:
            seen.add(t.id)
            ops.append(TagOp(id=t.id, tag=t.tag))
    return ops
