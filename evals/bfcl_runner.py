"""Run BFCL v4 on a factflow chat model: the benchmark's functions become LangChain tools.

Each case is driven through `chat_model.bind_tools(tools)`; tool calls are collected and scored
by `evals.bfcl_checker`. The factflow tool format is one call per model step (a constrained JSON
action), so a BFCL "response" is the sequence of calls until the model gives a final answer:

- simple / multiple / relevance categories: one step (BFCL expects one call or none);
- parallel categories: up to `max_parallel_calls` steps; an exact repeat of a call ends the run;
- multi_turn_*: each user turn gets up to `max_steps` steps; calls execute on BFCL's offline
  simulated APIs and their results go back to the model; the checker compares end states;
- memory: each scenario's prerequisite conversations run first with the memory backend's tools
  (key-value by default), memory persisting across sessions; then each question is asked in a
  fresh session and the final answer is checked against the expected strings.

Results are appended to `OUT/bfcl_results.jsonl` as each case finishes, so a rerun skips the
cases already there (resumable). Cases run on a thread pool (`workers`): use several against a
vLLM server, one for the in-process transformers engine.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path
from typing import Any

from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, SystemMessage, ToolMessage
from pydantic import BaseModel, ConfigDict, Field
from tqdm import tqdm

from factflow.evals.bfcl_checker import (
    CheckResult,
    ast_check,
    memory_check,
    multi_turn_check,
    relevance_check,
    tool_name,
)
from factflow.evals.bfcl_data import (
    AST_CATEGORIES,
    BfclEntry,
    load_category,
    load_memory_prereqs,
    multi_turn_functions,
)

__all__ = [
    "RunConfig",
    "CaseResult",
    "to_openai_tool",
    "call_string",
    "run_case",
    "run_bfcl",
    "summarize",
    "SYSTEM_PROMPT",
]

SYSTEM_PROMPT = (
    "You are an expert in composing functions. You are given a question and a set of possible "
    "functions. Based on the question, make the function call(s) that achieve the purpose, with "
    "argument values taken from the question. If none of the functions can be used, or the question "
    "lacks the parameters a function requires, do not call a function: give a final answer instead."
)
_MEMORY_PROMPT = (
    "You are a helpful assistant with a long-term memory across sessions. Use the memory tools to "
    "save important facts about the user, and to look them up when asked. Core memory now:\n{core}"
)
_JSON_TYPES = {
    "dict": "object",
    "object": "object",
    "float": "number",
    "double": "number",
    "number": "number",
    "integer": "integer",
    "long": "integer",
    "int": "integer",
    "string": "string",
    "char": "string",
    "boolean": "boolean",
    "array": "array",
    "tuple": "array",
    "list": "array",
}


class RunConfig(BaseModel):
    """Knobs of one BFCL run."""

    model_config = ConfigDict(extra="forbid")

    max_parallel_calls: int = Field(default=6, ge=1, description="Steps allowed in parallel categories.")
    max_steps: int = Field(default=4, ge=1, description="Steps per user turn in multi-turn and memory.")
    memory_prereq_turns: int | None = Field(
        default=None, ge=1, description="Cap on prerequisite turns per memory scenario (None = all)."
    )
    system_prompt: str = SYSTEM_PROMPT
    playbook_text: str = Field(default="", description="Rendered playbook added to the system prompt (ACE).")


class CaseResult(BaseModel):
    """One scored test case, one line of the results JSONL."""

    model_config = ConfigDict(extra="forbid")

    id: str
    category: str
    valid: bool
    error: str = ""
    error_type: str = ""
    calls: list[Any] = Field(
        default_factory=list, description="Calls the model made (per turn for multi-turn)."
    )
    answer: str = ""
    seconds: float = 0.0
    tokens: int = Field(default=0, description="Prompt + completion tokens reported by the engine.")


def _schema(spec: Any) -> dict[str, Any]:
    """BFCL parameter doc -> JSON schema (BFCL says dict/float/tuple/any; JSON says object/number/array)."""
    if not isinstance(spec, dict):
        return {}
    out: dict[str, Any] = {}
    json_type = _JSON_TYPES.get(str(spec.get("type", "")).lower())
    if json_type:
        out["type"] = json_type
    if spec.get("description"):
        out["description"] = str(spec["description"])
    if isinstance(spec.get("enum"), list) and spec["enum"]:
        out["enum"] = spec["enum"]
    if json_type == "object" and isinstance(spec.get("properties"), dict):
        out["properties"] = {k: _schema(v) for k, v in spec["properties"].items()}
        required = [r for r in spec.get("required", []) if r in out["properties"]]
        if required:
            out["required"] = required
    if json_type == "array" and isinstance(spec.get("items"), dict):
        out["items"] = _schema(spec["items"])
    return out


def to_openai_tool(doc: dict[str, Any]) -> dict[str, Any]:
    """A BFCL function doc as an OpenAI tool dict, which LangChain's `bind_tools` accepts."""
    params = _schema({**doc.get("parameters", {}), "type": "dict"})
    params.setdefault("properties", {})
    return {
        "type": "function",
        "function": {
            "name": tool_name(doc["name"]),
            "description": str(doc.get("description", ""))[:1024],
            "parameters": params,
        },
    }


