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
  tool_ft   facts in the store; the model is fine-tuned to answer by calling a lookup tool in the
            agent's JSON action format (serving/actions.py) and answering from its result

All weight routes train on the same examples: (training question -> object) in the chat format;
`tool_ft` trains on tool-use demonstrations of the same questions. The in-context routes get the
training *statements*. None sees the paraphrase templates.

One budget rule for every trained route (`Fit`): train whole epochs until the greedy recall of a
seeded sample of the training questions reaches `target_recall`, or `max_epochs` epochs over every
example have run, whichever comes first. A cell that would need more than `max_train_s` seconds is
stopped and reported as left out (`TooCostly`), never as a result.
"""

from __future__ import annotations

import json
import math
import random
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from pydantic import BaseModel, ConfigDict, Field
from tqdm.auto import tqdm

from factflow.errors import UserError
from factflow.evals.lab_data import LabFact
from factflow.evals.lab_metrics import TextLogprobs, accuracy, relative_weight_change
from factflow.serving.training import (
    EncodedPair,
    batches,
    chat_messages_ids,
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
    "route_prompts",
    "CONTEXT_HEADER",
    "Fit",
    "TooCostly",
    "TRAINED_ROUTES",
]

ROUTES = ("none", "playbook", "store", "full_ft", "lora", "reft", "proxy", "tool_ft")
TRAINED_ROUTES = ("full_ft", "lora", "reft", "proxy", "tool_ft")
CONTEXT_HEADER = "You are a helpful AI assistant. Answer using these notes:"


class RouteBudget(BaseModel):
    """Compute budget and knobs of every route; one object so a run's JSONL row can record it."""

    model_config = ConfigDict(extra="forbid")

    max_new_tokens: int = Field(16, ge=1, description="Answer length cap; answers are a few words.")
    batch_size: int = Field(16, ge=1, description="Generation batch size.")
    train_batch_size: int = Field(4, ge=1, description="Training batch: small = more updates per CPU second.")
    target_recall: float = Field(0.99, gt=0, le=1, description="Stop once training-set recall reaches this.")
    max_epochs: int = Field(10, ge=1, description="Step cap: this many epochs over every training example.")
    recall_sample: int = Field(64, ge=1, description="Training questions checked after each epoch.")
    max_train_s: float | None = Field(
        3600.0, gt=0, description="A cell needing longer is left out and reported so (None = no limit)."
    )
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
    tool_demos: int = Field(64, ge=1, description="tool_ft: facts whose questions become tool-use demos.")
    tool_max_new_tokens: int = Field(48, ge=8, description="tool_ft: cap per turn (a JSON action).")
    tool_retain: int = Field(
        32, ge=0, description="tool_ft: general questions answered directly (the base's answer) in training."
    )
    seed: int = 0


class Answerer:
    """What a route's `learn` returns. Subclasses set the cost fields."""

    trainable_params: int = 0
    layer_change: dict[str, float] | None = None  # per-layer relative weight change (weight routes)
    notes: str = ""
    fit: dict[str, Any] | None = None  # what the budget rule ran (trained routes): steps, epochs, ...

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


class TooCostly(Exception):
    """A cell would exceed the CPU-time limit before the budget rule ends it: leave it out."""


class Fit:
    """The one budget rule of every trained route; call `after_epoch` at the end of each epoch.

    It answers a seeded sample of the training questions with the model as it is now; training
    stops when that recall reaches `target_recall` or after `max_epochs` epochs. When the epochs
    so far, extrapolated by one more, would pass `max_train_s`, it raises `TooCostly`.
    """

    def __init__(self, facts: Sequence[LabFact], budget: RouteBudget) -> None:
        rng = random.Random(f"fit-{budget.seed}")
        self.check = rng.sample(list(facts), min(budget.recall_sample, len(facts)))
        self.budget = budget
        self.start = time.perf_counter()
        self.epochs = 0
        self.steps = 0
        self.recall = math.nan
        self.reached = False

    def after_epoch(self, answer: Callable[[list[str]], list[str]], steps: int) -> bool:
        """True = stop training now."""
        self.epochs += 1
        self.steps = steps
        preds = answer([f.train_question for f in self.check])
        self.recall = accuracy(preds, [f.object for f in self.check])
        self.reached = self.recall >= self.budget.target_recall
        if self.reached or self.epochs >= self.budget.max_epochs:
            return True
        elapsed = time.perf_counter() - self.start
        limit = self.budget.max_train_s
        if limit is not None and elapsed * (self.epochs + 1) / self.epochs > limit:
            raise TooCostly(
                f"{self.epochs} epochs took {elapsed:.0f} s and training recall is {self.recall:.2f} "
                f"< {self.budget.target_recall}: finishing would pass the {limit:.0f} s limit"
            )
        return False

    def record(self) -> dict[str, Any]:
        return {"steps": self.steps, "epochs": self.epochs, "train_recall": self.recall,
                "reached_target": self.reached, "train_s": round(time.perf_counter() - self.start, 1),
                "checked": len(self.check)}  # fmt: skip

    def describe(self) -> str:
        why = "target reached" if self.reached else "epoch cap"
        return f"{self.steps} steps / {self.epochs} epochs ({why}, train recall {self.recall:.2f})"


