"""The ACE learning loop's rules, with a scripted chat model (pure logic): what gets tagged, what
the Reflector and Curator see, reflection rounds, no pruning from a few tags, stale writers,
idempotent resumed batches, thread-safe rendering. Real-model runs: test_playbook_e2e.py."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any

from test_playbook_roles import ScriptedChat, WordCounter, open_pb

from factflow.memory.adapt import Sample, online_adapt
from factflow.memory.bullets import AddOp, Delta, TagOp, UpdateOp
from factflow.memory.playbook import Playbook
from factflow.settings import Settings

REFLECT_TAGS = {
    "diagnosis": "d",
    "key_insight": "Check the units.",
    "bullet_tags": [{"id": "strat-00001", "tag": "harmful"}, {"id": "strat-00002", "tag": "harmful"}],
}


def _seeded(tmp_path: Path) -> Playbook:
    pb = open_pb(tmp_path)
    pb.apply(
        Delta(
            ops=[
                AddOp(section="strategies", content="Add digit by digit."),
                AddOp(section="strategies", content="Carry the one."),
            ]
        )
    )
    return pb


def _chat(answers: list[str], cited: list[str], reflection: dict[str, Any] | None = None) -> ScriptedChat:
    return ScriptedChat(
        {
            "GeneratorOutput": [{"reasoning": "r", "answer": a, "bullet_ids": cited} for a in answers],
            "Reflection": lambda p: reflection or REFLECT_TAGS,
            "CuratorOutput": lambda p: {"operations": []},
        }
    )


def test_an_answer_that_cites_nothing_tags_nothing(tmp_path: Path) -> None:
    pb = _seeded(tmp_path)
    chat = _chat(["12"], [])
    online_adapt(pb, [Sample(question="7+5?", label="12")], chat, run_id="r", progress=False)
    bullets = pb.state().bullets
    assert bullets["strat-00001"].harmful == bullets["strat-00002"].harmful == 0
    reflector_prompt = [p for n, p in chat.prompts if n == "Reflection"][0]
    assert "[strat-0000" not in reflector_prompt  # the Reflector is shown no bullets either


def test_tags_only_for_the_bullets_the_answer_used(tmp_path: Path) -> None:
    pb = _seeded(tmp_path)
    # cites one shown bullet and one id that is not in the playbook
    chat = _chat(["12"], ["strat-00002", "strat-00077"])
    online_adapt(pb, [Sample(question="7+5?", label="12")], chat, run_id="r", progress=False)
    bullets = pb.state().bullets
    assert (bullets["strat-00001"].harmful, bullets["strat-00002"].harmful) == (0, 1)


def test_reflector_sees_question_reasoning_answer_tools_feedback_and_counters(tmp_path: Path) -> None:
    pb = _seeded(tmp_path)
    pb.apply(Delta(ops=[TagOp(id="strat-00001", tag="helpful", count=2)]))
    chat = _chat([], [])
    pb.learn(
        "What is 7+5?",
        "13",
        "incorrect; expected 12",
        chat,
        trajectory="calculator: 7+5 = 12",
        used_bullet_ids=["strat-00001"],
        reasoning="seven plus five is thirteen",
    )
    prompt = [p for n, p in chat.prompts if n == "Reflection"][0]
    for part in (
        "What is 7+5?",
        "seven plus five is thirteen",
        "13",
        "calculator: 7+5 = 12",
        "expected 12",
        "[strat-00001] helpful=2 harmful=0 :: Add digit by digit.",
    ):
        assert part in prompt, part
    assert "strat-00002" not in prompt


def test_wrong_answers_are_retried_with_the_reflection_until_right(tmp_path: Path) -> None:
    pb = _seeded(tmp_path)
    chat = _chat(["11", "13", "12", "99"], [])
    report = online_adapt(
        pb, [Sample(question="7+5?", label="12")], chat, run_id="r", reflector_rounds=3, progress=False
    )
    gen = [p for n, p in chat.prompts if n == "GeneratorOutput"]
    assert len(gen) == 3 and "EARLIER WRONG ATTEMPT" in gen[1] and "Check the units." in gen[1]
    assert [n for n, _ in chat.prompts].count("Reflection") == 2  # no reflection after the fix
    step = report.steps[0]
    assert (step.prediction, step.correct, step.rounds, step.corrected) == ("11", False, 2, True)
    # never more than N rounds, and a right first answer gets exactly one reflection
    chat = _chat(["1", "2", "3", "4"], [])
    online_adapt(
        pb, [Sample(question="q", label="12")], chat, run_id="r2", reflector_rounds=2, progress=False
    )
    assert [n for n, _ in chat.prompts].count("GeneratorOutput") == 2
    chat = _chat(["12"], [])
    online_adapt(
        pb, [Sample(question="q", label="12")], chat, run_id="r3", reflector_rounds=3, progress=False
    )
    assert [n for n, _ in chat.prompts].count("Reflection") == 1


def test_without_labels_the_reflector_learns_only_right_or_wrong(tmp_path: Path) -> None:
    pb = _seeded(tmp_path)
    chat = _chat(["11"], [])
    online_adapt(
        pb,
        [Sample(question="7+5?", label="12")],
        chat,
        run_id="r",
        reflector_rounds=1,
        reveal_label=False,
        progress=False,
    )
    prompt = [p for n, p in chat.prompts if n == "Reflection"][0]
    assert "judged incorrect" in prompt and "'12'" not in prompt


def test_curator_sees_counters_budget_and_is_told_labels_will_be_gone(tmp_path: Path) -> None:
    pb = _seeded(tmp_path)
    pb.apply(Delta(ops=[TagOp(id="strat-00002", tag="harmful")]))
    chat = _chat([], [])
    pb.learn("q", "a", "incorrect", chat, used_bullet_ids=["strat-00002"])
    prompt = [p for n, p in chat.prompts if n.startswith("CuratorOutput")][0]
    assert "[strat-00002] helpful=0 harmful=1 :: Carry the one." in prompt
    assert "2 bullets; the rendered playbook uses" in prompt and "of 1200 tokens" in prompt
    assert "will NOT be available when the playbook is used" in prompt


def test_a_few_harmful_tags_never_delete_a_bullet(tmp_path: Path) -> None:
    pb = _seeded(tmp_path)
    pb.apply(Delta(ops=[TagOp(id="strat-00001", tag="harmful", count=5)]))
    assert "strat-00001" in pb.state().bullets  # five small-model "harmful" tags are noise
    pb.apply(Delta(ops=[TagOp(id="strat-00001", tag="harmful", count=5)]))  # 10 and no helpful
    assert "strat-00001" not in pb.state().bullets
    last = pb.history()[-1]
    assert last.author == "refine" and "strat-00001 prune: harmful 10" in last.reason
    assert last.ops[0].reason.startswith("prune: harmful 10")  # type: ignore[union-attr]


def test_update_states_what_happens_to_counters(tmp_path: Path) -> None:
    pb = _seeded(tmp_path)
    pb.apply(Delta(ops=[TagOp(id="strat-00001", tag="helpful", count=3)]))
    pb.apply(Delta(ops=[UpdateOp(id="strat-00001", content="Add the digits column by column.")]))
    assert pb.state().bullets["strat-00001"].helpful == 3  # default: same lesson, counters kept
    pb.apply(Delta(ops=[UpdateOp(id="strat-00001", content="Multiply first.", counters="reset")]))
    assert pb.state().bullets["strat-00001"].helpful == 0


def test_a_stale_update_is_rejected_not_replayed_over_newer_text(tmp_path: Path) -> None:
    a = _seeded(tmp_path)
    b = Playbook.open(
        tmp_path / "pb.sqlite3", Settings(home=tmp_path), dedup_mode="off", token_counter=WordCounter()
    )
    base = b.version
    a.apply(Delta(ops=[UpdateOp(id="strat-00001", content="Newer text from a.")]))
    r = b.apply(
        Delta(
            ops=[
                UpdateOp(id="strat-00001", content="Older idea from b."),
                TagOp(id="strat-00001", tag="helpful"),
            ]
        ),
        base_version=base,
    )
    assert r.rejected[0].reason.startswith("stale: strat-00001 changed since base version")
    assert [op.type for op in r.applied] == ["TAG"]  # tags commute and still count
    assert b.state().bullets["strat-00001"].content == "Newer text from a."


def test_curate_retries_a_stale_curator_op_on_the_fresh_playbook(tmp_path: Path) -> None:
    pb = _seeded(tmp_path)
    other = Playbook.open(
        tmp_path / "pb.sqlite3", Settings(home=tmp_path), dedup_mode="off", token_counter=WordCounter()
    )
    calls = [0]

    def curator(prompt: str) -> dict[str, Any]:
        calls[0] += 1
        if calls[0] == 1:  # another writer rewrites the bullet while this Curator thinks
            other.apply(Delta(ops=[UpdateOp(id="strat-00002", content="Carry the one, always.")]))
            return {"operations": [{"type": "UPDATE", "bullet_ids": ["strat-00002"], "content": "Carry."}]}
        assert "Carry the one, always." in prompt  # the retry sees the newer text
        return {"operations": [{"type": "ADD", "section": "strategies", "content": "Write the carry down."}]}

    chat = ScriptedChat(
        {
            "Reflection": lambda p: {"diagnosis": "d", "key_insight": "k", "bullet_tags": []},
            "CuratorOutput": curator,
        }
    )
    r = pb.learn("q", "a", "", chat, used_bullet_ids=["strat-00002"])
    assert calls[0] == 2 and any("stale" in s for s in r.skipped)
    contents = {b.content for b in pb.state().bullets.values()}
    assert {"Carry the one, always.", "Write the carry down."} <= contents and "Carry." not in contents


def test_rollback_and_import_record_the_base_they_were_computed_on(tmp_path: Path) -> None:
    pb = _seeded(tmp_path)
    pb.apply(Delta(ops=[AddOp(section="other", content="Third.")]))
    exported = pb.export_json()
    r = pb.rollback(1)
    assert r.base_version == 2 and pb.history()[-1].base_version == 2
    assert set(pb.state().bullets) == {"strat-00001", "strat-00002"}
    r = pb.import_json(exported)
    assert r.base_version == 3 and "misc-00003" in pb.state().bullets
    assert pb.state_at(pb.version) == pb.state()


def test_resumed_batch_does_not_double_its_tags(tmp_path: Path) -> None:
    pb = _seeded(tmp_path)
    samples = [Sample(question="7+5?", label="12")]
    online_adapt(pb, samples, _chat(["12"], ["strat-00001"]), run_id="crash", progress=False)
    assert pb.state().bullets["strat-00001"].harmful == 1
    # the process died after the apply but before the checkpoint: the batch runs again
    (tmp_path / "adapt" / "crash.json").write_text(json.dumps({"run_id": "crash"}))
    report = online_adapt(pb, samples, _chat(["12"], ["strat-00001"]), run_id="crash", progress=False)
    assert pb.state().bullets["strat-00001"].harmful == 1
    assert any("already applied" in s for s in report.steps[0].skipped)


def test_render_is_thread_safe(tmp_path: Path) -> None:
    class OneAtATime:
        """Fails if two threads are inside count() at once (the shared cache/tokenizer race)."""

        inside = 0

        def count(self, text: str) -> int:
            OneAtATime.inside += 1
            try:
                assert OneAtATime.inside == 1, "concurrent count()"
                time.sleep(0.0005)
                return len(text.split())
            finally:
                OneAtATime.inside -= 1

    pb = Playbook.open(
        tmp_path / "pb.sqlite3", Settings(home=tmp_path), dedup_mode="off", token_counter=OneAtATime()
    )
    pb.apply(Delta(ops=[AddOp(section="strategies", content=f"Lesson {i}.") for i in range(20)]))
    errors: list[BaseException] = []

    def work(k: int) -> None:
        try:
            for i in range(10):
                pb.render(budget_tokens=40 + k)
                if k == 0:
                    pb.apply(Delta(ops=[TagOp(id=f"strat-{i + 1:05d}", tag="helpful")]))
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors[0]
