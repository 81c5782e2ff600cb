"""ACE adaptation runs: no playbook vs ACE offline vs ACE online vs a Dynamic-Cheatsheet rewrite.

ACE (Agentic Context Engineering) adapts a playbook of bullets through Generator -> Reflector ->
Curator, with small delta ops merged deterministically (`Playbook.learn`). Two regimes:

- offline: several epochs over a labelled training split, then the frozen playbook is scored on
  the test split (feedback includes the label);
- online (test-time): one pass over the test split; each item is answered with the playbook as
  it stands (that answer is what is scored), then the playbook learns from the environment's
  feedback only (accepted/rejected + a note, no label).

The Dynamic Cheatsheet baseline (DC-Cumulative) keeps one free-text cheatsheet that the model
rewrites in full after every item: the "context collapse" ACE's delta updates avoid.

Suites: `domain_rules` (evals/domain_rules.py) and any BFCL single-turn category split into
train/test. Reported per method: test accuracy, adaptation tokens, adaptation and eval seconds.
"""

from __future__ import annotations

import functools
import json
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Protocol

from langchain_core.language_models import BaseChatModel
from langchain_core.messages import HumanMessage, SystemMessage
from pydantic import BaseModel, ConfigDict, Field
from tqdm import tqdm

from factflow.evals import domain_rules
from factflow.evals.bfcl_data import BfclEntry, load_category
from factflow.evals.bfcl_runner import RunConfig, run_case

__all__ = [
    "METHODS",
    "AdaptRow",
    "Suite",
    "DomainRulesSuite",
    "BfclSuite",
    "Answer",
    "run_adaptation",
    "accuracy_with_context",
]

METHODS = ("none", "ace_offline", "ace_online", "dc_rewrite")
_ANSWER_PROMPT = (
    "You answer questions about the bookkeeping conventions of the Norvale company. "
    "Reply with the answer only, on one line."
)
_DC_PROMPT = """You keep a cheatsheet of rules that help answer future questions.
Current cheatsheet:
{sheet}

Question: {question}
Your answer: {answer}
Feedback: {feedback}

Rewrite the whole cheatsheet: keep the rules that still hold, fix wrong ones, add what the
feedback teaches. At most 12 short lines, one rule per line. Reply with the cheatsheet only."""


class AdaptRow(BaseModel):
    """One line of the adaptation table."""

    model_config = ConfigDict(extra="forbid")

    suite: str
    method: str
    accuracy: float
    n_train: int
    n_test: int
    epochs: int = 0
    adapt_tokens: int = Field(default=0, description="Tokens spent by reflect/curate or cheatsheet rewrites.")
    adapt_seconds: float = 0.0
    eval_seconds: float = 0.0
    context_tokens: int = Field(
        default=0, description="Size of the final playbook / cheatsheet in tokens (approx)."
    )
    notes: str = ""


class Answer(BaseModel):
    """A scored answer to one item, with the text the reflector sees."""

    model_config = ConfigDict(extra="forbid")

    correct: bool
    text: str
    feedback_label: str
    feedback_plain: str


class Suite(Protocol):
    name: str

    def split(self) -> tuple[list[Any], list[Any]]: ...

    def question(self, item: Any) -> str: ...

    def answer(self, chat: BaseChatModel, item: Any, context: str) -> Answer: ...


class DomainRulesSuite:
    """The generated Norvale conventions; answers are one line, scored by domain_rules."""

    name = "domain_rules"

    def __init__(self, n: int = 48, seed: int = 0, train_share: float = 0.5) -> None:
        self.items = domain_rules.generate_suite(n, seed)
        self.train_share = train_share

    def split(self) -> tuple[list[Any], list[Any]]:
        train, test = domain_rules.split_suite(self.items, self.train_share)
        return list(train), list(test)

    def question(self, item: Any) -> str:
        return str(item.question)

    def answer(self, chat: BaseChatModel, item: Any, context: str) -> Answer:
        system = _ANSWER_PROMPT
        if context.strip():
            system += "\n\nPlaybook (rules learned so far):\n" + context.strip()
        reply = chat.invoke([SystemMessage(content=system), HumanMessage(content=item.question)], stop=["\n"])
        text = str(reply.content).strip()
        return Answer(
            correct=domain_rules.score_answer(item, text),
            text=text,
            feedback_label=domain_rules.feedback(item, text, with_label=True),
            feedback_plain=domain_rules.feedback(item, text, with_label=False),
        )


