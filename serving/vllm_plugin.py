"""vLLM plugin: registers factflow's out-of-tree models by string path.

vLLM calls `register()` through the `vllm.general_plugins` entry point in every process it starts
(the API server *and* its engine subprocess), so the classes are importable wherever the model is
built. Registering by "module:Class" string keeps this import cheap: nothing heavy loads until vLLM
actually builds one of these models.
"""

from __future__ import annotations

__all__ = ["register", "REFT_ARCHITECTURE", "PROXY_ARCHITECTURE"]

REFT_ARCHITECTURE = "FactflowReftLlamaForCausalLM"  # serving/vllm_reft.py
PROXY_ARCHITECTURE = "FactflowProxyTunedForCausalLM"  # serving/vllm_proxy.py


def register() -> None:
    from vllm import ModelRegistry

    supported = set(ModelRegistry.get_supported_archs())
    if REFT_ARCHITECTURE not in supported:
        ModelRegistry.register_model(REFT_ARCHITECTURE, "factflow.serving.vllm_reft:ReftLlamaForCausalLM")
    if PROXY_ARCHITECTURE not in supported:
        ModelRegistry.register_model(
            PROXY_ARCHITECTURE, "factflow.serving.vllm_proxy:ProxyTunedForCausalLM"
        )
