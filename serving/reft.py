"""LoReFT adapters: edit hidden states of a frozen model instead of its weights.

Wu et al., 2024 ("ReFT: Representation Finetuning for Language Models"; stanfordnlp/pyreft).
At each intervened layer l and position i the layer output h (d,) is replaced by

    LoReFT(h) = h + R^T (W h + b - R h)

R (r, d) has orthonormal rows (R R^T = I_r), W (r, d) and b (r,) are learned: the edit lives in the
r-dimensional subspace spanned by R's rows, where the representation is moved to W h + b. That is
2 r d + r parameters per intervention; the base model's weights never change.

This module holds the intervention (`LoReFT`), its settings (`ReftConfig`), the adapter folder
(`ReftAdapter`: config.json + safetensors + the identity of the base model it was trained on), the
attachment to a Hugging Face model through forward hooks (`ReftAdapter.attach`), the training loop
(`train_reft`) and `prepare_vllm_folder`, which makes a model folder that vLLM serves with the
adapter applied inside the engine (see `serving/vllm_reft.py`).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import random
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Literal, cast

import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from torch import nn

from factflow.errors import UserError

__all__ = [
    "LoReFT",
    "ReftConfig",
    "TrainConfig",
    "Example",
    "BaseIdentity",
    "ReftAdapter",
    "ReftHandle",
    "TrainReport",
    "train_reft",
    "load_examples",
    "greedy_generate",
    "recall",
    "prepare_vllm_folder",
    "reft_served_model",
    "reft_chat_model",
    "ADAPTER_CONFIG",
    "ADAPTER_WEIGHTS",
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


class TrainConfig(BaseModel):
    """Training knobs (not saved with the adapter's architecture; recorded in training.json)."""

    model_config = ConfigDict(extra="forbid")

    epochs: int = Field(40, ge=1, description="Upper bound; early stopping usually ends sooner.")
    lr: float = Field(4e-3, gt=0, description="AdamW learning rate (pyreft uses 4e-3 for LoReFT).")
    weight_decay: float = Field(0.0, ge=0)
    batch_size: int = Field(8, ge=1)
    grad_accum: int = Field(1, ge=1, description="Micro-batches per optimizer step.")
    warmup_ratio: float = Field(0.05, ge=0, lt=1, description="Linear warmup, then linear decay.")
    val_fraction: float = Field(
        0.0,
        ge=0,
        lt=1,
        description="Held-out share for early stopping; 0 = watch the training set (memorising facts).",
    )
    patience: int = Field(5, ge=1, description="Epochs without validation improvement before stopping.")
    stop_loss: float | None = Field(0.01, description="Stop once the validation loss is below this.")
    seed: int = 0
    max_length: int = Field(256, ge=8, description="Prompt + completion tokens kept per example.")
    chat_template: bool = Field(True, description="Wrap prompts in the tokenizer's chat template.")


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


# ----------------------------------------------------------------------------------------------
# data


def load_examples(path: str | Path) -> list[Example]:
    """Read prompt/completion pairs from JSONL (one {"prompt": ..., "completion": ...} per line)."""
    file = Path(path).expanduser()
    if not file.is_file():
        raise UserError(f"training data {file} does not exist; pass a JSONL file of prompt/completion pairs.")
    examples = []
    for n, line in enumerate(file.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            examples.append(Example.model_validate_json(line))
        except ValidationError:
            raise UserError(
                f"{file}:{n} is not a JSON object with string fields 'prompt' and 'completion'; "
                "fix that line."
            ) from None
    if not examples:
        raise UserError(f"training data {file} is empty; add prompt/completion lines.")
    return examples


def _prompt_ids(tokenizer: Any, prompt: str, chat: bool) -> list[int]:
    if chat and getattr(tokenizer, "chat_template", None):
        ids = tokenizer.apply_chat_template(
            [{"role": "user", "content": prompt}], add_generation_prompt=True, tokenize=True
        )
        if isinstance(ids, dict) or hasattr(ids, "keys"):
            ids = ids["input_ids"]
        return list(ids)
    return list(tokenizer(prompt, add_special_tokens=True)["input_ids"])


def _completion_ids(tokenizer: Any, completion: str, chat: bool) -> list[int]:
    ids = list(tokenizer(completion, add_special_tokens=False)["input_ids"])
    end = "<|im_end|>" if chat and "<|im_end|>" in tokenizer.get_vocab() else None
    end_id = tokenizer.convert_tokens_to_ids(end) if end else tokenizer.eos_token_id
    # ending on the end-of-turn token teaches the model to stop after the answer
    return ids + ([end_id] if end_id is not None else [])


def _batches(
    rows: list[tuple[list[int], list[int]]], batch_size: int, pad_id: int, shuffle: random.Random | None
) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]]:
    order = list(range(len(rows)))
    if shuffle is not None:
        shuffle.shuffle(order)
    for i in range(0, len(order), batch_size):
        chunk = [rows[j] for j in order[i : i + batch_size]]
        T = max(len(p) + len(c) for p, c in chunk)  # noqa: N806
        ids = torch.full((len(chunk), T), pad_id, dtype=torch.long)  # right padding: (B, T)
        labels = torch.full((len(chunk), T), -100, dtype=torch.long)
        mask = torch.zeros((len(chunk), T), dtype=torch.long)
        plen = torch.tensor([len(p) for p, _ in chunk])
        for b, (p, c) in enumerate(chunk):
            ids[b, : len(p) + len(c)] = torch.tensor(p + c)
            labels[b, len(p) : len(p) + len(c)] = torch.tensor(c)  # loss on the completion only
            mask[b, : len(p) + len(c)] = 1
        yield ids, mask, labels, plen


