"""Compositions the grounding rules can verify: knowledge entailed by combining cited facts.

A gate that accepts only restatements cannot accumulate knowledge, so when a claim is not a
restatement of one source sentence `GroundingVerifier` tries, in order:

* **comparison**: "A is longer than B", "A has more members than B", "A is 110 metres taller
  than B", "A is older than B": the value of A and of B are read from cited sentences that name
  each alone with the comparative's attribute ("long", "tall", "founded in", "N members"),
  units are normalised (1.2 kilometres = 1200 metres), and the relation (and difference) is
  computed. A computed relation that disagrees is a contradiction, not just unsupported.
* **bridge**: a cited sentence defines an entity ("Quillmar is the capital of Zorbia", "The
  capital of Zorbia is Quillmar"); a claim that uses the description ("the capital of Zorbia",
  "Zorbia's capital") is checked with the entity put in its place.
* **conjunction**: "P and Q" where P and Q are each grounded (Q borrows P's subject when it has
  none: "X makes sensors and employs 120 people").

Each path ends in the same grounding check, so a composition never introduces a word, number
or entity its sources lack. Direction and quantifier words are meaning (see `verify_text`).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

from factflow.memory.verify_text import anchors, content_stems, split_sentences, stem, tokens

__all__ = ["Composition", "compose", "compare", "active_voice", "uses_definition", "conjuncts"]

Grounded = Callable[[str], bool]

# comparative -> (attribute stems one of which the source sentence must use, dimension, sign)
_LENGTH_ATTRS = {"long", "length", "tall", "high", "height", "deep", "depth", "wide", "width"}
_COMPARATIVES: dict[str, tuple[frozenset[str], str, int]] = {
    "longer": (frozenset({"long", "length"}), "length", 1),
    "shorter": (frozenset({"long", "length", "tall", "height"}), "length", -1),
    "taller": (frozenset({"tall", "high", "height"}), "length", 1),
    "higher": (frozenset({"tall", "high", "height"}), "length", 1),
    "lower": (frozenset({"tall", "high", "height"}), "length", -1),
    "deeper": (frozenset({"deep", "depth"}), "length", 1),
    "shallower": (frozenset({"deep", "depth"}), "length", -1),
    "wider": (frozenset({"wide", "width"}), "length", 1),
    "narrower": (frozenset({"wide", "width"}), "length", -1),
    "heavier": (frozenset({"weigh", "weight"}), "mass", 1),
    "lighter": (frozenset({"weigh", "weight"}), "mass", -1),
    "older": (frozenset(), "year", -1),
    "younger": (frozenset(), "year", 1),
    "newer": (frozenset(), "year", 1),
    "earlier": (frozenset(), "year", -1),
    "later": (frozenset(), "year", 1),
    "more expensive": (frozenset({"cost", "sell", "price"}), "money", 1),
    "less expensive": (frozenset({"cost", "sell", "price"}), "money", -1),
    "cheaper": (frozenset({"cost", "sell", "price"}), "money", -1),
}
_UNITS: dict[str, tuple[str, float]] = {
    "mm": ("length", 0.001),
    "millimetre": ("length", 0.001),
    "millimeter": ("length", 0.001),
    "cm": ("length", 0.01),
    "centimetre": ("length", 0.01),
    "centimeter": ("length", 0.01),
    "m": ("length", 1.0),
    "metre": ("length", 1.0),
    "meter": ("length", 1.0),
    "km": ("length", 1000.0),
    "kilometre": ("length", 1000.0),
    "kilometer": ("length", 1000.0),
    "foot": ("length", 0.3048),
    "feet": ("length", 0.3048),
    "ft": ("length", 0.3048),
    "mile": ("length", 1609.344),
    "g": ("mass", 0.001),
    "gram": ("mass", 0.001),
    "kg": ("mass", 1.0),
    "kilogram": ("mass", 1.0),
    "tonne": ("mass", 1000.0),
    "ton": ("mass", 1000.0),
    "euro": ("money:eur", 1.0),
    "dollar": ("money:usd", 1.0),
}
# a year is a founding/opening date only right after "<verb> in" ("founded in 1850")
_DATE_VERBS = {"found", "built", "build", "open", "establish", "launch", "start", "born", "creat"}
_ADJ_CMP = re.compile(
    r"^(?P<a>.+?) (?:is|was|are|were) (?:(?P<dn>\d[\d,]*(?:\.\d+)?) (?P<du>[a-z]+) )?"
    r"(?P<adj>more expensive|less expensive|[a-z]+er) than (?P<b>.+?)\.?$"
)
_COUNT_CMP = re.compile(
    r"^(?P<a>.+?) (?P<verb>has|have|had|holds|hold|employs|employ|employed|owns|own|counts) "
    r"(?:(?P<dn>\d[\d,]*) )?(?P<q>more|fewer|less) (?P<noun>[a-z]+) than (?P<b>.+?)\.?$"
)
_PASSIVE = re.compile(
    r"^(?P<a>.+?) (?:was|were|is|are) (?P<v>[a-z]+ed) by (?P<b>[A-Z][\w'\- ]*?)(?P<tail>(?: in \d{3,4})?)\.?$"
)
_DEF_ENTITY_FIRST = re.compile(r"^(?P<e>[A-Z][\w'\- ]*?) (?:is|was) (?P<d>the [a-z][\w'\- ]+?)\.?$")
_DEF_DESC_FIRST = re.compile(r"^(?P<d>The [a-z][\w'\- ]+?) (?:is|was) (?P<e>[A-Z][\w'\- ]*?)\.?$")
_POSSESSIVE = re.compile(r"\b(?P<p>[A-Z][\w\-]*(?: [A-Z][\w\-]*)*)'s (?P<r>[a-z]+)\b")


@dataclass
class Composition:
    """How a claim follows from its sources: `entailed` False means computed to be false."""

    kind: str
    entailed: bool
    detail: str


def _number(text: str) -> float:
    return float(text.replace(",", ""))


def _unit(word: str) -> tuple[str, float] | None:
    w = word.lower()
    if w in _UNITS:
        return _UNITS[w]
    if w.endswith("es") and w[:-2] in _UNITS and w[:-2] not in {"m", "g"}:
        return _UNITS[w[:-2]]
    if w.endswith("s") and w[:-1] in _UNITS and w[:-1] not in {"m", "g"}:
        return _UNITS[w[:-1]]
    return None


def _entity_only(side: str) -> str | None:
    """The entity a comparison side names, when the side is nothing but that entity."""
    ents = [a for k, a in anchors(side) if k == "entity"]
    if len(ents) != 1:
        return None
    if content_stems(side) != {stem(w) for w in ents[0].split()}:
        return None
    return ents[0]


def _values(
    entity: str, other: str, sentences: list[str], dim: str, attrs: frozenset[str], noun: str
) -> set[tuple[str, float]]:
    """(unit kind, value) of the attribute for `entity`, from sentences naming it and not the other side."""
    out: set[tuple[str, float]] = set()
    for s in sentences:
        low = " " + " ".join(t.lower() for t in tokens(s)) + " "
        if f" {entity} " not in low or f" {other} " in low:
            continue
        toks = tokens(s)
        stems = {stem(t) for t in toks}
        for j, t in enumerate(toks):
            if not t[:1].isdigit():
                continue
            nxt = toks[j + 1] if j + 1 < len(toks) else ""
            if dim == "year":
                dated = j >= 2 and toks[j - 1].lower() == "in" and stem(toks[j - 2]) in _DATE_VERBS
                if dated and 1000 <= _number(t) <= 2100 and "." not in t:  # "founded in 1850"
                    out.add((dim, _number(t)))
            elif dim == "count":
                if nxt and stem(nxt) == stem(noun):
                    out.add((dim, _number(t)))
            else:
                unit = _unit(nxt)
                if unit is not None and unit[0].startswith(dim) and stems & attrs:
                    out.add((unit[0], _number(t) * unit[1]))
    return out


def compare(claim: str, sentences: list[str]) -> Composition | None:
    """A comparison claim checked against values computed from the sentences, or None when the
    claim is not a comparison or the sentences don't give one value for each side."""
    text = claim.strip()
    m = _ADJ_CMP.match(text)
    if m and m.group("adj").lower() in _COMPARATIVES:
        attrs, dim, sign = _COMPARATIVES[m.group("adj").lower()]
        noun = ""
        diff_unit = _unit(m.group("du")) if m.group("du") else None
        years = dim == "year" and m.group("du") in {"year", "years"}
        if m.group("dn") and not years and (diff_unit is None or not diff_unit[0].startswith(dim)):
            return None
    else:
        m = _COUNT_CMP.match(text)
        if not m:
            return None
        attrs, dim, noun = frozenset(), "count", m.group("noun")
        sign = 1 if m.group("q") == "more" else -1
        diff_unit = ("count", 1.0) if m.group("dn") else None
    a, b = _entity_only(m.group("a")), _entity_only(m.group("b"))
    if a is None or b is None or a == b:
        return None
    va, vb = _values(a, b, sentences, dim, attrs, noun), _values(b, a, sentences, dim, attrs, noun)
    if len(va) != 1 or len(vb) != 1:
        return None
    (kind_a, x), (kind_b, y) = va.pop(), vb.pop()
    if kind_a != kind_b:  # euros against dollars: no rate in the sources
        return None
    holds = (x - y) * sign > 0
    detail = f"{a} = {x:g}, {b} = {y:g} ({dim})"
    if holds and m.group("dn"):
        scale = diff_unit[1] if diff_unit and dim not in {"year", "count", "money"} else 1.0
        want = _number(m.group("dn")) * scale
        holds = abs(abs(x - y) - want) <= 1e-6 * max(1.0, want)
        detail += f", difference {abs(x - y):g} vs stated {want:g}"
    return Composition("comparison", holds, detail)


