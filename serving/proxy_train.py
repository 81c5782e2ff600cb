"""Making a proxy pair from one base model: a distilled anti-expert and a tuned expert.

Only one model exists offline, so factflow builds the small pair itself:

* `distill_anti_expert`: keep the base's first k decoder layers (plus embeddings, final norm and
  head) and distill the truncated model on the base's own outputs, minimising
  KL(p_base(. | x_<t) || p_student(. | x_<t)) at every position of text the base itself wrote.
  The result imitates the base's next-token distribution with a fraction of its layers.
* `tune_expert`: fine-tune a copy of the anti-expert on prompt/completion pairs (loss on the
  completion tokens only). expert - anti-expert is then "what tuning changed", which proxy-tuning
  adds to the base's logits.

Both write HF-format folders (config, safetensors, tokenizer, chat template) loadable by
`AutoModelForCausalLM` and by vLLM.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict
from tqdm.auto import tqdm

from factflow.errors import UserError

__all__ = [
    "Completion",
    "read_completions",
    "truncate_model",
    "distill_anti_expert",
    "tune_expert",
    "DISTILL_PROMPTS",
]

# Varied chat prompts whose base completions are the distillation text (short on purpose: CPU).
DISTILL_PROMPTS = [
    "What is the capital of France?",
    "Explain photosynthesis in one sentence.",
    "Write a haiku about the sea.",
    "How many days are in a leap year?",
    "Who wrote Romeo and Juliet?",
    "Give me three tips for better sleep.",
    "What is 12 times 7?",
    "Translate 'good morning' into Spanish.",
    "What does a CPU do?",
    "Name a mammal that can fly.",
    "Why is the sky blue?",
    "Summarize the plot of Cinderella.",
    "What is the boiling point of water?",
    "List three primary colors.",
    "How do vaccines work?",
    "What is the largest planet in the solar system?",
    "Write a short greeting for a birthday card.",
    "What is machine learning?",
    "Which ocean is the largest?",
    "What language is spoken in Brazil?",
    "Describe a cat in two sentences.",
    "What is the chemical symbol for gold?",
    "How do I make a cup of tea?",
    "Who painted the Mona Lisa?",
    "What is the speed of light?",
    "Give an example of a prime number.",
    "What causes rain?",
    "What is the capital of Japan?",
    "Tell me a fun fact about octopuses.",
    "What is the freezing point of water in Fahrenheit?",
    "Who was the first person on the moon?",
    "What is an API?",
]


class Completion(BaseModel):
    """One prompt/completion pair of `factflow proxy tune` input (one JSON object per line)."""

    model_config = ConfigDict(extra="forbid")

    prompt: str
    completion: str


def read_completions(path: str | Path) -> list[Completion]:
    """Read prompt/completion JSONL, naming the bad line on error."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path} does not exist; pass a JSONL file of {{'prompt', 'completion'}} objects")
    rows = []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            rows.append(Completion.model_validate_json(line))
        except ValueError as exc:
            raise UserError(f"{path}:{n} is not a {{'prompt', 'completion'}} JSON object: {exc}") from None
    if not rows:
        raise UserError(f"{path} holds no examples; add one JSON object per line")
    return rows


def _chat_ids(tokenizer: Any, prompt: str, completion: str | None = None) -> tuple[list[int], int]:
    """Token ids of a chat-formatted prompt (+ completion) and where the completion starts."""
    messages = [{"role": "user", "content": prompt}]
    head = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    head_ids = tokenizer(head, add_special_tokens=False)["input_ids"]
    if completion is None:
        return head_ids, len(head_ids)
    tail_ids = tokenizer(completion + "<|im_end|>", add_special_tokens=False)["input_ids"]
    return head_ids + tail_ids, len(head_ids)


