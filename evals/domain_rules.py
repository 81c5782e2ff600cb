"""A generated "domain rules" suite: fictional finance conventions learnable only from feedback.

In the spirit of ACE's FiNER (tagging) and Formula (computation) tasks, but with conventions
that exist in no pretraining corpus, so a model can only get them right by learning them:

- `tag` items (FiNER-like): a ledger line must be labelled with the house tag of its kind, e.g.
  "cash paid to suppliers" -> `NV-SUP`. The answer is the tag.
- `formula` items (Formula-like): a house quantity computed by a one-step house formula, e.g.
  "the Norvale fee is 3 florins per trade". The answer is the number.

Every rule has several surface templates and random amounts, so a train/test split tests the
rule, not memorized strings. `feedback(item, answer, mode)` plays the environment: with labels
(offline ACE) it states the right answer; without labels (online) it says accepted/rejected and
quotes the validator's note, which names the convention but not the answer to this item.
"""

from __future__ import annotations

import random
import re

from pydantic import BaseModel, ConfigDict

__all__ = [
    "Rule",
    "RuleItem",
    "RULES",
    "generate_suite",
    "split_suite",
    "score_answer",
    "feedback",
    "rulebook",
]


class Rule(BaseModel):
    """One house convention."""

    model_config = ConfigDict(extra="forbid")

    id: str
    kind: str  # "tag" | "formula"
    statement: str  # the rule as a playbook bullet would state it
    validator_note: str  # what a validator says on rejection (names the convention, not the answer)
    templates: tuple[str, ...]
    answer: str = ""  # tag rules: the tag
    factor: int = 0  # formula rules: answer = factor * x


class RuleItem(BaseModel):
    """One question of the suite."""

    model_config = ConfigDict(extra="forbid")

    id: str
    rule_id: str
    kind: str
    question: str
    answer: str


_T = "Norvale ledger line: '{line}'. Which Norvale tag applies? Answer with the tag only."
RULES: tuple[Rule, ...] = (
    Rule(
        id="sup",
        kind="tag",
        answer="NV-SUP",
        statement="Norvale tags any cash paid to suppliers or vendors as NV-SUP.",
        validator_note="Norvale convention 4: supplier and vendor payments carry the supplier tag.",
        templates=(
            _T.replace("{line}", "Paid {x} florins to {co} for raw materials"),
            _T.replace("{line}", "Settled invoice of {x} florins from vendor {co}"),
            _T.replace("{line}", "Transferred {x} florins to supplier {co}"),
        ),
    ),
    Rule(
        id="div",
        kind="tag",
        answer="NV-DVX",
        statement="Norvale tags dividends paid to shareholders as NV-DVX.",
        validator_note="Norvale convention 7: shareholder distributions carry the dividend tag.",
        templates=(
            _T.replace("{line}", "Dividend of {x} florins paid to {co} shareholders"),
            _T.replace("{line}", "Quarterly shareholder distribution: {x} florins"),
            _T.replace("{line}", "{co} board declared dividends totalling {x} florins"),
        ),
    ),
    Rule(
        id="tax",
        kind="tag",
        answer="NV-LEV",
        statement="Norvale tags taxes and government levies as NV-LEV.",
        validator_note="Norvale convention 2: payments to tax authorities carry the levy tag.",
        templates=(
            _T.replace("{line}", "Paid {x} florins of income tax to the revenue office"),
            _T.replace("{line}", "{co} remitted {x} florins in sales tax"),
            _T.replace("{line}", "Government levy of {x} florins settled"),
        ),
    ),
    Rule(
        id="wag",
        kind="tag",
        answer="NV-PAY",
        statement="Norvale tags salaries and wages paid to employees as NV-PAY.",
        validator_note="Norvale convention 9: employee compensation carries the payroll tag.",
        templates=(
            _T.replace("{line}", "Monthly salaries of {x} florins paid to {co} staff"),
            _T.replace("{line}", "Wages of {x} florins paid to warehouse employees"),
            _T.replace("{line}", "Employee bonus payout of {x} florins"),
        ),
    ),
    Rule(
        id="fee",
        kind="formula",
        factor=3,
        statement="Norvale trade fee = 3 florins per trade (fee = 3 * trades).",
        validator_note="Norvale formula F1: the trade fee is a fixed amount per trade.",
        templates=(
            "{co} made {x} trades. What is the Norvale trade fee in florins? Answer with the number only.",
            "What Norvale trade fee, in florins, is charged for {x} trades? Answer with the number only.",
        ),
    ),
    Rule(
        id="pts",
        kind="formula",
        factor=10,
        statement="Norvale points = 10 points per florin of profit (points = 10 * profit).",
        validator_note="Norvale formula F2: points are a fixed multiple of profit.",
        templates=(
            "{co} earned {x} florins of profit. How many Norvale points is that? "
            "Answer with the number only.",
            "Convert a profit of {x} florins to Norvale points. Answer with the number only.",
        ),
    ),
)
_COMPANIES = ("Acme", "Borrow & Co", "Cyrene", "Dalton", "Elbe Works", "Fjord Ltd", "Gantry", "Halvard")


