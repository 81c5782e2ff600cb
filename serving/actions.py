"""Tool calling through a constrained JSON action, for models and engines without native tools.

The model is asked for exactly one JSON object, and constrained decoding makes it parse:
    {"action": "<tool name>", "arguments": {...}}   -> an AIMessage with one tool call
    {"action": "final_answer", "answer": "..."}    -> an AIMessage with the answer as content
Each tool's `arguments` are constrained by that tool's own JSON schema, so even the 135M default
model produces a well-formed call. Both engines share this module, so the rest of factflow cannot
tell them apart.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Sequence
from typing import Any

from langchain_core.messages import AIMessage, BaseMessage, SystemMessage, ToolMessage
from langchain_core.tools import BaseTool
from langchain_core.utils.function_calling import convert_to_openai_tool

__all__ = ["FINAL_ANSWER", "action_schema", "tools_prompt", "parse_action", "render_messages_for_actions"]

FINAL_ANSWER = "final_answer"


def _openai_functions(tools: Sequence[Any]) -> list[dict[str, Any]]:
    return [convert_to_openai_tool(t)["function"] for t in tools]


def action_schema(tools: Sequence[Any], *, allow_final: bool = True) -> dict[str, Any]:
    """JSON schema of one action: a call of one of `tools`, or the final answer."""
    options: list[dict[str, Any]] = []
    for fn in _openai_functions(tools):
        params = fn.get("parameters") or {"type": "object", "properties": {}}
        params = {k: v for k, v in params.items() if k not in ("title", "description")}
        options.append(
            {
                "type": "object",
                "properties": {"action": {"const": fn["name"]}, "arguments": params},
                "required": ["action", "arguments"],
                "additionalProperties": False,
            }
        )
    if allow_final:
        options.append(
            {
                "type": "object",
                "properties": {"action": {"const": FINAL_ANSWER}, "answer": {"type": "string"}},
                "required": ["action", "answer"],
                "additionalProperties": False,
            }
        )
    return {"anyOf": options} if len(options) > 1 else options[0]


def tools_prompt(tools: Sequence[Any]) -> str:
    lines = [
        "You can call tools. Reply with one JSON object only.",
        'To call a tool: {"action": "<tool name>", "arguments": {...}}',
        f'To answer: {{"action": "{FINAL_ANSWER}", "answer": "<your answer>"}}',
        "Tools:",
    ]
    for fn in _openai_functions(tools):
        args = json.dumps((fn.get("parameters") or {}).get("properties", {}))
        lines.append(f"- {fn['name']}: {fn.get('description', '').strip()} Arguments: {args}")
    return "\n".join(lines)


def render_messages_for_actions(messages: Sequence[BaseMessage], tools: Sequence[Any]) -> list[BaseMessage]:
    """Add the tool instructions to the system prompt and show past calls/results as plain turns."""
    out: list[BaseMessage] = []
    instructions = tools_prompt(tools)
    has_system = False
    for m in messages:
        if isinstance(m, SystemMessage):
            out.append(SystemMessage(content=f"{m.content}\n\n{instructions}"))
            has_system = True
        elif isinstance(m, AIMessage) and m.tool_calls:
            calls = [{"action": c["name"], "arguments": c["args"]} for c in m.tool_calls]
            out.append(AIMessage(content=json.dumps(calls[0] if len(calls) == 1 else calls)))
        elif isinstance(m, ToolMessage):
            from langchain_core.messages import HumanMessage

            out.append(HumanMessage(content=f"Result of {m.name or 'the tool'}: {m.content}"))
        else:
            out.append(m)
    if not has_system:
        out.insert(0, SystemMessage(content=instructions))
    return out


def parse_action(text: str, tools: Sequence[BaseTool | Any] = ()) -> AIMessage:
    """Turn the model's JSON action into an AIMessage (tool call or final answer).

    Output that is not a valid action is returned as plain content, so the caller sees what the
    model said instead of an exception (the graph's loop guard bounds retries).
    """
    try:
        data = json.loads(text)
    except json.JSONDecodeError:
        return AIMessage(content=text)
    if not isinstance(data, dict) or "action" not in data:
        return AIMessage(content=text)
    if data["action"] == FINAL_ANSWER:
        return AIMessage(content=str(data.get("answer", "")))
    call = {
        "name": str(data["action"]),
        "args": data.get("arguments") or {},
        "id": f"call_{uuid.uuid4().hex[:12]}",
        "type": "tool_call",
    }
    return AIMessage(content="", tool_calls=[call])  # type: ignore[list-item]
