"""The ACE paper's finance tasks, FiNER and Formula, read and scored as its reference code does.

Data: the JSONL splits the ACE reference repository ships (github.com/ace-agent/ace, folder
`finance/data`, Apache-2.0), one `{"context": prompt, "target": answer}` per line:

    finer_val_batched_500_samples.jsonl, finer_test_subset_006_seed42.jsonl
    formula_train_subset_500.jsonl, formula_val_subset_300.jsonl, formula_test.jsonl

factflow does not ship them; `--data DIR` points at a folder holding them (a clone's
`finance/data`). The reference's FiNER training file is not published, so FiNER adapts on its
val file (a seeded 80/20 split gives train and val) and reports on test.

Questions, as the reference builds them: FiNER asks for the US-GAAP tag of each numeric entity in
a passage (the whole prompt is the question; the answer is a comma-separated tag list); Formula
keeps only the quoted question, drops the formula definition, and asks for a plain number.

Scoring, as the reference scores it: Formula is right when `float(answer) == float(target)`
after removing thousands separators (string equality when either is not a number); FiNER is
scored per tag: the answer's comma-separated tags are compared position by position with the
target's (padded or cut to its length), case-insensitively, and accuracy is tags right / tags.
An item counts as right for the reflection rounds only when all its tags are.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

from langchain_core.language_models import BaseChatModel

from factflow.errors import UserError
from factflow.memory.adapt import Answerer, Sample, generator_answerer
from factflow.memory.roles import UsageMeter

__all__ = [
    "DATA_HINT",
    "FILES",
    "PAPER_RESULTS",
    "FinanceTask",
    "finer_units",
    "formula_correct",
    "formula_question",
    "load_split",
]

DATA_HINT = (
    "FiNER and Formula are the ACE reference repository's data (Apache-2.0): "
    "`git clone https://github.com/ace-agent/ace` and pass `--data ace/finance/data`"
)
FILES = {
    "finer": {"train": "finer_val_batched_500_samples.jsonl", "test": "finer_test_subset_006_seed42.jsonl"},
    "formula": {
        "train": "formula_train_subset_500.jsonl",
        "val": "formula_val_subset_300.jsonl",
        "test": "formula_test.jsonl",
    },
}
# ACE paper (Zhang et al., "Agentic Context Engineering", arXiv:2510.04618, Table 2): DeepSeek-V3.1
# as Generator, Reflector and Curator, full test sets. Accuracy in %.
PAPER_RESULTS = {
    "finer": {"none": 70.7, "ace_offline": 78.3},
    "formula": {"none": 67.5, "ace_offline": 85.5},
}
_FORMULA_ASK = (
    " Reply with a plain floating point number, rounded to the nearest hundredth where needed, "
    "with units expanded (5 million is 5000000.0)."
)


def load_split(data: Path, task: str, split: str) -> list[dict[str, str]]:
    """The raw `{"context", "target"}` records of one split; a clear error when missing."""
    if task not in FILES:
        raise UserError(f"unknown finance task {task!r}: use finer or formula")
    name = FILES[task].get(split)
    if name is None:
        raise UserError(f"{task} has no {split} split (it has {', '.join(FILES[task])})")
    path = data / name
    if not path.is_file():
        raise UserError(f"{path} is missing. {DATA_HINT}")
    records = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
            records.append({"context": str(rec["context"]), "target": str(rec["target"])})
        except (json.JSONDecodeError, KeyError, TypeError) as exc:
            raise UserError(
                f"{path}:{n} is not a {{'context', 'target'}} JSON line ({type(exc).__name__}): "
                f"use the files of the ACE repository unchanged. {DATA_HINT}"
            ) from None
    return records


def formula_question(context: str) -> str:
    """The quoted question of a Formula prompt (the formula definition is dropped, as the
    reference does), with the request for a plain number."""
    if "Question: " in context and ". Answer:" in context:
        text = context.split("Question: ", 1)[1].split(". Answer:")[0].strip()
        text = text.strip('"').strip("\u201c\u201d").strip()
        return text + _FORMULA_ASK
    return context


def formula_correct(prediction: str, target: str) -> bool:
    p, t = prediction.strip().replace(",", ""), target.strip().replace(",", "")
    try:
        return float(p) == float(t)
    except ValueError:
        return p == t


def finer_units(prediction: str, target: str) -> tuple[int, int]:
    """(tags right, tags in the target), position by position."""
    label = [t.strip().lower() for t in target.split(",")]
    pred = [t.strip().lower() for t in prediction.split(",")][: len(label)]
    pred += [""] * (len(label) - len(pred))
    return sum(p == t for p, t in zip(pred, label, strict=True)), len(label)


class FinanceTask:
    """FiNER or Formula from `data`, with at most `limit_*` items per split (seeded sample)."""

    def __init__(
        self,
        task: str,
        data: Path | None,
        *,
        limit_train: int | None = None,
        limit_val: int | None = None,
        limit_test: int | None = None,
        seed: int = 0,
    ) -> None:
        if task not in FILES:
            raise UserError(f"unknown finance task {task!r}: use finer or formula")
        if data is None:
            raise UserError(f"--task {task} needs --data DIR. {DATA_HINT}")
        if not data.is_dir():
            raise UserError(f"--data {data} is not a folder. {DATA_HINT}")
        self.name, self.unit = task, ("tags" if task == "finer" else "items")
        rng = random.Random(seed)
        train = self._samples(load_split(data, task, "train"), "train")
        if task == "finer":  # no published train file: split the val file 80/20, seeded
            rng.shuffle(train)
            cut = int(len(train) * 0.8)
            train, val = train[:cut], train[cut:]
        else:
            val = self._samples(load_split(data, task, "val"), "val")
        test = self._samples(load_split(data, task, "test"), "test")
        self._splits = tuple(
            self._sample(xs, limit, rng)
            for xs, limit in ((train, limit_train), (val, limit_val), (test, limit_test))
        )
        self._train_contexts = (
            [r["context"] for r in load_split(data, task, "train")] if task == "formula" else []
        )

    def _samples(self, records: list[dict[str, str]], split: str) -> list[Sample]:
        ask = formula_question if self.name == "formula" else (lambda c: c)
        return [
            Sample(id=f"{split}-{k}", question=ask(r["context"]), label=r["target"])
            for k, r in enumerate(records)
        ]

    @staticmethod
    def _sample(samples: list[Sample], limit: int | None, rng: random.Random) -> list[Sample]:
        if limit is None or limit >= len(samples):
            return samples
        keep = sorted(rng.sample(range(len(samples)), limit))
        return [samples[k] for k in keep]

    def splits(self) -> tuple[list[Sample], list[Sample], list[Sample]]:
        train, val, test = self._splits
        return list(train), list(val), list(test)

    def judge(self, prediction: str, label: str) -> bool:
        if self.name == "formula":
            return formula_correct(prediction, label)
        right, n = finer_units(prediction, label)
        return right == n

    def units(self, prediction: str, label: str) -> tuple[int, int]:
        if self.name == "formula":
            return int(formula_correct(prediction, label)), 1
        return finer_units(prediction, label)

    def answerer(self, chat: BaseChatModel, meter: UsageMeter | None) -> Answerer:
        return generator_answerer(chat, meter)

    def fixed_playbook(self) -> list[tuple[str, str]] | None:
        """Formula: the distinct formula definitions of the training prompts (the knowledge the
        questions leave out), so the control shows what a perfect recall of them is worth.
        FiNER has no such control (pass --fixed-playbook FILE)."""
        if self.name != "formula":
            return None
        seen: dict[str, None] = {}
        for context in self._train_contexts:
            if "Formula: " in context and "Question:" in context:
                definition = context.split("Formula: ", 1)[1].split("Question:")[0].strip().rstrip(",")
                name = context.split("Use formula ", 1)[-1].split(" to answer")[0].strip()
                seen.setdefault(f"{name}: {definition}"[:1900], None)
        return [("formulas", text) for text in seen]
