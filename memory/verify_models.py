"""Model verifiers of the write-back gate: an NLI cross-encoder and an LLM judge.

Both are optional (settings `fact_nli_model`, `fact_judge_model`, or a chat model passed to
`FactStore.propose`). They are AND-ed with the deterministic grounding, except that a judge on a
capable model may accept a composition the rules cannot verify (see `judge_claim`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from factflow.errors import UserError
from factflow.memory.facts import VerifierResult

__all__ = ["NLIVerifier", "LLMJudgeVerifier", "JudgeAnswer"]


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

    def __init__(
        self,
        scorer: Callable[[str, list[str]], tuple[float, str]],
        threshold: float = 0.8,
        *,
        accepts_compositions: bool = False,
    ) -> None:
        self._scorer = scorer
        self.threshold = threshold
        # Only for a capable judge model: it may then accept a composition the grounding rules
        # cannot verify (see `judge_claim`). With the default 135M model the rules decide.
        self.accepts_compositions = accepts_compositions

    @classmethod
    def from_model_path(
        cls, path: str, threshold: float = 0.8, *, accepts_compositions: bool = False
    ) -> LLMJudgeVerifier:
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

        return cls(score, threshold, accepts_compositions=accepts_compositions)

    @classmethod
    def from_chat_model(
        cls, chat_model: Any, threshold: float = 0.8, *, accepts_compositions: bool = False
    ) -> LLMJudgeVerifier:
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

        return cls(score, threshold, accepts_compositions=accepts_compositions)

    def check(self, claim: str, sources: list[str]) -> VerifierResult:
        p, why = self._scorer(claim, sources)
        label = "entailed" if p >= self.threshold else "neutral"
        return VerifierResult(verifier=self.name, label=label, score=max(0.0, min(1.0, p)), reason=why)