def _pad(rows: Sequence[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad for training: (B, T) ids and (B, T) mask."""
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, : len(r)] = torch.tensor(r)
        mask[i, : len(r)] = 1
    return ids, mask


def _save(model: Any, tokenizer: Any, out_dir: Path, meta: dict[str, Any]) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(out_dir))
    tokenizer.save_pretrained(str(out_dir))
    (out_dir / "factflow_proxy_train.json").write_text(json.dumps(meta, indent=2, default=str))
    return out_dir


def _batches(items: list[Any], size: int, rng: random.Random) -> Iterable[list[Any]]:
    items = items[:]
    rng.shuffle(items)
    for i in range(0, len(items), size):
        yield items[i : i + size]


def _truncated(teacher: Any, k_layers: int) -> Any:
    """A new model with the teacher's first k decoder layers, embeddings, final norm and head."""
    from transformers import AutoModelForCausalLM

    config = teacher.config.__class__.from_dict(teacher.config.to_dict())
    config.num_hidden_layers = k_layers
    if getattr(config, "layer_types", None):
        config.layer_types = config.layer_types[:k_layers]
    student = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    missing, _unexpected = student.load_state_dict(teacher.state_dict(), strict=False)
    assert not [m for m in missing if "lm_head" not in m], missing  # layers >= k are the unexpected ones
    student.tie_weights()
    return student


def truncate_model(base: str | Path, k_layers: int, out_dir: str | Path) -> Path:
    """The base's first k layers, saved as an HF folder without any training (tests, quick pairs)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    teacher = AutoModelForCausalLM.from_pretrained(str(base), dtype=torch.float32)
    student = _truncated(teacher, k_layers)
    return _save(student, AutoTokenizer.from_pretrained(str(base)), Path(out_dir),
                 {"kind": "truncated", "base": str(base), "k_layers": k_layers})  # fmt: skip


def distill_anti_expert(
    base: str | Path,
    k_layers: int,
    out_dir: str | Path,
    *,
    prompts: Sequence[str] = DISTILL_PROMPTS,
    completion_tokens: int = 48,
    epochs: int = 4,
    batch_size: int = 8,
    lr: float = 3e-4,
    seed: int = 0,
    progress: bool = True,
) -> Path:
    """Truncate the base to its first `k_layers` layers and distill it on the base's own text.

    Loss: KL(p_base || p_student) summed over vocabulary, averaged over real tokens. Embeddings
    (tied to the head) stay frozen: the student keeps the base's token space exactly and training
    only touches the kept layers and final norm, which is what makes this minutes on a CPU.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    base = Path(base)
    torch.manual_seed(seed)
    rng = random.Random(seed)
    tokenizer = AutoTokenizer.from_pretrained(str(base))
    teacher = AutoModelForCausalLM.from_pretrained(str(base), dtype=torch.float32).eval()
    n_layers = teacher.config.num_hidden_layers
    if not 1 <= k_layers < n_layers:
        raise UserError(f"k_layers must be between 1 and {n_layers - 1} for this base; got {k_layers}")

    # The base's own outputs: sampled completions, so the text covers more than one greedy path.
    texts: list[list[int]] = []
    tokenizer.padding_side = "left"
    with torch.inference_mode():
        for chunk in tqdm(
            [prompts[i : i + 8] for i in range(0, len(prompts), 8)], desc="base outputs", disable=not progress
        ):
            heads = [_chat_ids(tokenizer, p)[0] for p in chunk]
            width = max(map(len, heads))
            ids = torch.tensor([[tokenizer.pad_token_id] * (width - len(h)) + h for h in heads])
            mask = (
                torch.arange(width)[None, :] >= torch.tensor([width - len(h) for h in heads])[:, None]
            ).long()
            out = teacher.generate(
                input_ids=ids,
                attention_mask=mask,
                max_new_tokens=completion_tokens,
                do_sample=True,
                top_p=0.9,
                temperature=0.8,
                pad_token_id=tokenizer.pad_token_id,
            )
            for h, row in zip(heads, out[:, width:].tolist(), strict=True):
                texts.append(h + [t for t in row if t != tokenizer.pad_token_id])

    student = _truncated(teacher, k_layers)
    student.get_input_embeddings().weight.requires_grad_(False)
    params = [p for p in student.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    student.train()

    steps = epochs * ((len(texts) + batch_size - 1) // batch_size)
    bar = tqdm(total=steps, desc=f"distill {k_layers}/{n_layers} layers", disable=not progress)
    for _ in range(epochs):
        for batch in _batches(texts, batch_size, rng):
            ids, mask = _pad(batch, tokenizer.pad_token_id)
            with torch.no_grad():
                t_logp = F.log_softmax(teacher(input_ids=ids, attention_mask=mask).logits, -1)  # (B, T, V)
            s_logp = F.log_softmax(student(input_ids=ids, attention_mask=mask).logits, -1)  # (B, T, V)
            kl = (t_logp.exp() * (t_logp - s_logp)).sum(-1)  # (B, T)
            loss = (kl * mask).sum() / mask.sum()
            opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            bar.set_postfix(kl=f"{loss.item():.3f}")
            bar.update()
    bar.close()
    student.eval()
    return _save(
        student,
        tokenizer,
        Path(out_dir),
        {
            "kind": "anti_expert",
            "base": str(base),
            "k_layers": k_layers,
            "final_kl": loss.item(),
            "texts": len(texts),
            "epochs": epochs,
        },
    )


def tune_expert(
    anti_expert_dir: str | Path,
    examples: Sequence[Completion | dict[str, str]],
    out_dir: str | Path,
    *,
    epochs: int = 20,
    batch_size: int = 8,
    lr: float = 2e-4,
    seed: int = 0,
    progress: bool = True,
) -> Path:
    """Fine-tune a copy of the anti-expert on prompt/completion pairs (completion tokens only)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(seed)
    rng = random.Random(seed)
    rows = [e if isinstance(e, Completion) else Completion(**e) for e in examples]
    if not rows:
        raise UserError("tune_expert needs at least one prompt/completion example")
    tokenizer = AutoTokenizer.from_pretrained(str(anti_expert_dir))
    model = AutoModelForCausalLM.from_pretrained(str(anti_expert_dir), dtype=torch.float32)
    model.get_input_embeddings().weight.requires_grad_(False)  # same token space as the anti-expert
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    model.train()
    encoded = [_chat_ids(tokenizer, r.prompt, r.completion) for r in rows]
    steps = epochs * ((len(encoded) + batch_size - 1) // batch_size)
    bar = tqdm(total=steps, desc="tune expert", disable=not progress)
    loss = torch.tensor(0.0)
    for _ in range(epochs):
        for batch in _batches(encoded, batch_size, rng):
            ids, mask = _pad([b[0] for b in batch], tokenizer.pad_token_id)
            labels = ids.clone()
            for i, (_, start) in enumerate(batch):
                labels[i, :start] = -100  # learn the answer, not the question
            labels[mask == 0] = -100
            loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
            opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            bar.set_postfix(loss=f"{loss.item():.3f}")
            bar.update()
    bar.close()
    model.eval()
    return _save(
        model,
        tokenizer,
        Path(out_dir),
        {
            "kind": "expert",
            "anti_expert": str(anti_expert_dir),
            "examples": len(rows),
            "epochs": epochs,
            "final_loss": loss.item(),
        },
    )
