"""What every factflow training loop shares: chat-formatted (prompt, answer) ids, padding, batches.

LoReFT (`serving/reft_train.py`), the proxy pair (`serving/proxy_train.py`) and the lab's weight
routes (`evals/lab_routes.py`) all learn "answer this question with that text" on a chat model.
They encode the pair the same way: the prompt as one user turn in the tokenizer's own chat
template (with the generation prompt), then the answer followed by whatever the template writes
to close an assistant turn (`<|im_end|>` for ChatML models, `<|eot_id|>` for Llama 3, ...), so a
trained model stops after the answer on any chat model. The loss goes on the answer tokens only.
"""

from __future__ import annotations

import random
from collections.abc import Iterator, Sequence
from typing import Any, NamedTuple, TypeVar

import torch

__all__ = [
    "EncodedPair",
    "PairBatch",
    "chat_prompt_ids",
    "chat_messages_ids",
    "end_of_turn",
    "encode_pair",
    "right_pad",
    "pad_pairs",
    "batches",
    "clipped_step",
]

T = TypeVar("T")

# Stands in for an answer while rendering the template, so the text after it is the turn's end.
_ANSWER_MARK = "\x1ffactflow-answer\x1f"


class EncodedPair(NamedTuple):
    """Token ids of prompt + answer; the answer (loss) starts at `start`."""

    ids: list[int]
    start: int


class PairBatch(NamedTuple):
    """Right-padded batch: ids, mask (B, T); labels (B, T), -100 outside answers; starts (B,)."""

    ids: torch.Tensor
    mask: torch.Tensor
    labels: torch.Tensor
    starts: torch.Tensor


def _has_template(tokenizer: Any) -> bool:
    return bool(getattr(tokenizer, "chat_template", None))


def chat_prompt_ids(
    tokenizer: Any, prompt: str, *, system: str | None = None, chat: bool = True
) -> list[int]:
    """One user turn (after an optional system turn) in the chat template, ready for the answer.

    Without a chat template (or `chat=False`) the plain prompt with the tokenizer's special tokens.
    """
    if not (chat and _has_template(tokenizer)):
        return list(tokenizer(prompt, add_special_tokens=True)["input_ids"])
    messages = [{"role": "user", "content": prompt}]
    if system is not None:
        messages.insert(0, {"role": "system", "content": system})
    return chat_messages_ids(tokenizer, messages)


def chat_messages_ids(tokenizer: Any, messages: Sequence[dict[str, str]]) -> list[int]:
    """A whole conversation ({"role", "content"} dicts) in the chat template, ready for the next
    assistant turn: multi-turn training (a tool call, its result, the answer) encodes each
    assistant turn after exactly the prefix it is generated from."""
    text = tokenizer.apply_chat_template(list(messages), add_generation_prompt=True, tokenize=False)
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def end_of_turn(tokenizer: Any, *, chat: bool = True) -> str:
    """The text the chat template puts right after an assistant answer, trailing whitespace dropped.

    That is the token a served model stops on. Without a template (or when the template renders
    nothing after the answer) the tokenizer's EOS token; "" when it has none either.
    """
    eos = str(getattr(tokenizer, "eos_token", None) or "")
    if not (chat and _has_template(tokenizer)):
        return eos
    messages = [{"role": "user", "content": "?"}, {"role": "assistant", "content": _ANSWER_MARK}]
    text = str(tokenizer.apply_chat_template(messages, tokenize=False))
    at = text.rfind(_ANSWER_MARK)
    tail = text[at + len(_ANSWER_MARK) :].rstrip() if at >= 0 else ""
    return tail or eos


def encode_pair(
    tokenizer: Any, prompt: str, answer: str, *, chat: bool = True, turn_end: str | None = None
) -> EncodedPair:
    """Prompt as a chat turn + answer + end of turn; `turn_end` skips re-rendering the template."""
    head = chat_prompt_ids(tokenizer, prompt, chat=chat)
    end = end_of_turn(tokenizer, chat=chat) if turn_end is None else turn_end
    tail = list(tokenizer(answer + end, add_special_tokens=False)["input_ids"])
    return EncodedPair(head + tail, len(head))


def right_pad(rows: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad token rows for training: (B, T) ids and (B, T) attention mask."""
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, : len(r)] = torch.tensor(list(r), dtype=torch.long)
        mask[i, : len(r)] = 1
    return ids, mask


def pad_pairs(rows: Sequence[EncodedPair], pad_id: int) -> PairBatch:
    """Right-padded batch with labels on the answer tokens only (HF's `labels` convention)."""
    ids, mask = right_pad([r.ids for r in rows], pad_id)
    labels = torch.full_like(ids, -100)
    for i, r in enumerate(rows):
        labels[i, r.start : len(r.ids)] = ids[i, r.start : len(r.ids)]
    return PairBatch(ids, mask, labels, torch.tensor([r.start for r in rows], dtype=torch.long))


def batches(items: Sequence[T], size: int, rng: random.Random | None = None) -> Iterator[list[T]]:
    """Consecutive chunks of `size`, in an order shuffled by `rng` (none: the given order)."""
    order = list(items)
    if rng is not None:
        rng.shuffle(order)
    for i in range(0, len(order), size):
        yield order[i : i + size]


def clipped_step(optimizer: torch.optim.Optimizer, params: Sequence[torch.Tensor], loss: torch.Tensor,
                 max_norm: float = 1.0) -> None:  # fmt: skip
    """One plain update: backward, clip the gradient norm to `max_norm`, step, clear gradients."""
    optimizer.zero_grad()
    loss.backward()
    torch.nn.utils.clip_grad_norm_(params, max_norm)
    optimizer.step()
