"""Several processes on one embedded store: a sharing owner serves it, the others use its server.

Real processes, a real local Chroma server (started and stopped by the store) and the real REPL.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pexpect
import pytest

from factflow.memory.store import FactStore
from factflow.settings import Settings

FACTFLOW = str(Path(sys.executable).with_name("factflow"))


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _facts_add(home: Path, text: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "FACTFLOW_HOME": str(home)}
    return subprocess.run(
        [FACTFLOW, "facts", "add", text], capture_output=True, text=True, env=env, timeout=300
    )


def test_a_sharing_owner_serves_the_store_to_other_processes(tmp_path: Path) -> None:
    chroma_dir = tmp_path / "facts" / "chroma"
    with FactStore.open(Settings(home=tmp_path, store_shared=True)) as store:
        server = json.loads((chroma_dir / "factflow-server.json").read_text())
        assert server["url"].startswith("http://127.0.0.1:") and _alive(server["pid"])
        added = _facts_add(tmp_path, "Zorbia's moon is called Pell.")
        assert added.returncode == 0, added.stderr
        hits = store.search("moon of Zorbia", k=3)
        assert [h.fact.text for h in hits] == ["Zorbia's moon is called Pell."]
        store.teach("Zorbia has two suns.")  # and the owner's writes reach the others
        code = (
            "from factflow.memory.store import FactStore; from factflow.settings import Settings; "
            f"s = FactStore.open(Settings(home={str(tmp_path)!r})); print(s.count()); s.close()"
        )
        other = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
        assert other.returncode == 0 and other.stdout.strip() == "2", other.stderr
    # closing stops the server and frees the files for a plain embedded owner
    assert not (chroma_dir / "factflow-server.json").exists()
    assert not _alive(server["pid"])
    with FactStore.open(Settings(home=tmp_path)) as store:
        assert store.count() == 2


@pytest.mark.slow  # a REPL start (model load) on top of the test above, which is the fast-set check
def test_chat_open_facts_add_from_another_terminal_the_repl_sees_it(model_path: str, tmp_path: Path) -> None:
    env = {
        **os.environ,
        "FACTFLOW_HOME": str(tmp_path),
        "PROMPT_TOOLKIT_NO_CPR": "1",
        "NO_COLOR": "1",
        "TERM": "xterm",
        "COLUMNS": "200",
    }
    child = pexpect.spawn(FACTFLOW, ["chat"], env=env, encoding="utf-8", timeout=300, dimensions=(50, 200))
    try:
        child.expect("you>")
        added = _facts_add(tmp_path, "Zorbia's moon is called Pell.")
        assert added.returncode == 0, added.stderr
        child.sendline("/facts moon of Zorbia")
        child.expect("Pell")
        child.expect("you>")
        child.sendline("/quit")
        child.expect(pexpect.EOF)
    finally:
        child.close(force=True)
    assert not (tmp_path / "facts" / "chroma" / "factflow-server.json").exists()
