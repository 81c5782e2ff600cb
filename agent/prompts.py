"""Prompts of the agent: the per-turn system prompt and the constrained citation pass.

Every bullet and fact is shown as `[id] text`, so the model can cite by copying an id. A 135M
model rarely does that on its own, so `cite_prompt` backs it with a constrained pass whose JSON
schema only admits ids that were actually shown (see `agent/graph.py`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from factflow.agent.state import FactRef

__all__ = ["SYSTEM_INTRO", "system_prompt", "cite_prompt", "decide_note", "TOOL_BUDGET_NOTE"]

SYSTEM_INTRO = (
    "You are factflow, a careful assistant. Answer the user's question in one or two sentences, "
    "using the facts below. After each sentence that uses a fact, write the fact's id in square "
    "brackets, for example [f-1a2b]. If the facts do not answer the question, say you do not know."
)

TOOL_BUDGET_NOTE = "You have used all tool calls allowed for this question. Answer now with what you know."


def system_prompt(playbook_text: str, facts: Sequence[FactRef], tool_results: Sequence[str] = ()) -> str:
    """System prompt of one turn: instructions, bullets `[id] text`, facts `[id] text`, tool results."""
    parts = [SYSTEM_INTRO]
    if playbook_text.strip():
        parts.append("Playbook (strategies learned from feedback):\n" + playbook_text.strip())
    if facts:
        parts.append("Facts:\n" + "\n".join(f"[{f['id']}] {f['text']}" for f in facts))
    else:
        parts.append("Facts: none found for this question.")
    if tool_results:
        parts.append("Tool results:\n" + "\n".join(f"- {line}" for line in tool_results))
    return "\n\n".join(parts)


def decide_note(tools: Sequence[Any], *, can_answer: bool) -> str:
    """The question put to the model before each step of the decide protocol."""
    lines = ["Choose the next step."]
    if can_answer:
        lines.append('Reply "answer" if the facts and tool results above are enough to answer.')
    lines.append("Otherwise pick the one tool that gets what is missing:")
    for tool in tools:
        lines.append(f"- {tool.name}: {(tool.description or '').strip().splitlines()[0]}")
    return "\n".join(lines)


def cite_prompt(question: str, answer: str, facts: Sequence[FactRef], bullets_text: str) -> str:
    """Ask which of the shown facts (and bullets) support an answer; the schema restricts the ids."""
    listed = "\n".join(f"[{f['id']}] {f['text']}" for f in facts) or "(none)"
    parts = [
        "Which facts support the answer below? List the ids of the supporting facts.",
        f"Facts:\n{listed}",
    ]
    if bullets_text.strip():
        parts.append(f"Playbook bullets:\n{bullets_text.strip()}")
    parts.append(f"Question: {question}\nAnswer: {answer}")
    return "\n\n".join(parts)
