"""ACE adaptation runs: the paper's methods and controls on one task, side by side.

Every method uses the one ACE loop in `factflow.memory.adapt` (Generator with reasoning and the
ids of the bullets it used, Reflector with up to N rounds, batch Curator, deterministic merge):

- `none`: the test split answered with an empty playbook;
- `fixed`: the test split answered with a given, never-updated playbook (control);
- `ace_offline`: epochs over the training split with labels, the playbook scored on the
  validation split every `eval_every` steps and the best version kept, then frozen on test;
- `ace_online`: one pass over the test split; each item is scored on the answer made *before*
  learning from it, then the loop learns with the ground truth in the feedback;
- `ace_online_nolabel`: the same without ground truth: the Reflector learns only right/wrong
  (and any environment note), ACE's "no labels" setting;
- `dc_cumulative`: Dynamic Cheatsheet, cumulative variant: after every test item the model
  rewrites one free-text cheatsheet from the question and its own answer, with DC's own prompt
  (no labels, no line cap).

Reported per method: accuracy with a 95% Wilson interval and n (items, or tags for FiNER),
adaptation tokens (prompt + output of every role call, counted with the playbook's tokenizer)
and seconds, evaluation seconds, and the final context size.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Protocol

from langchain_core.language_models import BaseChatModel
from langchain_core.messages import HumanMessage
from pydantic import BaseModel, ConfigDict, Field
from tqdm import tqdm

from factflow.errors import UserError
from factflow.evals import domain_rules
from factflow.evals.stats import wilson_interval
from factflow.memory.adapt import (
    Answerer,
    Attempt,
    Sample,
    generator_answerer,
    offline_adapt,
    online_adapt,
    score_samples,
)
from factflow.memory.bullets import AddOp, Delta
from factflow.memory.playbook import Playbook
from factflow.memory.render import TokenCounter, get_token_counter
from factflow.memory.roles import RoleCall, UsageMeter

__all__ = [
    "METHODS",
    "AdaptRow",
    "Task",
    "DomainRulesTask",
    "BfclTask",
    "AdaptConfig",
    "dc_cumulative",
    "run_adaptation",
    "adapt_markdown",
]

METHODS = ("none", "fixed", "ace_offline", "ace_online", "ace_online_nolabel", "dc_cumulative")

# Dynamic Cheatsheet's curation step (cumulative): the model keeps one sheet of insights and
# rewrites it from each new question and its own answer; it never sees a label.
DC_PROMPT = """You maintain a CHEATSHEET: reusable insights, strategies, formulas and pitfalls
that help solve future questions of the same kind. Below are the current cheatsheet, a new
question and the answer a solver gave (which may be wrong; no correct answer is available).

CURRENT CHEATSHEET:
{sheet}

QUESTION:
{question}

SOLVER'S ANSWER AND REASONING:
{answer}

