"""Every `factflow` command a user types, run through the CLI on the real model and the real Chroma.

Budgets are tiny (one epoch on two facts, a two-layer anti-expert, 8-token answers): these tests
check that each command works end to end, prints what it says, and turns bad input into a
one-sentence `UserError` (asserted by its message), not that training learns anything.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner, Result

from factflow.agent.cli import app
from factflow.errors import UserError

FACTS = [
    {"prompt": "What is the capital of Veldoria?", "completion": "Marnecq."},
    {"prompt": "Who invented the zorblatt engine?", "completion": "Ilsa Trevanne."},
]
# Rich tables unwrapped; short answers; one torch thread in subprocesses (on a loaded 2-core box two
# threads made `reft eval` 8x slower: 195 s against 25 s)
WIDE = {"COLUMNS": "250", "FACTFLOW_MAX_NEW_TOKENS": "8", "OMP_NUM_THREADS": "1"}


@pytest.fixture(scope="module", autouse=True)
def _one_thread(one_torch_thread: None) -> None:
    """The same for the in-process commands; autouse, so the module's training fixtures get it too."""


def cli(*args: str, input: str | None = None) -> Result:
    return CliRunner().invoke(app, list(args), input=input, env=WIDE)


def ok(*args: str) -> str:
    result = cli(*args)
    assert result.exit_code == 0, (result.output, result.exception)
    return result.output


def user_error(*args: str) -> str:
    """The message of the UserError a command raises (`main` prints it and exits 2)."""
    result = cli(*args)
    assert isinstance(result.exception, UserError), (result.output, result.exception)
    return str(result.exception)


