"""Routes to a new fact, behind one interface: `route.learn(facts) -> Answerer`.

An `Answerer` answers chat questions with batched greedy decoding (`answer`) and, where the route
changes what the model predicts on ordinary text, gives next-token log-probs on neutral text
(`logprobs_on`) for KL / perplexity against the base.

Routes:
  none      the base model, nothing learned (baseline; its numbers are the reference)
  playbook  facts as ACE bullets (validated ADD ops), rendered into the prompt under the token budget
  store     facts in the fact store; top-k hybrid search per question, put into the prompt
  full_ft   full fine-tuning of every weight on the training questions
  lora      LoRA adapters (peft) on every linear layer, merged after training
  reft      LoReFT interventions on a frozen model (factflow.serving.reft)
  proxy     proxy-tuning: small expert tuned on the facts steers the frozen base at decode time

All weight routes train on the same examples: (training question -> object) in the chat format.
The in-context routes get the training *statements*. Neither sees the paraphrase templates.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from pydantic import BaseModel, ConfigDict, Field
from tqdm.auto import tqdm

from factflow.errors import UserError
from factflow.evals.lab_data import LabFact
from factflow.evals.lab_metrics import TextLogprobs, relative_weight_change
from factflow.serving.training import (
    batches,
    chat_prompt_ids,
    clipped_step,
    encode_pair,
    end_of_turn,
    pad_pairs,
)

__all__ = [
    "ROUTES",
    "RouteBudget",
    "Answerer",
    "HFAnswerer",
    "learn",
    "route_unavailable",
    "training_examples",
    "CONTEXT_HEADER",
]

ROUTES = ("none", "playbook", "store", "full_ft", "lora", "reft", "proxy")
CONTEXT_HEADER = "You are a helpful AI assistant. Answer using these notes:"


class RouteBudget(BaseModel):
    """Compute budget and knobs of every route; one object so a run's JSONL row can record it."""

    model_config = ConfigDict(extra="forbid")

    max_new_tokens: int = Field(16, ge=1, description="Answer length cap; answers are a few words.")
    batch_size: int = Field(16, ge=1, description="Generation batch size.")
    train_batch_size: int = Field(4, ge=1, description="Training batch: small = more updates per CPU second.")
    epochs: int = Field(8, ge=1, description="Training epochs of weight routes (upper bound).")
    max_steps: int = Field(48, ge=1, description="Optimizer step cap: bounds CPU time at large sizes.")
    ft_lr: float = Field(1e-4, gt=0, description="Full fine-tuning AdamW learning rate.")
    lora_lr: float = Field(1e-3, gt=0)
    lora_rank: int = Field(16, ge=1)
    reft_lr: float = Field(4e-3, gt=0, description="pyreft's LoReFT default.")
    reft_rank: int = Field(4, ge=1)
    reft_layers: list[int] = Field(default_factory=lambda: [6, 12, 18, 24])
    proxy_k_layers: int = Field(10, ge=1, description="Layers kept in the anti-expert / expert.")
    proxy_lr: float = Field(2e-4, gt=0)
    proxy_alpha: float = Field(1.0)
    proxy_distill_epochs: int = Field(2, ge=1)
    store_k: int = Field(4, ge=1, le=100, description="Facts retrieved per question.")
    playbook_budget_tokens: int = Field(1200, ge=0, description="Token budget of the rendered playbook.")
    seed: int = 0


class Answerer:
    """What a route's `learn` returns. Subclasses set the cost fields."""

    trainable_params: int = 0
    layer_change: dict[str, float] | None = None  # per-layer relative weight change (weight routes)
    notes: str = ""

    def answer(self, questions: list[str]) -> list[str]:
        raise NotImplementedError

    def logprobs_on(self, texts: list[str]) -> list[TextLogprobs] | None:
        return None

    def close(self) -> None:
        """Free models / stores held by this answerer."""


def _first_line(text: str) -> str:
    return text.strip().split("\n")[0].strip()


def _chat_prompt_ids(tokenizer: Any, question: str, notes: str | None) -> list[int]:
    # no notes: the template's own default system prompt, as the weight routes train
    system = None if notes is None else f"{CONTEXT_HEADER}\n{notes}"
    return chat_prompt_ids(tokenizer, question, system=system)


