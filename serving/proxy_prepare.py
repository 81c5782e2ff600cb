"""Prepare the model folder vLLM serves for proxy-tuned decoding.

The prepared folder is the base's folder (files symlinked, see `factflow.serving.vllm_folder`) with
a config.json naming `FactflowProxyTunedForCausalLM` (registered by `serving/vllm_plugin.py`) and
holding a `factflow_proxy` section: the three model folders, alpha and the plausibility threshold.
"""

from __future__ import annotations

import json
from pathlib import Path

from factflow.serving.proxy import PROXY_CONFIG_KEY, ProxyConfig, load_proxy_config
from factflow.serving.vllm_folder import prepared_dir, write_prepared_folder
from factflow.serving.vllm_plugin import PROXY_ARCHITECTURE

__all__ = ["prepare_vllm_folder", "default_prepared_dir", "proxy_served_model"]


def default_prepared_dir(config: ProxyConfig, home: str | Path) -> Path:
    """HOME/vllm/proxy-<hash>: one folder per (base, expert, anti-expert, alpha, plausibility)."""
    return prepared_dir(
        home, "proxy", [config.base, config.expert, config.anti_expert], config.model_dump(mode="json")
    )


def prepare_vllm_folder(config: ProxyConfig, out_dir: str | Path) -> Path:
    """Write config.json (proxy architecture + paths + alpha) and symlink the base's other files."""
    hf_config = json.loads((config.base / "config.json").read_text())
    hf_config["architectures"] = [PROXY_ARCHITECTURE]
    hf_config[PROXY_CONFIG_KEY] = {
        "base": str(config.base),
        "expert": str(config.expert),
        "anti_expert": str(config.anti_expert),
        "alpha": config.alpha,
        "plausibility": config.plausibility,
    }
    return write_prepared_folder(config.base, hf_config, out_dir)


def proxy_served_model(config_path: str | Path, home: str | Path, *, alpha: float | None = None) -> str:
    """Model folder for `VLLMServer` (`factflow serve --proxy` and `factflow proxy serve`).

    Validates the config (one-sentence `UserError`s) and prepares it under HOME/vllm/proxy-<hash>.
    """
    config = load_proxy_config(config_path, alpha=alpha)
    return str(prepare_vllm_folder(config, default_prepared_dir(config, home)))
