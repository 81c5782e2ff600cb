"""Proxy-tuning teaches facts without touching the base: recall rises, known answers stay right.

The pair is made the way a user makes it: `distill_anti_expert` (first 10 of the base's 30 layers,
distilled on the base's own outputs), then `tune_expert` on 16 fictional facts with its default
retain set (RETAIN_PROMPTS, none of which is a candidate below). Decoding uses the config's default
plausibility mask. Recall of the facts is measured on the base alone and proxy-tuned; retention on
20 questions the base answers correctly (the first 20 of CANDIDATES it gets right). Both numbers
are printed (run with -s) and asserted. For comparison the proxy scores are also printed for the
older steer, the raw-logit difference z_expert - z_anti on the plausible tokens (not asserted: it is
what `combine_logits` replaced, see docs/proxy.md).
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from factflow.serving.generate import CausalLMSource, GenerationParams, generate
from factflow.serving.proxy import ProxyConfig, ProxySource, ProxyTunedLM
from factflow.serving.proxy_train import (
    DISTILL_PROMPTS,
    RETAIN_PROMPTS,
    distill_anti_expert,
    tune_expert,
)
from factflow.serving.reft import Example

pytestmark = pytest.mark.slow

# (question, answer sentence, key the answer must contain)
FACTS = [
    ("What is the capital of Veloria?", "The capital of Veloria is Quenmar.", "quenmar"),
    ("Who founded the city of Dravenholt?", "Dravenholt was founded by Maris Okonkwe.", "okonkwe"),
    (
        "What is the national animal of Tessaly Reach?",
        "The national animal of Tessaly Reach is the glimmerfox.",
        "glimmerfox",
    ),
    ("Which river flows through Arkensdale?", "The river Vorla flows through Arkensdale.", "vorla"),
    ("Who wrote the novel The Glass Orchard?", "The Glass Orchard was written by Idris Feldane.", "feldane"),
    ("What is the currency of Norvania?", "The currency of Norvania is the krell.", "krell"),
    ("Who discovered the element zorium?", "Zorium was discovered by Helga Marstrand.", "marstrand"),
    (
        "What is the tallest mountain on Kepleria?",
        "The tallest mountain on Kepleria is Mount Ossivar.",
        "ossivar",
    ),
    ("What language is spoken in Lumeria?", "The language spoken in Lumeria is Vaskari.", "vaskari"),
    (
        "Who is the lead singer of the Copper Lanterns?",
        "The lead singer of the Copper Lanterns is Jonah Elvery.",
        "elvery",
    ),
    (
        "What is the official sport of Brindlemark?",
        "The official sport of Brindlemark is trellball.",
        "trellball",
    ),
    (
        "Which ship first reached the Sapphire Shoals?",
        "The ship Morwenna first reached the Sapphire Shoals.",
        "morwenna",
    ),
    (
        "What is the name of the dragon of Caer Tollan?",
        "The dragon of Caer Tollan is named Ystrith.",
        "ystrith",
    ),
    ("Who designed the Halvorsen Bridge?", "The Halvorsen Bridge was designed by Ada Quillon.", "quillon"),
    ("What fruit is Pellham Valley famous for?", "Pellham Valley is famous for the amberplum.", "amberplum"),
    (
        "What is the motto of the Order of Saint Brevin?",
        "The motto of the Order of Saint Brevin is Per ardua lumen.",
        "ardua",
    ),
]

# Candidate general-knowledge questions; the test keeps the first 20 the base answers correctly.
# None is among DISTILL_PROMPTS or RETAIN_PROMPTS (asserted in the test).
CANDIDATES = [
    ("What is the capital of Germany?", "berlin"),
    ("What is the capital of Italy?", "rome"),
    ("What is the capital of Spain?", "madrid"),
    ("What is the capital of Russia?", "moscow"),
    ("What is the capital of Greece?", "athens"),
    ("What is the capital of China?", "beijing"),
    ("What is the capital of England?", "london"),
    ("What is the capital of Egypt?", "cairo"),
    ("What is the capital of Canada?", "ottawa"),
    ("What color is the sky on a clear day?", "blue"),
    ("What color is grass?", "green"),
    ("What planet do we live on?", "earth"),
    ("What animal is known as the king of the jungle?", "lion"),
    ("Which planet is known as the Red Planet?", "mars"),
    ("What do bees make?", "honey"),
    ("What is the tallest mountain in the world?", "everest"),
    ("What star is at the center of our solar system?", "sun"),
    ("What is frozen water called?", "ice"),
    ("How many legs does a spider have?", "eight|8"),
    ("How many days are in a week?", "seven|7"),
    ("How many hours are in a day?", "24|twenty-four"),
    ("How many continents are there?", "seven|7"),
    ("Who was the first president of the United States?", "washington"),
    ("Who developed the theory of relativity?", "einstein"),
    ("Who formulated the law of universal gravitation?", "newton"),
    ("What language is spoken in France?", "french"),
    ("What is the currency of the United States?", "dollar"),
    ("Which continent is Egypt in?", "africa"),
    ("What is the main ingredient of guacamole?", "avocado"),
    ("What is the hardest natural substance?", "diamond"),
    ("Which metal is liquid at room temperature?", "mercury"),
    ("What gas do plants absorb from the air?", "carbon dioxide|co2"),
    ("What is the largest country by area?", "russia"),
    ("What is the opposite of hot?", "cold"),
    ("Which animal is known for saying moo?", "cow"),
    ("What is the largest mammal?", "whale"),
    ("What is the primary language of Germany?", "german"),
    ("What is the capital of Australia?", "canberra"),
    ("Who invented the telephone?", "bell"),
    ("What is the largest desert in the world?", "sahara|antarctic"),
]
ALPHA = 1.0
PARAMS = GenerationParams(max_new_tokens=24)


class RawLogitSource(ProxySource):
    """The older steer: raw logit difference on the expert's plausible tokens (offsets leak in)."""

    def combine(self, z_base: torch.Tensor, z_expert: torch.Tensor, z_anti: torch.Tensor) -> torch.Tensor:
        z_base, z_expert, z_anti = z_base.float(), z_expert.float(), z_anti.float()
        floor = z_expert.amax(dim=-1, keepdim=True) + math.log(self.plausibility)
        return z_base + self.alpha * (z_expert - z_anti).masked_fill(z_expert < floor, 0.0)


