"""ACE adaptation loops: online (test-time) and offline (multi-epoch with validation).

Online, per sample (ACE section 3):  generate with the rendered playbook -> feedback (label check,
execution result, or nothing) -> reflect; every `batch_size` samples one Curator call turns the
batch's reflections into one delta (batch curation), applied by deterministic code.

Offline: online passes over a labelled training set for `epochs`, evaluating accuracy on a
validation set every `eval_every` steps; the best-scoring playbook version is kept (rolled back to
at the end if later steps made it worse).

Both loops checkpoint to HOME/adapt/<run_id>.json after every batch, so an interrupted run resumes
where it stopped (a batch interrupted between its apply and its checkpoint runs again: at least
once, never lost).
"""

from __future__ import annotations

import json
import re
import time
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field
from tqdm.auto import tqdm

from factflow.memory.playbook import Playbook
from factflow.memory.roles import Generator, Reflection, UsageMeter

__all__ = [
    "Sample",
    "StepRecord",
    "AdaptReport",
    "contains_match",
    "label_feedback",
    "online_adapt",
    "offline_adapt",
    "playbook_accuracy",
    "load_samples",
]

Judge = Callable[[str, str], bool]


class _M(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Sample(_M):
    question: str
    label: str | None = Field(None, description="Ground truth; None means learning without labels.")
    feedback: str | None = Field(None, description="Execution result or other signal, if any.")


class StepRecord(_M):
    index: int
    epoch: int = 0
    question: str
    prediction: str
    correct: bool | None
    used_bullet_ids: list[str]
    version: int
    seconds: float
    skipped: list[str] = Field(default_factory=list)


class AdaptReport(_M):
    run_id: str
    steps: list[StepRecord] = Field(default_factory=list)
    val_scores: list[tuple[int, int, float]] = Field(default_factory=list, description="(step, version, acc)")
    best_version: int | None = None
    best_score: float | None = None
    next_index: int = 0
    epoch: int = 0
    done: bool = False

    @property
    def accuracy(self) -> float | None:
        judged = [s.correct for s in self.steps if s.correct is not None]
        return sum(judged) / len(judged) if judged else None


def _norm(text: str) -> str:
    # keep inner dots (3.5) but not sentence-final ones ("Paris.")
    words = re.sub(r"[^a-z0-9.]+", " ", text.lower()).split()
    return " ".join(w.strip(".") for w in words if w.strip("."))


def contains_match(prediction: str, label: str) -> bool:
    """Normalized label found as a whole phrase in the prediction (small models add words)."""
    p, lab = f" {_norm(prediction)} ", f" {_norm(label)} "
    return bool(lab.strip()) and lab in p


def label_feedback(prediction: str, label: str | None, correct: bool | None, extra: str | None) -> str:
    parts = []
    if label is not None:
        verdict = "correct" if correct else "incorrect"
        parts.append(f"The answer {prediction!r} is {verdict}; the ground-truth answer is {label!r}.")
    if extra:
        parts.append(extra)
    return " ".join(parts)


def _checkpoint_path(playbook: Playbook, run_id: str) -> Path:
    return playbook.settings.home / "adapt" / f"{run_id}.json"


def _load(playbook: Playbook, run_id: str) -> AdaptReport:
    path = _checkpoint_path(playbook, run_id)
    if path.exists():
        return AdaptReport.model_validate_json(path.read_text(encoding="utf-8"))
    return AdaptReport(run_id=run_id)


def _save(playbook: Playbook, report: AdaptReport) -> None:
    path = _checkpoint_path(playbook, report.run_id)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(report.model_dump_json(), encoding="utf-8")
    tmp.replace(path)  # atomic: a crash leaves the old checkpoint or the new one


def _answer(
    playbook: Playbook, sample: Sample, chat_model: Any, budget: int | None, meter: UsageMeter | None
) -> tuple[str, list[str], str, list[str]]:
    rendered = playbook.render(sample.question, budget)
    out, reason = Generator(chat_model, meter=meter).generate(sample.question, rendered.text)
    if out is None:
        return "", [], "", [reason or "generator skipped"]
    used = [i for i in out.bullet_ids if i in set(rendered.bullet_ids)]
    trajectory = f"reasoning: {out.reasoning}\nanswer: {out.answer}"
    return out.answer, used or rendered.bullet_ids[:8], trajectory, []


def _run_batches(
    playbook: Playbook,
    samples: Sequence[Sample],
    chat_model: Any,
    report: AdaptReport,
    *,
    epoch: int,
    batch_size: int,
    judge: Judge,
    budget: int | None,
    reflector_rounds: int,
    meter: UsageMeter | None,
    progress: bool,
    on_batch: Callable[[AdaptReport], None] | None = None,
) -> None:
    bar = tqdm(
        total=len(samples), initial=report.next_index, desc=f"adapt epoch {epoch}", disable=not progress
    )
    while report.next_index < len(samples):
        batch = list(range(report.next_index, min(report.next_index + batch_size, len(samples))))
        reflections: list[tuple[str, Reflection]] = []
        shown: set[str] = set()
        records: list[StepRecord] = []
        for k in batch:
            t0 = time.perf_counter()
            s = samples[k]
            prediction, used, trajectory, skipped = _answer(playbook, s, chat_model, budget, meter)
            correct = judge(prediction, s.label) if s.label is not None else None
            feedback = label_feedback(prediction, s.label, correct, s.feedback)
            reflection, reasons = playbook.reflect(
                s.question,
                prediction,
                feedback,
                chat_model,
                trajectory,
                used,
                reflector_rounds=reflector_rounds,
                meter=meter,
            )
            skipped += reasons
            if reflection is not None:
                reflections.append((s.question, reflection))
                shown.update(used)
            records.append(
                StepRecord(
                    index=k,
                    epoch=epoch,
                    question=s.question,
                    prediction=prediction,
                    correct=correct,
                    used_bullet_ids=used,
                    version=playbook.version,
                    seconds=time.perf_counter() - t0,
                    skipped=skipped,
                )
            )
        if reflections:
            t0 = time.perf_counter()
            result = playbook.curate(
                reflections, chat_model, shown_ids=shown, trace_id=uuid.uuid4().hex[:12], meter=meter
            )
            records[-1].skipped += result.skipped
            records[-1].version = result.version
            records[-1].seconds += time.perf_counter() - t0
        report.steps.extend(records)
        report.next_index = batch[-1] + 1
        bar.update(len(batch))
        if on_batch is not None:
            on_batch(report)
        _save(playbook, report)
    bar.close()


def online_adapt(
    playbook: Playbook,
    samples: Sequence[Sample],
    chat_model: Any,
    *,
    run_id: str = "online",
    batch_size: int = 1,
    judge: Judge = contains_match,
    budget_tokens: int | None = None,
    reflector_rounds: int = 1,
    meter: UsageMeter | None = None,
    progress: bool = True,
) -> AdaptReport:
    """Test-time adaptation over `samples`; resumes from HOME/adapt/<run_id>.json if present."""
    report = _load(playbook, run_id)
    if not report.done:
        _run_batches(
            playbook,
            samples,
            chat_model,
            report,
            epoch=0,
            batch_size=max(1, batch_size),
            judge=judge,
            budget=budget_tokens,
            reflector_rounds=reflector_rounds,
            meter=meter,
            progress=progress,
        )
        report.done = True
        _save(playbook, report)
    return report


def playbook_accuracy(
    playbook: Playbook,
    samples: Sequence[Sample],
    chat_model: Any,
    *,
    judge: Judge = contains_match,
    budget_tokens: int | None = None,
    progress: bool = False,
) -> float:
    """Accuracy of the Generator with the current playbook (no learning)."""
    labelled = [s for s in samples if s.label is not None]
    if not labelled:
        return 0.0
    hits = 0
    for s in tqdm(labelled, desc="validate", disable=not progress):
        prediction, _, _, _ = _answer(playbook, s, chat_model, budget_tokens, None)
        hits += judge(prediction, s.label or "")
    return hits / len(labelled)


def offline_adapt(
    playbook: Playbook,
    train: Sequence[Sample],
    val: Sequence[Sample],
    chat_model: Any,
    *,
    epochs: int = 1,
    eval_every: int = 10,
    run_id: str = "offline",
    batch_size: int = 1,
    judge: Judge = contains_match,
    budget_tokens: int | None = None,
    reflector_rounds: int = 1,
    meter: UsageMeter | None = None,
    progress: bool = True,
) -> AdaptReport:
    """Multi-epoch adaptation with validation every `eval_every` steps; keeps the best version."""
    report = _load(playbook, run_id)
    if report.done:
        return report

    def validate(step: int) -> None:
        score = playbook_accuracy(playbook, val, chat_model, judge=judge, budget_tokens=budget_tokens)
        version = playbook.version
        report.val_scores.append((step, version, score))
        if report.best_score is None or score > report.best_score:
            report.best_score, report.best_version = score, version

    if report.best_score is None:
        validate(0)
        _save(playbook, report)
    last_eval = [len(report.steps)]

    def maybe_validate(r: AdaptReport) -> None:
        if len(r.steps) - last_eval[0] >= eval_every:
            last_eval[0] = len(r.steps)
            validate(len(r.steps))

    while report.epoch < epochs:
        _run_batches(
            playbook,
            train,
            chat_model,
            report,
            epoch=report.epoch,
            batch_size=max(1, batch_size),
            judge=judge,
            budget=budget_tokens,
            reflector_rounds=reflector_rounds,
            meter=meter,
            progress=progress,
            on_batch=maybe_validate,
        )
        report.epoch += 1
        report.next_index = 0
        _save(playbook, report)
    if not report.val_scores or report.val_scores[-1][1] != playbook.version:
        validate(len(report.steps))
    if report.best_version is not None and report.best_version != playbook.version:
        playbook.rollback(report.best_version, author="offline-best")  # keep the best playbook
    report.done = True
    _save(playbook, report)
    return report


def load_samples(path: Path) -> list[Sample]:
    """JSONL with `question` and optional `label`/`feedback` fields."""
    return [Sample.model_validate(json.loads(line)) for line in path.read_text().splitlines() if line.strip()]
