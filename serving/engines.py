"""One chat-model interface, three engines: `load_chat_model(settings)`.

engine = "transformers" -> `TransformersChatModel` in this process;
engine = "vllm"         -> `OpenAIChatModel` against factflow's own vLLM server (`factflow serve`,
                           or FACTFLOW_BASE_URL);
engine = "openai"       -> `OpenAIChatModel` against any OpenAI-compatible endpoint (vLLM, llama.cpp,
                           Ollama, a hosted API): FACTFLOW_BASE_URL, FACTFLOW_API_KEY,
                           FACTFLOW_SERVED_MODEL.
All are LangChain `BaseChatModel`s with the same streaming, stop, structured-output and tool-call
behaviour, so nothing downstream branches on the engine. Reachability is checked once through
`/v1/models`; what fails (refused, 401, no such model) becomes a one-line `UserError`.
"""

from __future__ import annotations

import json
import logging
from typing import Any, Literal

import httpx
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage
from langchain_core.runnables import Runnable, RunnableLambda
from langchain_openai import ChatOpenAI
from pydantic import PrivateAttr, SecretStr

from factflow.errors import UserError
from factflow.serving.structured import StructuredOutputMixin, ToolCallFormat, prompted_json
from factflow.settings import Settings, get_settings

__all__ = ["load_chat_model", "OpenAIChatModel", "VLLMChatModel", "vllm_base_url", "check_endpoint"]

log = logging.getLogger(__name__)

