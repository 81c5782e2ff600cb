"""BFCL v4 data, read by path from the `bfcl-eval` wheel (installed with `--no-deps`).

The wheel's `__init__` and most of its modules import provider SDKs we don't install, so we only
locate the package folder (`importlib.util.find_spec`) and read its JSON-lines files. Categories:

- single turn (AST-scored): simple (= simple_python), multiple, parallel, parallel_multiple,
  live_simple, live_multiple, live_parallel, live_parallel_multiple;
- relevance: irrelevance, live_irrelevance (no call is right), live_relevance (any call is right);
- multi_turn_base / _miss_func / _miss_param / _long_context: state + response checks against
  BFCL's own offline simulated APIs (file system, trading bot, ...);
- memory: questions answered after a prerequisite conversation, through a memory backend
  (key-value or recursive summary; the vector backend needs faiss).

simple_java / simple_javascript are not loaded: their checker needs tree-sitter type converters.
"""

from __future__ import annotations

import importlib.util
import json
from functools import lru_cache
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from factflow.errors import UserError

__all__ = [
    "AST_CATEGORIES",
    "RELEVANCE_CATEGORIES",
    "MULTI_TURN_CATEGORIES",
    "ALL_CATEGORIES",
    "QUICK_CATEGORIES",
    "BfclEntry",
    "bfcl_data_dir",
    "load_category",
    "load_memory_prereqs",
    "multi_turn_functions",
    "expand_categories",
]

AST_CATEGORIES = (
    "simple",
    "multiple",
    "parallel",
    "parallel_multiple",
    "live_simple",
    "live_multiple",
    "live_parallel",
    "live_parallel_multiple",
)
RELEVANCE_CATEGORIES = ("irrelevance", "live_irrelevance", "live_relevance")
MULTI_TURN_CATEGORIES = (
    "multi_turn_base",
    "multi_turn_miss_func",
    "multi_turn_miss_param",
    "multi_turn_long_context",
)
ALL_CATEGORIES = (*AST_CATEGORIES, *RELEVANCE_CATEGORIES, *MULTI_TURN_CATEGORIES, "memory")
# One of each kind of scoring: AST, relevance, multi-turn state, memory.
QUICK_CATEGORIES = ("simple", "multiple", "parallel", "irrelevance", "multi_turn_base", "memory")
_GROUPS = {
    "all": ALL_CATEGORIES,
    "ast": AST_CATEGORIES,
    "live": tuple(c for c in ALL_CATEGORIES if c.startswith("live_")),
    "multi_turn": MULTI_TURN_CATEGORIES,
    "relevance": RELEVANCE_CATEGORIES,
    "quick": QUICK_CATEGORIES,
}
_FILE_NAMES = {"simple": "simple_python"}


class BfclEntry(BaseModel):
    """One test case: its turns of messages, the functions offered, and the expected answer."""

    model_config = ConfigDict(extra="forbid")

    id: str
    category: str
    question: list[list[dict[str, Any]]] = Field(description="Turns; each a list of chat messages.")
    functions: list[dict[str, Any]] = Field(default_factory=list, description="BFCL JSON function docs.")
    ground_truth: Any = Field(
        default=None, description="Possible answers (AST), call strings (multi-turn) or strings."
    )
    initial_config: dict[str, Any] = Field(default_factory=dict)
    involved_classes: list[str] = Field(default_factory=list)
    missed_functions: dict[str, list[str]] = Field(
        default_factory=dict, description="multi_turn_miss_func: turn index -> functions added then."
    )
    scenario: str = ""


