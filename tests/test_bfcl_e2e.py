"""End-to-end runs of the agentic benchmarks on the real default model.

Fast set: one real BFCL case (simple) through the runner, resume, and the report. The CLI
`--quick` run of bfcl is slow; appworld skips unless installed. (The ACE adaptation runs are
tested in test_playbook_eval_adapt.py.)
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from factflow.errors import UserError
from factflow.evals.agentic_report import write_bfcl_report
from factflow.evals.appworld import INSTALL_HINT, appworld_available
from factflow.evals.bfcl_data import load_category
from factflow.evals.bfcl_runner import run_bfcl, summarize


def test_bfcl_simple_case_runs_scores_and_resumes(hf_chat, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    chat = hf_chat.model_copy(update={"max_new_tokens": 96})
    entries = load_category("simple", limit=1)
    results = run_bfcl(chat, [], tmp_path, entries=entries, progress=False)
    assert len(results) == 1 and results[0].id == "simple_python_0"
    # The default model gets this one right: calculate_triangle_area(base=10, height=5).
    assert results[0].calls and "calculate_triangle_area" in results[0].calls[0]
    lines = (tmp_path / "bfcl_results.jsonl").read_text().splitlines()
    assert len(lines) == 1 and json.loads(lines[0])["valid"] == results[0].valid
    again = run_bfcl(chat, [], tmp_path, entries=entries, progress=False)  # resumable: nothing re-run
    assert [r.model_dump() for r in again] == [r.model_dump() for r in results]
    assert len((tmp_path / "bfcl_results.jsonl").read_text().splitlines()) == 1
    table = summarize(results)
    assert table["simple"]["n"] == 1 and table["overall"]["accuracy"] == float(results[0].valid)
    report = write_bfcl_report(table, tmp_path)
    assert "| simple | 1 |" in report.read_text() and (tmp_path / "bfcl_accuracy.png").stat().st_size > 0


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
            "--categories",
            "simple,irrelevance,multi_turn_base,memory",
            "--limit",
            "1",
            "--out",
            str(out),
        ],
    )
    assert result.exit_code == 0, result.output
    rows = [json.loads(x) for x in (out / "bfcl_results.jsonl").read_text().splitlines()]
    assert {r["category"] for r in rows} == {"simple", "irrelevance", "multi_turn_base", "memory"}
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
