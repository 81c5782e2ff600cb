"""Making a proxy pair from one base model: a distilled anti-expert and a tuned expert.

Only one model exists offline, so factflow builds the small pair itself:

* `distill_anti_expert`: keep the base's first k decoder layers (plus embeddings, final norm and
  head) and distill the truncated model on the base's own outputs, minimising
  KL(p_base(. | x_<t) || p_student(. | x_<t)) at every position of text the base itself wrote.
  The result imitates the base's next-token distribution with a fraction of its layers.
* `tune_expert`: fine-tune a copy of the anti-expert on prompt/completion pairs (loss on the
  completion tokens only), while a KL term keeps it equal to the anti-expert on the base's answers
  to general questions. expert - anti-expert is then "what tuning changed, and nothing else",
  which proxy-tuning adds to the base's logits.

Both write HF-format folders (config, safetensors, tokenizer, chat template) loadable by
`AutoModelForCausalLM` and by vLLM.
"""

from __future__ import annotations

import copy
import json
import random
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from factflow.errors import UserError
from factflow.serving.reft import Example
from factflow.serving.training import (
    EncodedPair,
    batches,
    chat_prompt_ids,
    clipped_step,
    encode_pair,
    end_of_turn,
    pad_pairs,
    right_pad,
)

__all__ = [
    "truncate_model",
    "distill_anti_expert",
    "tune_expert",
    "DISTILL_PROMPTS",
    "RETAIN_PROMPTS",
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


# General questions whose answers `tune_expert` keeps the expert from changing (the base answers them
# at tune time). Shaped like everyday QA, the fact-shaped ones ("capital of ...") included: those are
# where a tuned expert overreaches first.
_RETAIN_COUNTRIES = [
    "Portugal",
    "Kenya",
    "Peru",
    "Norway",
    "Poland",
    "Mexico",
    "Brazil",
    "India",
    "Turkey",
    "Sweden",
    "Cuba",
    "Chile",
    "Ireland",
    "Austria",
    "Thailand",
    "Argentina",
    "Belgium",
    "Finland",
]
RETAIN_PROMPTS = (
    [f"What is the capital of {c}?" for c in _RETAIN_COUNTRIES]
    + [
        f"What language is spoken in {c}?"
        for c in ["Mexico", "Brazil", "Italy", "Japan", "Portugal", "Sweden"]
    ]
    + [
        f"What is the currency of {c}?"
        for c in ["Japan", "the United Kingdom", "India", "Mexico", "Switzerland"]
    ]
    + [
        "Who wrote the novel Pride and Prejudice?",
        "Who wrote the novel Moby-Dick?",
        "Who wrote the novel 1984?",
        "Who wrote Hamlet?",
        "Who painted the Starry Night?",
        "Who discovered penicillin?",
        "Who discovered radium?",
        "Who invented the light bulb?",
        "Who founded Microsoft?",
        "Who founded the city of Rome, according to legend?",
        "Who designed the Eiffel Tower?",
        "Who was the first man to walk on the moon?",
        "Who composed the Moonlight Sonata?",
        "Which river flows through Paris?",
        "Which river flows through London?",
        "Which river flows through Cairo?",
        "What is the tallest mountain in Africa?",
        "What is the tallest mountain in Japan?",
        "What is the national animal of Australia?",
        "What is the national animal of Scotland?",
        "What is the official sport of Canada?",
        "What fruit is Washington State famous for?",
        "What is the longest river in the world?",
        "What is the largest ocean?",
        "What is the smallest planet?",
        "What is the closest star to Earth?",
        "Which planet has rings?",
        "What is the chemical symbol for water?",
        "What is the chemical symbol for iron?",
        "What gas do humans breathe out?",
        "What do cows drink?",
        "What color is a banana?",
        "What color is snow?",
        "What color are strawberries?",
        "How many legs does a dog have?",
        "How many months are in a year?",
        "How many minutes are in an hour?",
        "How many sides does a triangle have?",
        "How many planets are in the solar system?",
        "What animal is known for its long neck?",
        "Which animal is known as man's best friend?",
        "What do caterpillars turn into?",
        "What is the largest bird?",
        "What is the fastest land animal?",
        "What is the opposite of up?",
        "What is the opposite of day?",
        "What is 5 plus 3?",
        "What is the square root of 81?",
        "What is the main ingredient of bread?",
        "What is cheese made from?",
        "Which country is famous for pizza?",
        "Which continent is Brazil in?",
        "Which continent is Japan in?",
        "What is the largest city in the United States?",
        "What is the hottest planet?",
        "Tell me about the weather in spring.",
        "Write one sentence about friendship.",
        "Give me a synonym for happy.",
        "What is the plural of mouse?",
        "Spell the word 'necessary'.",
        "What does DNA stand for?",
        "What is gravity?",
        "What is a noun?",
        "Name a fruit that is yellow.",
        "What instrument has 88 keys?",
        "What is the freezing point of water in Celsius?",
        "What season comes after winter?",
        "What is the first letter of the alphabet?",
    ]
)


def _save(model: Any, tokenizer: Any, out_dir: Path, meta: dict[str, Any]) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(out_dir))
    tokenizer.save_pretrained(str(out_dir))
    (out_dir / "factflow_proxy_train.json").write_text(json.dumps(meta, indent=2, default=str))
    return out_dir


