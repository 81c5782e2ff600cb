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
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from factflow.serving.reft import (
    ReftAdapter,
    ReftConfig,
    TrainConfig,
    load_examples,
    prepare_vllm_folder,
    train_reft,
)
from factflow.serving.training import chat_prompt_ids

__all__ = ["main", "run"]

FACTS = Path(__file__).with_name("reft_facts.jsonl")
PARITY_TOKENS = 16
VLLM_MODES = ("eager", "compiled")  # eager is what `factflow serve --reft` runs


@torch.no_grad()
def _hf_tok_per_s(model: Any, prompts: list[list[int]], new_tokens: int) -> float:
    n, t0 = 0, time.perf_counter()
    for p in prompts:
        ids = torch.tensor([p])
        out = model.generate(
            input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=new_tokens,
            min_new_tokens=new_tokens, do_sample=False, pad_token_id=0,
        )  # fmt: skip
        n += out.shape[1] - ids.shape[1]
    return n / (time.perf_counter() - t0)


@torch.no_grad()
def _hf_answers(model: Any, tok: Any, prompts: list[list[int]]) -> list[str]:
    """Plain greedy answers (stop at EOS, at most PARITY_TOKENS): what parity is checked on."""
    texts = []
    for p in prompts:
        ids = torch.tensor([p])
        out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=PARITY_TOKENS,
                             do_sample=False, pad_token_id=0)  # fmt: skip
        texts.append(tok.decode(out[0, ids.shape[1] :], skip_special_tokens=True))
    return texts


def _vllm_rates_and_answers(
    folder: str, prompts: list[list[int]], new_tokens: int, *, rounds: int, eager: bool
) -> tuple[list[float], list[str]]:
    """Single-stream tokens/s of each of `rounds` passes over the prompts (EOS ignored, so both sides
    decode the same number of tokens), then the plain greedy answers for the parity check."""
    import httpx

    from factflow.serving.vllm_server import SERVED_MODEL_NAME, VLLMServer

    extra = ["--enforce-eager"] if eager else []
    with VLLMServer(folder, max_model_len=512, startup_timeout=1500, extra_args=extra) as server:
        body = {"model": SERVED_MODEL_NAME, "max_tokens": new_tokens, "temperature": 0.0, "ignore_eos": True}
        warm = {**body, "prompt": prompts[0]}
        httpx.post(f"{server.base_url}/completions", json=warm, timeout=300).raise_for_status()
        rates: list[float] = []
        for _ in range(rounds):
            n, t0 = 0, time.perf_counter()
            for p in prompts:  # one request at a time: single-stream decode speed
                r = httpx.post(f"{server.base_url}/completions", json={**body, "prompt": p}, timeout=300)
                r.raise_for_status()
                n += int(r.json()["usage"]["completion_tokens"])
            rates.append(n / (time.perf_counter() - t0))
        answer = {**body, "max_tokens": PARITY_TOKENS, "ignore_eos": False}
        texts = []
        for p in prompts:
            r = httpx.post(f"{server.base_url}/completions", json={**answer, "prompt": p}, timeout=300)
            r.raise_for_status()
            texts.append(str(r.json()["choices"][0]["text"]))
        return rates, texts


