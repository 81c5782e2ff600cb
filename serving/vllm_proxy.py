"""Proxy-tuned decoding inside stock vLLM: one out-of-tree model holding three Llama submodules.

    logits = z_base + alpha * (z_expert - z_anti) * mask    (Liu et al., 2024, eq. 1, + mask)

(`factflow.serving.proxy.combine_logits`, the same function the transformers engine uses: the
steer is the pair's log-probability ratio, masked to tokens the expert finds plausible, see that
module.) alpha is the config's, or per request: `vllm_xargs={"factflow_alpha": 0.5}`
(`serving/vllm_steering.py`); 0 gives that request the base's logits exactly.

vLLM schedules, batches and pages one "model"; this class is that model. Its three
`LlamaForCausalLM` submodules (prefixes `base.`, `expert.`, `anti_expert.`) register their attention
layers under distinct names, so each gets its own paged KV cache from vLLM's allocator. `forward`
runs the three on the same tokens and concatenates their final hidden states on the last dim
(N, 3H); `compute_logits` splits them, applies each submodule's own head and combines. Sampling,
stop strings, structured outputs and streaming then happen in vLLM on the combined logits, exactly
as for a plain model.

The expert and anti-expert may have fewer layers than the base: they are built from a shallow
copy of `vllm_config` whose `hf_config` is the base's with the pair's depth. Weights: the prepared
folder's safetensors are the base's (symlinked); the pair's are read from the folders named in
config.json under `factflow_proxy` (see `factflow.serving.proxy_prepare`), as are alpha and the
plausibility threshold.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import cast

import torch
from torch import nn
from vllm.config import VllmConfig
from vllm.model_executor.models.llama import LlamaForCausalLM
from vllm.model_executor.models.utils import maybe_prefix

from factflow.serving.proxy import PROXY_CONFIG_KEY, combine_logits
from factflow.serving.vllm_steering import ROWS, request_settings

__all__ = ["ProxyTunedForCausalLM"]

_ROLES = ("base", "expert", "anti_expert")
_SHAPE_KEYS = ("num_hidden_layers", "intermediate_size")  # what a distilled/tuned pair may change


def _pair_config(vllm_config: VllmConfig, folder: str) -> VllmConfig:
    """Shallow copy of vllm_config whose hf_config has the pair's depth (caches, compile state shared)."""
    theirs = json.loads((Path(folder) / "config.json").read_text())
    hf_config = copy.deepcopy(vllm_config.model_config.hf_config)
    for key in _SHAPE_KEYS:
        if key in theirs:
            setattr(hf_config, key, theirs[key])
    if getattr(hf_config, "layer_types", None):
        hf_config.layer_types = list(hf_config.layer_types)[: hf_config.num_hidden_layers]
    model_config = copy.copy(vllm_config.model_config)
    model_config.hf_config = hf_config
    model_config.hf_text_config = hf_config
    pair = copy.copy(vllm_config)
    pair.model_config = model_config
    return pair


def _read_weights(folder: str) -> Iterator[tuple[str, torch.Tensor]]:
    from safetensors.torch import safe_open

    files = sorted(Path(folder).glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"no *.safetensors in {folder}")
    for file in files:
        with safe_open(str(file), framework="pt") as f:
            for name in f.keys():  # noqa: SIM118 - safe_open is not a dict
                yield name, f.get_tensor(name)


