"""Both Chroma modes, the single-writer lock, and crash safety of acknowledged writes."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from factflow.errors import UserError
from factflow.memory.store import FactStore
from factflow.settings import Settings

PY = sys.executable
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_second_writer_process_gets_a_clear_error(tmp_path: Path) -> None:
    with FactStore.open(Settings(home=tmp_path)):
        code = (
            f"from factflow.memory.store import FactStore; from factflow.settings import Settings; "
            f"FactStore.open(Settings(home={str(tmp_path)!r}))"
        )
        proc = subprocess.run([PY, "-c", code], capture_output=True, text=True, env=ENV, timeout=120)
        assert proc.returncode != 0
        assert f"already open in another process (pid {os.getpid()})" in proc.stderr
        assert "FACTFLOW_CHROMA_URL" in proc.stderr
    reopened = FactStore.open(Settings(home=tmp_path))  # the lock is released on close
    reopened.close()


def test_unreachable_server_is_a_user_error() -> None:
    with pytest.raises(UserError, match="cannot reach the Chroma server"):
        FactStore.open(Settings(chroma_url=f"http://127.0.0.1:{_free_port()}"))


_SERVERS: dict[str, subprocess.Popen[bytes]] = {}


def _stop_server(url: str) -> None:
    proc = _SERVERS.pop(url)
    proc.terminate()
    proc.wait(timeout=30)


@pytest.fixture
def chroma_server(tmp_path: Path):
    port = _free_port()
    chroma = Path(PY).with_name("chroma")
    proc = subprocess.Popen(
        [str(chroma), "run", "--path", str(tmp_path / "server"), "--host", "127.0.0.1", "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    _SERVERS[url] = proc
    try:
        import httpx

        deadline = time.time() + 60
        while time.time() < deadline:
            try:
                if httpx.get(f"{url}/api/v2/heartbeat", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.3)
        else:
            pytest.fail("chroma server did not start within 60 s")
        yield url
    finally:
        if _SERVERS.pop(url, None) is not None:
            proc.terminate()
            proc.wait(timeout=30)


@pytest.mark.slow
def test_server_mode_shares_one_store_between_clients(chroma_server: str, tmp_path: Path) -> None:
    import torch

    torch.set_num_threads(1)
    settings = Settings(home=tmp_path, chroma_url=chroma_server)
    a, b = FactStore.open(settings), FactStore.open(settings)  # no lock: the server serialises writes
    fact = a.teach("Acme Corp is headquartered in Lyon.", namespace="john_doe")
    a.teach("Acme Corp is headquartered in Graz.", namespace="john-doe")
    hits = b.search("Where is Acme?", k=5, namespace="john_doe")
    assert [h.fact.id for h in hits] == [fact.id]
    assert [h.fact.text for h in b.search("Where is Acme?", namespace="john-doe")] == [
        "Acme Corp is headquartered in Graz."
    ]
    d = b.propose("Acme Corp is headquartered in Paris.", [fact.id], [fact.id], namespace="john_doe")
    assert not d.accepted and a.audit_log("john_doe")[-1].action == "reject"
    a.close()
    b.close()


def test_server_going_away_is_reported_as_unreachable(chroma_server: str, tmp_path: Path) -> None:
    """A dead server is "cannot reach", never "unknown namespace"."""
    store = FactStore.open(Settings(home=tmp_path, chroma_url=chroma_server))
    assert store.namespaces() == ["default"]
    with pytest.raises(UserError, match="unknown namespace 'nobody'"):
        store.collection("nobody")
    _stop_server(chroma_server)
    with pytest.raises(UserError, match="cannot reach the Chroma server at") as err:
        store.collection("nobody")
    assert "unknown namespace" not in str(err.value)
    store.close()


_WRITER = """
import json, sys, torch
torch.set_num_threads(1)
from factflow.memory.store import FactStore
from factflow.settings import Settings
store = FactStore.open(Settings(home=sys.argv[1]))
def ack(batch):
    print(json.dumps([f.id for f in batch]), flush=True)
store.ingest(sys.argv[2], namespace="crash", batch_size=20, on_batch=ack, progress=False)
print("DONE", flush=True)
"""


@pytest.mark.slow
def test_writer_killed_mid_ingest_keeps_every_acknowledged_write(tmp_path: Path) -> None:
    src = tmp_path / "big.jsonl"
    src.write_text(
        "".join(
            json.dumps({"text": f"Record {i} says the value of item {i} is {i * 7}."}) + "\n"
            for i in range(2000)
        )
    )
    proc = subprocess.Popen(
        [PY, "-c", _WRITER, str(tmp_path), str(src)], stdout=subprocess.PIPE, text=True, env=ENV
    )
    acked: list[str] = []
    assert proc.stdout is not None
    for line in proc.stdout:
        if line.startswith("DONE"):
            pytest.fail("ingest finished before it could be killed: make the file bigger")
        acked += json.loads(line)
        if len(acked) >= 200:
            os.kill(proc.pid, signal.SIGKILL)  # no cleanup, no close: a crash
            break
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    with FactStore.open(Settings(home=tmp_path)) as store:  # the kernel released the dead writer's lock
        got = store.get_many(acked, namespace="crash")
        assert [f.id for f in got] == acked
        assert store.count("crash") >= len(acked)
        hit = store.search("value of item 150", k=3, namespace="crash")
        assert any(h.fact.text.startswith("Record 150 ") for h in hit)
        again = store.ingest(src, namespace="crash", progress=False)  # finishing the job is idempotent
        assert store.count("crash") == len(again) == 2000