def call_string(name: str, args: dict[str, Any]) -> str:
    """A call as BFCL's multi-turn checker replays it: `name(k=repr(v), ...)`."""
    return f"{name}({', '.join(f'{k}={v!r}' for k, v in args.items())})"


def _tokens(message: BaseMessage) -> int:
    usage = getattr(message, "usage_metadata", None) or {}
    return int(usage.get("total_tokens", 0) or 0)


def _messages(turn: list[dict[str, Any]]) -> list[BaseMessage]:
    out: list[BaseMessage] = []
    for m in turn:
        if m.get("role") == "system":
            out.append(SystemMessage(content=str(m.get("content", ""))))
        elif m.get("role") == "assistant":
            out.append(AIMessage(content=str(m.get("content", ""))))
        else:
            out.append(HumanMessage(content=str(m.get("content", ""))))
    return out


def _system(config: RunConfig, base: str) -> SystemMessage:
    text = base
    if config.playbook_text.strip():
        text += "\n\nPlaybook (strategies learned so far):\n" + config.playbook_text.strip()
    return SystemMessage(content=text)


class _Counter:
    def __init__(self) -> None:
        self.tokens = 0

    def step(self, bound: Any, messages: list[BaseMessage]) -> AIMessage:
        ai = bound.invoke(messages)
        self.tokens += _tokens(ai)
        return ai


def _run_single(chat: BaseChatModel, entry: BfclEntry, config: RunConfig) -> CaseResult:
    names = {tool_name(f["name"]): f["name"] for f in entry.functions}
    bound = chat.bind_tools([to_openai_tool(f) for f in entry.functions])
    messages: list[BaseMessage] = [_system(config, config.system_prompt), *_messages(entry.question[0])]
    parallel = "parallel" in entry.category
    steps = config.max_parallel_calls if parallel else 1
    calls: list[dict[str, Any]] = []
    answer = ""
    counter = _Counter()
    for _ in range(steps):
        ai = counter.step(bound, messages)
        if not ai.tool_calls:
            answer = str(ai.content)
            break
        call = ai.tool_calls[0]
        record = {names.get(call["name"], call["name"]): dict(call["args"])}
        if record in calls:  # an exact repeat means the model has nothing new to call
            break
        calls.append(record)
        messages += [
            ai,
            ToolMessage(
                content="Call recorded. Call the next function the question needs, "
                "or give the final answer if none is left.",
                tool_call_id=call["id"],
                name=call["name"],
            ),
        ]
    if entry.category in AST_CATEGORIES:
        verdict = ast_check(entry.category, entry.functions, calls, entry.ground_truth or [])
    else:
        verdict = relevance_check(entry.category, calls)
    return _result(entry, verdict, calls, answer, counter.tokens)


def _result(entry: BfclEntry, verdict: CheckResult, calls: list[Any], answer: str, tokens: int) -> CaseResult:
    return CaseResult(
        id=entry.id,
        category=entry.category,
        valid=verdict.valid,
        error=verdict.error,
        error_type=verdict.error_type,
        calls=calls,
        answer=answer,
        tokens=tokens,
    )


