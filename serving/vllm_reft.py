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

Adapters live in persistent buffers of a fixed size, stacked per intervened layer: `capacity`
adapter slots of two entries each (first: `all`, `shared` or `prefix`; second: `suffix`), ranks
padded with zero rows (a zero row adds nothing). Each token gets one entry (0 = no edit) in
`entries`, filled by one vectorised pass before the compiled decoder stack runs; the hook then
does two dense products over all entries, (T, d) x (d, E r) and (T, E r) x (E r, d), with the
columns of the other entries zeroed: no per-token gather of matrices, no data-dependent branch,
the same graph whatever the batch's mix (so it traces under torch.compile). At rank 4-8 and a
few layers this is ~0.1-0.3% of a decode step (`python -m factflow.bench.steering --micro`).

Run-time loading (`ReftWorkerExtension`, called by `serving/vllm_adapters.py` through vLLM's
`collective_rpc`) writes an adapter into a free slot in place: no buffer changes shape, so a
compiled graph stays valid. The server's intervened layers, rank cap and slot count are fixed
when it starts (config.json `factflow_reft_layers`, `factflow_reft_max_rank`,
`factflow_reft_capacity`; by default the start-up adapters' layers, max(their rank, 8) and
max(their count, 8)). Unloading takes the name away from new requests at once; requests already
admitted keep the adapter until they finish (the slot is reused only by a later load, and only
once no running request names it).

