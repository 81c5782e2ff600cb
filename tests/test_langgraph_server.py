"""The graph as LangGraph Server loads it: langgraph.json -> factory -> `messages` in and out.

Real default model and real store. The slow test starts `langgraph dev` (in-memory server from
langgraph-cli[inmem]) and runs a thread through langgraph-sdk.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from langchain_core.messages import AIMessage, HumanMessage

from factflow.memory.store import FactStore
from factflow.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
QUESTION = "What is the capital of Zorbia?"


def _factory() -> Any:
    """Import the factory exactly as the server does: a file path and a name from langgraph.json."""
    spec = json.loads((ROOT / "langgraph.json").read_text())["graphs"]["factflow"]
    path, name = spec.rsplit(":", 1)
    module_spec = importlib.util.spec_from_file_location("factflow_langgraph_app", ROOT / path)
    assert module_spec is not None and module_spec.loader is not None
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return getattr(module, name)


def _teach(namespace: str) -> str:
    with FactStore.open(Settings()) as store:
        return store.teach("The capital of Zorbia is Quillmar.", namespace=namespace).id


@pytest.fixture
def short_turns(monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """One short model call per turn (no tool rounds): the subject is the plumbing, not the model."""
    env = {"FACTFLOW_MAX_NEW_TOKENS": "24", "FACTFLOW_MAX_TOOL_ROUNDS": "0"}
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    from factflow.settings import _cached

    _cached.cache_clear()
    return env


def test_factory_from_langgraph_json_answers_through_messages(model_path: str, short_turns: object) -> None:
    fact_id = _teach("acme")
    make_graph = _factory()
    graph = make_graph({"configurable": {"namespace": "acme", "model": "default"}})
    assert graph.checkpointer is None  # the server brings its own
    out = graph.invoke({"messages": [{"role": "user", "content": QUESTION}]})
    assert [type(m) for m in out["messages"]] == [HumanMessage, AIMessage]
    assert out["question"] == QUESTION
    assert fact_id in out["retrieved_ids"]
    assert out["messages"][-1].content == out["answer"]  # the cited answer is the last message
    assert "Quillmar" in out["answer"]
    with pytest.raises(Exception, match="invalid namespace"):
        make_graph({"configurable": {"namespace": "no spaces"}})


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.slow
def test_langgraph_dev_runs_a_thread(model_path: str, tmp_path: Path, short_turns: object) -> None:
    langgraph = shutil.which("langgraph", path=str(Path(sys.executable).parent))
    if langgraph is None or importlib.util.find_spec("langgraph_runtime_inmem") is None:
        pytest.skip("langgraph-cli[inmem] is not installed: pip install -e '.[langgraph-server]'")
    from langgraph_sdk import get_sync_client

    fact_id = _teach("default")
    port = _free_port()
    env = {**os.environ, "LANGGRAPH_CLI_NO_ANALYTICS": "1", "LANGSMITH_TRACING": "false"}
    log = (tmp_path / "langgraph.log").open("w")
    cmd = [langgraph, "dev", "--no-browser", "--no-reload", "--allow-blocking", "--port", str(port)]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while True:
            assert proc.poll() is None, (tmp_path / "langgraph.log").read_text()[-3000:]
            try:
                if httpx.get(f"{url}/ok", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "langgraph dev did not start in 180 s"
            time.sleep(0.5)
        client = get_sync_client(url=url)
        thread = client.threads.create()
        state = client.runs.wait(
            thread["thread_id"],
            "factflow",
            input={"messages": [{"role": "user", "content": QUESTION}]},
            config={"configurable": {"namespace": "default"}},
        )
        assert isinstance(state, dict), state
        assert fact_id in state["retrieved_ids"] and "Quillmar" in state["answer"]
        assert [m["type"] for m in state["messages"]] == ["human", "ai"]
        again = client.runs.wait(
            thread["thread_id"],
            "factflow",
            input={"messages": [{"role": "user", "content": "Say it again."}]},
        )
        assert isinstance(again, dict)
        assert [m["type"] for m in again["messages"]] == ["human", "ai", "human", "ai"]  # the server's thread
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()
