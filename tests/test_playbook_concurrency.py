"""Concurrent writers (threads and processes) lose no update; SIGKILL never corrupts the store.

Children are forked (not spawned) so that 8 writers and 50 kill rounds cost milliseconds of start-up
each instead of a Python import apiece; they only touch SQLite, which is fork-safe when every
process opens its own connection (they do: a fresh `Playbook.open` in the child).
"""

from __future__ import annotations

import ctypes
import multiprocessing as mp
import os
import random
import signal
import threading
import time
from pathlib import Path

from factflow.memory.bullets import AddOp, Delta, TagOp
from factflow.memory.playbook import Playbook
from factflow.memory.playbook_db import PlaybookDB
from factflow.settings import Settings

WRITERS, DELTAS = 8, 200
CTX = mp.get_context("fork")


def open_pb(path: Path) -> Playbook:
    return Playbook.open(path, Settings(home=path.parent), dedup_mode="off")


def seed(path: Path) -> None:
    with open_pb(path) as pb:
        pb.apply(Delta(ops=[AddOp(section="strategies", content="shared counter")]))


def write_many(path: Path, writer: int) -> None:
    """Each delta: one ADD unique to (writer, i) and one TAG on the shared bullet (a lost update
    on either would show up in the final counts). The base version is the writer's cached one,
    usually stale, so every apply exercises conflict detection and re-application."""
    pb = open_pb(path)
    for i in range(DELTAS):
        ops = [
            AddOp(section="other", content=f"writer {writer} delta {i}"),
            TagOp(id="strat-00001", tag="helpful"),
        ]
        r = pb.apply(Delta(ops=ops), base_version=pb.state().version, author=f"w{writer}")
        assert not r.rejected, r.rejected
    pb.close()


def check_all_accounted(path: Path) -> None:
    pb = open_pb(path)
    state = pb.state()
    n = WRITERS * DELTAS
    assert pb.version == 1 + n
    assert state.bullets["strat-00001"].helpful == n
    contents = {b.content for b in state.bullets.values()}
    assert all(f"writer {w} delta {i}" in contents for w in range(WRITERS) for i in range(DELTAS))
    assert len(state.bullets) == 1 + n
    history = pb.history()
    assert sum(h.n_applied for h in history) == 1 + 2 * n
    assert {h.author for h in history} == {""} | {f"w{w}" for w in range(WRITERS)}
    assert pb.state_at(pb.version) == state  # the log replays to exactly what is stored
    pb.close()


def test_8_threads_x_200_deltas_lose_nothing(tmp_path: Path) -> None:
    path = tmp_path / "pb.sqlite3"
    seed(path)
    errors: list[BaseException] = []

    def run(w: int) -> None:
        try:
            write_many(path, w)
        except BaseException as exc:  # surfaced below; a thread's exception is otherwise lost
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(w,)) for w in range(WRITERS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    check_all_accounted(path)


def test_8_processes_x_200_deltas_lose_nothing(tmp_path: Path) -> None:
    path = tmp_path / "pb.sqlite3"
    seed(path)
    procs = [CTX.Process(target=write_many, args=(path, w)) for w in range(WRITERS)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
    assert [p.exitcode for p in procs] == [0] * WRITERS
    check_all_accounted(path)


def _crash_writer(path: Path, acked: ctypes.c_longlong, started: mp.synchronize.Event) -> None:  # type: ignore[name-defined]
    pb = open_pb(path)
    started.set()
    i = 0
    while True:
        i += 1
        ops = [AddOp(section="other", content=f"pid {os.getpid()} n {i}")]
        ops += [TagOp(id="strat-00001", tag="helpful"), TagOp(id="strat-00001", tag="harmful")]
        r = pb.apply(Delta(ops=ops))
        acked.value = r.version  # only ever set after COMMIT returned


def test_sigkill_50_times_keeps_last_committed_version(tmp_path: Path) -> None:
    path = tmp_path / "pb.sqlite3"
    seed(path)
    rng = random.Random(1234)
    prev = 1
    for _round in range(50):
        # lock=False: a child SIGKILLed while holding the Value's lock would deadlock our next read
        # of it forever (this hung CI once); an aligned 8-byte store needs no lock.
        acked = CTX.Value("q", -1, lock=False)
        started = CTX.Event()
        p = CTX.Process(target=_crash_writer, args=(path, acked, started))
        p.start()
        assert started.wait(30)
        time.sleep(rng.uniform(0.0, 0.03))
        os.kill(p.pid, signal.SIGKILL)  # type: ignore[arg-type]
        p.join()
        assert p.exitcode == -signal.SIGKILL

        assert PlaybookDB(path, {}).integrity_ok()
        pb = open_pb(path)
        version = pb.version
        # nothing acknowledged is lost; at most the one commit in flight landed without its ack
        last_ack = acked.value if acked.value >= 0 else prev
        assert prev <= last_ack <= version <= last_ack + 1
        prev = version
        state = pb.state()
        assert pb.state_at(version) == state  # bullets table and op log agree: no half write
        shared = state.bullets["strat-00001"]
        assert shared.helpful == shared.harmful == version - 1  # each delta tagged both, atomically
        assert len(state.bullets) == version  # seed + one ADD per committed delta
        pb.close()