class HFAnswerer(Answerer):
    """Greedy answers from one HF model (or a proxy logits source), optionally with per-query notes.

    `notes(query)` returns the text put into the system prompt (playbook bullets, retrieved facts);
    `logits(ids)` overrides the model's full-sequence logits (proxy-tuning combines three models).
    """

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        budget: RouteBudget,
        *,
        notes: Callable[[str], str] | None = None,
        source: Any = None,
        logits: Callable[[torch.Tensor], torch.Tensor] | None = None,
        on_close: Callable[[], None] | None = None,
    ) -> None:
        self.model, self.tokenizer, self.budget = model, tokenizer, budget
        self.notes_fn, self.source, self.logits_fn, self.on_close = notes, source, logits, on_close

    def answer(self, questions: list[str]) -> list[str]:
        from factflow.serving.generate import CausalLMSource, GenerationParams, generate

        params = GenerationParams(max_new_tokens=self.budget.max_new_tokens, temperature=0.0)
        out: list[str] = []
        bs = self.budget.batch_size
        for i in range(0, len(questions), bs):
            batch = questions[i : i + bs]
            prompts = [
                _chat_prompt_ids(self.tokenizer, q, self.notes_fn(q) if self.notes_fn else None)
                for q in batch
            ]
            source = self.source or CausalLMSource(self.model)
            done = generate(source, self.tokenizer, prompts, params)
            out += [_first_line(c.text) for c in done]
        return out

    @torch.inference_mode()
    def logprobs_on(self, texts: list[str]) -> list[TextLogprobs]:
        """Log-probs of each text's tokens 1..T-1, after the route's notes for that text (if any)."""
        rows = []
        for text in texts:
            ids = list(self.tokenizer(text, add_special_tokens=False)["input_ids"])
            prefix: list[int] = []
            if self.notes_fn is not None:
                prefix = list(
                    self.tokenizer(f"{CONTEXT_HEADER}\n{self.notes_fn(text)}\n\n", add_special_tokens=False)[
                        "input_ids"
                    ]
                )
            x = torch.tensor([prefix + ids])
            z = self.logits_fn(x) if self.logits_fn else self.model(input_ids=x).logits
            z = z[0, len(prefix) : len(prefix) + len(ids) - 1].float()  # (T-1, V) predicts ids[1:]
            rows.append(TextLogprobs(torch.log_softmax(z, -1), torch.tensor(ids[1:])))
        return rows

    def close(self) -> None:
        if self.on_close:
            self.on_close()


# ---- training shared by the weight routes ------------------------------------------------------


def training_examples(facts: Sequence[LabFact]) -> list[tuple[str, str]]:
    """(prompt, completion) pairs every weight route trains on: training question -> object."""
    return [(f.train_question, f.object) for f in facts]


def _steps(n: int, budget: RouteBudget) -> tuple[int, int]:
    """(epochs, total steps) under the step cap; at large sizes the cap, not epochs, binds."""
    per_epoch = math.ceil(n / budget.train_batch_size)
    total = min(budget.epochs * per_epoch, budget.max_steps)
    return math.ceil(total / per_epoch), total


def _train_lm(model: Any, tokenizer: Any, pairs: list[tuple[str, str]], budget: RouteBudget, lr: float,
              desc: str) -> int:
    """Cross-entropy on completion tokens (the answer and end-of-turn), AdamW; returns steps run."""
    torch.manual_seed(budget.seed)
    rng = random.Random(budget.seed)
    end = end_of_turn(tokenizer)
    rows = [encode_pair(tokenizer, p, c, turn_end=end) for p, c in pairs]
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    epochs, total = _steps(len(rows), budget)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    model.train()
    step = 0
    with tqdm(total=total, desc=desc, leave=False) as bar:
        for _ in range(epochs):
            for batch in batches(rows, budget.train_batch_size, rng):
                if step >= total:
                    break
                ids, mask, labels, _starts = pad_pairs(batch, pad)  # labels: the answer only
                loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
                clipped_step(opt, params, loss)
                step += 1
                bar.update(1)
                bar.set_postfix(loss=f"{loss.item():.3f}")
    model.eval()
    return step


