"""Serving throughput against the machine's roofline: both engines, single stream and concurrent.

    flock /tmp/factflow-vllm.lock python -m factflow.bench.serving [--tokens 128] [--concurrency 16]

First the machine prelude (bench/machine.py): copy bandwidth, the batch-1 roofline for the model's
weight bytes, the load average (a busy machine is refused unless --allow-busy). Then:
- transformers engine: one stream, then `concurrency` rows as one batch, at each torch thread
  count in --threads (interleaved rounds, medians), so the thread default is chosen by measurement;
- vLLM in-process (the offline `LLM` API, no HTTP) and served (factflow's `VLLMServer`, the OpenAI
  API through the `openai` client), same engine settings, 1 and `concurrency` requests at once.
Every request decodes exactly --tokens tokens (EOS ignored), so tokens/s compare like for like.
The table gives tokens/s, the share of the roofline, and served / in-process.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from multiprocessing import get_context
from typing import Any

from rich.console import Console
from rich.table import Table

from factflow.bench.machine import Machine, add_busy_flag, prelude

__all__ = ["main"]

PROMPTS = [
    "Write a long story about a lighthouse keeper who finds a map.",
    "Explain in detail how bread is made, step by step.",
    "Describe a journey across a desert, with many details.",
    "Write a long letter to a friend about your summer.",
]
MAX_MODEL_LEN = 4096


def _median_rate(run: Callable[[], int], rounds: int) -> float:
    rates = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        tokens = run()
        rates.append(tokens / (time.perf_counter() - t0))
    return statistics.median(rates)


def _hf(model_path: str, tokens: int, concurrency: int, threads: list[int], rounds: int) -> dict[str, float]:
    """tokens/s of the transformers engine's decode loop; threads interleaved round by round."""
    import torch

    from factflow.serving.generate import CausalLMSource, GenerationParams, generate
    from factflow.serving.hf_engine import load_hf_model

    model, tok = load_hf_model(model_path)
    prompts = [_chat_ids(tok, p) for p in PROMPTS]
    params = GenerationParams(max_new_tokens=tokens)
    no_eos: set[int] = {-1}  # never sampled: every row decodes exactly `tokens` tokens

    def run(batch: list[list[int]]) -> int:
        out = generate(CausalLMSource(model), tok, batch, params, eos_ids=no_eos)
        return sum(c.completion_tokens for c in out)

    default_threads = torch.get_num_threads()
    run(prompts[:1])  # warm-up
    rates: dict[str, list[float]] = {}
    batch = [prompts[i % len(prompts)] for i in range(concurrency)]
    for _ in range(rounds):
        for n in threads:
            torch.set_num_threads(n)
            rates.setdefault(f"1 x{n}", []).append(_median_rate(lambda: run(prompts[:1]), 1))
            rates.setdefault(f"{concurrency} x{n}", []).append(_median_rate(lambda: run(batch), 1))
    torch.set_num_threads(default_threads)
    return {k: statistics.median(v) for k, v in rates.items()}


def _chat_ids(tokenizer: Any, text: str) -> list[int]:
    ids = tokenizer.apply_chat_template(
        [{"role": "user", "content": text}], add_generation_prompt=True, tokenize=True, return_dict=False
    )
    return list(ids["input_ids"] if isinstance(ids, dict) else ids)


def _engine_settings(
    model_path: str, concurrency: int, eager: bool, env: dict[str, str]
) -> tuple[dict[str, str], dict[str, Any]]:
    """The environment and engine arguments `VLLMServer` uses, for the in-process engine too."""
    from factflow.serving.vllm_server import VLLMServer, engine_env

    server = VLLMServer(model_path, max_model_len=MAX_MODEL_LEN, concurrency=concurrency, env=env)
    kv = server.kv_cache_args()
    args: dict[str, Any] = {"max_model_len": MAX_MODEL_LEN, "dtype": "float32", "enforce_eager": eager}
    if kv:
        args["kv_cache_memory_bytes"] = int(kv[1])
    return {**engine_env({**os.environ, **env}), **env}, args


def _vllm_offline(
    model_path: str, tokens: int, concurrency: int, eager: bool, rounds: int, user_env: dict[str, str]
) -> list[float]:
    """In a child process (so its engine is gone afterwards): vLLM's `LLM` API, 1 and N prompts."""
    env, args = _engine_settings(model_path, concurrency, eager, user_env)
    os.environ.update({"VLLM_NO_USAGE_STATS": "1", "TOKENIZERS_PARALLELISM": "false", **env})
    from vllm import LLM, SamplingParams

    llm = LLM(model=model_path, **args)
    sampling = SamplingParams(max_tokens=tokens, temperature=0.0, ignore_eos=True)
    chats = [[{"role": "user", "content": PROMPTS[i % len(PROMPTS)]}] for i in range(concurrency)]

    def run(n: int) -> int:
        outs = llm.chat(chats[:n], sampling, use_tqdm=False)  # type: ignore[arg-type]
        return sum(len(o.outputs[0].token_ids) for o in outs)

    run(1)  # warm-up
    return [_median_rate(lambda: run(1), rounds), _median_rate(lambda: run(concurrency), rounds)]


