"""Serving throughput: tokens/s single-stream and at 16 concurrent requests, both engines.

    python -m factflow.bench.serving [--tokens 128] [--concurrency 16]

The transformers engine serves concurrency by batching (one left-padded batch, one KV cache); vLLM
gets 16 simultaneous HTTP requests. Completion tokens are counted from each engine's own usage
report; the table's last column is vLLM / transformers, measured side by side in this run.
"""

from __future__ import annotations

import argparse
import time
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING

from rich.console import Console
from rich.table import Table

if TYPE_CHECKING:
    from langchain_core.messages import HumanMessage

__all__ = ["main"]

PROMPTS = [
    "Write a long story about a lighthouse keeper who finds a map.",
    "Explain in detail how bread is made, step by step.",
    "Describe a journey across a desert, with many details.",
    "Write a long letter to a friend about your summer.",
]


def _tokens(message: object) -> int:
    usage = getattr(message, "usage_metadata", None) or {}
    return int(usage.get("output_tokens", 0))


def _hf(model_path: str, max_tokens: int, concurrency: int) -> tuple[float, float]:
    from factflow.serving.hf_engine import TransformersChatModel

    chat = TransformersChatModel(model_path=model_path, max_new_tokens=max_tokens)
    chat.invoke("warm up", max_tokens=4)
    t0 = time.perf_counter()
    single = _tokens(chat.invoke(PROMPTS[0]))
    single_tps = single / (time.perf_counter() - t0)
    batch = [PROMPTS[i % len(PROMPTS)] for i in range(concurrency)]
    t0 = time.perf_counter()
    total = sum(_tokens(m) for m in chat.generate_batch([[_human(p)] for p in batch]))
    return single_tps, total / (time.perf_counter() - t0)


def _human(text: str) -> HumanMessage:
    from langchain_core.messages import HumanMessage

    return HumanMessage(content=text)


def _vllm(model_path: str, max_tokens: int, concurrency: int) -> tuple[float, float]:
    from factflow.serving.engines import load_chat_model
    from factflow.serving.vllm_server import VLLMServer
    from factflow.settings import Settings

    with VLLMServer(model_path) as server:
        chat = load_chat_model(Settings(engine="vllm", base_url=server.base_url, max_new_tokens=max_tokens))
        chat.invoke("warm up")
        t0 = time.perf_counter()
        single_tps = _tokens(chat.invoke(PROMPTS[0])) / (time.perf_counter() - t0)
        batch = [PROMPTS[i % len(PROMPTS)] for i in range(concurrency)]
        t0 = time.perf_counter()
        with ThreadPoolExecutor(concurrency) as pool:
            total = sum(_tokens(m) for m in pool.map(chat.invoke, batch))
        return single_tps, total / (time.perf_counter() - t0)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--tokens", type=int, default=128, help="max new tokens per request")
    parser.add_argument("--concurrency", type=int, default=16)
    args = parser.parse_args(argv)

    from factflow.serving.models import resolve_model
    from factflow.settings import get_settings

    model_path = resolve_model(get_settings())
    console = Console()
    with console.status("transformers engine..."):
        hf = _hf(model_path, args.tokens, args.concurrency)
    with console.status("vLLM engine (server start takes about a minute)..."):
        vl = _vllm(model_path, args.tokens, args.concurrency)
    table = Table(title=f"Serving throughput, SmolLM2-135M fp32, {args.tokens} new tokens max")
    for col in ("workload", "transformers tok/s", "vLLM tok/s", "vLLM / transformers"):
        table.add_column(col, justify="right")
    table.add_row("single stream", f"{hf[0]:.1f}", f"{vl[0]:.1f}", f"{vl[0] / hf[0]:.2f}x")
    table.add_row(
        f"{args.concurrency} concurrent", f"{hf[1]:.1f}", f"{vl[1]:.1f}", f"{vl[1] / hf[1]:.2f}x"
    )
    console.print(table)


if __name__ == "__main__":
    main()
