"""LoReFT: the intervention's algebra, the adapter folder, hooks, errors, and one short real training run."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch

from factflow.errors import UserError
from factflow.serving.reft import (
    BaseIdentity,
    Example,
    LoReFT,
    ReftAdapter,
    ReftConfig,
    TrainConfig,
    load_examples,
    prepare_vllm_adapters,
    prepare_vllm_folder,
    train_reft,
)

FACTS = Path(__file__).resolve().parents[1] / "bench" / "reft_facts.jsonl"


def _orthonormal(r: int, d: int) -> torch.Tensor:
    return torch.linalg.qr(torch.randn(d, r, dtype=torch.float64)).Q.T.float()  # (r, d)


def test_loreft_is_identity_when_wh_plus_b_equals_rh() -> None:
    torch.manual_seed(0)
    iv = LoReFT(64, 4).eval()
    R = _orthonormal(4, 64)  # noqa: N806
    iv.set_weights(R, R.clone(), torch.zeros(4))
    h = torch.randn(3, 5, 64)
    with torch.no_grad():
        assert torch.allclose(iv(h), h, atol=1e-6)
    # and an edit moves h only inside R's row space: h' - h = R^T(...)
    iv.set_weights(R, torch.randn(4, 64), torch.randn(4))
    with torch.no_grad():
        diff = iv(h) - h
    assert torch.allclose(diff @ R.T @ R, diff, atol=1e-5)


def test_loreft_matches_equation_and_counts_params() -> None:
    torch.manual_seed(1)
    iv = LoReFT(32, 3)
    h = torch.randn(7, 32)
    R, W, b = iv.R.detach(), iv.source.weight.detach(), iv.source.bias.detach()  # noqa: N806
    want = h + (h @ W.T + b - h @ R.T) @ R
    assert torch.allclose(iv(h), want, atol=1e-6)
    adapter = ReftAdapter(ReftConfig(layers=[0, 2], rank=3), BaseIdentity(
        architecture="X", hidden_size=32, num_layers=3, config_hash="0"
    ))
    assert adapter.trainable_params() == 2 * (2 * 3 * 32 + 3)


def test_rank_and_config_validation() -> None:
    with pytest.raises(UserError, match="rank"):
        LoReFT(16, 17)
    with pytest.raises(ValueError):
        ReftConfig(layers=[3, 3])
    with pytest.raises(ValueError):
        ReftConfig(layers=[1], positions="middle")  # type: ignore[arg-type]
    assert ReftConfig(positions="prefix+suffix", tie_positions=False).slots() == ["prefix", "suffix"]


def test_load_examples_errors(tmp_path: Path) -> None:
    assert len(load_examples(FACTS)) == 16
    with pytest.raises(UserError, match="does not exist"):
        load_examples(tmp_path / "nope.jsonl")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "a", "completion": "b"}\n{"prompt": "a"}\n')
    with pytest.raises(UserError, match=r"bad.jsonl:2"):
        load_examples(bad)


@pytest.fixture(scope="module")
def base() -> tuple[str, torch.nn.Module, object]:
    from factflow.serving.hf_engine import load_hf_model
    from factflow.serving.models import resolve_model
    from factflow.settings import Settings

    path = resolve_model(Settings())
    model, tok = load_hf_model(path)
    return path, model, tok


def _state_hash(model: torch.nn.Module) -> str:
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def test_short_training_end_to_end(base, tmp_path: Path) -> None:
    """Real model: train 3 epochs, R stays orthonormal, base untouched, hooks edit and un-edit."""
    path, model, tok = base
    before = _state_hash(model)
    examples = load_examples(FACTS)[:4]
    out = train_reft(
        path, examples, ReftConfig(layers=[3, 10], rank=2), tmp_path / "ad",
        train=TrainConfig(epochs=3, lr=1e-2, batch_size=2, grad_accum=2, stop_loss=None),
        model=model, tokenizer=tok, progress=False,
    )  # fmt: skip
    assert _state_hash(model) == before
    report = json.loads((out / "training.json").read_text())
    assert report["trainable_params"] == 2 * (2 * 2 * 576 + 2)
    assert report["epochs_run"] == 3 and report["train_losses"][-1] < report["train_losses"][0]

    adapter = ReftAdapter.load(out)
    for iv in adapter.interventions.values():
        R = iv.R.detach()  # noqa: N806
        assert torch.allclose(R @ R.T, torch.eye(2), atol=1e-5)
    ids = torch.tensor([tok("The capital of Veldoria is")["input_ids"]])
    with torch.no_grad():
        plain = model(input_ids=ids).logits
        with adapter.attach(model):
            edited = model(input_ids=ids).logits
        again = model(input_ids=ids).logits
    assert not torch.allclose(plain, edited, atol=1e-4)
    assert torch.equal(plain, again)  # removing the hooks restores the base exactly


def test_prefix_suffix_edits_only_prompt_spans(base) -> None:
    _, model, tok = base
    cfg = ReftConfig(layers=[29], rank=2, positions="prefix+suffix", prefix=1, suffix=1, tie_positions=False)
    adapter = ReftAdapter.for_model(cfg, model)
    for iv in adapter.interventions.values():
        torch.nn.init.normal_(iv.source.weight, std=1.0)
    ids = torch.tensor([tok("one two three four five six")["input_ids"]])
    with torch.no_grad():
        plain = model(input_ids=ids, output_hidden_states=True).hidden_states[-1]
        with adapter.attach(model):
            edited = model(input_ids=ids, output_hidden_states=True).hidden_states[-1]
    changed = (plain - edited).abs().amax(-1)[0] > 1e-5  # (T,)
    # layer 29 is the last: only the first and last prompt positions change
    assert changed[0] and changed[-1] and not changed[1:-1].any()


def test_bad_inputs_give_clear_errors(base, tmp_path: Path) -> None:
    path, model, tok = base
    with pytest.raises(UserError, match="out of range"):
        ReftAdapter.for_model(ReftConfig(layers=[30]), model)
    with pytest.raises(UserError, match="does not exist"):
        ReftAdapter.load(tmp_path / "missing")
    folder = ReftAdapter.for_model(ReftConfig(layers=[1], rank=2), model).save(tmp_path / "ok")
    (folder / "adapter.safetensors").unlink()
    with pytest.raises(UserError, match="has no adapter.safetensors"):
        ReftAdapter.load(folder)
    # an adapter for a different base (other hidden size / layer count) refuses to attach
    other = ReftAdapter(ReftConfig(layers=[1], rank=2), BaseIdentity(
        architecture="LlamaForCausalLM", hidden_size=2048, num_layers=24, config_hash="deadbeef"
    )).save(tmp_path / "other")
    with pytest.raises(UserError, match="trained on LlamaForCausalLM \\(hidden 2048"):
        ReftAdapter.load(other).attach(model)
    with pytest.raises(UserError, match="trained on"):
        prepare_vllm_folder(path, other, tmp_path / "vllm")
    with pytest.raises(UserError, match="no training examples"):
        train_reft(path, [], ReftConfig(layers=[1]), tmp_path / "x", model=model, tokenizer=tok)
    with pytest.raises(ValueError):
        Example(prompt="", completion="x")


def test_prepare_vllm_folder(base, tmp_path: Path) -> None:
    path, model, _ = base
    ad = ReftAdapter.for_model(ReftConfig(layers=[2], rank=2), model).save(tmp_path / "ad")
    out = prepare_vllm_folder(path, ad, tmp_path / "served")
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["architectures"] == ["FactflowReftLlamaForCausalLM"]
    assert cfg["factflow_reft_adapter"] == str(ad.resolve())
    assert (out / "model.safetensors").is_symlink() and (out / "tokenizer.json").exists()
    # the identity survives the rewrite, so the vLLM model accepts its own folder
    from transformers import AutoConfig

    ReftAdapter.load(ad).check_base(AutoConfig.from_pretrained(out))
    assert cfg["factflow_reft_adapters"] == {"ad": str(ad.resolve())} and cfg["factflow_reft_default"] == "ad"
    # prefix+suffix adapters are served too (positions come from each request's prompt length)
    ps = ReftAdapter.for_model(ReftConfig(layers=[2], rank=2, positions="prefix+suffix"), model)
    two = prepare_vllm_adapters(path, {"all": ad, "ps": ps.save(tmp_path / "ps")}, tmp_path / "served2")
    cfg2 = json.loads((two / "config.json").read_text())
    assert sorted(cfg2["factflow_reft_adapters"]) == ["all", "ps"] and cfg2["factflow_reft_default"] is None
    with pytest.raises(UserError, match="not 'base'"):
        prepare_vllm_adapters(path, {"base": ad}, tmp_path / "served3")


def test_served_folders_are_keyed_by_content_not_file_name(base, tmp_path: Path) -> None:
    from factflow.serving.reft import reft_served_model

    path, model, _ = base
    one = ReftAdapter.for_model(ReftConfig(layers=[2], rank=2), model).save(tmp_path / "a" / "facts")
    two = ReftAdapter.for_model(ReftConfig(layers=[3], rank=2), model).save(tmp_path / "b" / "facts")
    home = tmp_path / "home"
    first, second = reft_served_model(path, one, home), reft_served_model(path, two, home)
    assert first != second  # same folder name, different adapters: two prepared folders
    assert Path(first).parent == home / "vllm" and Path(first).name.startswith("reft-")
    assert json.loads((Path(second) / "config.json").read_text())["factflow_reft_adapter"] == str(two)
    assert reft_served_model(path, one, home) == first  # preparing again reuses the folder


def test_pairs_end_with_the_templates_end_of_turn(base) -> None:
    from factflow.serving.training import encode_pair, end_of_turn, pad_pairs

    _, _, tok = base
    assert end_of_turn(tok) == "<|im_end|>"  # what SmolLM2's ChatML template closes a turn with
    pair = encode_pair(tok, "Where is Veloria?", "Far away.")
    assert tok.decode(pair.ids[pair.start :]) == "Far away.<|im_end|>"
    turn = [{"role": "user", "content": "Where is Veloria?"}]
    head = tok.apply_chat_template(turn, add_generation_prompt=True, tokenize=True, return_dict=False)
    assert pair.ids[: pair.start] == list(head)
    batch = pad_pairs([pair, encode_pair(tok, "Hi?", "Hello.")], pad_id=0)
    assert batch.ids.shape == batch.labels.shape and int(batch.starts[0]) == pair.start
    assert (batch.labels[0, : pair.start] == -100).all()  # no loss on the question
    assert batch.labels[0, pair.start : len(pair.ids)].tolist() == pair.ids[pair.start :]


def test_stacked_adapters_edit_each_token_with_its_own_entry() -> None:
    """vLLM's stacked form (serving/vllm_reft.py): token t gets LoReFT of entry[t], entry 0 none."""
    pytest.importorskip("vllm")
    from factflow.serving.vllm_reft import StackedLoReFT

    torch.manual_seed(0)
    d = 16
    ivs = [LoReFT(d, r).eval() for r in (2, 4)]  # different ranks: padded with zero rows
    with torch.no_grad():
        for iv in ivs:
            iv.source.weight.normal_()
            iv.source.bias.normal_()
    blocks = [(iv.R.detach(), iv.source.weight.detach(), iv.source.bias.detach()) for iv in ivs]
    entries = torch.zeros(10, dtype=torch.long)
    # entry 2 belongs to an adapter that does not edit this layer
    stack = StackedLoReFT([blocks[0], None, blocks[1]], d, 4, entries)
    h = torch.randn(6, d)
    entries[:6] = torch.tensor([0, 1, 2, 3, 1, 3])
    with torch.no_grad():
        got = h + stack.delta(h)
        want = torch.stack([h[0], ivs[0](h[1]), h[2], ivs[1](h[3]), ivs[0](h[4]), ivs[1](h[5])])
    assert torch.allclose(got, want, atol=1e-5)
    assert torch.equal(got[0], h[0]) and torch.equal(got[2], h[2])  # no entry: untouched exactly


