"""The run store's two-half ring and its writer thread: nothing lost, nothing waited for."""

import json
import math
import signal
import sqlite3
import subprocess
import sys

import numpy as np
import pytest

from shockwatch.monitor import RunStore


def _plain(path):
    """What sqlite3 alone reads: {(step, name): value}."""
    with sqlite3.connect(path) as db:
        return {(step, name): value for step, name, value in db.execute("SELECT step, name, value FROM scalars")}


def test_log_does_not_wait_for_the_transaction(tmp_path):
    """Truth: the order of events. Another connection holds the database's write lock, so the
    transaction of a full half waits on the writer thread (SQLite's busy timeout is 5 s); the log
    that handed the half off returns at once and the next goes to the other half, before the lock is
    released (had the log waited, it would have raised "database is locked" after 5 s); once it is
    released every row reaches the database."""
    path = tmp_path / "run.sqlite"
    store = RunStore(path, pending_rows=4, background=True)
    store.log(1, {"a": 1.0, "b": 2.0, "c": 3.0})
    other = sqlite3.connect(path, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")  # the write lock
    store.log(2, {"a": 4.0, "b": 5.0})  # 5 rows > 4: the first half goes to the writer thread
    store.log(3, {"a": 6.0})  # into the other half, while the first waits for the lock
    assert _plain(path) == {}
    other.execute("ROLLBACK")
    other.close()
    store.close()
    assert _plain(path) == {(1, "a"): 1.0, (1, "b"): 2.0, (1, "c"): 3.0, (2, "a"): 4.0, (2, "b"): 5.0, (3, "a"): 6.0}


def test_a_failed_transaction_is_retried_and_a_persistent_one_raised_with_the_rows_kept(tmp_path, monkeypatch):
    """Truth: the rows logged. A writer-thread transaction that fails once is made again in the
    training thread at the next hand-off: nothing lost. One that keeps failing raises from the next
    flush, and its rows stay in the ring's file, which a writer opening the run moves."""
    path = tmp_path / "run.sqlite"
    store = RunStore(path, pending_rows=2, background=True)
    commit, failures = store._commit, [1]

    def flaky(rows):  # fault injection: the first transaction fails
        if failures[0]:
            failures[0] -= 1
            raise sqlite3.OperationalError("database is locked")
        commit(rows)

    monkeypatch.setattr(store, "_commit", flaky)
    for step in range(1, 8):
        store.log(step, {"loss": 1.0 / step})
    store.close()
    assert _plain(path) == {(step, "loss"): 1.0 / step for step in range(1, 8)}

    path = tmp_path / "broken.sqlite"
    store = RunStore(path, pending_rows=2, background=True)

    def broken(rows):
        raise sqlite3.OperationalError("disk I/O error")

    monkeypatch.setattr(store, "_commit", broken)
    store.log(1, {"loss": 1.0, "lr": 0.1})
    store.log(2, {"loss": 0.5})  # hands step 1 off to the thread, where it fails
    with pytest.raises(sqlite3.OperationalError, match="disk I/O error"):
        store.close()
    assert _plain(path) == {}
    assert (tmp_path / "broken.sqlite-pending").exists()
    RunStore(path, resume=True).close()
    assert _plain(path) == {(1, "loss"): 1.0, (1, "lr"): 0.1, (2, "loss"): 0.5}


_KILLED_MID_TRANSACTION = """
import os, signal, sys, threading
from shockwatch.monitor import RunStore
store = RunStore(sys.argv[1], pending_rows=6, background=True)
never = threading.Event()
store._commit = lambda rows: never.wait()  # the writer thread's transaction never ends
for step in range(1, 4):
    store.log(step, {"loss": float(step), "lr": 0.1})  # 6 rows: the first half full
store.log(3, {"loss": 30.0})  # the half goes to the thread; step 3's loss again, in the other half
store.log(4, {"loss": 4.0})
os.kill(os.getpid(), signal.SIGKILL)
"""


def test_a_writer_killed_mid_transaction_loses_nothing_and_the_newer_value_wins(tmp_path):
    """Truth: the steps the killed process logged. Killed while its writer thread held the first
    half's transaction open: a reader sees every row from both halves, a writer opening the run moves
    both, older half first, so step 3's second loss (30) replaces its first (3)."""
    path = tmp_path / "run.sqlite"
    done = subprocess.run([sys.executable, "-c", _KILLED_MID_TRANSACTION, str(path)], capture_output=True, text=True, check=False,
                          timeout=120)
    assert done.returncode == -signal.SIGKILL, done.stderr
    expected = {(1, "loss"): 1.0, (1, "lr"): 0.1, (2, "loss"): 2.0, (2, "lr"): 0.1, (3, "loss"): 30.0, (3, "lr"): 0.1,
                (4, "loss"): 4.0}
    with RunStore(path, read_only=True) as reader:
        series = reader.series()
        assert {(step, name): value for name, (steps, values) in series.items()
                for step, value in zip(steps, values)} == expected
    RunStore(path, resume=True).close()
    assert _plain(path) == expected


def test_a_ring_of_the_earlier_one_half_layout_is_recovered(tmp_path):
    """Truth: the rows written by hand into a pending file of the layout before the two halves (one
    (rows + 1, 3) ring, count in row 0), as a killed writer of that version left it."""
    path = tmp_path / "run.sqlite"
    RunStore(path).close()
    with sqlite3.connect(path) as db:
        db.execute("INSERT INTO names (id, name) VALUES (7, 'loss')")
    ring = np.lib.format.open_memmap(tmp_path / "run.sqlite-pending", mode="w+", dtype=np.float64, shape=(9, 3))
    ring[1:4] = [(1, 7, 0.5), (2, 7, math.nan), (3, 7, 0.25)]
    ring[0, 0] = 3
    ring.flush()
    del ring
    with RunStore(path, read_only=True) as reader:
        steps, values = reader.scalars("loss")
        assert steps == [1, 2, 3] and values[0] == 0.5 and math.isnan(values[1]) and values[2] == 0.25
    with RunStore(path, resume=True) as store:
        store.log(4, {"loss": 0.125})
    assert _plain(path) == {(1, "loss"): 0.5, (2, "loss"): None, (3, "loss"): 0.25, (4, "loss"): 0.125}
    with pytest.raises(TypeError, match="background must be True or False"):
        RunStore(tmp_path / "other.sqlite", background="yes")
    assert not (tmp_path / "other.sqlite").exists()


def test_resume_continues_in_the_half_filled_last(tmp_path):
    """Truth: the rows logged across a close and a resume with halves of 2 rows (several hand-offs
    each way), read back by sqlite3 alone and by the store."""
    path = tmp_path / "run.sqlite"
    logged = {}
    for start in (1, 6):
        with RunStore(path, resume=start > 1, pending_rows=2, background=True) as store:
            for step in range(start, start + 5):
                store.log(step, {"loss": float(step)})
                logged[(step, "loss")] = float(step)
            assert store.last_step() == start + 4
    assert _plain(path) == logged
    with RunStore(path, read_only=True) as reader:
        assert reader.scalars("loss") == (list(range(1, 11)), [float(s) for s in range(1, 11)])
    assert json.dumps(sorted(logged)) == json.dumps(sorted(_plain(path)))