def _train_lm(model: Any, tokenizer: Any, rows: list[EncodedPair], budget: RouteBudget, lr: float,
              desc: str, fit: Fit, answer: Callable[[list[str]], list[str]]) -> None:
    """Cross-entropy on completion tokens (the answer and end-of-turn), AdamW, until `fit` stops."""
    torch.manual_seed(budget.seed)
    rng = random.Random(budget.seed)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    per_epoch = math.ceil(len(rows) / budget.train_batch_size)
    step = 0
    with tqdm(total=per_epoch * budget.max_epochs, desc=desc, leave=False) as bar:
        for _ in range(budget.max_epochs):
            model.train()
            for batch in batches(rows, budget.train_batch_size, rng):
                ids, mask, labels, _starts = pad_pairs(batch, pad)  # labels: the answer only
                loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
                clipped_step(opt, params, loss)
                step += 1
                bar.update(1)
                bar.set_postfix(loss=f"{loss.item():.3f}")
            model.eval()
            if fit.after_epoch(answer, step):
                break
    model.eval()


def _encode(tokenizer: Any, pairs: list[tuple[str, str]]) -> list[EncodedPair]:
    end = end_of_turn(tokenizer)
    return [encode_pair(tokenizer, p, c, turn_end=end) for p, c in pairs]


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
        "tool_ft": "factflow.memory.store",
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


def _teach_store(facts: Sequence[LabFact], work: Path) -> Any:
    """A fresh fact store holding every fact's statement (namespace "lab")."""
    from factflow.memory.store import FactStore
    from factflow.settings import get_settings

    store = FactStore.open(get_settings(), path=work / "chroma")
    for f in tqdm(facts, desc="teach store", leave=False):
        store.teach(f.statement, namespace="lab", source_ids=[f.id])
    return store


def _store(facts: Sequence[LabFact], model_path: str, work: Path, budget: RouteBudget) -> Answerer:
    store = _teach_store(facts, work)
    model, tok = _fresh_model(model_path)

    def notes(query: str) -> str:
        hits = store.search(query, k=min(budget.store_k, len(facts)), namespace="lab")
        return "\n".join(f"- {h.fact.text}" for h in hits)

    return HFAnswerer(model, tok, budget, notes=notes, on_close=store.close)


def _full_ft(facts: Sequence[LabFact], model_path: str, work: Path, budget: RouteBudget) -> Answerer:
    model, tok = _fresh_model(model_path)
    before = _snapshot(model)
    ans = HFAnswerer(model, tok, budget)
    fit = Fit(facts, budget)
    _train_lm(model, tok, _encode(tok, training_examples(facts)), budget, budget.ft_lr, "full fine-tune", fit,
              ans.answer)  # fmt: skip
    ans.trainable_params = sum(p.numel() for p in model.parameters())
    ans.layer_change = relative_weight_change(before, model.state_dict())
    ans.fit, ans.notes = fit.record(), fit.describe()
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
    fit = Fit(facts, budget)
    _train_lm(peft_model, tok, _encode(tok, training_examples(facts)), budget, budget.lora_lr, "LoRA", fit,
              HFAnswerer(peft_model, tok, budget).answer)  # fmt: skip
    merged = peft_model.merge_and_unload()  # served merged: same latency as the base
    ans = HFAnswerer(merged, tok, budget)
    ans.trainable_params = trainable
    ans.layer_change = relative_weight_change(before, merged.state_dict())
    ans.fit, ans.notes = fit.record(), fit.describe()
    return ans