def test_token_entries_follow_the_per_token_rules() -> None:
    """vLLM's entry assignment (one vectorised pass) = the rules token by token, on random batches."""
    pytest.importorskip("vllm")
    from factflow.serving.vllm_reft import RowEdit, token_entries

    gen = torch.Generator().manual_seed(0)

    def rand(hi: int) -> int:
        return int(torch.randint(0, hi, (1,), generator=gen))

    for _ in range(50):
        rows, spans, positions, start = [], [], [], rand(3)
        positions += [0] * start  # tokens before the first row's span get no edit
        for _ in range(1 + rand(6)):
            plen, done = 1 + rand(20), rand(25)
            count = 1 if done >= plen else min(plen - done, 1 + rand(12))  # decode: 1 token; prefill: a chunk
            pre, suf = rand(5), rand(5)
            edit = [RowEdit(), RowEdit(first=1 + rand(9), all=True),
                    RowEdit(first=3, second=3, prefix=pre, suffix=suf, prompt_len=plen),  # tied
                    RowEdit(first=5, second=6, prefix=pre, suffix=suf, prompt_len=plen)][rand(4)]  # fmt: skip
            spans.append((len(positions), len(positions) + count))
            positions += list(range(done, done + count))
            rows.append(edit)
        got = token_entries(torch.tensor(positions), spans, rows).tolist()
        want = [0] * len(positions)
        for (s, e), r in zip(spans, rows, strict=True):
            for t in range(s, e):
                p = positions[t]
                if r.all:
                    want[t] = r.first
                elif r.prompt_len - r.suffix <= p < r.prompt_len:
                    want[t] = r.second  # suffix wins where the spans overlap, as on transformers
                elif p < min(r.prefix, r.prompt_len):
                    want[t] = r.first
        assert got == want