class ProxyTunedForCausalLM(nn.Module):
    """base + alpha * (expert - anti_expert) on the expert's plausible tokens, batched and paged by vLLM."""

    def __init__(self, *, vllm_config: VllmConfig, prefix: str = "") -> None:
        super().__init__()
        hf_config = vllm_config.model_config.hf_config
        proxy = getattr(hf_config, PROXY_CONFIG_KEY, None)
        if not isinstance(proxy, dict):
            raise ValueError(
                f"config.json has no '{PROXY_CONFIG_KEY}' section; prepare the folder with "
                "`factflow.serving.proxy_prepare.prepare_vllm_folder`"
            )
        self.config = hf_config
        self.alpha = float(proxy["alpha"])
        self.plausibility = float(proxy["plausibility"])
        self.paths = {role: str(proxy[role]) for role in _ROLES}
        self.hidden = int(hf_config.hidden_size)
        # vLLM's SupportsLoRA declares `lora_manager` abstract, so mypy calls LlamaForCausalLM abstract;
        # vLLM itself instantiates it the same way.
        self.base = LlamaForCausalLM(  # type: ignore[abstract]
            vllm_config=vllm_config, prefix=maybe_prefix(prefix, "base")
        )
        self.expert = LlamaForCausalLM(  # type: ignore[abstract]
            vllm_config=_pair_config(vllm_config, self.paths["expert"]), prefix=maybe_prefix(prefix, "expert")
        )
        self.anti_expert = LlamaForCausalLM(  # type: ignore[abstract]
            vllm_config=_pair_config(vllm_config, self.paths["anti_expert"]),
            prefix=maybe_prefix(prefix, "anti_expert"),
        )
        self.make_empty_intermediate_tensors = self.base.make_empty_intermediate_tensors
        self.shared_head = False  # decided once the weights are loaded

    def embed_input_ids(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.base.embed_input_ids(input_ids)

    def forward(
        self,
        input_ids: torch.Tensor | None,
        positions: torch.Tensor,
        intermediate_tensors: object | None = None,
        inputs_embeds: torch.Tensor | None = None,
    ) -> torch.Tensor:
        # inputs_embeds are the base's embeddings; the pair embeds the same ids itself.
        h_base = self.base(input_ids, positions, None, inputs_embeds)  # (N, H)
        h_expert = self.expert(input_ids, positions, None, None)  # (N, H)
        h_anti = self.anti_expert(input_ids, positions, None, None)  # (N, H)
        return torch.cat([h_base, h_expert, h_anti], dim=-1)  # (N, 3H)

    def compute_logits(self, hidden_states: torch.Tensor) -> torch.Tensor | None:
        h_base, h_expert, h_anti = hidden_states.split(self.hidden, dim=-1)  # 3 x (n, H)
        n = h_base.shape[0]
        if self.shared_head:  # one (3n, H) x (H, V) product instead of three
            z = self.base.compute_logits(torch.cat([h_base, h_expert, h_anti], dim=0))
            if z is None:
                return None
            z_base, z_expert, z_anti = z.split(n, dim=0)
        else:
            z_base = self.base.compute_logits(h_base)
            z_expert = self.expert.compute_logits(h_expert)
            z_anti = self.anti_expert.compute_logits(h_anti)
            if z_base is None or z_expert is None or z_anti is None:
                return None
        return combine_logits(z_base, z_expert, z_anti, self._alphas(n), self.plausibility)  # (n, V)

    def _alphas(self, n: int) -> float | torch.Tensor:
        """The server's alpha, or one per row where requests set `factflow_alpha`.

        The n rows are the step's requests in vLLM's batch order (one sampled position each), the
        order `SteeringArgs` tracks.
        """
        if not ROWS.active:
            return self.alpha
        alphas = [self.alpha if row.alpha is None else row.alpha for row in request_settings(n)]
        if all(a == self.alpha for a in alphas):
            return self.alpha
        return torch.tensor(alphas)

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> set[str]:
        """`weights` are the prepared folder's (the base's); the pair's come from their folders."""
        loaded: set[str] = set()
        for role, weights_iter in (
            ("base", weights),
            ("expert", _read_weights(self.paths["expert"])),
            ("anti_expert", _read_weights(self.paths["anti_expert"])),
        ):
            module: LlamaForCausalLM = getattr(self, role)
            loaded |= {f"{role}.{name}" for name in module.load_weights(weights_iter)}
        # A pair made by `factflow proxy distill/tune` keeps the base's (frozen, tied) head: then the
        # three heads are one and `compute_logits` applies it once to all three hidden states.
        head = cast(torch.Tensor, self.base.lm_head.weight)
        self.shared_head = all(
            torch.equal(head, cast(torch.Tensor, getattr(self, role).lm_head.weight))
            for role in ("expert", "anti_expert")
        )
        return loaded
