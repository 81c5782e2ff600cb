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
from factflow.serving.proxy import ProxySource, ProxyTunedLM, load_proxy_config
from factflow.serving.proxy_train import truncate_model

PROMPTS = ["What is the capital of France?", "Name three colors.", "Write one sentence about cats."]


@pytest.fixture(scope="module")
def pair(model_path: str, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("pair")
    return truncate_model(model_path, 4, root / "k4"), truncate_model(model_path, 2, root / "k2")


def write_config(path: Path, **fields: object) -> Path:
    path.write_text(
        "\n".join(f"{k} = {json.dumps(str(v) if isinstance(v, Path) else v)}" for k, v in fields.items())
    )
    return path


def make_lm(path: Path, base: str, expert: Path, anti: Path, alpha: float) -> ProxyTunedLM:
    return ProxyTunedLM(load_proxy_config(write_config(path, base=Path(base), expert=expert, anti_expert=anti,
                                                       alpha=alpha)))  # fmt: skip


# -- pure logic ----------------------------------------------------------------------------------
def test_combine_is_base_plus_alpha_times_difference() -> None:
    src = ProxySource.__new__(ProxySource)
    src.alpha = 0.5
    zb, ze, za = torch.tensor([[1.0, 2.0]]), torch.tensor([[3.0, 0.0]]), torch.tensor([[1.0, 2.0]])
    assert torch.equal(src.combine(zb, ze, za), torch.tensor([[2.0, 1.0]]))
    src.alpha = 0.0
    assert torch.equal(src.combine(zb, ze, za), zb)


# -- config validation ---------------------------------------------------------------------------
def test_config_resolves_relative_paths_and_json(
    model_path: str, pair: tuple[Path, Path], tmp_path: Path
) -> None:
    k4, k2 = pair
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
    model_path: str, pair: tuple[Path, Path], tmp_path: Path
) -> None:
    k4, k2 = pair
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


# -- real model ----------------------------------------------------------------------------------
def test_alpha_zero_and_equal_pair_give_base_greedy_output(
    model_path: str, pair: tuple[Path, Path], tmp_path: Path
) -> None:
    from factflow.serving.hf_engine import load_hf_model

    k4, k2 = pair
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
    assert [c.text for c in steered.generate(PROMPTS, params)] != base_out  # the pair really steers


class Capital(BaseModel):
    country: str
    capital: str


def test_chat_model_streams_stops_and_structures(
    model_path: str, pair: tuple[Path, Path], tmp_path: Path
) -> None:
    from langchain_core.messages import HumanMessage

    k4, k2 = pair
    lm = make_lm(tmp_path / "p.toml", model_path, k4, k2, 0.3)
    chat = lm.chat_model(max_new_tokens=24)
    question = [HumanMessage("Count from one to ten in words, separated by commas.")]
    full = chat.invoke(question).content
    streamed = "".join(str(c.content) for c in chat.stream(question))
    assert streamed == full and full
    word = full.split(",")[1].strip() if "," in full else full.split()[1]
    stopped = chat.invoke(question, stop=[word]).content
    assert word not in stopped and full.startswith(stopped)
    answer = chat.with_structured_output(Capital).invoke([HumanMessage("France's capital as JSON.")])
    assert isinstance(answer, Capital)
