"""Score the write-back gate on labelled cases (tests/data/writeback_*.jsonl).

Each world's facts are taught into their own namespace; each case is proposed with dry_run so
cases don't see each other's writes. A case is labelled "accept" (every claim must be written),
"reject" (none may be), or "mixed" with one label per claim in `claim_labels`. Figures: claims
accepted that should not be (must be 0), and the accept rate among supported-novel cases and
among entailed compositions (categories `composition_*`).

Run: python -m factflow.memory.gate_eval [FILE ...]   (default: the shipped sets) -> a table.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict

from factflow.memory.store import FactStore
from factflow.memory.verify import Verifier

__all__ = ["GateReport", "load_cases", "evaluate_gate", "SHIPPED_CASES", "format_table", "main"]

SHIPPED_CASES = [
    Path(__file__).parent.parent / "tests" / "data" / "writeback_cases.jsonl",
    Path(__file__).parent.parent / "tests" / "data" / "writeback_compositions.jsonl",
]


class GateReport(BaseModel):
    model_config = ConfigDict(extra="forbid")
    n_cases: int
    wrongly_accepted: int
    supported_novel: int
    supported_accepted: int
    compositions: int = 0
    compositions_accepted: int = 0
    by_category: dict[str, dict[str, int]]
    failures: list[dict[str, Any]]
    seconds_per_claim: float

    @property
    def supported_rate(self) -> float:
        return self.supported_accepted / max(1, self.supported_novel)

    @property
    def composition_rate(self) -> float:
        return self.compositions_accepted / max(1, self.compositions)


def load_cases(*paths: str | Path) -> list[dict[str, Any]]:
    return [json.loads(line) for p in paths for line in Path(p).read_text().splitlines() if line.strip()]


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
    wrong = sup = sup_ok = comp = comp_ok = n_claims = 0
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
        got = [c.accepted for c in d.claims]
        if case["label"] == "mixed":
            want = [lab == "accept" for lab in case["claim_labels"]]
            ok = got == want
            wrong += sum(g and not w for g, w in zip(got, want, strict=False))
        elif case["label"] == "accept":
            ok = d.accepted and all(got)
        else:
            ok = not d.accepted
            wrong += sum(got)
        by_cat.setdefault(case["category"], Counter())["correct" if ok else "wrong"] += 1
        if case["category"] == "supported_novel":
            sup += 1
            sup_ok += ok
        if case["category"].startswith("composition_"):
            comp += 1
            comp_ok += ok
        if not ok:
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
        compositions=comp,
        compositions_accepted=comp_ok,
        by_category={k: dict(v) for k, v in sorted(by_cat.items())},
        failures=failures,
        seconds_per_claim=(time.perf_counter() - start) / max(1, n_claims),
    )


def format_table(report: GateReport, cases: Sequence[dict[str, Any]]) -> str:
    """Markdown table: per category the label, cases, and how many the gate got right."""
    labels = {c["category"]: c["label"] for c in cases}
    rows = ["| category | label | cases | correct |", "|---|---|---:|---:|"]
    for cat, counts in report.by_category.items():
        n = counts.get("correct", 0) + counts.get("wrong", 0)
        rows.append(f"| {cat} | {labels[cat]} | {n} | {counts.get('correct', 0)} |")
    rows.append(
        f"\nwrongly accepted claims: {report.wrongly_accepted}; supported-novel accepted: "
        f"{report.supported_accepted}/{report.supported_novel} ({report.supported_rate:.1%}); entailed "
        f"compositions accepted: {report.compositions_accepted}/{report.compositions} "
        f"({report.composition_rate:.1%}); {report.seconds_per_claim * 1000:.0f} ms/claim"
    )
    return "\n".join(rows)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Score the write-back gate on labelled cases.")
    parser.add_argument("files", nargs="*", type=Path, default=SHIPPED_CASES)
    parser.add_argument("--failures", action="store_true", help="Also print every wrong case.")
    args = parser.parse_args(argv)
    from factflow.settings import Settings

    cases = load_cases(*args.files)
    with tempfile.TemporaryDirectory() as tmp, FactStore.open(Settings(home=Path(tmp))) as store:
        report = evaluate_gate(store, cases)
    print(format_table(report, cases))
    if args.failures:
        for f in report.failures:
            print(f"miss {f['id']} [{f['category']}] {f['answer']} -> {f['reasons'][:2]}")


if __name__ == "__main__":
    main()
