"""`factflow mcp` driven by the MCP SDK's own client, over stdio and streamable HTTP.

Real server processes (the installed `factflow` command), real Chroma store and playbook under
the test's FACTFLOW_HOME; `ask` runs the real default model.
"""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from mcp import Client, StdioServerParameters

FACTFLOW = str(Path(sys.executable).with_name("factflow"))
TOOLS = {
    "search_facts",
    "get_fact",
    "teach_fact",
    "propose_fact",
    "invalidate_fact",
    "playbook_show",
    "playbook_feedback",
    "ask",
}


def _env(*extra: str) -> dict[str, str]:
    keep = ("FACTFLOW_HOME", "FACTFLOW_MODELS_DIR", "HF_HUB_OFFLINE", "PATH", "HOME")
    env = {k: os.environ[k] for k in keep if k in os.environ}
    env.update(dict(e.split("=", 1) for e in extra))
    return env


def _stdio(*args: str, env: dict[str, str] | None = None) -> Client:
    return Client(StdioServerParameters(command=FACTFLOW, args=["mcp", *args], env=env or _env()))


def _data(result: Any) -> Any:
    assert not result.is_error, result.content[0].text
    data = result.structured_content
    return data["result"] if isinstance(data, dict) and set(data) == {"result"} else data


def _error(result: Any) -> str:
    assert result.is_error, result
    return str(result.content[0].text)


def test_stdio_tools_teach_search_resources_and_errors() -> None:
    async def go() -> None:
        async with _stdio() as client:
            names = {t.name for t in (await client.list_tools()).tools}
            assert names == TOOLS

            fact = _data(await client.call_tool("teach_fact", {"text": "The capital of Zorbia is Quillmar."}))
            assert fact["id"].startswith("f-") and fact["origin"] == "human"
            hits = _data(await client.call_tool("search_facts", {"query": "capital of Zorbia", "k": 3}))
            assert [h["id"] for h in hits] == [fact["id"]]
            assert _data(await client.call_tool("get_fact", {"fact_id": fact["id"]}))["text"] == fact["text"]

            read = await client.read_resource(f"factflow://facts/{fact['id']}")
            assert "Quillmar" in read.contents[0].text
            playbook = await client.read_resource("factflow://playbook")
            assert playbook.contents[0].text.startswith("# Playbook (version 0)")

            # bad arguments: schema violations and unknown ids come back as errors that say what to fix
            assert "greater than or equal to 1" in _error(
                await client.call_tool("search_facts", {"query": "Zorbia", "k": 0})
            )
            assert "Field required" in _error(await client.call_tool("teach_fact", {}))
            msg = _error(await client.call_tool("get_fact", {"fact_id": "f-nope"}))
            assert "no fact 'f-nope'" in msg and "search_facts" in msg
            assert "empty" in _error(await client.call_tool("teach_fact", {"text": "  "}))
            msg = _error(
                await client.call_tool("playbook_feedback", {"bullet_id": "str-00001", "tag": "great"})
            )
            assert "tag" in msg and "helpful" in msg

            # through the gate: a claim citing an unknown id is refused, an unsupported one rejected
            assert "unknown fact id" in _error(
                await client.call_tool(
                    "propose_fact", {"text": "Quillmar is big [f-zz].", "cited_ids": ["f-zz"]}
                )
            )
            decision = _data(
                await client.call_tool(
                    "propose_fact",
                    {"text": "Quillmar has nine million inhabitants.", "cited_ids": [fact["id"]]},
                )
            )
            assert decision["accepted"] is False and decision["reasons"]

            gone = _data(
                await client.call_tool("invalidate_fact", {"fact_id": fact["id"], "reason": "moved"})
            )
            assert gone["valid_to"] is not None
            assert _data(await client.call_tool("search_facts", {"query": "capital of Zorbia"})) == []

    asyncio.run(go())


def test_namespaces_are_separate_servers() -> None:
    async def go() -> None:
        async with _stdio("--namespace", "acme") as acme:
            _data(await acme.call_tool("teach_fact", {"text": "Acme ships rockets on Tuesdays."}))
            assert _data(await acme.call_tool("search_facts", {"query": "Acme rockets"}))
        # look-alike tenant via the env: same slug, another collection and playbook
        async with _stdio(env=_env("FACTFLOW_NAMESPACE=acme_")) as other:
            assert _data(await other.call_tool("search_facts", {"query": "Acme rockets"})) == []
            shown = _data(await other.call_tool("playbook_show", {}))
            assert shown["version"] == 0

    asyncio.run(go())
    bad = subprocess.run(
        [FACTFLOW, "mcp", "--namespace", "no spaces"], env=_env(), capture_output=True, text=True, timeout=120
    )
    assert bad.returncode == 2 and "invalid namespace" in bad.stderr


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def http_server(tmp_path: Path) -> Iterator[str]:
    port = _free_port()
    log = (tmp_path / "mcp.log").open("w")
    proc = subprocess.Popen([FACTFLOW, "mcp", "--port", str(port)], env=_env(), stdout=log, stderr=log)
    url = f"http://127.0.0.1:{port}/mcp"
    try:
        deadline = time.monotonic() + 120
        while True:
            assert proc.poll() is None, (tmp_path / "mcp.log").read_text()
            try:
                httpx.get(url, timeout=2)
                break
            except httpx.TransportError:
                assert time.monotonic() < deadline, "MCP HTTP server did not start in 120 s"
                time.sleep(0.3)
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        log.close()


def test_http_teach_search_and_bad_argument(http_server: str) -> None:
    async def go() -> None:
        async with Client(http_server) as client:
            assert {t.name for t in (await client.list_tools()).tools} == TOOLS
            fact = _data(await client.call_tool("teach_fact", {"text": "Zorbia's moon is called Pell."}))
            hits = _data(await client.call_tool("search_facts", {"query": "moon of Zorbia"}))
            assert hits[0]["id"] == fact["id"]
            msg = _error(await client.call_tool("invalidate_fact", {"fact_id": "f-missing"}))
            assert "no fact 'f-missing'" in msg

    asyncio.run(go())


@pytest.mark.slow
def test_ask_and_playbook_feedback_over_stdio(model_path: str) -> None:
    """One real agent turn on the default model through the MCP `ask` tool."""

    async def go() -> None:
        async with _stdio() as client:
            fact = _data(await client.call_tool("teach_fact", {"text": "The capital of Zorbia is Quillmar."}))
            answer = _data(await client.call_tool("ask", {"question": "What is the capital of Zorbia?"}))
            assert fact["id"] in answer["retrieved_fact_ids"] and answer["thread_id"]
            assert "Quillmar" in answer["answer"]
            again = _data(
                await client.call_tool("ask", {"question": "Say it again.", "thread_id": answer["thread_id"]})
            )
            assert again["thread_id"] == answer["thread_id"]

    asyncio.run(go())
