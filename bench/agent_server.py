"""The agent server against raw vLLM: answer tokens/s and turn latency at 1 and 16 sessions.

    python -m factflow.bench.agent_server [--sessions 1 16] [--turns 2] [--tokens 64] [--eager]
                                          [--natural-length] [--base-url URL]

One vLLM server on the default model (or the one already running at --base-url); the agent
server (`factflow serve --agent`'s app, in this process) talks to it. Each session is one thread
that asks `--turns` questions one after another; sessions run concurrently. The same questions go
straight to vLLM's /v1/chat/completions in the same run. Both sides decode exactly `--tokens`
tokens per answer (vLLM's `min_tokens`), so the ratio compares the same decode work and shows
what the agent adds: its longer prompt (facts, playbook), retrieval, the tool decision when a tool
could help, citation and the write-back gate, all on the same CPU as vLLM here.
`--natural-length` lets answers stop at EOS instead (the agent's are shorter, so its tokens/s is
lower for that reason alone). tokens/s = answer tokens (vLLM's /tokenize, citation markers left
out) / wall time; share = agent / raw.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import statistics
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
from rich.console import Console
from rich.table import Table

__all__ = ["main"]

_MARKER = re.compile(r"\s*\[[^\]\s]+\]")  # `[fact-id]` citation markers the agent appends

FACTS = [
    "The capital of Zorbia is Quillmar.",
    "Zorbia's national dish is roasted blue squash.",
    "The Quillmar river freezes every February.",
    "Zorbia adopted the dram as its currency in 1912.",
]
QUESTIONS = [
    "Which city is the seat of government of Zorbia?",
    "What do people in Zorbia eat on holidays?",
    "When does the river in Quillmar freeze?",
    "What money is used in Zorbia?",
]


_NAMES = ["Ada", "Ben", "Cleo", "Dov", "Eli", "Fay", "Gus", "Hana"]
_NAMES += ["Ivo", "Jan", "Kai", "Lea", "Max", "Nia", "Oto", "Pia"]
_ORDINALS = ["first", "second", "third", "fourth"]


def _question(session: int, turn: int) -> str:
    """A question no other turn asks word for word: nothing is served from an embedding cache."""
    # words, not digits: a digit would make the agent consider its calculator (a decide call)
    name = _NAMES[session % len(_NAMES)] + ("" if session < len(_NAMES) else "son")
    return f"{QUESTIONS[(session + turn) % len(QUESTIONS)]} Asked by {name}, {_ORDINALS[turn % 4]} question."


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def _run(sessions: int, turns: int, turn: Callable[[int, int], str]) -> tuple[float, list[float], list[str]]:
    """(wall seconds, per-turn latencies, answers) of `sessions` concurrent sessions."""
    latencies: list[float] = []
    answers: list[str] = []

    def session(s: int) -> None:
        for t in range(turns):
            t0 = time.perf_counter()
            answers.append(turn(s, t))
            latencies.append(time.perf_counter() - t0)

    t0 = time.perf_counter()
    with ThreadPoolExecutor(sessions) as pool:
        list(pool.map(session, range(sessions)))
    return time.perf_counter() - t0, latencies, answers


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--sessions", type=int, nargs="+", default=[1, 16])
    parser.add_argument("--turns", type=int, default=2, help="questions per session")
    parser.add_argument("--tokens", type=int, default=64, help="answer token cap, both sides")
    parser.add_argument(
        "--natural-length",
        action="store_true",
        help="let answers stop at EOS (the agent's are shorter: its prompt asks for one or two sentences)",
    )
    parser.add_argument("--eager", action="store_true", help="vLLM without torch.compile (starts sooner)")
    parser.add_argument("--base-url", help="an already running vLLM server's /v1 root (else one is started)")
    from factflow.bench.machine import add_busy_flag, prelude

    add_busy_flag(parser)
    args = parser.parse_args(argv)
    prelude(args.allow_busy, own_engine=args.base_url is not None)

    import openai

    from factflow.agent.api import Agent
    from factflow.agent.server import AGENT_MODEL_ID, AgentHub, AgentServerThread, create_app
    from factflow.serving.engines import check_endpoint, load_chat_model
    from factflow.serving.models import resolve_model
    from factflow.serving.vllm_server import VLLMServer
    from factflow.settings import Settings

    console = Console()
    home = Path(tempfile.mkdtemp(prefix="factflow-bench-agent-"))
    with contextlib.ExitStack() as stack:
        if args.base_url:
            url = args.base_url.rstrip("/")
            served = check_endpoint(url, None, None, engine="vllm")
        else:
            extra = ["--enforce-eager"] if args.eager else []
            vllm = stack.enter_context(VLLMServer(resolve_model(Settings()), extra_args=extra))
            url, served = vllm.base_url, vllm.served_model_name
        settings = Settings(home=home, engine="vllm", base_url=url, max_new_tokens=args.tokens)
        # same decode work on both sides: every answer is exactly --tokens long (vLLM's min_tokens
        # holds EOS back), unless --natural-length lets each side stop where its model does
        same = {} if args.natural_length else {"min_tokens": args.tokens}
        chat = load_chat_model(settings)
        chat.extra_body = same or None  # type: ignore[attr-defined]  # OpenAIChatModel; one call per turn here
        agent = Agent(settings, chat_model=chat)
        for fact in FACTS:
            agent.teach(fact)
        raw = openai.OpenAI(base_url=url, api_key="EMPTY", max_retries=0, timeout=600)

        def count(text: str) -> int:
            reply = httpx.post(
                f"{url.removesuffix('/v1')}/tokenize",
                json={"model": served, "prompt": text},
                timeout=60,
            )
            return int(reply.json()["count"])

        def raw_turn(s: int, t: int) -> str:
            reply = raw.chat.completions.create(
                model=served,
                messages=[{"role": "user", "content": _question(s, t)}],
                max_tokens=args.tokens,
                temperature=0,
                extra_body=same or None,
            )
            return reply.choices[0].message.content or ""

        with AgentServerThread(create_app(settings, hub=AgentHub(settings, agent))) as server:
            client = openai.OpenAI(base_url=server.base_url, api_key="unused", max_retries=0, timeout=600)

            def agent_turn(s: int, t: int) -> str:
                reply = client.chat.completions.create(
                    model=AGENT_MODEL_ID,
                    messages=[{"role": "user", "content": _question(s, t)}],
                    user=f"bench-{s}-{time.monotonic_ns()}" if t == 0 else None,  # type: ignore[arg-type]
                    extra_headers={"X-Factflow-Thread": threads[s]} if t else None,
                )
                threads[s] = reply.model_extra["factflow"]["thread_id"]  # type: ignore[index]
                return reply.choices[0].message.content or ""

            threads: dict[int, str] = {}
            agent_turn(0, 0)  # warm-up: embedder, first prompt through vLLM
            raw_turn(0, 0)
            rows: list[tuple[int, dict[str, Any], dict[str, Any]]] = []
            for n in args.sessions:
                results = {}
                for name, fn in (("raw", raw_turn), ("agent", agent_turn)):
                    threads.clear()
                    wall, lat, answers = _run(n, args.turns, fn)
                    tokens = sum(count(_MARKER.sub("", a)) for a in answers)  # citations aren't answer
                    results[name] = {
                        "tps": tokens / wall,
                        "p50": statistics.median(lat),
                        "p95": _percentile(lat, 0.95),
                    }
                rows.append((n, results["raw"], results["agent"]))

    table = Table(
        title=f"agent server vs raw vLLM ({args.turns} turns/session, "
        f"{'<=' if args.natural_length else 'exactly'} {args.tokens} answer tokens)"
    )
    for col in ("sessions", "raw tok/s", "agent tok/s", "agent/raw", "raw p50/p95 s", "agent p50/p95 s"):
        table.add_column(col, justify="right")
    for n, r, a in rows:
        table.add_row(
            str(n),
            f"{r['tps']:.1f}",
            f"{a['tps']:.1f}",
            f"{a['tps'] / r['tps']:.2f}",
            f"{r['p50']:.2f} / {r['p95']:.2f}",
            f"{a['p50']:.2f} / {a['p95']:.2f}",
        )
    console.print(table)
    console.print(
        f"load average (1/5/15 min): {' '.join(f'{x:.2f}' for x in os.getloadavg())}, cores: {os.cpu_count()}"
    )


if __name__ == "__main__":
    main()
