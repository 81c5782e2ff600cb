"""Text utilities of the write-back gate: words, stems, sentences, anchors, claims, instructions.

Word lists are data, kept as compact literals. Function words (`STOPWORDS`) carry no content;
direction, quantity and modality words ("after", "before", "more", "fewer", "all", "some",
"will", "may", ...) are NOT stopwords: they are meaning, so a claim that uses one its source
doesn't ("after 2022" from "in 2022") is not grounded.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field

__all__ = [
    "STOPWORDS",
    "NEGATIONS",
    "Claim",
    "stem",
    "tokens",
    "split_sentences",
    "content_stems",
    "anchors",
    "is_number",
    "negated",
    "looks_like_instruction",
    "strip_instructions",
    "split_claims",
]

# Word lists as compact data: one string each, split once.
_STOP_TEXT = """a an the of in on at to for by with and or but as from that which who whom whose this these
those it its it's is are was were be been being am has have had having do does did also such than
then there their they them he him his she her we our us you your i me my into onto about while
whereas per via so very just well still yet other another same own what when where why how
located based"""
_NEG_TEXT = "not no never neither nor none nobody nothing without cannot"
STOPWORDS = frozenset(_STOP_TEXT.split())
NEGATIONS = frozenset(_NEG_TEXT.split())
_NUMBER_NAMES = (
    "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen "
    "sixteen seventeen eighteen nineteen twenty"
)
_NUMBER_WORDS = {w: str(i) for i, w in enumerate(_NUMBER_NAMES.split())}
_TOKEN = re.compile(r"\d[\d,]*(?:\.\d+)?%?|[A-Za-z][A-Za-z0-9&'\-]*")
_CITE = re.compile(r"\[([A-Za-z0-9_:.\-]+(?:\s*,\s*[A-Za-z0-9_:.\-]+)*)\]")
_ABBREV = re.compile(r"\b(?:Dr|Mr|Mrs|Ms|Prof|St|Inc|Ltd|Co|Corp|Jr|Sr|vs|etc|e\.g|i\.e|U\.S)\.$")
_INJECTION = re.compile(
    r"ignore (?:all |any |the )?(?:previous|prior|above|earlier)|disregard (?:all|any|the|previous|prior)"
    r"|\b(?:system|assistant|developer)\s*(?:prompt|message)?\s*:|new instructions?|you (?:must|should|will) "
    r"(?:now )?(?:store|save|remember|write|record|add|say|answer|output|reply|trust)"
    r"|(?:store|save|remember|record|write|add) (?:this|the following|that)\b.*\b(?:fact|memory|store)"
    r"|do not (?:verify|check)|override (?:the )?(?:gate|rules|verification)|</?(?:system|instruction)",
    re.IGNORECASE,
)


def stem(word: str) -> str:
    """A tiny suffix stripper: enough to match 'founded'/'founds'/'founding' without a dictionary."""
    w = word.lower().replace("'s", "").strip("'-")
    w = _NUMBER_WORDS.get(w, w)
    if w[:1].isdigit():
        return (
            w.replace(",", "").rstrip("%").rstrip("0").rstrip(".")
            if "." in w
            else w.replace(",", "").rstrip("%")
        )
    for suffix, repl in (("ies", "y"), ("ing", ""), ("ed", ""), ("es", ""), ("s", "")):
        if len(w) > len(suffix) + 2 and w.endswith(suffix) and not w.endswith("ss"):
            return w[: -len(suffix)] + repl
    return w


def split_sentences(text: str) -> list[str]:
    """Sentences split on . ! ? ; and newlines, not on decimals or common abbreviations."""
    out: list[str] = []
    for block in re.split(r"\n\s*\n|\n(?=\s*[-*#\d])", text):
        buf = ""
        for piece in re.split(r"(?<=[.!?;])\s+", block.strip()):
            buf = f"{buf} {piece}".strip() if buf else piece
            if _ABBREV.search(buf):
                continue
            if buf.strip():
                out.append(buf.strip())
            buf = ""
        if buf.strip():
            out.append(buf.strip())
    return [s.strip(" \t\n-*#") for s in out if s.strip(" \t\n-*#")]


def tokens(text: str) -> list[str]:
    return _TOKEN.findall(text)


def content_stems(text: str) -> set[str]:
    """Stems of words that carry content (no stopwords, no negations)."""
    return {stem(t) for t in tokens(text) if t.lower() not in STOPWORDS and t.lower() not in NEGATIONS}


def is_number(tok: str) -> bool:
    return tok[:1].isdigit() or tok.lower() in _NUMBER_WORDS


def anchors(text: str) -> list[tuple[str, str]]:
    """Ordered (kind, normalized) anchors: numbers/dates and capitalized named-entity spans."""
    out: list[tuple[str, str]] = []
    span: list[str] = []
    toks = tokens(text)

    def flush() -> None:
        while span and span[0].lower() in STOPWORDS:
            span.pop(0)
        if span:
            out.append(("entity", " ".join(t.lower() for t in span)))
        span.clear()

    for tok in toks:
        if is_number(tok):
            flush()
            out.append(("number", stem(tok)))
        elif tok[0].isupper() and tok.lower() not in NEGATIONS:
            span.append(tok)
        else:
            flush()
    flush()
    return out


def negated(text: str) -> bool:
    return any(t.lower() in NEGATIONS or t.lower().endswith("n't") for t in tokens(text))


def looks_like_instruction(text: str) -> bool:
    return bool(_INJECTION.search(text))


def strip_instructions(text: str) -> tuple[str, list[str]]:
    """(text without instruction-like sentences, the removed sentences)."""
    kept: list[str] = []
    removed: list[str] = []
    for sentence in split_sentences(text):
        (removed if looks_like_instruction(sentence) else kept).append(sentence)
    return " ".join(kept), removed


@dataclass
class Claim:
    text: str
    cited_ids: list[str] = field(default_factory=list)


def split_claims(answer: str, cited_ids: Sequence[str] = ()) -> list[Claim]:
    """Atomic claims with their citations: inline `[id]` markers win, else the answer's cited_ids.

    Sentences with fewer than two content words ("Sure!", "Here is what I found:") are dropped:
    they are never verified and never written.
    """
    claims: list[Claim] = []
    for sentence in split_sentences(answer):
        inline = [i.strip() for m in _CITE.findall(sentence) for i in m.split(",")]
        text = _CITE.sub("", sentence).strip()
        text = re.sub(r"\s+([.,;!?])", r"\1", text).strip()
        if len(content_stems(text)) < 2 or text.endswith(":"):
            continue
        claims.append(Claim(text=text, cited_ids=inline or list(cited_ids)))
    return claims
