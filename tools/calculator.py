"""A safe calculator tool: arithmetic parsed with `ast`, never `eval`.

Only numbers, + - * / // % **, unary +/-, parentheses and a few math functions are allowed;
exponents and result sizes are bounded so `9**9**9` cannot hang the agent.
"""

from __future__ import annotations

import ast
import math
import operator
from collections.abc import Callable
from typing import Any

from langchain_core.tools import BaseTool, StructuredTool
from pydantic import BaseModel, ConfigDict, Field

__all__ = ["CalculatorArgs", "calculate", "calculator", "make_calculator_tool"]

_BIN: dict[type, Callable[[Any, Any], Any]] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv,
    ast.Mod: operator.mod,
    ast.Pow: operator.pow,
}
_UNARY: dict[type, Callable[[Any], Any]] = {ast.UAdd: operator.pos, ast.USub: operator.neg}
_FUNCS: dict[str, Callable[..., float]] = {
    "sqrt": math.sqrt,
    "log": math.log,
    "log10": math.log10,
    "exp": math.exp,
    "abs": abs,
    "round": round,
    "min": min,
    "max": max,
    "sin": math.sin,
    "cos": math.cos,
    "tan": math.tan,
}
_CONSTS = {"pi": math.pi, "e": math.e}
_MAX_EXPONENT = 1000
_MAX_ABS = 1e100
_MAX_LEN = 500


class CalculatorArgs(BaseModel):
    model_config = ConfigDict(extra="forbid")
    expression: str = Field(
        description="Arithmetic like '(3 + 4) * 2.5' or 'sqrt(2) / 3'.", max_length=_MAX_LEN
    )


def _eval(node: ast.AST) -> float | int:
    if isinstance(node, ast.Expression):
        return _eval(node.body)
    if isinstance(node, ast.Constant) and type(node.value) in (int, float):
        return node.value  # type: ignore[return-value]  # int or float, checked above
    if isinstance(node, ast.Name) and node.id in _CONSTS:
        return _CONSTS[node.id]
    if isinstance(node, ast.UnaryOp) and type(node.op) in _UNARY:
        return _UNARY[type(node.op)](_eval(node.operand))
    if isinstance(node, ast.BinOp) and type(node.op) in _BIN:
        left, right = _eval(node.left), _eval(node.right)
        if isinstance(node.op, ast.Pow) and abs(right) > _MAX_EXPONENT:
            raise ValueError(f"exponent {right} is too large (max {_MAX_EXPONENT})")
        out = _BIN[type(node.op)](left, right)
        if isinstance(out, complex) or abs(out) > _MAX_ABS:
            raise ValueError("result is out of range")
        return out  # type: ignore[no-any-return]
    if (
        isinstance(node, ast.Call)
        and isinstance(node.func, ast.Name)
        and node.func.id in _FUNCS
        and not node.keywords
    ):
        return _FUNCS[node.func.id](*[_eval(a) for a in node.args])
    raise ValueError(f"'{ast.unparse(node)}' is not allowed: use numbers, + - * / // % ** and math functions")


def calculate(expression: str) -> float | int:
    """Value of an arithmetic expression; ValueError with a fix hint for anything else."""
    if len(expression) > _MAX_LEN:
        raise ValueError(f"expression is longer than {_MAX_LEN} characters")
    try:
        tree = ast.parse(expression.strip(), mode="eval")
    except SyntaxError:
        raise ValueError(f"cannot parse {expression!r}: write plain arithmetic like '2 * (3 + 4)'") from None
    try:
        return _eval(tree)
    except ZeroDivisionError:
        raise ValueError("division by zero") from None
    except (OverflowError, TypeError) as exc:
        raise ValueError(f"cannot compute: {exc}") from None


def _run(expression: str) -> str:
    # Errors become observations the model can fix, not exceptions.
    try:
        value = calculate(expression)
    except ValueError as exc:
        return f"error: {exc}; please fix the expression and retry"
    if isinstance(value, float) and value.is_integer() and abs(value) < 1e15:
        return str(int(value))
    return repr(value)


def make_calculator_tool() -> BaseTool:
    return StructuredTool.from_function(
        func=_run,
        name="calculator",
        args_schema=CalculatorArgs,
        description="Evaluate an arithmetic expression exactly (no variables, no code).",
    )


calculator = make_calculator_tool()