# ----------------------------------------------------------------------------------------------
# training


class TrainReport(BaseModel):
    """What a training run did; saved as training.json next to the adapter."""

    model_config = ConfigDict(extra="forbid")

    trainable_params: int
    base_params: int
    train_examples: int
    val_examples: int
    epochs_run: int
    stopped_early: bool
    best_val_loss: float
    train_losses: list[float]
    val_losses: list[float]
    seconds_per_epoch: list[float]
    device: str
    config: TrainConfig


def _loss(model: nn.Module, handle: ReftHandle, batch: tuple[torch.Tensor, ...], device: torch.device) -> Any:
    ids, mask, labels, plen = batch
    with handle.prompt_spans(torch.zeros_like(plen), plen):
        out = model(input_ids=ids.to(device), attention_mask=mask.to(device), labels=labels.to(device))
    return out.loss


def _eval_loss(
    model: nn.Module, handle: ReftHandle, rows: list, bs: int, pad: int, dev: torch.device
) -> float:
    total, n = 0.0, 0
    with torch.no_grad():
        for batch in _batches(rows, bs, pad, None):
            total += float(_loss(model, handle, batch, dev)) * batch[0].shape[0]
            n += batch[0].shape[0]
    return total / max(n, 1)


def train_reft(
    model_path: str | Path,
    examples: Sequence[Example],
    config: ReftConfig,
    out_dir: str | Path,
    *,
    train: TrainConfig | None = None,
    model: nn.Module | None = None,
    tokenizer: Any = None,
    progress: bool = True,
) -> Path:
    """Train a LoReFT adapter on a frozen model and save it to `out_dir`; returns the folder.

    `model`/`tokenizer` may be passed to reuse an already loaded base (its weights stay untouched:
    only the adapter's parameters are given to the optimizer and the base's `requires_grad` flags
    are restored afterwards). The report (trainable parameters, losses, time per epoch) is saved
    as training.json in the folder.
    """
    from tqdm.auto import tqdm
    from transformers import get_linear_schedule_with_warmup

    tc = train or TrainConfig()
    if not examples:
        raise UserError("no training examples were given; pass a JSONL file of prompt/completion pairs.")
    random.seed(tc.seed)
    torch.manual_seed(tc.seed)
    if model is None or tokenizer is None:
        model, tokenizer = _load_base(str(model_path))
    device = next(model.parameters()).device
    adapter = ReftAdapter.for_model(config, model)
    handle = adapter.attach(model)
    flags = {name: p.requires_grad for name, p in model.named_parameters()}
    for p in model.parameters():
        p.requires_grad_(False)
    was_training = model.training
    model.eval()  # base dropout off: only the interventions learn

    rows: list[tuple[list[int], list[int]]] = []
    for ex in examples:
        prompt = _prompt_ids(tokenizer, ex.prompt, tc.chat_template)
        comp = _completion_ids(tokenizer, ex.completion, tc.chat_template)
        rows.append(
            (prompt[-(tc.max_length - min(len(comp), tc.max_length // 2)) :], comp[: tc.max_length // 2])
        )
    rng = random.Random(tc.seed)
    shuffled = rows[:]
    rng.shuffle(shuffled)
    n_val = int(len(rows) * tc.val_fraction)
    val_rows, train_rows = (shuffled[:n_val], shuffled[n_val:]) if n_val else (rows, rows)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0

    params = [p for p in adapter.parameters() if p.requires_grad]
    optim = torch.optim.AdamW(params, lr=tc.lr, weight_decay=tc.weight_decay)
    steps_per_epoch = math.ceil(math.ceil(len(train_rows) / tc.batch_size) / tc.grad_accum)
    total = steps_per_epoch * tc.epochs
    sched = get_linear_schedule_with_warmup(optim, int(total * tc.warmup_ratio), total)

    train_losses: list[float] = []
    val_losses: list[float] = []
    secs: list[float] = []
    best, best_state, bad_epochs, stopped = float("inf"), adapter.tensors(), 0, False
    bar = tqdm(range(tc.epochs), desc="reft", disable=not progress, unit="epoch")
    if progress:
        tqdm.write(
            f"trainable params: {adapter.trainable_params():,} "
            f"({100 * adapter.trainable_params() / sum(p.numel() for p in model.parameters()):.4f}% of base)"
        )
    try:
        for _epoch in bar:
            t0 = time.perf_counter()
            adapter.train()
            running, n = 0.0, 0
            for i, batch in enumerate(_batches(train_rows, tc.batch_size, pad, rng)):
                loss = _loss(model, handle, batch, device)
                (loss / tc.grad_accum).backward()
                running, n = running + float(loss.detach()) * batch[0].shape[0], n + batch[0].shape[0]
                if (i + 1) % tc.grad_accum == 0:
                    optim.step()
                    sched.step()
                    optim.zero_grad(set_to_none=True)
            if any(p.grad is not None for p in params):  # flush a last partial accumulation
                optim.step()
                sched.step()
                optim.zero_grad(set_to_none=True)
            adapter.eval()
            train_losses.append(running / max(n, 1))
            # no held-out split (memorising facts): the epoch's training loss is the signal, which
            # saves a full extra forward pass over the data per epoch
            val = train_losses[-1]
            if n_val:
                val = _eval_loss(model, handle, val_rows, tc.batch_size, pad, device)
            secs.append(time.perf_counter() - t0)
            val_losses.append(val)
            bar.set_postfix(loss=f"{train_losses[-1]:.4f}", val=f"{val:.4f}")
            if val < best - 1e-4:
                best, best_state, bad_epochs = val, adapter.tensors(), 0
            else:
                bad_epochs += 1
            if bad_epochs >= tc.patience or (tc.stop_loss is not None and val < tc.stop_loss):
                stopped = True
                break
    finally:
        handle.remove()
        for name, p in model.named_parameters():
            p.requires_grad_(flags[name])
        model.train(was_training)
    for name, iv in adapter.interventions.items():  # keep the best epoch, as early stopping promises
        assert isinstance(iv, LoReFT)
        iv.set_weights(best_state[f"{name}.R"], best_state[f"{name}.W"], best_state[f"{name}.b"])
    out = adapter.save(out_dir)
    report = TrainReport(
        trainable_params=adapter.trainable_params(),
        base_params=sum(p.numel() for p in model.parameters()),
        train_examples=len(train_rows),
        val_examples=len(val_rows) if n_val else 0,
        epochs_run=len(train_losses),
        stopped_early=stopped,
        best_val_loss=best,
        train_losses=train_losses,
        val_losses=val_losses,
        seconds_per_epoch=secs,
        device=str(device),
        config=tc,
    )
    (out / TRAIN_REPORT).write_text(report.model_dump_json(indent=2) + "\n")
    return out


def _load_base(path: str) -> tuple[nn.Module, Any]:
    try:
        from factflow.serving.hf_engine import load_hf_model  # the lead's cached loader

        return load_hf_model(path)  # type: ignore[no-any-return]
    except ImportError:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        tok = AutoTokenizer.from_pretrained(path)
        return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32), tok


# ----------------------------------------------------------------------------------------------
# evaluation helpers


@torch.no_grad()
def greedy_generate(
    model: nn.Module, tokenizer: Any, prompt_ids: list[int], max_new_tokens: int = 32
) -> list[int]:
    """Greedy continuation of one tokenized prompt (no padding, so it matches vLLM token for token)."""
    device = next(model.parameters()).device
    ids = torch.tensor([prompt_ids], device=device)
    # a Hugging Face causal LM: nn.Module itself declares no `generate`
    out = cast(Any, model).generate(
        input_ids=ids,
        attention_mask=torch.ones_like(ids),
        max_new_tokens=max_new_tokens,
        do_sample=False,
        pad_token_id=tokenizer.pad_token_id,
    )
    return [int(t) for t in out[0, len(prompt_ids) :]]


def _norm(text: str) -> str:
    return " ".join(text.lower().replace("<|im_end|>", " ").split()).strip(" .")


def recall(
    model: nn.Module,
    tokenizer: Any,
    examples: Sequence[Example],
    chat_template: bool = True,
    progress: bool = False,
) -> tuple[float, list[str]]:
    """Exact recall: share of examples whose greedy answer starts with the expected completion."""
    from tqdm.auto import tqdm

    hits, outputs = 0, []
    for ex in tqdm(examples, desc="recall", disable=not progress):
        want = _completion_ids(tokenizer, ex.completion, chat_template)
        prompt = _prompt_ids(tokenizer, ex.prompt, chat_template)
        got = greedy_generate(model, tokenizer, prompt, len(want) + 4)
        text = tokenizer.decode(got, skip_special_tokens=True)
        outputs.append(text)
        hits += _norm(text).startswith(_norm(ex.completion))
    return hits / len(examples), outputs


# ----------------------------------------------------------------------------------------------
# vLLM


def prepare_vllm_folder(base: str | Path, adapter: str | Path, out: str | Path) -> Path:
    """Write a model folder vLLM serves with the adapter: base files symlinked, config rewritten.

    config.json names `FactflowReftLlamaForCausalLM` (registered by `serving/vllm_plugin.py`) and
    stores the adapter's absolute path under `factflow_reft_adapter`; vLLM's out-of-tree model
    (`serving/vllm_reft.py`) reads it when the engine builds the model.
    """
    from factflow.serving.vllm_plugin import REFT_ARCHITECTURE

    base_dir, adapter_dir, out_dir = (Path(p).expanduser().resolve() for p in (base, adapter, out))
    if not (base_dir / "config.json").is_file():
        raise UserError(f"base model folder {base_dir} has no config.json; pass a Hugging Face model folder.")
    loaded = ReftAdapter.load(adapter_dir)
    cfg = json.loads((base_dir / "config.json").read_text())
    loaded.check_base(_DictConfig(cfg), where=f"the base model {base_dir}")
    if loaded.config.positions != "all":
        raise UserError(
            f"ReFT adapter {adapter_dir} uses positions={loaded.config.positions!r}, which vLLM does not "
            "support yet; train it with --positions all to serve it in vLLM."
        )
    out_dir.mkdir(parents=True, exist_ok=True)
    for item in base_dir.iterdir():
        if item.name == "config.json" or item.name.startswith("."):
            continue
        link = out_dir / item.name
        if link.is_symlink() or link.exists():
            link.unlink()
        link.symlink_to(item)
    cfg["factflow_base_architecture"] = (cfg.get("architectures") or ["LlamaForCausalLM"])[0]
    cfg["architectures"] = [REFT_ARCHITECTURE]
    cfg[VLLM_ADAPTER_KEY] = str(adapter_dir)
    (out_dir / "config.json").write_text(json.dumps(cfg, indent=2) + "\n")
    return out_dir


class _DictConfig:
    def __init__(self, cfg: dict[str, Any]) -> None:
        self._cfg = cfg

    def to_dict(self) -> dict[str, Any]:
        return dict(self._cfg)


# ----------------------------------------------------------------------------------------------
# engine wiring (used by `factflow serve --reft DIR` and `factflow chat --reft DIR`)


def reft_served_model(base: str | Path, adapter: str | Path, home: str | Path) -> str:
    """Model folder for `VLLMServer`: `prepare_vllm_folder` under HOME/vllm-reft/<adapter>-<hash>."""
    adapter_dir = Path(adapter).expanduser().resolve()
    tag = hashlib.sha256(f"{Path(base).resolve()}|{adapter_dir}".encode()).hexdigest()[:10]
    out = Path(home).expanduser() / "vllm-reft" / f"{adapter_dir.name}-{tag}"
    return str(prepare_vllm_folder(base, adapter_dir, out))


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
