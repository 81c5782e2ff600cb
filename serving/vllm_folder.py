"""The model folders vLLM serves for factflow's plugin models (LoReFT, proxy-tuning): where and how.

vLLM loads one folder: its config.json picks the class (`architectures`) and carries the plugin's
settings; its tokenizer files and safetensors are the base's. A prepared folder is therefore the
base's folder with a rewritten config.json and every other file symlinked: preparing costs nothing
and the base stays untouched.

One naming scheme for every kind: HOME/vllm/<kind>-<hash>, the hash taken over the resolved
source folders and the settings written into config.json. Two configs or adapters with the same
file name get different folders; preparing the same thing twice reuses its folder.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = ["prepared_dir", "write_prepared_folder"]


def prepared_dir(home: str | Path, kind: str, sources: Sequence[str | Path], settings: Any) -> Path:
    """HOME/vllm/<kind>-<12 hex>: keyed by the resolved `sources` and JSON-able `settings`."""
    key = json.dumps(
        {"sources": [str(Path(s).expanduser().resolve()) for s in sources], "settings": settings},
        sort_keys=True,
        default=str,
    )
    return Path(home).expanduser() / "vllm" / f"{kind}-{hashlib.sha256(key.encode()).hexdigest()[:12]}"


def write_prepared_folder(base: Path, config: dict[str, Any], out: str | Path) -> Path:
    """Symlink the base's files into `out` and write `config` as its config.json (atomically)."""
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    for item in base.iterdir():
        if item.name == "config.json" or item.name.startswith("."):
            continue
        link = out_dir / item.name
        if link.is_symlink() or link.exists():
            link.unlink()
        link.symlink_to(item.resolve())
    tmp = out_dir / "config.json.tmp"
    tmp.write_text(json.dumps(config, indent=2) + "\n")
    tmp.replace(out_dir / "config.json")  # a half-written config never reaches vLLM
    return out_dir
