"""LoReFT inside vLLM, in the fast set: `factflow serve --reft` on an adapter with random weights.

A freshly initialised adapter (no training: seconds, not minutes) already moves the default model's
greedy answer far from the base's. The test serves it the way a user does (`factflow serve --reft
DIR`, which prepares the plugin model folder and starts vLLM eager), then checks on one short prompt
that vLLM's greedy tokens differ from the base's and equal transformers + the same adapter's. The
trained-adapter parity on five fact prompts stays in test_reft_slow.py.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import torch

from factflow.serving.reft import ReftAdapter, ReftConfig, greedy_generate, load_base_model
from factflow.serving.training import chat_prompt_ids
from factflow.serving.vllm_server import SERVED_MODEL_NAME, free_port, wait_healthy

pytestmark = pytest.mark.vllm

PROMPT = "What is the capital of France?"
NEW_TOKENS = 12
STARTUP_S = 900  # a loaded 2-core CI box; a quiet one starts in ~1 min


def _vllm_greedy(base_url: str, prompt_ids: list[int]) -> list[int]:
    """Greedy token ids from /v1/completions on a token-id prompt (no template differences)."""
    body = {
        "model": SERVED_MODEL_NAME, "prompt": prompt_ids, "max_tokens": NEW_TOKENS, "temperature": 0.0,
        "logprobs": 0, "return_tokens_as_token_ids": True,
    }  # fmt: skip
    reply = httpx.post(f"{base_url}/completions", json=body, timeout=120)
    reply.raise_for_status()
    return [int(t.split(":")[1]) for t in reply.json()["choices"][0]["logprobs"]["tokens"]]


def test_serve_reft_applies_the_adapter_inside_vllm(
    model_path: str, factflow_home: Path, tmp_path: Path
) -> None:
    pytest.importorskip("vllm")
    model, tok = load_base_model(model_path)
    torch.manual_seed(0)
    adapter = ReftAdapter.for_model(ReftConfig(layers=[8, 16], rank=4), model)
    folder = adapter.save(tmp_path / "random-adapter")
    prompt = chat_prompt_ids(tok, PROMPT)
    base = greedy_generate(model, tok, prompt, NEW_TOKENS)
    with adapter.attach(model):
        expected = greedy_generate(model, tok, prompt, NEW_TOKENS)
    assert expected != base, tok.decode(base)  # the adapter changes the answer on this prompt

    port = free_port()
    log = tmp_path / "serve.out"
    command = [sys.executable, "-m", "factflow.agent.cli", "serve", "--reft", str(folder)]
    with open(log, "w") as out:
        proc = subprocess.Popen(
            [*command, "--port", str(port)], stdout=out, stderr=subprocess.STDOUT,
            env={**os.environ, "COLUMNS": "250"}, start_new_session=True,
        )  # fmt: skip
    base_url = f"http://127.0.0.1:{port}/v1"
    try:
        deadline = time.monotonic() + STARTUP_S
        while not wait_healthy(base_url, timeout=2.0):
            assert proc.poll() is None, log.read_text()[-3000:]
            assert time.monotonic() < deadline, "vLLM did not start: " + log.read_text()[-3000:]
            time.sleep(2)
        served = _vllm_greedy(base_url, prompt)
        proc.send_signal(signal.SIGTERM)  # `serve` treats it like Ctrl-C: it stops vLLM and exits
        assert proc.wait(timeout=120) == 0, log.read_text()[-3000:]
    finally:
        if proc.poll() is None:  # a failed check: let serve stop its vLLM (own process group) first
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=30)

    eos = {tok.eos_token_id}
    assert [t for t in served if t not in eos] == [t for t in expected if t not in eos], (
        tok.decode(served), tok.decode(expected)
    )
    printed = log.read_text()
    assert f"vLLM listening on http://127.0.0.1:{port}/v1" in printed and "stopping vLLM" in printed
    # `serve --reft` served a prepared plugin folder under HOME, not the adapter or the base
    prepared = [p for p in (factflow_home / "vllm").iterdir() if p.name.startswith("reft-")]
    assert len(prepared) == 1 and (prepared[0] / "config.json").is_file()
    assert "FactflowReftLlamaForCausalLM" in (prepared[0] / "config.json").read_text()
