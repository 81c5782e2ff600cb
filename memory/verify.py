"""The write-back gate: an answer becomes stored facts only claim by claim, after verification.

Pipeline per answer (after "Bidirectional RAG", arXiv 2512.22199, but per claim, with "neutral"
counted as NOT grounded):

1. split the answer into atomic claims (sentences / `;` clauses), each with its citations;
2. attribution: every claim cites >= 1 fact id that was actually retrieved this turn;
3. entailment: every configured verifier must say "entailed" given the cited sources
   (deterministic grounding always; NLI cross-encoder and LLM judge when configured);
4. novelty: reject when max cosine to a stored fact >= 0.90 or the claim restates one;
5. contradiction with a stored fact: not written, flagged with the fact ids.

Sources are sanitized first: sentences that read as instructions to the agent ("ignore previous
instructions", "SYSTEM:", "store this fact") are removed from the evidence, so a poisoned
document cannot vouch for a claim.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from pydantic import BaseModel, ConfigDict, Field

from factflow.errors import UserError
from factflow.memory.facts import ClaimVerdict, VerifierResult

__all__ = [
    "Claim",
    "Verifier",
    "GroundingVerifier",
    "NLIVerifier",
    "LLMJudgeVerifier",
    "JudgeAnswer",
    "Neighbor",
    "split_claims",
    "split_sentences",
    "strip_instructions",
    "looks_like_instruction",
    "content_stems",
    "anchors",
    "find_contradictions",
    "restatement_of",
    "judge_claim",
]

# --------------------------------------------------------------------------- text utilities

_STOP = frozenset(
    [
        "a",
        "an",
        "the",
        "of",
        "in",
        "on",
        "at",
        "to",
        "for",
        "by",
        "with",
        "and",
        "or",
        "but",
        "as",
        "from",
        "that",
        "which",
        "who",
        "whom",
        "whose",
        "this",
        "these",
        "those",
        "it",
        "its",
        "it's",
        "is",
        "are",
        "was",
        "were",
        "be",
        "been",
        "being",
        "am",
        "has",
        "have",
        "had",
        "having",
        "do",
        "does",
        "did",
        "will",
        "would",
        "shall",
        "should",
        "can",
        "could",
        "may",
        "might",
        "must",
        "also",
        "both",
        "either",
        "each",
        "every",
        "all",
        "any",
        "some",
        "such",
        "than",
        "then",
        "there",
        "their",
        "they",
        "them",
        "he",
        "him",
        "his",
        "she",
        "her",
        "we",
        "our",
        "us",
        "you",
        "your",
        "i",
        "me",
        "my",
        "into",
        "onto",
        "over",
        "under",
        "about",
        "after",
        "before",
        "during",
        "while",
        "whereas",
        "since",
        "until",
        "per",
        "via",
        "so",
        "very",
        "just",
        "only",
        "well",
        "still",
        "yet",
        "more",
        "most",
        "less",
        "least",
        "much",
        "many",
        "other",
        "another",
        "same",
        "own",
        "what",
        "when",
        "where",
        "why",
        "how",
        "located",
        "based",
    ]
)
_NEG = frozenset({"not", "no", "never", "neither", "nor", "none", "nobody", "nothing", "without", "cannot"})
_NUMBER_WORDS = {
    w: str(i)
    for i, w in enumerate(
        [
            "zero",
            "one",
            "two",
            "three",
            "four",
            "five",
            "six",
            "seven",
            "eight",
            "nine",
            "ten",
            "eleven",
            "twelve",
            "thirteen",
            "fourteen",
            "fifteen",
            "sixteen",
            "seventeen",
            "eighteen",
            "nineteen",
            "twenty",
        ]
    )
}
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
    return {stem(t) for t in tokens(text) if t.lower() not in _STOP and t.lower() not in _NEG}


def _is_number(tok: str) -> bool:
    return tok[:1].isdigit() or tok.lower() in _NUMBER_WORDS


def anchors(text: str) -> list[tuple[str, str]]:
    """Ordered (kind, normalized) anchors: numbers/dates and capitalized named-entity spans."""
    out: list[tuple[str, str]] = []
    span: list[str] = []
    toks = tokens(text)

    def flush() -> None:
        while span and span[0].lower() in _STOP:
            span.pop(0)
        if span:
            out.append(("entity", " ".join(t.lower() for t in span)))
        span.clear()

    for tok in toks:
        if _is_number(tok):
            flush()
            out.append(("number", stem(tok)))
        elif tok[0].isupper() and tok.lower() not in _NEG:
            span.append(tok)
        else:
            flush()
    flush()
    return out


def _negated(text: str) -> bool:
    return any(t.lower() in _NEG or t.lower().endswith("n't") for t in tokens(text))


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


# --------------------------------------------------------------------------- verifiers


class Verifier(Protocol):
    """Says whether `claim` is entailed by `sources` (already sanitized cited fact texts)."""

    name: str

    def check(self, claim: str, sources: list[str]) -> VerifierResult: ...


class GroundingVerifier:
    """Deterministic grounding: the claim may only use what its cited sources say.

    Checks, all required for "entailed": every number/date and named-entity span of the claim
    appears in the sources; every content word (stemmed) appears in the sources; a negation
    in the claim appears in the supporting sentence (and vice versa); each anchor appears in a
    source sentence that also holds >= 1/3 of its neighbouring content words (stops gluing an
    entity from one source onto a relation from another); anchors that share a source sentence
    keep that sentence's order (stops "B founded A" from "A founded B").
    """

    name = "grounding"

    def __init__(self, min_coverage: float = 1.0, context: int = 2, min_context: float = 0.33) -> None:
        self.min_coverage = min_coverage
        self.context = context
        self.min_context = min_context

    def check(self, claim: str, sources: list[str]) -> VerifierResult:
        problems = self._problems(claim, sources)
        if not problems:
            return VerifierResult(verifier=self.name, label="entailed", score=1.0, reason="grounded")
        label = "contradicted" if any(p.startswith("contradict") for p in problems) else "neutral"
        return VerifierResult(verifier=self.name, label=label, score=0.0, reason="; ".join(problems))

    def _problems(self, claim: str, sources: list[str]) -> list[str]:
        sentences = [s for src in sources for s in split_sentences(src)]
        if not sentences:
            return ["no usable source text"]
        sent_stems = [content_stems(s) for s in sentences]
        sent_text = [" " + " ".join(t.lower() for t in tokens(s)) + " " for s in sentences]
        sent_anchor = [[a for _, a in anchors(s)] for s in sentences]
        all_stems = set().union(*sent_stems)
        problems: list[str] = []

        claim_anchors = anchors(claim)
        claim_anchor_vals = [a for _, a in claim_anchors]
        for kind, value in claim_anchors:
            found = (
                any(f" {value} " in t for t in sent_text)
                if kind == "entity"
                else any(value in a for a in sent_anchor)
            )
            if not found and kind == "entity" and " " in value:  # sentence-initial word glued on
                found = any(f" {value.split(' ', 1)[1]} " in t for t in sent_text)
            if not found:
                problems.append(f"{kind} '{value}' is not in the cited sources")

        words = content_stems(claim)
        missing = sorted(words - all_stems)
        coverage = 1.0 - len(missing) / max(1, len(words))
        if coverage < self.min_coverage:
            problems.append(f"words not in the cited sources: {', '.join(missing[:6])}")

        # The best supporting sentence decides polarity.
        best = max(range(len(sentences)), key=lambda i: len(words & sent_stems[i]))
        if _negated(claim) != _negated(sentences[best]):
            problems.append("contradicts its source: negation differs from the supporting sentence")

        toks = tokens(claim)
        positions = _anchor_positions(toks, claim_anchors)
        for (_, value), pos in zip(claim_anchors, positions, strict=True):
            ctx = _context_stems(toks, pos, self.context)
            holders = [i for i, t in enumerate(sent_text) if f" {value} " in t or value in sent_anchor[i]]
            if (
                ctx
                and holders
                and max(len(ctx & sent_stems[i]) / len(ctx) for i in holders) < self.min_context
            ):
                problems.append(f"'{value}' is attached to words no source sentence uses with it")
        for i, a in enumerate(claim_anchor_vals):
            for b in claim_anchor_vals[i + 1 :]:
                orders = [
                    (t.find(f" {a} "), t.find(f" {b} "))
                    for t in sent_text
                    if f" {a} " in t and f" {b} " in t and a != b
                ]
                if orders and all(pa > pb for pa, pb in orders):
                    problems.append(f"'{a}' and '{b}' are swapped relative to the source")
        return problems


def _anchor_positions(toks: list[str], claim_anchors: list[tuple[str, str]]) -> list[int]:
    lowered = [stem(t) if _is_number(t) else t.lower() for t in toks]
    positions, start = [], 0
    for _, value in claim_anchors:
        first = value.split(" ")[0]
        idx = next((j for j in range(start, len(lowered)) if lowered[j] == first), start)
        positions.append(idx)
        start = idx + 1
    return positions


def _context_stems(toks: list[str], pos: int, n: int) -> set[str]:
    """Up to n content words each side of position pos (skipping capitalized words and numbers)."""
    ctx: set[str] = set()
    for rng in (range(pos - 1, -1, -1), range(pos + 1, len(toks))):
        got = 0
        for j in rng:
            t = toks[j]
            if t.lower() in _STOP or t.lower() in _NEG or t[0].isupper() or _is_number(t):
                continue
            ctx.add(stem(t))
            got += 1
            if got >= n:
                break
    return ctx


class NLIVerifier:
    """NLI cross-encoder from any local HF sequence-classification folder (premise=source).

    P(entail) = max over cited sources of softmax(logits)[entailment]; "contradicted" when some
    source gives P(contradiction) >= threshold. Label names are read from config.id2label.
    """

    name = "nli"

    def __init__(self, model_dir: str, threshold: float = 0.7, device: str = "cpu") -> None:
        from pathlib import Path

        path = Path(model_dir).expanduser()
        if not (path / "config.json").is_file():
            raise UserError(
                f"no NLI model at {path}: point FACTFLOW_FACT_NLI_MODEL at a local HF "
                "sequence-classification folder (with config.json) or unset it"
            )
        from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer

        config = AutoConfig.from_pretrained(str(path))
        labels = {int(i): str(n).lower() for i, n in (config.id2label or {}).items()}
        self.entail_idx = next((i for i, n in labels.items() if n.startswith("entail")), None)
        self.contra_idx = next((i for i, n in labels.items() if n.startswith("contradict")), None)
        if self.entail_idx is None:
            raise UserError(
                f"the model at {path} has no 'entailment' label in config.id2label ({labels}): "
                "use an NLI model (labels entailment/neutral/contradiction)"
            )
        self.tokenizer = AutoTokenizer.from_pretrained(str(path))
        self.model = AutoModelForSequenceClassification.from_pretrained(str(path)).to(device).eval()
        self.threshold = threshold
        self.device = device

    def check(self, claim: str, sources: list[str]) -> VerifierResult:
        import torch

        if not sources:
            return VerifierResult(verifier=self.name, label="neutral", score=0.0, reason="no sources")
        batch = self.tokenizer(
            sources,
            [claim] * len(sources),
            return_tensors="pt",
            padding=True,
            truncation=True,
            max_length=512,
        ).to(self.device)
        with torch.no_grad():
            probs = self.model(**batch).logits.softmax(-1)  # (S, n_labels)
        p_entail = float(probs[:, self.entail_idx].max())
        p_contra = float(probs[:, self.contra_idx].max()) if self.contra_idx is not None else 0.0
        if p_contra >= self.threshold:
            return VerifierResult(
                verifier=self.name,
                label="contradicted",
                score=p_entail,
                reason=f"P(contradiction)={p_contra:.2f}",
            )
        label = "entailed" if p_entail >= self.threshold else "neutral"
        return VerifierResult(
            verifier=self.name, label=label, score=p_entail, reason=f"P(entail)={p_entail:.2f}"
        )


class JudgeAnswer(BaseModel):
    """Constrained output of the LLM judge (chat-model path)."""

    model_config = ConfigDict(extra="forbid")
    verdict: str = Field(pattern="^(supported|unsupported|contradicted)$")
    probability: float = Field(ge=0.0, le=1.0, description="How sure the judge is that it is supported.")


_JUDGE_PROMPT = (
    "Sources:\n{sources}\n\nClaim: {claim}\n\n"
    "Is the claim fully supported by the sources alone? Answer yes or no."
)


class LLMJudgeVerifier:
    """LLM judge with a probability threshold.

    Two paths: `from_model_path` scores an HF causal LM directly: the next token is constrained
    to {" yes", " no"} and P(supported) = softmax over those two logits (an exact probability);
    with a LangChain `chat_model` it uses constrained structured output (`JudgeAnswer`) and the
    judge's stated probability. Accept only when P(supported) >= threshold.
    """

    name = "llm_judge"

    def __init__(self, scorer: Callable[[str, list[str]], tuple[float, str]], threshold: float = 0.8) -> None:
        self._scorer = scorer
        self.threshold = threshold

    @classmethod
    def from_model_path(cls, path: str, threshold: float = 0.8) -> LLMJudgeVerifier:
        import torch

        from factflow.serving.hf_engine import load_hf_model

        model, tok = load_hf_model(path)
        label_ids = [tok.encode(w, add_special_tokens=False)[0] for w in ("yes", "no")]

        def score(claim: str, sources: list[str]) -> tuple[float, str]:
            prompt = _JUDGE_PROMPT.format(sources="\n".join(f"- {s}" for s in sources), claim=claim)
            text = tok.apply_chat_template(
                [{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True
            )
            ids = tok(text, return_tensors="pt").input_ids
            with torch.no_grad():
                logits = model(ids).logits[0, -1]  # (vocab,)
            p_yes = float(torch.softmax(logits[label_ids], -1)[0])
            return p_yes, f"P(yes)={p_yes:.2f}"

        return cls(score, threshold)

    @classmethod
    def from_chat_model(cls, chat_model: Any, threshold: float = 0.8) -> LLMJudgeVerifier:
        structured = chat_model.with_structured_output(JudgeAnswer)

        def score(claim: str, sources: list[str]) -> tuple[float, str]:
            prompt = _JUDGE_PROMPT.format(sources="\n".join(f"- {s}" for s in sources), claim=claim)
            prompt += (
                ' Reply as JSON: {"verdict": "supported"|"unsupported"|"contradicted", "probability": 0..1}'
            )
            try:
                out = structured.invoke(prompt)
            except Exception as exc:  # invalid output is a logged, rejected step, never a write
                return 0.0, f"judge failed: {type(exc).__name__}"
            ans = out if isinstance(out, JudgeAnswer) else JudgeAnswer.model_validate(out)
            p = ans.probability if ans.verdict == "supported" else 0.0
            return p, f"verdict={ans.verdict} p={ans.probability:.2f}"

        return cls(score, threshold)

    def check(self, claim: str, sources: list[str]) -> VerifierResult:
        p, why = self._scorer(claim, sources)
        label = "entailed" if p >= self.threshold else "neutral"
        return VerifierResult(verifier=self.name, label=label, score=max(0.0, min(1.0, p)), reason=why)


# --------------------------------------------------------------------------- novelty / contradiction


@dataclass
class Neighbor:
    """A stored fact near the claim: id, text and cosine similarity."""

    id: str
    text: str
    cosine: float


def restatement_of(claim: str, neighbors: Sequence[Neighbor]) -> str | None:
    """Id of a stored fact the claim restates: same content words (Jaccard >= 0.8), or all its
    content words inside a one-sentence fact (it adds nothing to an atomic fact)."""
    words = content_stems(claim)
    if not words:
        return None
    for n in neighbors:
        other = content_stems(n.text)
        if not other:
            continue
        if len(words & other) / len(words | other) >= 0.8:
            return n.id
        if words <= other and len(split_sentences(n.text)) <= 1:
            return n.id
    return None


def find_contradictions(claim: str, neighbors: Sequence[Neighbor]) -> list[str]:
    """Ids of stored facts with a sentence about the same thing that disagrees on a number, a
    named entity or polarity. Same thing = >= 2 shared non-anchor content words covering >= 60%
    of the claim's (one suffices when they also share an anchor)."""
    claim_anchor = anchors(claim)
    c_nums = {a for k, a in claim_anchor if k == "number"}
    c_ents = {a for k, a in claim_anchor if k == "entity"}
    anchor_words = {stem(w) for a in c_nums | c_ents for w in a.split()}
    words = content_stems(claim) - anchor_words
    out: list[str] = []
    for n in neighbors:
        for sentence in split_sentences(n.text):
            s_anchor = anchors(sentence)
            s_nums = {a for k, a in s_anchor if k == "number"}
            s_ents = {a for k, a in s_anchor if k == "entity"}
            s_words = content_stems(sentence) - {stem(w) for a in s_nums | s_ents for w in a.split()}
            shared = words & s_words
            shared_anchor = (c_nums & s_nums) or (c_ents & s_ents)
            if len(shared) < (1 if shared_anchor else 2) or len(shared) < 0.6 * len(words):
                continue
            differs = bool((c_nums - s_nums) and (s_nums - c_nums)) or bool(
                shared_anchor and (c_ents - s_ents) and (s_ents - c_ents)
            )
            if differs or (shared_anchor and _negated(claim) != _negated(sentence)):
                out.append(n.id)
                break
    return out