def _run_multi_turn(chat: BaseChatModel, entry: BfclEntry, config: RunConfig) -> CaseResult:
    from bfcl_eval.eval_checker.multi_turn_eval import multi_turn_utils

    run_name = f"factflow_{uuid.uuid4().hex[:10]}"
    functions = list(entry.functions)
    messages: list[BaseMessage] = [_system(config, config.system_prompt)]
    turn_calls: list[list[list[str]]] = []
    counter = _Counter()
    answer = ""
    long_context = "long_context" in entry.category
    try:
        for index, turn in enumerate(entry.question):
            if str(index) in entry.missed_functions:
                functions += [
                    f
                    for f in multi_turn_functions(entry.involved_classes)
                    if f["name"] in entry.missed_functions[str(index)]
                ]
            bound = chat.bind_tools([to_openai_tool(f) for f in functions])
            messages += _messages(turn)
            steps: list[list[str]] = []
            for _ in range(config.max_steps):
                ai = counter.step(bound, messages)
                if not ai.tool_calls:
                    answer = str(ai.content)
                    messages.append(AIMessage(content=answer))
                    break
                call = ai.tool_calls[0]
                text = call_string(call["name"], dict(call["args"]))
                results, _ = multi_turn_utils.execute_multi_turn_func_call(
                    [text],
                    entry.initial_config,
                    entry.involved_classes,
                    run_name,
                    entry.id,
                    long_context=long_context,
                )
                steps.append([text])
                messages += [
                    ai,
                    ToolMessage(content=str(results[0])[:2000], tool_call_id=call["id"], name=call["name"]),
                ]
            turn_calls.append(steps)
        verdict = multi_turn_check(turn_calls, entry.ground_truth or [], entry.model_dump(), run_name)
    finally:
        # BFCL keeps simulated API instances in module globals keyed by run name: drop ours.
        for store in (vars(multi_turn_utils),):
            for key in [k for k in store if k.startswith(run_name)]:
                del store[key]
    return _result(entry, verdict, turn_calls, answer, counter.tokens)


class _MemoryScenario:
    """One memory backend instance per scenario, filled by its prerequisite conversations once."""

    def __init__(self, scenario: str, backend: str) -> None:
        self.scenario = scenario
        self.backend = backend
        self.lock = threading.Lock()
        self.instance: Any = None
        self.tokens = 0
        self.seconds = 0.0

    def _new_instance(self) -> Any:
        import importlib

        # MemoryAPI_kv lives in func_source_code/memory_kv.py (likewise rec_sum, vector)
        stem = self.backend.lower().replace("memoryapi", "memory")
        module = importlib.import_module(f"bfcl_eval.eval_checker.multi_turn_eval.func_source_code.{stem}")
        return getattr(module, self.backend)()

    def functions(self) -> list[dict[str, Any]]:
        return multi_turn_functions([self.backend])

    def execute(self, name: str, args: dict[str, Any]) -> str:
        method = getattr(self.instance, name, None)
        if name.startswith("_") or method is None:
            return f"Error: no function {name!r}"
        try:
            return json.dumps(method(**args), default=str)[:2000]
        except Exception as exc:  # errors are observations for the model, not crashes
            return f"Error during execution: {exc}"

    def converse(self, chat: BaseChatModel, turns: list[list[dict[str, Any]]], config: RunConfig) -> str:
        """One session: each user turn may use memory tools, then the model answers."""
        core = self.instance._dump_core_memory_to_context()
        messages: list[BaseMessage] = [_system(config, _MEMORY_PROMPT.format(core=core))]
        bound = chat.bind_tools([to_openai_tool(f) for f in self.functions()])
        answer = ""
        for turn in turns:
            messages += _messages(turn)
            for _ in range(config.max_steps):
                ai = bound.invoke(messages)
                self.tokens += _tokens(ai)
                if not ai.tool_calls:
                    answer = str(ai.content)
                    messages.append(AIMessage(content=answer))
                    break
                call = ai.tool_calls[0]
                observation = self.execute(call["name"], dict(call["args"]))
                messages += [ai, ToolMessage(content=observation, tool_call_id=call["id"], name=call["name"])]
        return answer

    def prepare(self, chat: BaseChatModel, config: RunConfig) -> None:
        with self.lock:
            if self.instance is not None:
                return
            start = time.perf_counter()
            self.instance = self._new_instance()
            budget = config.memory_prereq_turns
            for conversation in load_memory_prereqs(self.scenario):
                if budget is not None:
                    conversation = conversation[:budget]
                    budget -= len(conversation)
                if conversation:
                    self.converse(chat, conversation, config)
                if budget is not None and budget <= 0:
                    break
            self.seconds = time.perf_counter() - start


