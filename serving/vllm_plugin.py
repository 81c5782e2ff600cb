"""vLLM plugin: registers factflow's out-of-tree models by string path.

vLLM calls `register()` through the `vllm.general_plugins` entry point in every process it starts
(the API server *and* its engine subprocess), so the classes are importable wherever the model is
built. Registering by "module:Class" string keeps this import cheap: nothing heavy loads until vLLM
actually builds one of these models.
"""

from __future__ import annotations

import json
from pathlib import Path

__all__ = ["register", "plugin_server_args", "REFT_ARCHITECTURE", "PROXY_ARCHITECTURE", "REFT_ADAPTERS_KEY",
           "REFT_DEFAULT_KEY"]

REFT_ARCHITECTURE = "FactflowReftLlamaForCausalLM"  # serving/vllm_reft.py
PROXY_ARCHITECTURE = "FactflowProxyTunedForCausalLM"  # serving/vllm_proxy.py
REFT_ADAPTERS_KEY = "factflow_reft_adapters"  # prepared folder's config.json: {name: adapter folder}
REFT_DEFAULT_KEY = "factflow_reft_default"  # adapter of requests that name none (null: the base)
_STEERING_PROCESSOR = "factflow.serving.vllm_steering:SteeringArgs"
_ADMIN_MIDDLEWARE = "factflow.serving.vllm_adapters.AdapterAdmin"
_WORKER_EXTENSION = "factflow.serving.vllm_reft.ReftWorkerExtension"
_ADAPTERS_ENV = "FACTFLOW_ADAPTERS"  # read by SteeringArgs.validate_params in the API server


def register() -> None:
    from vllm import ModelRegistry

    supported = set(ModelRegistry.get_supported_archs())
    if REFT_ARCHITECTURE not in supported:
        ModelRegistry.register_model(REFT_ARCHITECTURE, "factflow.serving.vllm_reft:ReftLlamaForCausalLM")
    if PROXY_ARCHITECTURE not in supported:
        ModelRegistry.register_model(
            PROXY_ARCHITECTURE, "factflow.serving.vllm_proxy:ProxyTunedForCausalLM"
        )


def plugin_server_args(model: str | Path) -> tuple[list[str], dict[str, str]]:
    """Extra vLLM arguments and environment a factflow plugin folder needs; nothing for other models.

    Both plugin models take per-request settings (adapter name, alpha) through the logits processor
    `serving/vllm_steering.py:SteeringArgs`, which the API server also uses to reject unknown
    adapter names with the list of loaded ones. A LoReFT server also gets the admin middleware
    (`serving/vllm_adapters.py`: load/unload at run time, and a per-adapter `cache_salt` on every
    request, so prefix caching stays on without two adapters sharing KV) and the worker extension
    the middleware calls (`serving/vllm_reft.py:ReftWorkerExtension`).
    """
    config = Path(model) / "config.json"
    if not config.is_file():
        return [], {}
    hf = json.loads(config.read_text())
    arch = (hf.get("architectures") or [""])[0]
    if arch == PROXY_ARCHITECTURE:
        return ["--logits-processors", _STEERING_PROCESSOR], {}
    if arch == REFT_ARCHITECTURE:
        names = sorted(hf.get(REFT_ADAPTERS_KEY) or {})
        return ["--logits-processors", _STEERING_PROCESSOR, "--middleware", _ADMIN_MIDDLEWARE,
                "--worker-extension-cls", _WORKER_EXTENSION], {
            _ADAPTERS_ENV: json.dumps(names)
        }
    return [], {}