Positions, as in pyreft: `all` edits every token, prompt and generated; `prefix+suffix` edits the
first `prefix` and last `suffix` prompt tokens only. A token's place in its prompt comes from its
position (vLLM's `positions`) and its request's prompt length, so chunked prefill and decode steps
need nothing else; decode tokens (position >= prompt length) are never edited.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import torch
from torch import nn
from vllm.config import VllmConfig
from vllm.model_executor.models.llama import LlamaForCausalLM

from factflow.errors import UserError
from factflow.serving.reft_adapter import ADAPTER_CONFIG, ADAPTER_WEIGHTS, VLLM_ADAPTER_KEY, ReftAdapter
from factflow.serving.reft_prepare import check_adapter_name
from factflow.serving.vllm_plugin import REFT_ADAPTERS_KEY, REFT_DEFAULT_KEY
from factflow.serving.vllm_steering import BASE_ADAPTER, ROWS, request_settings

__all__ = [
    "REFT_CAPACITY_KEY",
    "REFT_LAYERS_KEY",
    "REFT_MAX_RANK_KEY",
    "ReftLlamaForCausalLM",
    "ReftWorkerExtension",
    "RowEdit",
    "StackedLoReFT",
    "adapter_digest",
    "token_entries",
]

log = logging.getLogger(__name__)

REFT_CAPACITY_KEY = "factflow_reft_capacity"  # config.json: adapter slots (start-up + run-time loads)
REFT_LAYERS_KEY = "factflow_reft_layers"  # config.json: layers the server can edit
REFT_MAX_RANK_KEY = "factflow_reft_max_rank"  # config.json: the largest rank a slot holds
_MIN_CAPACITY, _MIN_RANK = 8, 8  # defaults leave room for run-time loads

Block = tuple[torch.Tensor, torch.Tensor, torch.Tensor]  # R (k, d), W (k, d), b (k,)


class StackedLoReFT(nn.Module):
    """Frozen LoReFT of E entries at one layer: buffers (W - R) and R as (d, E r) / (E r, d), b (E r,)."""

    # registered as buffers below; declared so they type as tensors, not `Tensor | Module`
    A: torch.Tensor
    b: torch.Tensor
    R: torch.Tensor
    entries: torch.Tensor

    def __init__(self, blocks: Sequence[Block | None], d: int, r: int, entries: torch.Tensor) -> None:
        super().__init__()
        dtype = torch.get_default_dtype()  # vLLM sets it to the model dtype while building
        E = len(blocks)  # noqa: N806
        self.E, self.r = E, r
        # buffers, not parameters: vLLM's loader must not look for them in the base checkpoint
        self.register_buffer("A", torch.zeros(d, E * r, dtype=dtype), persistent=False)  # (d, E r)
        self.register_buffer("b", torch.zeros(E * r, dtype=dtype), persistent=False)  # (E r,)
        self.register_buffer("R", torch.zeros(E * r, d, dtype=dtype), persistent=False)  # (E r, d)
        # (max tokens,) long, one tensor shared by every layer and the model; 0 = no edit
        self.register_buffer("entries", entries, persistent=False)
        for e, block in enumerate(blocks):
            self.write(e + 1, block)

    @torch.inference_mode()  # the buffers may be inference tensors (built under vLLM's inference mode)
    def write(self, entry: int, block: Block | None) -> None:
        """Put one intervention (or none) in entry `entry` (1..E), in place: shapes never change."""
        cols = slice((entry - 1) * self.r, entry * self.r)
        self.A[:, cols], self.b[cols], self.R[cols] = 0.0, 0.0, 0.0
        if block is None:
            return
        Re, We, be = block  # noqa: N806
        k = Re.shape[0]
        if k > self.r:
            raise ValueError(f"rank {k} does not fit this server's rank cap {self.r}")
        rows = slice((entry - 1) * self.r, (entry - 1) * self.r + k)
        self.A[:, rows] = (We - Re).T.to(self.A)
        self.b[rows] = be.to(self.b)
        self.R[rows] = Re.to(self.R)

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


@dataclass(frozen=True)
class RowEdit:
    """What one request's tokens get: `first` on all tokens (all=True) or on the first `prefix`
    prompt tokens, `second` on the last `suffix` prompt tokens (wins where they overlap)."""

    first: int = 0
    second: int = 0
    all: bool = False
    prefix: int = 0
    suffix: int = 0
    prompt_len: int = 0


def token_entries(
    positions: torch.Tensor, spans: Sequence[tuple[int, int]], rows: Sequence[RowEdit]
) -> torch.Tensor:
    """(n,) positions, each row's [start, end) tokens and edit -> (n,) entry per token, one vector pass.

    Rows' settings are gathered into per-row tensors and spread to their tokens; no Python work per
    token or per (row, tensor op). Tokens outside every span get 0.
    """
    n = positions.shape[0]
    out = torch.zeros(n, dtype=torch.long)
    if not spans:
        return out
    lengths = torch.tensor([e - s for s, e in spans], dtype=torch.long)
    row_of = torch.repeat_interleave(torch.arange(len(spans)), lengths)  # (covered,)
    covered = row_of.shape[0]
    start = spans[0][0]
    table = torch.tensor([[r.first, r.second, int(r.all), r.prefix, r.suffix, r.prompt_len] for r in rows],
                         dtype=torch.long)[row_of]  # (covered, 6)  # fmt: skip
    first, second, every, prefix, suffix, plen = table.unbind(dim=1)
    p = positions[start : start + covered].to(torch.long)
    pre = p < torch.minimum(prefix, plen)
    suf = (p >= plen - suffix) & (p < plen)
    picked = torch.where(suf, second, torch.where(pre, first, 0))
    out[start : start + covered] = torch.where(every.bool(), first, picked)
    return out


def adapter_digest(folder: str | Path) -> str:
    """Short hash of an adapter's files: its prefix-cache salt changes whenever its weights do."""
    h = hashlib.sha256()
    for name in (ADAPTER_CONFIG, ADAPTER_WEIGHTS):
        h.update((Path(folder) / name).read_bytes())
    return h.hexdigest()[:16]


@dataclass
class _Loaded:
    adapter: ReftAdapter
    slot: int  # entries 2 slot + 1 and 2 slot + 2
    path: str
    digest: str

    def edit(self, prompt_len: int) -> RowEdit:
        cfg, first, second = self.adapter.config, 2 * self.slot + 1, 2 * self.slot + 2
        if cfg.positions == "all":
            return RowEdit(first=first, all=True)
        return RowEdit(first=first, second=first if cfg.tie_positions else second,
                       prefix=cfg.prefix, suffix=cfg.suffix, prompt_len=prompt_len)  # fmt: skip


class AdapterRequestError(Exception):
    """A load/unload the server refuses: `status` is the HTTP status the admin endpoint answers."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class ReftLlamaForCausalLM(LlamaForCausalLM):
    """vLLM's LlamaForCausalLM with stacked LoReFT adapters, picked per request, loadable at run time."""

    reft_entries: torch.Tensor  # a buffer (registered in __init__)

    def __init__(self, *, vllm_config: VllmConfig, prefix: str = "", **kwargs: Any) -> None:
        super().__init__(vllm_config=vllm_config, prefix=prefix, **kwargs)
        config = vllm_config.model_config.hf_config
        self.hf_config = config
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
        n_layers = int(config.num_hidden_layers)
        layers = getattr(config, REFT_LAYERS_KEY, None) or sorted(
            {layer for a in adapters.values() for layer in a.config.layers}
        )
        self.capacity = int(getattr(config, REFT_CAPACITY_KEY, None) or max(len(adapters), _MIN_CAPACITY))
        self.max_rank = int(getattr(config, REFT_MAX_RANK_KEY, None) or max(
            [_MIN_RANK, *(a.config.rank for a in adapters.values())]))  # fmt: skip
        self.layers = sorted(int(x) for x in layers if 0 <= int(x) < n_layers)
        if len(adapters) > self.capacity:
            raise UserError(f"{len(adapters)} adapters do not fit {REFT_CAPACITY_KEY} = {self.capacity}")
        max_tokens = int(vllm_config.scheduler_config.max_num_batched_tokens)
        # (max tokens,): each token's entry, written by `forward` before the decoder stack runs
        self.register_buffer("reft_entries", torch.zeros(max_tokens, dtype=torch.long), persistent=False)
        d = int(config.hidden_size)
        self.reft = nn.ModuleDict()
        self._reft_hooks = []
        for layer in self.layers:
            if not self.model.start_layer <= layer < self.model.end_layer:
                continue  # another pipeline stage owns this layer
            stack = StackedLoReFT([None] * (2 * self.capacity), d, self.max_rank, self.reft_entries)
            self.reft[str(layer)] = stack
            self._reft_hooks.append(self.model.layers[layer].register_forward_hook(stack.hook))
        self.loaded: dict[str, _Loaded] = {}
        self.draining: dict[str, _Loaded] = {}  # unloaded, still serving requests admitted before
        for name, path in paths.items():
            self._install(name, adapters[name], str(Path(path).expanduser().resolve()))

    def load_weights(self, weights: Any) -> set[str]:
        loaded = super().load_weights(weights)
        # a device move during loading copies each buffer registration apart: share one tensor again
        for stack in self.reft.values():
            stack.entries = self.reft_entries
        return set(loaded)

    # -- run-time loading ---------------------------------------------------------------------

    def _in_use(self) -> set[str]:
        return {row.adapter for row in ROWS.rows.values() if row.adapter is not None}

    def _free_slot(self) -> int:
        taken = {x.slot for x in (*self.loaded.values(), *self.draining.values())}
        free = [s for s in range(self.capacity) if s not in taken]
        if free:
            return free[0]
        busy = self._in_use()
        for name, old in list(self.draining.items()):
            if name not in busy:  # unloaded and no running request names it: reuse its slot
                del self.draining[name]
                return old.slot
        raise AdapterRequestError(
            409, f"all {self.capacity} adapter slots are taken ({', '.join(self.loaded)} loaded); unload one "
            f"first, or start the server with a larger {REFT_CAPACITY_KEY}",
        )  # fmt: skip

    def _install(self, name: str, adapter: ReftAdapter, path: str) -> None:
        cfg = adapter.config
        if cfg.rank > self.max_rank:
            raise AdapterRequestError(
                400, f"adapter {name!r} has rank {cfg.rank}; this server holds ranks up to "
                f"{self.max_rank} ({REFT_MAX_RANK_KEY} in the served config.json)",
            )  # fmt: skip
        outside = sorted(set(cfg.layers) - set(self.layers))
        if outside:
            raise AdapterRequestError(
                400, f"adapter {name!r} edits layers {outside}; this server edits layers {self.layers} "
                f"(set {REFT_LAYERS_KEY} in the served config.json, or start a server with this adapter)",
            )  # fmt: skip
        slot = self._free_slot()
        tensors = adapter.tensors()
        slots = cfg.slots()  # ["all"], ["shared"] or ["prefix", "suffix"]: the slot's first and second entry
        for layer, module in self.reft.items():
            stack = cast(StackedLoReFT, module)
            for k in range(2):
                key = f"{layer}_{slots[k]}" if k < len(slots) else None
                block = (tensors[f"{key}.R"], tensors[f"{key}.W"], tensors[f"{key}.b"]) if (
                    key is not None and f"{key}.R" in tensors) else None  # fmt: skip
                stack.write(2 * slot + 1 + k, block)
        self.loaded[name] = _Loaded(adapter, slot, path, adapter_digest(path))

    def load_adapter(self, name: str, path: str) -> None:
        """Validate the adapter folder and put it in a free slot; AdapterRequestError says why not."""
        try:
            check_adapter_name(name)
            folder = Path(path).expanduser().resolve()
            adapter = ReftAdapter.load(folder)
            adapter.check_base(self.hf_config, where=f"the model this server runs (adapter {name!r})")
        except UserError as exc:
            raise AdapterRequestError(400, str(exc)) from None
        if name in self.loaded:
            raise AdapterRequestError(
                409, f"adapter {name!r} is already loaded (from {self.loaded[name].path}); "
                "unload it first to replace it",
            )  # fmt: skip
        if name in self.draining:
            if name in self._in_use():
                raise AdapterRequestError(409, f"adapter {name!r} was unloaded but still serves requests "
                                               "admitted before; retry when they finish")  # fmt: skip
            del self.draining[name]
        self._install(name, adapter, str(folder))
        log.info("loaded LoReFT adapter %r from %s into slot %d", name, folder, self.loaded[name].slot)

    def unload_adapter(self, name: str) -> int:
        """Take `name` from new requests; returns how many running requests still finish with it."""
        if name not in self.loaded:
            raise AdapterRequestError(404, f"no adapter {name!r} is loaded; loaded: "
                                           f"{', '.join(self.loaded) or 'none'}")  # fmt: skip
        if name == self.default_adapter:
            raise AdapterRequestError(
                409, f"adapter {name!r} is this server's default (requests that name no adapter get it); "
                "it stays loaded",
            )  # fmt: skip
        self.draining[name] = self.loaded.pop(name)
        running = sum(1 for row in ROWS.rows.values() if row.adapter == name)
        log.info("unloaded LoReFT adapter %r (%d running requests finish with it)", name, running)
        return running

    def adapters_info(self) -> dict[str, Any]:
        """What the API server's registry needs: names, their cache salts, the default, the limits."""
        return {
            "adapters": {n: {"path": x.path, "digest": x.digest, "rank": x.adapter.config.rank,
                             "layers": x.adapter.config.layers} for n, x in self.loaded.items()},
            "default": self.default_adapter, "capacity": self.capacity, "max_rank": self.max_rank,
            "layers": self.layers,
        }  # fmt: skip

    # -- per-step entries ---------------------------------------------------------------------

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

    def _row_edit(self, adapter: str | None, prompt_len: int) -> RowEdit:
        name = adapter if ROWS.active and adapter is not None else self.default_adapter
        if name is None or name == BASE_ADAPTER:
            return RowEdit()
        entry = self.loaded.get(name) or self.draining.get(name)
        if entry is None:  # the API server rejects these; never edit on a guess
            log.warning("request names adapter %r, which is not loaded; serving the base", name)
            return RowEdit()
        return entry.edit(prompt_len)

    def _token_entries(self, positions: torch.Tensor) -> torch.Tensor:
        spans = self._row_spans(positions.shape[0])
        edits = [self._row_edit(row.adapter, row.prompt_len) for row in request_settings(len(spans))]
        return token_entries(positions.cpu(), spans, edits).to(self.reft_entries.device)


class ReftWorkerExtension:
    """Methods vLLM adds to its worker (`--worker-extension-cls`) for `collective_rpc`.

    They run in the engine between steps (vLLM handles utility calls in its busy loop), so a load
    never races a forward. Each returns a JSON-able dict with the HTTP `status` the admin endpoint
    answers (`serving/vllm_adapters.py`) and the adapters loaded afterwards.
    """

    model_runner: Any  # the worker's (vLLM sets it)

    def _factflow_reft(self) -> ReftLlamaForCausalLM:
        model = self.model_runner.get_model()
        while not isinstance(model, ReftLlamaForCausalLM) and hasattr(model, "model"):
            model = model.model  # unwrap compile/graph wrappers
        if not isinstance(model, ReftLlamaForCausalLM):
            raise TypeError(f"this server runs {type(model).__name__}, not factflow's LoReFT model")
        return model

    def factflow_adapters(self) -> dict[str, Any]:
        return {"status": 200, **self._factflow_reft().adapters_info()}

    def factflow_load_adapter(self, name: str, path: str) -> dict[str, Any]:
        model = self._factflow_reft()
        try:
            model.load_adapter(name, path)
        except AdapterRequestError as exc:
            return {"status": exc.status, "error": str(exc), **model.adapters_info()}
        return {"status": 200, "loaded": name, **model.adapters_info()}

    def factflow_unload_adapter(self, name: str) -> dict[str, Any]:
        model = self._factflow_reft()
        try:
            running = model.unload_adapter(name)
        except AdapterRequestError as exc:
            return {"status": exc.status, "error": str(exc), **model.adapters_info()}
        return {"status": 200, "unloaded": name, "still_running": running, **model.adapters_info()}
