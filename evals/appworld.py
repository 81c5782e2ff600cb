"""AppWorld adapter: ACE's ReAct setup, run when the `appworld` package and its data exist.

AppWorld (Trivedi et al., 2024) gives the agent a Python REPL over 9 simulated apps; a task is
solved when the agent's code leaves the app databases in the expected state
(`world.evaluate()`). ACE's ReAct agent writes one code block per step, sees its output, and
ends with `apis.supervisor.complete_task(...)`; the rendered playbook sits in the system prompt.

AppWorld is not a factflow dependency (it pins its own stack and downloads ~GBs of data), so this
module only imports it inside `require_appworld()` and the run.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import time
from pathlib import Path
from typing import Any

from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, SystemMessage

from factflow.errors import UserError

__all__ = ["INSTALL_HINT", "appworld_available", "require_appworld", "run_appworld", "extract_code"]

INSTALL_HINT = (
    "AppWorld is not installed: run `pip install appworld && appworld install && appworld download data` "
    "(set APPWORLD_ROOT to the folder holding data/), then `factflow eval appworld` again"
)
_SYSTEM = """You are a ReAct agent solving tasks in AppWorld by writing Python code.
Each reply: one short thought, then exactly one ```python``` code block. Use `apis.<app>.<api>(...)`;
`apis.api_docs.show_api_descriptions(app_name=...)` lists an app's APIs. You see the printed output.
When the task is done call `apis.supervisor.complete_task(answer=...)` (answer only if asked).
{playbook}"""


def appworld_available() -> bool:
    """True when the package imports and its data folder exists."""
    if importlib.util.find_spec("appworld") is None:
        return False
    root = Path(os.environ.get("APPWORLD_ROOT", "."))
    return (root / "data" / "tasks").is_dir()


def require_appworld() -> None:
    if not appworld_available():
        raise UserError(INSTALL_HINT)


def extract_code(text: str) -> str:
    """The first ```python block (or the whole reply when the model forgot the fence)."""
    match = re.search(r"```(?:python)?\n(.*?)(?:```|$)", text, re.S)
    return (match.group(1) if match else text).strip()


def run_appworld(
    chat: BaseChatModel,
    out_dir: Path,
    *,
    split: str = "dev",
    limit: int | None = None,
    max_steps: int = 20,
    playbook_text: str = "",
    experiment: str = "factflow",
) -> list[dict[str, Any]]:
    """Run the ReAct agent on a split; one JSONL row per task with success and scores."""
    require_appworld()
    from appworld import AppWorld, load_task_ids  # type: ignore[import-not-found]

    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "appworld_results.jsonl"
    done = (
        {json.loads(x)["task_id"] for x in path.read_text().splitlines() if x.strip()}
        if path.exists()
        else set()
    )
    task_ids = [t for t in load_task_ids(split) if t not in done][: limit if limit is not None else None]
    rows: list[dict[str, Any]] = []
    system = _SYSTEM.format(playbook=f"\nPlaybook:\n{playbook_text}" if playbook_text else "")
    for task_id in task_ids:
        start = time.perf_counter()
        with AppWorld(task_id=task_id, experiment_name=experiment) as world:
            messages: list[BaseMessage] = [
                SystemMessage(content=system),
                HumanMessage(content=f"Task: {world.task.instruction}"),
            ]
            steps = 0
            for steps in range(1, max_steps + 1):  # noqa: B007 - steps is reported
                reply = chat.invoke(messages)
                output = world.execute(extract_code(str(reply.content)))
                messages += [
                    AIMessage(content=str(reply.content)),
                    HumanMessage(content=f"Output:\n{output}"[:4000]),
                ]
                if world.task_completed():
                    break
            evaluation = world.evaluate().to_dict()
        row = {
            "task_id": task_id,
            "success": bool(evaluation.get("success")),
            "evaluation": evaluation,
            "steps": steps,
            "seconds": round(time.perf_counter() - start, 2),
        }
        with path.open("a", encoding="utf-8") as fh:
            fh.write(json.dumps(row) + "\n")
        rows.append(row)
    return rows