def _definitions(sentences: list[str]) -> list[tuple[str, str, str]]:
    """(description, entity, sentence) from sentences like "E is the D" / "The D is E"."""
    out: list[tuple[str, str, str]] = []
    for s in sentences:
        for pattern in (_DEF_ENTITY_FIRST, _DEF_DESC_FIRST):
            m = pattern.match(s.strip())
            if m and (" of " in m.group("d") or " in " in m.group("d")):
                out.append((m.group("d").lower(), m.group("e"), s))
                break
    return out


def uses_definition(claim: str, sources: list[str]) -> bool:
    """The claim names an entity by a description one source sentence defines, and says more
    than that definition (a restated definition is a claim about the definition itself)."""
    text = _POSSESSIVE.sub(lambda m: f"the {m.group('r')} of {m.group('p')}", claim)
    sentences = [s for src in sources for s in split_sentences(src)]
    return any(
        re.search(rf"\b{re.escape(desc)}\b", text, re.IGNORECASE)
        and not content_stems(text) <= content_stems(sentence)
        for desc, _, sentence in _definitions(sentences)
    )


def active_voice(claim: str) -> str | None:
    """ "A was founded by B [in Y]." -> "B founded A [in Y]." (None when not passive)."""
    m = _PASSIVE.match(claim.strip())
    if not m:
        return None
    a = m.group("a")
    if a.startswith("The "):
        a = "the " + a[4:]
    return f"{m.group('b')} {m.group('v')} {a}{m.group('tail')}."


