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
import torch

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


@pytest.fixture(scope="module")
def adapters(model_path: str, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from factflow.serving.hf_engine import load_hf_model

    model, _ = load_hf_model(model_path)
    root = tmp_path_factory.mktemp("adapters")
    return {n: random_adapter(cfg, model, i, root / n) for i, (n, cfg) in enumerate(CONFIGS.items())}


@pytest.fixture(scope="module")
def references(model_path: str, adapters: dict[str, Path]) -> dict[tuple[str | None, int], str]:
    """(adapter or None, prompt index) -> the transformers engine's greedy text with that adapter alone."""
    from factflow.serving.hf_engine import load_hf_model

    model, tok = load_hf_model(model_path)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a shared 2-core box: one thread is faster than fighting for two
    try:
        out: dict[tuple[str | None, int], str] = {}
        for name in [None, *CONFIGS]:
            for i, prompt in enumerate(PROMPTS):
                ids = chat_prompt_ids(tok, prompt)
                if name is None:
                    got = greedy_generate(model, tok, ids, MAX_TOKENS)
                else:
                    with ReftAdapter.load(adapters[name]).attach(model):
                        got = greedy_generate(model, tok, ids, MAX_TOKENS)
                out[(name, i)] = str(tok.decode(got, skip_special_tokens=True))
    finally:
        torch.set_num_threads(threads)
    for name in CONFIGS:  # each adapter really edits: otherwise parity would say nothing about it
        assert any(out[(name, i)] != out[(None, i)] for i in range(len(PROMPTS))), name
    return out


@pytest.fixture(scope="module", params=["eager", "compiled"])
def served(request: pytest.FixtureRequest, model_path: str, adapters: dict[str, Path]) -> Iterator[str]:
    """One server per mode: eager (what `factflow serve --reft` runs) and torch.compile'd."""
    pytest.importorskip("vllm")
    from factflow.serving.vllm_server import VLLMServer

    folder = reft_served_model(model_path, adapters, next(iter(adapters.values())).parent / "home")
    with VLLMServer(folder, extra_args=["--enforce-eager"] if request.param == "eager" else []) as server:
        yield server.base_url


def complete(base_url: str, ids: list[int], adapter: str | None) -> httpx.Response:
    from factflow.serving.vllm_server import SERVED_MODEL_NAME

    body: dict[str, object] = {"model": SERVED_MODEL_NAME, "prompt": ids, "max_tokens": MAX_TOKENS,
                               "temperature": 0.0}  # fmt: skip
    if adapter is not None:
        body["vllm_xargs"] = {"factflow_adapter": adapter}
    return httpx.post(f"{base_url}/completions", json=body, timeout=600)


def test_mixed_batch_matches_single_adapter_transformers(
    model_path: str, references: dict[tuple[str | None, int], str], served: str
) -> None:  # references first: a running vLLM engine busy-polls a core
    from factflow.serving.hf_engine import load_hf_model

    _, tok = load_hf_model(model_path)
    ids = [chat_prompt_ids(tok, p) for p in PROMPTS]
    names: list[str | None] = [None, *CONFIGS]
    jobs = [(names[k % len(names)], k % len(ids)) for k in range(16)]  # 16 requests, 4 adapters + base
    with ThreadPoolExecutor(len(jobs)) as pool:
        responses = list(pool.map(lambda job: complete(served, ids[job[1]], job[0]), jobs))
    assert [r.json()["choices"][0]["text"] for r in responses] == [references[job] for job in jobs]
    assert complete(served, ids[0], "base").json()["choices"][0]["text"] == references[(None, 0)]


def test_unknown_adapter_is_a_400_listing_the_loaded_ones(served: str) -> None:
    res = complete(served, [1, 2, 3], "facts-v9")
    assert res.status_code == 400
    assert "facts-v9" in res.text and all(name in res.text for name in CONFIGS)