def test_stacked_entries_are_rewritten_in_place() -> None:
    """A run-time load writes into a slot without changing any buffer's shape; None clears it."""
    pytest.importorskip("vllm")
    from factflow.serving.vllm_reft import StackedLoReFT

    torch.manual_seed(1)
    d = 8
    iv = LoReFT(d, 2).eval()
    with torch.no_grad():
        iv.source.bias.normal_()
    block = (iv.R.detach(), iv.source.weight.detach(), iv.source.bias.detach())
    entries = torch.zeros(4, dtype=torch.long)
    stack = StackedLoReFT([None, None], d, 4, entries)
    shapes = [t.shape for t in (stack.A, stack.b, stack.R)]
    h = torch.randn(2, d)
    entries[:2] = torch.tensor([2, 1])
    stack.write(2, block)
    with torch.no_grad():
        got = h + stack.delta(h)
        assert torch.allclose(got[0], iv(h[:1])[0], atol=1e-5) and torch.equal(got[1], h[1])
    stack.write(2, None)
    assert torch.equal(stack.delta(h), torch.zeros(2, d))
    assert [t.shape for t in (stack.A, stack.b, stack.R)] == shapes


def test_reft_flag_specs(tmp_path: Path) -> None:
    from factflow.serving.reft import parse_adapter_specs

    assert parse_adapter_specs([str(tmp_path / "facts")]) == ({"facts": tmp_path / "facts"}, "facts")
    named = parse_adapter_specs(["a=/x/one", "b=/x/two"])
    assert named == ({"a": Path("/x/one"), "b": Path("/x/two")}, None)  # unnamed requests: the base
    with pytest.raises(UserError, match="NAME=DIR"):
        parse_adapter_specs(["a=/x/one", "/x/two"])
    with pytest.raises(UserError, match="twice"):
        parse_adapter_specs(["a=/x/one", "a=/x/two"])


