"""Structured output and tool binding shared by every engine.

Each engine only says how to constrain one call to a JSON schema (`_bind_json_schema`: xgrammar
in-process, `response_format` on an OpenAI-compatible server) and, if it has them, how to bind the
server's native tools (`_bind_native_tools`). This mixin builds `with_structured_output` and
`bind_tools` on top, so the rest of factflow never asks which engine or tool format it talks to.

Tool calls come in two formats (`tool_call_format`):
- "json_action": the constrained JSON action of serving/actions.py, well-formed even on a 135M model;
- "native": the server's own `tools=` / `tool_calls` (several calls per message, run in order).
Structured output on a server without `response_format` support falls back to `prompted_json`:
the schema in the prompt, validation, one retry with the error, then a reported failure.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from typing import Any, Literal

from langchain_core.exceptions import OutputParserException
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage
from langchain_core.prompt_values import PromptValue
from langchain_core.runnables import Runnable, RunnableLambda
from langchain_core.utils.function_calling import convert_to_openai_tool
from pydantic import BaseModel, ValidationError

from factflow.errors import UserError
from factflow.serving.actions import action_schema, parse_action, render_messages_for_actions

__all__ = ["StructuredOutputMixin", "schema_of", "resolve_tool_choice", "prompted_json", "ToolCallFormat"]

ToolCallFormat = Literal["native", "json_action"]


def schema_of(schema: type[BaseModel] | dict[str, Any]) -> dict[str, Any]:
    if isinstance(schema, dict):
        return schema
    return schema.model_json_schema()


def _as_messages(value: Any) -> list[BaseMessage]:
    if isinstance(value, PromptValue):
        return value.to_messages()
    if isinstance(value, str):
        return [HumanMessage(content=value)]
    return list(value)


def _tool_name(tool: Any) -> str:
    return str(convert_to_openai_tool(tool)["function"]["name"])


def resolve_tool_choice(tools: Sequence[Any], tool_choice: Any) -> tuple[list[Any], bool]:
    """(tools the model may call, whether it must call one) for LangChain's `tool_choice` values.

    None/"auto": any tool or an answer; "any"/"required"/True: some tool; "none": no tool; a tool
    name (or OpenAI's `{"type": "function", "function": {"name": ...}}`): exactly that tool. A name
    that is not among `tools` is rejected rather than quietly treated as "auto".
    """
    tools = list(tools)
    if tool_choice in (None, "auto", False):
        return tools, False
    if tool_choice in ("any", "required", True):
        return tools, True
    if tool_choice == "none":
        return [], False
    if isinstance(tool_choice, dict):
        tool_choice = (tool_choice.get("function") or {}).get("name", tool_choice.get("name"))
    if isinstance(tool_choice, str):
        named = [t for t in tools if _tool_name(t) == tool_choice]
        if named:
            return named, True
    names = sorted(_tool_name(t) for t in tools)
    raise UserError(
        f"tool_choice={tool_choice!r} names no bound tool; use 'auto', 'any', 'none' or one of {names}"
    )


def _json_text(text: str) -> str:
    """The JSON object inside a reply that may wrap it in prose or a ``` fence."""
    start, end = text.find("{"), text.rfind("}")
    return text[start : end + 1] if 0 <= start < end else text


def prompted_json(plain: Runnable, schema: dict[str, Any], validate: Callable[[AIMessage], Any]) -> Runnable:
    """Structured output without server support: schema in the prompt, validate, retry once.

    `plain` is the unconstrained model; `validate` raises OutputParserException on a bad reply.
    The second failure is raised (with both errors), never swallowed.
    """
    instructions = (
        "Reply with one JSON object and nothing else. It must match this JSON schema:\n"
        + json.dumps(schema, separators=(",", ":"))
    )

    def run(value: Any) -> AIMessage:
        messages = _as_messages(value)
        messages = [*messages[:-1], HumanMessage(content=f"{messages[-1].content}\n\n{instructions}")]
        errors: list[str] = []
        for _attempt in (1, 2):
            reply = plain.invoke(messages)
            text = _json_text(str(reply.content))
            candidate = AIMessage(content=text, response_metadata=dict(reply.response_metadata), id=reply.id)
            try:
                validate(candidate)
                return candidate
            except OutputParserException as exc:
                errors.append(str(exc).splitlines()[0])
                messages = [
                    *messages,
                    AIMessage(content=str(reply.content)),
                    HumanMessage(content=f"That reply is invalid ({errors[-1]}). {instructions}"),
                ]
        raise OutputParserException(
            "no valid JSON for the schema after one retry: " + " / ".join(errors),
            llm_output=str(reply.content),
        )

    return RunnableLambda(run)


class StructuredOutputMixin:
    """Needs `_bind_json_schema(schema) -> Runnable[messages, AIMessage]` from the engine.

    Engines with native tool calls also override `tool_call_format` and `_bind_native_tools`;
    engines whose server may lack `response_format` override `_structured_runnable`.
    """

    def _bind_json_schema(
        self, schema: dict[str, Any], max_tokens: int | None = None, repetition_penalty: float | None = None
    ) -> Runnable:  # pragma: no cover - abstract
        raise NotImplementedError

    def _structured_runnable(
        self,
        schema: dict[str, Any],
        validate: Callable[[AIMessage], Any],
        max_tokens: int | None,
        repetition_penalty: float | None,
    ) -> Runnable:
        """messages -> AIMessage whose content validates (constrained decoding by default)."""
        return self._bind_json_schema(schema, max_tokens, repetition_penalty)

    @property
    def tool_call_format(self) -> ToolCallFormat:
        """How `bind_tools` talks to the model; engines with server-side tools may say "native"."""
        return "json_action"

    def _bind_native_tools(self, tools: list[Any], tool_choice: Any) -> Runnable:  # pragma: no cover
        raise NotImplementedError

    def with_structured_output(  # type: ignore[override]
        self,
        schema: type[BaseModel] | dict[str, Any],
        *,
        include_raw: bool = False,
        max_tokens: int | None = None,
        repetition_penalty: float | None = None,
        **kwargs: Any,
    ) -> Runnable:
        """Output constrained to `schema`; returns the pydantic object (or dict for a dict schema).

        `max_tokens` overrides the model's answer cap for this output: a JSON object cut off by the
        cap can never parse, so callers that need long objects (the ACE roles) raise it here.
        `repetition_penalty` (vLLM semantics) keeps a small model from looping inside a JSON
        string until that cap.
        """

        def parse(message: AIMessage) -> Any:
            text = message.content if isinstance(message.content, str) else json.dumps(message.content)
            try:
                if isinstance(schema, dict):
                    return json.loads(text)
                return schema.model_validate_json(text)
            except (ValidationError, json.JSONDecodeError) as exc:
                raise OutputParserException(
                    f"output does not match the schema: {exc}", llm_output=text
                ) from exc

        bound = self._structured_runnable(schema_of(schema), parse, max_tokens, repetition_penalty)
        if not include_raw:
            return bound | RunnableLambda(parse)

        def parse_with_raw(message: AIMessage) -> dict[str, Any]:
            try:
                return {"raw": message, "parsed": parse(message), "parsing_error": None}
            except OutputParserException as exc:
                return {"raw": message, "parsed": None, "parsing_error": exc}

        return bound | RunnableLambda(parse_with_raw)

    def bind_tools(  # type: ignore[override]
        self,
        tools: Sequence[Any],
        *,
        tool_choice: Any = None,
        **kwargs: Any,
    ) -> Runnable:
        """Tools in the engine's `tool_call_format`; `tool_choice` is honoured or rejected."""
        allowed, must_call = resolve_tool_choice(tools, tool_choice)
        if not allowed:  # tool_choice="none": a plain call
            return self.bind()  # type: ignore[attr-defined,no-any-return]
        if self.tool_call_format == "native":
            choice = ("any" if len(allowed) > 1 else _tool_name(allowed[0])) if must_call else "auto"
            return self._bind_native_tools(allowed, choice)
        bound = self._bind_json_schema(action_schema(allowed, allow_final=not must_call))
        prepare: Callable[[Any], list[BaseMessage]] = lambda value: render_messages_for_actions(  # noqa: E731
            _as_messages(value), allowed
        )

        def to_message(message: AIMessage) -> AIMessage:
            parsed = parse_action(str(message.content), allowed)
            parsed.response_metadata = dict(message.response_metadata)
            parsed.usage_metadata = message.usage_metadata
            return parsed

        return RunnableLambda(prepare) | bound | RunnableLambda(to_message)