def _fresh_model(model_path: str) -> tuple[Any, Any]:
    """A private copy of the base (weight routes mutate it; the cached loader's copy stays clean)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_path)
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32)
    model.eval()
    return model, tok


def _snapshot(model: Any) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


# ---- routes ------------------------------------------------------------------------------------


def route_unavailable(name: str) -> str | None:
    """Why a route can't run here (its module has not landed), or None when it can."""
    modules = {
        "playbook": "factflow.memory.playbook",
        "store": "factflow.memory.store",
        "lora": "peft",
        "reft": "factflow.serving.reft",
        "proxy": "factflow.serving.proxy_train",
    }
    if name not in ROUTES:
        raise UserError(f"unknown lab route {name!r}: choose from {', '.join(ROUTES)}")
    if name not in modules:
        return None
    import importlib

    try:
        importlib.import_module(modules[name])
    except ImportError as exc:
        return f"{modules[name]} is not importable ({exc})"
    return None


def _none(facts: Sequence[LabFact], model_path: str, work: Path, budget: RouteBudget) -> Answerer:
    model, tok = _fresh_model(model_path)
    return HFAnswerer(model, tok, budget)


def _playbook(facts: Sequence[LabFact], model_path: str, work: Path, budget: RouteBudget) -> Answerer:
    from factflow.memory.bullets import AddOp, Delta
    from factflow.memory.playbook import Playbook
    from factflow.settings import get_settings

    # Dedup off: "A was born in B." and "C was born in D." are near-duplicates by cosine, and merging
    # them would delete facts; the lab measures access to facts, not the curator's taste.
    pb = Playbook.open(work / "playbook.sqlite3", get_settings(), dedup_mode="off")
    ops = [AddOp(section="domain_facts", content=f.statement) for f in facts]
    result = pb.apply(Delta(ops=list(ops), reason="lab facts"), author="lab")
    model, tok = _fresh_model(model_path)

    def notes(query: str) -> str:
        return pb.render(query=query, budget_tokens=budget.playbook_budget_tokens).text

    ans = HFAnswerer(model, tok, budget, notes=notes, on_close=pb.close)
    ans.notes = f"{len(result.applied)} bullets added, {len(result.rejected)} rejected"
    return ans


def _store(facts: Sequence[LabFact], model_path: str, work: Path, budget: RouteBudget) -> Answerer:
    from factflow.memory.store import FactStore
    from factflow.settings import get_settings

    store = FactStore.open(get_settings(), path=work / "chroma")
    for f in tqdm(facts, desc="teach store", leave=False):
        store.teach(f.statement, namespace="lab", source_ids=[f.id])
    model, tok = _fresh_model(model_path)

    def notes(query: str) -> str:
        hits = store.search(query, k=min(budget.store_k, len(facts)), namespace="lab")
        return "\n".join(f"- {h.fact.text}" for h in hits)

    return HFAnswerer(model, tok, budget, notes=notes, on_close=store.close)


def _full_ft(facts: Sequence[LabFact], model_path: str, work: Path, budget: RouteBudget) -> Answerer:
    model, tok = _fresh_model(model_path)
    before = _snapshot(model)
    steps = _train_lm(model, tok, training_examples(facts), budget, budget.ft_lr, "full fine-tune")
    ans = HFAnswerer(model, tok, budget)
    ans.trainable_params = sum(p.numel() for p in model.parameters())
    ans.layer_change = relative_weight_change(before, model.state_dict())
    ans.notes = f"{steps} steps"
    return ans


def _lora(facts: Sequence[LabFact], model_path: str, work: Path, budget: RouteBudget) -> Answerer:
    from peft import LoraConfig, get_peft_model

    model, tok = _fresh_model(model_path)
    before = _snapshot(model)
    targets = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    cfg = LoraConfig(r=budget.lora_rank, lora_alpha=2 * budget.lora_rank, lora_dropout=0.0,
                     target_modules=targets, task_type="CAUSAL_LM")
    peft_model = get_peft_model(model, cfg)
    trainable = sum(p.numel() for p in peft_model.parameters() if p.requires_grad)
    steps = _train_lm(peft_model, tok, training_examples(facts), budget, budget.lora_lr, "LoRA")
    merged = peft_model.merge_and_unload()  # served merged: same latency as the base
    ans = HFAnswerer(merged, tok, budget)
    ans.trainable_params = trainable
    ans.layer_change = relative_weight_change(before, merged.state_dict())
    ans.notes = f"{steps} steps"
    return ans


