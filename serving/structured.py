"""Structured output and tool binding shared by both engines.

Each engine only says how to constrain one call to a JSON schema (`_bind_json_schema`: xgrammar
in-process, `response_format` on vLLM); this mixin builds `with_structured_output` and
`bind_tools` on top, so the two engines behave the same for the rest of factflow.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from typing import Any

from langchain_core.exceptions import OutputParserException
from langchain_core.messages import AIMessage, BaseMessage
from langchain_core.prompt_values import PromptValue
from langchain_core.runnables import Runnable, RunnableLambda
from pydantic import BaseModel, ValidationError

from factflow.serving.actions import action_schema, parse_action, render_messages_for_actions

__all__ = ["StructuredOutputMixin", "schema_of"]


def schema_of(schema: type[BaseModel] | dict[str, Any]) -> dict[str, Any]:
    if isinstance(schema, dict):
        return schema
    return schema.model_json_schema()


def _as_messages(value: Any) -> list[BaseMessage]:
    from langchain_core.messages import HumanMessage

    if isinstance(value, PromptValue):
        return value.to_messages()
    if isinstance(value, str):
        return [HumanMessage(content=value)]
    return list(value)


class StructuredOutputMixin:
    """Needs `_bind_json_schema(schema) -> Runnable[messages, AIMessage]` from the engine."""

    def _bind_json_schema(
        self, schema: dict[str, Any], max_tokens: int | None = None, repetition_penalty: float | None = None
    ) -> Runnable:  # pragma: no cover - abstract
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
        """Constrained decoding to `schema`; returns the pydantic object (or dict for a dict schema).

        `max_tokens` overrides the model's answer cap for this output: a JSON object cut off by the
        cap can never parse, so callers that need long objects (the ACE roles) raise it here.
        `repetition_penalty` (vLLM semantics, both engines) keeps a small model from looping inside
        a JSON string until that cap.
        """
        bound = self._bind_json_schema(schema_of(schema), max_tokens, repetition_penalty)

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
        tool_choice: str | None = None,
        **kwargs: Any,
    ) -> Runnable:
        """Tool calling through the constrained JSON action format (see serving/actions.py)."""
        tools = list(tools)
        must_call = tool_choice in ("any", "required")
        bound = self._bind_json_schema(action_schema(tools, allow_final=not must_call))
        prepare: Callable[[Any], list[BaseMessage]] = lambda value: render_messages_for_actions(  # noqa: E731
            _as_messages(value), tools
        )

        def to_message(message: AIMessage) -> AIMessage:
            parsed = parse_action(str(message.content), tools)
            parsed.response_metadata = dict(message.response_metadata)
            parsed.usage_metadata = message.usage_metadata
            return parsed

        return RunnableLambda(prepare) | bound | RunnableLambda(to_message)
