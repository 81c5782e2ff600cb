"""Prepare the model folder vLLM serves for proxy-tuned decoding.

vLLM loads one folder: its config.json picks the class (`architectures`), its tokenizer files
drive tokenization and its safetensors feed `load_weights`. The prepared folder is the base's
folder with two changes: `architectures = ["FactflowProxyTunedForCausalLM"]` (registered by
`serving/vllm_plugin.py`) and a `factflow_proxy` section naming the three model folders and
alpha. Everything else (weights, tokenizer, chat template) is symlinked from the base, so
preparing costs nothing and the base folder stays untouched.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from factflow.serving.proxy import PROXY_CONFIG_KEY, ProxyConfig
from factflow.serving.vllm_plugin import PROXY_ARCHITECTURE

__all__ = ["prepare_vllm_folder", "default_prepared_dir"]


def default_prepared_dir(config: ProxyConfig, home: Path) -> Path:
    """HOME/proxy/<hash>: one folder per (base, expert, anti-expert, alpha, plausibility)."""
    key = hashlib.sha256(config.model_dump_json().encode()).hexdigest()[:12]
    return home / "proxy" / f"vllm-{key}"


def prepare_vllm_folder(config: ProxyConfig, out_dir: str | Path) -> Path:
    """Write config.json (proxy architecture + paths + alpha) and symlink the base's other files."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    hf_config = json.loads((config.base / "config.json").read_text())
    hf_config["architectures"] = [PROXY_ARCHITECTURE]
    hf_config[PROXY_CONFIG_KEY] = {
        "base": str(config.base),
        "expert": str(config.expert),
        "anti_expert": str(config.anti_expert),
        "alpha": config.alpha,
        "plausibility": config.plausibility,
    }
    for item in config.base.iterdir():
        if item.name == "config.json" or item.name.startswith("."):
            continue
        link = out / item.name
        if link.is_symlink() or link.exists():
            link.unlink()
        link.symlink_to(item.resolve())
    tmp = out / "config.json.tmp"
    tmp.write_text(json.dumps(hf_config, indent=2))
    tmp.replace(out / "config.json")  # atomic: a half-written config never reaches vLLM
    return out
