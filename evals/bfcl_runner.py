"""Run BFCL v4 in one mode (fc, prompt or constrained) and score each case with BFCL's checker.

Each case goes through BFCL's own inference loop (`handler.inference`, see `bfcl_handlers`) and
is scored at once by the same per-entry functions BFCL's `evaluate_task` uses
(`_evaluate_single_ast_entry`, `..._relevance_...`, `..._multi_turn_...`, `..._agentic_...`).

OUT holds:
- `manifest.json`: model, engine, endpoint, mode, decoding, factflow commit, bfcl-eval version,
  seed, limit. A rerun into OUT resumes only when its manifest matches; otherwise it is refused.
- `bfcl_results.jsonl`: one scored case per line, appended as each finishes (resumable).
- `result/<registry>/<group>/BFCL_v4_<category>_result.json`: the raw model outputs in BFCL's
  layout (`bfcl evaluate --partial-eval` can re-score them), rewritten at the end of a run; memory
  snapshots live beside them, as in BFCL.
- `score/<registry>/...`: BFCL's own score files, written by its `evaluate_task` at the end.

A case that fails because the model's output can't be parsed or validated, or because the
endpoint rejects the request (e.g. context too long), is recorded as BFCL records it ("Error
during inference: ...") and scores as wrong. Anything else (a dead server, a bug) stops the run.
"""

from __future__ import annotations

import contextlib
import io
import json
import re
import subprocess
import threading
import time
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from copy import deepcopy
from pathlib import Path
from typing import Any

from langchain_core.exceptions import OutputParserException
from langchain_core.language_models import BaseChatModel
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from tqdm import tqdm

from factflow.errors import UserError
from factflow.evals.bfcl_data import BfclEntry, load_category, memory_prereqs
from factflow.evals.bfcl_handlers import make_handler
from factflow.evals.bfcl_official import bfcl

__all__ = [
    "RunConfig",
    "CaseResult",
    "Manifest",
    "parse_errors",
    "run_case",
    "run_bfcl",
    "score_case",
    "write_bfcl_layout",
    "git_commit",
]


class RunConfig(BaseModel):
    """Knobs of one case run (ACE adds its playbook to the system prompt)."""

    model_config = ConfigDict(extra="forbid")

    mode: str = "constrained"
    playbook_text: str = Field(default="", description="Rendered playbook put first as a system message.")


class CaseResult(BaseModel):
    """One case, one line of bfcl_results.jsonl. Memory prerequisites are run, not scored."""

    model_config = ConfigDict(extra="forbid")

    id: str
    category: str
    mode: str
    valid: bool
    scored: bool = True
    error: str = ""
    error_type: str = ""
    result: Any = Field(default=None, description="The raw model output, as BFCL stores it.")
    input_tokens: int = 0
    output_tokens: int = 0
    seconds: float = 0.0

    @property
    def tokens(self) -> int:
        return self.input_tokens + self.output_tokens

    @property
    def calls(self) -> list[Any]:
        """The single-turn calls made, `[{name: args}]` (empty for text answers)."""
        if not isinstance(self.result, list):
            return []
        out = []
        for item in self.result:
            if isinstance(item, dict):
                out.append({k: json.loads(v) if isinstance(v, str) else v for k, v in item.items()})
        return out

    @property
    def answer(self) -> str:
        return self.result if isinstance(self.result, str) else ""


class Manifest(BaseModel):
    """What a result folder was produced with; a resume must match it exactly."""

    model_config = ConfigDict(extra="forbid")

    mode: str
    model: str
    engine: str
    endpoint: str | None
    decoding: dict[str, Any]
    commit: str
    bfcl_eval: str
    seed: int
    limit: int | None


def git_commit() -> str:
    """The factflow commit (with '+dirty' when the tree has edits), or 'unknown' outside git."""
    root = Path(__file__).resolve().parents[1]
    try:
        sha = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return sha + ("+dirty" if dirty else "")


def parse_errors() -> tuple[type[BaseException], ...]:
    """Errors that mean 'this case's output or request was bad', recorded as a wrong case.

    BFCL records any inference exception; we keep only these so a dead server or a bug stops
    the run instead of filling the table with zeros.
    """
    import openai

    return (
        OutputParserException,
        ValidationError,
        json.JSONDecodeError,
        openai.BadRequestError,
        openai.UnprocessableEntityError,
        # structured output cut by the token cap: the model's answer, not the server, is broken
        openai.LengthFinishReasonError,
        openai.ContentFilterFinishReasonError,
    )


def _language(category: str) -> tuple[Any, Any]:
    from bfcl_eval.constants.enums import Language, ReturnFormat

    if category == "simple_java":
        return Language.JAVA, ReturnFormat.JAVA
    if category == "simple_javascript":
        return Language.JAVASCRIPT, ReturnFormat.JAVASCRIPT
    return Language.PYTHON, ReturnFormat.PYTHON


