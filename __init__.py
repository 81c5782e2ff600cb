"""factflow: make newly learned knowledge usable by language models, outside their weights.

Public API (imported lazily so `import factflow` stays fast): Agent, Playbook, FactStore,
Settings, get_settings.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

__version__ = "0.1.0"

__all__ = ["Agent", "Playbook", "FactStore", "Settings", "get_settings", "__version__"]

_LAZY = {
    "Agent": "factflow.agent.api",
    "Playbook": "factflow.memory.playbook",
    "FactStore": "factflow.memory.store",
    "Settings": "factflow.settings",
    "get_settings": "factflow.settings",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'factflow' has no attribute {name!r}")
