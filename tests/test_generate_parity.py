"""The fast decode loop (last-position logits at prefill, incremental detokenisation, finished rows
leaving the batch) against transformers' own greedy `generate` on the real default model."""

from __future__ import annotations

import json
from typing import Any

import pytest
import torch

from factflow.serving.generate import CausalLMSource, GenerationParams, eos_token_ids, generate
from factflow.serving.hf_engine import load_hf_model

PROMPTS = [
    "What is the capital of France?",
    "Write one sentence about the sea.",
    "List three colours.",
    "Say hello in Spanish and in French, with an accent: é, ñ.",
    "Count from one to five.",
]
NEW_TOKENS = 24


@pytest.fixture(scope="module")
def loaded(model_path: str) -> tuple[Any, Any]:
    return load_hf_model(model_path)


def _ids(tokenizer: Any, text: str) -> list[int]:
    ids = tokenizer.apply_chat_template(
        [{"role": "user", "content": text}], add_generation_prompt=True, tokenize=True, return_dict=False
    )
    return list(ids["input_ids"] if isinstance(ids, dict) else ids)


def _reference(model: Any, tokenizer: Any, ids: list[int]) -> list[int]:
    """transformers' greedy generate, cut at the first EOS (EOS itself not included)."""
    eos = eos_token_ids(tokenizer, model)
    with torch.inference_mode():
        out = model.generate(
            torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
            max_new_tokens=NEW_TOKENS, do_sample=False, eos_token_id=sorted(eos),
            pad_token_id=tokenizer.pad_token_id,
        )  # fmt: skip
    new = out[0, len(ids) :].tolist()
    return next((new[:k] for k, t in enumerate(new) if t in eos), new)


def test_greedy_tokens_and_text_match_transformers_generate(loaded: tuple[Any, Any]) -> None:
    model, tokenizer = loaded
    params = GenerationParams(max_new_tokens=NEW_TOKENS)
    prompts = [_ids(tokenizer, p) for p in PROMPTS]
    eos = eos_token_ids(tokenizer, model)
    singles = [generate(CausalLMSource(model), tokenizer, [p], params, eos_ids=eos)[0] for p in prompts]
    for prompt, got in zip(prompts, singles, strict=True):
        want = _reference(model, tokenizer, prompt)
        assert got.token_ids == want
        # incremental detokenisation gives what decoding the whole row gives
        assert got.text == tokenizer.decode(want, skip_special_tokens=True)
        assert got.finish_reason == ("length" if len(want) == NEW_TOKENS else "stop")
    # One batch of rows of different lengths (finished rows leave it): same texts as one by one.
    assert {c.finish_reason for c in singles} == {"stop", "length"}
    batched = generate(CausalLMSource(model), tokenizer, prompts, params, eos_ids=eos)
    assert [c.text for c in batched] == [c.text for c in singles]


def test_stop_sequence_cuts_the_same_text(loaded: tuple[Any, Any]) -> None:
    model, tokenizer = loaded
    ids = _ids(tokenizer, PROMPTS[4])
    full = generate(CausalLMSource(model), tokenizer, [ids], GenerationParams(max_new_tokens=NEW_TOKENS))[0]
    stop = full.text[len(full.text) // 2 : len(full.text) // 2 + 3]
    assert stop.strip(), full.text
    params = GenerationParams(max_new_tokens=NEW_TOKENS, stop=[stop])
    cut = generate(CausalLMSource(model), tokenizer, [ids], params)[0]
    assert cut.finish_reason == "stop"
    assert cut.text == full.text[: full.text.find(stop)]


def test_json_schema_output_is_valid_in_a_batch(loaded: tuple[Any, Any]) -> None:
    model, tokenizer = loaded
    schema = {
        "type": "object",
        "properties": {"city": {"type": "string", "maxLength": 20}, "ok": {"type": "boolean"}},
        "required": ["city", "ok"],
        "additionalProperties": False,
    }
    params = GenerationParams(max_new_tokens=48, json_schema=schema)
    prompts = [_ids(tokenizer, f"Answer in JSON. {p}") for p in PROMPTS[:3]]
    out = generate(CausalLMSource(model), tokenizer, prompts, params, vocab_size=model.config.vocab_size)
    for c in out:
        value = json.loads(c.text)
        assert set(value) == {"city", "ok"} and isinstance(value["ok"], bool), c.text
