"""vLLM out-of-tree model: stock Llama with LoReFT edits on the residual stream.

Registered as "FactflowReftLlamaForCausalLM" by `serving/vllm_plugin.py`. A folder written by
`factflow.serving.reft.prepare_vllm_folder` names this architecture and stores the adapter path in
its config.json (`factflow_reft_adapter`); this class reads it while vLLM builds the model.

vLLM's Llama decoder layer returns `(hidden, residual)` unsummed: the next layer's fused
add-RMSNorm adds them. The layer output Hugging Face sees is h = hidden + residual, so the hook
returns `(delta, h)` with

    delta = R^T (W h + b - R h) = ((W - R) h + b) R      # two rank-r products, (T, d) -> (T, r) -> (T, d)

and the next layer computes h + delta, the same sum as `LoReFT(h)` on the transformers engine.
Only `positions="all"` is supported here (every token, prompt and generated): prefix+suffix would
need each request's prompt boundaries inside the batch.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from vllm.config import VllmConfig
from vllm.model_executor.models.llama import LlamaForCausalLM

from factflow.errors import UserError
from factflow.serving.reft import VLLM_ADAPTER_KEY, ReftAdapter

__all__ = ["ReftLlamaForCausalLM", "ResidualLoReFT"]


class ResidualLoReFT(nn.Module):
    """Frozen LoReFT for inference: buffers (W - R) (r, d), b (r,), R (r, d)."""

    # registered as buffers below; declared so they type as tensors, not `Tensor | Module`
    W_minus_R: torch.Tensor
    b: torch.Tensor
    R: torch.Tensor

    def __init__(self, R: torch.Tensor, W: torch.Tensor, b: torch.Tensor) -> None:  # noqa: N803
        super().__init__()
        dtype = torch.get_default_dtype()  # vLLM sets it to the model dtype while building
        # buffers, not parameters: vLLM's loader must not look for them in the base checkpoint
        self.register_buffer("W_minus_R", (W - R).to(dtype), persistent=False)
        self.register_buffer("b", b.to(dtype), persistent=False)
        self.register_buffer("R", R.to(dtype), persistent=False)

    def delta(self, h: torch.Tensor) -> torch.Tensor:
        # h (T, d) -> (T, r) -> (T, d)
        return (h @ self.W_minus_R.T + self.b) @ self.R

    def hook(self, module: nn.Module, args: Any, output: tuple[torch.Tensor, torch.Tensor]) -> Any:
        hidden, residual = output
        h = hidden + residual if residual is not None else hidden
        return self.delta(h), h


class ReftLlamaForCausalLM(LlamaForCausalLM):
    """vLLM's LlamaForCausalLM with a forward hook per intervened decoder layer."""

    def __init__(self, *, vllm_config: VllmConfig, prefix: str = "", **kwargs: Any) -> None:
        super().__init__(vllm_config=vllm_config, prefix=prefix, **kwargs)
        config = vllm_config.model_config.hf_config
        path = getattr(config, VLLM_ADAPTER_KEY, None)
        if not path:
            raise UserError(
                f"the model config has no {VLLM_ADAPTER_KEY!r}; prepare the folder with "
                "factflow.serving.reft.prepare_vllm_folder (or `factflow serve --reft DIR`)."
            )
        adapter = ReftAdapter.load(path)
        adapter.check_base(config, where="the model vLLM is loading")
        if adapter.config.positions != "all":
            raise UserError(
                f"ReFT adapter {path} uses positions={adapter.config.positions!r}; vLLM serves only "
                "positions='all' adapters, so retrain it with --positions all."
            )
        weights = adapter.tensors()
        self.reft = nn.ModuleDict()
        self._reft_hooks = []
        for layer in adapter.config.layers:
            if not self.model.start_layer <= layer < self.model.end_layer:
                continue  # another pipeline stage owns this layer
            key = f"{layer}_all"
            iv = ResidualLoReFT(weights[f"{key}.R"], weights[f"{key}.W"], weights[f"{key}.b"])
            self.reft[str(layer)] = iv
            self._reft_hooks.append(self.model.layers[layer].register_forward_hook(iv.hook))
