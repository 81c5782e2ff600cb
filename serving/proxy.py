"""Proxy-tuned decoding on the transformers engine (Liu et al., 2024, "Tuning Language Models by Proxy").

A small tuned *expert* steers an untouched *base* at decoding time, relative to the same small model
untuned (the *anti-expert*):

    logits_t = z_base(x_<t) + alpha * (z_expert(x_<t) - z_anti(x_<t)) * m_t

m_t is factflow's one addition, a plausibility mask: the difference is added only on tokens the
expert itself finds plausible (p_expert >= plausibility * its top token's probability). A small
self-made pair's log-ratio is noise in the tail: tuning moved junk tokens from about -25 to -12 in
the expert, a +13 "steer" that outvoted the base's right answer on general questions (docs/proxy.md,
Limits). Masking the tail keeps the steer where the expert means it. `plausibility = 0` is the
paper's formula exactly.

The three models share one tokenizer (same vocabulary, same token ids) and run side by side on the
same token stream, each with its own KV cache. The combination happens FIRST, on raw logits, and the
result goes through the normal sampling pipeline (logits processors, temperature, top-p, greedy,
stop sequences, streaming, constrained JSON) exactly as a plain model's logits would, because
`ProxyTunedLM` is just another logits source for `factflow.serving.generate`.

alpha = 0, or expert == anti-expert, gives the base's logits bit for bit (the difference is exactly
zero), hence the base's greedy output: that is what the tests pin down.
"""

from __future__ import annotations

import json
import math
import tomllib
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from factflow.errors import UserError

if TYPE_CHECKING:
    from factflow.serving.generate import Completion, GenerationParams
    from factflow.serving.hf_engine import TransformersChatModel

__all__ = [
    "ProxyConfig",
    "ProxySource",
    "ProxyTunedLM",
    "combine_logits",
    "shares_head",
    "load_proxy_config",
    "PROXY_CONFIG_KEY",
]

PROXY_CONFIG_KEY = "factflow_proxy"  # key in a prepared vLLM folder's config.json (see proxy_prepare.py)


def combine_logits(
    z_base: torch.Tensor,
    z_expert: torch.Tensor,
    z_anti: torch.Tensor,
    alpha: float | torch.Tensor,
    plausibility: float,
) -> torch.Tensor:
    """(..., V) logits of the three models -> (..., V) proxy-tuned logits, in float32.

    The one definition both engines use (`ProxySource` here, `ProxyTunedForCausalLM` in vLLM).
    The steer is the pair's difference of *log-probabilities*, log p_expert - log p_anti: over the
    whole vocabulary that is the paper's z_expert - z_anti up to a per-row constant, which softmax
    ignores; on the masked subset a raw-logit difference would leak each model's logit offset in as
    a bias, the log-probabilities don't. p_expert(v) >= plausibility * max p_expert is
    z_expert(v) >= max z_expert + log(plausibility) (the normaliser cancels). `alpha` is a number
    or one per row, (...,) ; rows with alpha 0 get the base's logits exactly.
    """
    z_base, z_expert, z_anti = z_base.float(), z_expert.float(), z_anti.float()
    steer = torch.log_softmax(z_expert, dim=-1) - torch.log_softmax(z_anti, dim=-1)
    if plausibility > 0.0:
        floor = z_expert.amax(dim=-1, keepdim=True) + math.log(plausibility)  # (..., 1)
        steer = steer.masked_fill(z_expert < floor, 0.0)
    if not isinstance(alpha, torch.Tensor):
        return z_base if alpha == 0.0 else z_base + alpha * steer
    a = alpha.to(device=z_base.device, dtype=torch.float32)[..., None]  # (..., 1)
    return torch.where(a == 0.0, z_base, z_base + a * steer)


def _read_hf_config(folder: Path) -> dict[str, Any]:
    return json.loads((folder / "config.json").read_text())


