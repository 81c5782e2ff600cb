"""Role logic with a scripted chat model (pure logic: retry once, skip, never corrupt the playbook),
plus the `factflow playbook` CLI. The real-model runs are in test_playbook_e2e.py."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from langchain_core.exceptions import OutputParserException
from pydantic import BaseModel
from typer.testing import CliRunner

from factflow.errors import UserError
from factflow.memory.adapt import Sample, contains_match, offline_adapt, online_adapt
from factflow.memory.bullets import AddOp, Delta
from factflow.memory.playbook import Playbook
from factflow.memory.roles import (
    CuratorOutput,
    GeneratorOutput,
    Reflection,
    UsageMeter,
    curator_ops,
    cut_sentences,
)
from factflow.settings import Settings


class WordCounter:
    def count(self, text: str) -> int:
        return len(text.split())


class ScriptedChat:
    """Answers each structured call from a per-schema script: a dict (validated), or an
    exception instance (raised), the way a real engine's parse step would behave."""

    def __init__(self, script: dict[str, list[Any] | Callable[[str], Any]]) -> None:
        self.script = script
        self.prompts: list[tuple[str, str]] = []

    def with_structured_output(self, schema: type[BaseModel]) -> Any:
        chat = self

        class _Bound:
            def invoke(self, messages: list[Any]) -> Any:
                name = schema.__name__
                prompt = messages[-1].content
                chat.prompts.append((name, prompt))
                entry = chat.script[name]
                item = entry(prompt) if callable(entry) else entry.pop(0)
                if isinstance(item, Exception):
                    raise item
                return schema.model_validate(item)

        return _Bound()


def open_pb(tmp_path: Path) -> Playbook:
    return Playbook.open(
        tmp_path / "pb.sqlite3", Settings(home=tmp_path), dedup_mode="off", token_counter=WordCounter()
    )


def test_learn_tags_and_curates_through_validated_ops(tmp_path: Path) -> None:
    pb = open_pb(tmp_path)
    pb.apply(Delta(ops=[AddOp(section="strategies", content="add the numbers digit by digit")]))
    chat = ScriptedChat(
        {
            "Reflection": [
                {
                    "diagnosis": "wrong sum",
                    "key_insight": "carry the one",
                    "bullet_tags": [
                        {"id": "strat-00001", "tag": "harmful"},
                        {"id": "strat-99999", "tag": "helpful"},
                    ],
                }
            ],
            "CuratorOutput": [
                {
                    "operations": [
                        {"type": "ADD", "section": "common_mistakes", "content": "forgetting the carry"},
                        {"type": "UPDATE", "bullet_ids": [], "content": "no id given"},
                        {"type": "REMOVE", "bullet_ids": ["form-00077"], "content": ""},
                    ]
                }
            ],
        }
    )
    r = pb.learn("9+3?", "11", "incorrect, expected 12", chat, used_bullet_ids=["strat-00001"], trace_id="t1")
    assert r.reflection is not None and r.result is not None
    assert [o.type for o in r.result.applied] == ["TAG", "ADD"]  # tag only for the bullet it saw
    assert [x.reason for x in r.result.rejected] == ["unknown bullet id 'form-00077'"]
    assert any("UPDATE" in s for s in r.skipped)
    state = pb.state()
    assert state.bullets["strat-00001"].harmful == 1
    assert state.bullets["mist-00002"].content == "forgetting the carry"
    assert state.bullets["mist-00002"].trace_ids == ["t1"]
    # the Curator saw the sections it may use, and the bullet ids to act on
    curator_prompt = [p for n, p in chat.prompts if n == "CuratorOutput"][0]
    assert "common_mistakes" in curator_prompt and "[strat-00001]" in curator_prompt