def _run_memory(
    chat: BaseChatModel, entry: BfclEntry, config: RunConfig, scenario: _MemoryScenario
) -> CaseResult:
    scenario.prepare(chat, config)
    before = scenario.tokens
    answer = scenario.converse(chat, entry.question, config)
    verdict = memory_check(answer, [str(a) for a in (entry.ground_truth or [])])
    return _result(entry, verdict, [], answer, scenario.tokens - before)


def run_case(
    chat: BaseChatModel,
    entry: BfclEntry,
    config: RunConfig | None = None,
    *,
    memory: dict[str, _MemoryScenario] | None = None,
    memory_backend: str = "MemoryAPI_kv",
) -> CaseResult:
    """Run and score one case. Engine errors become a failed case with the error, not a crash."""
    config = config or RunConfig()
    start = time.perf_counter()
    try:
        if entry.category.startswith("multi_turn"):
            result = _run_multi_turn(chat, entry, config)
        elif entry.category == "memory":
            memory = memory if memory is not None else {}
            key = f"{entry.scenario}:{memory_backend}"
            scenario = memory.setdefault(key, _MemoryScenario(entry.scenario, memory_backend))
            result = _run_memory(chat, entry, config, scenario)
        else:
            result = _run_single(chat, entry, config)
    except Exception as exc:  # one bad case must not stop a long run; it is recorded and counted
        result = CaseResult(
            id=entry.id,
            category=entry.category,
            valid=False,
            error=f"{type(exc).__name__}: {exc}"[:500],
            error_type="runner:exception",
        )
    result.seconds = round(time.perf_counter() - start, 3)
    return result


def _done_ids(path: Path) -> dict[str, CaseResult]:
    if not path.exists():
        return {}
    done: dict[str, CaseResult] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip():
            try:
                row = CaseResult.model_validate_json(line)
            except ValueError:
                continue  # a line cut by an interrupted run is simply redone
            done[f"{row.category}/{row.id}"] = row
    return done


def run_bfcl(
    chat: BaseChatModel,
    categories: Sequence[str],
    out_dir: Path,
    *,
    limit: int | None = None,
    workers: int = 1,
    config: RunConfig | None = None,
    memory_backend: str = "MemoryAPI_kv",
    entries: Sequence[BfclEntry] | None = None,
    progress: bool = True,
    results_name: str = "bfcl_results.jsonl",
) -> list[CaseResult]:
    """Run categories (or given `entries`), appending each result to OUT/results_name; resumable."""
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / results_name
    done = _done_ids(path)
    todo = (
        list(entries)
        if entries is not None
        else [e for c in categories for e in load_category(c, limit=limit)]
    )
    pending = [e for e in todo if f"{e.category}/{e.id}" not in done]
    results = [done[f"{e.category}/{e.id}"] for e in todo if f"{e.category}/{e.id}" in done]
    memory: dict[str, _MemoryScenario] = {}
    write_lock = threading.Lock()
    bar = tqdm(total=len(pending), desc="bfcl", unit="case", disable=not progress)
    with path.open("a", encoding="utf-8") as fh, ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        futures = [
            pool.submit(run_case, chat, e, config, memory=memory, memory_backend=memory_backend)
            for e in pending
        ]
        for future in as_completed(futures):
            result = future.result()
            with write_lock:
                fh.write(result.model_dump_json() + "\n")
                fh.flush()
            results.append(result)
            bar.update(1)
            bar.set_postfix(acc=f"{sum(r.valid for r in results) / len(results):.2f}")
    bar.close()
    return results


def summarize(results: Sequence[CaseResult]) -> dict[str, dict[str, float]]:
    """Per-category accuracy, count, seconds and tokens, plus an `overall` row."""
    table: dict[str, dict[str, float]] = {}
    groups: dict[str, list[CaseResult]] = {}
    for r in results:
        groups.setdefault(r.category, []).append(r)
    for name, rows in [*sorted(groups.items()), ("overall", list(results))]:
        if not rows:
            continue
        table[name] = {
            "n": len(rows),
            "accuracy": sum(r.valid for r in rows) / len(rows),
            "seconds": round(sum(r.seconds for r in rows), 2),
            "tokens": sum(r.tokens for r in rows),
        }
    return table
