"""The model folder vLLM serves with a LoReFT adapter applied inside the engine.

config.json names `FactflowReftLlamaForCausalLM` (registered by `serving/vllm_plugin.py`) and
stores the adapter's absolute path under `factflow_reft_adapter`; vLLM's out-of-tree model
(`serving/vllm_reft.py`) reads it when the engine builds the model. Every other file is the base's,
symlinked (`factflow.serving.vllm_folder`).
"""

from __future__ import annotations

import json
from pathlib import Path

from factflow.errors import UserError
from factflow.serving.reft_adapter import ADAPTER_CONFIG, VLLM_ADAPTER_KEY, ReftAdapter
from factflow.serving.vllm_folder import prepared_dir, write_prepared_folder

__all__ = ["prepare_vllm_folder", "reft_served_model"]


def prepare_vllm_folder(base: str | Path, adapter: str | Path, out: str | Path) -> Path:
    """Write a model folder vLLM serves with the adapter: base files symlinked, config rewritten."""
    from factflow.serving.vllm_plugin import REFT_ARCHITECTURE

    base_dir, adapter_dir = (Path(p).expanduser().resolve() for p in (base, adapter))
    if not (base_dir / "config.json").is_file():
        raise UserError(f"base model folder {base_dir} has no config.json; pass a Hugging Face model folder.")
    loaded = ReftAdapter.load(adapter_dir)
    cfg = json.loads((base_dir / "config.json").read_text())
    loaded.check_base(cfg, where=f"the base model {base_dir}")
    if loaded.config.positions != "all":
        raise UserError(
            f"ReFT adapter {adapter_dir} uses positions={loaded.config.positions!r}, which vLLM does not "
            "support yet; train it with --positions all to serve it in vLLM."
        )
    cfg["factflow_base_architecture"] = (cfg.get("architectures") or ["LlamaForCausalLM"])[0]
    cfg["architectures"] = [REFT_ARCHITECTURE]
    cfg[VLLM_ADAPTER_KEY] = str(adapter_dir)
    return write_prepared_folder(base_dir, cfg, out)


def reft_served_model(base: str | Path, adapter: str | Path, home: str | Path) -> str:
    """Model folder for `VLLMServer` (`factflow serve --reft DIR`): prepared under HOME/vllm/reft-<hash>.

    The hash covers the base and adapter folders and the adapter's config.json.
    """
    adapter_dir = Path(adapter).expanduser()
    meta = (adapter_dir / ADAPTER_CONFIG).read_text() if (adapter_dir / ADAPTER_CONFIG).is_file() else ""
    out = prepared_dir(home, "reft", [base, adapter_dir], meta)
    return str(prepare_vllm_folder(base, adapter_dir, out))