def generate_suite(n: int = 48, seed: int = 0) -> list[RuleItem]:
    """`n` items cycling through the rules, with random companies, amounts and templates."""
    rng = random.Random(seed)
    items = []
    for i in range(n):
        rule = RULES[i % len(RULES)]
        x = rng.randint(2, 9) if rule.kind == "formula" else rng.randint(100, 9000)
        question = rng.choice(rule.templates).format(x=x, co=rng.choice(_COMPANIES))
        answer = rule.answer if rule.kind == "tag" else str(rule.factor * x)
        items.append(
            RuleItem(id=f"rule-{i:03d}", rule_id=rule.id, kind=rule.kind, question=question, answer=answer)
        )
    return items


def split_suite(items: list[RuleItem], train_share: float = 0.5) -> tuple[list[RuleItem], list[RuleItem]]:
    """Split within each rule, so every rule appears in both halves (given 2+ items per rule)."""
    seen: dict[str, int] = {}
    train: list[RuleItem] = []
    test: list[RuleItem] = []
    for item in items:
        k = seen.get(item.rule_id, 0)
        seen[item.rule_id] = k + 1
        # the k-th item of a rule goes to test whenever test's running count for that rule ticks up
        goes_to_test = int((k + 1) * (1 - train_share)) > int(k * (1 - train_share))
        (test if goes_to_test else train).append(item)
    return train, test


def _norm(text: str) -> str:
    return re.sub(r"[\s,._*^]", "", text).upper()


def score_answer(item: RuleItem, answer: str) -> bool:
    """Tags: the tag appears in the answer. Numbers: the first number in the answer equals it."""
    if item.kind == "tag":
        return _norm(item.answer) in _norm(answer)
    numbers = re.findall(r"-?\d+(?:\.\d+)?", answer.replace(",", ""))
    return bool(numbers) and float(numbers[0]) == float(item.answer)


def feedback(item: RuleItem, answer: str, *, with_label: bool) -> str:
    """The environment's reply: the label (offline) or accepted/rejected + validator note (online)."""
    ok = score_answer(item, answer)
    rule = next(r for r in RULES if r.id == item.rule_id)
    if with_label:
        return f"{'Correct' if ok else 'Incorrect'}. The correct answer is {item.answer}."
    if ok:
        return "Accepted by the Norvale validator."
    return f"Rejected by the Norvale validator. Validator note: {rule.validator_note}"


def rulebook(rule_ids: list[str] | None = None) -> str:
    """The rules as playbook bullets (the 'fixed playbook' that contains the answer rules)."""
    chosen = [r for r in RULES if rule_ids is None or r.id in rule_ids]
    return "\n".join(f"- {r.statement}" for r in chosen)
