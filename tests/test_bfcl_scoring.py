"""BFCL scoring, data, sampling, manifest and the leaderboard formula, on BFCL's real data.

The differential test writes a few hundred real cases (right and wrong answers) in BFCL's result
layout, then checks that our per-case verdicts add up to what bfcl-eval's own `evaluate_task`
computes from those files.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from factflow.errors import UserError
from factflow.evals.bfcl_data import (
    RUNNABLE_CATEGORIES,
    UNAVAILABLE,
    category_size,
    expand_categories,
    load_category,
    memory_prereqs,
)
from factflow.evals.bfcl_handlers import ChatModelHandler
from factflow.evals.bfcl_leaderboard import leaderboard
from factflow.evals.bfcl_official import bfcl
from factflow.evals.bfcl_runner import (
    CaseResult,
    Manifest,
    bfcl_official_scores,
    score_case,
    write_bfcl_layout,
)


def scorer(mode: str) -> Any:
    return ChatModelHandler(mode, None)  # type: ignore[arg-type]  # scoring never calls the model


def fc_answer(truth: list[dict[str, Any]], wrong: bool = False) -> list[dict[str, str]]:
    """Native tool calls (names with dots as underscores) from the first possible answer."""
    calls = []
    for answer in truth:
        for name, params in answer.items():
            args = {p: opts[0] for p, opts in params.items() if opts and opts[0] != ""}
            if wrong and args:
                args.pop(next(iter(args)))
                args["not_a_parameter"] = 1
            calls.append({name.replace(".", "_"): json.dumps(args)})
    return calls


def python_answer(truth: list[dict[str, Any]]) -> str:
    """BFCL prompt-mode text: `[f(a=1), g(b='x')]`."""
    calls = []
    for answer in truth:
        for name, params in answer.items():
            args = ", ".join(f"{p}={opts[0]!r}" for p, opts in params.items() if opts and opts[0] != "")
            calls.append(f"{name}({args})")
    return "[" + ", ".join(calls) + "]"


AST = (
    "simple_python",
    "simple_java",
    "simple_javascript",
    "multiple",
    "parallel",
    "parallel_multiple",
    "live_simple",
    "live_multiple",
    "live_parallel",
)


def test_our_verdicts_equal_bfcl_evaluate_task_on_real_cases(tmp_path: Path) -> None:
    handler = scorer("fc")
    rows: list[CaseResult] = []
    for category in AST:
        for i, case in enumerate(load_category(category, limit=30, seed=7)):
            result = fc_answer(case.ground_truth, wrong=i % 3 == 0)
            verdict = score_case(handler, case, result)
            rows.append(
                CaseResult(id=case.id, category=category, mode="fc", valid=verdict["valid"], result=result)
            )
    for category in ("irrelevance", "live_relevance"):
        for i, case in enumerate(load_category(category, limit=16, seed=7)):
            result: Any = [{"some_tool": "{}"}] if i % 2 else "I can't help with that."
            verdict = score_case(handler, case, result)
            rows.append(
                CaseResult(id=case.id, category=category, mode="fc", valid=verdict["valid"], result=result)
            )
    assert len(rows) >= 280
    mine: dict[str, list[bool]] = {}
    for row in rows:
        mine.setdefault(row.category, []).append(row.valid)
    assert 0 < sum(map(sum, mine.values())) < len(rows)  # both verdicts occur
    write_bfcl_layout(handler, tmp_path, rows)
    official = bfcl_official_scores(handler, tmp_path, list(mine))
    for category, verdicts in mine.items():
        assert official[category] == pytest.approx(sum(verdicts) / len(verdicts)), category
    assert (tmp_path / "score" / "factflow-fc" / "non_live" / "BFCL_v4_simple_python_score.json").exists()


def test_prompt_mode_uses_bfcl_parser_and_names_with_dots() -> None:
    handler = scorer("prompt")
    cases = load_category("parallel_multiple", limit=10, seed=1)
    right = [c for c in cases if score_case(handler, c, python_answer(c.ground_truth))["valid"]]
    # (a first possible answer can itself fail BFCL's type rules, e.g. an int where a float is typed)
    assert len(right) >= 8 and any("." in name for c in right for a in c.ground_truth for name in a)
    bad = score_case(handler, cases[0], "I would call a function here.")
    assert not bad["valid"] and bad["error_type"] == "ast_decoder:decoder_failed"
    # fc output is decoded as JSON arguments; prompt text is not valid there
    assert not score_case(scorer("fc"), cases[0], python_answer(cases[0].ground_truth))["valid"]


def test_multi_turn_checker_replays_on_bfcl_apis() -> None:
    case = load_category("multi_turn_base", limit=1, seed=3)[0]
    handler = scorer("prompt")
    perfect = [["[" + ", ".join(turn) + "]"] for turn in case.ground_truth]
    assert score_case(handler, case, perfect)["valid"]
    lazy = [["I am done."] for _ in case.ground_truth]
    verdict = score_case(handler, case, lazy)
    assert not verdict["valid"]


def test_memory_answers_use_bfcl_agentic_checker() -> None:
    case = load_category("memory_kv", limit=1, seed=0)[0]
    handler = scorer("fc")
    answer = f"{{'answer': '{case.ground_truth[0]}', 'context': 'from memory'}}"
    assert score_case(handler, case, [[answer]])["valid"]
    assert not score_case(handler, case, [["{'answer': 'I do not know'}"]])["valid"]


def test_every_category_the_data_ships_is_listed() -> None:
    scoring = bfcl().categories.ALL_SCORING_CATEGORIES
    assert set(RUNNABLE_CATEGORIES) | set(UNAVAILABLE) == set(scoring)
    for category in RUNNABLE_CATEGORIES:
        cases = load_category(category, limit=2, seed=0)
        assert len(cases) == 2 and all(c.category == category for c in cases)
        assert all(c.functions for c in cases)
        if "relevance" not in category:
            assert all(c.ground_truth for c in cases)
    assert category_size("simple_java") == 100 and category_size("simple_javascript") == 50


def test_limit_is_a_seeded_stratified_sample() -> None:
    first = [c.id for c in load_category("simple_python", limit=20, seed=1)]
    again = [c.id for c in load_category("simple_python", limit=20, seed=1)]
    other = [c.id for c in load_category("simple_python", limit=20, seed=2)]
    assert first == again and first != other
    assert first != [f"simple_python_{i}" for i in range(20)]  # not the first N
    assert first == sorted(first, key=lambda i: int(i.rsplit("_", 1)[1]))  # BFCL's order kept
    assert len(load_category("live_parallel", limit=500)) == category_size("live_parallel")


def test_categories_groups_and_unavailable_ones() -> None:
    assert expand_categories(["simple"]) == ["simple_python"]
    assert expand_categories(["memory"]) == ["memory_kv", "memory_rec_sum"]
    with pytest.raises(UserError, match="web search"):
        expand_categories(["web_search_base"])
    with pytest.raises(UserError, match="faiss"):
        expand_categories(["memory_vector"])
    with pytest.raises(UserError, match="unknown BFCL category 'nope'"):
        expand_categories(["nope"])


def test_memory_prereqs_chain_in_order() -> None:
    chain = memory_prereqs("memory_kv", "customer")
    assert [len(c.entry["depends_on"]) for c in chain] == list(range(len(chain)))
    question = load_category("memory_kv", limit=40, seed=0)
    customer = next(q for q in question if q.scenario == "customer")
    assert customer.entry["depends_on"] == [c.id for c in chain]


def _rates(value: float, categories: tuple[str, ...]) -> dict[str, tuple[int, int]]:
    return {c: (int(value * 10), 10) for c in categories}


def test_leaderboard_formula_matches_bfcl_sections() -> None:
    everything = _rates(1.0, RUNNABLE_CATEGORIES)
    board = {s.name: s for s in leaderboard(everything)}
    assert board["non_live"].accuracy == 1.0 and board["multi_turn"].accuracy == 1.0
    # agentic = mean(web search (not run: 0), memory = mean(kv 1, vector 0, rec_sum 1))
    assert board["agentic"].accuracy == pytest.approx(1 / 3)
    assert board["overall"].accuracy == pytest.approx(0.1 + 0.1 + 0.1 + 0.3 + 0.4 / 3)
    assert set(board["overall"].missing) == set(UNAVAILABLE)
    # live is weighted by the categories' full sizes; non-live simple averages its languages
    part = {"live_simple": (10, 10), "live_multiple": (0, 10), "simple_python": (10, 10)}
    board = {s.name: s for s in leaderboard(part)}
    sizes = {
        c: category_size(c)
        for c in ("live_simple", "live_multiple", "live_parallel", "live_parallel_multiple")
    }
    assert board["live"].accuracy == pytest.approx(sizes["live_simple"] / sum(sizes.values()))
    assert board["non_live"].accuracy == pytest.approx((1 / 3) / 4)
    assert "simple_java" in board["non_live"].missing


def manifest(**changes: Any) -> Manifest:
    base = dict(
        mode="prompt",
        model="m",
        engine="openai-endpoint",
        endpoint="http://x/v1",
        decoding={"temperature": 0.0},
        commit="abc",
        bfcl_eval="2026.3.23",
        seed=0,
        limit=5,
    )
    return Manifest(**{**base, **changes})


def test_resume_into_a_folder_of_another_run_is_refused(tmp_path: Path) -> None:
    from factflow.evals.bfcl_runner import run_bfcl

    handler = scorer("prompt")
    assert run_bfcl(handler, [], tmp_path, manifest(), cases=[], progress=False) == []
    assert json.loads((tmp_path / "manifest.json").read_text())["seed"] == 0
    run_bfcl(handler, [], tmp_path, manifest(), cases=[], progress=False)  # same settings: resumes
    with pytest.raises(UserError, match=r"seed: 0 -> 1.*new --out folder"):
        run_bfcl(handler, [], tmp_path, manifest(seed=1), cases=[], progress=False)


def test_report_pairs_modes_on_shared_cases_and_names_n(tmp_path: Path) -> None:
    from factflow.evals.agentic_report import summarize, write_bfcl_report

    def rows(mode: str, right: int) -> list[CaseResult]:
        return [
            CaseResult(id=f"simple_python_{i}", category="simple_python", mode=mode, valid=i < right)
            for i in range(40)
        ]

    by_rows = {"prompt": rows("prompt", 30), "constrained": rows("constrained", 10)}
    report = write_bfcl_report({m: summarize(r) for m, r in by_rows.items()}, tmp_path, rows_by_mode=by_rows)
    text = report.read_text()
    assert "| simple_python | 0.75 [0.60, 0.86] n=40 | 0.25 [0.14, 0.40] n=40 |" in text
    assert "| prompt - constrained | +0.500 |" in text and "| 40 |" in text
    assert "| overall | 100 |" in text and "simple_java" in text  # missing categories are named


def test_forgetting_a_case_while_other_workers_add_instances() -> None:
    """Concurrent multi-turn cases add their API instances to BFCL's module globals while a
    finished case drops its own; that must not fail with "dictionary changed size"."""
    import sys
    import threading

    from factflow.evals.bfcl_runner import _forget_instances

    store = vars(bfcl().multi_turn)
    stop = threading.Event()

    def other_worker() -> None:
        i = 0
        while not stop.is_set():
            store[f"m_other_case_{i}_Api_instance"] = object()
            store.pop(f"m_other_case_{i - 50}_Api_instance", None)
            i += 1

    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # switch threads often, so the old live-dict iteration is caught
    thread = threading.Thread(target=other_worker)
    thread.start()
    try:
        for _ in range(3000):
            store["m_mine_1_Api_instance"] = object()
            store["m_mine_10_Api_instance"] = object()
            _forget_instances("mine_1")
            assert "m_mine_1_Api_instance" not in store
            assert "m_mine_10_Api_instance" in store  # case 10's instances are not case 1's
    finally:
        stop.set()
        thread.join()
        sys.setswitchinterval(old)
        for name in [k for k in list(store) if k.startswith(("m_other_case_", "m_mine_"))]:
            del store[name]
