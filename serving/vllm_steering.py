"""Per-request steering settings inside stock vLLM: which LoReFT adapter, which proxy alpha, per row.

A request names its settings in vLLM's per-request extra args (the OpenAI API's `vllm_xargs`
field, e.g. with the openai client
`extra_body={"vllm_xargs": {"factflow_adapter": "facts-v2", "factflow_alpha": 0.5}}`); vLLM
copies them into `SamplingParams.extra_args`. The model's forward never sees sampling params,
but vLLM v1's logits-processor API does: `update_state` is called before every forward with the
requests added to, removed from and moved within the persistent batch, each with its
`SamplingParams` and prompt. `SteeringArgs` is such a processor (it leaves the logits alone); it
keeps a row -> settings table (`ROWS`) that the plugin models read in the same process while they
run the step (`serving/vllm_reft.py`: which adapter and prompt length per row;
`serving/vllm_proxy.py`: alpha per row).

`validate_params` runs in the API server at admission: a bad value or an adapter name the server
has not loaded is an HTTP 400 naming the loaded ones. The API server learns those names from the
registry the admin middleware keeps (`serving/vllm_adapters.py`, current after run-time loads and
unloads) or, before that has heard from the engine, from the environment variable
`FACTFLOW_ADAPTERS` (JSON list), which `VLLMServer` sets for a LoReFT folder
(`factflow.serving.vllm_plugin.plugin_server_args`, which also adds this processor's flag).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch
from vllm.v1.sample.logits_processor import BatchUpdate, LogitsProcessor, MoveDirectionality

if TYPE_CHECKING:
    from vllm import SamplingParams
    from vllm.config import VllmConfig

__all__ = [
    "ADAPTER_ARG",
    "ALPHA_ARG",
    "BASE_ADAPTER",
    "ROWS",
    "RequestRow",
    "SteeringArgs",
    "request_settings",
]

ADAPTER_ARG = "factflow_adapter"  # key in vllm_xargs: name of a loaded LoReFT adapter
ALPHA_ARG = "factflow_alpha"  # key in vllm_xargs: proxy-tuning strength for this request
BASE_ADAPTER = "base"  # reserved adapter name: no adapter, the plain base
ADAPTERS_ENV = "FACTFLOW_ADAPTERS"  # set by vllm_plugin.plugin_server_args


@dataclass
class RequestRow:
    """One request's settings: None means the server's default."""

    adapter: str | None = None
    alpha: float | None = None
    prompt_len: int = 0


@dataclass
class _Rows:
    """Row index in vLLM's persistent batch -> that request's settings (engine process only)."""

    rows: dict[int, RequestRow] = field(default_factory=dict)
    active: bool = False  # True once SteeringArgs runs: rows are then authoritative

    def get(self, index: int) -> RequestRow:
        return self.rows.get(index) or RequestRow()


ROWS = _Rows()


def _settings(params: SamplingParams) -> tuple[str | None, float | None]:
    extra = params.extra_args or {}
    adapter, alpha = extra.get(ADAPTER_ARG), extra.get(ALPHA_ARG)
    if adapter is not None and not isinstance(adapter, str):
        raise ValueError(f"{ADAPTER_ARG} must be an adapter name (a string); got {adapter!r}")
    if alpha is not None:
        if isinstance(alpha, bool) or not isinstance(alpha, int | float) or not -10.0 <= alpha <= 10.0:
            raise ValueError(f"{ALPHA_ARG} must be a number between -10 and 10; got {alpha!r}")
        alpha = float(alpha)
    return adapter, alpha


class SteeringArgs(LogitsProcessor):
    """Carries each request's factflow settings to the model; the logits pass through untouched."""

    @classmethod
    def validate_params(cls, sampling_params: SamplingParams) -> None:
        from factflow.serving.vllm_adapters import REGISTRY  # imports this module: not at the top

        adapter, _alpha = _settings(sampling_params)
        # the admin endpoint's registry once it has heard from the engine, else the start-up list
        at_start = json.loads(os.environ.get(ADAPTERS_ENV, "null"))
        loaded = list(REGISTRY.digests) if REGISTRY.synced else at_start
        if adapter is not None and adapter != BASE_ADAPTER and loaded is not None and adapter not in loaded:
            names = ", ".join([BASE_ADAPTER, *loaded])
            raise ValueError(f"unknown adapter {adapter!r}: this server has loaded {names}")

    def __init__(self, vllm_config: VllmConfig, device: torch.device, is_pin_memory: bool) -> None:
        ROWS.rows.clear()
        ROWS.active = True

    def is_argmax_invariant(self) -> bool:
        return True  # never changes logits

    def apply(self, logits: torch.Tensor) -> torch.Tensor:
        return logits

    def update_state(self, batch_update: BatchUpdate | None) -> None:
        if batch_update is None:
            return
        rows = ROWS.rows
        for index in batch_update.removed:
            rows.pop(index, None)
        for index, params, prompt, _output in batch_update.added:
            adapter, alpha = _settings(params)
            rows[index] = RequestRow(adapter, alpha, len(prompt or ()))
        for a, b, direction in batch_update.moved:
            row_a, row_b = rows.pop(a, None), rows.pop(b, None)
            if row_a is not None:
                rows[b] = row_a
            if direction == MoveDirectionality.SWAP and row_b is not None:
                rows[a] = row_b


def request_settings(n_rows: int) -> list[RequestRow]:
    """Settings of rows 0..n_rows-1 of the running step (defaults where none were given)."""
    return [ROWS.get(i) for i in range(n_rows)]
