"""`python -m factflow.bench.reft`: what a LoReFT adapter costs at decode time, in both engines.

One run measures, side by side on the same prompts and machine:
  * decode tokens/s of the base model and of base + adapter on the transformers engine,
  * the same on vLLM (two servers, one after the other: the base folder and the adapter folder),
  * training time per epoch on the 16 fictional facts (bench/reft_facts.jsonl).
Greedy decoding with a fixed number of new tokens (EOS ignored) so both sides do the same work.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from factflow.serving.reft import (
    ReftAdapter,
    ReftConfig,
    TrainConfig,
    _prompt_ids,
    load_examples,
    prepare_vllm_folder,
    train_reft,
)

__all__ = ["main", "run"]

FACTS = Path(__file__).with_name("reft_facts.jsonl")


@torch.no_grad()
def _hf_tok_per_s(model: Any, prompts: list[list[int]], new_tokens: int) -> tuple[float, list[list[int]]]:
    n, t0, outs = 0, time.perf_counter(), []
    for p in prompts:
        ids = torch.tensor([p])
        out = model.generate(
            input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=new_tokens,
            min_new_tokens=new_tokens, do_sample=False, pad_token_id=0,
        )  # fmt: skip
        n += out.shape[1] - ids.shape[1]
        outs.append(out[0, ids.shape[1] :].tolist())
    return n / (time.perf_counter() - t0), outs


def _vllm_tok_per_s(folder: str, prompts: list[list[int]], new_tokens: int) -> tuple[float, list[str]]:
    import httpx

    from factflow.serving.vllm_server import SERVED_MODEL_NAME, VLLMServer

    with VLLMServer(folder, max_model_len=512, startup_timeout=1500) as server:
        body = {"model": SERVED_MODEL_NAME, "max_tokens": new_tokens, "temperature": 0.0, "ignore_eos": True}
        warm = {**body, "prompt": prompts[0]}
        httpx.post(f"{server.base_url}/completions", json=warm, timeout=300).raise_for_status()
        n, t0, texts = 0, time.perf_counter(), []
        for p in prompts:  # one request at a time: single-stream decode speed
            r = httpx.post(f"{server.base_url}/completions", json={**body, "prompt": p}, timeout=300)
            r.raise_for_status()
            n += int(r.json()["usage"]["completion_tokens"])
            texts.append(str(r.json()["choices"][0]["text"]))
        return n / (time.perf_counter() - t0), texts


def run(
    model_path: str,
    *,
    new_tokens: int = 64,
    n_prompts: int = 4,
    epochs: int = 3,
    vllm: bool = True,
    adapter: Path | None = None,
) -> dict[str, Any]:
    from factflow.serving.hf_engine import load_hf_model

    torch.manual_seed(0)
    model, tok = load_hf_model(model_path)
    examples = load_examples(FACTS)
    work = Path(tempfile.mkdtemp(prefix="factflow-bench-reft-"))
    t0 = time.perf_counter()
    if adapter is None:
        adapter_dir = train_reft(
            model_path, examples, ReftConfig(layers=[8, 16], rank=4), work / "adapter",
            train=TrainConfig(epochs=epochs, stop_loss=None, patience=epochs), model=model, tokenizer=tok,
        )  # fmt: skip
    else:  # reuse a trained adapter: its training.json still gives the time per epoch
        adapter_dir = adapter
    train_s = time.perf_counter() - t0
    report = json.loads((adapter_dir / "training.json").read_text())
    prompts = [_prompt_ids(tok, ex.prompt, True) for ex in examples[:n_prompts]]

    result: dict[str, Any] = {
        "trainable_params": report["trainable_params"],
        "seconds_per_epoch": sum(report["seconds_per_epoch"]) / len(report["seconds_per_epoch"]),
        "train_seconds_total": train_s,
        "new_tokens": new_tokens,
        "prompts": n_prompts,
    }
    _hf_tok_per_s(model, prompts[:1], 4)  # warm up
    result["hf_base"], _ = _hf_tok_per_s(model, prompts, new_tokens)
    with ReftAdapter.load(adapter_dir).attach(model):
        result["hf_reft"], hf_ids = _hf_tok_per_s(model, prompts, new_tokens)
    if vllm:
        result["vllm_base"], base_texts = _vllm_tok_per_s(model_path, prompts, new_tokens)
        served = prepare_vllm_folder(model_path, adapter_dir, work / "served")
        result["vllm_reft"], reft_texts = _vllm_tok_per_s(str(served), prompts, new_tokens)
        # The server here runs compiled (not --enforce-eager): check the adapter really acts there.
        # Prefixes only: past an EOS, HF's min_new_tokens and vLLM's ignore_eos pick different tokens.
        prefixes = [tok.decode(ids[:8], skip_special_tokens=True) for ids in hf_ids]
        pairs = zip(base_texts, reft_texts, strict=True)
        result["vllm_reft_differs_from_base"] = sum(a != b for a, b in pairs)
        result["vllm_reft_matches_hf_reft_prefix"] = sum(
            t.startswith(p) for p, t in zip(prefixes, reft_texts, strict=True)
        )
    return result


def _table(r: dict[str, Any]) -> str:
    lines = ["| engine | base tok/s | + LoReFT tok/s | overhead |", "| --- | --- | --- | --- |"]
    for engine, key in (("transformers", "hf"), ("vLLM", "vllm")):
        if f"{key}_base" in r:
            base, reft = r[f"{key}_base"], r[f"{key}_reft"]
            lines.append(f"| {engine} | {base:.1f} | {reft:.1f} | {100 * (base - reft) / base:+.1f}% |")
    lines.append("")
    if "vllm_reft_differs_from_base" in r:
        n, differ = r["prompts"], r["vllm_reft_differs_from_base"]
        match = r["vllm_reft_matches_hf_reft_prefix"]
        lines.append(
            f"compiled vLLM + adapter: output differs from base on {differ}/{n} prompts; "
            f"first 8 tokens match transformers + adapter on {match}/{n}"
        )
    lines.append(
        f"training: {r['seconds_per_epoch']:.1f} s/epoch on 16 facts "
        f"({r['trainable_params']:,} trainable parameters)"
    )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    from factflow.serving.models import resolve_model
    from factflow.settings import get_settings

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--prompts", type=int, default=4)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--no-vllm", action="store_true", help="Only the transformers engine.")
    parser.add_argument("--json", type=Path, help="Also write the numbers here.")
    parser.add_argument("--adapter", type=Path, help="Use this trained adapter instead of training one.")
    args = parser.parse_args(argv)
    result = run(
        resolve_model(get_settings()), new_tokens=args.new_tokens, n_prompts=args.prompts,
        epochs=args.epochs, vllm=not args.no_vllm, adapter=args.adapter,
    )  # fmt: skip
    print(_table(result))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
