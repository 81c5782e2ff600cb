"""The in-process engine: a LangChain chat model over a transformers causal LM.

Decoding goes through `serving/generate.py`, so stop sequences, streaming, batching and JSON-schema
output are one code path for the plain model, LoReFT-hooked models and proxy-tuned decoding
(which passes its own `source_factory`).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Sequence
from functools import lru_cache
from typing import Any

import torch
from langchain_core.callbacks import CallbackManagerForLLMRun
from langchain_core.language_models import BaseChatModel, LanguageModelInput
from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, ChatResult
from langchain_core.runnables import Runnable, RunnableConfig
from pydantic import ConfigDict, Field, PrivateAttr

from factflow.errors import UserError
from factflow.serving.generate import (
    CausalLMSource,
    GenerationParams,
    LogitsSource,
    eos_token_ids,
    generate,
    generate_stream,
)
from factflow.serving.structured import StructuredOutputMixin

__all__ = ["load_hf_model", "TransformersChatModel", "to_chat_dicts"]

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@lru_cache(maxsize=4)
def load_hf_model(path: str, dtype: str = "float32") -> tuple[Any, Any]:
    """(model, tokenizer) in eval mode, cached per (path, dtype). Never downloads when offline."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
        model = AutoModelForCausalLM.from_pretrained(path, dtype=_DTYPES.get(dtype, torch.float32))
    except OSError as exc:
        raise UserError(f"could not load model from {path} ({exc}); check FACTFLOW_MODEL") from None
    model.eval()
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model, tokenizer


def to_chat_dicts(messages: Sequence[BaseMessage]) -> list[dict[str, str]]:
    """LangChain messages -> chat-template dicts (tool results become user turns)."""
    roles = {"system": "system", "human": "user", "ai": "assistant", "tool": "user"}
    out = []
    for m in messages:
        content = m.content if isinstance(m.content, str) else str(m.content)
        if m.type == "tool":
            content = f"Result of {getattr(m, 'name', None) or 'the tool'}: {content}"
        out.append({"role": roles.get(m.type, "user"), "content": content})
    return out