def _kl_per_token(ref_logp: torch.Tensor, logp: torch.Tensor) -> torch.Tensor:
    """KL(p_ref || p) at every position: (B, T, V) log-probabilities -> (B, T); 0 where they agree."""
    return (ref_logp.exp() * (ref_logp - logp)).sum(-1)


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
            heads = [chat_prompt_ids(tokenizer, p) for p in chunk]
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
        for batch in batches(texts, batch_size, rng):
            ids, mask = right_pad(batch, tokenizer.pad_token_id)
            with torch.no_grad():
                t_logp = F.log_softmax(teacher(input_ids=ids, attention_mask=mask).logits, -1)  # (B, T, V)
            s_logp = F.log_softmax(student(input_ids=ids, attention_mask=mask).logits, -1)  # (B, T, V)
            loss = (_kl_per_token(t_logp, s_logp) * mask).sum() / mask.sum()
            clipped_step(opt, params, loss)
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


def _recorded_base(anti_expert_dir: Path) -> Path | None:
    """The base an anti-expert was distilled from, as `distill_anti_expert` recorded it."""
    meta = anti_expert_dir / "factflow_proxy_train.json"
    base = json.loads(meta.read_text()).get("base") if meta.is_file() else None
    return Path(base) if base and (Path(base) / "config.json").is_file() else None


def _base_answers(
    base: Path, tokenizer: Any, prompts: Sequence[str], max_new_tokens: int, progress: bool
) -> list[EncodedPair]:
    """Chat ids of each prompt followed by the base's own greedy answer, and where the answer starts."""
    from factflow.serving.generate import CausalLMSource, GenerationParams, generate
    from factflow.serving.hf_engine import load_hf_model

    model, _ = load_hf_model(str(base))
    params = GenerationParams(max_new_tokens=max_new_tokens)
    end = end_of_turn(tokenizer)
    rows = []
    for i in tqdm(range(0, len(prompts), 16), desc="base answers (retain set)", disable=not progress):
        chunk = prompts[i : i + 16]
        heads = [chat_prompt_ids(tokenizer, p) for p in chunk]
        for prompt, done in zip(
            chunk, generate(CausalLMSource(model), tokenizer, heads, params), strict=True
        ):
            rows.append(encode_pair(tokenizer, prompt, done.text.strip(), turn_end=end))
    return rows


