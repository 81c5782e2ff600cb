"""vLLM out-of-tree model: stock Llama with LoReFT edits on the residual stream, one adapter per request.

Registered as "FactflowReftLlamaForCausalLM" by `serving/vllm_plugin.py`. A folder written by
`factflow.serving.reft_prepare` names this architecture and lists its adapters in config.json
(`factflow_reft_adapters`: {name: folder}, `factflow_reft_default`: the adapter a request gets when
it names none, or null for the plain base). A request picks one by name through vLLM's per-request
extra args (`vllm_xargs={"factflow_adapter": "facts-v2"}`, "base" = none); rows of one batch may
use different adapters (`serving/vllm_steering.py` says which row is which request).

vLLM's Llama decoder layer returns `(hidden, residual)` unsummed: the next layer's fused
add-RMSNorm adds them. The layer output Hugging Face sees is h = hidden + residual, so the hook
returns `(delta, h)` with

    delta = R^T (W h + b - R h) = ((W - R) h + b) R      # two rank-r products, (T, d) -> (T, r) -> (T, d)

and the next layer computes h + delta, the same sum as `LoReFT(h)` on the transformers engine.

All adapters live in persistent buffers, stacked per intervened layer: E entries (one per adapter
and position slot), ranks padded with zero rows (a zero row adds nothing). Each token gets one
entry (0 = no edit) in `entries`, filled before the compiled decoder stack runs; the hook then does
two dense products over all entries, (T, d) x (d, E r) and (T, E r) x (E r, d), with the columns of
the other entries zeroed: no per-token gather of matrices, no data-dependent branch, the same
graph whatever the batch's mix (so it traces under torch.compile).

Positions, as in pyreft: `all` edits every token, prompt and generated; `prefix+suffix` edits the
first `prefix` and last `suffix` prompt tokens only. A token's place in its prompt comes from its
position (vLLM's `positions`) and its request's prompt length, so chunked prefill and decode steps
need nothing else; decode tokens (position >= prompt length) are never edited.
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from torch import nn
from vllm.config import VllmConfig
from vllm.model_executor.models.llama import LlamaForCausalLM

from factflow.errors import UserError
from factflow.serving.reft_adapter import VLLM_ADAPTER_KEY, ReftAdapter
from factflow.serving.vllm_plugin import REFT_ADAPTERS_KEY, REFT_DEFAULT_KEY
from factflow.serving.vllm_steering import BASE_ADAPTER, ROWS, request_settings

__all__ = ["ReftLlamaForCausalLM", "StackedLoReFT"]

log = logging.getLogger(__name__)


class StackedLoReFT(nn.Module):
    """Frozen LoReFT of E entries at one layer: buffers (W - R) and R as (d, E r) / (E r, d), b (E r,)."""

    # registered as buffers below; declared so they type as tensors, not `Tensor | Module`
    A: torch.Tensor
    b: torch.Tensor
    R: torch.Tensor
    entries: torch.Tensor

    def __init__(self, blocks: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None], d: int, r: int,
                 entries: torch.Tensor) -> None:  # fmt: skip
        super().__init__()
        dtype = torch.get_default_dtype()  # vLLM sets it to the model dtype while building
        E = len(blocks)  # noqa: N806
        A, b, R = torch.zeros(E, r, d), torch.zeros(E, r), torch.zeros(E, r, d)  # noqa: N806
        for e, block in enumerate(blocks):
            if block is not None:
                Re, We, be = block  # noqa: N806
                k = Re.shape[0]
                A[e, :k], b[e, :k], R[e, :k] = We - Re, be, Re
        self.E, self.r = E, r
        # buffers, not parameters: vLLM's loader must not look for them in the base checkpoint
        self.register_buffer("A", A.reshape(E * r, d).T.contiguous().to(dtype), persistent=False)  # (d, E r)
        self.register_buffer("b", b.reshape(E * r).to(dtype), persistent=False)  # (E r,)
        self.register_buffer("R", R.reshape(E * r, d).to(dtype), persistent=False)  # (E r, d)
        # (max tokens,) long, one tensor shared by every layer and the model; 0 = no edit
        self.register_buffer("entries", entries, persistent=False)

    def delta(self, h: torch.Tensor) -> torch.Tensor:
        T = h.shape[0]  # noqa: N806
        entry = self.entries[:T]
        # one-hot over entries 1..E (entry 0 = no edit: an all-zero row), repeated over the rank
        pick = (entry[:, None] == torch.arange(1, self.E + 1, device=h.device)[None, :]).to(h.dtype)
        pick = pick.repeat_interleave(self.r, dim=1)  # (T, E r)
        u = (h @ self.A + self.b) * pick  # (T, E r): (W - R) h + b for the token's own entry only
        return u @ self.R  # (T, d)

    def hook(self, module: nn.Module, args: Any, output: tuple[torch.Tensor, torch.Tensor]) -> Any:
        hidden, residual = output
        h = hidden + residual if residual is not None else hidden
        return self.delta(h), h


class _Entry:
    """One stacked entry: an adapter's intervention for one position slot."""

    def __init__(self, index: int, adapter: ReftAdapter, slot: str) -> None:
        self.index, self.adapter, self.slot = index, adapter, slot


