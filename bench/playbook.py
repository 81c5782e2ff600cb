"""Playbook benchmark: `python -m factflow.bench.playbook [--samples 3] [--dedup-bullets 1000]`.

Measured side by side in one run and printed as one table:
- deterministic merge of a 10-op delta into playbooks of 1k and 10k bullets (p50, in memory and
  persisted through SQLite), target p50 < 5 ms at 10k;
- de-duplication cost per delta (4 new bullets vs N embedded bullets, real MiniLM);
- rendering time under the token budget (model tokenizer);
- adaptation cost per sample: ACE (generate + reflect + delta curate, `memory.adapt`) vs Dynamic
  Cheatsheet's cumulative rewrite (`evals.adapt.dc_cumulative`), same model, tokens and seconds.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from factflow.memory.adapt import Sample, contains_match, generator_answerer, online_adapt
from factflow.memory.bullets import AddOp, Delta, LogOp, MergeOp, PlaybookState, RemoveOp, TagOp, UpdateOp
from factflow.memory.merge import apply_ops
from factflow.memory.playbook import Playbook
from factflow.memory.render import get_token_counter
from factflow.memory.roles import UsageMeter
from factflow.settings import Settings, get_settings

__all__ = ["main"]

TOY = [
    Sample(question=f"What is {a} + {b}? Reply with the number.", label=str(a + b))
    for a, b in [(7, 5), (9, 4), (12, 8), (6, 7), (15, 9), (3, 14)]
]


def _p50(fn: Any, n: int) -> float:
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1000


def _ten_ops(n: int, k: int) -> list[LogOp]:
    return [
        *(AddOp(section="strategies", content=f"new lesson {k}-{j}") for j in range(4)),
        *(TagOp(id=f"strat-{i:05d}", tag="helpful") for i in (1, n // 2, n)),
        UpdateOp(id=f"strat-{n // 3:05d}", content=f"updated lesson {k}"),
        MergeOp(ids=[f"strat-{n // 4 + 2 * k:05d}", f"strat-{n // 4 + 2 * k + 1:05d}"]),
        RemoveOp(id=f"strat-{n // 5 + k:05d}"),
    ]


def bench_merge(rows: list[tuple[str, str, str]], settings: Settings, tmp: Path) -> None:
    counter = get_token_counter(settings)
    for n in (1000, 10_000):
        state = apply_ops(
            PlaybookState(),
            [AddOp(section="strategies", content=f"lesson number {i} about case {i}") for i in range(n)],
            now=0.0,
        ).state
        ops = _ten_ops(n, 0)
        mem = _p50(lambda s=state, o=ops: apply_ops(s, o, now=1.0), 101)  # type: ignore[misc]
        rows.append(
            (
                f"merge 10-op delta, {n // 1000}k bullets (in memory)",
                f"p50 {mem:.2f} ms",
                "target < 5 ms at 10k",
            )
        )
        pb = Playbook.open(tmp / f"merge{n}.sqlite3", settings, dedup_mode="off", token_counter=counter)
        pb.apply(
            Delta(
                ops=[
                    AddOp(section="strategies", content=f"lesson number {i} about case {i}") for i in range(n)
                ]
            )
        )
        k = [0]

        def persisted(pb: Playbook = pb, n: int = n, k: list[int] = k) -> None:
            k[0] += 1
            pb.apply(Delta(ops=_ten_ops(n, k[0])))

        db = _p50(persisted, 31)
        rows.append(
            (
                f"merge 10-op delta, {n // 1000}k bullets (SQLite commit)",
                f"p50 {db:.2f} ms",
                "one transaction",
            )
        )
        budget = settings.playbook_token_budget
        pb.render(budget_tokens=budget)  # warm the per-bullet token cache
        r = _p50(lambda pb=pb, b=budget: pb.render(budget_tokens=b), 5)  # type: ignore[misc]
        rows.append(
            (f"render {n // 1000}k bullets to {budget} tokens", f"p50 {r:.1f} ms", "helpfulness ranking")
        )
        pb.close()


def bench_dedup(rows: list[tuple[str, str, str]], settings: Settings, tmp: Path, n: int) -> None:
    from factflow.memory.embed import get_embedder

    embedder = get_embedder()
    pb = Playbook.open(tmp / "dedup.sqlite3", settings, dedup_mode="off", embedder=embedder)
    pb.apply(
        Delta(
            ops=[AddOp(section="strategies", content=f"Lesson {i}: check case {i} twice") for i in range(n)]
        )
    )
    t0 = time.perf_counter()
    pb.refine()  # one full pass to embed and index the existing bullets (cached in the file after)
    rows.append(
        (f"dedup: first full index of {n} bullets", f"{time.perf_counter() - t0:.1f} s", "once per file")
    )
    pb.dedup_mode = "proactive"
    times = []
    for k in range(5):
        t0 = time.perf_counter()
        pb.apply(
            Delta(
                ops=[
                    AddOp(section="strategies", content=f"Fresh insight {k}-{j} about units")
                    for j in range(4)
                ]
            )
        )
        times.append(time.perf_counter() - t0)
    rows.append(
        (
            f"apply + dedup of a 4-bullet delta vs {n} bullets",
            f"p50 {statistics.median(times) * 1000:.0f} ms",
            "incremental: 4 embeds + 4 mat-vecs",
        )
    )
    t0 = time.perf_counter()
    r = pb.render("units", budget_tokens=settings.playbook_token_budget)
    rows.append(
        (
            f"render {n} bullets with query relevance",
            f"{(time.perf_counter() - t0) * 1000:.0f} ms",
            f"{len(r.bullet_ids)} shown, {r.omitted} left out",
        )
    )
    pb.close()


def bench_adaptation(rows: list[tuple[str, str, str]], settings: Settings, tmp: Path, n: int) -> None:
    from factflow.serving.engines import load_chat_model

    chat = load_chat_model(settings)
    counter = get_token_counter(settings)
    samples = TOY[:n]
    # ACE: generate -> reflect -> curate, delta merge
    pb = Playbook.open(tmp / "ace.sqlite3", settings, dedup_mode="off", token_counter=counter)
    meter = UsageMeter()
    t0 = time.perf_counter()
    report = online_adapt(pb, samples, chat, run_id="bench-ace", meter=meter, progress=True)
    ace_s = (time.perf_counter() - t0) / n
    ace_tok = sum(counter.count(c.prompt) + counter.count(c.output) for c in meter.calls) / n
    ace_ctx = pb.render().tokens
    # Dynamic Cheatsheet (cumulative): answer with the sheet, then rewrite the whole sheet
    from factflow.evals.adapt import dc_cumulative

    dmeter = UsageMeter()
    t0 = time.perf_counter()
    attempts, sheet = dc_cumulative(chat, samples, generator_answerer(chat, dmeter), dmeter, progress=False)
    hits = sum(contains_match(a.answer, s.label or "") for a, s in zip(attempts, samples, strict=True))
    dc_s = (time.perf_counter() - t0) / n
    dc_tok = sum(counter.count(c.prompt) + counter.count(c.output) for c in dmeter.calls)
    rows.append(
        (
            "adaptation: seconds per sample (ACE | DC rewrite)",
            f"{ace_s:.1f} s | {dc_s:.1f} s",
            f"{n} samples, same model",
        )
    )
    rows.append(
        (
            "adaptation: tokens per sample (ACE | DC rewrite)",
            f"{ace_tok:.0f} | {dc_tok / n:.0f}",
            "prompt + output",
        )
    )
    rows.append(
        (
            "adaptation: context after run (ACE | DC)",
            f"{ace_ctx} | {counter.count(sheet)} tokens",
            "rendered playbook vs sheet",
        )
    )
    rows.append(
        (
            "adaptation: accuracy while adapting (ACE | DC)",
            f"{report.accuracy or 0:.2f} | {hits / n:.2f}",
            "toy addition task",
        )
    )


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--samples", type=int, default=3, help="Adaptation samples per method (0 skips).")
    ap.add_argument(
        "--dedup-bullets", type=int, default=1000, help="Bullets embedded for the dedup rows (0 skips)."
    )
    args = ap.parse_args(argv)
    base = get_settings()
    rows: list[tuple[str, str, str]] = []
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        settings = Settings(**{**base.model_dump(), "home": tmp, "models_dir": base.resolved_models_dir})
        bench_merge(rows, settings, tmp)
        if args.dedup_bullets:
            bench_dedup(rows, settings, tmp, args.dedup_bullets)
        if args.samples:
            bench_adaptation(rows, settings, tmp, min(args.samples, len(TOY)))
    table = Table("measurement", "value", "note", title="factflow playbook benchmark")
    for r in rows:
        table.add_row(*r)
    Console().print(table)


if __name__ == "__main__":
    main()
