"""Throughput of proxy-tuned decoding vs the base alone, on both engines, side by side in one run.

    python -m factflow.bench.proxy [--config proxy.toml] [--tokens 32] [--engines transformers,vllm]

For each engine and each concurrency (1 and 16 requests at once) it measures generated tokens per
second of the base alone and of base + expert + anti-expert, and prints the measured ratio next to
the ideal one from parameter counts: a decode step costs ~2 flops per parameter (the tied head's
matmul included), so three models ideally run at P_base / (P_base + P_expert + P_anti) of the
base's speed. "efficiency" = measured ratio / ideal ratio (1.0 = the extra models cost exactly
their size; below 1 = per-model overhead such as extra kernel launches and cache bookkeeping).

Without --config it builds a pair from the default model's first 4 layers (truncated, untrained:
speed does not depend on what the pair learned).
"""

from __future__ import annotations

import argparse
import json
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from rich.console import Console
from rich.table import Table

__all__ = ["main", "ideal_ratio"]

PROMPT = "Write a short story about a lighthouse keeper who finds a message in a bottle."


def ideal_ratio(counts: dict[str, int]) -> float:
    """Tokens/s of proxy-tuned decoding relative to the base alone if cost were proportional to size."""
    return counts["base"] / (counts["base"] + counts["expert"] + counts["anti_expert"])


def _transformers_rates(lm: object, tokens: int, concurrency: list[int]) -> dict[str, dict[int, float]]:
    from factflow.serving.generate import CausalLMSource, GenerationParams, generate
    from factflow.serving.proxy import ProxyTunedLM

    assert isinstance(lm, ProxyTunedLM)
    ids = lm.prompt_ids(PROMPT)
    # eos_ids=set(): never stop early, so every row generates exactly `tokens` tokens.
    params = GenerationParams(max_new_tokens=tokens)
    rates: dict[str, dict[int, float]] = {"base": {}, "proxy": {}}
    for c in concurrency:
        for name, make in (("base", lambda: CausalLMSource(lm.base)), ("proxy", lm.source)):
            start = time.perf_counter()
            out = generate(make(), lm.tokenizer, [ids] * c, params, eos_ids=set())
            rates[name][c] = sum(o.completion_tokens for o in out) / (time.perf_counter() - start)
    return rates


def _vllm_rate(base_url: str, ids: list[int], tokens: int, c: int) -> float:
    import httpx

    from factflow.serving.vllm_server import SERVED_MODEL_NAME

    body = {"model": SERVED_MODEL_NAME, "prompt": ids, "max_tokens": tokens, "temperature": 0.0,
            "ignore_eos": True}  # fmt: skip

    def one(_: int) -> int:
        res = httpx.post(f"{base_url}/completions", json=body, timeout=600).json()
        return int(res["usage"]["completion_tokens"])

    one(0)  # warm-up: first request pays one-off costs
    start = time.perf_counter()
    with ThreadPoolExecutor(max_workers=c) as pool:  # c concurrent requests: vLLM batches them
        total = sum(pool.map(one, range(c)))
    return total / (time.perf_counter() - start)


def _vllm_rates(lm: object, folder: Path, tokens: int, concurrency: list[int]) -> dict[str, dict[int, float]]:
    from factflow.serving.proxy import ProxyTunedLM
    from factflow.serving.proxy_prepare import prepare_vllm_folder
    from factflow.serving.vllm_server import VLLMServer

    assert isinstance(lm, ProxyTunedLM)
    ids = lm.prompt_ids(PROMPT)
    rates: dict[str, dict[int, float]] = {"base": {}, "proxy": {}}
    targets = (("base", str(lm.config.base)), ("proxy", str(prepare_vllm_folder(lm.config, folder))))
    for name, model in targets:  # one server at a time, always stopped
        with VLLMServer(model, extra_args=["--enforce-eager"]) as server:
            for c in concurrency:
                rates[name][c] = _vllm_rate(server.base_url, ids, tokens, c)
    return rates


def main(argv: list[str] | None = None) -> dict[str, object]:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config", type=Path, help="Proxy config (default: a 4-layer truncated pair).")
    parser.add_argument("--tokens", type=int, default=32, help="Tokens generated per request.")
    parser.add_argument("--engines", default="transformers,vllm", help="Comma-separated engines to measure.")
    parser.add_argument("--concurrency", default="1,16", help="Comma-separated concurrent request counts.")
    from factflow.bench.machine import add_busy_flag, prelude

    add_busy_flag(parser)
    args = parser.parse_args(argv)
    prelude(args.allow_busy)

    from factflow.serving.models import resolve_model
    from factflow.serving.proxy import ProxyConfig, ProxyTunedLM, load_proxy_config
    from factflow.serving.proxy_train import truncate_model
    from factflow.settings import get_settings

    settings = get_settings()
    work = settings.home / "bench" / "proxy"
    if args.config:
        config = load_proxy_config(args.config)
    else:
        base = resolve_model(settings)
        pair = work / "pair-k4"
        if not (pair / "config.json").exists():
            truncate_model(base, 4, pair)
        config = ProxyConfig(base=Path(base), expert=pair, anti_expert=pair, alpha=1.0)
    lm = ProxyTunedLM(config)
    counts = lm.parameter_counts()
    ideal = ideal_ratio(counts)
    concurrency = [int(c) for c in args.concurrency.split(",")]
    results: dict[str, dict[str, dict[int, float]]] = {}
    for engine in args.engines.split(","):
        if engine == "transformers":
            results[engine] = _transformers_rates(lm, args.tokens, concurrency)
        elif engine == "vllm":
            results[engine] = _vllm_rates(lm, work / "prepared", args.tokens, concurrency)
        else:
            raise SystemExit(f"unknown engine {engine!r}; use transformers and/or vllm")

    table = Table(
        "engine", "concurrent", "base tok/s", "proxy tok/s", "measured ratio", "ideal ratio", "efficiency"
    )
    for engine, rates in results.items():
        for c in concurrency:
            ratio = rates["proxy"][c] / rates["base"][c]
            base_s, proxy_s = f"{rates['base'][c]:.1f}", f"{rates['proxy'][c]:.1f}"
            efficiency = f"{ratio / ideal:.2f}"
            table.add_row(engine, str(c), base_s, proxy_s, f"{ratio:.3f}", f"{ideal:.3f}", efficiency)
    console = Console()
    console.print(table)
    console.print(f"parameters: {counts} (ideal ratio = base / sum = {ideal:.3f})")
    report = {"parameters": counts, "ideal_ratio": ideal, "tokens": args.tokens, "results": results}
    work.mkdir(parents=True, exist_ok=True)
    (work / "results.json").write_text(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    main()
