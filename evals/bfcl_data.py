"""BFCL v4 test cases, loaded by BFCL's own loader (`bfcl_eval.utils.load_dataset_entry`).

Categories are BFCL's names. Every category the wheel ships is listed; `web_search_*` needs live
internet search (SerpAPI) and `memory_vector` needs faiss plus a hub embedding model, so those two
are refused with a message saying why (they show as missing in the leaderboard formula).

Memory: BFCL runs each scenario's prerequisite conversations first (ids `..._prereq_...`); each
writes a snapshot of the memory backend, and every question then starts a fresh backend instance
from that scenario's final snapshot. `memory_prereqs` returns those conversations in order.

`--limit N` is a seeded random sample of N cases per category (stratified by category), kept in
BFCL's order, so two runs with the same seed score the same cases.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from copy import deepcopy
from functools import lru_cache
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from factflow.errors import UserError
from factflow.evals.bfcl_official import bfcl

__all__ = [
    "NON_LIVE",
    "LIVE",
    "MULTI_TURN",
    "MEMORY",
    "WEB_SEARCH",
    "ALL_CATEGORIES",
    "RUNNABLE_CATEGORIES",
    "QUICK_CATEGORIES",
    "UNAVAILABLE",
    "BfclEntry",
    "expand_categories",
    "category_size",
    "load_category",
    "memory_prereqs",
]

NON_LIVE = (
    "simple_python",
    "simple_java",
    "simple_javascript",
    "multiple",
    "parallel",
    "parallel_multiple",
    "irrelevance",
)
LIVE = (
    "live_simple",
    "live_multiple",
    "live_parallel",
    "live_parallel_multiple",
    "live_irrelevance",
    "live_relevance",
)
MULTI_TURN = ("multi_turn_base", "multi_turn_miss_func", "multi_turn_miss_param", "multi_turn_long_context")
MEMORY = ("memory_kv", "memory_vector", "memory_rec_sum")
WEB_SEARCH = ("web_search_base", "web_search_no_snippet")
ALL_CATEGORIES = (*NON_LIVE, *LIVE, *MULTI_TURN, *WEB_SEARCH, *MEMORY)
UNAVAILABLE = {
    "web_search_base": "needs live web search (SerpAPI key and internet)",
    "web_search_no_snippet": "needs live web search (SerpAPI key and internet)",
    "memory_vector": "needs faiss and the all-MiniLM-L6-v2 model from the Hugging Face hub",
}
RUNNABLE_CATEGORIES = tuple(c for c in ALL_CATEGORIES if c not in UNAVAILABLE)
# One of each kind of scoring: AST (python, java), relevance, multi-turn state. Memory is left out:
# a memory question first replays its scenario's ~10 prerequisite conversations.
QUICK_CATEGORIES = ("simple_python", "simple_java", "parallel", "irrelevance", "multi_turn_base")
_ALIASES = {"simple": "simple_python"}
_GROUPS: dict[str, tuple[str, ...]] = {
    "all": RUNNABLE_CATEGORIES,
    "non_live": NON_LIVE,
    "live": LIVE,
    "ast": tuple(c for c in (*NON_LIVE, *LIVE) if "relevance" not in c),
    "relevance": ("irrelevance", "live_irrelevance", "live_relevance"),
    "multi_turn": MULTI_TURN,
    "memory": tuple(c for c in MEMORY if c not in UNAVAILABLE),
    "quick": QUICK_CATEGORIES,
}


class BfclEntry(BaseModel):
    """One test case as BFCL's loader builds it, plus its ground truth.

    `entry` is what BFCL's inference gets (function docs with BFCL's language hints); `prompt` is
    the same case as BFCL's scorer loads it (no hints).
    """

    model_config = ConfigDict(extra="forbid")

    id: str
    category: str
    entry: dict[str, Any]
    prompt: dict[str, Any] = Field(default_factory=dict)
    ground_truth: Any = Field(default=None, description="Possible answers; None for relevance and prereqs.")

    @property
    def question(self) -> list[list[dict[str, Any]]]:
        return list(self.entry["question"])

    @property
    def functions(self) -> list[dict[str, Any]]:
        return list(self.entry.get("function", []))

    @property
    def scenario(self) -> str:
        return str(self.entry.get("scenario", ""))


def expand_categories(names: Sequence[str]) -> list[str]:
    """Expand groups (all, non_live, live, ast, relevance, multi_turn, memory, quick), check names."""
    out: list[str] = []
    for raw in names:
        name = _ALIASES.get(raw, raw)
        for cat in _GROUPS.get(name, (name,)):
            if cat in UNAVAILABLE:
                raise UserError(f"BFCL category {cat!r} can't run here: it {UNAVAILABLE[cat]}")
            if cat not in ALL_CATEGORIES:
                raise UserError(
                    f"unknown BFCL category {cat!r}: use one of {', '.join(RUNNABLE_CATEGORIES)} "
                    f"or a group ({', '.join(_GROUPS)})"
                )
            if cat not in out:
                out.append(cat)
    return out


@lru_cache(maxsize=64)
def _dataset(category: str, hints: bool) -> tuple[dict[str, Any], ...]:
    utils = bfcl().utils
    return tuple(
        utils.load_dataset_entry(category, include_prereq=True, include_language_specific_hint=hints)
    )


@lru_cache(maxsize=64)
def _answers(category: str) -> tuple[dict[str, Any], ...]:
    if "relevance" in category:
        return ()
    return tuple(bfcl().utils.load_ground_truth_entry(category))


def _is_prereq(entry: dict[str, Any]) -> bool:
    return "prereq" in entry["id"]


def category_size(category: str) -> int:
    """Scored cases in the full category (BFCL weighs the live section by these counts)."""
    return sum(not _is_prereq(e) for e in _dataset(category, False))


def load_category(category: str, *, limit: int | None = None, seed: int = 0) -> list[BfclEntry]:
    """The scored cases of a category; with `limit`, a seeded random sample of that many."""
    category = _ALIASES.get(category, category)
    if category not in ALL_CATEGORIES:
        raise UserError(f"unknown BFCL category {category!r}: use one of {', '.join(RUNNABLE_CATEGORIES)}")
    if category in UNAVAILABLE:
        raise UserError(f"BFCL category {category!r} can't run here: it {UNAVAILABLE[category]}")
    with_hints = [e for e in _dataset(category, True) if not _is_prereq(e)]
    plain = {e["id"]: e for e in _dataset(category, False) if not _is_prereq(e)}
    answers = _answers(category)
    if answers and len(answers) != len(with_hints):
        raise UserError(f"bfcl-eval data for {category} is inconsistent: reinstall bfcl-eval==2026.3.23")
    # BFCL aligns prompts and answers by position (some answer ids differ in form)
    truth = [a["ground_truth"] for a in answers] if answers else [None] * len(with_hints)
    picked = list(range(len(with_hints)))
    if limit is not None and limit < len(with_hints):
        rng = random.Random(f"{seed}:{category}")
        picked = sorted(rng.sample(range(len(with_hints)), limit))
    return [
        BfclEntry(
            id=with_hints[i]["id"],
            category=category,
            entry=deepcopy(with_hints[i]),
            prompt=deepcopy(plain[with_hints[i]["id"]]),
            ground_truth=truth[i],
        )
        for i in picked
    ]


def memory_prereqs(category: str, scenario: str) -> list[BfclEntry]:
    """The prerequisite conversations of one memory scenario, in the order BFCL chains them."""
    rows = [e for e in _dataset(category, True) if _is_prereq(e) and e.get("scenario") == scenario]
    if not rows:
        raise UserError(f"no BFCL memory scenario {scenario!r} in {category}: check the bfcl-eval version")
    rows.sort(key=lambda e: len(e.get("depends_on", [])))
    return [BfclEntry(id=e["id"], category=f"{category}_prereq", entry=deepcopy(e)) for e in rows]