def write_jsonl(path: Path, rows: list[dict[str, str]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


# -- facts -----------------------------------------------------------------------------------------
def test_facts_add_ingest_search_show_audit_export(tmp_path: Path) -> None:
    out = ok("facts", "add", "Acme Corp is headquartered in Lyon.", "-n", "acme", "-s", "https://acme.example")
    old_id = out.split()[1]
    assert out.startswith("stored f-") and out.strip().endswith("in namespace acme")
    out = ok("facts", "add", "Acme Corp is headquartered in Graz.", "-n", "acme", "--supersedes", old_id)
    new_id = out.split()[1]

    notes = tmp_path / "notes.md"
    notes.write_text("# Zorbia\n\nThe capital of Zorbia is Quillmar. Quillmar lies on the Vell river.\n")
    assert f"ingested 1 chunk(s) from {notes} into acme" in ok("facts", "ingest", str(notes), "-n", "acme")

    found = ok("facts", "search", "Where is Acme?", "-n", "acme", "--json")
    hits = [json.loads(line)["fact"]["id"] for line in found.splitlines()]
    assert hits[0] == new_id and old_id not in hits  # the superseded fact is no longer found
    table = ok("facts", "search", "capital of Zorbia", "-n", "acme", "-k", "1")
    assert "Quillmar" in table and "document" in table and "Acme" not in table

    shown = json.loads(ok("facts", "show", old_id, "-n", "acme"))
    assert shown["source_ids"] == ["https://acme.example"] and shown["superseded_by"] == new_id
    assert shown["valid_to"] is not None

    audit = ok("facts", "audit", "-n", "acme")
    assert old_id in audit and "invalidate" in audit

    exported = [json.loads(line) for line in ok("facts", "export", "-n", "acme").splitlines()]
    assert {f["id"] for f in exported} >= {new_id} and old_id not in {f["id"] for f in exported}
    everything = tmp_path / "all.jsonl"
    assert json.loads(ok("facts", "export", "-n", "acme", "--all", "-o", str(everything)))["exported"] == 3
    assert old_id in everything.read_text()


def test_facts_bad_input_names_the_fix(tmp_path: Path) -> None:
    assert "no fact 'f-nope' in that namespace" in user_error("facts", "show", "f-nope")
    missing = tmp_path / "missing.md"
    assert f"no file at {missing}: pass a path to a .txt, .md or .jsonl file" in user_error(
        "facts", "ingest", str(missing)
    )
    assert "the fact text is empty: pass a non-empty sentence" in user_error("facts", "add", "   ")
    assert "invalid namespace 'Not A Namespace!': use 1-128 characters" in user_error(
        "facts", "search", "x", "-n", "Not A Namespace!"
    )


# -- models ----------------------------------------------------------------------------------------
def test_models_list_shows_the_pulled_default(model_path: str) -> None:
    out = ok("models", "list")
    assert "SmolLM2-135M-Instruct" in out and "ready" in out and str(Path(model_path).parent) in out
    assert "selected: FACTFLOW_MODEL=default" in out


# -- reft ------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def adapter(model_path: str, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, str]:
    """`reft train` once for the module: (adapter folder, its data, what the command printed)."""
    root = tmp_path_factory.mktemp("reft-cli")
    data = write_jsonl(root / "facts.jsonl", FACTS)
    out = ok(
        "reft", "train", str(data), "--out", str(root / "adapter"), "--layers", "8,16", "--rank", "2",
        "--epochs", "1", "--batch-size", "2", "--model", model_path,
    )  # fmt: skip
    return root / "adapter", data, out


def test_reft_train_info_eval(adapter: tuple[Path, Path, str], model_path: str) -> None:
    folder, data, trained = adapter
    # 2 layers x (2 r d + r) with r = 2, d = 576
    assert f"adapter saved to {folder}: 4,612 trainable parameters, 1 epochs, best loss" in trained
    assert json.loads((folder / "training.json").read_text())["epochs_run"] == 1

    info = ok("reft", "info", str(folder))
    cells = (line.split("│") for line in info.splitlines())
    rows = {r[1].strip(): r[2].strip() for r in cells if len(r) == 4}
    assert rows["layers"] == "[8, 16]" and rows["rank"] == "2" and rows["positions"] == "all"
    assert rows["trainable params"] == "4,612" and rows["epochs run"] == "1"
    assert "LlamaForCausalLM" in rows["base"] and "30 layers" in rows["base"]

    out = ok("reft", "eval", str(folder), str(data), "--model", model_path, "--show")
    assert "exact recall: base 0%, with adapter" in out and "(2 examples)" in out
    assert "What is the capital of Veldoria? ->" in out and "(want 'Marnecq.')" in out


def test_reft_bad_input_names_the_fix(adapter: tuple[Path, Path, str], tmp_path: Path) -> None:
    folder, data, _ = adapter
    out = str(tmp_path / "x")
    assert "--layers '8,x' is not a comma-separated list of layer numbers; use e.g. 8,16." in user_error(
        "reft", "train", str(data), "--out", out, "--layers", "8,x"
    )
    assert "ReFT layer 99 is out of range: the base model has layers 0..29" in user_error(
        "reft", "train", str(data), "--out", out, "--layers", "99"
    )
    assert "invalid setting --batch-size=0: Input should be greater than or equal to 1" in user_error(
        "reft", "train", str(data), "--out", out, "--batch-size", "0"
    )
    assert f"training data {tmp_path / 'none.jsonl'} does not exist" in user_error(
        "reft", "train", str(tmp_path / "none.jsonl"), "--out", out
    )
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "q"}\n')
    assert f"{bad}:1 is not a JSON object with string fields 'prompt' and 'completion'" in user_error(
        "reft", "train", str(bad), "--out", out
    )
    missing = tmp_path / "nothing"
    no_adapter = f"ReFT adapter folder {missing} does not exist; train one with `factflow reft train`."
    assert no_adapter in user_error("reft", "info", str(missing))
    assert no_adapter in user_error("reft", "eval", str(missing), str(data))


# -- proxy -----------------------------------------------------------------------------------------
def test_proxy_distill_writes_a_small_anti_expert(model_path: str, tmp_path: Path) -> None:
    out = tmp_path / "anti"
    printed = ok("proxy", "distill", "--out", str(out), "--layers", "2", "--epochs", "1", "--prompts", "1",
                 "--base", model_path)  # fmt: skip
    assert f"anti-expert written to {out}" in printed
    assert json.loads((out / "config.json").read_text())["num_hidden_layers"] == 2
    assert "k_layers must be between 1 and 29 for this base; got 30" in user_error(
        "proxy", "distill", "--out", str(tmp_path / "x"), "--layers", "30", "--base", model_path
    )


@pytest.fixture
def proxy_config(model_path: str, proxy_pair: tuple[Path, Path], tmp_path: Path) -> Path:
    expert, anti = proxy_pair
    config = tmp_path / "proxy.toml"
    config.write_text(f'base = "{model_path}"\nexpert = "{expert}"\nanti_expert = "{anti}"\nalpha = 1.0\n')
    return config


def test_proxy_info_on_a_missing_config_names_the_fix(tmp_path: Path) -> None:
    missing = tmp_path / "nothing.toml"
    assert f"proxy config {missing} does not exist; write one naming base, expert, anti_expert" in user_error(
        "proxy", "info", str(missing)
    )


# -- ask / chat / serve with a weight route --------------------------------------------------------
def test_ask_with_reft_and_with_proxy(adapter: tuple[Path, Path, str], proxy_config: Path) -> None:
    for flag, path in (("--reft", adapter[0]), ("--proxy", proxy_config)):
        result = cli("ask", "What is the capital of Veldoria?", flag, str(path), "--json")
        assert result.exit_code == 0, (result.output, result.exception)
        answer = json.loads(result.stdout)
        assert answer["answer"].strip() and answer["thread_id"], answer


@pytest.mark.parametrize("command", ["ask", "serve"])
def test_weight_route_flags_bad_input(command: str, adapter: tuple[Path, Path, str], tmp_path: Path) -> None:
    question = ["hi"] if command == "ask" else []
    both = user_error(command, *question, "--reft", str(adapter[0]), "--proxy", str(tmp_path / "p.toml"))
    assert both == "--reft and --proxy can't be combined: pick one weight-side route"
    missing = tmp_path / "nothing"
    no_adapter = f"ReFT adapter folder {missing} does not exist"
    assert no_adapter in user_error(command, *question, "--reft", str(missing))
    assert f"proxy config {missing}.toml does not exist" in user_error(
        command, *question, "--proxy", f"{missing}.toml"
    )


def test_serve_names_bad_adapter_specs(adapter: tuple[Path, Path, str]) -> None:
    # several adapters are NAME=DIR each (requests pick one by name); "base" means no adapter
    folder = str(adapter[0])
    assert "write each as NAME=DIR" in user_error("serve", "--reft", f"a={folder}", "--reft", folder)
    assert "not 'base'" in user_error("serve", "--reft", f"base={folder}", "--reft", f"b={folder}")


@pytest.mark.parametrize("flag", ["--reft", "--proxy"])
def test_chat_with_a_weight_route_starts_and_quits(
    flag: str, adapter: tuple[Path, Path, str], proxy_config: Path, tmp_path: Path
) -> None:
    path = adapter[0] if flag == "--reft" else proxy_config
    proc = subprocess.run(
        [sys.executable, "-m", "factflow.agent.cli", "chat", flag, str(path)],
        input="/quit\n", capture_output=True, text=True, env={**os.environ, **WIDE}, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "factflow chat ready in" in proc.stdout and proc.stdout.rstrip().endswith("bye")


# -- main: exit code 2 and one line ----------------------------------------------------------------
def test_user_error_exits_2_with_one_line(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "factflow.agent.cli", "reft", "info", str(tmp_path / "nothing")],
        capture_output=True, text=True, env={**os.environ, "COLUMNS": "250"}, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.startswith("error: ") and "Traceback" not in proc.stderr
    assert str(tmp_path / "nothing") in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
