"""One chat-model interface, two engines: `load_chat_model(settings)`.

engine = "transformers" -> `TransformersChatModel` in this process;
engine = "vllm"         -> `VLLMChatModel` (langchain-openai ChatOpenAI) against `base_url`, or against
                           the server `factflow serve` started on host:port.
Both are LangChain `BaseChatModel`s with the same streaming, stop, structured-output and tool-call
behaviour, so nothing downstream branches on the engine.
"""

from __future__ import annotations

from typing import Any

from langchain_core.language_models import BaseChatModel
from langchain_core.runnables import Runnable
from langchain_openai import ChatOpenAI

from factflow.errors import UserError
from factflow.serving.structured import StructuredOutputMixin
from factflow.settings import Settings, get_settings

__all__ = ["load_chat_model", "VLLMChatModel", "vllm_base_url"]


# The mixin's bind_tools/with_structured_output take the BaseChatModel signatures; langchain-openai's
# overrides add provider keywords, so mypy sees the two bases as incompatible. The mixin's win (MRO).
class VLLMChatModel(StructuredOutputMixin, ChatOpenAI):  # type: ignore[misc]
    """ChatOpenAI against a vLLM server; JSON-schema output through vLLM structured outputs."""

    def _bind_json_schema(
        self, schema: dict[str, Any], max_tokens: int | None = None, repetition_penalty: float | None = None
    ) -> Runnable:
        fmt = {"type": "json_schema", "json_schema": {"name": "output", "schema": schema}}
        extra: dict[str, Any] = {"max_completion_tokens": max_tokens} if max_tokens else {}
        if repetition_penalty:
            extra["extra_body"] = {"repetition_penalty": repetition_penalty}  # a vLLM sampling param
        return self.bind(response_format=fmt, **extra)

    def count_tokens(self, text: str) -> int:
        """Tokens by the served model's own tokenizer (vLLM's /tokenize), not tiktoken's guess."""
        import httpx

        root = str(self.openai_api_base or "").rstrip("/").removesuffix("/v1")
        reply = httpx.post(f"{root}/tokenize", json={"model": self.model_name, "prompt": text}, timeout=30)
        reply.raise_for_status()
        return int(reply.json()["count"])

    def get_num_tokens(self, text: str) -> int:
        return self.count_tokens(text)


def vllm_base_url(settings: Settings) -> str:
    return settings.base_url or f"http://{settings.host}:{settings.port}/v1"


def load_chat_model(settings: Settings | None = None, **overrides: Any) -> BaseChatModel:
    """The configured chat model. Keyword overrides replace settings fields (e.g. engine="vllm")."""
    if overrides:
        base = (settings or get_settings()).model_dump()
        settings = Settings(**{**base, **overrides})
    settings = settings or get_settings()
    if settings.engine == "transformers":
        from factflow.serving.hf_engine import TransformersChatModel
        from factflow.serving.models import resolve_model

        return TransformersChatModel(
            model_path=resolve_model(settings),
            dtype=settings.dtype,
            max_new_tokens=settings.max_new_tokens,
            temperature=settings.temperature,
            context_window=settings.context_window,
        )
    from factflow.serving.vllm_server import SERVED_MODEL_NAME, wait_healthy

    url = vllm_base_url(settings)
    if not wait_healthy(url, timeout=3.0):
        raise UserError(
            f"no vLLM server answers at {url}: start one with `factflow serve` or set FACTFLOW_BASE_URL"
        )
    return VLLMChatModel(
        model=SERVED_MODEL_NAME,
        base_url=url,
        api_key="EMPTY",  # type: ignore[arg-type]
        temperature=settings.temperature,
        max_completion_tokens=settings.max_new_tokens,
        max_retries=1,
        timeout=600,
    )