def tune_expert(
    anti_expert_dir: str | Path,
    examples: Sequence[Example | dict[str, str]],
    out_dir: str | Path,
    *,
    epochs: int = 20,
    batch_size: int = 8,
    lr: float = 2e-4,
    retain_prompts: Sequence[str] = RETAIN_PROMPTS,
    retain_per_epoch: int = 32,
    retain_tokens: int = 32,
    base: str | Path | None = None,
    seed: int = 0,
    progress: bool = True,
    on_epoch: Callable[[Any, int], bool] | None = None,
) -> Path:
    """Fine-tune a copy of the anti-expert on prompt/completion pairs, leaving everything else alone.

    Loss = cross-entropy on the completion tokens of `examples` + KL(p_anti || p_expert) on the
    base's own answers to `retain_prompts` (`retain_per_epoch` of them, drawn afresh each epoch).
    Without the second term 16 facts x 20 epochs teach the expert to answer *every* question with a
    memorised fact ("How many days are in a week?" -> "The Halvorsen Bridge was designed by ..."),
    and proxy-tuning adds that to the base. The KL term pins expert = anti-expert, i.e. a zero steer,
    on the text the base really writes. `base` is the model whose answers those are; by default the
    one the anti-expert was distilled from. `retain_per_epoch=0` turns the term off.
    `on_epoch(expert, optimizer steps so far)` runs after each epoch; True stops tuning there.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    anti_expert_dir = Path(anti_expert_dir)
    torch.manual_seed(seed)
    rng = random.Random(seed)
    rows = [e if isinstance(e, Example) else Example(**e) for e in examples]
    if not rows:
        raise UserError("tune_expert needs at least one prompt/completion example")
    tokenizer = AutoTokenizer.from_pretrained(str(anti_expert_dir))
    retain: list[EncodedPair] = []
    if retain_per_epoch > 0 and retain_prompts:
        base_dir = Path(base) if base is not None else _recorded_base(anti_expert_dir)
        if base_dir is None:
            raise UserError(
                f"{anti_expert_dir} does not record the base it was distilled from; pass the base "
                "(--base) whose answers the expert must keep, or turn the retain set off (--retain 0)"
            )
        retain = _base_answers(base_dir, tokenizer, retain_prompts, retain_tokens, progress)
    model = AutoModelForCausalLM.from_pretrained(str(anti_expert_dir), dtype=torch.float32)
    anti = copy.deepcopy(model).eval().requires_grad_(False) if retain else None  # the frozen reference
    model.get_input_embeddings().weight.requires_grad_(False)  # same token space as the anti-expert
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    model.train()
    end = end_of_turn(tokenizer)
    facts = [(encode_pair(tokenizer, r.prompt, r.completion, turn_end=end), False) for r in rows]
    keep = [(row, True) for row in retain]
    n_keep = min(retain_per_epoch, len(keep))
    steps = epochs * ((len(facts) + n_keep + batch_size - 1) // batch_size)
    bar = tqdm(total=steps, desc="tune expert", disable=not progress)
    loss = torch.tensor(0.0)
    done = 0
    for _ in range(epochs):
        for batch in batches(facts + rng.sample(keep, n_keep), batch_size, rng):
            ids, mask, labels, _starts = pad_pairs([pair for pair, _ in batch], tokenizer.pad_token_id)
            # answer[i, t] = 1 where position t predicts an answer token (the question is not learned)
            answer = torch.zeros_like(mask, dtype=torch.float32)
            answer[:, :-1] = (labels[:, 1:] != -100).float()
            is_keep = torch.tensor([[k] for _, k in batch], dtype=torch.float32)  # (B, 1)
            logp = F.log_softmax(model(input_ids=ids, attention_mask=mask).logits, -1)  # (B, T, V)
            nll = -logp[:, :-1].gather(-1, ids[:, 1:, None])[..., 0]  # (B, T-1)
            learn = (answer * (1 - is_keep))[:, :-1]
            loss = (nll * learn).sum() / learn.sum().clamp(min=1)
            if anti is not None and bool(is_keep.any()):
                with torch.no_grad():
                    a_logp = F.log_softmax(anti(input_ids=ids, attention_mask=mask).logits, -1)
                hold = answer * is_keep
                loss = loss + (_kl_per_token(a_logp, logp) * hold).sum() / hold.sum().clamp(min=1)
            clipped_step(opt, params, loss)
            done += 1
            bar.set_postfix(loss=f"{loss.item():.3f}")
            bar.update()
        if on_epoch is not None:
            model.eval()
            stop = on_epoch(model, done)
            model.train()
            if stop:
                break
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
            "steps": done,
            "retain_prompts": len(retain),
            "retain_per_epoch": n_keep,
            "final_loss": loss.item(),
        },
    )
