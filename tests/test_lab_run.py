"""The lab end to end on the real default model: quick runs, report contents, determinism."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from typer.testing import CliRunner

from factflow.errors import UserError
from factflow.evals.lab import METRICS, load_rows, quick_config, run_lab
from factflow.evals.lab_routes import ROUTES, route_unavailable


def _check_report(out: Path, routes: list[str]) -> None:
    rows = load_rows(out / "results.jsonl")
    assert {r.route for r in rows} == set(routes) | {"none"}
    for r in rows:
        for metric in METRICS:
            value = getattr(r, metric)
            assert isinstance(value, float) and math.isfinite(value), (r.route, metric, value)
        assert 0.0 <= r.efficacy <= 1.0 and 0.0 <= r.locality <= 1.0
        assert r.kl >= 0.0 and r.learn_s >= 0.0
    report = (out / "report.md").read_text()
    assert "## Main table" in report and "2508.20755" in report
    for r in rows:
        assert f"| {r.route} | {r.size} |" in report
    assert (out / "recall_vs_facts.png").stat().st_size > 1000
    assert (out / "retention_vs_recall.png").stat().st_size > 1000


def test_quick_cli_run_of_the_base_route(tmp_path: Path) -> None:
    """Fast set: `factflow eval lab --quick` on the real model writes rows, report and plots."""
    from factflow.agent.cli import app

    out = tmp_path / "lab"
    result = CliRunner().invoke(app, ["eval", "lab", "--quick", "--routes", "none", "--out", str(out)])
    assert result.exit_code == 0, result.output
    _check_report(out, ["none"])
    none = load_rows(out / "results.jsonl")[0]
    # Untouched model: probes were chosen because the base answers them, and it is its own reference.
    assert none.locality == 1.0 and none.kl == 0.0 and none.ppl_ratio == 1.0
    # Resumable: a second run finds the row and adds nothing.
    again = CliRunner().invoke(app, ["eval", "lab", "--quick", "--routes", "none", "--out", str(out)])
    assert again.exit_code == 0, again.output
    assert len(load_rows(out / "results.jsonl")) == 1


def test_unknown_route_is_a_user_error(tmp_path: Path) -> None:
    from factflow.agent.cli import app

    result = CliRunner().invoke(app, ["eval", "lab", "--quick", "--routes", "magic", "--out", str(tmp_path)])
    assert isinstance(result.exception, UserError), result.output
    assert "unknown lab route 'magic': choose from none, playbook" in str(result.exception)


@pytest.mark.slow
def test_quick_runs_every_route_end_to_end(tmp_path: Path, model_path: str) -> None:
    routes = [r for r in ROUTES if route_unavailable(r) is None]
    assert {"none", "full_ft", "lora"} <= set(routes)
    cfg = quick_config(tmp_path / "lab", model_path=model_path, cache_dir=tmp_path / "cache", routes=routes)
    run_lab(cfg)
    _check_report(tmp_path / "lab", routes)
    rows = {r.route: r for r in load_rows(tmp_path / "lab" / "results.jsonl")}
    assert rows["full_ft"].layer_change and rows["full_ft"].trainable_params > 100_000_000
    assert 0 < rows["lora"].trainable_params < rows["full_ft"].trainable_params
    for route in ("full_ft", "lora", "reft", "proxy", "tool_ft"):  # the budget rule ran one epoch each
        fit = rows[route].fit
        assert fit is not None and fit["epochs"] == 1 and fit["steps"] >= 1, (route, fit)


@pytest.mark.slow
def test_same_seed_same_numbers_on_cpu(tmp_path: Path, model_path: str) -> None:
    def run(name: str) -> list[dict[str, object]]:
        cfg = quick_config(tmp_path / name, model_path=model_path, cache_dir=tmp_path / "cache",
                           routes=["none", "full_ft"])
        run_lab(cfg)
        rows = [json.loads(r.model_dump_json()) for r in load_rows(tmp_path / name / "results.jsonl")]
        for r in rows:  # wall-clock numbers differ run to run by nature
            for key in ("learn_s", "seconds_per_query", "latency_ratio", "finished_at"):
                r.pop(key)
        return rows

    assert run("a") == run("b")
