"""Many LoReFT adapters on one vLLM server, one per request, mixed in the same batches.

Four adapters (two `all`, one tied and one untied `prefix+suffix`, different layers and ranks) with
random weights strong enough to change the answers; 16 concurrent requests over them and the base.
Each request's greedy text must be what the transformers engine writes with that adapter alone
(the base's own text for requests that name none), and an unknown adapter name is a 400 that
lists the loaded ones.
"""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from factflow.bench.steering import random_adapter
from factflow.serving.reft import ReftAdapter, ReftConfig, greedy_generate, reft_served_model
from factflow.serving.training import chat_prompt_ids

pytestmark = [pytest.mark.vllm, pytest.mark.slow]

PROMPTS = [
    "What is the capital of France?",
    "Name three colors.",
    "Write one sentence about cats.",
    "Who wrote Hamlet?",
]
CONFIGS = {
    "all-a": ReftConfig(layers=[6, 18], rank=4),
    "all-b": ReftConfig(layers=[10], rank=8),
    "ps-tied": ReftConfig(layers=[8, 16], rank=4, positions="prefix+suffix", prefix=3, suffix=5),
    "ps-untied": ReftConfig(layers=[12], rank=2, positions="prefix+suffix", prefix=4, suffix=4,
                            tie_positions=False),  # fmt: skip
}
MAX_TOKENS = 12


@pytest.fixture(scope="module", params=["eager", "compiled"])
def served(
    request: pytest.FixtureRequest, model_path: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[str, dict[str, Path]]]:
    """One server per mode: eager (what `factflow serve --reft` runs) and torch.compile'd."""
    pytest.importorskip("vllm")
    from factflow.serving.hf_engine import load_hf_model
    from factflow.serving.vllm_server import VLLMServer

    model, _ = load_hf_model(model_path)
    root = tmp_path_factory.mktemp("adapters")
    folders = {n: random_adapter(cfg, model, i, root / n) for i, (n, cfg) in enumerate(CONFIGS.items())}
    folder = reft_served_model(model_path, folders, root / "home")
    with VLLMServer(folder, extra_args=["--enforce-eager"] if request.param == "eager" else []) as server:
        yield server.base_url, folders


def complete(base_url: str, ids: list[int], adapter: str | None) -> httpx.Response:
    from factflow.serving.vllm_server import SERVED_MODEL_NAME

    body: dict[str, object] = {"model": SERVED_MODEL_NAME, "prompt": ids, "max_tokens": MAX_TOKENS,
                               "temperature": 0.0}  # fmt: skip
    if adapter is not None:
        body["vllm_xargs"] = {"factflow_adapter": adapter}
    return httpx.post(f"{base_url}/completions", json=body, timeout=600)


def test_mixed_batch_matches_single_adapter_transformers(
    model_path: str, served: tuple[str, dict[str, Path]]
) -> None:
    from factflow.serving.hf_engine import load_hf_model

    url, folders = served
    model, tok = load_hf_model(model_path)
    ids = [chat_prompt_ids(tok, p) for p in PROMPTS]

    def reference(adapter: str | None, prompt: list[int]) -> str:
        if adapter is None:
            return str(tok.decode(greedy_generate(model, tok, prompt, MAX_TOKENS), skip_special_tokens=True))
        with ReftAdapter.load(folders[adapter]).attach(model):
            return str(tok.decode(greedy_generate(model, tok, prompt, MAX_TOKENS), skip_special_tokens=True))

    names: list[str | None] = [None, *CONFIGS]
    jobs = [(names[k % len(names)], ids[k % len(ids)]) for k in range(16)]  # 16 requests, 4 adapters + base
    want = {(a, tuple(p)): reference(a, p) for a, p in jobs}
    for name in CONFIGS:  # each adapter really edits: otherwise parity would say nothing about it
        assert any(want[(name, tuple(p))] != reference(None, p) for p in ids), name
    with ThreadPoolExecutor(len(jobs)) as pool:
        responses = list(pool.map(lambda job: complete(url, job[1], job[0]), jobs))
    got = [r.json()["choices"][0]["text"] for r in responses]
    assert got == [want[(a, tuple(p))] for a, p in jobs]
    assert complete(url, ids[0], "base").json()["choices"][0]["text"] == want[(None, tuple(ids[0]))]


def test_unknown_adapter_is_a_400_listing_the_loaded_ones(served: tuple[str, dict[str, Path]]) -> None:
    url, _ = served
    res = complete(url, [1, 2, 3], "facts-v9")
    assert res.status_code == 400
    assert "facts-v9" in res.text and all(name in res.text for name in CONFIGS)
