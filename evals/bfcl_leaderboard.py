"""BFCL v4's overall score, composed as its leaderboard composes it, beside a pooled mean.

The sections and weights follow `generate_leaderboard_csv` in bfcl-eval's `eval_runner_helper`
(its averaging helpers are called as they are; only their arrangement is spelled out here, since
that function also needs pandas and a provider config per model):

    non_live   = mean(simple = mean(python, java, javascript), multiple, parallel, parallel_multiple)
    live       = mean of live_simple / _multiple / _parallel / _parallel_multiple weighted by size
    irrelevance= mean(irrelevance, live_irrelevance)
    multi_turn = mean(base, miss_func, miss_param, long_context)
    agentic    = mean(web_search = mean(base, no_snippet), memory = mean(kv, vector, rec_sum))
    overall    = 10% non_live + 10% live + 10% irrelevance + 30% multi_turn + 40% agentic

As in BFCL, a category not run counts as 0 inside these means and is shown as missing, so an
overall with missing parts is a lower bound. The live weights are the full categories' sizes, so
a sampled run is weighted as a full one would be. live_relevance is reported but, as in BFCL,
not part of the overall.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from factflow.evals.bfcl_data import category_size
from factflow.evals.bfcl_official import bfcl

__all__ = ["Section", "WEIGHTS", "leaderboard"]

WEIGHTS = {"non_live": 10, "live": 10, "irrelevance": 10, "multi_turn": 30, "agentic": 40}


@dataclass(frozen=True)
class Section:
    name: str
    accuracy: float
    missing: tuple[str, ...]


def _score(rates: Mapping[str, tuple[int, int]], category: str) -> dict[str, Any]:
    if category in rates and rates[category][1] > 0:
        correct, n = rates[category]
        return {
            "accuracy": correct / n,
            "total_count": category_size(category),
            "display_accuracy": correct / n,
        }
    return {"accuracy": 0, "total_count": category_size(category), "display_accuracy": "N/A"}


_NON_LIVE = ("simple_python", "simple_java", "simple_javascript", "multiple", "parallel", "parallel_multiple")
_LIVE = ("live_simple", "live_multiple", "live_parallel", "live_parallel_multiple")
_IRRELEVANCE = ("irrelevance", "live_irrelevance")
_MULTI_TURN = ("multi_turn_base", "multi_turn_miss_func", "multi_turn_miss_param", "multi_turn_long_context")
_AGENTIC = ("web_search_base", "web_search_no_snippet", "memory_kv", "memory_vector", "memory_rec_sum")


def leaderboard(rates: Mapping[str, tuple[int, int]]) -> list[Section]:
    """Sections and overall from per-category (correct, n); the last Section is `overall`."""
    helper = bfcl().helper
    mean, weighted_mean = helper.calculate_unweighted_accuracy, helper.calculate_weighted_accuracy
    s = {c: _score(rates, c) for c in (*_NON_LIVE, *_LIVE, *_IRRELEVANCE, *_MULTI_TURN, *_AGENTIC)}
    simple = mean([s["simple_python"], s["simple_java"], s["simple_javascript"]])
    web_search = mean([s["web_search_base"], s["web_search_no_snippet"]])
    memory = mean([s["memory_kv"], s["memory_vector"], s["memory_rec_sum"]])
    # display_na_if_category_missing=False where BFCL passes it: the section still gets a number.
    parts = {
        "non_live": (mean([simple, s["multiple"], s["parallel"], s["parallel_multiple"]], False), _NON_LIVE),
        "live": (weighted_mean([s[c] for c in _LIVE], False), _LIVE),
        "irrelevance": (mean([s[c] for c in _IRRELEVANCE]), _IRRELEVANCE),
        "multi_turn": (mean([s[c] for c in _MULTI_TURN], False), _MULTI_TURN),
        "agentic": (mean([web_search, memory], False), _AGENTIC),
    }
    overall = helper.calculate_percentage_weighted_accuracy(
        [score for score, _ in parts.values()], [WEIGHTS[name] for name in parts], False
    )
    sections = [
        Section(name, float(score["accuracy"]), tuple(c for c in cats if s[c]["display_accuracy"] == "N/A"))
        for name, (score, cats) in parts.items()
    ]
    missing = tuple(c for sec in sections for c in sec.missing)
    return [*sections, Section("overall", float(overall["accuracy"]), missing)]
