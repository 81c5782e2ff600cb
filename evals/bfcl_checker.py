"""BFCL v4 scoring: AST match (single turn), relevance, multi-turn state/response, memory answers.

The AST rules are a port of `bfcl_eval.eval_checker.ast_eval.ast_checker` for Python-typed
functions (that module imports every provider SDK through `model_config`, so it can't be imported
here). The rules, as BFCL states them:

- the function name must match (after dots -> underscores, as for OpenAI-style tool names);
- every required parameter must be present; no parameter outside the doc or the answer;
- a parameter's type must match its doc type, with Python's int -> float widening allowed;
  tuples compare as lists; arrays are type-checked one level deep;
- the value must be in the possible-answer list; strings compare case-insensitively after
  dropping spaces and `,./-_*^`; dicts and lists of dicts compare key by key;
- an answer list containing "" marks the parameter optional: it may be omitted.
- parallel: same number of calls, matched without order; multiple: exactly one call, checked
  against the expected function among those offered.

Multi-turn and memory reuse BFCL's own checkers (`multi_turn_checker`, `agentic_checker`), which
import cleanly.
"""

from __future__ import annotations

import re
from typing import Any, cast

from pydantic import BaseModel, ConfigDict

__all__ = [
    "CheckResult",
    "standardize_string",
    "simple_function_check",
    "ast_check",
    "relevance_check",
    "memory_check",
    "multi_turn_check",
    "tool_name",
]

PYTHON_TYPES: dict[str, type] = {
    "string": str,
    "integer": int,
    "float": float,
    "boolean": bool,
    "array": list,
    "tuple": list,
    "dict": dict,
    "any": str,
}
_NESTED = ("array", "tuple")


class CheckResult(BaseModel):
    """Verdict of one test case; `error_type` follows BFCL's names."""

    model_config = ConfigDict(extra="forbid")

    valid: bool
    error: str = ""
    error_type: str = ""


_OK = CheckResult(valid=True)


def tool_name(function_name: str) -> str:
    """OpenAI-style tool names allow only [a-zA-Z0-9_-]: BFCL maps dots to underscores."""
    return re.sub(r"[^a-zA-Z0-9_-]", "_", function_name)[:64]


def standardize_string(text: str) -> str:
    """Lowercase, drop spaces and `,./-_*^`, single -> double quotes (BFCL's string rule)."""
    return re.sub(r"[ \,\.\/\-\_\*\^]", "", text).lower().replace("'", '"')


def _fail(error_type: str, error: str) -> CheckResult:
    return CheckResult(valid=False, error=error, error_type=error_type)


def _answer_type(possible: list[Any]) -> type | None:
    for answer in possible:
        if answer != "":
            return type(answer)
    return None


def _type_ok(value: Any, possible: list[Any], expected: type, nested: type | None) -> tuple[bool, bool]:  # noqa: E501
    """(valid, is_variable). A value typed like the answers (not the doc) counts as a variable."""
    answer_type = _answer_type(possible)
    is_variable = answer_type is not None and answer_type is not expected
    if type(value) is expected:
        if nested is None:
            return True, is_variable
        items = cast("list[Any]", value)  # `type(value) is expected` narrowed it to object; it's a list
        for answer in possible:
            if isinstance(answer, list) and all(_type_ok(item, answer, nested, None)[0] for item in items):
                return True, is_variable
        return False, is_variable
    if answer_type is not None and type(value) is answer_type:
        return True, True
    return False, is_variable


def _std(value: Any) -> Any:
    return standardize_string(value) if isinstance(value, str) else value


def _dict_ok(value: dict[str, Any], possibles: list[Any]) -> bool:
    for possible in possibles:
        if possible == "" or not isinstance(possible, dict):
            continue
        keys_ok = all(k in possible and _std(v) in [_std(p) for p in possible[k]] for k, v in value.items())
        missing = any(k not in value and "" not in v for k, v in possible.items())
        if keys_ok and not missing:
            return True
    return False


def _list_dict_ok(value: list[Any], possibles: list[Any]) -> bool:
    for possible in possibles:
        if not isinstance(possible, list) or len(possible) != len(value):
            continue
        if all(isinstance(v, dict) and _dict_ok(v, [p]) for v, p in zip(value, possible, strict=True)):
            return True
    return False


