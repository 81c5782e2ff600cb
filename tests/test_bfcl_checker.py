"""BFCL checker on hand-made correct and incorrect calls, per category, plus data loading."""

from __future__ import annotations

import pytest

from factflow.evals.bfcl_checker import (
    ast_check,
    memory_check,
    multi_turn_check,
    relevance_check,
    simple_function_check,
    standardize_string,
)
from factflow.evals.bfcl_data import ALL_CATEGORIES, expand_categories, load_category, load_memory_prereqs
from factflow.evals.bfcl_runner import call_string, to_openai_tool

AREA = {
    "name": "calc.area",
    "description": "Area of a shape.",
    "parameters": {
        "type": "dict",
        "properties": {
            "base": {"type": "integer"},
            "height": {"type": "float"},
            "unit": {"type": "string"},
            "tags": {"type": "array", "items": {"type": "string"}},
            "opts": {"type": "dict", "properties": {"round": {"type": "boolean"}}},
        },
        "required": ["base", "height"],
    },
}
AREA_ANSWER = {
    "calc.area": {
        "base": [10],
        "height": [5.0],
        "unit": ["units", ""],
        "tags": [["a", "b"], ""],
        "opts": [{"round": [True]}, ""],
    }
}
WEATHER = {
    "name": "weather",
    "description": "Weather in a city.",
    "parameters": {"type": "dict", "properties": {"city": {"type": "string"}}, "required": ["city"]},
}


def check(call: dict) -> bool:
    return simple_function_check(AREA, call, AREA_ANSWER).valid


def test_simple_correct_and_int_to_float_coercion() -> None:
    assert check({"calc.area": {"base": 10, "height": 5.0}})
    assert check({"calc.area": {"base": 10, "height": 5}})  # int -> float is allowed
    assert check({"calc_area": {"base": 10, "height": 5}})  # dots become underscores in tool names


def test_simple_type_errors() -> None:
    assert not check({"calc.area": {"base": 10.0, "height": 5}})  # float -> int is not
    assert not check({"calc.area": {"base": "10", "height": 5}})
    assert not check({"calc.area": {"base": True, "height": 5}})


def test_optional_and_required_params() -> None:
    assert check({"calc.area": {"base": 10, "height": 5, "unit": "Units"}})  # case-insensitive string
    assert not check({"calc.area": {"base": 10, "height": 5, "unit": "cm"}})
    assert not check({"calc.area": {"height": 5}})  # missing required
    assert not check({"calc.area": {"base": 10, "height": 5, "color": "red"}})  # unexpected param
    strict = {"calc.area": {"base": [10], "height": [5.0], "unit": ["units"]}}
    result = simple_function_check(AREA, {"calc.area": {"base": 10, "height": 5}}, strict)
    assert not result.valid and result.error_type == "simple_function_checker:missing_optional"


def test_list_and_dict_values() -> None:
    assert check({"calc.area": {"base": 10, "height": 5, "tags": ["A", "b"]}})
    assert not check({"calc.area": {"base": 10, "height": 5, "tags": ["b", "a"]}})
    assert not check({"calc.area": {"base": 10, "height": 5, "tags": [1, 2]}})
    assert check({"calc.area": {"base": 10, "height": 5, "opts": {"round": True}}})
    assert not check({"calc.area": {"base": 10, "height": 5, "opts": {"round": False}}})


def test_wrong_function_name() -> None:
    result = simple_function_check(AREA, {"calc.volume": {"base": 10, "height": 5}}, AREA_ANSWER)
    assert result.error_type == "simple_function_checker:wrong_func_name"


def test_multiple_picks_the_expected_function() -> None:
    docs = [AREA, WEATHER]
    answers = [{"weather": {"city": ["Paris", "paris, france"]}}]
    assert ast_check("multiple", docs, [{"weather": {"city": "PARIS"}}], answers).valid
    assert not ast_check("multiple", docs, [{"calc.area": {"base": 10, "height": 5}}], answers).valid
    assert not ast_check("multiple", docs, [], answers).valid