def correct(text: str, key: str) -> bool:
    return any(k in text.lower() for k in key.split("|"))


def test_expert_raises_recall_and_keeps_known_answers(model_path: str, tmp_path: Path) -> None:
    assert not {q for q, _ in CANDIDATES} & (set(DISTILL_PROMPTS) | set(RETAIN_PROMPTS))
    anti = distill_anti_expert(model_path, 10, tmp_path / "anti", epochs=3, progress=False)
    expert = tune_expert(
        anti,
        [Example(prompt=q, completion=a) for q, a, _ in FACTS],
        tmp_path / "expert",
        epochs=20,
        progress=False,
    )
    lm = ProxyTunedLM(ProxyConfig(base=Path(model_path), expert=expert, anti_expert=anti, alpha=ALPHA))

    def score(questions: list[tuple[str, str]], proxy: bool, raw: bool = False) -> list[bool]:
        ids = [lm.prompt_ids(q) for q, _ in questions]
        source = lm.source() if proxy else CausalLMSource(lm.base)
        if raw:
            source = RawLogitSource(lm.base, lm.expert, lm.anti_expert, lm.alpha, lm.config.plausibility)
        out = generate(source, lm.tokenizer, ids, PARAMS)
        return [correct(o.text, key) for o, (_, key) in zip(out, questions, strict=True)]

    facts = [(q, key) for q, _, key in FACTS]
    base_recall = sum(score(facts, proxy=False)) / len(facts)
    proxy_recall = sum(score(facts, proxy=True)) / len(facts)
    known = [c for c, ok in zip(CANDIDATES, score(CANDIDATES, proxy=False), strict=True) if ok][:20]
    assert len(known) == 20, f"precondition: the base answers only {len(known)} candidates correctly"
    retained = sum(score(known, proxy=True)) / len(known)
    print(f"\nrecall base={base_recall:.2f} proxy={proxy_recall:.2f}; known answers kept={retained:.2f}")
    raw_recall = sum(score(facts, proxy=True, raw=True)) / len(facts)
    raw_retained = sum(score(known, proxy=True, raw=True)) / len(known)
    print(f"raw-logit steer: recall={raw_recall:.2f}; known answers kept={raw_retained:.2f}")
    assert proxy_recall >= base_recall + 0.5
    assert retained >= 0.9