def test_request_rows_follow_vllms_batch_updates() -> None:
    """SteeringArgs keeps row -> request settings through adds, removals, moves and swaps."""
    pytest.importorskip("vllm")
    from vllm import SamplingParams
    from vllm.v1.sample.logits_processor import BatchUpdate, MoveDirectionality

    from factflow.serving.vllm_steering import ROWS, SteeringArgs, request_settings

    proc = SteeringArgs.__new__(SteeringArgs)  # __init__ only resets the shared table
    SteeringArgs.__init__(proc, None, torch.device("cpu"), False)  # type: ignore[arg-type]

    def params(**extra: object) -> SamplingParams:
        return SamplingParams(extra_args=dict(extra) or None)

    proc.update_state(BatchUpdate(3, [], [(0, params(factflow_adapter="a"), [1, 2, 3], []),
                                         (1, params(), [1], []),
                                         (2, params(factflow_alpha=0), [1, 2], [])], []))  # fmt: skip
    assert [(r.adapter, r.alpha, r.prompt_len) for r in request_settings(3)] == [
        ("a", None, 3), (None, None, 1), (None, 0.0, 2)
    ]
    proc.update_state(BatchUpdate(2, [1], [], [(2, 1, MoveDirectionality.UNIDIRECTIONAL)]))
    assert [r.alpha for r in request_settings(2)] == [None, 0.0] and 2 not in ROWS.rows
    proc.update_state(BatchUpdate(2, [], [], [(0, 1, MoveDirectionality.SWAP)]))
    assert [r.adapter for r in request_settings(2)] == [None, "a"]
    with pytest.raises(ValueError, match="factflow_alpha"):
        SteeringArgs.validate_params(params(factflow_alpha="strong"))
