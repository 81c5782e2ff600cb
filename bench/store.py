"""`python -m factflow.bench.store`: fact store costs, side by side in one run.

Measures on this machine:
  * ingest throughput (chunks/s) of a generated Markdown document, real MiniLM embeddings;
  * hybrid search latency p50/p95 (query embedding + Chroma HNSW + BM25 + RRF) at each size
    (default 10k and 100k facts). To reach 100k on a CPU box the scale facts are written with
    random unit vectors and real, distinct texts (embedding 100k sentences with MiniLM on 2
    cores takes far longer than the rest of the run); queries are real embeddings, so HNSW and
    BM25 do their full work. `--real-embeddings` embeds the scale facts too;
  * "write one fact, then search" p50 at each size: the lexical index following the write
    (what the store does) beside rebuilding it from the namespace, with the load average
    printed (numbers under load are only indicative);
  * write-back gate latency per claim for each verifier (grounding, novelty+contradiction
    lookup, NLI when `--nli DIR` or FACTFLOW_FACT_NLI_MODEL names a local model, LLM judge on
    the default model unless `--no-judge`).
"""

from __future__ import annotations

import argparse
import json
import random
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from factflow.memory.facts import Fact
from factflow.memory.store import FactStore
from factflow.memory.verify import GroundingVerifier, LLMJudgeVerifier, NLIVerifier, Verifier
from factflow.settings import Settings

__all__ = ["main", "run"]

WORDS = [
    "sensor",
    "valve",
    "pump",
    "river",
    "bridge",
    "tower",
    "engine",
    "harbor",
    "orchard",
    "library",
    "museum",
    "turbine",
    "bakery",
    "glacier",
    "quarry",
    "vineyard",
    "archive",
    "studio",
    "clinic",
    "depot",
]
CITIES = [
    "Lyon",
    "Graz",
    "Porto",
    "Leeds",
    "Brno",
    "Cork",
    "Turin",
    "Ghent",
    "Aarhus",
    "Bilbao",
    "Tampere",
    "Utrecht",
]


def _sentence(rng: random.Random, i: int) -> str:
    return (
        f"The {rng.choice(WORDS)} of item {i} in {rng.choice(CITIES)} was built in "
        f"{rng.randint(1800, 2024)} and holds {rng.randint(1, 9999)} {rng.choice(WORDS)}s."
    )


def _pct(xs: list[float], q: float) -> float:
    return float(np.percentile(np.array(xs) * 1000.0, q))


def bench_ingest(store: FactStore, tmp: Path, n_chunks: int) -> dict[str, Any]:
    rng = random.Random(1)
    doc = tmp / "bench.md"
    doc.write_text(
        "\n\n".join(
            f"## Part {i}\n\n" + " ".join(_sentence(rng, i * 10 + j) for j in range(3))
            for i in range(n_chunks)
        )
    )
    t0 = time.perf_counter()
    facts = store.ingest(doc, namespace="bench-ingest", progress=True)
    dt = time.perf_counter() - t0
    return {"chunks": len(facts), "seconds": dt, "chunks_per_s": len(facts) / dt}


def bench_search(
    store: FactStore, size: int, n_queries: int, real: bool, n_writes: int = 20
) -> dict[str, Any]:
    from tqdm import tqdm

    ns = f"bench-{size}"
    col = store.collection(ns, create=True)
    rng = random.Random(size)
    have = int(col.count())
    batch = 2000
    for start in tqdm(range(have, size, batch), desc=f"fill {size}", unit="batch"):
        texts = [_sentence(rng, i) for i in range(start, min(size, start + batch))]
        facts = [
            Fact(id=f"b-{start + j}", text=t, namespace=ns, origin="document") for j, t in enumerate(texts)
        ]
        if real:
            vecs = store.embed(texts)
        else:
            vecs = np.random.default_rng(start).standard_normal((len(texts), 384)).astype(np.float32)
            vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
        store._write(ns, facts, embeddings=vecs)
    t0 = time.perf_counter()
    store.search("warm up the lexical index", k=5, namespace=ns)
    build = time.perf_counter() - t0
    qs = [
        f"{rng.choice(WORDS)} in {rng.choice(CITIES)} built in {rng.randint(1800, 2024)}"
        for _ in range(n_queries)
    ]
    lat = []
    for q in qs:
        t = time.perf_counter()
        hits = store.search(q, k=5, namespace=ns)
        lat.append(time.perf_counter() - t)
        assert hits, "search returned nothing"
    after_write = _write_then_search(store, ns, qs, n_writes)
    return {
        "size": size,
        "p50_ms": _pct(lat, 50),
        "p95_ms": _pct(lat, 95),
        "index_build_s": build,
        "embeddings": "real" if real else "random",
        **after_write,
    }