def run(
    model_path: str,
    *,
    new_tokens: int = 64,
    n_prompts: int = 4,
    epochs: int = 3,
    vllm_modes: tuple[str, ...] = ("eager",),
    rounds: int = 5,
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
    prompts = [chat_prompt_ids(tok, ex.prompt) for ex in examples[:n_prompts]]

    result: dict[str, Any] = {
        "trainable_params": report["trainable_params"],
        "seconds_per_epoch": sum(report["seconds_per_epoch"]) / len(report["seconds_per_epoch"]),
        "train_seconds_total": train_s,
        "new_tokens": new_tokens,
        "prompts": n_prompts,
    }
    _hf_tok_per_s(model, prompts[:1], 4)  # warm up
    # Rounds alternate base / adapter so slow drift of the machine hits both sides alike.
    hf_base, hf_reft = [], []
    adapter_obj = ReftAdapter.load(adapter_dir)
    for _ in range(rounds):
        hf_base.append(_hf_tok_per_s(model, prompts, new_tokens))
        with adapter_obj.attach(model):
            hf_reft.append(_hf_tok_per_s(model, prompts, new_tokens))
    result["hf_base"], result["hf_reft"] = hf_base, hf_reft
    hf_base_texts = _hf_answers(model, tok, prompts)
    with adapter_obj.attach(model):
        hf_reft_texts = _hf_answers(model, tok, prompts)
    served = prepare_vllm_folder(model_path, adapter_dir, work / "served") if vllm_modes else None
    for mode in vllm_modes:
        eager = mode == "eager"
        result[f"vllm_{mode}_base"], base_texts = _vllm_rates_and_answers(
            model_path, prompts, new_tokens, rounds=rounds, eager=eager
        )
        result[f"vllm_{mode}_reft"], reft_texts = _vllm_rates_and_answers(
            str(served), prompts, new_tokens, rounds=rounds, eager=eager
        )
        # Does the adapter act, and does vLLM give transformers' greedy answers exactly? The
        # base-vs-base check tells an adapter bug apart from numeric drift of the engine itself.
        pairs = zip(base_texts, reft_texts, strict=True)
        result[f"vllm_{mode}_reft_differs_from_base"] = sum(a != b for a, b in pairs)
        result[f"vllm_{mode}_base_matches_hf"] = sum(map(str.__eq__, hf_base_texts, base_texts))
        result[f"vllm_{mode}_reft_matches_hf"] = sum(map(str.__eq__, hf_reft_texts, reft_texts))
        result[f"vllm_{mode}_reft_texts"] = reft_texts
    return result


def _table(r: dict[str, Any]) -> str:
    lines = [
        f"median of {len(r['hf_base'])} rounds x {r['prompts']} prompts x {r['new_tokens']} tokens "
        "(min-max in brackets)",
        "",
        "| engine | base tok/s | + LoReFT tok/s | overhead (median) |",
        "| --- | --- | --- | --- |",
    ]
    engines = [("transformers", "hf")] + [(f"vLLM ({m})", f"vllm_{m}") for m in VLLM_MODES]
    for engine, key in engines:
        if f"{key}_base" in r:
            base, reft = r[f"{key}_base"], r[f"{key}_reft"]
            mb, mr = statistics.median(base), statistics.median(reft)
            lines.append(
                f"| {engine} | {mb:.1f} [{min(base):.1f}-{max(base):.1f}] | {mr:.1f} [{min(reft):.1f}-"
                f"{max(reft):.1f}] | {100 * (mb - mr) / mb:+.1f}% |"
            )
    lines.append("")
    n = r["prompts"]
    for mode in VLLM_MODES:
        if f"vllm_{mode}_reft_differs_from_base" in r:
            lines.append(
                f"vLLM ({mode}) + adapter: output differs from base on "
                f"{r[f'vllm_{mode}_reft_differs_from_base']}/{n} prompts; greedy answers "
                f"({PARITY_TOKENS} tokens) identical to transformers: base "
                f"{r[f'vllm_{mode}_base_matches_hf']}/{n}, + adapter {r[f'vllm_{mode}_reft_matches_hf']}/{n}"
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
    parser.add_argument(
        "--vllm-modes", default="eager",
        help="Comma-separated vLLM modes to measure: eager (what `serve --reft` runs), compiled; '' = none.",
    )  # fmt: skip
    parser.add_argument("--rounds", type=int, default=5, help="Passes over the prompts per side (median).")
    parser.add_argument("--json", type=Path, help="Also write the numbers here.")
    parser.add_argument("--adapter", type=Path, help="Use this trained adapter instead of training one.")
    from factflow.bench.machine import add_busy_flag, prelude

    add_busy_flag(parser)
    args = parser.parse_args(argv)
    prelude(args.allow_busy)
    modes = tuple(m for m in args.vllm_modes.split(",") if m)
    if unknown := set(modes) - set(VLLM_MODES):
        parser.error(f"unknown --vllm-modes {sorted(unknown)}; use eager, compiled or both (comma-separated)")
    result = run(
        resolve_model(get_settings()), new_tokens=args.new_tokens, n_prompts=args.prompts,
        epochs=args.epochs, adapter=args.adapter, rounds=args.rounds,
        vllm_modes=modes,
    )  # fmt: skip
    print(_table(result))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
