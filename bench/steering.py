"""Many LoReFT adapters on one vLLM server vs the base alone, and vs one server per adapter.

    python -m factflow.bench.steering [--adapters 16] [--tokens 32] [--rounds 2] [--eager/--compiled]
    python -m factflow.bench.steering --micro      # the intervention op alone, no server

One server holds `--adapters` adapters (random weights, layers [8, 16], rank 4: speed does not
depend on what they learned); a plain base server runs beside it. 16 concurrent requests are
spread over 0 (the base), 1, 4 and 16 adapters, round after round, with a round on the plain
server in between, so every mix is timed side by side under the same load; the table gives
generated tokens/s, the ratio to the plain base server (the goal: >= 0.9 with 4 adapters) and to
the base rows of the adapter server. Beside it: the plain server's start-up time and memory (what
the old way, one server per adapter, pays per adapter), and the memory the adapter server holds
over the plain one, per adapter. Memory is the resident set of the server's whole process group
(API server + engine core).

`--micro` times, in this process on the CPU, one real decoder layer of the base alone and with the
stacked LoReFT hook's work added (entry assignment for 16 rows + the two dense products), for a
decode step (16 tokens) and a prefill chunk (512 tokens), at 8 and 16 adapter slots.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.table import Table

from factflow.serving.reft import ReftAdapter, ReftConfig

__all__ = ["main", "micro", "random_adapter", "group_rss_mb"]

PROMPT = "Write a short story about a lighthouse keeper who finds a message in a bottle."
CONCURRENCY = 16
MIXES = (0, 1, 4, 16)  # adapters the 16 requests are spread over (0 = the base)


def random_adapter(config: ReftConfig, model: torch.nn.Module, seed: int, out: Path) -> Path:
    """An adapter whose edit moves its subspace to a fixed random point (it changes the answers)."""
    gen = torch.Generator().manual_seed(seed)
    adapter = ReftAdapter.for_model(config, model)
    d = adapter.base.hidden_size
    for iv in adapter.interventions.values():
        q = torch.linalg.qr(torch.randn(d, config.rank, generator=gen, dtype=torch.float64)).Q
        iv.set_weights(  # type: ignore[operator]
            q.T.float(), torch.randn(config.rank, d, generator=gen) * 0.02,
            torch.randn(config.rank, generator=gen) * 8.0,
        )  # fmt: skip
    return adapter.save(out)


def group_rss_mb(pid: int) -> float:
    """Resident memory of the process group led by `pid` (vLLM's API server and its engine), MB."""
    import psutil

    total = 0
    for proc in psutil.process_iter(["pid"]):
        try:
            if os.getpgid(proc.pid) == pid:
                total += proc.memory_info().rss
        except (psutil.Error, ProcessLookupError):
            continue
    return total / 2**20


def _run_mix(url: str, ids: list[int], names: Sequence[str | None], tokens: int) -> float:
    """16 concurrent requests, request k on adapter names[k % len]: generated tokens per second."""
    import httpx

    from factflow.serving.vllm_server import SERVED_MODEL_NAME

    def one(k: int) -> int:
        body: dict[str, object] = {"model": SERVED_MODEL_NAME, "prompt": ids, "max_tokens": tokens,
                                   "temperature": 0.0, "ignore_eos": True}  # fmt: skip
        name = names[k % len(names)]
        if name is not None:
            body["vllm_xargs"] = {"factflow_adapter": name}
        res = httpx.post(f"{url}/completions", json=body, timeout=900)
        res.raise_for_status()
        return int(res.json()["usage"]["completion_tokens"])

    start = time.perf_counter()
    with ThreadPoolExecutor(CONCURRENCY) as pool:
        done = sum(pool.map(one, range(CONCURRENCY)))
    return done / (time.perf_counter() - start)


def run(n_adapters: int, tokens: int, rounds: int, eager: bool, console: Console) -> None:
    from factflow.serving.hf_engine import load_hf_model
    from factflow.serving.models import resolve_model
    from factflow.serving.reft import reft_served_model
    from factflow.serving.training import chat_prompt_ids
    from factflow.serving.vllm_server import VLLMServer
    from factflow.settings import get_settings

    base = resolve_model(get_settings())
    model, tok = load_hf_model(base)
    ids = chat_prompt_ids(tok, PROMPT)
    args = ["--enforce-eager"] if eager else []
    work = Path(tempfile.mkdtemp(prefix="factflow-steering-"))
    cfg = ReftConfig(layers=[8, 16], rank=4)
    names = [f"a{i}" for i in range(n_adapters)]
    folders = {n: random_adapter(cfg, model, i, work / n) for i, n in enumerate(names)}
    served = reft_served_model(base, folders, work / "home")
    mixes = [m for m in MIXES if m <= n_adapters]
    del model

    t0 = time.perf_counter()
    with VLLMServer(base, extra_args=args) as plain:
        plain_start = time.perf_counter() - t0
        assert plain.process is not None
        plain_rss = group_rss_mb(plain.process.pid)
        t0 = time.perf_counter()
        # an idle vLLM engine waits on its input queue: the server not being timed costs nothing
        with VLLMServer(served, extra_args=args) as multi:
            multi_start = time.perf_counter() - t0
            assert multi.process is not None
            multi_rss = group_rss_mb(multi.process.pid)
            _run_mix(plain.base_url, ids, [None], 4)  # warm-up
            _run_mix(multi.base_url, ids, [None], 4)
            plain_rates: list[float] = []
            rates: dict[int, list[float]] = {m: [] for m in mixes}
            for _ in range(rounds):
                for m in mixes:  # interleaved: every mix and the plain server see the same drift
                    plain_rates.append(_run_mix(plain.base_url, ids, [None], tokens))
                    rates[m].append(_run_mix(multi.base_url, ids, names[:m] if m else [None], tokens))
    load = os.getloadavg()
    table = Table(title=f"{CONCURRENCY} concurrent requests x {tokens} tokens, "
                        f"{'eager' if eager else 'compiled'}, median of {rounds} rounds")  # fmt: skip
    table.add_column("adapters in the batch", justify="right")
    table.add_column("tok/s", justify="right")
    table.add_column("ratio to plain base server", justify="right")
    table.add_column("ratio to base rows", justify="right")
    plain_rate = statistics.median(plain_rates)
    base_rate = statistics.median(rates[0])
    table.add_row("plain base server", f"{plain_rate:.1f}", "1.000", "")
    for m in mixes:
        rate = statistics.median(rates[m])
        label = str(m) if m else "0 (base)"
        table.add_row(label, f"{rate:.1f}", f"{rate / plain_rate:.3f}", f"{rate / base_rate:.3f}")
    console.print(table)
    console.print(f"plain base server: start {plain_start:.0f} s, {plain_rss:.0f} MB")
    console.print(
        f"{n_adapters}-adapter server: start {multi_start:.0f} s, {multi_rss:.0f} MB "
        f"({(multi_rss - plain_rss) / n_adapters:+.1f} MB per adapter)"
    )
    console.print(
        f"one server per adapter instead: {n_adapters} x {plain_rss:.0f} MB = "
        f"{n_adapters * plain_rss:.0f} MB and {plain_start:.0f} s start-up each"
    )
    console.print(f"load average: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")


def _per_call(fn: Callable[[], object], seconds: float) -> float:
    """Median seconds per call of `fn`, over batches of calls lasting about `seconds` in all."""
    fn()
    times: list[float] = []
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline or len(times) < 5:
        t = time.perf_counter()
        for _ in range(5):
            fn()
        times.append((time.perf_counter() - t) / 5)
    return statistics.median(times)


def _micro_case(model: Any, n_tokens: int, slots: int, seconds: float) -> tuple[float, float]:
    """Seconds per call of decoder layer 8 alone and with the LoReFT work of one step added."""
    from factflow.serving.vllm_reft import RowEdit, StackedLoReFT, token_entries

    layer = model.model.layers[8]
    d, r, rows = int(model.config.hidden_size), 8, 16
    gen = torch.Generator().manual_seed(slots)
    h = torch.randn(1, n_tokens, d, generator=gen)
    emb = model.model.rotary_emb(h, torch.arange(n_tokens)[None])
    positions = torch.arange(n_tokens) % 64
    per = n_tokens // rows
    spans = [(i * per, (i + 1) * per) for i in range(rows)]
    blocks = [(torch.linalg.qr(torch.randn(d, r, generator=gen)).Q.T, torch.randn(r, d, generator=gen),
               torch.randn(r, generator=gen)) for _ in range(2 * slots)]  # fmt: skip
    entries = torch.zeros(4096, dtype=torch.long)
    stack = StackedLoReFT(blocks, d, r, entries)
    edits = [RowEdit(first=1 + 2 * (i % 4), all=True) for i in range(rows)]  # 4 adapters in the batch

    def plain() -> torch.Tensor:
        out = layer(h, position_embeddings=emb)
        return out[0] if isinstance(out, tuple) else out

    def steered() -> torch.Tensor:
        entries[:n_tokens] = token_entries(positions, spans, edits)
        return plain()[0] + stack.delta(h[0])

    with torch.inference_mode():
        return _per_call(plain, seconds), _per_call(steered, seconds)


def micro(seconds: float, console: Console) -> None:
    """The intervention's cost next to one decoder layer of the real base, side by side."""
    from factflow.serving.hf_engine import load_hf_model
    from factflow.serving.models import resolve_model
    from factflow.settings import get_settings

    model, _tok = load_hf_model(resolve_model(get_settings()))
    table = Table(title="one decoder layer alone vs + stacked LoReFT (16 rows over 4 adapters, rank cap 8)")
    for col in ("tokens", "adapter slots", "layer ms", "+ LoReFT ms", "ratio layer / with"):
        table.add_column(col, justify="right")
    for n_tokens in (16, 512):  # a decode step of 16 requests, a prefill chunk
        for slots in (8, 16):
            plain, steered = _micro_case(model, n_tokens, slots, seconds)
            table.add_row(str(n_tokens), str(slots), f"{plain * 1e3:.2f}", f"{steered * 1e3:.2f}",
                          f"{plain / steered:.3f}")  # fmt: skip
    console.print(table)
    n_layers = int(model.config.num_hidden_layers)
    console.print(f"a server editing 2 of {n_layers} layers adds about 2/{n_layers} of the per-layer "
                  "difference to a step (entry assignment runs once per step; counted here per layer)")
    load = os.getloadavg()
    console.print(f"load average: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--adapters", type=int, default=16, help="Adapters loaded on the server.")
    parser.add_argument("--tokens", type=int, default=32, help="Generated tokens per request.")
    parser.add_argument("--rounds", type=int, default=2, help="Rounds over the mixes (median).")
    parser.add_argument("--eager", action=argparse.BooleanOptionalAction, default=True,
                        help="--enforce-eager (default) or --no-eager for torch.compile.")  # fmt: skip
    from factflow.bench.machine import add_busy_flag, prelude

    parser.add_argument("--micro", action="store_true", help="Time the intervention op alone (no server).")
    parser.add_argument("--seconds", type=float, default=3.0, help="--micro: timing per case, seconds.")
    add_busy_flag(parser)
    ns = parser.parse_args(argv)
    prelude(ns.allow_busy)
    if ns.micro:
        micro(ns.seconds, Console())
        return
    run(max(1, ns.adapters), ns.tokens, max(1, ns.rounds), ns.eager, Console())


if __name__ == "__main__":
    main()