def _vllm_served(
    model_path: str, tokens: int, concurrency: int, eager: bool, rounds: int, env: dict[str, str]
) -> list[float]:
    import openai

    from factflow.serving.vllm_server import SERVED_MODEL_NAME, VLLMServer

    extra = ["--enforce-eager"] if eager else []
    server = VLLMServer(
        model_path, max_model_len=MAX_MODEL_LEN, concurrency=concurrency, extra_args=extra, env=env
    )
    with server:
        client = openai.OpenAI(base_url=server.base_url, api_key="none", max_retries=0)

        def one(prompt: str) -> int:
            reply = client.chat.completions.create(
                model=SERVED_MODEL_NAME, messages=[{"role": "user", "content": prompt}],
                max_tokens=tokens, temperature=0.0, extra_body={"ignore_eos": True},
            )  # fmt: skip
            return reply.usage.completion_tokens if reply.usage else 0

        def run(n: int) -> int:
            with ThreadPoolExecutor(n) as pool:
                return sum(pool.map(one, [PROMPTS[i % len(PROMPTS)] for i in range(n)]))

        run(1)  # warm-up
        return [_median_rate(lambda: run(1), rounds), _median_rate(lambda: run(concurrency), rounds)]


def _share(machine: Machine, tps: float) -> str:
    return f"{machine.share(tps):.2f}"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--tokens", type=int, default=128, help="new tokens per request (EOS ignored)")
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=3, help="repeats per measurement (median)")
    parser.add_argument(
        "--threads", default="1,2", help="torch thread counts for the transformers engine (comma-separated)"
    )
    parser.add_argument("--engines", default="transformers,vllm", help="comma-separated engines to measure")
    parser.add_argument("--eager", action="store_true", help="vLLM without torch.compile (starts sooner)")
    parser.add_argument(
        "--vllm-env",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="environment for both vLLM sides, e.g. VLLM_CPU_NUM_OF_RESERVED_CPU=1 (vLLM's own binding)",
    )
    add_busy_flag(parser)
    args = parser.parse_args(argv)

    from factflow.serving.models import resolve_model
    from factflow.settings import get_settings

    model_path = str(resolve_model(get_settings()))
    machine = prelude(args.allow_busy, model_path)
    engines = set(args.engines.split(","))
    vllm_env = dict(kv.split("=", 1) for kv in args.vllm_env)
    console = Console(width=max(Console().width, 110))  # a table too narrow wraps its ratios
    n = args.concurrency
    mode = "eager" if args.eager else "compiled"
    table = Table(
        title=f"Serving, {args.tokens} new tokens per request; batch-1 roofline "
        f"{machine.roofline_tps:.1f} tok/s; load {machine.load[0]:.2f}"
        + (" [BUSY MACHINE]" if machine.busy else "")
    )
    for col in ("engine", "workload", "tok/s", "share of roofline", "ratio"):
        table.add_column(col, justify="right")
    if "transformers" in engines:
        threads = [int(t) for t in args.threads.split(",") if t]
        with console.status("transformers engine..."):
            hf = _hf(model_path, args.tokens, n, threads, args.rounds)
        for key, tps in hf.items():
            streams, t = key.split(" x")
            ratio = f"x{t} / x{threads[0]} = {tps / hf[f'{streams} x{threads[0]}']:.2f}"
            table.add_row(
                f"transformers, {t} thread(s)",
                f"{streams} at once",
                f"{tps:.1f}",
                _share(machine, tps),
                ratio,
            )
    if "vllm" in engines:
        with console.status(f"vLLM in-process ({mode})..."):
            spawn = get_context("spawn")
            with ProcessPoolExecutor(1, mp_context=spawn) as pool:
                offline = pool.submit(
                    _vllm_offline, model_path, args.tokens, n, args.eager, args.rounds, vllm_env
                ).result()
        with console.status(f"vLLM served ({mode}; the server starts in about a minute)..."):
            served = _vllm_served(model_path, args.tokens, n, args.eager, args.rounds, vllm_env)
        for label, off, srv in (
            ("1 at once", offline[0], served[0]),
            (f"{n} at once", offline[1], served[1]),
        ):
            table.add_row(f"vLLM in-process ({mode})", label, f"{off:.1f}", _share(machine, off), "")
            table.add_row(
                f"vLLM served ({mode})",
                label,
                f"{srv:.1f}",
                _share(machine, srv),
                f"served / in-process = {srv / off:.2f}",
            )
    console.print(table)


if __name__ == "__main__":
    main()
