"""LoReFT: the intervention, the adapter folder and its forward hooks on a Hugging Face model.

Wu et al., 2024 ("ReFT: Representation Finetuning for Language Models"; stanfordnlp/pyreft).
At each intervened layer l and position i the layer output h (d,) is replaced by

    LoReFT(h) = h + R^T (W h + b - R h)

R (r, d) has orthonormal rows (R R^T = I_r), W (r, d) and b (r,) are learned: the edit lives in the
r-dimensional subspace spanned by R's rows, where the representation is moved to W h + b. That is
2 r d + r parameters per intervention; the base model's weights never change.

This module holds the intervention (`LoReFT`), its settings (`ReftConfig`), the adapter folder
(`ReftAdapter`: config.json + safetensors + the identity of the base model it was trained on) and
its attachment to a Hugging Face model through forward hooks (`ReftAdapter.attach`,
`reft_chat_model`). Training is `serving/reft_train.py`; the vLLM side is `serving/reft_prepare.py`
(the served folder) and `serving/vllm_reft.py` (the model class).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal, cast

import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from torch import nn

from factflow.errors import UserError

__all__ = [
    "LoReFT",
    "ReftConfig",
    "Example",
    "BaseIdentity",
    "ReftAdapter",
    "ReftHandle",
    "reft_chat_model",
    "ADAPTER_CONFIG",
    "ADAPTER_WEIGHTS",
    "TRAIN_REPORT",
    "VLLM_ADAPTER_KEY",
]

ADAPTER_CONFIG = "config.json"
ADAPTER_WEIGHTS = "adapter.safetensors"
TRAIN_REPORT = "training.json"
VLLM_ADAPTER_KEY = "factflow_reft_adapter"  # key in a prepared vLLM folder's config.json
FORMAT_VERSION = 1

# Config keys that decide whether hidden states mean the same thing; volatile keys (paths, dtype,
# transformers version, `architectures`, which a prepared vLLM folder rewrites) are left out.
_IDENTITY_KEYS = (
    "model_type", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
    "num_key_value_heads", "head_dim", "vocab_size", "rms_norm_eps", "rope_parameters", "rope_theta",
    "rope_scaling", "max_position_embeddings", "tie_word_embeddings", "hidden_act",
)


class LoReFT(nn.Module):
    """LoReFT(h) = h + R^T (W h + b - R h), with R (r, d) orthonormal rows.

    R is kept orthonormal during training by torch's orthogonal parametrization (on a wide matrix
    it constrains the rows). W and b are a plain `nn.Linear(d, r)` ("learned source" in pyreft).
    """

    def __init__(self, hidden_size: int, rank: int) -> None:
        super().__init__()
        if not 0 < rank <= hidden_size:
            raise UserError(f"ReFT rank {rank} must be between 1 and the hidden size {hidden_size}.")
        self.rotate = nn.utils.parametrizations.orthogonal(nn.Linear(hidden_size, rank, bias=False))
        self.source = nn.Linear(hidden_size, rank)  # W (r, d), b (r,)
        # Materialising R through the parametrization costs ~20 ms (Householder products), far too
        # much per decode step: outside training R is computed once and reused.
        self._frozen_R: torch.Tensor | None = None

    def _rotation(self) -> torch.Tensor:
        # computed by the parametrization on each access; torch types Module attributes `Tensor | Module`
        return cast(torch.Tensor, self.rotate.weight)

    @property
    def R(self) -> torch.Tensor:  # noqa: N802 - the paper's name
        if self.training or torch.is_grad_enabled():
            self._frozen_R = None
            return self._rotation()
        w = self.source.weight
        if self._frozen_R is None or self._frozen_R.dtype != w.dtype or self._frozen_R.device != w.device:
            self._frozen_R = self._rotation().detach()
        return self._frozen_R

    def train(self, mode: bool = True) -> LoReFT:
        self._frozen_R = None
        return super().train(mode)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        R = self.R  # (r, d)  # noqa: N806
        # h (..., d) -> (W h + b - R h) (..., r) -> back to d through R^T
        return h + (self.source(h) - h @ R.T) @ R

    @torch.no_grad()
    def set_weights(self, R: torch.Tensor, W: torch.Tensor, b: torch.Tensor) -> None:  # noqa: N803
        """Load R, W, b; R must have orthonormal rows (the parametrization's right inverse)."""
        self._frozen_R = None
        self.rotate.weight = R.to(self.source.weight)
        self.source.weight.copy_(W)
        self.source.bias.copy_(b)


class ReftConfig(BaseModel):
    """Where and how the adapter intervenes. Saved in the adapter's config.json."""

    model_config = ConfigDict(extra="forbid")

    layers: list[int] = Field(
        default_factory=lambda: [6, 12, 18, 24],
        min_length=1,
        description="Decoder layers whose output is edited (0-based).",
    )
    rank: int = Field(4, ge=1, le=512, description="r: size of the edited subspace.")
    positions: Literal["all", "prefix+suffix"] = Field(
        "all",
        description="'all': every token, prompt and generated (works in vLLM); 'prefix+suffix': the "
        "first `prefix` and last `suffix` prompt tokens (the paper's f7+l7; transformers engine only).",
    )
    prefix: int = Field(7, ge=0, description="First prompt tokens edited in prefix+suffix mode.")
    suffix: int = Field(7, ge=0, description="Last prompt tokens edited in prefix+suffix mode.")
    tie_positions: bool = Field(
        True, description="prefix+suffix: one intervention per layer for both spans (else one each)."
    )

    @field_validator("layers")
    @classmethod
    def _unique_layers(cls, v: list[int]) -> list[int]:
        if len(set(v)) != len(v) or min(v) < 0:
            raise ValueError("layers must be distinct, non-negative layer indices")
        return sorted(v)

    def slots(self) -> list[str]:
        """Intervention slots per layer: 'all', 'shared' or 'prefix' + 'suffix'."""
        if self.positions == "all":
            return ["all"]
        return ["shared"] if self.tie_positions else ["prefix", "suffix"]


class Example(BaseModel):
    """One prompt/completion pair; the loss is computed on the completion only."""

    model_config = ConfigDict(extra="forbid")

    prompt: str = Field(min_length=1)
    completion: str = Field(min_length=1)


class BaseIdentity(BaseModel):
    """Which base model an adapter belongs to."""

    model_config = ConfigDict(extra="forbid")

    architecture: str
    hidden_size: int
    num_layers: int
    config_hash: str

    @classmethod
    def of(cls, hf_config: Any) -> BaseIdentity:
        cfg = hf_config.to_dict() if hasattr(hf_config, "to_dict") else dict(hf_config)
        picked = {k: cfg[k] for k in _IDENTITY_KEYS if cfg.get(k) is not None}
        digest = hashlib.sha256(json.dumps(picked, sort_keys=True, default=str).encode()).hexdigest()
        archs = cfg.get("architectures") or ["?"]
        # a prepared vLLM folder renames the architecture; identity keeps the base name
        arch = cfg.get("factflow_base_architecture") or archs[0]
        return cls(
            architecture=arch,
            hidden_size=int(cfg["hidden_size"]),
            num_layers=int(cfg["num_hidden_layers"]),
            config_hash=digest[:16],
        )

    def describe(self) -> str:
        return (
            f"{self.architecture} (hidden {self.hidden_size}, {self.num_layers} layers, "
            f"config {self.config_hash})"
        )


class _AdapterFile(BaseModel):
    model_config = ConfigDict(extra="forbid")

    format: Literal["factflow-reft"] = "factflow-reft"
    version: int = FORMAT_VERSION
    intervention: Literal["loreft"] = "loreft"
    reft: ReftConfig
    base: BaseIdentity
    trainable_params: int


class ReftHandle:
    """Hooks that apply an adapter to one HF model; `remove()` (or `with`) takes them off.

    In prefix+suffix mode the hooks need each row's prompt span. By default it is read from the
    prefill's attention mask (left padding, as in `factflow.serving.generate`); decode steps (one
    new token) are not edited. Training pins explicit spans with `prompt_spans(starts, lengths)`.
    """

    def __init__(self, adapter: ReftAdapter, model: nn.Module) -> None:
        self.adapter = adapter
        self._spans: tuple[torch.Tensor, torch.Tensor] | None = None
        self._pinned = False
        self._decode = False
        self._hooks: list[Any] = []
        cfg = adapter.config
        if cfg.positions != "all":
            self._hooks.append(model.register_forward_pre_hook(self._capture, with_kwargs=True))
        layers = _decoder_layers(model)
        for layer in cfg.layers:
            self._hooks.append(layers[layer].register_forward_hook(self._make_hook(layer)))

    def _capture(self, module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        ids = kwargs.get("input_ids", args[0] if args else None)
        if ids is None:
            ids = kwargs["inputs_embeds"]
        T = ids.shape[1]  # noqa: N806
        self._decode = T == 1 and not self._pinned
        if self._pinned or self._decode:
            return
        mask = kwargs.get("attention_mask")
        B = ids.shape[0]  # noqa: N806
        if mask is None:
            lengths = torch.full((B,), T, dtype=torch.long)
        else:
            lengths = mask[:, -T:].sum(dim=1).long().cpu()
        self._spans = (T - lengths, lengths)  # left padding: the prompt ends at the last position

    @contextlib.contextmanager
    def prompt_spans(self, starts: torch.Tensor, lengths: torch.Tensor) -> Iterator[None]:
        """Pin each row's prompt span [start, start + length) for the forward passes inside."""
        self._spans, self._pinned = (starts.long().cpu(), lengths.long().cpu()), True
        try:
            yield
        finally:
            self._spans, self._pinned = None, False

    def _masks(self, T: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:  # noqa: N803
        assert self._spans is not None
        starts, lengths = (t.to(device) for t in self._spans)
        cfg = self.adapter.config
        pos = torch.arange(T, device=device)[None, :]  # (1, T)
        rel = pos - starts[:, None]  # (B, T) position inside the prompt
        inside = (rel >= 0) & (rel < lengths[:, None])
        pre = inside & (rel < cfg.prefix)
        suf = inside & (rel >= lengths[:, None] - cfg.suffix)
        return pre[..., None], suf[..., None]  # (B, T, 1)

    def _make_hook(self, layer: int) -> Any:
        ivs = self.adapter.interventions
        cfg = self.adapter.config

        def hook(module: nn.Module, args: Any, output: Any) -> Any:
            h = output[0] if isinstance(output, tuple) else output  # (B, T, d)
            if cfg.positions == "all":
                new = ivs[f"{layer}_all"](h)
            else:
                if self._decode or self._spans is None:
                    return output
                pre, suf = self._masks(h.shape[1], h.device)
                if cfg.tie_positions:
                    new = torch.where(pre | suf, ivs[f"{layer}_shared"](h), h)
                else:  # where the spans overlap (short prompts) the suffix edit wins
                    new = torch.where(pre, ivs[f"{layer}_prefix"](h), h)
                    new = torch.where(suf, ivs[f"{layer}_suffix"](h), new)
            return (new, *output[1:]) if isinstance(output, tuple) else new

        return hook

    def remove(self) -> None:
        for hook in self._hooks:
            hook.remove()
        self._hooks.clear()

    def __enter__(self) -> ReftHandle:
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()


def _decoder_layers(model: nn.Module) -> nn.ModuleList:
    inner = getattr(model, "model", model)
    layers = getattr(inner, "layers", None)
    if not isinstance(layers, nn.ModuleList):
        raise UserError(f"{type(model).__name__} has no `model.layers`; ReFT supports Llama-style decoders.")
    return layers


class ReftAdapter(nn.Module):
    """A set of LoReFT interventions plus the base identity they were trained on."""

    def __init__(self, config: ReftConfig, base: BaseIdentity) -> None:
        super().__init__()
        bad = [layer for layer in config.layers if layer >= base.num_layers]
        if bad:
            raise UserError(
                f"ReFT layer {bad[0]} is out of range: the base model has layers 0..{base.num_layers - 1}; "
                "pick layers inside that range."
            )
        self.config = config
        self.base = base
        self.interventions = nn.ModuleDict(
            {
                f"{layer}_{slot}": LoReFT(base.hidden_size, config.rank)
                for layer in config.layers
                for slot in config.slots()
            }
        )

    @classmethod
    def for_model(cls, config: ReftConfig, hf_model: nn.Module) -> ReftAdapter:
        return cls(config, BaseIdentity.of(hf_model.config))

    def trainable_params(self) -> int:
        """2 r d + r per intervention (R counts r d even though it lives on a manifold)."""
        return sum(iv.R.numel() + iv.source.weight.numel() + iv.source.bias.numel() for iv in self._ivs())

    def _ivs(self) -> list[LoReFT]:
        return [iv for iv in self.interventions.values() if isinstance(iv, LoReFT)]

    def check_base(self, hf_config: Any, where: str = "this model") -> None:
        """Raise a UserError unless `hf_config` is the base this adapter was trained on."""
        other = BaseIdentity.of(hf_config)
        if other != self.base:
            raise UserError(
                f"ReFT adapter was trained on {self.base.describe()} but {where} is {other.describe()}; "
                "load it onto its own base model or retrain it with `factflow reft train`."
            )

    def attach(self, hf_model: nn.Module) -> ReftHandle:
        """Apply the adapter to `hf_model` with forward hooks; returns a removable handle."""
        self.check_base(hf_model.config)
        param = next(hf_model.parameters())
        self.to(device=param.device, dtype=param.dtype)
        return ReftHandle(self, hf_model)

    def tensors(self) -> dict[str, torch.Tensor]:
        """Materialised R, W, b per intervention (R orthonormal), as saved and as vLLM loads them."""
        out: dict[str, torch.Tensor] = {}
        with torch.no_grad():
            for name, iv in self.interventions.items():
                assert isinstance(iv, LoReFT)
                out[f"{name}.R"] = iv.R.detach().float().contiguous().clone()
                out[f"{name}.W"] = iv.source.weight.detach().float().contiguous().clone()
                out[f"{name}.b"] = iv.source.bias.detach().float().contiguous().clone()
        return out

    def save(self, out_dir: str | Path) -> Path:
        from safetensors.torch import save_file

        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        save_file(self.tensors(), str(out / ADAPTER_WEIGHTS))
        meta = _AdapterFile(reft=self.config, base=self.base, trainable_params=self.trainable_params())
        (out / ADAPTER_CONFIG).write_text(meta.model_dump_json(indent=2) + "\n")
        return out

    @classmethod
    def load(cls, path: str | Path) -> ReftAdapter:
        """Load an adapter folder; missing or malformed files raise one-line UserErrors."""
        from safetensors.torch import load_file

        folder = Path(path).expanduser()
        if not folder.is_dir():
            raise UserError(
                f"ReFT adapter folder {folder} does not exist; train one with `factflow reft train`."
            )
        for name in (ADAPTER_CONFIG, ADAPTER_WEIGHTS):
            if not (folder / name).is_file():
                raise UserError(
                    f"ReFT adapter folder {folder} has no {name}; point to a folder written by "
                    "`factflow reft train`."
                )
        try:
            meta = _AdapterFile.model_validate_json((folder / ADAPTER_CONFIG).read_text())
        except ValidationError as exc:
            raise UserError(
                f"{folder / ADAPTER_CONFIG} is not a factflow ReFT config ({exc.error_count()} problems); "
                "retrain the adapter with `factflow reft train`."
            ) from None
        adapter = cls(meta.reft, meta.base)
        tensors = load_file(str(folder / ADAPTER_WEIGHTS))
        for name, iv in adapter.interventions.items():
            assert isinstance(iv, LoReFT)
            try:
                iv.set_weights(tensors[f"{name}.R"], tensors[f"{name}.W"], tensors[f"{name}.b"])
            except (KeyError, RuntimeError) as exc:
                raise UserError(
                    f"{folder / ADAPTER_WEIGHTS} does not match its config.json ({exc}); retrain the adapter."
                ) from None
        return adapter


def reft_chat_model(
    model_path: str | Path, adapter: str | Path, dtype: str = "float32", **chat_kwargs: Any
) -> Any:
    """A transformers-engine chat model with the adapter's hooks attached.

    Loads its own copy of the base (not the shared cached one), so the hooks never leak into
    other in-process users of the same model.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from factflow.serving.hf_engine import TransformersChatModel

    loaded = ReftAdapter.load(adapter)
    torch_dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}.get(
        dtype, torch.float32
    )
    tok = AutoTokenizer.from_pretrained(str(model_path))
    model = AutoModelForCausalLM.from_pretrained(str(model_path), dtype=torch_dtype).eval()
    handle = loaded.attach(model)
    chat = TransformersChatModel.from_model(model, tok, dtype=dtype, **chat_kwargs)
    model._factflow_reft_handle = handle  # keep the hooks alive as long as the model
    return chat