class ProxyConfig(BaseModel):
    """Which three models to combine and how strongly. One TOML or JSON file, e.g.::

        base = "default"                 # or a folder; "default" = the embedded SmolLM2 model
        expert = "proxy/expert"          # relative paths resolve against the config file's folder
        anti_expert = "proxy/anti"
        alpha = 1.0
        plausibility = 0.1               # steer only tokens the expert finds plausible; 0 = every token

    Validation checks that the folders exist and hold HF models, that expert and anti-expert have
    the base's hidden size and vocabulary, and that all three tokenizers map text to the same ids
    (the combination adds logits index by index, so a different tokenizer would add unrelated tokens).
    Expert and anti-expert may have fewer layers than the base: a small pair steering a big base is
    the point of the method.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    base: Path = Field(description="Base model folder (left untouched).")
    expert: Path = Field(description="Small tuned model folder.")
    anti_expert: Path = Field(description="The same small model, untuned.")
    alpha: float = Field(1.0, ge=-10.0, le=10.0, description="Steering strength; 0 = base alone.")
    plausibility: float = Field(
        0.1,
        ge=0.0,
        le=1.0,
        description="Steer only tokens with p_expert >= plausibility * max p_expert; 0 = every token.",
    )

    @field_validator("base", "expert", "anti_expert")
    @classmethod
    def _folder_exists(cls, v: Path) -> Path:
        v = v.expanduser()
        if not (v / "config.json").is_file():
            raise ValueError(f"{v} is not an HF model folder (no config.json); check the path")
        return v.resolve()

    @model_validator(mode="after")
    def _compatible(self) -> ProxyConfig:
        base = _read_hf_config(self.base)
        for role in ("expert", "anti_expert"):
            other = _read_hf_config(getattr(self, role))
            for key in ("hidden_size", "vocab_size"):
                if other.get(key) != base.get(key):
                    raise ValueError(
                        f"{role} has {key}={other.get(key)} but the base has {base.get(key)}; "
                        f"expert and anti-expert must be built from the base (factflow proxy distill)"
                    )
        if not (self._vocab(self.base) == self._vocab(self.expert) == self._vocab(self.anti_expert)):
            raise ValueError(
                "the three tokenizers differ; expert and anti-expert must use the base's tokenizer"
            )
        return self

    @staticmethod
    def _vocab(folder: Path) -> dict[str, int]:
        from transformers import AutoTokenizer

        return dict(AutoTokenizer.from_pretrained(str(folder)).get_vocab())


def load_proxy_config(path: str | Path, *, alpha: float | None = None) -> ProxyConfig:
    """Read a TOML/JSON proxy config; problems become one-sentence `UserError`s."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise UserError(
            f"proxy config {path} does not exist; write one naming base, expert, anti_expert, alpha"
        )
    try:
        text = path.read_text()
        raw: dict[str, Any] = json.loads(text) if path.suffix == ".json" else tomllib.loads(text)
    except (json.JSONDecodeError, tomllib.TOMLDecodeError) as exc:
        raise UserError(
            f"proxy config {path} is not valid {path.suffix.lstrip('.') or 'TOML'}: {exc}"
        ) from None
    raw = dict(raw.get("proxy", raw))  # accept a [proxy] table or top-level keys
    for role in ("base", "expert", "anti_expert"):
        value = raw.get(role)
        if value == "default":
            from factflow.serving.models import resolve_model
            from factflow.settings import get_settings

            raw[role] = resolve_model(get_settings())
        elif isinstance(value, str) and not Path(value).expanduser().is_absolute():
            raw[role] = str(path.parent / value)  # relative to the config file, not the cwd
    if alpha is not None:
        raw["alpha"] = alpha
    try:
        return ProxyConfig(**raw)
    except ValidationError as exc:
        msgs = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or 'config'}: {e['msg'].removeprefix('Value error, ')}"
            for e in exc.errors()
        )
        raise UserError(f"invalid proxy config {path}: {msgs}") from None


