"""One batched decode loop for every in-process route (plain model, LoReFT hooks, proxy-tuning).

The loop only needs a `LogitsSource`: something that returns next-token logits for a left-padded
batch and then for one new token per row. A plain model is `CausalLMSource`; proxy-tuning plugs in
a source that combines three models' logits *before* this loop applies constraints and sampling,
so streaming, stop sequences and JSON-schema output work the same for every route.

Per step (B = batch, V = vocab):
    logits (B, V) -> JSON-schema mask (xgrammar) -> temperature / top-p -> token (B,)
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Literal, Protocol

import torch
from pydantic import BaseModel, ConfigDict, Field

__all__ = [
    "GenerationParams",
    "LogitsSource",
    "CausalLMSource",
    "Completion",
    "StreamDelta",
    "generate",
    "generate_stream",
    "eos_token_ids",
]


class GenerationParams(BaseModel):
    """How to decode. temperature 0 is greedy."""

    model_config = ConfigDict(extra="forbid")

    max_new_tokens: int = Field(256, ge=1)
    temperature: float = Field(0.0, ge=0.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    # vLLM's semantics: logits of tokens already in the prompt or output are divided by it (or
    # multiplied when negative). >1 breaks the loops a small model falls into in long JSON strings.
    repetition_penalty: float = Field(1.0, gt=0.0)
    stop: list[str] = Field(default_factory=list)
    json_schema: dict[str, Any] | None = None
    seed: int | None = None


class LogitsSource(Protocol):
    """Next-token logits for a batch, with whatever caches the source keeps inside."""

    def start(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Prefill (B, T) left-padded prompts; return logits of the last position, (B, V)."""
        ...

    def step(self, tokens: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Feed (B, 1) new tokens (mask now (B, T+n)); return (B, V) logits."""
        ...


class CausalLMSource:
    """A Hugging Face causal LM with its own KV cache."""

    def __init__(self, model: Any) -> None:
        self.model = model
        self._cache: Any = None

    @staticmethod
    def _positions(attention_mask: torch.Tensor) -> torch.Tensor:
        # Left padding: positions count only real tokens, so a padded row matches an unpadded run.
        return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)

    @torch.inference_mode()
    def start(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        from transformers import DynamicCache

        self._cache = DynamicCache()
        out = self.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=self._positions(attention_mask),
            past_key_values=self._cache,
            use_cache=True,
            # Only the last position's logits are used: the LM head over the whole prompt would
            # cost T x (hidden x vocab) multiply-adds for nothing.
            logits_to_keep=1,
        )
        self._cache = out.past_key_values
        return out.logits[:, -1, :]

    @torch.inference_mode()
    def step(self, tokens: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        out = self.model(
            input_ids=tokens,
            attention_mask=attention_mask,
            position_ids=self._positions(attention_mask)[:, -1:],
            past_key_values=self._cache,
            use_cache=True,
        )
        self._cache = out.past_key_values
        return out.logits[:, -1, :]

    def keep(self, rows: torch.Tensor) -> None:
        """Keep only these batch rows in the KV cache (the others finished)."""
        self._cache.batch_select_indices(rows)


@dataclass
class Completion:
    text: str
    token_ids: list[int]
    finish_reason: Literal["stop", "length"]
    prompt_tokens: int
    completion_tokens: int


@dataclass
class StreamDelta:
    """New text for one row of the batch; `finish_reason` is set on the row's last delta."""

    index: int
    text: str
    finish_reason: Literal["stop", "length"] | None = None
    token_ids: list[int] | None = None  # all generated ids of the row, on its last delta only


def eos_token_ids(tokenizer: Any, model: Any | None = None) -> set[int]:
    ids: set[int] = set()
    if tokenizer.eos_token_id is not None:
        ids.add(int(tokenizer.eos_token_id))
    gen = getattr(model, "generation_config", None)
    eos = getattr(gen, "eos_token_id", None)
    if isinstance(eos, int):
        ids.add(eos)
    elif isinstance(eos, list):
        ids.update(int(i) for i in eos)
    for special in ("<|im_end|>", "<|endoftext|>"):
        tid = tokenizer.convert_tokens_to_ids(special)
        if isinstance(tid, int) and tid != tokenizer.unk_token_id and tid >= 0:
            ids.add(tid)
    return ids


@lru_cache(maxsize=8)
def _grammar_compiler(tokenizer: Any, vocab_size: int) -> Any:
    import xgrammar as xgr

    info = xgr.TokenizerInfo.from_huggingface(tokenizer, vocab_size=vocab_size)
    return xgr.GrammarCompiler(info)


@lru_cache(maxsize=64)
def _compiled_schema(tokenizer: Any, vocab_size: int, schema_json: str) -> Any:
    return _grammar_compiler(tokenizer, vocab_size).compile_json_schema(schema_json)


class _RowState:
    """One row's output. Text is detokenised incrementally: each token decodes a short window
    (`prefix_offset`..end) instead of the whole row, the way vLLM and TGI stream text."""

    def __init__(self, stop: Sequence[str]) -> None:
        self.ids: list[int] = []
        self.text = ""
        self.emitted = 0
        self.finish: Literal["stop", "length"] | None = None
        self.stop = list(stop)
        self.prefix_offset = 0  # ids[prefix_offset:read_offset] give context for the next token's text
        self.read_offset = 0  # ids before it are already in `text`

    def add_text(self, tokenizer: Any, final: bool) -> int:
        """Append the text of ids not yet in `text`; returns where the new text starts.

        A token that ends inside a UTF-8 character decodes to U+FFFD until the next token completes
        it, so such text waits (unless the row is final: then it is what a full decode gives)."""
        before = len(self.text)
        prefix = tokenizer.decode(self.ids[self.prefix_offset : self.read_offset], skip_special_tokens=True)
        window = tokenizer.decode(self.ids[self.prefix_offset :], skip_special_tokens=True)
        if len(window) > len(prefix) and (final or not window.endswith("\ufffd")):
            self.text += window[len(prefix) :]
            self.prefix_offset, self.read_offset = self.read_offset, len(self.ids)
        return before


def _penalize(logits: torch.Tensor, seen: torch.Tensor, penalty: float) -> torch.Tensor:
    width = min(logits.shape[-1], seen.shape[-1])
    part, mask = logits[:, :width], seen[:, :width]
    penalized = torch.where(part > 0, part / penalty, part * penalty)
    logits = logits.clone()
    logits[:, :width] = torch.where(mask, penalized, part)
    return logits


def _sample(logits: torch.Tensor, params: GenerationParams, gen: torch.Generator | None) -> torch.Tensor:
    if params.temperature == 0.0:
        return logits.argmax(dim=-1)
    probs = torch.softmax(logits / params.temperature, dim=-1)
    if params.top_p < 1.0:
        sorted_probs, order = probs.sort(dim=-1, descending=True)
        keep = sorted_probs.cumsum(-1) - sorted_probs < params.top_p  # always keeps the top token
        sorted_probs = sorted_probs * keep
        probs = torch.zeros_like(probs).scatter(-1, order, sorted_probs)
    return torch.multinomial(probs, 1, generator=gen).squeeze(-1)


def generate_stream(
    source: LogitsSource,
    tokenizer: Any,
    prompts: Sequence[Sequence[int]],
    params: GenerationParams,
    *,
    eos_ids: set[int] | None = None,
    vocab_size: int | None = None,
) -> Iterator[StreamDelta]:
    """Decode a batch of tokenized prompts, yielding text deltas as they become final.

    Text that could still turn into a stop sequence is held back until it can't.
    """
    if not prompts:
        return
    eos = eos_ids if eos_ids is not None else eos_token_ids(tokenizer)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else next(iter(eos))
    batch, width = len(prompts), max(len(p) for p in prompts)
    input_ids = torch.full((batch, width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((batch, width), dtype=torch.long)
    for i, p in enumerate(prompts):
        if len(p):
            input_ids[i, width - len(p) :] = torch.tensor(list(p), dtype=torch.long)
            attention_mask[i, width - len(p) :] = 1

    rows = [_RowState(params.stop) for _ in prompts]
    hold_back = max((len(s) for s in params.stop), default=1) - 1
    gen = torch.Generator().manual_seed(params.seed) if params.seed is not None else None
    # Rows still decoding, in batch order; finished rows leave the batch when the source can drop
    # them from its KV cache (`keep`), so a long answer doesn't carry the short ones' dead rows.
    active = list(range(batch))
    keep = getattr(source, "keep", None)

    matchers: list[Any] = []
    bitmask = None
    if params.json_schema is not None:
        import xgrammar as xgr

        vs = vocab_size or len(tokenizer)
        compiled = _compiled_schema(tokenizer, vs, json.dumps(params.json_schema, sort_keys=True))
        matchers = [xgr.GrammarMatcher(compiled) for _ in prompts]
        bitmask = xgr.allocate_token_bitmask(batch, vs)

    seen = None
    if params.repetition_penalty != 1.0:
        seen = torch.zeros((batch, vocab_size or len(tokenizer)), dtype=torch.bool)
        for i, p in enumerate(prompts):
            seen[i, list(p)] = True

    logits = source.start(input_ids, attention_mask)
    for step in range(params.max_new_tokens):
        logits = logits.float()
        if seen is not None:
            logits = _penalize(logits, seen, params.repetition_penalty)
        if matchers:
            import xgrammar as xgr

            assert bitmask is not None  # allocated together with the matchers
            for j, i in enumerate(active):
                if rows[i].finish is None:
                    matchers[i].fill_next_token_bitmask(bitmask, j)
            mask = bitmask[: len(active)].to(logits.device)
            xgr.apply_token_bitmask_inplace(logits, mask, vocab_size=logits.shape[-1])
        tokens = _sample(logits, params, gen)

        for j, i in enumerate(active):
            row = rows[i]
            if row.finish is not None:
                continue
            tok = int(tokens[j])
            if seen is not None:
                seen[j, tok] = True
            grammar_done = False
            if matchers:
                matchers[i].accept_token(tok)
                grammar_done = matchers[i].is_terminated()
            if tok in eos:
                row.finish = "stop"
                row.add_text(tokenizer, final=True)
            else:
                row.ids.append(tok)
                last = step == params.max_new_tokens - 1
                before = row.add_text(tokenizer, final=last or grammar_done)
                # Text before this token held no stop sequence, so a match ends in the new part.
                cut = min(
                    (c for c in (row.text.find(s, max(0, before - len(s) + 1)) for s in row.stop) if c >= 0),
                    default=-1,
                )
                if cut >= 0:
                    row.text = row.text[:cut]
                    row.finish = "stop"
                elif grammar_done:
                    row.finish = "stop"
                elif last:
                    row.finish = "length"
            final = row.finish is not None
            # Hold back a possible stop-sequence prefix.
            upto = len(row.text) if final else max(row.emitted, len(row.text) - hold_back)
            if upto > row.emitted or final:
                yield StreamDelta(i, row.text[row.emitted : upto], row.finish, row.ids if final else None)
                row.emitted = max(row.emitted, upto)
        live = [j for j, i in enumerate(active) if rows[i].finish is None]
        if not live:
            break
        if keep is not None and len(live) < len(active):
            rows_kept = torch.tensor(live, dtype=torch.long)
            keep(rows_kept)
            active = [active[j] for j in live]
            tokens, attention_mask = tokens[rows_kept], attention_mask[rows_kept]
            if seen is not None:
                seen = seen[rows_kept]
        tokens = torch.where(
            torch.tensor([rows[i].finish is None for i in active]), tokens, torch.full_like(tokens, pad_id)
        )
        ones = torch.ones((len(active), 1), dtype=torch.long)
        attention_mask = torch.cat([attention_mask, ones], dim=1)
        logits = source.step(tokens.unsqueeze(-1), attention_mask)


def generate(
    source: LogitsSource,
    tokenizer: Any,
    prompts: Sequence[Sequence[int]],
    params: GenerationParams,
    *,
    eos_ids: set[int] | None = None,
    vocab_size: int | None = None,
) -> list[Completion]:
    """Non-streaming batch decode; same tokens as `generate_stream`."""
    texts = ["" for _ in prompts]
    ids: list[list[int]] = [[] for _ in prompts]
    finish: list[Literal["stop", "length"]] = ["length" for _ in prompts]
    for delta in generate_stream(source, tokenizer, prompts, params, eos_ids=eos_ids, vocab_size=vocab_size):
        texts[delta.index] += delta.text
        if delta.finish_reason:
            finish[delta.index] = delta.finish_reason
            ids[delta.index] = delta.token_ids or []
    return [
        Completion(texts[i], ids[i], finish[i], len(p), len(ids[i])) for i, p in enumerate(prompts)
    ]
