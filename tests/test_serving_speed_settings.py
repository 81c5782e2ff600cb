"""The serving speed settings: torch threads of the in-process engine, vLLM's KV-cache size and
thread binding (what the server would be started with; starting one is the vLLM tests' job)."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from factflow.serving.vllm_server import VLLMServer, engine_env, kv_cache_bytes


def test_torch_threads_setting_applies_when_the_model_loads(model_path: str) -> None:
    from factflow.serving.engines import load_chat_model
    from factflow.settings import Settings

    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        chat = load_chat_model(Settings(model=model_path, torch_threads=1))
        chat.hf_model  # type: ignore[attr-defined]  # noqa: B018 - loads the model
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


def test_kv_cache_is_sized_from_window_and_concurrency(model_path: str, tmp_path: Path) -> None:
    hf = json.loads((Path(model_path) / "config.json").read_text())
    per_token = (
        2
        * hf["num_hidden_layers"]
        * hf["num_key_value_heads"]
        * (hf["hidden_size"] // hf["num_attention_heads"])
        * 4
    )
    assert kv_cache_bytes(model_path, 4096, 4) == per_token * 4096 * 4
    server = VLLMServer(model_path, max_model_len=8192, concurrency=2)
    assert server.kv_cache_args() == ["--kv-cache-memory-bytes", str(per_token * 8192 * 2)]
    # the caller's own size wins, and a folder without an attention shape leaves vLLM's setting
    assert VLLMServer(model_path, extra_args=["--kv-cache-memory-bytes", "1000"]).kv_cache_args() == []
    assert kv_cache_bytes(tmp_path, 4096, 4) is None


def test_engine_binds_every_core_unless_the_user_chose() -> None:
    assert engine_env({})["VLLM_CPU_OMP_THREADS_BIND"]
    assert engine_env({"VLLM_CPU_OMP_THREADS_BIND": "0"}) == {}
    assert engine_env({"VLLM_CPU_NUM_OF_RESERVED_CPU": "1"}) == {}
