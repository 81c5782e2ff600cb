"""BFCL's own code, imported: its checkers, prompts, loaders and handlers (bfcl-eval, `--no-deps`).

factflow does not re-implement BFCL's scoring. Two of the wheel's imports can't be satisfied here:

- `bfcl_eval.constants.model_config` imports a handler for every provider (anthropic, cohere,
  mistral, google-genai ...). The checker only asks it one thing per model, `underscore_to_dot`
  (were dots in function names sent as underscores, as OpenAI-style tool names must be). We put a
  small module with factflow's three modes in `sys.modules` before anything imports it.
- `eval_runner_helper` imports pandas for its leaderboard CSVs and W&B upload, which we don't
  call: pandas is stubbed only while that module is imported, then removed again.

`BFCL_PROJECT_ROOT` is pointed at factflow's cache first: BFCL creates `result/` and `score/`
folders under it on import.
"""

from __future__ import annotations

import os
import sys
import threading
import types
from dataclasses import dataclass
from importlib.metadata import version
from typing import Any

__all__ = ["MODES", "ModeConfig", "bfcl", "bfcl_version", "registry_name"]

MODES = ("fc", "prompt", "constrained")


@dataclass(frozen=True)
class ModeConfig:
    """What BFCL's checker and leaderboard read from a model's config entry."""

    model_name: str
    display_name: str
    is_fc_model: bool
    underscore_to_dot: bool
    url: str = "https://github.com/factflow"
    org: str = "factflow"
    license: str = "Apache-2.0"
    input_price: float | None = None
    output_price: float | None = None
    model_handler: Any = None


def registry_name(mode: str) -> str:
    """The name results are filed under (BFCL: one folder per registry name). No '_': BFCL maps
    '_' back to '/' when it looks a name up."""
    if mode not in MODES:
        raise ValueError(f"unknown BFCL mode {mode!r}: use one of {', '.join(MODES)}")
    return f"factflow-{mode}"


_CONFIGS = {
    registry_name("fc"): ModeConfig("factflow-fc", "factflow (FC)", True, True),
    registry_name("prompt"): ModeConfig("factflow-prompt", "factflow (Prompt)", False, False),
    # ours: tool names go through the same dots -> underscores mapping as native tools
    registry_name("constrained"): ModeConfig(
        "factflow-constrained", "factflow (constrained, ours)", True, True
    ),
}

_lock = threading.Lock()
_modules: types.SimpleNamespace | None = None


def _project_root() -> str:
    from factflow.settings import Settings

    return str(Settings().home / "bfcl")


def bfcl() -> types.SimpleNamespace:
    """BFCL's modules, imported once with the two stubs described above."""
    global _modules
    with _lock:
        if _modules is not None:
            return _modules
        from factflow.errors import UserError

        try:
            import bfcl_eval  # noqa: F401  (only to check it is installed)
        except ImportError as exc:
            raise UserError(
                "bfcl-eval is not installed: run `pip install --no-deps bfcl-eval==2026.3.23`"
            ) from exc
        os.environ.setdefault("BFCL_PROJECT_ROOT", _project_root())
        config_module = types.ModuleType("bfcl_eval.constants.model_config")
        config_module.MODEL_CONFIG_MAPPING = dict(_CONFIGS)  # type: ignore[attr-defined]
        sys.modules["bfcl_eval.constants.model_config"] = config_module
        had_pandas = "pandas" in sys.modules
        if not had_pandas:
            sys.modules["pandas"] = types.ModuleType("pandas")
        try:
            from bfcl_eval import utils
            from bfcl_eval.constants import category_mapping, default_prompts
            from bfcl_eval.eval_checker import eval_runner, eval_runner_helper
            from bfcl_eval.eval_checker.ast_eval import ast_checker
            from bfcl_eval.eval_checker.multi_turn_eval import multi_turn_utils
            from bfcl_eval.model_handler import utils as handler_utils
            from bfcl_eval.model_handler.api_inference.openai_completion import OpenAICompletionsHandler
        except ImportError as exc:
            raise UserError(
                f"bfcl-eval could not be imported ({exc}): install its parsers with "
                "`pip install --no-deps tree_sitter==0.21.3 tree-sitter-java==0.21.0 "
                "tree-sitter-javascript==0.21.4`"
            ) from exc
        finally:
            if not had_pandas:
                del sys.modules["pandas"]
        _modules = types.SimpleNamespace(
            categories=category_mapping,
            prompts=default_prompts,
            runner=eval_runner,
            helper=eval_runner_helper,
            ast=ast_checker,
            multi_turn=multi_turn_utils,
            handler_utils=handler_utils,
            utils=utils,
            OpenAICompletionsHandler=OpenAICompletionsHandler,
        )
        return _modules


def bfcl_version() -> str:
    return version("bfcl-eval")
