"""Metrics of the knowledge-accessibility lab: recall, locality, retention and cost.

Recall metrics (efficacy, paraphrase, two-hop, locality) are accuracies of greedy answers under a
normalized *contains* match: a 135M model answers "He was born in Drammel." as often as "Drammel".

Retention compares a route to the untouched base on neutral text, token by token:

    KL(base || route) = mean_t  sum_v p_base(v | x_<t) * (log p_base(v | x_<t) - log p_route(v | x_<t))
    PPL = exp(-mean_t log p(x_t | x_<t));   ppl_ratio = PPL_route / PPL_base

(the KL direction of Houliston et al., arXiv 2508.20755: how far the route moved from the base's
predictions). Per-layer relative weight change is ||W'_l - W_l||_F / ||W_l||_F over all tensors of
decoder layer l (Liu et al., proxy-tuning, report that direct fine-tuning damage concentrates in
lower layers; this measures where *our* updates land).
"""

from __future__ import annotations

import math
import re
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import torch

from factflow.memory.answer_match import contains_match, exact_match, normalize

__all__ = [
    "TextLogprobs",
    "normalize",
    "exact_match",
    "contains_match",
    "accuracy",
    "kl_to_base",
    "perplexity",
    "ppl_ratio",
    "layer_of",
    "relative_weight_change",
    "latency_ratio",
]

_LAYER = re.compile(r"layers\.(\d+)\.")


@dataclass(frozen=True)
class TextLogprobs:
    """Next-token log-probs over one neutral text: row t predicts `targets[t]` (token t+1 of the text)."""

    logprobs: torch.Tensor  # (T-1, V) float32, log-softmax
    targets: torch.Tensor  # (T-1,) long


def accuracy(
    preds: Sequence[str], golds: Sequence[str | Iterable[str]], *, mode: str = "contains"
) -> float:
    """Share of predictions that match; NaN on an empty set (absent, not zero)."""
    if len(preds) != len(golds):
        raise ValueError(f"{len(preds)} predictions for {len(golds)} gold answers")
    if not preds:
        return math.nan
    match = contains_match if mode == "contains" else exact_match
    return sum(match(p, g) for p, g in zip(preds, golds, strict=True)) / len(preds)


def kl_to_base(base: Sequence[TextLogprobs], route: Sequence[TextLogprobs]) -> float:
    """Mean per-token KL(base || route) in nats over all texts; 0 for identical models."""
    total, count = 0.0, 0
    for b, r in zip(base, route, strict=True):
        if b.logprobs.shape != r.logprobs.shape:
            shapes = f"{tuple(b.logprobs.shape)} vs {tuple(r.logprobs.shape)}"
            raise ValueError(f"log-prob shapes differ: {shapes}")
        p = b.logprobs.exp()
        kl = (p * (b.logprobs - r.logprobs)).sum(-1)  # (T-1,)
        total += float(kl.clamp_min(0).sum())  # tiny negatives are float noise
        count += kl.numel()
    return total / max(count, 1)


def perplexity(texts: Sequence[TextLogprobs]) -> float:
    nll, count = 0.0, 0
    for t in texts:
        picked = t.logprobs.gather(-1, t.targets.unsqueeze(-1)).squeeze(-1)
        nll -= float(picked.sum())
        count += picked.numel()
    return math.exp(nll / max(count, 1))


def ppl_ratio(base: Sequence[TextLogprobs], route: Sequence[TextLogprobs]) -> float:
    """PPL_route / PPL_base on the same texts: 1.0 = nothing lost."""
    return perplexity(route) / perplexity(base)


def layer_of(name: str) -> str:
    """'model.layers.12.mlp.up_proj.weight' -> '12'; embeddings, final norm, head -> 'other'."""
    m = _LAYER.search(name)
    return m.group(1) if m else "other"


def relative_weight_change(
    before: Mapping[str, torch.Tensor], after: Mapping[str, torch.Tensor]
) -> dict[str, float]:
    """Per decoder layer: sqrt(sum ||dW||^2) / sqrt(sum ||W||^2) over that layer's tensors.

    Keys are layer numbers as strings ('0', '1', ...) and 'other'; tensors missing in `after` count
    as unchanged (e.g. frozen parameters that were not copied).
    """
    delta: dict[str, float] = defaultdict(float)
    norm: dict[str, float] = defaultdict(float)
    for name, w in before.items():
        key = layer_of(name)
        w = w.detach().float()
        norm[key] += float(w.pow(2).sum())
        if name in after:
            delta[key] += float((after[name].detach().float() - w).pow(2).sum())
    return {k: math.sqrt(delta[k]) / math.sqrt(norm[k]) if norm[k] > 0 else 0.0 for k in norm}


def latency_ratio(route_seconds_per_query: float, base_seconds_per_query: float) -> float:
    return route_seconds_per_query / base_seconds_per_query if base_seconds_per_query > 0 else math.nan