def _reft(facts: Sequence[LabFact], model_path: str, work: Path, budget: RouteBudget) -> Answerer:
    from factflow.serving.reft import Example, ReftAdapter, ReftConfig, TrainConfig, train_reft

    model, tok = _fresh_model(model_path)
    examples = [Example(prompt=p, completion=c) for p, c in training_examples(facts)]
    # the budget rule decides when to stop, not ReFT's own loss-based early stopping
    tc = TrainConfig(epochs=budget.max_epochs, lr=budget.reft_lr, batch_size=budget.train_batch_size,
                     seed=budget.seed, stop_loss=None, patience=budget.max_epochs + 1)  # fmt: skip
    cfg = ReftConfig(layers=budget.reft_layers, rank=budget.reft_rank)
    fit = Fit(facts, budget)

    def on_epoch(adapted: Any, steps: int) -> bool:
        return fit.after_epoch(HFAnswerer(adapted, tok, budget).answer, steps)

    out = train_reft(model_path, examples, cfg, work / "reft", train=tc, model=model, tokenizer=tok,
                     on_epoch=on_epoch)  # fmt: skip
    adapter = ReftAdapter.load(out)
    handle = adapter.attach(model)
    ans = HFAnswerer(model, tok, budget, on_close=handle.remove)
    ans.trainable_params = adapter.trainable_params()
    ans.fit = fit.record()
    ans.notes = f"{fit.describe()}, layers {budget.reft_layers}, rank {budget.reft_rank}"
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

    from factflow.serving.hf_engine import load_hf_model
    from factflow.serving.proxy import ProxyConfig, ProxySource, ProxyTunedLM, combine_logits
    from factflow.serving.proxy_train import tune_expert

    anti = _anti_expert(model_path, budget, cache_dir)
    pairs = training_examples(facts)
    fit = Fit(facts, budget)
    plausibility = ProxyConfig(base=Path(model_path), expert=anti, anti_expert=anti).plausibility
    base_model, base_tok = load_hf_model(model_path)
    anti_model, _ = load_hf_model(str(anti))

    def on_epoch(expert: Any, steps: int) -> bool:
        source = ProxySource(base_model, expert, anti_model, budget.proxy_alpha, plausibility)
        return fit.after_epoch(HFAnswerer(base_model, base_tok, budget, source=source).answer, steps)

    expert = tune_expert(anti, [{"prompt": p, "completion": c} for p, c in pairs], work / "expert",
                         epochs=budget.max_epochs, batch_size=budget.train_batch_size, lr=budget.proxy_lr,
                         seed=budget.seed, on_epoch=on_epoch)  # fmt: skip
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
    anti_weights = AutoModelForCausalLM.from_pretrained(str(anti), dtype=torch.float32)
    ans.layer_change = relative_weight_change(anti_weights.state_dict(), lm.expert.state_dict())
    ans.fit = fit.record()
    ans.notes = (
        f"{fit.describe()}; expert = first {budget.proxy_k_layers} layers + retain term, "
        f"alpha {budget.proxy_alpha}, plausibility {lm.config.plausibility}"
    )
    return ans


# ---- tool_ft: trained tool use -------------------------------------------------------------------

TOOL_NAME = "search_facts"


def _lookup_tool(store: Any, k: int) -> Any:
    """The lookup the tool_ft model learns to call: hybrid search of the lab's fact store."""
    from langchain_core.tools import tool

    @tool(TOOL_NAME)
    def search_facts(query: str) -> str:
        """Look up stored facts about a person, company, place or product by its name."""
        hits = store.search(query, k=k, namespace="lab")
        return "\n".join(f"- {h.fact.text}" for h in hits) or "no facts found"

    return search_facts


def _as_chat(messages: Sequence[Any]) -> list[dict[str, str]]:
    roles = {"system": "system", "human": "user", "ai": "assistant"}
    return [{"role": roles[m.type], "content": str(m.content)} for m in messages]


def _call_text(query: str) -> str:
    """A tool call as the JSON action text the agent's models emit (serving/actions.py)."""
    return json.dumps({"action": TOOL_NAME, "arguments": {"query": query}})


def _tool_turns(question: str, query: str | None, result: str | None, tool: Any) -> list[dict[str, str]]:
    """The conversation before the model's next turn: the question, then the call and its result."""
    from langchain_core.messages import AIMessage, HumanMessage, ToolMessage

    from factflow.serving.actions import render_messages_for_actions

    msgs: list[Any] = [HumanMessage(content=question)]
    if query is not None:
        call = {"name": TOOL_NAME, "args": {"query": query}, "id": "call_0", "type": "tool_call"}
        msgs += [AIMessage(content="", tool_calls=[call]),  # type: ignore[list-item]
                 ToolMessage(content=result or "", name=TOOL_NAME, tool_call_id="call_0")]  # fmt: skip
    return _as_chat(render_messages_for_actions(msgs, [tool]))