def _write_then_search(store: FactStore, ns: str, qs: list[str], n_writes: int) -> dict[str, float]:
    """Search latency right after teaching one fact: the lexical index follows the write
    (incremental, what the store does) vs rebuilding it from the namespace (what a write used
    to cost the next search), side by side in this run."""
    out: dict[str, float] = {}
    for mode, reps in (("incremental", n_writes), ("rebuild", max(1, n_writes // 10))):
        lat = []
        for i in range(reps):
            store.teach(f"Bench note {mode} {i}: the {WORDS[i % len(WORDS)]} was checked.", namespace=ns)
            if mode == "rebuild":
                store.lexical_caches.pop(ns, None)
            t = time.perf_counter()
            store.search(qs[i % len(qs)], k=5, namespace=ns)
            lat.append(time.perf_counter() - t)
        out[f"after_write_{mode}_p50_ms"] = _pct(lat, 50)
    return out


def bench_gate(store: FactStore, verifiers: dict[str, Verifier], n_claims: int) -> dict[str, float]:
    src = (
        "Acme makes industrial sensors. The flagship Kestrel sensor was launched in 2019. "
        "Each Kestrel unit sells for 40 euros. The chief engineer of Acme is Greta Holm."
    )
    doc = store.teach(src, namespace="bench-gate")
    claims = [
        "The flagship Kestrel sensor was launched in 2019.",
        "Each Kestrel unit sells for 45 euros.",
        "The chief engineer of Acme is Maria Lopez.",
        "Acme makes industrial sensors for breweries.",
    ]
    claims = (claims * (n_claims // len(claims) + 1))[:n_claims]
    out: dict[str, float] = {}
    for name, v in verifiers.items():
        v.check(claims[0], [src])  # warm-up (model load, caches)
        t = time.perf_counter()
        for c in claims:
            v.check(c, [src])
        out[name] = (time.perf_counter() - t) / len(claims) * 1000.0
    t = time.perf_counter()
    for c in claims:
        store.neighbors([c], "bench-gate")
    out["novelty+contradiction lookup"] = (time.perf_counter() - t) / len(claims) * 1000.0
    t = time.perf_counter()
    for c in claims:
        store.propose(
            c, [doc.id], [doc.id], namespace="bench-gate", verifiers=[GroundingVerifier()], dry_run=True
        )
    out["full gate (default)"] = (time.perf_counter() - t) / len(claims) * 1000.0
    return out


def run(
    sizes: list[int],
    n_queries: int,
    ingest_chunks: int,
    nli: str | None,
    judge: bool,
    real: bool,
    n_claims: int,
    threads: int,
    n_writes: int = 20,
) -> dict[str, Any]:
    import torch

    torch.set_num_threads(threads)
    with tempfile.TemporaryDirectory() as tmp:
        # Share the pulled models folder so the judge does not convert the default model again.
        settings = Settings(home=Path(tmp) / "home", models_dir=Settings().resolved_models_dir)
        with FactStore.open(settings) as store:
            store.embed(["warm up"])
            result: dict[str, Any] = {"ingest": bench_ingest(store, Path(tmp), ingest_chunks)}
            result["search"] = [bench_search(store, n, n_queries, real, n_writes) for n in sizes]
            verifiers: dict[str, Verifier] = {"grounding": GroundingVerifier()}
            if nli:
                verifiers["nli"] = NLIVerifier(nli)
            if judge:
                from factflow.serving.models import resolve_model

                verifiers["llm_judge (SmolLM2-135M, P(yes))"] = LLMJudgeVerifier.from_model_path(
                    resolve_model(settings)
                )
            result["gate_ms_per_claim"] = bench_gate(store, verifiers, n_claims)
            if not nli:
                result["gate_ms_per_claim"]["nli"] = None
    import os

    result["loadavg"] = list(os.getloadavg())  # numbers under load are only indicative
    return result


def _table(r: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    t = Table("measure", "value", title="factflow fact store benchmark")
    ing = r["ingest"]
    t.add_row(
        "ingest throughput", f"{ing['chunks_per_s']:.1f} chunks/s ({ing['chunks']} chunks, real MiniLM)"
    )
    for s in r["search"]:
        t.add_row(
            f"search p50 / p95 @ {s['size']:,} facts",
            f"{s['p50_ms']:.1f} / {s['p95_ms']:.1f} ms (BM25 index build {s['index_build_s']:.1f} s, "
            f"{s['embeddings']} fact vectors)",
        )
        inc, reb = s["after_write_incremental_p50_ms"], s["after_write_rebuild_p50_ms"]
        t.add_row(
            f"write one fact, then search p50 @ {s['size']:,}",
            f"{inc:.1f} ms incremental index vs {reb:.1f} ms rebuilt index ({reb / max(inc, 1e-9):.0f}x)",
        )
    for name, ms in r["gate_ms_per_claim"].items():
        t.add_row(
            f"gate: {name}",
            "n/a (no local NLI model; pass --nli DIR)" if ms is None else f"{ms:.1f} ms/claim",
        )
    t.add_row("load average (1/5/15 min) at the end", " / ".join(f"{x:.2f}" for x in r["loadavg"]))
    Console().print(t)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--sizes", default="10000,100000", help="Comma-separated store sizes.")
    ap.add_argument("--queries", type=int, default=50)
    ap.add_argument("--ingest-chunks", type=int, default=300)
    ap.add_argument("--claims", type=int, default=12)
    ap.add_argument("--nli", default=None, help="Local HF NLI folder (default: FACTFLOW_FACT_NLI_MODEL).")
    ap.add_argument("--no-judge", action="store_true", help="Skip the LLM judge (loads the default model).")
    ap.add_argument("--real-embeddings", action="store_true", help="Embed the scale facts with MiniLM too.")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (1 is fastest on a shared box).")
    ap.add_argument(
        "--writes", type=int, default=20, help="Write-then-search rounds (rebuild mode: a tenth)."
    )
    ap.add_argument("--json", type=Path, default=None, help="Also write the raw numbers here.")
    a = ap.parse_args()
    r = run(
        [int(x) for x in a.sizes.split(",")],
        a.queries,
        a.ingest_chunks,
        a.nli or Settings().fact_nli_model,
        not a.no_judge,
        a.real_embeddings,
        a.claims,
        a.threads,
        a.writes,
    )
    _table(r)
    if a.json:
        a.json.write_text(json.dumps(r, indent=2))


if __name__ == "__main__":
    main()