class _BodySource:
    """Like `CausalLMSource`, but returns the decoder body's last hidden state (B, H), not logits.

    For pairs that share the base's head: `ProxySource` then applies that head once to all three.
    """

    def __init__(self, model: Any) -> None:
        self.body = model.model  # Llama-style: the decoder stack and final norm, no head
        self._cache: Any = None

    @torch.inference_mode()
    def _run(self, ids: torch.Tensor, attention_mask: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        out = self.body(input_ids=ids, attention_mask=attention_mask, position_ids=positions,
                        past_key_values=self._cache, use_cache=True)  # fmt: skip
        self._cache = out.past_key_values
        return out.last_hidden_state[:, -1, :]

    def start(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        from transformers import DynamicCache

        from factflow.serving.generate import CausalLMSource

        self._cache = DynamicCache()
        return self._run(input_ids, attention_mask, CausalLMSource._positions(attention_mask))

    def step(self, tokens: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        from factflow.serving.generate import CausalLMSource

        return self._run(tokens, attention_mask, CausalLMSource._positions(attention_mask)[:, -1:])

    def keep(self, rows: torch.Tensor) -> None:
        self._cache.batch_select_indices(rows)


def shares_head(base: Any, expert: Any, anti_expert: Any) -> bool:
    """True when one head serves all three: Llama-style heads (logits = lm_head(h)) with equal weights.

    A pair made by `factflow proxy distill/tune` keeps the base's frozen (tied) head.
    """
    models = (base, expert, anti_expert)
    if any(getattr(m.config, "model_type", None) != "llama" for m in models):
        return False  # other families may scale or cap logits after the head
    head = base.lm_head.weight
    return all(m.lm_head.weight.shape == head.shape and torch.equal(m.lm_head.weight, head)
               for m in models[1:])  # fmt: skip


class ProxySource:
    """`LogitsSource` of `factflow.serving.generate`: three models, one token stream, combined logits.

    Each model has its own KV cache (the pair may have fewer layers than the base, so caches can't
    be shared); every call returns `combine_logits` of their three logits. With `shared_head`
    (`shares_head`) the three decoder bodies run and the one head multiplies all three hidden
    states in one (3B, H) x (H, V) product, as the vLLM model does.
    """

    def __init__(
        self, base: Any, expert: Any, anti_expert: Any, alpha: float, plausibility: float,
        *, shared_head: bool = False,
    ) -> None:  # fmt: skip
        from factflow.serving.generate import CausalLMSource

        models = (base, expert, anti_expert)
        self.head = base.lm_head if shared_head else None
        self.sources: list[Any] = [_BodySource(m) if shared_head else CausalLMSource(m) for m in models]
        self.alpha = alpha
        self.plausibility = plausibility

    def combine(self, z_base: torch.Tensor, z_expert: torch.Tensor, z_anti: torch.Tensor) -> torch.Tensor:
        """(B, V) x 3 -> (B, V) proxy-tuned logits, in float32 whatever the weights."""
        return combine_logits(z_base, z_expert, z_anti, self.alpha, self.plausibility)

    def _logits(self, outs: list[torch.Tensor]) -> torch.Tensor:
        if self.head is None:
            return self.combine(*outs)
        with torch.inference_mode():
            z = self.head(torch.cat(outs, dim=0))  # (3B, V): one product for the three models
        return self.combine(*z.split(outs[0].shape[0], dim=0))

    def start(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """(B, T) left-padded prompts -> (B, V) combined next-token logits."""
        return self._logits([s.start(input_ids, attention_mask) for s in self.sources])

    def step(self, tokens: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """(B, 1) new tokens, (B, T+n) mask -> (B, V) combined logits."""
        return self._logits([s.step(tokens, attention_mask) for s in self.sources])


class ProxyTunedLM:
    """The three models of a `ProxyConfig`, loaded once, decoding through `factflow.serving.generate`.

    `generate`/`generate_stream` take chat messages or token ids and return what the plain
    engine returns; `chat_model()` is a LangChain chat model (streaming, stop, structured output,
    batching) whose logits are the proxy-tuned ones.
    """

    def __init__(self, config: ProxyConfig, *, dtype: str = "float32") -> None:
        from factflow.serving.hf_engine import load_hf_model

        self.config = config
        self.alpha = config.alpha
        self.base, self.tokenizer = load_hf_model(str(config.base), dtype)
        self.expert, _ = load_hf_model(str(config.expert), dtype)
        self.anti_expert, _ = load_hf_model(str(config.anti_expert), dtype)
        self.dtype = dtype
        self.shared_head = shares_head(self.base, self.expert, self.anti_expert)

    def source(self) -> ProxySource:
        """A fresh logits source (fresh caches) for one batch."""
        return ProxySource(
            self.base, self.expert, self.anti_expert, self.alpha, self.config.plausibility,
            shared_head=self.shared_head,
        )

    def parameter_counts(self) -> dict[str, int]:
        """Parameters per model (tied embeddings counted once): the benchmark's ideal cost ratio."""
        models = {"base": self.base, "expert": self.expert, "anti_expert": self.anti_expert}
        return {name: sum(p.numel() for p in m.parameters()) for name, m in models.items()}

    def prompt_ids(self, prompt: str) -> list[int]:
        """One user turn in the base's chat template, ready for generation."""
        ids = self.tokenizer.apply_chat_template(
            [{"role": "user", "content": prompt}],
            add_generation_prompt=True,
            tokenize=True,
            return_dict=False,
        )
        return list(ids["input_ids"] if isinstance(ids, dict) or hasattr(ids, "input_ids") else ids)

    def generate(
        self,
        prompts: Sequence[str | Sequence[int]],
        params: GenerationParams | None = None,
    ) -> list[Completion]:
        """Batched proxy-tuned decoding of chat prompts (str) or token ids; greedy by default."""
        from factflow.serving.generate import GenerationParams, eos_token_ids, generate

        ids = [self.prompt_ids(p) if isinstance(p, str) else list(p) for p in prompts]
        return generate(
            self.source(),
            self.tokenizer,
            ids,
            params or GenerationParams(),
            eos_ids=eos_token_ids(self.tokenizer, self.base),
            vocab_size=self.base.config.vocab_size,
        )

    def chat_model(self, **kwargs: Any) -> TransformersChatModel:
        """LangChain chat model over the proxy-tuned logits (same interface as the plain engine)."""
        from factflow.serving.hf_engine import TransformersChatModel

        chat = TransformersChatModel.from_model(
            self.base, self.tokenizer, source_factory=lambda _model: self.source(), **kwargs
        )
        chat.model_path = f"proxy:{self.config.base}"
        return chat