def simple_function_check(doc: dict[str, Any], call: dict[str, Any], answer: dict[str, Any]) -> CheckResult:
    """Check one call `{name: {param: value}}` against one answer `{name: {param: [options]}}`."""
    possible: dict[str, list[Any]] = next(iter(answer.values()))
    name = doc["name"]
    if name not in call and tool_name(name) not in call:
        return _fail("simple_function_checker:wrong_func_name", f"function {name!r} not in {list(call)}")
    args: dict[str, Any] = call.get(name, call.get(tool_name(name))) or {}
    props: dict[str, Any] = doc.get("parameters", {}).get("properties", {})
    for param in doc.get("parameters", {}).get("required", []):
        if param not in args:
            return _fail("simple_function_checker:missing_required", f"missing required parameter {param!r}")
    for param, value in args.items():
        if param not in props or param not in possible:
            return _fail("simple_function_checker:unexpected_param", f"unexpected parameter {param!r}")
        type_name = props[param].get("type", "any")
        expected = PYTHON_TYPES.get(type_name, str)
        nested = None
        if type_name in _NESTED:
            nested = PYTHON_TYPES.get(props[param].get("items", {}).get("type", "any"), str)
        if type_name == "tuple" and isinstance(value, tuple):
            value = list(value)
        if type_name == "float" and type(value) is int:  # Python widens int -> float
            value = float(value)
        ok, is_variable = _type_ok(value, possible[param], expected, nested)
        if not ok:
            return _fail(
                "type_error:simple",
                f"parameter {param!r}: expected {type_name}, got {type(value).__name__} ({value!r})",
            )
        if not is_variable:
            if expected is dict:
                if not _dict_ok(value, possible[param]):
                    return _fail("value_error:dict_value", f"parameter {param!r}: {value!r} not allowed")
                continue
            if expected is list and nested is dict:
                if not _list_dict_ok(value, possible[param]):
                    return _fail("value_error:list_dict", f"parameter {param!r}: {value!r} not allowed")
                continue
            if expected is str:
                if _std(value) not in [_std(p) for p in possible[param] if isinstance(p, str)]:
                    return _fail(
                        "value_error:string", f"parameter {param!r}: {value!r} not in {possible[param]}"
                    )
                continue
            if expected is list:
                options = [[_std(x) for x in p] for p in possible[param] if isinstance(p, list)]
                if [_std(x) for x in value] not in options:
                    return _fail(
                        "value_error:list/tuple", f"parameter {param!r}: {value!r} not in {possible[param]}"
                    )
                continue
        if value not in possible[param]:
            return _fail("value_error:others", f"parameter {param!r}: {value!r} not in {possible[param]}")
    for param, options in possible.items():
        if param not in args and "" not in options:
            return _fail("simple_function_checker:missing_optional", f"parameter {param!r} must be given")
    return _OK


def _find_doc(docs: list[dict[str, Any]], name: str) -> dict[str, Any]:
    for doc in docs:
        if doc["name"] == name:
            return doc
    raise ValueError(f"answer names function {name!r}, which the test case does not offer")


def ast_check(
    category: str, docs: list[dict[str, Any]], calls: list[dict[str, Any]], answers: list[dict[str, Any]]
) -> CheckResult:
    """Single-turn AST check: `calls` is a list of `{name: args}` in the model's order."""
    if len(calls) != len(answers):
        return _fail("wrong_count", f"expected {len(answers)} call(s), got {len(calls)}")
    if "parallel" in category:
        matched: set[int] = set()
        for answer in answers:
            doc = _find_doc(docs, next(iter(answer)))
            last = _fail("parallel:cannot_find_match", f"no call matches {answer}")
            for index, call in enumerate(calls):
                if index in matched:
                    continue
                result = simple_function_check(doc, call, answer)
                if result.valid:
                    matched.add(index)
                    last = result
                    break
                last = _fail(
                    "parallel:cannot_find_match", f"no call matches {next(iter(answer))}: {result.error}"
                )
            if not last.valid:
                return last
        return _OK
    answer = answers[0]
    return simple_function_check(_find_doc(docs, next(iter(answer))), calls[0], answer)


def relevance_check(category: str, calls: list[dict[str, Any]]) -> CheckResult:
    """irrelevance / live_irrelevance: no call is right; live_relevance: at least one call."""
    if category == "live_relevance":
        return _OK if calls else _fail("relevance:no_call", "expected a function call, got none")
    if calls:
        return _fail("irrelevance:called", f"expected no call, got {[next(iter(c)) for c in calls]}")
    return _OK


def memory_check(answer: str, possible: list[str]) -> CheckResult:
    """BFCL's agentic checker: any possible answer appears (word-bounded, normalized) in the reply."""
    from bfcl_eval.eval_checker.agentic_eval.agentic_checker import agentic_checker

    result = agentic_checker(answer, possible)
    if result["valid"]:
        return _OK
    return _fail(result.get("error_type", "agentic:answer_not_found"), str(result.get("error_message", "")))


def multi_turn_check(
    turn_calls: list[list[list[str]]], ground_truth: list[list[str]], entry: dict[str, Any], run_name: str
) -> CheckResult:
    """BFCL's multi-turn checker: replay model and truth calls on the simulated APIs, compare state
    and responses per turn. `turn_calls[turn][step]` is a list of call strings like `cd(folder='x')`.
    """
    from bfcl_eval.eval_checker.multi_turn_eval.multi_turn_checker import multi_turn_checker

    if len(turn_calls) != len(ground_truth):
        return _fail(
            "multi_turn:turn_count", f"{len(turn_calls)} turns answered, {len(ground_truth)} expected"
        )
    result = multi_turn_checker(turn_calls, ground_truth, entry, entry["id"].rsplit("_", 1)[0], run_name)
    if result.get("valid"):
        return _OK
    return _fail(str(result.get("error_type", "multi_turn")), str(result.get("error_message", ""))[:500])
