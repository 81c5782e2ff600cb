"""The model folder vLLM serves with LoReFT adapters applied inside the engine.

config.json names `FactflowReftLlamaForCausalLM` (registered by `serving/vllm_plugin.py`) and
lists the adapters by name under `factflow_reft_adapters` ({name: absolute folder}) with
`factflow_reft_default`, the adapter of requests that name none (null: the plain base). vLLM's
out-of-tree model (`serving/vllm_reft.py`) loads them all, stacked, when the engine builds the
model; each request picks one (`vllm_xargs={"factflow_adapter": NAME}`). Every other file is the
base's, symlinked (`factflow.serving.vllm_folder`).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from pathlib import Path

from factflow.errors import UserError
from factflow.serving.reft_adapter import ADAPTER_CONFIG, VLLM_ADAPTER_KEY, ReftAdapter
from factflow.serving.vllm_folder import prepared_dir, write_prepared_folder
from factflow.serving.vllm_plugin import REFT_ADAPTERS_KEY, REFT_ARCHITECTURE, REFT_DEFAULT_KEY

__all__ = [
    "prepare_vllm_folder",
    "prepare_vllm_adapters",
    "parse_adapter_specs",
    "reft_served_model",
    "check_adapter_name",
]

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


def prepare_vllm_adapters(
    base: str | Path, adapters: Mapping[str, str | Path], out: str | Path, *, default: str | None = None
) -> Path:
    """Write a model folder vLLM serves with these named adapters; `default` serves unnamed requests."""
    base_dir = Path(base).expanduser().resolve()
    if not (base_dir / "config.json").is_file():
        raise UserError(f"base model folder {base_dir} has no config.json; pass a Hugging Face model folder.")
    if not adapters:
        raise UserError("no ReFT adapter was given; pass --reft DIR or --reft NAME=DIR.")
    if default is not None and default not in adapters:
        raise UserError(f"default adapter {default!r} is not among {', '.join(adapters)}.")
    cfg = json.loads((base_dir / "config.json").read_text())
    folders: dict[str, str] = {}
    for name, adapter in adapters.items():
        check_adapter_name(name)
        adapter_dir = Path(adapter).expanduser().resolve()
        ReftAdapter.load(adapter_dir).check_base(cfg, where=f"the base model {base_dir}")
        folders[name] = str(adapter_dir)
    cfg["factflow_base_architecture"] = (cfg.get("architectures") or ["LlamaForCausalLM"])[0]
    cfg["architectures"] = [REFT_ARCHITECTURE]
    cfg[REFT_ADAPTERS_KEY] = folders
    cfg[REFT_DEFAULT_KEY] = default
    if default is not None:
        cfg[VLLM_ADAPTER_KEY] = folders[default]  # the default adapter's folder, for readers of one
    return write_prepared_folder(base_dir, cfg, out)


def check_adapter_name(name: object) -> None:
    """UserError unless `name` can name an adapter in requests (and in a cache salt)."""
    if not isinstance(name, str) or not _NAME.match(name) or name == "base":
        raise UserError(
            f"adapter name {name!r} is not usable: use letters, digits, '.', '_' or '-' "
            "(up to 64), and not 'base' (it means no adapter)."
        )


def prepare_vllm_folder(base: str | Path, adapter: str | Path, out: str | Path) -> Path:
    """Write a model folder vLLM serves with one adapter, applied to every request by default."""
    adapters, default = parse_adapter_specs([str(adapter)])
    return prepare_vllm_adapters(base, adapters, out, default=default)


def parse_adapter_specs(specs: Sequence[str]) -> tuple[dict[str, Path], str | None]:
    """`--reft` values -> ({name: folder}, default). One plain DIR: that adapter for every request
    (named after its folder); NAME=DIR (repeatable): named adapters, requests without a name get
    the base."""
    if len(specs) == 1 and "=" not in specs[0]:
        folder = Path(specs[0]).expanduser()
        name = folder.resolve().name
        name = name if _NAME.match(name) and name != "base" else "adapter"
        return {name: folder}, name
    out: dict[str, Path] = {}
    for spec in specs:
        name, sep, where = spec.partition("=")
        if not sep or not name or not where:
            raise UserError(
                f"--reft {spec!r}: with several adapters write each as NAME=DIR, e.g. --reft facts=./ad"
            )
        if name in out:
            raise UserError(f"--reft names {name!r} twice; give each adapter its own name")
        out[name] = Path(where).expanduser()
    return out, None


def reft_served_model(
    base: str | Path, adapter: str | Path | Mapping[str, str | Path], home: str | Path,
    *, default: str | None = None,
) -> str:  # fmt: skip
    """Model folder for `VLLMServer` (`factflow serve --reft`): prepared under HOME/vllm/reft-<hash>.

    `adapter` is one folder (served to every request) or {name: folder} (picked per request,
    `default` for requests that name none). The hash covers the base and adapter folders, the
    names and each adapter's config.json.
    """
    if isinstance(adapter, Mapping):
        folders, chosen = {n: Path(p).expanduser() for n, p in adapter.items()}, default
    else:
        folders, chosen = parse_adapter_specs([str(adapter)])
    metas = {n: (p / ADAPTER_CONFIG).read_text() if (p / ADAPTER_CONFIG).is_file() else ""
             for n, p in folders.items()}  # fmt: skip
    out = prepared_dir(home, "reft", [base, *folders.values()], {"names": list(folders), "default": chosen,
                                                               "adapters": metas})  # fmt: skip
    return str(prepare_vllm_adapters(base, folders, out, default=chosen))
