"""The ACE adaptation loop: online (test-time) and offline (epochs with validation).

One step per sample (ACE section 3, as the reference implementation runs it):

    render the playbook -> answer (reasoning, answer, ids of the bullets used) -> judge
    -> reflect (question, reasoning, answer, bullets used, tool trajectory, feedback)
    -> while wrong and rounds remain: answer again with the reflection, judge, reflect again

Every `batch_size` samples one Curator call turns the batch's reflections into one delta (batch
curation); each reflection's tags apply only to the bullets its answer used. Deterministic code
applies the delta. The score a step records is its *first* answer (the one made before learning
from this sample), which is what online adaptation reports.

Offline: passes over a labelled training set for `epochs`, scoring a validation set every
`eval_every` steps; the best-scoring playbook version is kept (rolled back to at the end).

Both loops checkpoint to HOME/adapt/<run_id>.json after every batch, so an interrupted run
resumes where it stopped. A batch interrupted between its apply and its checkpoint runs again, but
its delta carries the batch's trace id and is applied at most once, so its tags never double.

The answer step is pluggable (`Answerer`): the default asks the `Generator` role; an eval whose
answers are tool calls plugs in its own (which then cites no bullets, so tags nothing).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field
from tqdm.auto import tqdm

from factflow.memory.answer_match import contains_match
from factflow.memory.playbook import Playbook, Reflected
from factflow.memory.roles import BulletTag, Generator, Reflection, UsageMeter

__all__ = [
    "Sample",
    "Attempt",
    "Answerer",
    "Judge",
    "StepRecord",
    "AdaptReport",
    "contains_match",
    "label_feedback",
    "generator_answerer",
    "online_adapt",
    "offline_adapt",
    "score_samples",
    "load_samples",
]

Judge = Callable[[str, str], bool]


class _M(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Sample(_M):
    question: str
    label: str | None = Field(None, description="Ground truth; None means no judge for this sample.")
    feedback: str | None = Field(None, description="Execution result or other signal, if any.")
    id: str = Field("", description="Lets a custom Answerer find its own item.")


class Attempt(_M):
    """One answer to a sample. `correct`/`feedback` are set by answerers that can check their own
    answer (e.g. an executed tool call); otherwise the loop judges `answer` against the label."""

    answer: str
    reasoning: str = ""
    bullet_ids: list[str] = Field(default_factory=list)
    trajectory: str = ""
    correct: bool | None = None
    feedback: str | None = None
    skipped: list[str] = Field(default_factory=list)


# (sample, rendered playbook text, reflection on an earlier wrong attempt or "") -> Attempt
Answerer = Callable[[Sample, str, str], Attempt]


class StepRecord(_M):
    index: int
    epoch: int = 0
    question: str
    prediction: str
    correct: bool | None
    used_bullet_ids: list[str]
    rounds: int = Field(0, description="Reflections made for this sample.")
    corrected: bool = Field(False, description="A later round's answer was right.")
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


def label_feedback(
    prediction: str, label: str | None, correct: bool | None, extra: str | None, *, reveal_label: bool = True
) -> str:
    """What the Reflector is told. With `reveal_label` the ground truth; without it only the
    verdict (ACE's "no ground truth" setting still knows right from wrong), plus `extra`."""
    parts = []
    if correct is not None:
        verdict = "correct" if correct else "incorrect"
        if reveal_label and label is not None:
            parts.append(f"The answer {prediction!r} is {verdict}; the ground-truth answer is {label!r}.")
        else:
            parts.append(f"The answer {prediction!r} was judged {verdict} (the right answer is not shown).")
    if extra:
        parts.append(extra)
    return " ".join(parts)


def generator_answerer(chat_model: Any, meter: UsageMeter | None = None) -> Answerer:
    """The default answer step: the Generator role (reasoning, answer, ids of bullets used)."""

    def answer(sample: Sample, playbook_text: str, reflection: str) -> Attempt:
        out, reason = Generator(chat_model, meter=meter).generate(sample.question, playbook_text, reflection)
        if out is None:
            return Attempt(answer="", skipped=[reason or "generator skipped"])
        return Attempt(answer=out.answer, reasoning=out.reasoning, bullet_ids=list(out.bullet_ids))

    return answer


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


class _Loop:
    """Settings shared by every step of one run."""

    def __init__(
        self,
        playbook: Playbook,
        chat_model: Any,
        *,
        judge: Judge,
        budget: int | None,
        rounds: int | None,
        reveal_label: bool,
        answer: Answerer | None,
        meter: UsageMeter | None,
    ) -> None:
        self.playbook, self.chat_model, self.judge, self.budget = playbook, chat_model, judge, budget
        self.rounds = max(1, rounds if rounds is not None else playbook.settings.reflector_rounds)
        self.reveal_label, self.meter = reveal_label, meter
        self.answer = answer or generator_answerer(chat_model, meter)

    def attempt(
        self, sample: Sample, text: str, shown: set[str], reflection: str
    ) -> tuple[Attempt, list[str]]:
        """Answer, keep only cited ids that were shown, judge when the answerer did not."""
        att = self.answer(sample, text, reflection)
        used = [i for i in dict.fromkeys(att.bullet_ids) if i in shown]
        if att.correct is None and sample.label is not None and not att.skipped:
            att.correct = self.judge(att.answer, sample.label)
        elif att.correct is None and sample.label is not None:
            att.correct = False  # no answer at all is a wrong answer
        return att, used

    def step(self, sample: Sample) -> tuple[StepRecord, Reflected | None]:
        t0 = time.perf_counter()
        rendered = self.playbook.render(sample.question, self.budget)
        shown = set(rendered.bullet_ids)
        att, used = self.attempt(sample, rendered.text, shown, "")
        first, first_used, skipped = att, used, list(att.skipped)
        tags: dict[str, BulletTag] = {}
        last: Reflection | None = None
        rounds = 0
        corrected = False
        for r in range(self.rounds):
            extra = " ".join(x for x in (att.feedback, sample.feedback) if x) or None
            feedback = label_feedback(
                att.answer, sample.label, att.correct, extra, reveal_label=self.reveal_label
            )
            reflection, reasons = self.playbook.reflect(
                sample.question,
                att.answer,
                feedback,
                self.chat_model,
                att.trajectory,
                used,
                reasoning=att.reasoning,
                meter=self.meter,
            )
            skipped += reasons
            if reflection is None:
                break
            rounds += 1
            last = reflection
            for t in reflection.bullet_tags:  # one tag per bullet per sample: the first verdict
                if t.id in used and t.id not in tags:
                    tags[t.id] = t
            if att.correct is not False or r == self.rounds - 1:
                break  # right (or unjudged) answers get one reflection, as in ACE
            note = f"{reflection.diagnosis} Key insight: {reflection.key_insight}"
            att, used = self.attempt(sample, rendered.text, shown, note)
            skipped += att.skipped
            if att.correct:
                corrected = True
                break
        record = StepRecord(
            index=0,
            question=sample.question,
            prediction=first.answer,
            correct=first.correct,
            used_bullet_ids=first_used,
            rounds=rounds,
            corrected=corrected,
            version=self.playbook.version,
            seconds=time.perf_counter() - t0,
            skipped=skipped,
        )
        if last is None:
            return record, None
        merged = last.model_copy(update={"bullet_tags": list(tags.values())})
        return record, Reflected(sample.question, merged, tuple(tags))


def _run_batches(
    loop: _Loop,
    samples: Sequence[Sample],
    report: AdaptReport,
    *,
    epoch: int,
    batch_size: int,
    progress: bool,
    on_batch: Callable[[AdaptReport], None] | None = None,
) -> None:
    playbook = loop.playbook
    bar = tqdm(
        total=len(samples), initial=report.next_index, desc=f"adapt epoch {epoch}", disable=not progress
    )
    while report.next_index < len(samples):
        batch = list(range(report.next_index, min(report.next_index + batch_size, len(samples))))
        reflections: list[Reflected] = []
        records: list[StepRecord] = []
        for k in batch:
            record, reflected = loop.step(samples[k])
            record.index, record.epoch = k, epoch
            records.append(record)
            if reflected is not None:
                reflections.append(reflected)
        if reflections:
            t0 = time.perf_counter()
            result = playbook.curate(
                reflections,
                loop.chat_model,
                trace_id=f"{report.run_id}/e{epoch}/i{batch[0]}",
                once=True,
                meter=loop.meter,
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
    reflector_rounds: int | None = None,
    reveal_label: bool = True,
    answer: Answerer | None = None,
    meter: UsageMeter | None = None,
    progress: bool = True,
) -> AdaptReport:
    """Test-time adaptation over `samples`; resumes from HOME/adapt/<run_id>.json if present.

    `reveal_label=False` is ACE's setting without ground truth: the Reflector learns only whether
    an answer was right (and any `Sample.feedback`). `reflector_rounds` defaults to the setting."""
    report = _load(playbook, run_id)
    if not report.done:
        loop = _Loop(
            playbook,
            chat_model,
            judge=judge,
            budget=budget_tokens,
            rounds=reflector_rounds,
            reveal_label=reveal_label,
            answer=answer,
            meter=meter,
        )
        _run_batches(loop, samples, report, epoch=0, batch_size=max(1, batch_size), progress=progress)
        report.done = True
        _save(playbook, report)
    return report


def score_samples(
    playbook: Playbook,
    samples: Sequence[Sample],
    chat_model: Any,
    *,
    judge: Judge = contains_match,
    budget_tokens: int | None = None,
    answer: Answerer | None = None,
    progress: bool = False,
    desc: str = "score",
) -> list[Attempt]:
    """One answer per labelled sample with the current playbook, judged (no learning)."""
    answerer = answer or generator_answerer(chat_model)
    out: list[Attempt] = []
    for s in tqdm([s for s in samples if s.label is not None], desc=desc, disable=not progress):
        rendered = playbook.render(s.question, budget_tokens)
        att = answerer(s, rendered.text, "")
        if att.correct is None:
            att.correct = bool(att.answer) and judge(att.answer, s.label or "")
        out.append(att)
    return out


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
    reflector_rounds: int | None = None,
    reveal_label: bool = True,
    answer: Answerer | None = None,
    meter: UsageMeter | None = None,
    progress: bool = True,
) -> AdaptReport:
    """Multi-epoch adaptation with validation every `eval_every` steps; keeps the best version."""
    report = _load(playbook, run_id)
    if report.done:
        return report
    loop = _Loop(
        playbook,
        chat_model,
        judge=judge,
        budget=budget_tokens,
        rounds=reflector_rounds,
        reveal_label=reveal_label,
        answer=answer,
        meter=meter,
    )

    def validate(step: int) -> None:
        hits = score_samples(
            playbook,
            val,
            chat_model,
            judge=judge,
            budget_tokens=budget_tokens,
            answer=loop.answer,
            desc="validate",
        )
        score = sum(bool(a.correct) for a in hits) / len(hits) if hits else 0.0
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
            loop,
            train,
            report,
            epoch=report.epoch,
            batch_size=max(1, batch_size),
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
    """JSONL with `question` and optional `label`/`feedback`/`id` fields."""
    return [Sample.model_validate(json.loads(line)) for line in path.read_text().splitlines() if line.strip()]