@lru_cache(maxsize=1)
def bfcl_data_dir() -> Path:
    """The `data/` folder inside the installed bfcl-eval wheel."""
    spec = importlib.util.find_spec("bfcl_eval")
    if spec is None or not spec.submodule_search_locations:
        raise UserError(
            "the bfcl-eval data is not installed: run `pip install --no-deps bfcl-eval==2026.3.23`"
        )
    for location in spec.submodule_search_locations:
        data = Path(location) / "data"
        if data.is_dir():
            return data
    raise UserError(
        "bfcl-eval is installed without its data folder: reinstall it with `pip install --no-deps`"
    )


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    with path.open(encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


def expand_categories(names: list[str] | tuple[str, ...]) -> list[str]:
    """Expand group names ('all', 'live', 'ast', 'multi_turn', 'quick') and validate the rest."""
    out: list[str] = []
    for name in names:
        for cat in _GROUPS.get(name, (name,)):
            if cat not in ALL_CATEGORIES:
                raise UserError(
                    f"unknown BFCL category {cat!r}: use one of {', '.join(ALL_CATEGORIES)} or a group "
                    f"({', '.join(_GROUPS)})"
                )
            if cat not in out:
                out.append(cat)
    return out


@lru_cache(maxsize=16)
def _func_doc(class_name: str) -> tuple[dict[str, Any], ...]:
    from_file = {
        "GorillaFileSystem": "gorilla_file_system",
        "MathAPI": "math_api",
        "MessageAPI": "message_api",
        "TwitterAPI": "posting_api",
        "TicketAPI": "ticket_api",
        "TradingBot": "trading_bot",
        "TravelAPI": "travel_booking",
        "VehicleControlAPI": "vehicle_control",
        "WebSearchAPI": "web_search",
        "MemoryAPI_kv": "memory_kv",
        "MemoryAPI_vector": "memory_vector",
        "MemoryAPI_rec_sum": "memory_rec_sum",
    }[class_name]
    return tuple(_read_jsonl(bfcl_data_dir() / "multi_turn_func_doc" / f"{from_file}.json"))


def multi_turn_functions(
    classes: list[str], excluded: list[str] | tuple[str, ...] = ()
) -> list[dict[str, Any]]:
    """Function docs of the simulated API classes, minus the excluded names."""
    return [f for c in classes for f in _func_doc(c) if f["name"] not in set(excluded)]


def load_category(category: str, *, limit: int | None = None) -> list[BfclEntry]:
    """Entries of one category, each with its ground truth (None for relevance categories)."""
    if category not in ALL_CATEGORIES:
        raise UserError(f"unknown BFCL category {category!r}: use one of {', '.join(ALL_CATEGORIES)}")
    data = bfcl_data_dir()
    stem = f"BFCL_v4_{_FILE_NAMES.get(category, category)}.json"
    rows = _read_jsonl(data / stem)
    if limit is not None:
        rows = rows[:limit]
    answers: dict[str, Any] = {}
    answer_file = data / "possible_answer" / stem
    if answer_file.exists():
        answers = {a["id"]: a["ground_truth"] for a in _read_jsonl(answer_file)}
    entries = []
    for row in rows:
        classes = list(row.get("involved_classes", []))
        functions = row.get("function") or []
        missed: dict[str, list[str]] = {}
        if category.startswith("multi_turn"):
            # miss_func: these functions are withheld until the turn that needs them.
            missed = {str(k): list(v) for k, v in (row.get("missed_function") or {}).items()}
            hidden = [n for names in missed.values() for n in names] + list(row.get("excluded_function", []))
            functions = multi_turn_functions(classes, hidden)
        elif category == "memory":
            classes = ["MemoryAPI_kv"]  # backend chosen by the runner; kv by default
        entries.append(
            BfclEntry(
                id=row["id"],
                category=category,
                question=row["question"],
                functions=functions,
                ground_truth=answers.get(row["id"]),
                initial_config=row.get("initial_config") or {},
                involved_classes=classes,
                missed_functions=missed,
                scenario=row.get("scenario", ""),
            )
        )
    return entries


def load_memory_prereqs(scenario: str) -> list[list[list[dict[str, Any]]]]:
    """The prerequisite conversations of a memory scenario, in order (each a list of turns)."""
    path = bfcl_data_dir() / "memory_prereq_conversation" / f"memory_{scenario}.json"
    if not path.exists():
        raise UserError(f"no BFCL memory scenario {scenario!r}: check the bfcl-eval version")
    return [row["question"] for row in _read_jsonl(path)]