Write the complete updated cheatsheet: keep every insight that is still useful, correct or
sharpen weak ones, and add what this question teaches that will generalize. Reply with the
cheatsheet only."""


class AdaptRow(BaseModel):
    """One line of the adaptation table."""

    model_config = ConfigDict(extra="forbid")

    suite: str
    method: str
    accuracy: float
    correct: int = Field(0, description="Units right (items, or tags for FiNER).")
    n: int = Field(0, description="Units scored.")
    unit: str = "items"
    ci_low: float = 0.0
    ci_high: float = 1.0
    n_train: int = 0
    n_test: int = 0
    epochs: int = 0
    adapt_tokens: int = Field(default=0, description="Prompt + output tokens of every adaptation call.")
    adapt_seconds: float = 0.0
    eval_seconds: float = 0.0
    context_tokens: int = Field(default=0, description="Size of the final playbook / cheatsheet in tokens.")
    per_item: list[float] = Field(default_factory=list, description="Per test item score, for paired tests.")
    notes: str = ""


class Task(Protocol):
    """A benchmark the loop can adapt on."""

    name: str
    unit: str  # what accuracy counts: "items", or "tags" (FiNER scores every tag)

    def splits(self) -> tuple[list[Sample], list[Sample], list[Sample]]:
        """(train, val, test) samples."""
        ...

    def judge(self, prediction: str, label: str) -> bool:
        """The whole answer is right (what the loop's reflection rounds aim for)."""
        ...

    def units(self, prediction: str, label: str) -> tuple[int, int]:
        """(units right, units) of one answer, as the task's reference scores it."""
        ...

    def answerer(self, chat: BaseChatModel, meter: UsageMeter | None) -> Answerer:
        """How an item is answered with a playbook text (usually the Generator role)."""
        ...

    def fixed_playbook(self) -> list[tuple[str, str]] | None:
        """(section, text) bullets of the `fixed` control, or None when the task has none."""
        ...


class DomainRulesTask:
    """The generated Norvale conventions (evals/domain_rules.py). It has no validation split:
    offline ACE validates on its training items."""

    name = "domain_rules"
    unit = "items"

    def __init__(
        self, n: int = 48, seed: int = 0, train_share: float = 0.5, limit_test: int | None = None
    ) -> None:
        self.items = {i.id: i for i in domain_rules.generate_suite(n, seed)}
        self.train_share = train_share
        self.limit_test = limit_test

    @classmethod
    def with_test_items(cls, n_test: int, seed: int = 0) -> DomainRulesTask:
        """A half/half suite whose test split holds exactly `n_test` items. The suite is generated
        in whole rounds over the rules (a partial round would put a rule's only item in train and
        leave the test split short); the test split is then cut to `n_test`, still cycling rules."""
        if n_test < 1:
            raise UserError(f"--limit {n_test}: domain_rules needs at least 1 test item")
        rounds = -(-n_test // len(domain_rules.RULES))  # ceil: whole rounds of every rule per split
        return cls(n=2 * rounds * len(domain_rules.RULES), seed=seed, limit_test=n_test)

    def splits(self) -> tuple[list[Sample], list[Sample], list[Sample]]:
        train, test = domain_rules.split_suite(list(self.items.values()), self.train_share)
        test = test[: self.limit_test] if self.limit_test is not None else test

        def samples(items: Sequence[domain_rules.RuleItem]) -> list[Sample]:
            return [Sample(id=i.id, question=i.question, label=i.answer) for i in items]

        return samples(train), samples(train), samples(test)

    def judge(self, prediction: str, label: str) -> bool:
        raise NotImplementedError("domain_rules answers are judged per item by its answerer")

    def units(self, prediction: str, label: str) -> tuple[int, int]:
        raise NotImplementedError("domain_rules answers are judged per item by its answerer")

    def answerer(self, chat: BaseChatModel, meter: UsageMeter | None) -> Answerer:
        generate = generator_answerer(chat, meter)

        def answer(sample: Sample, playbook_text: str, reflection: str) -> Attempt:
            att = generate(sample, playbook_text, reflection)
            item = self.items[sample.id]
            att.correct = domain_rules.score_answer(item, att.answer)
            # the environment's reply without the label: accepted, or rejected + validator note
            att.feedback = domain_rules.feedback(item, att.answer, with_label=False)
            return att

        return answer

    def fixed_playbook(self) -> list[tuple[str, str]] | None:
        return [("domain_facts", r.statement) for r in domain_rules.RULES]


class BfclTask:
    """A BFCL single-turn category split into train/test; answers are tool calls, scored by the
    BFCL checker (the tool-call runner cites no bullets, so its reflections tag nothing)."""

    unit = "items"

    def __init__(self, category: str = "simple", limit: int | None = 40, train_share: float = 0.5) -> None:
        from factflow.evals.bfcl_data import load_category

        self.name = f"bfcl_{category}"
        self.entries = {e.id: e for e in load_category(category, limit=limit)}
        self.train_share = train_share

    def splits(self) -> tuple[list[Sample], list[Sample], list[Sample]]:
        samples = [
            Sample(
                id=e.id,
                question=" ".join(str(m.get("content", "")) for m in e.question[0]),
                label=json.dumps(e.ground_truth),
            )
            for e in self.entries.values()
        ]
        cut = round(len(samples) * self.train_share)
        return samples[:cut], samples[:cut], samples[cut:]

    def judge(self, prediction: str, label: str) -> bool:
        raise NotImplementedError("BFCL answers are judged by the BFCL checker in the answerer")

    def units(self, prediction: str, label: str) -> tuple[int, int]:
        raise NotImplementedError("BFCL answers are judged by the BFCL checker in the answerer")

    def answerer(self, chat: BaseChatModel, meter: UsageMeter | None) -> Answerer:
        from factflow.evals.bfcl_runner import RunConfig, run_case

        def answer(sample: Sample, playbook_text: str, reflection: str) -> Attempt:
            context = playbook_text + (
                f"\n\nNotes on an earlier wrong attempt: {reflection}" if reflection else ""
            )
            result = run_case(chat, self.entries[sample.id], RunConfig(playbook_text=context))
            text = json.dumps(result.calls) if result.calls else result.answer
            verdict = "Correct." if result.valid else f"Incorrect ({result.error_type})."
            return Attempt(answer=text, trajectory=text, correct=result.valid, feedback=verdict)

        return answer

    def fixed_playbook(self) -> list[tuple[str, str]] | None:
        return None


class AdaptConfig(BaseModel):
    """Knobs of one adaptation run (the CLI's options)."""

    model_config = ConfigDict(extra="forbid")

    methods: list[str] = Field(default_factory=lambda: list(METHODS))
    epochs: int = Field(1, ge=1)
    eval_every: int = Field(10, ge=1)
    batch_size: int = Field(1, ge=1)
    reflector_rounds: int | None = Field(None, ge=1, description="Default: the reflector_rounds setting.")
    fixed_playbook: Path | None = Field(None, description="Exported playbook (JSON or Markdown) for `fixed`.")


def _judge_of(task: Task) -> Callable[[str, str], bool]:
    return task.judge


class _Meter:
    """Adaptation tokens and seconds of one method."""

    def __init__(self, count: Callable[[str], int]) -> None:
        self.meter = UsageMeter()
        self.count = count

    @property
    def tokens(self) -> int:
        return sum(self.count(c.prompt) + self.count(c.output) for c in self.meter.calls)


class _ApproxCounter:
    """~4 characters per token: for a remote model whose tokenizer is not on this machine."""

    def count(self, text: str) -> int:
        return max(1, len(text) // 4)


def _token_counter(settings: Any) -> TokenCounter:
    """The playbook's tokenizer; approximate when the model is remote and has none here."""
    try:
        return get_token_counter(settings)
    except UserError:
        tqdm.write("no local tokenizer for the model: token counts are approximate (4 characters/token)")
        return _ApproxCounter()


def _fresh_playbook(path: Path, settings: Any, counter: TokenCounter) -> Playbook:
    for suffix in ("", "-wal", "-shm", ".lock"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)  # every method adapts from an empty playbook
    return Playbook.open(path, settings, dedup_mode="off", token_counter=counter)


def _row(
    task: Task, method: str, test: Sequence[Sample], attempts: Sequence[Attempt | None], **extra: Any
) -> AdaptRow:
    per_item: list[float] = []
    right = total = 0
    for sample, att in zip(test, attempts, strict=True):
        if task.unit == "items" or att is None:
            k, n = (1 if att is not None and att.correct else 0), 1
            if task.unit != "items":
                n = max(1, task.units("", sample.label or "")[1])
        else:
            k, n = task.units(att.answer, sample.label or "")
        right, total = right + k, total + n
        per_item.append(k / n)
    low, high = wilson_interval(right, total)
    return AdaptRow(
        suite=task.name,
        method=method,
        accuracy=right / total if total else 0.0,
        correct=right,
        n=total,
        unit=task.unit,
        ci_low=round(low, 4),
        ci_high=round(high, 4),
        n_test=len(test),
        per_item=per_item,
        **extra,
    )


def dc_cumulative(
    chat: BaseChatModel,
    samples: Sequence[Sample],
    answer: Answerer,
    meter: UsageMeter,
    *,
    progress: bool = True,
) -> tuple[list[Attempt], str]:
    """Dynamic Cheatsheet (cumulative): answer each sample with the sheet, then rewrite the sheet
    from the question and the answer (no label). Returns the attempts and the final sheet."""
    sheet = ""
    attempts: list[Attempt] = []
    for s in tqdm(samples, desc="dc cumulative", unit="item", disable=not progress):
        att = answer(s, sheet, "")
        attempts.append(att)
        prompt = DC_PROMPT.format(
            sheet=sheet or "(empty)",
            question=s.question,
            answer=f"{att.answer}\n(reasoning: {att.reasoning or 'none given'})",
        )
        t0 = time.perf_counter()
        reply = chat.invoke([HumanMessage(content=prompt)])
        text = reply.content if isinstance(reply.content, str) else str(reply.content)
        meter.record(RoleCall("dc_curator", prompt, text, time.perf_counter() - t0, True))
        sheet = text.strip() or sheet  # the whole sheet is replaced: DC's cumulative rewrite
    return attempts, sheet


def _load_fixed(pb: Playbook, task: Task, cfg: AdaptConfig) -> str:
    """Fill `pb` with the fixed control's bullets; returns a note (or raises when there are none)."""
    if cfg.fixed_playbook is not None:
        path = cfg.fixed_playbook
        if not path.exists():
            raise UserError(
                f"--fixed-playbook {path} does not exist: export one with `factflow playbook export`"
            )
        text = path.read_text(encoding="utf-8")
        if path.suffix == ".json":
            pb.import_json(text)
        else:
            pb.import_markdown(text)
        return f"fixed playbook from {path.name}"
    bullets = task.fixed_playbook()
    if bullets is None:
        return ""
    pb.apply(Delta(ops=[AddOp(section=s, content=c) for s, c in bullets]), author="fixed")
    return "task's fixed playbook"


def run_adaptation(
    chat: BaseChatModel,
    task: Task,
    out_dir: Path,
    cfg: AdaptConfig | None = None,
    *,
    settings: Any = None,
    progress: bool = True,
) -> list[AdaptRow]:
    """Run the chosen methods on one task; append rows to OUT/adapt_results.jsonl, return them."""
    from factflow.settings import get_settings

    cfg = cfg or AdaptConfig()
    settings = settings or get_settings()
    unknown = [m for m in cfg.methods if m not in METHODS]
    if unknown:
        raise UserError(f"unknown adaptation method(s) {unknown}: use {', '.join(METHODS)}")
    out_dir.mkdir(parents=True, exist_ok=True)
    train, val, test = task.splits()
    counter = _token_counter(settings)
    count = counter.count
    judge = _judge_of(task)
    rows: list[AdaptRow] = []
    for method in cfg.methods:
        usage = _Meter(count)
        answer = task.answerer(chat, usage.meter)
        pb = _fresh_playbook(out_dir / f"{task.name}_{method}.sqlite3", settings, counter)
        run_id = f"{task.name}-{method}-{time.time_ns()}"
        t0 = time.perf_counter()
        notes = ""
        if method in ("none", "fixed"):
            if method == "fixed":
                notes = _load_fixed(pb, task, cfg)
                if not notes:
                    tqdm.write(f"{task.name}: no fixed playbook (pass --fixed-playbook FILE); row skipped")
                    continue
            attempts = score_samples(
                pb, test, chat, judge=judge, answer=answer, progress=progress, desc=method
            )
            row = _row(
                task, method, test, attempts, eval_seconds=round(time.perf_counter() - t0, 1), notes=notes
            )
        elif method == "ace_offline":
            report = offline_adapt(
                pb,
                train,
                val,
                chat,
                epochs=cfg.epochs,
                eval_every=cfg.eval_every,
                run_id=run_id,
                batch_size=cfg.batch_size,
                judge=judge,
                reflector_rounds=cfg.reflector_rounds,
                answer=answer,
                meter=usage.meter,
                progress=progress,
            )
            adapt_s = time.perf_counter() - t0
            tokens = usage.tokens
            t1 = time.perf_counter()
            attempts = score_samples(
                pb, test, chat, judge=judge, answer=answer, progress=progress, desc="test"
            )
            row = _row(
                task,
                method,
                test,
                attempts,
                n_train=len(train),
                epochs=cfg.epochs,
                adapt_tokens=tokens,
                adapt_seconds=round(adapt_s, 1),
                eval_seconds=round(time.perf_counter() - t1, 1),
                notes=f"best val {report.best_score} at v{report.best_version}",
            )
        else:  # a stream the method adapts on while answering it: ACE online, or Dynamic Cheatsheet
            sheet = None
            if method == "dc_cumulative":
                attempts, sheet = dc_cumulative(
                    chat, test, _judged(answer, judge), usage.meter, progress=progress
                )
            else:
                report = online_adapt(
                    pb,
                    test,
                    chat,
                    run_id=run_id,
                    batch_size=cfg.batch_size,
                    judge=judge,
                    reflector_rounds=cfg.reflector_rounds,
                    reveal_label=method == "ace_online",
                    answer=answer,
                    meter=usage.meter,
                    progress=progress,
                )
                attempts = [
                    Attempt(answer=st.prediction, correct=st.correct)
                    for st in sorted(report.steps, key=lambda x: x.index)
                ]
            row = _row(
                task,
                method,
                test,
                attempts,
                adapt_tokens=usage.tokens,
                adapt_seconds=round(time.perf_counter() - t0, 1),
                context_tokens=count(sheet) if sheet else 0,
                notes="adapt seconds include answering the stream",
            )
        if method != "dc_cumulative":
            row.context_tokens = pb.render("").tokens
        pb.close()
        rows.append(row)
        _append(out_dir, row)  # written per method, so a long run leaves its finished rows behind
    return rows


def _judged(answer: Answerer, judge: Callable[[str, str], bool]) -> Answerer:
    """An answerer whose attempts carry their verdict (DC scores outside the ACE loop)."""

    def run(sample: Sample, text: str, reflection: str) -> Attempt:
        att = answer(sample, text, reflection)
        if att.correct is None and sample.label is not None:
            att.correct = bool(att.answer) and judge(att.answer, sample.label)
        return att

    return run


def _append(out_dir: Path, row: AdaptRow) -> None:
    with (out_dir / "adapt_results.jsonl").open("a", encoding="utf-8") as fh:
        fh.write(row.model_dump_json() + "\n")


def adapt_markdown(rows: Sequence[AdaptRow], title: str = "ACE adaptation") -> str:
    """The table with intervals and n; each method's difference from `none` on the same items
    (paired bootstrap) when both ran."""
    from factflow.evals.stats import paired_bootstrap

    base = {r.suite: r for r in rows if r.method == "none"}
    lines = [
        f"# {title}",
        "",
        "| task | method | accuracy [95% CI] | n | vs none (p) | adapt tokens | adapt s | eval s "
        "| context tokens |",
        "|---|---|---|---:|---|---:|---:|---:|---:|",
    ]
    for r in rows:
        diff = ""
        b = base.get(r.suite)
        if b is not None and r is not b and len(b.per_item) == len(r.per_item) and r.per_item:
            bs = paired_bootstrap(r.per_item, b.per_item)
            diff = f"{bs.mean_diff:+.3f} (p={bs.p_value:.2f})"
        lines.append(
            f"| {r.suite} | {r.method} | {r.accuracy:.3f} [{r.ci_low:.2f}, {r.ci_high:.2f}] "
            f"| {r.n} {r.unit} | {diff} | {r.adapt_tokens:,} | {r.adapt_seconds:.0f} "
            f"| {r.eval_seconds:.0f} | {r.context_tokens} |"
        )
    return "\n".join(lines) + "\n"