class BfclSuite:
    """A BFCL single-turn category split into train/test; answers are tool calls, AST-scored."""

    def __init__(self, category: str = "simple", limit: int | None = 40, train_share: float = 0.5) -> None:
        self.name = f"bfcl_{category}"
        self.entries: list[BfclEntry] = load_category(category, limit=limit)
        self.train_share = train_share

    def split(self) -> tuple[list[Any], list[Any]]:
        cut = round(len(self.entries) * self.train_share)
        return list(self.entries[:cut]), list(self.entries[cut:])

    def question(self, item: Any) -> str:
        return " ".join(str(m.get("content", "")) for m in item.question[0])

    def answer(self, chat: BaseChatModel, item: Any, context: str) -> Answer:
        result = run_case(chat, item, RunConfig(playbook_text=context))
        text = json.dumps(result.calls) if result.calls else result.answer
        verdict = "Correct." if result.valid else f"Incorrect ({result.error_type})."
        return Answer(
            correct=result.valid,
            text=text,
            feedback_label=f"{verdict} Expected call(s): {json.dumps(item.ground_truth)}",
            # Online ACE sees only what executing the check tells it: the kind of error, no label.
            feedback_plain=verdict,
        )


class _Usage:
    """Counts adaptation tokens and seconds.

    Tokens come from the engine's `usage_metadata` on messages we get back (DC rewrites) and from
    the playbook's `UsageMeter` (every reflect/curate prompt and output, counted with the chat
    model's tokenizer), because structured-output calls don't hand their messages back to us.
    """

    def __init__(self, chat: BaseChatModel) -> None:
        from factflow.memory.roles import UsageMeter

        self.chat = chat
        self.meter = UsageMeter()
        self.tokens = 0
        self.seconds = 0.0

    def run(self, fn: Callable[[], Any]) -> Any:
        start = time.perf_counter()
        seen = len(self.meter.calls)
        out = fn()
        self.seconds += time.perf_counter() - start
        for call in self.meter.calls[seen:]:
            self.tokens += self.chat.get_num_tokens(call.prompt) + self.chat.get_num_tokens(call.output)
        usage = getattr(out, "usage_metadata", None) or {}
        self.tokens += int(usage.get("total_tokens", 0) or 0)
        return out


def _approx_tokens(text: str) -> int:
    return max(0, round(len(text.split()) * 1.3))


def accuracy_with_context(
    chat: BaseChatModel,
    suite: Suite,
    items: Sequence[Any],
    context: str | Callable[[str], str],
    desc: str = "",
) -> tuple[float, float]:
    """Accuracy of `items` with a fixed context (or one rendered per question); (accuracy, seconds)."""
    start = time.perf_counter()
    correct = 0
    for item in tqdm(items, desc=desc or "eval", unit="item", leave=False):
        text = context(suite.question(item)) if callable(context) else context
        correct += suite.answer(chat, item, text).correct
    return correct / max(1, len(items)), time.perf_counter() - start


def _open_playbook(path: Path) -> Any:
    from factflow.memory.playbook import Playbook

    if path.exists():
        path.unlink()  # every run adapts from an empty playbook
    return Playbook.open(path)


def _learn(
    pb: Any,
    chat: BaseChatModel,
    suite: Suite,
    item: Any,
    ans: Answer,
    feedback: str,
    used: list[str],
    meter: Any,
) -> None:
    try:
        pb.learn(suite.question(item), ans.text, feedback, chat, used_bullet_ids=tuple(used), meter=meter)
    except Exception as exc:  # a failed reflect/curate step is skipped, as ACE does; the run goes on
        tqdm.write(f"learn step skipped for {getattr(item, 'id', '?')}: {type(exc).__name__}: {exc}"[:300])


def _ace_offline(
    chat: BaseChatModel, suite: Suite, train: list[Any], test: list[Any], out: Path, epochs: int
) -> AdaptRow:
    pb = _open_playbook(out / f"{suite.name}_ace_offline.sqlite3")
    usage = _Usage(chat)
    for epoch in range(epochs):
        for item in tqdm(train, desc=f"ace offline epoch {epoch + 1}", unit="item", leave=False):
            rendered = pb.render(suite.question(item))
            ans = suite.answer(chat, item, rendered.text)
            usage.run(
                functools.partial(
                    _learn, pb, chat, suite, item, ans, ans.feedback_label, list(rendered.bullet_ids),
                    usage.meter,
                )
            )
    accuracy, seconds = accuracy_with_context(
        chat, suite, test, lambda q: pb.render(q).text, desc="ace offline test"
    )
    return AdaptRow(
        suite=suite.name,
        method="ace_offline",
        accuracy=accuracy,
        n_train=len(train),
        n_test=len(test),
        epochs=epochs,
        adapt_tokens=usage.tokens,
        adapt_seconds=round(usage.seconds, 2),
        eval_seconds=round(seconds, 2),
        context_tokens=pb.render("").tokens,
    )


