"""The lab's budget rule (`Fit`) and the tool_ft action format, on pure logic."""

from __future__ import annotations

import json

import pytest

from factflow.evals.lab_data import make_lab_data
from factflow.evals.lab_routes import TOOL_NAME, Fit, RouteBudget, TooCostly, _call_text, tool_demos


def _answers(right: int):  # type: ignore[no-untyped-def]
    """Pure-logic fake answerer: the first `right` questions answered right (by their fact's object)."""
    data = make_lab_data(16, seed=0)
    gold = {f.train_question: f.object for f in data.facts}
    return lambda qs: [gold[q] if i < right else "no idea" for i, q in enumerate(qs)]


def test_fit_stops_when_training_recall_reaches_the_target() -> None:
    facts = make_lab_data(16, seed=0).facts
    fit = Fit(facts, RouteBudget(target_recall=0.99, max_epochs=10, recall_sample=8))
    assert fit.after_epoch(_answers(4), steps=4) is False  # 4/8 < 0.99: go on
    assert fit.after_epoch(_answers(8), steps=8) is True  # 8/8: stop
    rec = fit.record()
    assert rec["steps"] == 8 and rec["epochs"] == 2 and rec["reached_target"] and rec["checked"] == 8
    assert "target reached" in fit.describe()


def test_fit_stops_at_the_epoch_cap_and_says_so() -> None:
    fit = Fit(make_lab_data(16, seed=0).facts, RouteBudget(max_epochs=2, recall_sample=8))
    assert fit.after_epoch(_answers(0), steps=4) is False
    assert fit.after_epoch(_answers(2), steps=8) is True
    assert not fit.record()["reached_target"] and "epoch cap" in fit.describe()


def test_fit_leaves_out_a_cell_that_would_pass_the_time_limit() -> None:
    fit = Fit(make_lab_data(16, seed=0).facts, RouteBudget(max_epochs=5, max_train_s=1e-9))
    with pytest.raises(TooCostly, match="limit"):
        fit.after_epoch(_answers(0), steps=4)


def test_tool_call_text_is_the_agents_json_action() -> None:
    from factflow.serving.actions import parse_action

    msg = parse_action(_call_text("Kavel Lormel"))
    assert msg.tool_calls[0]["name"] == TOOL_NAME
    assert msg.tool_calls[0]["args"] == {"query": "Kavel Lormel"}
    assert json.loads(_call_text("x")) == {"action": TOOL_NAME, "arguments": {"query": "x"}}


def test_tool_demos_are_a_fixed_seeded_sample() -> None:
    facts = make_lab_data(256, seed=0).facts
    budget = RouteBudget(tool_demos=32)
    assert tool_demos(facts, budget) == tool_demos(facts, budget)
    assert len(tool_demos(facts, budget)) == 32 and len(tool_demos(facts[:8], budget)) == 8
