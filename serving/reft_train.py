"""Training a LoReFT adapter on a frozen model, and measuring what it recalls.

`train_reft` is a plain torch loop: the base is frozen (its `requires_grad` flags restored
afterwards), AdamW trains the adapter only, linear warmup + decay, gradient accumulation, early
stopping on a validation split, the best epoch kept. Examples are encoded by the shared
`factflow.serving.training` helpers (the prompt in the tokenizer's chat template, the answer
closed by the template's end-of-turn token, loss on the answer only). `recall` is exact greedy recall.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, cast

import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from torch import nn

from factflow.errors import UserError
from factflow.serving.reft_adapter import TRAIN_REPORT, Example, LoReFT, ReftAdapter, ReftConfig, ReftHandle
from factflow.serving.training import EncodedPair, PairBatch, batches, encode_pair, end_of_turn, pad_pairs

__all__ = [
    "TrainConfig",
    "TrainReport",
    "train_reft",
    "load_examples",
    "load_base_model",
    "greedy_generate",
    "recall",
]


class TrainConfig(BaseModel):
    """Training knobs (not saved with the adapter's architecture; recorded in training.json)."""

    model_config = ConfigDict(extra="forbid")

    epochs: int = Field(40, ge=1, description="Upper bound; early stopping usually ends sooner.")
    lr: float = Field(4e-3, gt=0, description="AdamW learning rate (pyreft uses 4e-3 for LoReFT).")
    weight_decay: float = Field(0.0, ge=0)
    batch_size: int = Field(8, ge=1)
    grad_accum: int = Field(1, ge=1, description="Micro-batches per optimizer step.")
    warmup_ratio: float = Field(0.05, ge=0, lt=1, description="Linear warmup, then linear decay.")
    val_fraction: float = Field(
        0.0,
        ge=0,
        lt=1,
        description="Held-out share for early stopping; 0 = watch the training set (memorising facts).",
    )
    patience: int = Field(5, ge=1, description="Epochs without validation improvement before stopping.")
    stop_loss: float | None = Field(0.01, description="Stop once the validation loss is below this.")
    seed: int = 0
    max_length: int = Field(256, ge=8, description="Prompt + completion tokens kept per example.")
    chat_template: bool = Field(True, description="Wrap prompts in the tokenizer's chat template.")


def load_examples(path: str | Path) -> list[Example]:
    """Read prompt/completion pairs from JSONL (one {"prompt": ..., "completion": ...} per line)."""
    file = Path(path).expanduser()
    if not file.is_file():
        raise UserError(f"training data {file} does not exist; pass a JSONL file of prompt/completion pairs.")
    examples = []
    for n, line in enumerate(file.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            examples.append(Example.model_validate_json(line))
        except ValidationError:
            raise UserError(
                f"{file}:{n} is not a JSON object with string fields 'prompt' and 'completion'; "
                "fix that line."
            ) from None
    if not examples:
        raise UserError(f"training data {file} is empty; add prompt/completion lines.")
    return examples

def _truncated(pair: EncodedPair, max_length: int) -> EncodedPair:
    """Keep at most max_length tokens: the answer's first half-budget, the prompt's last tokens."""
    prompt, answer = pair.ids[: pair.start], pair.ids[pair.start :]
    answer = answer[: max_length // 2]
    prompt = prompt[-(max_length - len(answer)) :]
    return EncodedPair(prompt + answer, len(prompt))


class TrainReport(BaseModel):
    """What a training run did; saved as training.json next to the adapter."""

    model_config = ConfigDict(extra="forbid")

    trainable_params: int
    base_params: int
    train_examples: int
    val_examples: int
    epochs_run: int
    stopped_early: bool
    best_val_loss: float
    train_losses: list[float]
    val_losses: list[float]
    seconds_per_epoch: list[float]
    device: str
    config: TrainConfig


def _loss(model: nn.Module, handle: ReftHandle, batch: PairBatch, device: torch.device) -> Any:
    ids, mask, labels, plen = batch
    # right padding: every prompt starts at 0 and ends where its answer starts
    with handle.prompt_spans(torch.zeros_like(plen), plen):
        out = model(input_ids=ids.to(device), attention_mask=mask.to(device), labels=labels.to(device))
    return out.loss


def _eval_loss(
    model: nn.Module, handle: ReftHandle, rows: list[EncodedPair], bs: int, pad: int, dev: torch.device
) -> float:
    total, n = 0.0, 0
    with torch.no_grad():
        for chunk in batches(rows, bs):
            total += float(_loss(model, handle, pad_pairs(chunk, pad), dev)) * len(chunk)
            n += len(chunk)
    return total / max(n, 1)


def train_reft(
    model_path: str | Path,
    examples: Sequence[Example],
    config: ReftConfig,
    out_dir: str | Path,
    *,
    train: TrainConfig | None = None,
    model: nn.Module | None = None,
    tokenizer: Any = None,
    progress: bool = True,
    on_epoch: Callable[[nn.Module, int], bool] | None = None,
) -> Path:
    """Train a LoReFT adapter on a frozen model and save it to `out_dir`; returns the folder.

    `model`/`tokenizer` may be passed to reuse an already loaded base (its weights stay untouched:
    only the adapter's parameters are given to the optimizer and the base's `requires_grad` flags
    are restored afterwards). The report (trainable parameters, losses, time per epoch) is saved
    as training.json in the folder. `on_epoch(model, optimizer steps so far)` runs after each epoch
    with the adapter attached (the model answers as the adapted model); True stops training there
    (the lab stops once the training set is recalled).
    """
    from tqdm.auto import tqdm
    from transformers import get_linear_schedule_with_warmup

    tc = train or TrainConfig()
    if not examples:
        raise UserError("no training examples were given; pass a JSONL file of prompt/completion pairs.")
    random.seed(tc.seed)
    torch.manual_seed(tc.seed)
    if model is None or tokenizer is None:
        model, tokenizer = load_base_model(str(model_path))
    device = next(model.parameters()).device
    adapter = ReftAdapter.for_model(config, model)
    handle = adapter.attach(model)
    flags = {name: p.requires_grad for name, p in model.named_parameters()}
    for p in model.parameters():
        p.requires_grad_(False)
    was_training = model.training
    end = end_of_turn(tokenizer, chat=tc.chat_template)
    model.eval()  # base dropout off: only the interventions learn

    rows = [_truncated(encode_pair(tokenizer, ex.prompt, ex.completion, chat=tc.chat_template, turn_end=end),
                       tc.max_length) for ex in examples]  # fmt: skip
    rng = random.Random(tc.seed)
    shuffled = rows[:]
    rng.shuffle(shuffled)
    n_val = int(len(rows) * tc.val_fraction)
    val_rows, train_rows = (shuffled[:n_val], shuffled[n_val:]) if n_val else (rows, rows)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0

    params = [p for p in adapter.parameters() if p.requires_grad]
    optim = torch.optim.AdamW(params, lr=tc.lr, weight_decay=tc.weight_decay)
    steps_per_epoch = math.ceil(math.ceil(len(train_rows) / tc.batch_size) / tc.grad_accum)
    total = steps_per_epoch * tc.epochs
    sched = get_linear_schedule_with_warmup(optim, int(total * tc.warmup_ratio), total)

    train_losses: list[float] = []
    val_losses: list[float] = []
    secs: list[float] = []
    best, best_state, bad_epochs, stopped = float("inf"), adapter.tensors(), 0, False
    steps = 0
    bar = tqdm(range(tc.epochs), desc="reft", disable=not progress, unit="epoch")
    if progress:
        tqdm.write(
            f"trainable params: {adapter.trainable_params():,} "
            f"({100 * adapter.trainable_params() / sum(p.numel() for p in model.parameters()):.4f}% of base)"
        )
    try:
        for _epoch in bar:
            t0 = time.perf_counter()
            adapter.train()
            running, n = 0.0, 0
            for i, chunk in enumerate(batches(train_rows, tc.batch_size, rng)):
                loss = _loss(model, handle, pad_pairs(chunk, pad), device)
                (loss / tc.grad_accum).backward()
                running, n = running + float(loss.detach()) * len(chunk), n + len(chunk)
                if (i + 1) % tc.grad_accum == 0:
                    optim.step()
                    sched.step()
                    optim.zero_grad(set_to_none=True)
                    steps += 1
            if any(p.grad is not None for p in params):  # flush a last partial accumulation
                optim.step()
                sched.step()
                optim.zero_grad(set_to_none=True)
                steps += 1
            adapter.eval()
            train_losses.append(running / max(n, 1))
            # no held-out split (memorising facts): the epoch's training loss is the signal, which
            # saves a full extra forward pass over the data per epoch
            val = train_losses[-1]
            if n_val:
                val = _eval_loss(model, handle, val_rows, tc.batch_size, pad, device)
            secs.append(time.perf_counter() - t0)
            val_losses.append(val)
            bar.set_postfix(loss=f"{train_losses[-1]:.4f}", val=f"{val:.4f}")
            if val < best - 1e-4:
                best, best_state, bad_epochs = val, adapter.tensors(), 0
            else:
                bad_epochs += 1
            if bad_epochs >= tc.patience or (tc.stop_loss is not None and val < tc.stop_loss):
                stopped = True
                break
            if on_epoch is not None and on_epoch(model, steps):
                best_state = adapter.tensors()  # the state the caller judged good enough
                stopped = True
                break
    finally:
        handle.remove()
        for name, p in model.named_parameters():
            p.requires_grad_(flags[name])
        model.train(was_training)
    for name, iv in adapter.interventions.items():  # keep the best epoch, as early stopping promises
        assert isinstance(iv, LoReFT)
        iv.set_weights(best_state[f"{name}.R"], best_state[f"{name}.W"], best_state[f"{name}.b"])
    out = adapter.save(out_dir)
    report = TrainReport(
        trainable_params=adapter.trainable_params(),
        base_params=sum(p.numel() for p in model.parameters()),
        train_examples=len(train_rows),
        val_examples=len(val_rows) if n_val else 0,
        epochs_run=len(train_losses),
        stopped_early=stopped,
        best_val_loss=best,
        train_losses=train_losses,
        val_losses=val_losses,
        seconds_per_epoch=secs,
        device=str(device),
        config=tc,
    )
    (out / TRAIN_REPORT).write_text(report.model_dump_json(indent=2) + "\n")
    return out


def load_base_model(path: str) -> tuple[nn.Module, Any]:
    """The base model and tokenizer from the shared cached loader (fp32)."""
    try:
        from factflow.serving.hf_engine import load_hf_model  # the lead's cached loader

        return load_hf_model(path)  # type: ignore[no-any-return]
    except ImportError:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        tok = AutoTokenizer.from_pretrained(path)
        return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32), tok


# evaluation


@torch.no_grad()
def greedy_generate(
    model: nn.Module, tokenizer: Any, prompt_ids: list[int], max_new_tokens: int = 32
) -> list[int]:
    """Greedy continuation of one tokenized prompt (no padding, so it matches vLLM token for token)."""
    device = next(model.parameters()).device
    ids = torch.tensor([prompt_ids], device=device)
    # a Hugging Face causal LM: nn.Module itself declares no `generate`
    out = cast(Any, model).generate(
        input_ids=ids,
        attention_mask=torch.ones_like(ids),
        max_new_tokens=max_new_tokens,
        do_sample=False,
        pad_token_id=tokenizer.pad_token_id,
    )
    return [int(t) for t in out[0, len(prompt_ids) :]]


def _norm(text: str) -> str:
    return " ".join(text.lower().split()).strip(" .")


def recall(
    model: nn.Module,
    tokenizer: Any,
    examples: Sequence[Example],
    chat_template: bool = True,
    progress: bool = False,
) -> tuple[float, list[str]]:
    """Exact recall: share of examples whose greedy answer starts with the expected completion."""
    from tqdm.auto import tqdm

    hits, outputs = 0, []
    for ex in tqdm(examples, desc="recall", disable=not progress):
        pair = encode_pair(tokenizer, ex.prompt, ex.completion, chat=chat_template)
        want = len(pair.ids) - pair.start  # answer + end of turn
        got = greedy_generate(model, tokenizer, pair.ids[: pair.start], want + 4)
        text = tokenizer.decode(got, skip_special_tokens=True)
        outputs.append(text)
        hits += _norm(text).startswith(_norm(ex.completion))
    return hits / len(examples), outputs


