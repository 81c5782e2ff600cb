"""Render the playbook into a prompt block under a hard token budget.

Bullets appear as `[strat-00042] helpful=3 harmful=0 :: content` under `## section` headers so
the Generator can cite them and see how each has fared. Over budget we do not truncate text
(that is how ACE's reference code grows past 100K tokens, or silently cuts lessons in half); we
*select* whole bullets and say how many were left out: the most helpful (helpful - harmful)
fill up to half the budget, the most relevant to the query (cosine of MiniLM embeddings) the
rest. The helpful half comes first and does not depend on the query, so consecutive turns share
that prompt prefix and a server's prefix cache reuses it; the query's picks follow it.

Token counts use the local model's tokenizer (`tokenizer.json`, no torch import) by default, or
tiktoken for OpenAI-style budgets (`FACTFLOW_PLAYBOOK_TOKENIZER=tiktoken:cl100k_base`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from functools import lru_cache
from pathlib import Path
from typing import Protocol

from pydantic import BaseModel, ConfigDict

from factflow.errors import UserError
from factflow.memory.bullets import Bullet, PlaybookState, parse_bullet_id
from factflow.settings import Settings

__all__ = ["RenderedPlaybook", "TokenCounter", "get_token_counter", "render_playbook", "bullet_line"]

log = logging.getLogger(__name__)

_QUERY_SUFFIX = " (for this question)"  # header of the bullets picked for the query, after the stable ones


class RenderedPlaybook(BaseModel):
    model_config = ConfigDict(extra="forbid")

    text: str
    bullet_ids: list[str]
    omitted: int
    tokens: int


class TokenCounter(Protocol):
    def count(self, text: str) -> int: ...


class _HFTokenizerCounter:
    def __init__(self, tokenizer_json: Path) -> None:
        from tokenizers import Tokenizer

        self._tok = Tokenizer.from_file(str(tokenizer_json))

    def count(self, text: str) -> int:
        return len(self._tok.encode(text, add_special_tokens=False).ids)


class _TiktokenCounter:
    def __init__(self, encoding: str) -> None:
        import tiktoken

        try:
            self._enc = tiktoken.get_encoding(encoding)
        except Exception as exc:
            raise UserError(
                f"tiktoken encoding {encoding!r} is not available offline ({type(exc).__name__}): set "
                "FACTFLOW_PLAYBOOK_TOKENIZER=model or pre-cache it via TIKTOKEN_CACHE_DIR"
            ) from None

    def count(self, text: str) -> int:
        return len(self._enc.encode(text, disallowed_special=()))


@lru_cache(maxsize=8)
def _counter_for(spec: str) -> TokenCounter:
    if spec.startswith("tiktoken:"):
        return _TiktokenCounter(spec.split(":", 1)[1])
    path = Path(spec)
    path = path / "tokenizer.json" if path.is_dir() else path
    if not path.exists():
        raise UserError(f"no tokenizer at {path}: set FACTFLOW_PLAYBOOK_TOKENIZER to a model folder")
    return _HFTokenizerCounter(path)


def get_token_counter(settings: Settings) -> TokenCounter:
    """The counter the settings select: 'model' (the local model's tokenizer), 'tiktoken:<enc>', a path."""
    spec = settings.playbook_tokenizer
    if spec == "model":
        from factflow.serving.models import resolve_model

        spec = resolve_model(settings)
        if not Path(spec).is_dir():
            raise UserError(
                f"model {settings.model!r} is not a local folder, so its tokenizer can't count the "
                "playbook budget: set FACTFLOW_PLAYBOOK_TOKENIZER=tiktoken:cl100k_base"
            )
    return _counter_for(spec)


def bullet_line(b: Bullet) -> str:
    """`[strat-00042] helpful=3 harmful=0 :: text`: the counters tell the Generator, Reflector
    and Curator how a lesson has fared (ACE renders them the same way)."""
    return f"[{b.id}] helpful={b.helpful} harmful={b.harmful} :: {b.content}"


def render_playbook(
    state: PlaybookState,
    counter: TokenCounter,
    budget_tokens: int,
    relevance: Mapping[str, float] | None = None,
    line_tokens: Callable[[Bullet], int] | None = None,
) -> RenderedPlaybook:
    """Select whole bullets so that `counter.count(text) <= budget_tokens`, grouped by section."""
    # id number = creation order, the same in every process whatever the dict order
    bullets = sorted(state.bullets.values(), key=lambda b: (parse_bullet_id(b.id) or ("", 0))[1])
    cost = line_tokens or (lambda b: counter.count(bullet_line(b)) + 1)
    header_cost = {s: counter.count(f"## {s}") + 1 for s in state.sections}

    def section_blocks(chosen: list[Bullet], suffix: str = "") -> list[str]:
        by_section: dict[str, list[Bullet]] = {}
        for b in chosen:
            by_section.setdefault(b.section, []).append(b)
        blocks = []
        for section in state.sections:
            items = by_section.get(section)
            if items:
                items.sort(key=lambda b: list_order[b.id])
                blocks.append("\n".join([f"## {section}{suffix}", *(bullet_line(b) for b in items)]))
        return blocks

    def compose(chosen: list[Bullet], omitted: int, stable: int | None = None) -> str:
        """Sections of `chosen`; with `stable`, its first `stable` bullets (query-independent)
        come first and the rest under "(for this question)" headers after them."""
        if stable is None:
            blocks = section_blocks(chosen)
        else:
            blocks = [*section_blocks(chosen[:stable]), *section_blocks(chosen[stable:], _QUERY_SUFFIX)]
        if omitted:
            blocks.append(f"({omitted} more bullets left out to fit the token budget)")
        return "\n\n".join(blocks)

    list_order = {b.id: k for k, b in enumerate(bullets)}
    # only tokenize the whole playbook when the cached per-line estimate says it may fit
    estimate = sum(cost(b) for b in bullets) + sum(header_cost.values())
    full = compose(bullets, 0) if estimate <= 2 * budget_tokens + 16 else ""
    full_tokens = counter.count(full) if full else 0
    if full and full_tokens <= budget_tokens or not bullets:
        return RenderedPlaybook(text=full, bullet_ids=[b.id for b in bullets], omitted=0, tokens=full_tokens)

    # over budget: the most helpful fill up to half the room (all of it without a query), then
    # the most relevant to the query the rest; each takes every bullet that still fits
    by_help = sorted(bullets, key=lambda b: (-(b.helpful - b.harmful), list_order[b.id]))
    footer_reserve = counter.count(f"({len(bullets)} more bullets left out to fit the token budget)") + 2
    room = budget_tokens - footer_reserve
    chosen: list[Bullet] = []
    taken: set[str] = set()
    headers: set[tuple[str, str]] = set()  # (section, suffix) headers already in the text

    def take(ranking: list[Bullet], limit: int, suffix: str) -> int:
        """Add bullets of `ranking` that fit in `limit` tokens; returns the tokens used."""
        used = 0
        for b in ranking:
            if b.id in taken:
                continue
            header = (b.section, suffix)
            need = cost(b) + (0 if header in headers else counter.count(f"## {b.section}{suffix}") + 2)
            if used + need <= limit:
                used += need
                chosen.append(b)
                taken.add(b.id)
                headers.add(header)
        return used

    stable: int | None = None
    if relevance:
        room -= take(by_help, room // 2, "")
        stable = len(chosen)
        by_relevance = sorted(bullets, key=lambda b: (-relevance.get(b.id, 0.0), list_order[b.id]))
        take(by_relevance, room, _QUERY_SUFFIX)
    else:
        take(by_help, room, "")
    # the sum of line costs is an estimate (tokens can merge across lines): trim until exact
    while True:
        kept_stable = None if stable is None else min(stable, len(chosen))  # the trim pops query picks first
        text = compose(chosen, len(bullets) - len(chosen), kept_stable)
        tokens = counter.count(text)
        if tokens <= budget_tokens or not chosen:
            break
        # drop from the tail, about as many lines as the overshoot needs (each re-count is a
        # full tokenization)
        over = tokens - budget_tokens
        while chosen and over > 0:
            over -= cost(chosen.pop())
    if tokens > budget_tokens:  # even the footer alone does not fit
        text, tokens = "", 0
    chosen_ids = {b.id for b in chosen}
    return RenderedPlaybook(
        text=text,
        bullet_ids=[b.id for b in bullets if b.id in chosen_ids],
        omitted=len(bullets) - len(chosen),
        tokens=tokens,
    )