class TransformersChatModel(StructuredOutputMixin, BaseChatModel):
    """SmolLM2 (or any local HF causal LM) as a LangChain chat model, in this process."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    model_path: str
    dtype: str = "float32"
    max_new_tokens: int = 256
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int | None = None
    context_window: int = 8192
    torch_threads: int = 0  # set for the whole process when the model loads; 0 keeps torch's default
    source_factory: Callable[[Any], LogitsSource] | None = Field(
        default=None, exclude=True, description="Builds the logits source (proxy-tuning plugs in here)."
    )
    _lock: threading.Lock = PrivateAttr(default_factory=threading.Lock)
    _model: Any = PrivateAttr(default=None)
    _tokenizer: Any = PrivateAttr(default=None)

    @classmethod
    def from_model(cls, model: Any, tokenizer: Any, **kwargs: Any) -> TransformersChatModel:
        """Wrap an already loaded model (e.g. one with LoReFT hooks attached)."""
        chat = cls(model_path=str(getattr(model.config, "_name_or_path", "in-memory")), **kwargs)
        chat._model, chat._tokenizer = model, tokenizer
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.eos_token
        return chat

    @property
    def _llm_type(self) -> str:
        return "factflow-transformers"

    @property
    def hf_model(self) -> Any:
        if self._model is None:
            if self.torch_threads:
                torch.set_num_threads(self.torch_threads)
            self._model, self._tokenizer = load_hf_model(self.model_path, self.dtype)
        return self._model

    @property
    def tokenizer(self) -> Any:
        self.hf_model  # noqa: B018 - loads both
        return self._tokenizer

    # -- helpers -------------------------------------------------------------------------------
    def prompt_ids(self, messages: Sequence[BaseMessage]) -> list[int]:
        ids = self.tokenizer.apply_chat_template(
            to_chat_dicts(messages), add_generation_prompt=True, tokenize=True, return_dict=False
        )
        if isinstance(ids, dict) or hasattr(ids, "input_ids"):
            ids = ids["input_ids"]
        ids = list(ids)
        if len(ids) >= self.context_window:
            raise UserError(
                f"the prompt has {len(ids)} tokens but the context window is {self.context_window}: "
                f"shorten the input or raise FACTFLOW_CONTEXT_WINDOW"
            )
        return ids

    def count_tokens(self, text: str) -> int:
        return len(self.tokenizer.encode(text, add_special_tokens=False))

    def get_num_tokens(self, text: str) -> int:
        return self.count_tokens(text)

    def get_num_tokens_from_messages(self, messages: list[BaseMessage], tools: Any = None) -> int:
        return len(self.prompt_ids(messages))

    def _params(self, stop: list[str] | None, kwargs: dict[str, Any]) -> GenerationParams:
        return GenerationParams(
            max_new_tokens=int(
                kwargs.get("max_tokens") or kwargs.get("max_new_tokens") or self.max_new_tokens
            ),
            temperature=float(kwargs.get("temperature", self.temperature)),
            top_p=float(kwargs.get("top_p", self.top_p)),
            repetition_penalty=float(kwargs.get("repetition_penalty") or 1.0),
            stop=list(stop or kwargs.get("stop") or []),
            json_schema=kwargs.get("json_schema"),
            seed=kwargs.get("seed", self.seed),
        )

    def _source(self) -> LogitsSource:
        if self.source_factory is not None:
            return self.source_factory(self.hf_model)
        return CausalLMSource(self.hf_model)

    def _run(self, batch: list[list[int]], params: GenerationParams) -> list[Any]:
        with self._lock:  # one decode at a time per model: CPU threads are the bottleneck anyway
            return generate(
                self._source(),
                self.tokenizer,
                batch,
                params,
                eos_ids=eos_token_ids(self.tokenizer, self.hf_model),
                vocab_size=self.hf_model.config.vocab_size,
            )

    @staticmethod
    def _message(c: Any) -> AIMessage:
        return AIMessage(
            content=c.text,
            response_metadata={"finish_reason": c.finish_reason},
            usage_metadata={
                "input_tokens": c.prompt_tokens,
                "output_tokens": c.completion_tokens,
                "total_tokens": c.prompt_tokens + c.completion_tokens,
            },
        )

    # -- LangChain interface -------------------------------------------------------------------
    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        (completion,) = self._run([self.prompt_ids(messages)], self._params(stop, kwargs))
        return ChatResult(generations=[ChatGeneration(message=self._message(completion))])

    def _stream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> Iterator[ChatGenerationChunk]:
        params = self._params(stop, kwargs)
        ids = self.prompt_ids(messages)
        with self._lock:
            deltas = generate_stream(
                self._source(),
                self.tokenizer,
                [ids],
                params,
                eos_ids=eos_token_ids(self.tokenizer, self.hf_model),
                vocab_size=self.hf_model.config.vocab_size,
            )
            for delta in deltas:
                meta = {"finish_reason": delta.finish_reason} if delta.finish_reason else {}
                message = AIMessageChunk(content=delta.text, response_metadata=meta)
                chunk = ChatGenerationChunk(message=message)
                if run_manager and delta.text:
                    run_manager.on_llm_new_token(delta.text, chunk=chunk)
                yield chunk

    def generate_batch(
        self, conversations: Sequence[Sequence[BaseMessage]], **kwargs: Any
    ) -> list[AIMessage]:
        """True batched decoding (one left-padded batch, one KV cache) for many conversations."""
        prompts = [self.prompt_ids(list(c)) for c in conversations]
        return [self._message(c) for c in self._run(prompts, self._params(kwargs.pop("stop", None), kwargs))]

    def batch(  # type: ignore[override]
        self,
        inputs: list[LanguageModelInput],
        config: RunnableConfig | list[RunnableConfig] | None = None,
        *,
        return_exceptions: bool = False,
        **kwargs: Any,
    ) -> list[BaseMessage]:
        conversations = [self._convert_input(i).to_messages() for i in inputs]
        return list(self.generate_batch(conversations, **kwargs))

    def _bind_json_schema(
        self, schema: dict[str, Any], max_tokens: int | None = None, repetition_penalty: float | None = None
    ) -> Runnable:
        extra: dict[str, Any] = {"max_tokens": max_tokens} if max_tokens else {}
        if repetition_penalty:
            extra["repetition_penalty"] = repetition_penalty
        return self.bind(json_schema=schema, **extra)