def _bridged(claim: str, sentences: list[str]) -> list[tuple[str, str]]:
    """Claims with a defined description replaced by its entity: [(rewritten, note)]."""
    text = _POSSESSIVE.sub(lambda m: f"the {m.group('r')} of {m.group('p')}", claim)
    out: list[tuple[str, str]] = []
    for desc, entity, _ in _definitions(sentences):
        m = re.search(rf"\b{re.escape(desc)}\b", text, re.IGNORECASE)
        if m is None:
            continue
        idx = m.start()
        rest = (text[:idx] + " " + text[m.end() :]).lower()
        if entity.lower().removeprefix("the ") in rest:
            continue  # "Ydrin founded the capital of Petria" would read "Ydrin founded Ydrin"
        ent = "the " + entity[4:] if entity.startswith("The ") and idx > 0 else entity
        rewritten = text[:idx] + ent + text[idx + len(desc) :]
        out.append((rewritten, f"'{desc}' is {entity}"))
    return out


def conjuncts(claim: str) -> list[tuple[str, str, bool]]:
    """(left, right, borrowed) splits at each ' and ' / ', and '; a right part without its own
    subject borrows the left's ("X makes sensors and employs 120 people": "X employs 120 people")."""
    text = claim.strip().rstrip(".")
    out: list[tuple[str, str, bool]] = []
    for m in re.finditer(r",? and ", text):
        left, right = text[: m.start()].strip(), text[m.end() :].strip()
        if not left or not right:
            continue
        first = right.split(" ", 1)[0]
        borrowed = not first[:1].isupper() and first.lower() != "the"
        if borrowed:
            subject = re.match(r"^((?:The )?(?:[A-Z][\w'\-]*\s?)+)", left)
            if subject is None:
                continue
            right = f"{subject.group(1).strip()} {right}"
        right = right[0].upper() + right[1:]
        out.append((f"{left}.", f"{right}.", borrowed))
    return out


def compose(claim: str, sources: list[str], grounded: Grounded, depth: int = 0) -> Composition | None:
    """How the claim follows from the sources by one of the compositions above, or None.

    `grounded(text)` is the direct grounding check. A Composition with entailed False means a
    comparison was computed to be false (a contradiction).
    """
    sentences = [s for src in sources for s in split_sentences(src)]
    cmp = compare(claim, sentences)
    if cmp is not None:
        return cmp
    for rewritten, note in _bridged(claim, sentences):
        candidates = [rewritten, active_voice(rewritten)]
        if any(c is not None and grounded(c) for c in candidates):
            return Composition("bridge", True, f"{note}: {rewritten}")
    if depth == 0:
        for left, right, _ in conjuncts(claim):
            parts = []
            for part in (left, right):
                if grounded(part):
                    parts.append(part)
                    continue
                sub = compose(part, sources, grounded, depth + 1)
                if sub is None or not sub.entailed:
                    break
                parts.append(f"{part} ({sub.kind})")
            if len(parts) == 2:
                return Composition("conjunction", True, " + ".join(parts))
    return None
