"""The model side of BFCL's inference loop, for factflow's three modes.

BFCL drives every model through a `BaseHandler`: its loop adds the holdout-turn message in
multi_turn_miss_func, stops a turn after `MAXIMUM_STEP_LIMIT` (20) steps, runs the memory
prerequisites and snapshots, and decodes outputs. We reuse that loop as it is and only say how to
reach the model:

- `fc` (BFCL's FC mode): `EndpointHandler`, BFCL's own `OpenAICompletionsHandler` pointed at any
  OpenAI-compatible endpoint: native `tools=`, several calls per message allowed. The endpoint
  must return `tool_calls` (vLLM: `--enable-auto-tool-choice --tool-call-parser ...`).
- `prompt` (BFCL's prompting mode): BFCL's system prompt with the function docs, the model answers
  in text `[func(a=1), ...]`, BFCL's own parser decodes it. `ChatModelHandler` with any factflow
  engine, or `EndpointHandler(is_fc=False)` for an endpoint.
- `constrained` (ours, not a BFCL mode): `ChatModelHandler` with factflow's `bind_tools`, whose
  engines emit one grammar-constrained JSON action per step, so a name or type the docs don't
  allow can't be produced and a message holds at most one call.
"""

from __future__ import annotations

import json
import time
from typing import Any

from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, BaseMessage, SystemMessage, convert_to_messages

from factflow.evals.bfcl_official import bfcl, registry_name

__all__ = ["EndpointHandler", "ChatModelHandler", "make_handler"]


def _base() -> type:
    return bfcl().OpenAICompletionsHandler  # type: ignore[no-any-return]


def make_handler(
    mode: str,
    *,
    chat: BaseChatModel | None = None,
    base_url: str | None = None,
    api_key: str = "EMPTY",
    served_model: str = "",
    max_tokens: int | None = None,
    system_prefix: str = "",
) -> Any:
    """The handler for a mode: fc needs an endpoint; prompt takes an endpoint or a chat model;
    constrained needs a factflow chat model."""
    if mode == "fc" or (mode == "prompt" and base_url and chat is None):
        if not base_url:
            raise ValueError("fc mode needs an OpenAI-compatible endpoint (base_url)")
        return EndpointHandler(mode, base_url, api_key, served_model, max_tokens)
    if chat is None:
        raise ValueError(f"{mode} mode needs a chat model")
    return ChatModelHandler(mode, chat, system_prefix)


class EndpointHandler(_base()):  # type: ignore[misc]
    """BFCL's OpenAI chat-completions handler with the endpoint, model id and token cap given
    here rather than read from OPENAI_* environment variables."""

    def __init__(
        self, mode: str, base_url: str, api_key: str, served_model: str, max_tokens: int | None
    ) -> None:
        self._endpoint = {"base_url": base_url, "api_key": api_key, "max_retries": 1, "timeout": 600.0}
        self.max_tokens = max_tokens
        super().__init__(
            model_name=served_model,
            temperature=0.0,
            registry_name=registry_name(mode),
            is_fc_model=mode == "fc",
        )

    def _build_client_kwargs(self) -> dict[str, Any]:
        return dict(self._endpoint)

    def generate_with_backoff(self, **kwargs: Any) -> tuple[Any, float]:
        # `store` only tells OpenAI whether to keep the request; other servers may reject it.
        kwargs.pop("store", None)
        if self.max_tokens:
            kwargs["max_tokens"] = self.max_tokens
        start = time.time()
        response = self.client.chat.completions.create(**kwargs)
        return response, time.time() - start


def _ai_as_openai(ai: AIMessage) -> dict[str, Any]:
    message: dict[str, Any] = {"role": "assistant", "content": str(ai.content)}
    if ai.tool_calls:
        message["tool_calls"] = [
            {
                "id": call["id"],
                "type": "function",
                "function": {"name": call["name"], "arguments": json.dumps(call["args"])},
            }
            for call in ai.tool_calls
        ]
    return message


def _usage(ai: AIMessage) -> tuple[int, int]:
    usage: dict[str, Any] = dict(ai.usage_metadata or {})
    return int(usage.get("input_tokens", 0) or 0), int(usage.get("output_tokens", 0) or 0)


class ChatModelHandler(_base()):  # type: ignore[misc]
    """BFCL's OpenAI handler with the API call swapped for a factflow chat model (any engine).

    Messages stay in OpenAI's dict form, as BFCL keeps them; LangChain converts them per call.
    `system_prefix` (a rendered playbook, for ACE) goes first as a system message.
    """

    def __init__(self, mode: str, chat: BaseChatModel, system_prefix: str = "") -> None:
        self.chat = chat
        self.system_prefix = system_prefix
        # The parent builds an OpenAI client it never uses here; give it a placeholder key.
        super().__init__(
            model_name=registry_name(mode),
            temperature=0.0,
            registry_name=registry_name(mode),
            is_fc_model=mode != "prompt",
        )

    def _build_client_kwargs(self) -> dict[str, Any]:
        return {"api_key": "unused", "base_url": "http://127.0.0.1:9/v1"}

    def _messages(self, messages: list[Any]) -> list[BaseMessage]:
        out = convert_to_messages(messages)
        if self.system_prefix.strip():
            out.insert(0, SystemMessage(content=self.system_prefix.strip()))
        return out

    def _query_FC(self, inference_data: dict[str, Any]) -> tuple[AIMessage, float]:
        start = time.time()
        bound = self.chat.bind_tools(inference_data["tools"]) if inference_data["tools"] else self.chat
        ai = bound.invoke(self._messages(inference_data["message"]))
        return ai, time.time() - start  # type: ignore[return-value]

    def _parse_query_response_FC(self, ai: AIMessage) -> dict[str, Any]:
        tokens_in, tokens_out = _usage(ai)
        responses: Any = str(ai.content)
        if ai.tool_calls:
            responses = [{call["name"]: json.dumps(call["args"])} for call in ai.tool_calls]
        return {
            "model_responses": responses,
            "model_responses_message_for_chat_history": _ai_as_openai(ai),
            "tool_call_ids": [call["id"] for call in ai.tool_calls],
            "input_token": tokens_in,
            "output_token": tokens_out,
        }

    def _query_prompting(self, inference_data: dict[str, Any]) -> tuple[AIMessage, float]:
        start = time.time()
        ai = self.chat.invoke(self._messages(inference_data["message"]))
        return ai, time.time() - start  # type: ignore[return-value]

    def _parse_query_response_prompting(self, ai: AIMessage) -> dict[str, Any]:
        tokens_in, tokens_out = _usage(ai)
        return {
            "model_responses": str(ai.content),
            "model_responses_message_for_chat_history": {"role": "assistant", "content": str(ai.content)},
            "input_token": tokens_in,
            "output_token": tokens_out,
        }