class ReftLlamaForCausalLM(LlamaForCausalLM):
    """vLLM's LlamaForCausalLM with stacked LoReFT adapters, picked per request."""

    reft_entries: torch.Tensor  # a buffer (registered in __init__)

    def __init__(self, *, vllm_config: VllmConfig, prefix: str = "", **kwargs: Any) -> None:
        super().__init__(vllm_config=vllm_config, prefix=prefix, **kwargs)
        config = vllm_config.model_config.hf_config
        paths: dict[str, str] = dict(getattr(config, REFT_ADAPTERS_KEY, None) or {})
        default = getattr(config, REFT_DEFAULT_KEY, None)
        if not paths and getattr(config, VLLM_ADAPTER_KEY, None):  # a folder with one adapter only
            paths, default = {"default": getattr(config, VLLM_ADAPTER_KEY)}, "default"
        if not paths:
            raise UserError(
                f"the model config has no {REFT_ADAPTERS_KEY!r}; prepare the folder with "
                "factflow.serving.reft.prepare_vllm_folder (or `factflow serve --reft DIR`)."
            )
        self.default_adapter: str | None = default
        adapters = {name: ReftAdapter.load(path) for name, path in paths.items()}
        for name, adapter in adapters.items():
            adapter.check_base(config, where=f"the model vLLM is loading (adapter {name!r})")
        # entry 0 is "no edit"; then one entry per (adapter, slot)
        self.entries_of: dict[str, dict[str, int]] = {}
        entries: list[_Entry] = []
        for name, adapter in adapters.items():
            self.entries_of[name] = {}
            for slot in adapter.config.slots():
                entries.append(_Entry(len(entries) + 1, adapter, slot))
                self.entries_of[name][slot] = len(entries)
        self.adapters = adapters
        max_tokens = int(vllm_config.scheduler_config.max_num_batched_tokens)
        # (max tokens,): each token's entry, written by `forward` before the decoder stack runs
        self.register_buffer("reft_entries", torch.zeros(max_tokens, dtype=torch.long), persistent=False)
        d = int(config.hidden_size)
        r = max(a.config.rank for a in adapters.values())
        weights = {name: a.tensors() for name, a in adapters.items()}
        names = {id(a): n for n, a in adapters.items()}
        self.reft = nn.ModuleDict()
        self._reft_hooks = []
        for layer in sorted({layer for a in adapters.values() for layer in a.config.layers}):
            if not self.model.start_layer <= layer < self.model.end_layer:
                continue  # another pipeline stage owns this layer
            blocks: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None] = []
            for e in entries:
                w = weights[names[id(e.adapter)]]
                key = f"{layer}_{e.slot}"
                blocks.append((w[f"{key}.R"], w[f"{key}.W"], w[f"{key}.b"]) if f"{key}.R" in w else None)
            stack = StackedLoReFT(blocks, d, r, self.reft_entries)
            self.reft[str(layer)] = stack
            self._reft_hooks.append(self.model.layers[layer].register_forward_hook(stack.hook))

    def load_weights(self, weights: Any) -> set[str]:
        loaded = super().load_weights(weights)
        # a device move during loading copies each buffer registration apart: share one tensor again
        for stack in self.reft.values():
            stack.entries = self.reft_entries
        return set(loaded)

    def forward(
        self, input_ids: torch.Tensor | None, positions: torch.Tensor, *args: Any, **kwargs: Any
    ) -> Any:
        # Outside the compiled decoder stack: decide each token's entry, then run the stock forward.
        self.reft_entries.zero_()
        self.reft_entries[: positions.shape[0]] = self._token_entries(positions)
        return super().forward(input_ids, positions, *args, **kwargs)

    def _row_spans(self, n_tokens: int) -> list[tuple[int, int]]:
        """[start, end) of each request's tokens in this step, in batch order (the rows' order)."""
        from vllm.forward_context import get_forward_context, is_forward_context_available

        if not is_forward_context_available():
            return []
        meta: Any = get_forward_context().attn_metadata
        if isinstance(meta, list):
            meta = meta[0] if meta else None
        first = next(iter(meta.values()), None) if isinstance(meta, dict) else None
        starts = getattr(first, "query_start_loc", None)
        if starts is None:  # a dummy run (profiling, warm-up): no requests
            return []
        bounds = [int(x) for x in starts.tolist()]
        return [(s, min(e, n_tokens)) for s, e in zip(bounds[:-1], bounds[1:], strict=False) if s < n_tokens]

    def _token_entries(self, positions: torch.Tensor) -> torch.Tensor:
        n = positions.shape[0]
        out = torch.zeros(n, dtype=torch.long)
        spans = self._row_spans(n)
        rows = request_settings(len(spans))
        pos = positions.cpu()
        for (start, end), row in zip(spans, rows, strict=True):
            name = row.adapter if ROWS.active and row.adapter is not None else self.default_adapter
            if name is None or name == BASE_ADAPTER:
                continue
            if name not in self.adapters:  # the API server rejects these; never edit on a guess
                log.warning("request names unknown adapter %r; serving the base", name)
                continue
            cfg, slots = self.adapters[name].config, self.entries_of[name]
            if cfg.positions == "all":
                out[start:end] = slots["all"]
                continue
            p, plen = pos[start:end], row.prompt_len
            pre = p < min(cfg.prefix, plen)
            suf = (p >= plen - cfg.suffix) & (p < plen)
            span = out[start:end]
            if cfg.tie_positions:
                span[pre | suf] = slots["shared"]
            else:  # where the spans overlap (short prompts) the suffix edit wins, as on transformers
                span[pre] = slots["prefix"]
                span[suf] = slots["suffix"]
        return out.to(self.reft_entries.device)
