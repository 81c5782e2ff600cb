"""The three ACE roles: Generator, Reflector, Curator (Zhang et al., ICLR 2026, section 3).

    Generator:  (question, playbook[, reflection])   -> reasoning, answer, ids of bullets used
    Reflector:  (question, reasoning, answer, bullets used, tool trajectory, feedback)
                                                     -> diagnosis, key insight, tags of those bullets
    Curator:    (reflections, playbook with counters, size vs budget) -> delta ops

Each role asks the chat model for a pydantic object through `with_structured_output`, which both
engines back with constrained decoding, so even a 135M model emits parseable JSON. Output that
still does not parse or validate is retried once and then *skipped* with a logged reason: a role
never returns half an object, and the Curator's ops still pass through the deterministic
validator in `factflow.memory.merge` before they touch the playbook. Any other failure (a dead
server, a bug) is not a bad output: it propagates, so a run fails loudly instead of scoring zeros.
Prompts live in `memory/prompts/*.md`.
"""

from __future__ import annotations

import json
import logging
import re
import time
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Any, Literal

import openai
from langchain_core.exceptions import OutputParserException
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, create_model

from factflow.errors import UserError
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
    "curator_ops",
    "tag_ops",
    "cut_words",
    "cut_sentences",
    "bullet_block",
    "PARSE_ERRORS",
]

log = logging.getLogger(__name__)
_PROMPTS = Path(__file__).parent / "prompts"


class _Out(BaseModel):
    model_config = ConfigDict(extra="forbid")


def cut_words(text: str, n: int) -> str:
    """At most `n` characters, cut after the last whole word or list item (space or comma); a
    single "word" longer than `n` (no boundary at all) is cut hard."""
    text = " ".join(text.split())
    if len(text) <= n:
        return text
    head = text[: n + 1]
    cut = max(head.rfind(" "), head.rfind(",") + 1 if head.rfind(",") >= 0 else -1)
    return head[:cut].rstrip(" ,") if cut > 0 else text[:n]


_SENTENCE_END = re.compile(r"[.!?](?=\s|$)")


def cut_sentences(text: str, n: int) -> str:
    """At most `n` characters, cut after the last whole sentence that fits; "" when even the
    first sentence is longer (the caller rejects it: a lesson cut mid-sentence can mislead)."""
    text = " ".join(text.split())
    if len(text) <= n:
        return text
    ends = [m.end() for m in _SENTENCE_END.finditer(text) if m.end() <= n]
    return text[: ends[-1]] if ends else ""


def _cut(n: int) -> Any:
    return AfterValidator(lambda v: cut_words(v, n))


def _cut_sentences(n: int) -> Any:
    return AfterValidator(lambda v: cut_sentences(v, n))


# Strings cut *after* decoding, not `max_length`: xgrammar compiles a JSON-schema maxLength into
# a counted repetition costing ~9 s of CPU per schema; max_new_tokens already bounds the output.
_S24 = Annotated[str, _cut(24)]
_S1000 = Annotated[str, _cut(1000)]  # a FiNER answer lists several 60-character tags
_S400 = Annotated[str, _cut(400)]
_S600 = Annotated[str, _cut(600)]
# Bullet text becomes a lesson in every later prompt: whole sentences or nothing.
_Lesson = Annotated[str, _cut_sentences(300)]


_ID_PATTERN = r"^[a-z][a-z0-9_]{0,15}-[0-9]{1,9}$"  # the shape of `bullets.parse_bullet_id`


class GeneratorOutput(_Out):
    # length caps bound decode time on CPU and keep a rambling small model in check. `reasoning`
    # is the one cap inside the grammar: SmolLM2 otherwise reasons until the 512-token cap on
    # every Formula question (130 s per answer under load); the maxLength compile costs ~11 s
    # once per process (xgrammar caches compiled schemas).
    reasoning: Annotated[_S600, Field(json_schema_extra={"maxLength": 600})] = ""
    answer: _S1000
    # ids only in the id shape: the grammar enforces the pattern (a cheap regex for xgrammar);
    # an engine without a grammar may still send prose, which is dropped, not a failed answer
    bullet_ids: Annotated[
        list[Annotated[str, Field(json_schema_extra={"pattern": _ID_PATTERN})]],
        AfterValidator(lambda ids: [i for i in ids if re.fullmatch(_ID_PATTERN, i)]),
    ] = Field(default_factory=list, max_length=8)


