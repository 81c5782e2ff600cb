"""The agent graph for LangGraph Server / Studio (`langgraph dev`, `langgraph up`): see langgraph.json.

    {"graphs": {"factflow": "./agent/langgraph_app.py:make_graph"}}

The server calls `make_graph(config)` for each run and brings its own checkpointer, so the graph
is compiled without one. `config["configurable"]` may carry `namespace` (the tenant whose facts
and playbook the run uses) and `model` (as FACTFLOW_MODEL: "default" or a model folder); both
default to the settings. Input is LangGraph's `{"messages": [...]}` (what Studio and chat UIs
send) or factflow's `{"question": "..."}`; the output's `messages` end with the cited answer,
and `answer`, `cited_fact_ids`, `writeback` are in the state as for `Agent.ask`.

Models, the fact store and playbooks are opened once per server process and reused by every run.
"""

from __future__ import annotations

import threading
from typing import Any

from langchain_core.runnables import RunnableConfig

from factflow.agent.graph import build_graph
from factflow.errors import UserError
from factflow.settings import Settings, get_settings

__all__ = ["make_graph"]

_GUARD = threading.Lock()
_MODELS: dict[str, Any] = {}
_PLAYBOOKS: dict[tuple[str, str], Any] = {}  # (home, namespace) -> Playbook
_STORES: dict[str, Any] = {}  # home -> FactStore


def _option(configurable: dict[str, Any], key: str, default: str) -> str:
    value = configurable.get(key) or default
    if not isinstance(value, str):
        raise UserError(f"configurable.{key} must be a string, got {type(value).__name__}")
    return value


def _resources(settings: Settings, namespace: str, model: str) -> tuple[Any, Any, Any]:
    from factflow.memory.playbook import Playbook
    from factflow.memory.store import FactStore, validate_namespace
    from factflow.serving.engines import load_chat_model

    validate_namespace(namespace)
    home = str(settings.home)
    with _GUARD:
        if home not in _STORES:
            _STORES[home] = FactStore.open(settings)
        if model not in _MODELS:
            _MODELS[model] = load_chat_model(settings.model_copy(update={"model": model}))
        if (home, namespace) not in _PLAYBOOKS:
            _PLAYBOOKS[home, namespace] = Playbook.open(settings=settings, namespace=namespace)
        return _MODELS[model], _STORES[home], _PLAYBOOKS[home, namespace]


def make_graph(config: RunnableConfig) -> Any:
    """The compiled agent graph for one run's `configurable` (namespace, model); no checkpointer."""
    configurable = dict(config.get("configurable") or {})
    # a long-lived server: share the embedded store (`factflow facts add` works beside it)
    settings = get_settings().model_copy(update={"store_shared": True})
    namespace = _option(configurable, "namespace", settings.namespace)
    model = _option(configurable, "model", settings.model)
    chat_model, store, playbook = _resources(settings, namespace, model)
    return build_graph(chat_model, store, playbook, settings=settings, namespace=namespace)
