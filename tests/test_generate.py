"""The decode loop's logic on a fake logits source (no model): repetition penalty semantics."""

from __future__ import annotations

import torch

from factflow.serving.generate import GenerationParams, _penalize, generate


def test_penalty_divides_positive_and_multiplies_negative_logits_of_seen_tokens() -> None:
    logits = torch.tensor([[2.0, -2.0, 2.0, -2.0]])
    seen = torch.tensor([[True, True, False, False]])
    assert _penalize(logits, seen, 2.0).tolist() == [[1.0, -4.0, 2.0, -2.0]]


class _Tok:
    """Token i decodes to chr(97 + i); token 9 is EOS."""

    pad_token_id = 9
    eos_token_id = 9

    def decode(self, ids: list[int], skip_special_tokens: bool = True) -> str:
        return "".join(chr(97 + i) for i in ids)

    def __len__(self) -> int:
        return 10


class _LoopingSource:
    """Always prefers token 0 a little over token 1: a model stuck in a loop."""

    def _logits(self, batch: int) -> torch.Tensor:
        logits = torch.full((batch, 10), -10.0)
        logits[:, 0], logits[:, 1] = 3.0, 2.5
        return logits

    def start(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self._logits(input_ids.shape[0])

    def step(self, tokens: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self._logits(tokens.shape[0])


def _run(penalty: float, prompt: list[int]) -> str:
    params = GenerationParams(max_new_tokens=4, repetition_penalty=penalty)
    (out,) = generate(_LoopingSource(), _Tok(), [prompt], params, eos_ids={9}, vocab_size=10)
    return str(out.text)


def test_penalty_breaks_a_loop_and_counts_prompt_tokens() -> None:
    assert _run(1.0, [5]) == "aaaa"
    # 3.0 / 1.5 = 2.0 < 2.5: once "a" is seen, "b" wins; both seen -> "a" again (2.0 > 1.67)
    assert _run(1.5, [5]) == "abaa"
    assert _run(1.5, [0]) == "baaa"  # the prompt already holds token 0