class BulletTag(_Out):
    id: _S24
    tag: Literal["helpful", "harmful", "neutral"]


class Reflection(_Out):
    diagnosis: _S400
    key_insight: _Lesson
    bullet_tags: list[BulletTag] = Field(default_factory=list, max_length=8)


class CuratorOperation(_Out):
    """Flat on purpose: one shape for every op is far easier for a small model than a union."""

    type: Literal["ADD", "UPDATE", "MERGE", "REMOVE"]
    section: str = ""
    content: _Lesson = ""
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
        content=(_Lesson, ...),  # required: with a default the model leaves ADD content out
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


# What a bad *output* raises: the engines' parse step (OutputParserException), pydantic, JSON, and
# the openai client's refusal to parse a JSON object the server cut at the token cap (vLLM engine).
# Everything else (a dead server, a TypeError) is a broken run, not a bad answer.
PARSE_ERRORS: tuple[type[Exception], ...] = (
    OutputParserException,
    ValidationError,
    json.JSONDecodeError,
    openai.LengthFinishReasonError,
    openai.ContentFilterFinishReasonError,
)


def _unreachable(exc: BaseException) -> bool:
    """The server is down or unreachable (the openai client wraps httpx's connection errors)."""
    names = {c.__name__ for c in type(exc).__mro__}
    return bool(names & {"APIConnectionError", "APITimeoutError", "ConnectError", "ConnectionError"})


def call_structured(
    chat_model: Any, schema: type[BaseModel], prompt: str, role: str, meter: UsageMeter | None = None
) -> tuple[BaseModel | None, str | None]:
    """Structured call with one retry on unparseable output (none when decoding is greedy).
    Returns (object, None) or (None, reason it was skipped). A server that cannot be reached is
    a UserError; any other exception propagates unchanged."""
    from langchain_core.messages import HumanMessage

    reason = ""
    # Greedy decoding repeats the same bad output, so a retry only helps a sampling model.
    attempts = (1,) if getattr(chat_model, "temperature", None) == 0 else (1, 2)
    for attempt in attempts:
        t0 = time.perf_counter()
        out: Any = None
        try:
            out = _structured(chat_model, schema).invoke([HumanMessage(content=prompt)])
            if isinstance(out, BaseModel) and not isinstance(out, schema):
                out = out.model_dump()
            obj = out if isinstance(out, schema) else schema.model_validate(out)
        except PARSE_ERRORS as exc:  # a bad output is a skipped step, never a crash
            reason = f"{type(exc).__name__}: {str(exc)[:300]}"
            log.warning("%s output invalid (attempt %d of %d): %s", role, attempt, len(attempts), reason)
            if meter is not None:
                meter.record(RoleCall(role, prompt, str(out or ""), time.perf_counter() - t0, False))
            continue
        except Exception as exc:
            if _unreachable(exc):
                raise UserError(
                    f"the {role} could not reach the model server ({type(exc).__name__}: {exc}): "
                    "start it (`factflow serve`) or fix FACTFLOW_BASE_URL"
                ) from exc
            raise
        if meter is not None:
            meter.record(RoleCall(role, prompt, obj.model_dump_json(), time.perf_counter() - t0, True))
        return obj, None
    log.warning("%s step skipped after %d invalid output(s): %s", role, len(attempts), reason)
    return None, f"{role} skipped: {reason}"


def bullet_block(bullets: list[Bullet]) -> str:
    """Bullets with their counters, the way the Reflector and Curator see them."""
    from factflow.memory.render import bullet_line

    return "\n".join(bullet_line(b) for b in bullets) or "(none)"


class Generator:
    def __init__(self, chat_model: Any, meter: UsageMeter | None = None) -> None:
        self.chat_model, self.meter = chat_model, meter

    def generate(
        self, question: str, playbook_text: str, reflection: str = ""
    ) -> tuple[GeneratorOutput | None, str | None]:
        """`reflection`: the Reflector's diagnosis of an earlier wrong attempt at this question."""
        previous = ""
        if reflection:
            previous = f"\nA REVIEWER'S NOTES ON YOUR EARLIER WRONG ATTEMPT:\n{reflection}\n"
        prompt = _fill(
            load_prompt("generator"),
            playbook=playbook_text or "(empty)",
            question=question,
            reflection=previous,
        )
        out, reason = call_structured(self.chat_model, GeneratorOutput, prompt, "generator", self.meter)
        return (out if isinstance(out, GeneratorOutput) else None), reason


