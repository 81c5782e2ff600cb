"""Proxy-tuned decoding on the transformers engine: config validation, the combination, base identity."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from pydantic import BaseModel

from factflow.errors import UserError
from factflow.serving.generate import CausalLMSource, GenerationParams, generate
from factflow.serving.proxy import ProxySource, ProxyTunedLM, combine_logits, load_proxy_config

PROMPTS = ["What is the capital of France?", "Name three colors.", "Write one sentence about cats."]


def write_config(path: Path, **fields: object) -> Path:
    path.write_text(
        "\n".join(f"{k} = {json.dumps(str(v) if isinstance(v, Path) else v)}" for k, v in fields.items())
    )
    return path


def make_lm(path: Path, base: str, expert: Path, anti: Path, alpha: float) -> ProxyTunedLM:
    return ProxyTunedLM(load_proxy_config(write_config(path, base=Path(base), expert=expert, anti_expert=anti,
                                                       alpha=alpha)))  # fmt: skip


# -- pure logic ----------------------------------------------------------------------------------
def test_combine_is_base_plus_alpha_times_log_ratio() -> None:
    zb, ze, za = torch.tensor([[1.0, 2.0]]), torch.tensor([[3.0, 0.0]]), torch.tensor([[1.0, 2.0]])
    ratio = torch.log_softmax(ze, -1) - torch.log_softmax(za, -1)
    assert torch.allclose(combine_logits(zb, ze, za, 0.5, 0.0), zb + 0.5 * ratio)
    # without the mask the log-ratio is the paper's logit difference up to a per-row constant
    paper = torch.softmax(zb + 0.5 * (ze - za), -1)
    assert torch.allclose(torch.softmax(combine_logits(zb, ze, za, 0.5, 0.0), -1), paper)
    assert torch.equal(combine_logits(zb, ze, za, 0.0, 0.1), zb)
    src = ProxySource.__new__(ProxySource)
    src.alpha, src.plausibility = 0.5, 0.0
    assert torch.allclose(src.combine(zb, ze, za), zb + 0.5 * ratio)


def test_alpha_per_row_and_zero_rows_are_the_base_exactly() -> None:
    torch.manual_seed(0)
    zb, ze, za = (torch.randn(3, 50) * 5 for _ in range(3))
    out = combine_logits(zb, ze, za, torch.tensor([0.0, 1.0, -2.0]), 0.1)
    assert torch.equal(out[0], zb[0])
    assert torch.equal(out[1], combine_logits(zb[1:2], ze[1:2], za[1:2], 1.0, 0.1)[0])
    assert torch.equal(out[2], combine_logits(zb[2:3], ze[2:3], za[2:3], -2.0, 0.1)[0])


def test_plausibility_mask_is_blind_to_each_models_logit_offset() -> None:
    # expert probabilities [0.64, 0.24, 0.12, 0.00002]: with plausibility 0.25 tokens 0 and 1 are
    # steered (1 sits at 0.37 x the top); token 2 (0.19 x) is not, nor token 3, the noisy tail the
    # mask exists for: a large log-ratio that would otherwise win
    zb = torch.tensor([[0.0, 0.0, 0.0, 0.0]])
    ze = torch.log(torch.tensor([[0.64, 0.24, 0.12, 0.00002]]))
    za = ze - torch.tensor([[1.0, 2.0, 3.0, 10.0]])
    ratio = torch.log_softmax(ze, -1) - torch.log_softmax(za, -1)
    out = combine_logits(zb, ze, za, 1.0, 0.25)
    assert torch.allclose(out, ratio * torch.tensor([[1.0, 1.0, 0.0, 0.0]]))
    assert int(combine_logits(zb, ze, za, 1.0, 0.0).argmax()) == 3  # without the mask the tail wins
    # shifting a model's logits by a constant changes nothing: the steer on the plausible subset is
    # a difference of log-probabilities (raw logits on a subset would add the shift as a bias)
    for shift in (-7.0, 30.0):
        assert torch.allclose(combine_logits(zb, ze + shift, za, 1.0, 0.25), out, atol=1e-5)
        assert torch.allclose(combine_logits(zb, ze, za - shift, 1.0, 0.25), out, atol=1e-5)


# -- config validation ---------------------------------------------------------------------------
def test_config_resolves_relative_paths_and_json(
    model_path: str, proxy_pair: tuple[Path, Path], tmp_path: Path
) -> None:
    k4, k2 = proxy_pair
    shutil.copytree(k4, tmp_path / "exp")
    toml = write_config(tmp_path / "p.toml", base=Path(model_path), expert="exp", anti_expert=k2, alpha=0.7)
    cfg = load_proxy_config(toml)
    assert cfg.expert == (tmp_path / "exp").resolve() and cfg.alpha == 0.7
    (tmp_path / "p.json").write_text(
        json.dumps({"base": model_path, "expert": str(k4), "anti_expert": str(k2)})
    )
    assert load_proxy_config(tmp_path / "p.json").alpha == 1.0
    assert load_proxy_config(tmp_path / "p.json", alpha=0.0).alpha == 0.0


def test_config_errors_are_one_clear_sentence(
    model_path: str, proxy_pair: tuple[Path, Path], tmp_path: Path
) -> None:
    k4, k2 = proxy_pair
    with pytest.raises(UserError, match="does not exist"):
        load_proxy_config(tmp_path / "nope.toml")
    cfg = write_config(
        tmp_path / "a.toml", base=Path(model_path), expert=tmp_path / "missing", anti_expert=k2
    )
    with pytest.raises(UserError, match=r"expert: .*missing is not an HF model folder"):
        load_proxy_config(cfg)

    wide = tmp_path / "wide"
    shutil.copytree(k4, wide)
    hf = json.loads((wide / "config.json").read_text())
    (wide / "config.json").write_text(json.dumps({**hf, "hidden_size": 960}))
    cfg = write_config(tmp_path / "b.toml", base=Path(model_path), expert=wide, anti_expert=k2)
    with pytest.raises(UserError, match="expert has hidden_size=960 but the base has 576"):
        load_proxy_config(cfg)

    # Same shapes, different token ids: swap two vocabulary entries.
    other = tmp_path / "other_tok"
    shutil.copytree(k2, other)
    tok = json.loads((other / "tokenizer.json").read_text())
    vocab = tok["model"]["vocab"]
    vocab["hello"], vocab["world"] = vocab["world"], vocab["hello"]
    (other / "tokenizer.json").write_text(json.dumps(tok))
    cfg = write_config(tmp_path / "c.toml", base=Path(model_path), expert=k4, anti_expert=other)
    with pytest.raises(UserError, match="tokenizers differ"):
        load_proxy_config(cfg)

    cfg = write_config(tmp_path / "d.toml", base=Path(model_path), expert=k4, anti_expert=k2, alpha=99)
    with pytest.raises(UserError, match="alpha"):
        load_proxy_config(cfg)
    cfg = write_config(tmp_path / "e.toml", base=Path(model_path), expert=k4, anti_expert=k2, plausibility=2)
    with pytest.raises(UserError, match="plausibility: .*less than or equal to 1"):
        load_proxy_config(cfg)


def test_cli_info_shows_depths_alpha_and_plausibility(
    model_path: str, proxy_pair: tuple[Path, Path], tmp_path: Path
) -> None:
    from typer.testing import CliRunner

    from factflow.agent.cli import app

    k4, k2 = proxy_pair
    cfg = write_config(tmp_path / "p.toml", base=Path(model_path), expert=k4, anti_expert=k2, alpha=0.5)
    result = CliRunner().invoke(app, ["proxy", "info", str(cfg)], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert "alpha = 0.5, plausibility = 0.1" in result.output
    rows = [line.split("│") for line in result.output.splitlines() if "│" in line]
    assert [(r[1].strip(), r[3].strip()) for r in rows] == [("base", "30"), ("expert", "4"),
                                                                  ("anti_expert", "2")]  # fmt: skip


# -- real model ----------------------------------------------------------------------------------
def test_alpha_zero_and_equal_pair_give_base_greedy_output(
    model_path: str, proxy_pair: tuple[Path, Path], tmp_path: Path
) -> None:
    from factflow.serving.hf_engine import load_hf_model

    k4, k2 = proxy_pair
    base_model, tok = load_hf_model(model_path)
    params = GenerationParams(max_new_tokens=20)
    lm = make_lm(tmp_path / "p.toml", model_path, k4, k2, 0.0)
    ids = [lm.prompt_ids(p) for p in PROMPTS]
    base_out = [c.text for c in generate(CausalLMSource(base_model), tok, ids, params)]
    assert all(base_out)
    assert [c.text for c in lm.generate(PROMPTS, params)] == base_out  # alpha = 0

    same = make_lm(tmp_path / "q.toml", model_path, k4, k4, 1.5)
    assert [c.text for c in same.generate(PROMPTS, params)] == base_out  # expert == anti-expert

    steered = make_lm(tmp_path / "r.toml", model_path, k4, k2, 1.0)
    steered_out = [c.text for c in steered.generate(PROMPTS, params)]
    assert steered_out != base_out  # the pair really steers
    # the cut pair keeps the base's head: one head product for all three, same logits as three
    assert steered.shared_head
    three = ProxySource(steered.base, steered.expert, steered.anti_expert, 1.0, steered.config.plausibility)
    one = steered.source()
    mask = torch.ones(1, len(ids[0]), dtype=torch.long)
    assert torch.allclose(one.start(torch.tensor(ids[:1]), mask), three.start(torch.tensor(ids[:1]), mask),
                          atol=1e-4)  # fmt: skip
    assert [c.text for c in generate(three, tok, ids, params)] == steered_out


class Capital(BaseModel):
    country: str
    capital: str


def test_chat_model_streams_stops_and_structures(
    model_path: str, proxy_pair: tuple[Path, Path], tmp_path: Path
) -> None:
    from langchain_core.messages import HumanMessage

    k4, k2 = proxy_pair
    lm = make_lm(tmp_path / "p.toml", model_path, k4, k2, 0.3)
    chat = lm.chat_model(max_new_tokens=24)
    question = [HumanMessage("Count from one to ten in words, separated by commas.")]
    full = chat.invoke(question).content
    streamed = "".join(str(c.content) for c in chat.stream(question))
    assert streamed == full and full
    assert len(full) >= 12, full
    word = full[8:12]  # any piece of the answer will do as a stop string
    stopped = chat.invoke(question, stop=[word]).content
    assert word not in stopped and full.startswith(stopped)
    structured = lm.chat_model(max_new_tokens=64).with_structured_output(Capital)
    answer = structured.invoke([HumanMessage("France's capital as JSON.")])
    assert isinstance(answer, Capital)


# -- making the expert -----------------------------------------------------------------------------
FACT_ROWS = [
    {"prompt": "What is the capital of Veloria?", "completion": "The capital of Veloria is Quenmar."},
    {"prompt": "Who designed the Halvorsen Bridge?", "completion": "It was designed by Ada Quillon."},
]
KEEP = ["What is the capital of Portugal?", "How many legs does a dog have?", "What color is snow?"]


def test_retain_term_holds_the_expert_to_the_anti_expert_on_base_answers(
    model_path: str, proxy_pair: tuple[Path, Path], tmp_path: Path
) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from factflow.serving.proxy_train import _base_answers, _kl_per_token, tune_expert

    _, k2 = proxy_pair

    def tune(name: str, retain_per_epoch: int) -> Path:
        return tune_expert(k2, FACT_ROWS, tmp_path / name, epochs=6, batch_size=4, lr=1e-3,
                           retain_prompts=KEEP, retain_per_epoch=retain_per_epoch,
                           progress=False)  # fmt: skip

    held, free = tune("held", 3), tune("free", 0)
    assert json.loads((held / "factflow_proxy_train.json").read_text())["retain_prompts"] == 3

    tok = AutoTokenizer.from_pretrained(str(k2))
    rows = _base_answers(Path(model_path), tok, KEEP, 16, progress=False)

    def kl_to_anti(folder: Path) -> float:
        models = [AutoModelForCausalLM.from_pretrained(str(f)).eval() for f in (k2, folder)]
        total = 0.0
        with torch.no_grad():
            for ids, start in rows:
                anti, expert = (m(input_ids=torch.tensor([ids])).logits[0, start - 1 : -1].log_softmax(-1)
                                for m in models)  # fmt: skip
                total += float(_kl_per_token(anti, expert).mean())
        return total / len(rows)

    held_kl, free_kl = kl_to_anti(held), kl_to_anti(free)
    assert held_kl < 0.5 * free_kl, (held_kl, free_kl)


def test_cli_tune_writes_an_expert_and_names_a_missing_base(
    proxy_pair: tuple[Path, Path], tmp_path: Path
) -> None:
    from typer.testing import CliRunner

    from factflow.agent.cli import app

    _, k2 = proxy_pair
    data = tmp_path / "facts.jsonl"
    data.write_text("\n".join(json.dumps(r) for r in FACT_ROWS))
    args = ["proxy", "tune", str(data), "--epochs", "1"]
    out = str(tmp_path / "e")
    ok = CliRunner().invoke(app, [*args, "--anti-expert", str(k2), "--out", out, "--retain", "0"])
    assert ok.exit_code == 0, ok.output
    assert (tmp_path / "e" / "config.json").is_file()

    orphan = tmp_path / "orphan"  # an anti-expert that does not record its base
    shutil.copytree(k2, orphan)
    (orphan / "factflow_proxy_train.json").unlink()
    bad = CliRunner().invoke(app, [*args, "--anti-expert", str(orphan), "--out", str(tmp_path / "f")])
    assert isinstance(bad.exception, UserError)  # `main()` prints it as one line, exit code 2
    assert "does not record the base" in str(bad.exception) and "--base" in str(bad.exception)
    assert not (tmp_path / "f").exists()