def _ace_online(chat: BaseChatModel, suite: Suite, train: list[Any], test: list[Any], out: Path) -> AdaptRow:
    pb = _open_playbook(out / f"{suite.name}_ace_online.sqlite3")
    usage = _Usage(chat)
    start = time.perf_counter()
    correct = 0
    for item in tqdm(test, desc="ace online", unit="item", leave=False):
        rendered = pb.render(suite.question(item))
        ans = suite.answer(chat, item, rendered.text)
        correct += ans.correct
        usage.run(
            functools.partial(
                _learn, pb, chat, suite, item, ans, ans.feedback_plain, list(rendered.bullet_ids), usage.meter
            )
        )
    total = time.perf_counter() - start
    return AdaptRow(
        suite=suite.name,
        method="ace_online",
        accuracy=correct / max(1, len(test)),
        n_train=0,
        n_test=len(test),
        adapt_tokens=usage.tokens,
        adapt_seconds=round(usage.seconds, 2),
        eval_seconds=round(total - usage.seconds, 2),
        context_tokens=pb.render("").tokens,
    )


def _dc_rewrite(chat: BaseChatModel, suite: Suite, test: list[Any], max_lines: int = 12) -> AdaptRow:
    sheet = ""
    usage = _Usage(chat)
    start = time.perf_counter()
    correct = 0
    for item in tqdm(test, desc="dc rewrite", unit="item", leave=False):
        ans = suite.answer(chat, item, sheet)
        correct += ans.correct
        prompt = _DC_PROMPT.format(
            sheet=sheet or "(empty)",
            question=suite.question(item),
            answer=ans.text,
            feedback=ans.feedback_plain,
        )
        reply = usage.run(functools.partial(chat.invoke, [HumanMessage(content=prompt)]))
        lines = [ln.strip() for ln in str(reply.content).splitlines() if ln.strip()]
        sheet = "\n".join(lines[:max_lines])  # the whole sheet is replaced: DC's full rewrite
    total = time.perf_counter() - start
    return AdaptRow(
        suite=suite.name,
        method="dc_rewrite",
        accuracy=correct / max(1, len(test)),
        n_train=0,
        n_test=len(test),
        adapt_tokens=usage.tokens,
        adapt_seconds=round(usage.seconds, 2),
        eval_seconds=round(total - usage.seconds, 2),
        context_tokens=_approx_tokens(sheet),
    )


def run_adaptation(
    chat: BaseChatModel,
    suite: Suite,
    out_dir: Path,
    *,
    methods: Sequence[str] = METHODS,
    epochs: int = 2,
    fixed_context: str | None = None,
) -> list[AdaptRow]:
    """Run the chosen methods on one suite; append rows to OUT/adapt_results.jsonl and return them.

    `fixed_context` adds a `fixed` row: the test split scored with that context (e.g. the true
    rulebook), an upper reference that shows the harness credits a good playbook.
    """
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        from factflow.errors import UserError

        raise UserError(f"unknown adaptation method(s) {unknown}: use {', '.join(METHODS)}")
    out_dir.mkdir(parents=True, exist_ok=True)
    train, test = suite.split()
    rows: list[AdaptRow] = []
    for method in methods:
        if method == "none":
            accuracy, seconds = accuracy_with_context(chat, suite, test, "", desc="no playbook")
            row = AdaptRow(
                suite=suite.name,
                method="none",
                accuracy=accuracy,
                n_train=0,
                n_test=len(test),
                eval_seconds=round(seconds, 2),
            )
        elif method == "ace_offline":
            row = _ace_offline(chat, suite, train, test, out_dir, epochs)
        elif method == "ace_online":
            row = _ace_online(chat, suite, train, test, out_dir)
        else:
            row = _dc_rewrite(chat, suite, test)
        rows.append(row)
        _append(out_dir, row)  # written per method, so a long run leaves its finished rows behind
    if fixed_context is not None:
        accuracy, seconds = accuracy_with_context(chat, suite, test, fixed_context, desc="fixed playbook")
        rows.append(
            AdaptRow(
                suite=suite.name,
                method="fixed",
                accuracy=accuracy,
                n_train=0,
                n_test=len(test),
                eval_seconds=round(seconds, 2),
                context_tokens=_approx_tokens(fixed_context),
                notes="the true rules as a fixed playbook (reference)",
            )
        )
        _append(out_dir, rows[-1])
    return rows


def _append(out_dir: Path, row: AdaptRow) -> None:
    with (out_dir / "adapt_results.jsonl").open("a", encoding="utf-8") as fh:
        fh.write(row.model_dump_json() + "\n")