def score_case(handler: Any, case: BfclEntry, result: Any) -> dict[str, Any]:
    """BFCL's verdict for one model result: `{"valid": bool, ...error fields}`."""
    runner = bfcl().runner
    utils = bfcl().utils
    name = handler.registry_name
    prompt = deepcopy(case.prompt)
    if utils.is_relevance_or_irrelevance(case.category):
        return dict(
            runner._evaluate_single_relevance_entry(handler, case.id, result, prompt, name, case.category)
        )
    if utils.is_multi_turn(case.category):
        return dict(
            runner._evaluate_single_multi_turn_entry(
                handler, case.id, result, case.ground_truth, prompt, name, case.category
            )
        )
    if utils.is_agentic(case.category):
        return dict(
            runner._evaluate_single_agentic_entry(
                handler, case.id, result, case.ground_truth, prompt, name, case.category
            )
        )
    language, return_format = _language(case.category)
    return dict(
        runner._evaluate_single_ast_entry(
            handler,
            case.id,
            result,
            case.ground_truth,
            prompt,
            name,
            case.category,
            language=language,
            return_format=return_format,
            has_tool_call_tag=False,
        )
    )


def _error_text(verdict: dict[str, Any]) -> tuple[str, str]:
    error = verdict.get("error", "")
    error_type = str(verdict.get("error_type", ""))
    if isinstance(error, dict):  # multi-turn and agentic nest them
        error_type = str(error.get("error_type", error_type))
        error = error.get("error_message", error)
    return str(error)[:500], error_type


def _forget_instances(case_id: str) -> None:
    """BFCL keeps each case's simulated API instances in module globals; drop this case's."""
    store = vars(bfcl().multi_turn)
    key = re.sub(r"[-./:]", "_", case_id)
    # "_<id>_" so that case 1 does not match case 10's instances. `list(store)` copies the keys in
    # one C call: iterating the live dict races with other workers' cases adding their instances
    # ("dictionary changed size during iteration").
    for name in [k for k in list(store) if f"_{key}_" in k and k.endswith("_instance")]:
        del store[name]


def _infer(handler: Any, case: BfclEntry, model_dir: Path) -> tuple[Any, dict[str, Any]]:
    entry = deepcopy(case.entry)
    if bfcl().utils.is_memory(case.category):
        entry = bfcl().utils.populate_initial_settings_for_memory_test_cases([entry], model_dir)[0]
    try:
        return handler.inference(entry, include_input_log=False, exclude_state_log=True)  # type: ignore[no-any-return]
    except parse_errors() as exc:
        return f"Error during inference: {type(exc).__name__}: {exc}"[:2000], {}


def _tokens(meta: dict[str, Any], key: str) -> int:
    value = meta.get(key, 0)

    def total(v: Any) -> int:
        if isinstance(v, list):
            return sum(total(x) for x in v)
        return int(v or 0)

    return total(value)


def _run_one(handler: Any, case: BfclEntry, model_dir: Path, mode: str) -> CaseResult:
    start = time.perf_counter()
    result, meta = _infer(handler, case, model_dir)
    valid = False
    error = error_type = ""
    scored = not case.category.endswith("_prereq")
    if scored:
        verdict = score_case(handler, case, result)
        valid = bool(verdict["valid"])
        if not valid:
            error, error_type = _error_text(verdict)
    _forget_instances(case.id)
    return CaseResult(
        id=case.id,
        category=case.category,
        mode=mode,
        valid=valid,
        scored=scored,
        error=error,
        error_type=error_type,
        result=bfcl().utils.make_json_serializable(result),
        input_tokens=_tokens(meta, "input_token_count"),
        output_tokens=_tokens(meta, "output_token_count"),
        seconds=round(time.perf_counter() - start, 3),
    )


def run_case(chat: BaseChatModel, case: BfclEntry, config: RunConfig | None = None) -> CaseResult:
    """Run and score one single-turn case with a chat model (used by the ACE adaptation suite)."""
    config = config or RunConfig()
    handler = make_handler(config.mode, chat=chat, system_prefix=_playbook(config.playbook_text))
    return _run_one(handler, case, Path("/nonexistent"), config.mode)


def _playbook(text: str) -> str:
    return f"Playbook (strategies learned so far):\n{text.strip()}" if text.strip() else ""


def _load_done(path: Path) -> dict[str, CaseResult]:
    done: dict[str, CaseResult] = {}
    if path.exists():
        for line in path.read_text(encoding="utf-8").splitlines():
            if line.strip():
                try:
                    row = CaseResult.model_validate_json(line)
                except ValidationError:
                    continue  # a line cut by an interrupted run is simply redone
                done[row.id] = row
    return done


def _check_manifest(out_dir: Path, manifest: Manifest) -> None:
    path = out_dir / "manifest.json"
    if path.exists():
        old = json.loads(path.read_text(encoding="utf-8"))
        new = manifest.model_dump()
        diff = {k: (old.get(k), v) for k, v in new.items() if old.get(k) != v}
        if diff:
            changes = ", ".join(f"{k}: {a!r} -> {b!r}" for k, (a, b) in diff.items())
            raise UserError(
                f"{out_dir} holds results of another run ({changes}): use a new --out folder, "
                "or rerun with the same settings to resume"
            )
    out_dir.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(manifest.model_dump(), indent=2) + "\n", encoding="utf-8")