def _reft(facts: Sequence[LabFact], model_path: str, work: Path, budget: RouteBudget) -> Answerer:
    from factflow.serving.reft import Example, ReftAdapter, ReftConfig, TrainConfig, train_reft

    model, tok = _fresh_model(model_path)
    examples = [Example(prompt=p, completion=c) for p, c in training_examples(facts)]
    epochs, _ = _steps(len(examples), budget)
    tc = TrainConfig(epochs=epochs, lr=budget.reft_lr, batch_size=budget.train_batch_size, seed=budget.seed)
    cfg = ReftConfig(layers=budget.reft_layers, rank=budget.reft_rank)
    out = train_reft(model_path, examples, cfg, work / "reft", train=tc, model=model, tokenizer=tok)
    adapter = ReftAdapter.load(out)
    handle = adapter.attach(model)
    ans = HFAnswerer(model, tok, budget, on_close=handle.remove)
    ans.trainable_params = adapter.trainable_params()
    ans.notes = f"{epochs} epochs max, layers {budget.reft_layers}, rank {budget.reft_rank}"
    return ans


def _anti_expert(model_path: str, budget: RouteBudget, cache_dir: Path) -> Path:
    """The distilled anti-expert depends only on the base and k: build it once, reuse it across runs."""
    from factflow.evals.lab_data import _model_key
    from factflow.serving.proxy_train import distill_anti_expert

    key = f"{_model_key(model_path)}-k{budget.proxy_k_layers}-e{budget.proxy_distill_epochs}"
    folder = cache_dir / f"anti-{key}"
    if not (folder / "config.json").exists():
        tmp = folder.with_name(folder.name + ".tmp")
        distill_anti_expert(model_path, budget.proxy_k_layers, tmp, epochs=budget.proxy_distill_epochs,
                            seed=budget.seed)
        tmp.replace(folder)
    return folder


def _proxy(facts: Sequence[LabFact], model_path: str, work: Path, budget: RouteBudget,
           cache_dir: Path) -> Answerer:
    from transformers import AutoModelForCausalLM

    from factflow.serving.proxy import ProxyConfig, ProxyTunedLM, combine_logits
    from factflow.serving.proxy_train import tune_expert

    anti = _anti_expert(model_path, budget, cache_dir)
    pairs = training_examples(facts)
    epochs, _ = _steps(len(pairs), budget)
    expert = tune_expert(anti, [{"prompt": p, "completion": c} for p, c in pairs], work / "expert",
                         epochs=epochs, batch_size=budget.train_batch_size, lr=budget.proxy_lr,
                         seed=budget.seed)
    lm = ProxyTunedLM(ProxyConfig(base=Path(model_path), expert=expert, anti_expert=anti,
                                  alpha=budget.proxy_alpha))

    def logits(x: torch.Tensor) -> torch.Tensor:  # (B, T) -> (B, T, V)
        zb, ze, za = (m(input_ids=x).logits for m in (lm.base, lm.expert, lm.anti_expert))
        return combine_logits(zb, ze, za, lm.alpha, lm.config.plausibility)

    # ProxySource.start() resets its three KV caches, so one source serves every batch
    ans = HFAnswerer(lm.base, lm.tokenizer, budget, source=lm.source(), logits=logits)
    ans.trainable_params = sum(p.numel() for p in lm.expert.parameters() if p.requires_grad) - sum(
        p.numel() for p in lm.expert.get_input_embeddings().parameters()
    )  # embeddings stay frozen in tune_expert
    anti_model = AutoModelForCausalLM.from_pretrained(str(anti), dtype=torch.float32)
    ans.layer_change = relative_weight_change(anti_model.state_dict(), lm.expert.state_dict())
    ans.notes = (
        f"expert = first {budget.proxy_k_layers} layers, {epochs} epochs + retain term, "
        f"alpha {budget.proxy_alpha}, plausibility {lm.config.plausibility}"
    )
    return ans


def learn(name: str, facts: Sequence[LabFact], *, model_path: str, work_dir: Path, budget: RouteBudget,
          cache_dir: Path) -> Answerer:
    """Run route `name` on `facts`; `work_dir` holds what it writes (stores, adapters, experts)."""
    reason = route_unavailable(name)
    if reason:
        raise UserError(f"route {name!r} cannot run: {reason}; drop it from --routes")
    work_dir.mkdir(parents=True, exist_ok=True)
    if name == "proxy":
        return _proxy(facts, model_path, work_dir, budget, cache_dir)
    table: dict[str, Callable[[Sequence[LabFact], str, Path, RouteBudget], Answerer]] = {
        "none": _none, "playbook": _playbook, "store": _store,
        "full_ft": _full_ft, "lora": _lora, "reft": _reft,
    }
    return table[name](facts, model_path, work_dir, budget)