def judge_claim(
    claim: Claim,
    *,
    retrieved: set[str],
    sources: dict[str, str],
    neighbors: Sequence[Neighbor],
    verifiers: Sequence[Verifier],
    novelty_threshold: float = 0.90,
) -> ClaimVerdict:
    """Run attribution -> entailment -> novelty -> contradiction on one claim (pure logic).

    `sources` maps every cited id that exists to its text; `neighbors` are the nearest stored
    facts of the namespace. Every failed check adds a reason; accepted = no reasons.
    """
    v = ClaimVerdict(claim=claim.text, cited_ids=list(claim.cited_ids))
    if looks_like_instruction(claim.text):
        v.reasons.append("claim contains an instruction, not a fact")
    if not claim.cited_ids:
        v.reasons.append("attribution: the claim cites no fact")
    not_retrieved = [i for i in claim.cited_ids if i not in retrieved]
    if not_retrieved:
        v.reasons.append(f"attribution: cited ids not retrieved this turn: {', '.join(not_retrieved)}")
    v.attributed = bool(claim.cited_ids) and not not_retrieved

    evidence: list[str] = []
    for cid in claim.cited_ids:
        if cid in sources:
            clean, removed = strip_instructions(sources[cid])
            if removed:
                v.reasons.append(f"ignored {len(removed)} instruction-like sentence(s) in source {cid}")
            if clean:
                evidence.append(clean)
    if v.attributed:
        v.verifiers = [ver.check(claim.text, evidence) for ver in verifiers]
        v.supported = bool(v.verifiers) and all(r.label == "entailed" for r in v.verifiers)
        for r in v.verifiers:
            if r.label != "entailed":
                v.reasons.append(f"{r.verifier}: {r.label} ({r.reason})")
        # Instruction sentences in a source are only a problem if the claim leaned on them.
        v.reasons = [r for r in v.reasons if not r.startswith("ignored ") or not v.supported]

    v.max_cosine = max((n.cosine for n in neighbors), default=0.0)
    dup = next((n.id for n in neighbors if n.cosine >= novelty_threshold), None)
    dup = dup or restatement_of(claim.text, neighbors)
    if dup is not None:
        v.duplicate_of = dup
        v.reasons.append(f"novelty: restates stored fact {dup} (max cosine {v.max_cosine:.2f})")
    v.novel = dup is None
    v.contradicts = find_contradictions(claim.text, neighbors)
    if v.contradicts:
        v.reasons.append(f"contradiction with stored fact(s) {', '.join(v.contradicts)}")
    v.accepted = v.attributed and v.supported and v.novel and not v.contradicts and not v.reasons
    return v
