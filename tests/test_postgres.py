"""Agent threads in a real Postgres (FACTFLOW_CHECKPOINT_URL), shared by several processes.

The fixture creates a throw-away cluster with Debian's postgresql binaries (initdb + pg_ctl, as
the `postgres` user when the tests run as root) on a free loopback port, and removes it after.
The chat model and fact store are the scripted fakes: the subject here is the thread store.
"""

from __future__ import annotations

import asyncio
import glob
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

pytest.importorskip(
    "langgraph.checkpoint.postgres",
    reason="the Postgres checkpointer is not installed: pip install -e '.[postgres]'",
)

from _agent_fakes import FACTS, FakePlaybook, FakeStore, FakeToolCallingModel  # noqa: E402
from langchain_core.messages import AIMessage  # noqa: E402

from factflow.agent.api import Agent  # noqa: E402
from factflow.errors import UserError  # noqa: E402
from factflow.settings import Settings  # noqa: E402

TESTS = Path(__file__).parent


def _pg_bin(name: str) -> str | None:
    found = shutil.which(name)
    if found:
        return found
    candidates = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    return candidates[-1] if candidates else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def postgres_url() -> Iterator[str]:
    initdb, pg_ctl = _pg_bin("initdb"), _pg_bin("pg_ctl")
    if initdb is None or pg_ctl is None:
        pytest.skip("no Postgres server binaries (initdb, pg_ctl): apt-get install postgresql")
    run_as: list[str] = []
    if os.geteuid() == 0:  # initdb refuses root; Debian's package creates the `postgres` user
        if (
            shutil.which("runuser") is None
            or subprocess.run(["id", "postgres"], capture_output=True).returncode
        ):
            pytest.skip("running as root without a `postgres` user to own the test cluster")
        run_as = ["runuser", "-u", "postgres", "--"]
    root = Path(tempfile.mkdtemp(prefix="factflow-pg-"))
    data = root / "data"
    if run_as:
        shutil.chown(root, user="postgres")
    port = _free_port()
    try:
        subprocess.run(
            [*run_as, initdb, "-D", str(data), "-U", "factflow", "--auth=trust", "-E", "UTF8"],
            check=True,
            capture_output=True,
        )
        opts = f"-c listen_addresses=127.0.0.1 -c port={port} -c unix_socket_directories={root}"
        subprocess.run(
            [
                *run_as,
                pg_ctl,
                "-D",
                str(data),
                "-o",
                opts,
                "-l",
                str(root / "log"),
                "-w",
                "-t",
                "60",
                "start",
            ],
            check=True,
            capture_output=True,
        )
        yield f"postgresql://factflow@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run([*run_as, pg_ctl, "-D", str(data), "-m", "immediate", "stop"], capture_output=True)
        shutil.rmtree(root, ignore_errors=True)


def _agent(url: str, namespace: str = "default", answer: str = "Paris [f-paris].") -> Agent:
    return Agent(
        Settings(checkpoint_url=url),
        chat_model=FakeToolCallingModel(script=[AIMessage(content=answer)]),
        store=FakeStore(FACTS),
        playbook=FakePlaybook(),
        namespace=namespace,
    )


def test_replicas_share_threads_through_postgres(postgres_url: str, tmp_path: Path) -> None:
    # replica 1: another process answers the first turn of thread "t" in tenant "acme"
    script = textwrap.dedent(
        f"""
        import sys
        sys.path.insert(0, {str(TESTS)!r})
        from _agent_fakes import FACTS, FakePlaybook, FakeStore, FakeToolCallingModel
        from langchain_core.messages import AIMessage
        from factflow.agent.api import Agent
        from factflow.settings import Settings
        model = FakeToolCallingModel(script=[AIMessage(content="Paris [f-paris].")])
        with Agent(Settings(checkpoint_url={postgres_url!r}), chat_model=model, store=FakeStore(FACTS),
                   playbook=FakePlaybook(), namespace="acme") as agent:
            print(agent.ask("capital of Zorbia?", thread_id="t").answer)
        """
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "Paris [f-paris]."
    # replica 2 (this process) sees and continues it; a look-alike tenant sees nothing
    with _agent(postgres_url, "acme", "Blue [f-moon].") as acme, _agent(postgres_url, "acme_") as other:
        assert [t.thread_id for t in acme.threads()] == ["t"]
        assert other.threads() == []
        acme.ask("and its moon?", thread_id="t")
        assert acme.threads()[0].turns == 2
        assert [m["role"] for m in acme.export("t")["messages"]] == ["user", "assistant"] * 2

        async def go() -> None:  # the async path on the same Postgres saver
            cfg = {"configurable": {"thread_id": "acme/async"}}
            values = await acme.graph.ainvoke({"question": "capital?", "feedback": None}, cfg)
            assert values["answer"]
            assert (await acme.aask("again?", thread_id="async")).thread_id == "async"

        asyncio.run(go())
        assert {t.thread_id for t in acme.threads()} == {"t", "async"}
        acme.delete_thread("t")
        assert [t.thread_id for t in acme.threads()] == ["async"]


def test_unreachable_or_wrong_url_is_a_user_error() -> None:
    with pytest.raises(UserError, match="cannot use the Postgres thread store"):
        _agent(f"postgresql://factflow@127.0.0.1:{_free_port()}/postgres")
    with pytest.raises(UserError, match="is not a Postgres URL"):
        _agent("mysql://root@localhost/db")