def _schedule(cases: Sequence[BfclEntry]) -> tuple[list[BfclEntry], list[list[BfclEntry]]]:
    """Independent cases, and memory chains (per category and scenario: prereqs then questions)."""
    free: list[BfclEntry] = []
    chains: dict[tuple[str, str], list[BfclEntry]] = {}
    for case in cases:
        if case.category.startswith("memory_"):
            key = (case.category, case.scenario)
            if key not in chains:
                chains[key] = memory_prereqs(case.category, case.scenario)
            chains[key].append(case)
        else:
            free.append(case)
    return free, list(chains.values())


def run_bfcl(
    handler: Any,
    categories: Sequence[str],
    out_dir: Path,
    manifest: Manifest,
    *,
    limit: int | None = None,
    seed: int = 0,
    workers: int = 1,
    cases: Sequence[BfclEntry] | None = None,
    progress: bool = True,
) -> list[CaseResult]:
    """Run (or resume) the categories' cases into OUT; returns the scored cases (no prereqs)."""
    _check_manifest(out_dir, manifest)
    path = out_dir / "bfcl_results.jsonl"
    done = _load_done(path)
    todo = (
        list(cases)
        if cases is not None
        else [c for cat in categories for c in load_category(cat, limit=limit, seed=seed)]
    )
    model_dir = (out_dir / "result" / handler.registry_dir_name).resolve()
    free, chains = _schedule(todo)
    total = len(free) + sum(len(c) for c in chains)
    write_lock = threading.Lock()
    bar = tqdm(total=total, desc=f"bfcl {manifest.mode}", unit="case", disable=not progress)
    results: dict[str, CaseResult] = {}

    def run(case: BfclEntry) -> None:
        row = done.get(case.id) or _run_one(handler, case, model_dir, manifest.mode)
        with write_lock:
            if case.id not in done:
                with path.open("a", encoding="utf-8") as fh:
                    fh.write(row.model_dump_json() + "\n")
            results[case.id] = row
            bar.update(1)

    def run_chain(chain: list[BfclEntry]) -> None:
        for case in chain:  # in order: each prereq builds on the previous snapshot
            run(case)

    # BFCL's loop prints every step to stdout; the progress bar (stderr) says enough.
    with contextlib.redirect_stdout(io.StringIO()), ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        futures = [pool.submit(run, c) for c in free] + [pool.submit(run_chain, ch) for ch in chains]
        try:
            for future in futures:
                future.result()  # re-raises the first real error: the run stops with it
        except BaseException:
            # without this the pool still starts every queued case against a dead server
            for future in futures:
                future.cancel()
            raise
    bar.close()
    write_bfcl_layout(handler, out_dir, results.values())
    return [results[c.id] for c in todo]


def write_bfcl_layout(handler: Any, out_dir: Path, rows: Iterable[CaseResult]) -> Path:
    """Raw outputs in BFCL's result layout (one file per category, sorted by id); returns the dir."""
    utils = bfcl().utils
    model_dir = out_dir / "result" / handler.registry_dir_name
    by_file: dict[Path, list[dict[str, Any]]] = {}
    for row in rows:
        group = utils.get_directory_structure_by_id(row.id)
        category = utils.extract_test_category_from_id(row.id)
        file = model_dir / group / f"BFCL_v4_{category}_result.json"
        by_file.setdefault(file, []).append(
            {
                "id": row.id,
                "result": row.result,
                "input_token_count": row.input_tokens,
                "output_token_count": row.output_tokens,
                "latency": row.seconds,
            }
        )
    for file, entries in by_file.items():
        file.parent.mkdir(parents=True, exist_ok=True)
        entries.sort(key=utils.sort_key)
        file.write_text("".join(json.dumps(e) + "\n" for e in entries), encoding="utf-8")
    return model_dir


def bfcl_official_scores(handler: Any, out_dir: Path, categories: Sequence[str]) -> dict[str, float]:
    """Re-score OUT's BFCL-layout files with BFCL's own `evaluate_task` (partial eval); writes
    its score files under OUT/score and returns its accuracy per category."""
    runner = bfcl().runner
    utils = bfcl().utils
    model_dir = out_dir / "result" / handler.registry_dir_name
    table: dict[str, Any] = {}
    out: dict[str, float] = {}
    for category in categories:
        file = (
            model_dir
            / utils.get_directory_structure_by_category(category)
            / f"BFCL_v4_{category}_result.json"
        )
        if not file.exists():
            continue
        model_result = [json.loads(line) for line in file.read_text(encoding="utf-8").splitlines() if line]
        model_result = [r for r in model_result if "prereq" not in r["id"]]
        if not model_result:
            continue
        table = runner.evaluate_task(
            category,
            model_dir.parent,
            out_dir / "score",
            model_result,
            handler.registry_name,
            handler,
            table,
            allow_missing=True,
        )
        out[category] = float(table[handler.registry_name][category]["accuracy"])
    return out