_CHARS_PER_TOKEN = 4  # the estimate when neither the server nor tiktoken can count
# One probe call decides "auto" tool calls: a well-formed call of this tool means the server speaks
# native tool calls; a rejected request (vLLM without --enable-auto-tool-choice) or text means not.
_PROBE_TOOL = {
    "type": "function",
    "function": {
        "name": "get_time",
        "description": "The current time in a city.",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}


def _root(base_url: str) -> str:
    return base_url.rstrip("/").removesuffix("/v1")


def _headers(api_key: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {api_key}"} if api_key else {}


def check_endpoint(
    base_url: str, api_key: str | None, model: str | None, *, engine: str = "openai", timeout: float = 10.0
) -> str:
    """The served model id at `base_url` (the first listed when `model` is None), or a UserError
    naming the URL and what failed."""
    url = f"{base_url.rstrip('/')}/models"
    hint = (
        "start one with `factflow serve` or set FACTFLOW_BASE_URL"
        if engine == "vllm"
        else "check FACTFLOW_BASE_URL (the server's /v1 root)"
    )
    what = "no vLLM server answers" if engine == "vllm" else "no server answers"
    try:
        reply = httpx.get(url, headers=_headers(api_key), timeout=timeout)
    except httpx.ConnectError:
        raise UserError(f"{what} at {url}: connection refused; {hint}") from None
    except httpx.TimeoutException:
        raise UserError(f"{what} at {url}: no answer within {timeout:.0f} s; {hint}") from None
    except httpx.HTTPError as exc:
        raise UserError(f"{what} at {url}: {type(exc).__name__}; {hint}") from None
    if reply.status_code in (401, 403):
        raise UserError(
            f"{url} answered {reply.status_code} (not authorized): set FACTFLOW_API_KEY to a key it accepts"
        )
    if reply.status_code != 200:
        raise UserError(f"{url} answered HTTP {reply.status_code}; {hint}")
    try:
        ids = [str(m["id"]) for m in reply.json()["data"]]
    except (ValueError, KeyError, TypeError):
        raise UserError(f"{url} did not answer with an OpenAI model list; {hint}") from None
    if not ids:
        raise UserError(f"{url} lists no models; load one on the server first")
    if model is None:
        return ids[0]
    if model not in ids:
        raise UserError(
            f"{url} serves no model {model!r} (it serves {', '.join(ids[:8])}); "
            "set FACTFLOW_SERVED_MODEL to one of them"
        )
    return model


# The mixin's bind_tools/with_structured_output take the BaseChatModel signatures; langchain-openai's
# overrides add provider keywords, so mypy sees the two bases as incompatible. The mixin's win (MRO).
class OpenAIChatModel(StructuredOutputMixin, ChatOpenAI):  # type: ignore[misc]
    """ChatOpenAI against an OpenAI-compatible server (vLLM or any other).

    `tool_calls`: "native" (server-side tools), "json_action" (constrained JSON action) or "auto"
    (one probe call decides). `structured`: "json_schema" (`response_format`), "prompt" (schema in
    the prompt, validated, one retry) or "auto" (json_schema until the server rejects it).
    `sampling_extras`: send vLLM sampling parameters (repetition_penalty) that other servers reject.
    """

    tool_calls: Literal["auto", "native", "json_action"] = "json_action"
    structured: Literal["auto", "json_schema", "prompt"] = "json_schema"
    sampling_extras: bool = False
    _tool_format: ToolCallFormat | None = PrivateAttr(None)
    _json_schema_ok: bool | None = PrivateAttr(None)
    _counter: str | None = PrivateAttr(None)
    _tiktoken: Any = PrivateAttr(None)

    # -- structured output -----------------------------------------------------------------------

    def _bind_json_schema(
        self, schema: dict[str, Any], max_tokens: int | None = None, repetition_penalty: float | None = None
    ) -> Runnable:
        fmt = {"type": "json_schema", "json_schema": {"name": "output", "schema": schema}}
        extra: dict[str, Any] = {"max_completion_tokens": max_tokens} if max_tokens else {}
        if repetition_penalty and self.sampling_extras:
            extra["extra_body"] = {"repetition_penalty": repetition_penalty}  # a vLLM sampling param
        return self.bind(response_format=fmt, **extra)

    def _structured_runnable(
        self, schema: dict[str, Any], validate: Any, max_tokens: int | None, repetition_penalty: float | None
    ) -> Runnable:
        plain = self.bind(max_completion_tokens=max_tokens) if max_tokens else self
        fallback = prompted_json(plain, schema, validate)
        if self.structured == "prompt" or self._json_schema_ok is False:
            return fallback
        constrained = self._bind_json_schema(schema, max_tokens, repetition_penalty)
        if self.structured == "json_schema":
            return constrained

        def run(value: Any) -> AIMessage:
            import openai

            if self._json_schema_ok is False:
                return fallback.invoke(value)  # type: ignore[no-any-return]
            try:
                reply = constrained.invoke(value)
            except openai.BadRequestError as exc:  # the server has no response_format json_schema
                log.info(
                    "%s rejects response_format json_schema (%s): prompting instead",
                    self.openai_api_base,
                    exc,
                )
                self._json_schema_ok = False
                return fallback.invoke(value)  # type: ignore[no-any-return]
            self._json_schema_ok = True
            return reply  # type: ignore[no-any-return]

        return RunnableLambda(run)

    # -- tool calls ------------------------------------------------------------------------------

    @property
    def tool_call_format(self) -> ToolCallFormat:
        if self.tool_calls != "auto":
            return self.tool_calls
        if self._tool_format is None:
            self._tool_format = self._probe_native_tools()
            log.info("tool calls on %s: %s", self.openai_api_base, self._tool_format)
        return self._tool_format

    def _probe_native_tools(self) -> ToolCallFormat:
        import openai

        try:
            reply = self.root_client.chat.completions.create(
                model=self.model_name,
                messages=[{"role": "user", "content": "What time is it in Paris? Call the tool."}],
                tools=[_PROBE_TOOL],  # type: ignore[list-item]
                tool_choice="auto",
                max_completion_tokens=64,
                temperature=0,
            )
        except openai.APIStatusError as exc:  # e.g. 400 from vLLM started without a tool-call parser
            log.info("tool-call probe answered %s: using json_action", exc.status_code)
            return "json_action"
        calls = reply.choices[0].message.tool_calls or [] if reply.choices else []
        for call in calls:
            fn = getattr(call, "function", None)
            try:
                if fn is not None and fn.name == "get_time" and isinstance(json.loads(fn.arguments), dict):
                    return "native"
            except json.JSONDecodeError:
                pass
        return "json_action"

    def _bind_native_tools(self, tools: list[Any], tool_choice: Any) -> Runnable:
        return ChatOpenAI.bind_tools(self, tools, tool_choice=tool_choice)

    # -- token counting --------------------------------------------------------------------------

    @property
    def token_counter(self) -> str:
        """Which counter `count_tokens` uses: the server's /tokenize, tiktoken, or an estimate."""
        if self._counter is None:
            self.count_tokens("probe")
        return self._counter or "estimate"

    def count_tokens(self, text: str) -> int:
        """Tokens by the served model's tokenizer (/tokenize, as vLLM has); else tiktoken; else
        ~4 characters per token (tiktoken needs its encoding files, absent offline)."""
        if self._counter in (None, "server /tokenize"):
            secret = self.openai_api_key
            key = secret.get_secret_value() if isinstance(secret, SecretStr) else None
            reply = httpx.post(
                f"{_root(str(self.openai_api_base or ''))}/tokenize",
                json={"model": self.model_name, "prompt": text},
                headers=_headers(key),
                timeout=30,
            )
            if reply.status_code == 200 and "count" in reply.json():
                self._counter = "server /tokenize"
                return int(reply.json()["count"])
            if reply.status_code in (401, 403) or reply.status_code >= 500:
                reply.raise_for_status()  # a real failure, not a missing endpoint
            self._counter = self._local_counter()
            log.info("token counting for %s: %s", self.model_name, self._counter)
        if self._tiktoken is not None:
            return len(self._tiktoken.encode(text))
        return len(text) // _CHARS_PER_TOKEN + 1

    def _local_counter(self) -> str:
        try:
            import tiktoken

            try:
                self._tiktoken = tiktoken.encoding_for_model(self.model_name)
            except KeyError:
                self._tiktoken = tiktoken.get_encoding("o200k_base")
            return f"tiktoken {self._tiktoken.name}"
        except Exception:  # noqa: BLE001 - tiktoken downloads its files: offline it cannot load
            return f"estimate (~{_CHARS_PER_TOKEN} characters per token; tiktoken unavailable)"

    def get_num_tokens(self, text: str) -> int:
        return self.count_tokens(text)


VLLMChatModel = OpenAIChatModel  # the name older code imports


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

        if settings.tool_calls == "native":
            raise UserError(
                "FACTFLOW_TOOL_CALLS=native needs a server with tool calls; the transformers engine "
                "uses json_action (set FACTFLOW_TOOL_CALLS=auto or json_action)"
            )
        return TransformersChatModel(
            model_path=resolve_model(settings),
            dtype=settings.dtype,
            max_new_tokens=settings.max_new_tokens,
            temperature=settings.temperature,
            context_window=settings.context_window,
            torch_threads=settings.torch_threads,
        )
    if settings.engine == "openai" and not settings.base_url:
        raise UserError("FACTFLOW_ENGINE=openai needs FACTFLOW_BASE_URL (e.g. http://127.0.0.1:8000/v1)")
    url = vllm_base_url(settings)
    key = settings.api_key.get_secret_value() if settings.api_key else None
    model = check_endpoint(url, key, settings.served_model, engine=settings.engine)
    is_vllm = settings.engine == "vllm"
    return OpenAIChatModel(
        model=model,
        base_url=url,
        api_key=key or "EMPTY",  # type: ignore[arg-type]  # the client insists on some key
        temperature=settings.temperature,
        max_completion_tokens=settings.max_new_tokens,
        max_retries=1,
        timeout=600,
        # factflow's own vLLM keeps the JSON action unless asked: evals compare the two formats
        tool_calls=settings.tool_calls or ("json_action" if is_vllm else "auto"),
        # factflow's own vLLM has structured outputs; elsewhere find out on the first call
        structured="json_schema" if is_vllm else "auto",
        sampling_extras=is_vllm,
    )