def test_parallel_any_order_and_count() -> None:
    answers = [{"weather": {"city": ["Paris"]}}, {"weather": {"city": ["Rome"]}}]
    calls = [{"weather": {"city": "Rome"}}, {"weather": {"city": "Paris"}}]
    assert ast_check("parallel", [WEATHER], calls, answers).valid
    assert not ast_check("parallel", [WEATHER], calls[:1], answers).valid
    assert not ast_check("parallel", [WEATHER], [calls[0], calls[0]], answers).valid
    mixed = [{"calc.area": {"base": 10, "height": 5}}, {"weather": {"city": "Paris"}}]
    answers_pm = [{"weather": {"city": ["Paris"]}}, AREA_ANSWER]
    assert ast_check("parallel_multiple", [AREA, WEATHER], mixed, answers_pm).valid


def test_relevance_categories() -> None:
    assert relevance_check("irrelevance", []).valid
    assert not relevance_check("live_irrelevance", [{"weather": {"city": "x"}}]).valid
    assert relevance_check("live_relevance", [{"weather": {"city": "x"}}]).valid
    assert not relevance_check("live_relevance", []).valid


def test_memory_check_uses_bfcl_normalization() -> None:
    assert memory_check("Your name is Michael.", ["Michael"]).valid
    # BFCL drops '-' but keeps spaces, so 'thirty-five' does not match 'thirty five'
    assert not memory_check("You are thirty-five.", ["35", "thirty five"]).valid
    assert memory_check("You are 35 years old", ["35", "thirty five"]).valid
    assert not memory_check("I don't know", ["Seattle"]).valid


def test_string_standardization() -> None:
    assert standardize_string("April 1, 2024") == standardize_string("april 1 2024")


def test_real_case_correct_and_incorrect() -> None:
    entry = load_category("simple", limit=1)[0]
    good = [{"calculate_triangle_area": {"base": 10, "height": 5}}]
    assert ast_check("simple", entry.functions, good, entry.ground_truth).valid
    bad = [{"calculate_triangle_area": {"base": 5, "height": 10}}]
    assert not ast_check("simple", entry.functions, bad, entry.ground_truth).valid


def test_multi_turn_replays_on_bfcl_simulated_apis() -> None:
    entry = load_category("multi_turn_base", limit=1)[0]
    truth = entry.ground_truth
    perfect = [[[c] for c in turn] for turn in truth]  # one call per step
    assert multi_turn_check(perfect, truth, entry.model_dump(), "test_perfect").valid
    lazy = [[] for _ in truth]  # no calls at all: the file system state differs
    assert not multi_turn_check(lazy, truth, entry.model_dump(), "test_lazy").valid


@pytest.mark.parametrize("category", ALL_CATEGORIES)
def test_every_category_loads_with_answers(category: str) -> None:
    entries = load_category(category, limit=2)
    assert entries and all(e.category == category for e in entries)
    if category not in ("irrelevance", "live_irrelevance", "live_relevance"):
        assert all(e.ground_truth for e in entries)
    if category != "memory":
        assert all(e.functions for e in entries)
        for f in entries[0].functions:  # every doc converts to a valid OpenAI tool schema
            tool = to_openai_tool(f)["function"]
            assert tool["parameters"]["type"] == "object"
            assert set(tool["name"]) <= set(
                "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-"
            )


def test_memory_prereqs_and_groups() -> None:
    assert load_memory_prereqs("customer")
    assert expand_categories(["live"]) == [c for c in ALL_CATEGORIES if c.startswith("live_")]
    from factflow.errors import UserError

    with pytest.raises(UserError):
        expand_categories(["nope"])


def test_call_string_round_trips_python_literals() -> None:
    assert call_string("ls", {"a": True}) == "ls(a=True)"
    assert call_string("cd", {"folder": "it's"}) == 'cd(folder="it\'s")'