class ToolAnswerer(HFAnswerer):
    """Answers in two generated turns: a JSON lookup call, the tool's result, a JSON final answer."""

    def __init__(self, model: Any, tokenizer: Any, budget: RouteBudget, tool: Any, **kw: Any) -> None:
        super().__init__(model, tokenizer, budget, **kw)
        self.tool = tool

    def _generate(self, conversations: list[list[dict[str, str]]]) -> list[str]:
        from factflow.serving.generate import CausalLMSource, GenerationParams, generate

        params = GenerationParams(max_new_tokens=self.budget.tool_max_new_tokens, temperature=0.0)
        out: list[str] = []
        bs = self.budget.batch_size
        for i in range(0, len(conversations), bs):
            prompts = [chat_messages_ids(self.tokenizer, c) for c in conversations[i : i + bs]]
            done = generate(CausalLMSource(self.model), self.tokenizer, prompts, params)
            out += [c.text.strip() for c in done]
        return out

    def answer(self, questions: list[str]) -> list[str]:
        from factflow.serving.actions import parse_action

        first = [parse_action(t, [self.tool]) for t in self._generate(
            [_tool_turns(q, None, None, self.tool) for q in questions])]  # fmt: skip
        answers = [str(m.content) for m in first]
        called = [i for i, m in enumerate(first) if m.tool_calls]
        convs = []
        for i in called:
            args = first[i].tool_calls[0]["args"]
            query = str(args.get("query", "")) if isinstance(args, dict) else ""
            result = self.tool.invoke({"query": query}) if query.strip() else "no query given"
            convs.append(_tool_turns(questions[i], query, result, self.tool))
        for i, text in zip(called, self._generate(convs), strict=True):
            answers[i] = str(parse_action(text, [self.tool]).content)  # final answer, or what it said
        return [_first_line(a) for a in answers]


def _final_text(answer: str) -> str:
    from factflow.serving.actions import FINAL_ANSWER

    return json.dumps({"action": FINAL_ANSWER, "answer": answer})


def _pair(tok: Any, convo: list[dict[str, str]], target: str, end: str) -> EncodedPair:
    """One assistant turn to learn, after exactly the conversation it is generated from."""
    head = chat_messages_ids(tok, convo)
    return EncodedPair(head + list(tok(target + end, add_special_tokens=False)["input_ids"]), len(head))


def tool_demos(facts: Sequence[LabFact], budget: RouteBudget) -> list[LabFact]:
    """The facts whose training questions become tool-use demonstrations (a seeded sample).

    Tool use is one skill, not one memory per fact, so the demonstrations stay a fixed number
    while the store grows; recall on the other facts measures whether the skill transfers.
    """
    return random.Random(f"tool-demos-{budget.seed}").sample(list(facts), min(budget.tool_demos, len(facts)))


def _tool_ft(facts: Sequence[LabFact], model_path: str, work: Path, budget: RouteBudget) -> Answerer:
    from factflow.serving.proxy_train import RETAIN_PROMPTS

    store = _teach_store(facts, work)
    tool = _lookup_tool(store, min(budget.store_k, len(facts)))
    model, tok = _fresh_model(model_path)
    before = _snapshot(model)
    end = end_of_turn(tok)
    demos = tool_demos(facts, budget)
    # Without direct answers the model learns to look up *everything*; the base's own answers to
    # the proxy pair's retain prompts (disjoint from every probe) teach it when not to call.
    general = random.Random(f"tool-retain-{budget.seed}").sample(
        list(RETAIN_PROMPTS), min(budget.tool_retain, len(RETAIN_PROMPTS)))  # fmt: skip
    base_answers = HFAnswerer(model, tok, budget).answer(general) if general else []
    rows = [_pair(tok, _tool_turns(q, None, None, tool), _final_text(a), end)
            for q, a in zip(general, base_answers, strict=True)]  # fmt: skip
    for f in demos:  # two assistant turns per demo, each after exactly the prefix it is generated from
        result = tool.invoke({"query": f.subject})
        for convo, target in (
            (_tool_turns(f.train_question, None, None, tool), _call_text(f.subject)),
            (_tool_turns(f.train_question, f.subject, result, tool),
             _final_text(f.object)),
        ):  # fmt: skip
            rows.append(_pair(tok, convo, target, end))
    ans = ToolAnswerer(model, tok, budget, tool, on_close=store.close)
    fit = Fit(demos, budget)
    _train_lm(model, tok, rows, budget, budget.ft_lr, "tool fine-tune", fit, ans.answer)
    ans.trainable_params = sum(p.numel() for p in model.parameters())
    ans.layer_change = relative_weight_change(before, model.state_dict())
    ans.fit = fit.record()
    ans.notes = (f"{fit.describe()} on {len(demos)} lookup demos + {len(general)} direct answers; "
                 f"{len(facts)} facts in the store")  # fmt: skip
    return ans


def route_prompts() -> list[str]:
    """Every general (non-fact) prompt some route trains, retains or distils on.

    Locality probes and the retention set must share none of them (near-verbatim, `same_question`),
    or a route would be scored on questions it was told to keep.
    """
    from factflow.serving.proxy_train import DISTILL_PROMPTS, RETAIN_PROMPTS

    return list(RETAIN_PROMPTS) + list(DISTILL_PROMPTS)


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
        "full_ft": _full_ft, "lora": _lora, "reft": _reft, "tool_ft": _tool_ft,
    }
    return table[name](facts, model_path, work_dir, budget)