class Reflector:
    def __init__(self, chat_model: Any, meter: UsageMeter | None = None) -> None:
        self.chat_model, self.meter = chat_model, meter

    def reflect(
        self,
        question: str,
        answer: str,
        feedback: str,
        bullets: list[Bullet],
        *,
        reasoning: str = "",
        trajectory: str = "",
    ) -> tuple[Reflection | None, str | None]:
        """Diagnose one answer. `bullets` are the ones the Generator said it used (only those can
        be tagged); `trajectory` holds tool calls and results, if any."""
        prompt = _fill(
            load_prompt("reflector"),
            question=question,
            reasoning=reasoning or "(none given)",
            answer=answer or "(no answer)",
            trajectory=trajectory or "(no tool calls)",
            feedback=feedback or "(no feedback)",
            bullets=bullet_block(bullets),
        )
        out, reason = call_structured(self.chat_model, Reflection, prompt, "reflector", self.meter)
        return (out if isinstance(out, Reflection) else None), reason


class Curator:
    def __init__(self, chat_model: Any, meter: UsageMeter | None = None) -> None:
        self.chat_model, self.meter = chat_model, meter

    def curate(
        self,
        reflections: list[tuple[str, Reflection]],
        playbook_text: str,
        sections: list[str],
        add_only: bool = False,
        stats: str = "",
    ) -> tuple[list[DeltaOp] | None, list[str]]:
        """Ops for a batch of (question, reflection) pairs; (None, [reason]) when skipped.
        `add_only` restricts the ops to ADD (the caller shows no bullets to edit); `stats` says
        how big the playbook is against its budget."""
        block = "\n".join(
            f"- question: {q}\n  diagnosis: {r.diagnosis}\n  key insight: {r.key_insight}"
            for q, r in reflections
        )
        prompt = _fill(
            load_prompt("curator"),
            sections=", ".join(sections),
            playbook=playbook_text or "(empty)",
            stats=stats or "(no size information)",
            reflections=block,
        )
        schema = _curator_schema(tuple(sections), add_only)
        out, reason = call_structured(self.chat_model, schema, prompt, "curator", self.meter)
        if out is None:
            return None, [reason or "curator skipped"]
        ops, notes = curator_ops(out.model_dump()["operations"])
        return ops, notes


def curator_ops(operations: list[dict[str, Any]]) -> tuple[list[DeltaOp], list[str]]:
    """Flat curator operations -> typed delta ops; shapes that cannot become an op are noted.

    A Curator UPDATE keeps the bullet's counters (it sharpens wording; a different lesson is a
    REMOVE plus an ADD). Content that had no sentence boundary within the length cap arrives
    empty (see `cut_sentences`) and the op is dropped with a note, never stored half-cut."""
    ops: list[DeltaOp] = []
    notes: list[str] = []
    for raw in operations:
        kind, ids, content = raw["type"], list(raw.get("bullet_ids") or []), raw.get("content") or ""
        if kind in ("ADD", "UPDATE") and not content.strip():
            notes.append(f"dropped curator {kind} op: empty content, or one sentence longer than the cap")
            continue
        try:
            if kind == "ADD":
                ops.append(AddOp(section=raw.get("section") or "other", content=content))
            elif kind == "UPDATE":
                ops.append(UpdateOp(id=ids[0], content=content, counters="keep"))
            elif kind == "MERGE":
                ops.append(MergeOp(ids=ids, content=content or None))
            elif kind == "REMOVE":
                ops.append(RemoveOp(id=ids[0], reason=f"curator: {content}"[:300] if content else "curator"))
        except (IndexError, ValidationError) as exc:
            notes.append(f"dropped curator {kind} op without the ids it needs: {type(exc).__name__}")
    return ops, notes


def tag_ops(reflection: Reflection, allowed_ids: set[str]) -> list[DeltaOp]:
    """TAG ops from the Reflector's tags, limited to the bullets the Generator used (and so the
    Reflector was shown); one tag per bullet."""
    seen: set[str] = set()
    ops: list[DeltaOp] = []
    for t in reflection.bullet_tags:
        if t.id in allowed_ids and t.id not in seen:
            seen.add(t.id)
            ops.append(TagOp(id=t.id, tag=t.tag))
    return ops
