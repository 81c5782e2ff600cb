"""Is an answer right? One normalized match for every place that grades free text.

A 135M model answers "He was born in Drammel." as often as "Drammel", so grading is a *contains*
match on normalized text: lowercase, punctuation -> space, except a dot between digits ("3.5" stays
one number, "Paris." loses its full stop), then whole words only, so '10' does not match '100'.
The ACE adaptation loop (memory/adapt.py) and the lab (evals/lab_metrics.py) both grade with it.
"""

from __future__ import annotations

import re
import string
from collections.abc import Iterable

__all__ = ["normalize", "exact_match", "contains_match"]

# Every ASCII punctuation mark except '.', plus a '.' that is not between two digits.
_PUNCT = re.compile(rf"[{re.escape(string.punctuation.replace('.', ''))}]|(?<!\d)\.|\.(?!\d)")
_SPACES = re.compile(r"\s+")


def normalize(text: str) -> str:
    """Lowercase, punctuation -> space, collapse spaces: 'Drammel.' == 'drammel', '3.5' stays."""
    return _SPACES.sub(" ", _PUNCT.sub(" ", text.lower())).strip()


def _golds(gold: str | Iterable[str]) -> list[str]:
    return [gold] if isinstance(gold, str) else list(gold)


def exact_match(prediction: str, gold: str | Iterable[str]) -> bool:
    """The whole normalized prediction equals one of the gold answers."""
    p = normalize(prediction)
    return any(p == normalize(g) for g in _golds(gold))


def contains_match(prediction: str, gold: str | Iterable[str]) -> bool:
    """A gold answer appears in the prediction as whole words; an empty gold never matches."""
    p = f" {normalize(prediction)} "
    return any(normalize(g) and f" {normalize(g)} " in p for g in _golds(gold))