def test_invalid_output_is_retried_once_then_skipped(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    pb = open_pb(tmp_path)
    chat = ScriptedChat(
        {"Reflection": [OutputParserException("not json"), OutputParserException("still not json")]}
    )
    r = pb.learn("q", "a", "", chat)
    assert r.result is None and r.reflection is None and pb.version == 0
    assert "reflector skipped: OutputParserException: still not json" in r.skipped[0]
    assert "attempt 1 of 2" in caplog.text and "skipped after 2 invalid output(s)" in caplog.text
    # a retry that succeeds is used
    chat = ScriptedChat(
        {
            "Reflection": [
                OutputParserException("truncated JSON"),
                {"diagnosis": "d", "key_insight": "k", "bullet_tags": []},
            ],
            "CuratorOutput": [OutputParserException("bad"), OutputParserException("bad again")],
        }
    )
    r = pb.learn("q", "a", "", chat)
    assert r.reflection is not None and r.result is None and pb.version == 0
    assert any("curator skipped" in s for s in r.skipped)
    # greedy decoding would repeat the same bad output: no retry
    chat = ScriptedChat(
        {"Reflection": [OutputParserException("bad"), {"diagnosis": "d", "key_insight": "k"}]}
    )
    chat.temperature = 0.0  # type: ignore[attr-defined]
    r = pb.learn("q", "a", "", chat)
    assert r.reflection is None and len(chat.prompts) == 1


def test_output_cut_at_the_token_cap_is_a_skipped_step(tmp_path: Path) -> None:
    """The vLLM engine's client refuses to parse a JSON object the server cut at the cap (a
    Formula reasoning of digits): that is a bad output, skipped like any other, not a crash."""
    import openai
    from openai.types.chat import ChatCompletion
    from openai.types.completion_usage import CompletionUsage

    cut = ChatCompletion(
        id="c",
        created=0,
        model="m",
        object="chat.completion",
        choices=[
            {
                "index": 0,
                "finish_reason": "length",
                "message": {"role": "assistant", "content": '{"a": "9999'},
            }
        ],
        usage=CompletionUsage(completion_tokens=512, prompt_tokens=9, total_tokens=521),
    )
    pb = open_pb(tmp_path)
    chat = ScriptedChat(
        {
            "GeneratorOutput": [openai.LengthFinishReasonError(completion=cut)],
            "Reflection": lambda p: OutputParserException("not json"),
        }
    )
    chat.temperature = 0.0  # type: ignore[attr-defined]
    report = online_adapt(pb, [Sample(question="q", label="a")], chat, run_id="cut", progress=False)
    (step,) = report.steps
    assert step.skipped and "LengthFinishReasonError" in step.skipped[0] and pb.version == 0


def test_a_broken_run_fails_loudly_instead_of_skipping(tmp_path: Path) -> None:
    """Only unparseable output is skipped: a bug or a dead server must stop the run."""
    pb = open_pb(tmp_path)
    with pytest.raises(TypeError, match="unexpected keyword"):
        pb.learn("q", "a", "", ScriptedChat({"Reflection": [TypeError("unexpected keyword 'x'")]}))

    class APIConnectionError(Exception):  # the openai client's name for "nothing listens there"
        pass

    chat = ScriptedChat({"GeneratorOutput": [APIConnectionError("Connection refused")]})
    with pytest.raises(UserError, match="could not reach the model server.*FACTFLOW_BASE_URL"):
        online_adapt(pb, [Sample(question="q", label="a")], chat, run_id="dead", progress=False)
    assert pb.version == 0


def _arith_chat(answer_for: Callable[[str], str]) -> ScriptedChat:
    def gen(prompt: str) -> dict[str, Any]:
        return {"reasoning": "", "answer": answer_for(prompt), "bullet_ids": []}

    n = [0]

    def cur(prompt: str) -> dict[str, Any]:
        n[0] += 1
        return {"operations": [{"type": "ADD", "section": "strategies", "content": f"lesson {n[0]}"}]}

    return ScriptedChat(
        {
            "GeneratorOutput": gen,
            "Reflection": lambda p: {"diagnosis": "d", "key_insight": "k", "bullet_tags": []},
            "CuratorOutput": cur,
        }
    )


def test_online_batch_curation_and_resume(tmp_path: Path) -> None:
    pb = open_pb(tmp_path)
    samples = [Sample(question=f"q{i}", label="yes") for i in range(5)]
    chat = _arith_chat(lambda p: "yes")
    meter = UsageMeter()
    report = online_adapt(pb, samples[:3], chat, run_id="r1", batch_size=2, meter=meter, progress=False)
    assert report.accuracy == 1.0 and report.next_index == 3 and report.done
    assert [c.role for c in meter.calls].count("curator") == 2  # batches [0,1] and [2]
    assert pb.version == 2
    # resuming a finished run does nothing; a checkpoint mid-run continues from its index
    assert online_adapt(pb, samples[:3], chat, run_id="r1", progress=False).next_index == 3
    ckpt = tmp_path / "adapt" / "r2.json"
    ckpt.parent.mkdir(exist_ok=True)
    ckpt.write_text(json.dumps({"run_id": "r2", "next_index": 4}))
    report = online_adapt(pb, samples, chat, run_id="r2", progress=False)
    assert [s.index for s in report.steps] == [4] and pb.version == 3


def test_offline_keeps_best_playbook(tmp_path: Path) -> None:
    pb = open_pb(tmp_path)
    # the "model" answers right only while the playbook has fewer than 2 bullets: later epochs hurt
    chat = _arith_chat(lambda p: "yes" if p.count("[strat-") < 2 else "no")
    train = [Sample(question=f"t{i}", label="yes") for i in range(2)]
    val = [Sample(question="v", label="yes")]
    report = offline_adapt(pb, train, val, chat, epochs=2, eval_every=1, run_id="off", progress=False)
    assert report.best_score == 1.0
    assert report.val_scores[-1][2] == 0.0  # the last version was worse ...
    assert (
        len(pb.state().bullets) < 2 and pb.history()[-1].author == "offline-best"
    )  # ... so it was rolled back


def test_contains_match() -> None:
    assert contains_match("The answer is Paris.", "paris")
    assert not contains_match("Parisian", "Paris") and not contains_match("5", "")
    assert contains_match("It is 12.", "12") and not contains_match("112", "12")


def test_generator_output_schema_is_bounded() -> None:
    schema = GeneratorOutput.model_json_schema()
    assert "maxLength" not in schema["properties"]["answer"]  # costly for xgrammar; cut after decoding
    assert schema["properties"]["reasoning"]["maxLength"] == 600  # the one cap worth its compile
    assert GeneratorOutput(answer="a", bullet_ids=["strat-00001"]).bullet_ids == ["strat-00001"]
    # only id-shaped strings: the grammar enforces it, prose from an engine without one is dropped
    assert "pattern" in schema["properties"]["bullet_ids"]["items"]
    assert GeneratorOutput(answer="a", bullet_ids=["I used the first bullet", "form-00002"]).bullet_ids == [
        "form-00002"
    ]
    assert GeneratorOutput(answer="word " * 300).answer == " ".join(["word"] * 200)  # whole words
    assert GeneratorOutput(answer="TagA," * 300).answer == ",".join(["TagA"] * 200)  # whole list items
    assert len(GeneratorOutput(answer="x" * 1500).answer) == 1000  # no boundary at all: cut hard


def test_lessons_are_cut_at_sentence_boundaries_or_dropped() -> None:
    long_sentence = "Always convert " + "thousands " * 40 + "first."
    two = "Check the units. " + long_sentence
    assert cut_sentences(two, 300) == "Check the units."
    assert cut_sentences(long_sentence, 300) == ""  # one sentence longer than the cap: rejected
    ops, notes = curator_ops(
        [
            {"type": "ADD", "section": "strategies", "content": cut_sentences(long_sentence, 300)},
            {"type": "ADD", "section": "strategies", "content": cut_sentences(two, 300)},
        ]
    )
    assert [op.content for op in ops] == ["Check the units."]  # type: ignore[union-attr]
    assert "one sentence longer than the cap" in notes[0]
    op = CuratorOutput.model_validate({"operations": [{"type": "ADD", "content": two}]}).operations[0]
    assert op.content == "Check the units."
    assert Reflection.model_json_schema()["properties"]["bullet_tags"]["maxItems"] == 8


def test_cli_show_history_rollback_export_import(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from factflow.agent.cli import app

    monkeypatch.setenv("FACTFLOW_HOME", str(tmp_path))
    monkeypatch.setenv("FACTFLOW_PLAYBOOK_TOKENIZER", "tiktoken:none")  # must not be needed below
    pb = Playbook.open(tmp_path / "playbook.sqlite3", Settings(home=tmp_path), dedup_mode="off")
    pb.apply(Delta(ops=[AddOp(section="strategies", content="first lesson")]), author="me")
    pb.apply(Delta(ops=[AddOp(section="formulas", content="second lesson")]))
    pb.close()
    run = CliRunner().invoke
    out = run(app, ["playbook", "show", "--all"])
    assert out.exit_code == 0 and "strat-00001" in out.output and "form-00002" in out.output
    out = run(app, ["playbook", "history"])
    assert out.exit_code == 0 and "me" in out.output and "ADD" in out.output
    md = tmp_path / "pb.md"
    assert run(app, ["playbook", "export", "--format", "markdown", "--out", str(md)]).exit_code == 0
    assert run(app, ["playbook", "rollback", "1"]).exit_code == 0
    assert "form-00002" not in run(app, ["playbook", "show", "--all"]).output
    out = run(app, ["playbook", "import", str(md)])
    assert out.exit_code == 0 and "imported 2 bullets as version 4" in out.output
    out = run(app, ["playbook", "export", "--format", "yaml"])
    assert isinstance(out.exception, UserError)
    assert "unknown export format 'yaml': use --format json or --format markdown" in str(out.exception)
