"""`factflow ask` for scripts: --json, the question from stdin, the thread id, no progress bars.

The installed command in a subprocess, on the real default model (one short model call a turn).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

FACTFLOW = str(Path(sys.executable).with_name("factflow"))


def _run(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "FACTFLOW_MAX_NEW_TOKENS": "16", "FACTFLOW_MAX_TOOL_ROUNDS": "0"}
    for quiet in ("HF_HUB_DISABLE_PROGRESS_BARS", "TRANSFORMERS_VERBOSITY"):
        env.pop(quiet, None)  # the CLI must quiet the libraries by itself
    return subprocess.run(
        [FACTFLOW, *args], input=stdin, capture_output=True, text=True, timeout=600, env=env
    )


def test_ask_json_question_from_stdin_prints_the_thread(model_path: str) -> None:
    out = _run("ask", "--json", stdin="What is the capital of France?\n")
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)  # stdout is only the JSON result
    assert result["answer"] and result["thread_id"]
    assert f"thread: {result['thread_id']}" in out.stderr  # for `--thread ID` next time
    assert "Loading weights" not in out.stderr and "it/s]" not in out.stderr, out.stderr


def test_ask_without_a_question_says_how() -> None:
    empty = _run("ask", stdin="")
    assert empty.returncode == 2 and "question is empty" in empty.stderr
