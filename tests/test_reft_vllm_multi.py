"""Many LoReFT adapters on one vLLM server, one per request, mixed in the same batches.

Four adapters (two `all`, one tied and one untied `prefix+suffix`, different layers and ranks) with
random weights strong enough to change the answers; 16 concurrent requests over them and the base.
Each request's greedy text must be what the transformers engine writes with that adapter alone
(the base's own text for requests that name none), and an unknown adapter name is a 400 that
lists the loaded ones. Prefix caching is on: a long prompt served by the base and two adapters,
twice, gives each its own text, the first round hits no cached block of another adapter and the
second round hits its own. Adapters load and unload at run time through the admin endpoint; an
adapter unloaded while a request streams from it finishes that request with the adapter.
"""

from __future__ import annotations

import json
import re
import time
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
# > 2 blocks of vLLM's CPU block size (128): only full blocks are cached
LONG_PROMPT = ("Here are some notes about lighthouses. " * 40) + "Summarise the notes in one sentence."


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


@pytest.fixture(scope="module")
def long_references(model_path: str, adapters: dict[str, Path]) -> dict[str | None, str]:
    """Adapter (None: the base) -> transformers' greedy text for LONG_PROMPT with that adapter alone."""
    from factflow.serving.hf_engine import load_hf_model

    model, tok = load_hf_model(model_path)
    ids = chat_prompt_ids(tok, LONG_PROMPT)
    assert len(ids) > 256
    out: dict[str | None, str] = {None: str(tok.decode(greedy_generate(model, tok, ids, MAX_TOKENS),
                                                         skip_special_tokens=True))}  # fmt: skip
    for name in ("all-a", "ps-tied"):
        with ReftAdapter.load(adapters[name]).attach(model):
            got = greedy_generate(model, tok, ids, MAX_TOKENS)
        out[name] = str(tok.decode(got, skip_special_tokens=True))
        assert out[name] != out[None], name
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


def prefix_cache_hits(base_url: str) -> float:
    text = httpx.get(f"{base_url.removesuffix('/v1')}/metrics", timeout=30).text
    pattern = r"^vllm:prefix_cache_hits_total\{[^}]*\} (\S+)$"
    return sum(float(m.group(1)) for m in re.finditer(pattern, text, re.M))


def settled_hits(base_url: str, before: float, at_least: float) -> float:
    """Hits since `before`, waiting briefly for the metrics to catch up with the last response."""
    for _ in range(20):
        got = prefix_cache_hits(base_url) - before
        if got >= at_least:
            return got
        time.sleep(0.5)
    return got


def test_prefix_cache_is_kept_per_adapter(
    model_path: str, long_references: dict[str | None, str], served: str
) -> None:
    from factflow.serving.hf_engine import load_hf_model

    _, tok = load_hf_model(model_path)
    ids = chat_prompt_ids(tok, LONG_PROMPT)
    names: list[str | None] = [None, "all-a", "ps-tied"]
    start = prefix_cache_hits(served)
    first = [complete(served, ids, name).json()["choices"][0]["text"] for name in names]
    time.sleep(2)  # metrics follow the responses closely, not exactly
    middle = prefix_cache_hits(served)
    assert middle == start  # no adapter found another's blocks (nor the base's)
    second = [complete(served, ids, name).json()["choices"][0]["text"] for name in names]
    assert first == second == [long_references[name] for name in names]
    assert settled_hits(served, middle, 3 * 256) >= 3 * 256  # each found its own two full blocks


def admin(base_url: str, method: str, path: str = "", body: dict[str, str] | None = None) -> httpx.Response:
    return httpx.request(method, f"{base_url}/factflow/adapters{path}", json=body, timeout=120)


def test_adapters_load_and_unload_at_run_time(
    model_path: str, references: dict[tuple[str | None, int], str], adapters: dict[str, Path], served: str,
    tmp_path: Path,
) -> None:  # fmt: skip
    from factflow.serving.hf_engine import load_hf_model
    from factflow.serving.vllm_server import SERVED_MODEL_NAME

    _, tok = load_hf_model(model_path)
    ids = chat_prompt_ids(tok, PROMPTS[0])
    listed = admin(served, "GET").json()
    assert set(listed["adapters"]) == set(CONFIGS) and listed["default"] is None
    # bad loads: a clear 4xx, nothing changes
    missing = admin(served, "POST", body={"name": "late", "path": str(tmp_path / "nope")})
    assert missing.status_code == 400 and "does not exist" in missing.text
    assert admin(served, "POST", body={"name": "base", "path": str(adapters["all-a"])}).status_code == 400
    assert admin(served, "POST", body={"name": "all-a", "path": str(adapters["all-b"])}).status_code == 409
    assert admin(served, "POST", body={"path": str(adapters["all-a"])}).status_code == 400
    assert complete(served, ids, "late").status_code == 400
    # load: the new name serves that adapter's own text
    loaded = admin(served, "POST", body={"name": "late", "path": str(adapters["all-a"])})
    assert loaded.status_code == 200, loaded.text
    assert "late" in loaded.json()["adapters"]
    assert complete(served, ids, "late").json()["choices"][0]["text"] == references[("all-a", 0)]
    # unload while a request streams from it: that request finishes with the adapter
    assert admin(served, "POST", body={"name": "late2", "path": str(adapters["ps-tied"])}).status_code == 200
    body = {"model": SERVED_MODEL_NAME, "prompt": ids, "max_tokens": 64, "temperature": 0.0,
            "ignore_eos": True, "stream": True, "vllm_xargs": {"factflow_adapter": "late2"}}  # fmt: skip
    text, unloaded = "", None
    with httpx.stream("POST", f"{served}/completions", json=body, timeout=600) as res:
        for line in res.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            text += json.loads(line[6:])["choices"][0]["text"]
            if unloaded is None:  # first token out: the request is running
                unloaded = admin(served, "DELETE", "/late2")
    assert unloaded is not None and unloaded.status_code == 200, unloaded
    assert unloaded.json()["still_running"] >= 1
    assert text.startswith(references[("ps-tied", 0)])
    gone = complete(served, ids, "late2")
    assert gone.status_code == 400 and "all-a" in gone.text
    assert admin(served, "DELETE", "/late2").status_code == 404
    assert admin(served, "DELETE", "/late").status_code == 200
    assert set(admin(served, "GET").json()["adapters"]) == set(CONFIGS)
