"""End to end with the real SmolLM2-135M on both engines: a short online adaptation run on a toy
labelled task (with reflection rounds) gives schema-valid reflections, at least one applied
Curator delta, tags only on bullets the answers cited, and a playbook that renders under budget.

The transformers run is the one real path in the fast set; the vLLM run is marked slow + vllm.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from factflow.memory.adapt import Sample, online_adapt
from factflow.memory.playbook import Playbook
from factflow.memory.roles import CuratorOutput, GeneratorOutput, Reflection, UsageMeter
from factflow.settings import Settings

TOY = [
    Sample(question="What is 7 + 5? Reply with the number.", label="12"),
    Sample(question="What is 9 + 4? Reply with the number.", label="13"),
]
SCHEMAS = {"generator": GeneratorOutput, "reflector": Reflection, "curator": CuratorOutput}
BUDGET = 120


def run_toy_adaptation(chat: Any, home: Path, model_path: str) -> None:
    settings = Settings(home=home, playbook_tokenizer=model_path, playbook_token_budget=BUDGET)
    pb = Playbook.open(home / "pb.sqlite3", settings, dedup_mode="off")
    meter = UsageMeter()
    # batch_size 2: one Curator call for both reflections (batch curation); 2 rounds for wrong answers
    report = online_adapt(
        pb, TOY, chat, run_id="e2e", batch_size=2, reflector_rounds=2, meter=meter, progress=False
    )

    assert len(report.steps) == 2 and report.done
    ok = [c for c in meter.calls if c.ok]
    assert {c.role for c in ok} >= {"generator", "reflector"}, [(c.role, c.output) for c in meter.calls]
    for call in ok:  # constrained decoding -> every accepted output is schema-valid JSON
        if call.role == "curator":
            ops = CuratorOutput.model_validate_json(call.output).operations
            assert len(ops) <= 3
        else:
            SCHEMAS[call.role].model_validate_json(call.output)
    # a wrong first answer is retried with its reflection (up to the 2 rounds); a role output the
    # 135M model ran past its token cap is a skipped step with its reason, never a silent zero
    assert any(step.rounds >= 1 for step in report.steps), [s.skipped for s in report.steps]
    for step in report.steps:
        assert step.rounds <= 2 and (step.rounds >= 1 or step.skipped)
        if step.correct is False and not step.corrected and not step.skipped:
            assert step.rounds == 2
    # the Curator's delta was applied, through the validator: state == replay of the op log
    history = pb.history()
    assert any(h.author == "curator" and h.n_applied > 0 for h in history), [h.reason for h in history]
    state = pb.state()
    assert pb.state_at(pb.version) == state
    for h in history:
        assert h.n_applied == len(h.ops) > 0
        # nothing was shown before this run, so no answer could cite a bullet: no tags at all
        assert all(op.type != "TAG" for op in h.ops)
    rendered = pb.render(TOY[0].question)
    assert rendered.tokens <= BUDGET
    assert all(f"[{i}] helpful=" in rendered.text for i in rendered.bullet_ids)
    # a skipped step always says why
    for step in report.steps:
        assert all(reason for reason in step.skipped)


def test_online_adaptation_transformers(hf_chat: Any, model_path: str, tmp_path: Path) -> None:
    # role calls carry their own token cap (ROLE_MAX_TOKENS), so the shared fixture serves
    run_toy_adaptation(hf_chat, tmp_path, model_path)


@pytest.mark.slow
@pytest.mark.vllm
def test_online_adaptation_vllm(vllm_server: Any, model_path: str, tmp_path: Path) -> None:
    from factflow.serving.engines import load_chat_model

    chat = load_chat_model(
        Settings(engine="vllm", base_url=vllm_server.base_url, max_new_tokens=160, temperature=0.0)  # type: ignore[attr-defined]
    )
    run_toy_adaptation(chat, tmp_path, model_path)
