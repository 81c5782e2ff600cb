"""Score the write-back gate on labelled cases (tests/data/writeback_cases.jsonl).

Each world's facts are taught into their own namespace; each case is proposed with dry_run so
cases don't see each other's writes. Figures: accepted among "reject" cases (must be 0) and
accept rate among supported-novel cases (target >= 85%).
"""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict

from factflow.memory.store import FactStore
from factflow.memory.verify import Verifier

__all__ = ["GateReport", "load_cases", "evaluate_gate"]


class GateReport(BaseModel):
    model_config = ConfigDict(extra="forbid")
    n_cases: int
    wrongly_accepted: int
    supported_novel: int
    supported_accepted: int
    by_category: dict[str, dict[str, int]]
    failures: list[dict[str, Any]]
    seconds_per_claim: float

    @property
    def supported_rate(self) -> float:
        return self.supported_accepted / max(1, self.supported_novel)


def load_cases(path: str | Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def evaluate_gate(
    store: FactStore,
    cases: Sequence[dict[str, Any]],
    *,
    prefix: str = "gate",
    verifiers: Sequence[Verifier] | None = None,
) -> GateReport:
    ids: dict[str, dict[str, str]] = {}
    for case in cases:
        if case["world"] in ids:
            continue
        ns = f"{prefix}-{case['world']}"
        ids[case["world"]] = {k: store.teach(t, namespace=ns).id for k, t in case["facts"].items()}
    by_cat: dict[str, Counter[str]] = {}
    failures = []
    wrong = sup = sup_ok = n_claims = 0
    start = time.perf_counter()
    for case in cases:
        key_to_id = ids[case["world"]]
        answer = case["answer"]
        for key, fid in key_to_id.items():  # inline [key] markers -> [fact id]
            answer = answer.replace(f"[{key}]", f"[{fid}]")
        d = store.propose(
            answer,
            [key_to_id[k] for k in case["cite"]],
            [key_to_id[k] for k in case["retrieved"]],
            namespace=f"{prefix}-{case['world']}",
            verifiers=verifiers,
            dry_run=True,
        )
        n_claims += max(1, len(d.claims))
        ok = d.accepted and all(c.accepted for c in d.claims)
        by_cat.setdefault(case["category"], Counter())["accepted" if ok else "rejected"] += 1
        if case["label"] == "accept":
            sup += 1
            sup_ok += ok
        else:
            wrong += bool(d.accepted)
        if ok != (case["label"] == "accept"):
            failures.append(
                {
                    "id": case["id"],
                    "category": case["category"],
                    "answer": case["answer"],
                    "reasons": d.reasons,
                }
            )
    return GateReport(
        n_cases=len(cases),
        wrongly_accepted=wrong,
        supported_novel=sup,
        supported_accepted=sup_ok,
        by_category={k: dict(v) for k, v in sorted(by_cat.items())},
        failures=failures,
        seconds_per_claim=(time.perf_counter() - start) / max(1, n_claims),
    )
