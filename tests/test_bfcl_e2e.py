"""End-to-end BFCL runs through BFCL's own inference loop and checker.

Fast set: the real default model in `constrained` and `prompt` mode on one case each (run, score,
resume, BFCL layout, report); `fc` mode against a scripted OpenAI-compatible HTTP server for what
the 135M model can't produce (several native calls in one message, a memory chain, the 20-step
limit, the holdout-turn message, server errors). The CLI run on the real model is slow.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest
from _openai_script import completion, rejected, scripted_app
from typer.testing import CliRunner

from factflow.agent.server import AgentServerThread
from factflow.errors import UserError
from factflow.evals.agentic_report import summarize, write_bfcl_report
from factflow.evals.appworld import INSTALL_HINT, appworld_available
from factflow.evals.bfcl_data import load_category
from factflow.evals.bfcl_handlers import make_handler
from factflow.evals.bfcl_official import bfcl
from factflow.evals.bfcl_runner import Manifest, bfcl_official_scores, run_bfcl

KEY = "sk-bfcl-test"


def manifest(mode: str, **changes: Any) -> Manifest:
    base = dict(
        mode=mode,
        model="m",
        engine="e",
        endpoint=None,
        decoding={},
        commit="c",
        bfcl_eval="2026.3.23",
        seed=0,
        limit=None,
    )
    return Manifest(**{**base, **changes})


def test_constrained_and_prompt_modes_on_the_default_model(hf_chat, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    chat = hf_chat.model_copy(update={"max_new_tokens": 48})
    case = [c for c in load_category("simple_python") if c.id == "simple_python_0"]
    by_mode = {}
    rows_by_mode = {}
    for mode in ("constrained", "prompt"):
        out = tmp_path / mode
        handler = make_handler(mode, chat=chat)
        rows = run_bfcl(handler, [], out, manifest(mode), cases=case, progress=False)
        assert [r.id for r in rows] == ["simple_python_0"]
        if mode == "constrained":  # one JSON action, only the offered function can be named
            assert isinstance(rows[0].result, list) and "calculate_triangle_area" in rows[0].result[0]
        else:  # BFCL's system prompt asked for `[func(...)]` text; BFCL's parser read it
            assert isinstance(rows[0].result, str)
        assert rows[0].input_tokens > 0 and rows[0].output_tokens > 0
        layout = out / "result" / f"factflow-{mode}" / "non_live" / "BFCL_v4_simple_python_result.json"
        assert json.loads(layout.read_text())["result"] == rows[0].result
        assert bfcl_official_scores(handler, out, ["simple_python"]) == {
            "simple_python": float(rows[0].valid)
        }
        again = run_bfcl(handler, [], out, manifest(mode), cases=case, progress=False)  # resumes: no rerun
        assert [r.model_dump() for r in again] == [r.model_dump() for r in rows]
        assert len((out / "bfcl_results.jsonl").read_text().splitlines()) == 1
        by_mode[mode] = summarize(rows)
        rows_by_mode[mode] = rows
    report = write_bfcl_report(by_mode, tmp_path, rows_by_mode=rows_by_mode).read_text()
    assert "| constrained - prompt |" in report  # paired difference on the shared case
    assert "constrained (ours)" in report and "prompt (BFCL prompt)" in report
    assert "| simple_python |" in report and "n=1" in report and "overall" in report
    assert (tmp_path / "bfcl_accuracy.png").stat().st_size > 0


class Script:
    """A scripted OpenAI-compatible server; `reply(body)` answers each chat request."""

    def __init__(self, reply: Any) -> None:
        self.requests: list[dict[str, Any]] = []
        self.thread = AgentServerThread(scripted_app(reply, self.requests, key=KEY))

    def handler(self, mode: str = "fc") -> Any:
        return make_handler(mode, base_url=self.thread.base_url, api_key=KEY, served_model="scripted-model")


@pytest.fixture
def script() -> Iterator[Any]:
    servers: list[Script] = []

    def start(reply: Any) -> Script:
        s = Script(reply)
        s.thread.__enter__()
        servers.append(s)
        return s

    yield start
    for s in servers:
        s.thread.__exit__()


def test_fc_mode_several_native_calls_in_one_message(script: Any, tmp_path: Path) -> None:
    case = load_category("parallel", limit=1, seed=4)[0]
    calls = [
        (name.replace(".", "_"), json.dumps({p: o[0] for p, o in args.items() if o[0] != ""}))
        for answer in case.ground_truth
        for name, args in answer.items()
    ]
    server = script(lambda body: completion(tool_calls=calls))
    rows = run_bfcl(server.handler(), [], tmp_path, manifest("fc"), cases=[case], progress=False)
    assert rows[0].valid and len(rows[0].result) == len(case.ground_truth) >= 2
    sent = server.requests[0]
    assert sent["tools"] and sent["temperature"] == 0.0 and sent["model"] == "scripted-model"


def test_fc_mode_multi_turn_step_limit_and_holdout_message(script: Any, tmp_path: Path) -> None:
    case = next(
        c
        for c in load_category("multi_turn_miss_func", limit=20, seed=0)
        if "0" not in c.entry["missed_function"]
    )
    holdout_turn = int(next(iter(case.entry["missed_function"])))
    prompts = bfcl().prompts

    def reply(body: dict[str, Any]) -> dict[str, Any]:
        last = body["messages"][-1]
        if (
            last["role"] == "tool"
            or last.get("content") == prompts.DEFAULT_USER_PROMPT_FOR_ADDITIONAL_FUNCTION_FC
        ):
            return completion(tool_calls=[("ls", "{}")])  # from the holdout turn on: call a tool forever
        return completion(content="Done.")

    server = script(reply)
    rows = run_bfcl(server.handler(), [], tmp_path, manifest("fc"), cases=[case], progress=False)
    holdout_requests = [
        r
        for r in server.requests
        if r["messages"][-1].get("role") == "tool"
        or r["messages"][-1].get("content") == prompts.DEFAULT_USER_PROMPT_FOR_ADDITIONAL_FUNCTION_FC
    ]
    assert len(holdout_requests) == prompts.MAXIMUM_STEP_LIMIT + 1  # BFCL's step limit, then forced quit
    assert not rows[0].valid and rows[0].error_type == "multi_turn:force_terminated"
    assert len(rows[0].result) == holdout_turn + 1  # the run stopped at that turn


def test_fc_mode_memory_fresh_instance_per_question_from_the_snapshot(script: Any, tmp_path: Path) -> None:
    questions = [q for q in load_category("memory_kv", limit=60, seed=0) if q.scenario == "notetaker"][:2]
    assert len(questions) == 2
    seen: list[str] = []

    def reply(body: dict[str, Any]) -> dict[str, Any]:
        messages = body["messages"]
        system = messages[0]["content"] if messages[0]["role"] == "system" else ""
        if messages[-1]["role"] == "tool":
            return completion(content="{'answer': 'I do not know', 'context': 'I do not know'}")
        if "For your final answer" in system:  # a question: note what memory holds, then scribble on it
            seen.append(system)
            return completion(tool_calls=[("core_memory_add", json.dumps({"key": "scratch", "value": "q"}))])
        n = sum(1 for r in server.requests if r["messages"][-1]["role"] != "tool")
        return completion(
            tool_calls=[("core_memory_add", json.dumps({"key": f"fact_{n}", "value": f"v{n}"}))]
        )

    server = script(reply)
    rows = run_bfcl(server.handler(), [], tmp_path, manifest("fc"), cases=questions, progress=False)
    assert [r.id for r in rows] == [q.id for q in questions] and not any(r.valid for r in rows)
    assert len(seen) == 2
    for system in seen:  # both start from the prerequisites' final snapshot ...
        assert '"fact_1": "v1"' in system
        assert "scratch" not in system  # ... and not from the other question's writes
    snapshots = tmp_path / "result" / "factflow-fc" / "agentic" / "memory" / "kv" / "memory_snapshot"
    assert (snapshots / "notetaker_final.json").exists()


def test_server_errors_stop_the_run_bad_requests_fail_the_case(script: Any, tmp_path: Path) -> None:
    case = load_category("simple_python", limit=1, seed=0)
    too_long = script(lambda body: rejected("This model's maximum context length is 8 tokens"))
    rows = run_bfcl(too_long.handler(), [], tmp_path / "a", manifest("fc"), cases=case, progress=False)
    assert not rows[0].valid and "Error during inference: BadRequestError" in rows[0].result
    broken = script(lambda body: (500, {"error": {"message": "engine died", "type": "server_error"}}))
    cases = load_category("simple_python", limit=6, seed=0)
    with pytest.raises(openai.InternalServerError):
        run_bfcl(broken.handler(), [], tmp_path / "b", manifest("fc"), cases=cases, progress=False)
    assert not (tmp_path / "b" / "bfcl_results.jsonl").exists()
    asked = {json.dumps(r["messages"][-1]) for r in broken.requests}
    # the failed case, and at most the one the worker took up before the error surfaced
    assert len(asked) <= 2 < len(cases)


def test_cli_refuses_to_resume_a_different_run(script: Any, tmp_path: Path) -> None:
    from factflow.agent.cli import app

    server = script(lambda body: completion(content="No function fits."))
    args = [
        "eval",
        "bfcl",
        "--modes",
        "prompt",
        "--categories",
        "irrelevance",
        "--limit",
        "1",
        "--endpoint",
        server.thread.base_url,
        "--model-id",
        "scripted-model",
        "--out",
        str(tmp_path),
    ]
    first = CliRunner().invoke(app, args, env={"FACTFLOW_API_KEY": KEY})
    assert first.exit_code == 0, first.output
    assert "irrelevance" in first.output and "n=1" in first.output
    manifest_file = json.loads((tmp_path / "prompt" / "manifest.json").read_text())
    assert manifest_file["engine"] == "openai-endpoint" and manifest_file["bfcl_eval"] == "2026.3.23"
    second = CliRunner().invoke(app, [*args, "--seed", "3"], env={"FACTFLOW_API_KEY": KEY})
    assert isinstance(second.exception, UserError) and "seed: 0 -> 3" in str(second.exception)


@pytest.mark.slow
def test_cli_bfcl_quick(tmp_path: Path) -> None:
    from factflow.agent.cli import app

    out = tmp_path / "bfcl"
    result = CliRunner().invoke(
        app,
        [
            "eval",
            "bfcl",
            "--quick",
            "--modes",
            "constrained,prompt",
            "--categories",
            "simple_python,irrelevance,multi_turn_base",
            "--limit",
            "1",
            "--out",
            str(out),
        ],
    )
    assert result.exit_code == 0, result.output
    for mode in ("constrained", "prompt"):
        rows = [json.loads(x) for x in (out / mode / "bfcl_results.jsonl").read_text().splitlines()]
        assert {r["category"] for r in rows} == {"simple_python", "irrelevance", "multi_turn_base"}
    assert (out / "bfcl_report.md").exists() and (out / "bfcl_accuracy.png").exists()


def test_cli_appworld_explains_how_to_install(tmp_path: Path) -> None:
    if appworld_available():
        pytest.skip("appworld is installed: the slow run below covers it")
    from factflow.agent.cli import app

    result = CliRunner().invoke(app, ["eval", "appworld", "--quick", "--out", str(tmp_path)])
    assert isinstance(result.exception, UserError) and INSTALL_HINT in str(result.exception)


@pytest.mark.slow
@pytest.mark.skipif(not appworld_available(), reason="appworld package and data not installed")
def test_cli_appworld_quick(tmp_path: Path) -> None:
    from factflow.agent.cli import app

    result = CliRunner().invoke(app, ["eval", "appworld", "--quick", "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "appworld_results.jsonl").exists()
