"""Foundation: both engines answer, agree greedily, stream, and always parse structured output."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import BaseModel

PARITY_PROMPTS = [
    "What is the capital of France?",
    "Name three primary colors.",
    "What is 12 plus 7?",
    "Write one sentence about the ocean.",
    "Who wrote Romeo and Juliet?",
]


class Answer(BaseModel):
    city: str
    country: str
    confident: bool


STRUCTURED_PROMPTS = [
    f"Give the capital of {country} as JSON with fields city, country, confident."
    for country in [
        "France", "Italy", "Spain", "Germany", "Japan", "Peru", "Kenya", "Canada", "Egypt", "Chile",
        "Norway", "India", "Brazil", "Greece", "Poland", "Ghana", "Cuba", "Nepal", "Fiji", "Laos",
    ]
]  # fmt: skip


# -- transformers engine --------------------------------------------------------------------------


def test_hf_answers_paris(hf_chat) -> None:
    assert "Paris" in hf_chat.invoke("What is the capital of France?").content


def test_hf_stream_chunks_join_to_full_text(hf_chat) -> None:
    full = hf_chat.invoke("Name three primary colors.").content
    chunks = [c.content for c in hf_chat.stream("Name three primary colors.")]
    assert len([c for c in chunks if c]) > 1
    assert "".join(chunks) == full


def test_hf_stop_sequence_truncates(hf_chat) -> None:
    text = hf_chat.invoke("Count from 1 to 10, one number per line.", stop=["5"]).content
    assert "5" not in text and "4" in text


def test_hf_batch_matches_single(hf_chat) -> None:
    prompts = PARITY_PROMPTS[:3]
    batched = [m.content for m in hf_chat.batch(prompts)]
    assert batched == [hf_chat.invoke(p).content for p in prompts]


def test_hf_structured_output_always_parses(hf_chat) -> None:
    results = hf_chat.with_structured_output(Answer).batch(STRUCTURED_PROMPTS, max_tokens=96)
    failures = [r for r in results if not isinstance(r, Answer)]
    print(f"transformers structured output: {len(results) - len(failures)}/{len(results)} parsed")
    assert not failures


def test_hf_tool_call_through_json_action(hf_chat) -> None:
    from langchain_core.tools import tool

    @tool
    def get_weather(city: str) -> str:
        """Get the current weather for a city."""
        return "sunny"

    reply = hf_chat.bind_tools([get_weather], tool_choice="any").invoke("What's the weather in Paris?")
    assert reply.tool_calls and reply.tool_calls[0]["name"] == "get_weather"
    assert isinstance(reply.tool_calls[0]["args"].get("city"), str)


def test_token_counting_matches_tokenizer(hf_chat) -> None:
    assert hf_chat.count_tokens("hello world") == len(hf_chat.tokenizer.encode("hello world"))


# -- vLLM engine ----------------------------------------------------------------------------------


@pytest.mark.vllm
def test_vllm_answers_paris(vllm_chat) -> None:
    assert "Paris" in vllm_chat.invoke("What is the capital of France?").content


@pytest.mark.vllm
def test_greedy_parity_between_engines(hf_chat, vllm_chat) -> None:
    hf = [m.content for m in hf_chat.batch(PARITY_PROMPTS)]
    vl = [vllm_chat.invoke(p).content for p in PARITY_PROMPTS]
    assert hf == vl


@pytest.mark.vllm
def test_repetition_penalty_has_vllm_semantics(hf_chat, vllm_chat) -> None:
    """Our decode loop penalizes prompt and output tokens exactly as vLLM does (greedy parity)."""
    prompt = "List the days of the week, then list them again."
    hf = hf_chat.invoke(prompt, repetition_penalty=1.3, max_tokens=40).content
    vl = vllm_chat.invoke(prompt, extra_body={"repetition_penalty": 1.3}, max_tokens=40).content
    plain = hf_chat.invoke(prompt, max_tokens=40).content
    assert hf == vl
    assert hf != plain


@pytest.mark.vllm
def test_vllm_stream_chunks_join_to_full_text(vllm_chat) -> None:
    full = vllm_chat.invoke("Name three primary colors.").content
    chunks = [c.content for c in vllm_chat.stream("Name three primary colors.")]
    assert len([c for c in chunks if c]) > 1
    assert "".join(chunks) == full


@pytest.mark.vllm
def test_vllm_structured_output_always_parses(vllm_chat) -> None:
    structured = vllm_chat.with_structured_output(Answer)
    results = structured.batch(STRUCTURED_PROMPTS, config={"max_concurrency": 8})
    failures = [r for r in results if not isinstance(r, Answer)]
    print(f"vLLM structured output: {len(results) - len(failures)}/{len(results)} parsed")
    assert not failures


@pytest.mark.vllm
def test_vllm_tool_call_through_json_action(vllm_chat) -> None:
    from langchain_core.tools import tool

    @tool
    def get_weather(city: str) -> str:
        """Get the current weather for a city."""
        return "sunny"

    reply = vllm_chat.bind_tools([get_weather], tool_choice="any").invoke("What's the weather in Paris?")
    assert reply.tool_calls and reply.tool_calls[0]["name"] == "get_weather"


@pytest.mark.vllm
def test_vllm_token_counting_uses_served_tokenizer(vllm_chat, hf_chat) -> None:
    assert vllm_chat.count_tokens("hello world, again") == hf_chat.count_tokens("hello world, again")


# -- user errors: one line, exit code 2, no traceback -----------------------------------------------


def _cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    import os

    return subprocess.run(
        [sys.executable, "-m", "factflow.agent.cli", *args],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        timeout=120,
    )


@pytest.mark.parametrize(
    ("env", "needle"),
    [
        ({"FACTFLOW_ENGINE": "tensorflow"}, "FACTFLOW_ENGINE"),
        ({"FACTFLOW_TEMPERATURE": "hot"}, "FACTFLOW_TEMPERATURE"),
        ({"FACTFLOW_MODEL": "/nonexistent/model"}, "does not exist"),
        ({"FACTFLOW_ENGINE": "vllm", "FACTFLOW_BASE_URL": "http://127.0.0.1:9/v1"}, "no vLLM server"),
    ],
)
def test_bad_settings_are_one_line_errors(env: dict[str, str], needle: str) -> None:
    result = _cli("ask", "hello", env=env)
    assert result.returncode == 2, result.stderr
    assert needle in result.stderr
    assert "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_version_flag() -> None:
    result = _cli("--version")
    assert result.returncode == 0 and "factflow" in result.stdout


def test_settings_toml_file_and_env_precedence(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from factflow.settings import Settings

    config = tmp_path / "config.toml"
    config.write_text('engine = "vllm"\nmax_new_tokens = 77\n')
    monkeypatch.setenv("FACTFLOW_CONFIG", str(config))
    assert Settings().engine == "vllm" and Settings().max_new_tokens == 77
    monkeypatch.setenv("FACTFLOW_MAX_NEW_TOKENS", "12")
    assert Settings().max_new_tokens == 12  # env beats the file


def test_interrupted_pull_leaves_no_half_model(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import transformers

    from factflow.errors import UserError
    from factflow.serving.models import default_model_dir, pull_default_model, resolve_model
    from factflow.settings import Settings

    settings = Settings(models_dir=tmp_path / "models")

    def crash(*args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt  # what Ctrl-C mid-conversion looks like

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", crash)
    with pytest.raises(KeyboardInterrupt):
        pull_default_model(settings)
    assert not default_model_dir(settings).exists()
    assert list((tmp_path / "models").iterdir()) == []  # the temp dir is gone too
    with pytest.raises(UserError, match="factflow models pull"):
        resolve_model(settings, pull=False)


@pytest.mark.slow
@pytest.mark.vllm
def test_serve_stops_vllm_on_sigterm(tmp_path: Path) -> None:
    """`kill` of `factflow serve` must not orphan vLLM (it runs in its own process group)."""
    import os
    import signal
    import time

    import httpx

    from factflow.serving.vllm_server import free_port

    port = free_port()
    env = {**os.environ, "FACTFLOW_HOME": str(tmp_path), "HF_HUB_OFFLINE": "1"}
    serve = subprocess.Popen(
        [sys.executable, "-m", "factflow.agent.cli", "serve", "--port", str(port), "--eager"], env=env
    )
    url = f"http://127.0.0.1:{port}/health"
    try:
        deadline = time.monotonic() + 900
        while time.monotonic() < deadline:
            try:
                if httpx.get(url, timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(2)
        else:
            pytest.fail("vLLM did not become healthy")
        serve.send_signal(signal.SIGTERM)
        assert serve.wait(timeout=120) == 0
        with pytest.raises(httpx.HTTPError):
            httpx.get(url, timeout=2)
        time.sleep(2)
        left = subprocess.run(["pgrep", "-f", f"api_server.*--port {port}"], capture_output=True, text=True)
        assert left.stdout.strip() == "", f"vLLM processes left behind: {left.stdout}"
    finally:
        if serve.poll() is None:
            serve.kill()
