"""The run store: one SQLite file per run, written as the run goes, and its ring of pending steps.

Tables: ``scalars(step, name, value)``, ``events(step, kind, message)``, ``meta(key, value)``,
``names(id, name)``. Scalars are stored by (step, name), without a rowid: one step's rows share a
page; ``series()`` reads every name in one scan.

A transaction per step costs more than the rest of a small model's monitor (18 us warm, 130 us
right after a training step, measured in the loop: benchmarks/RESULTS.md), so steps are first
written to ``<database>-pending``: a memory-mapped float64 file of two halves, each a ring of
(step, name id, value) rows whose first row holds the count of rows in use (written after the rows
it counts) and the half's sequence number. A write to a shared mapping is in the kernel's page cache
as soon as it is made, so a killed process (SIGKILL, an out-of-memory kill, a crash) loses at most
the step it was writing, as with a transaction per step; a power cut can lose what the kernel had
not written back (as SQLite's ``synchronous=NORMAL`` can lose its last transactions). Steps go to
the active half; when it is full (or ``flush_seconds`` have passed) it is moved into the database in
one transaction and the other half takes the steps, so with ``background=True`` the transaction runs
on a writer thread while training goes on (a half's count is cleared only after its transaction
commits: a kill mid-transaction leaves its rows to be moved again). A writer opening the run again
moves what a killed one left, older half first; a reader (``read_only=True``) merges both halves into
what it reads without changing either file, so a run can be read while it is written. Events and
meta are committed at once (they are rare).
"""

from __future__ import annotations

import gc
import math
import os
import sqlite3
import threading
import time
from collections.abc import Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import numpy as np

__all__ = ["RunStore"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS scalars (step INTEGER NOT NULL, name TEXT NOT NULL, value REAL, PRIMARY KEY (step, name))
    WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS events (step INTEGER NOT NULL, kind TEXT NOT NULL, message TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS names (id INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE);
"""


def _ordered_halves(ring: np.ndarray) -> list[np.ndarray]:
    """The pending file's halves in the order they were filled (by sequence number); a file of one
    ring (written before the two halves) is one half."""
    if ring.ndim == 2:
        return [ring]
    return sorted(ring, key=lambda half: half[0, 1])


def _writer_lock(path: Path):
    """An exclusive, non-blocking flock on ``<path>-lock``, held while a writer has the run open: a
    second writer (a Monitor re-made with ``resume=True`` while the first is still open, in this
    process or another) is refused in one line. The operating system lets go of it when the holder
    dies, so a killed run can be resumed. None where there is no flock (Windows)."""
    try:
        import fcntl
    except ImportError:
        return None
    handle = open(path.with_name(path.name + "-lock"), "a+")  # noqa: SIM115 -- held until close()
    for attempt in range(2):
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return handle
        except OSError:
            if attempt == 0:  # a writer no longer reachable (a notebook's old Monitor in a cycle): collected, its lock goes
                gc.collect()
    handle.close()
    raise RuntimeError(f"{path} is open for writing by another Monitor or RunStore (in this process or another): "
                       "close that one first (mon.close()); to read it while it runs, use read_only=True")


class RunStore:
    """Scalars and events of one run in ``path`` (created; ``resume=True`` appends to an existing one;
    ``read_only=True`` reads an existing one, live or finished, and changes nothing).

    ``pending_rows``: the size of each of the ring's two halves in scalar rows (a step of the monitor
    is 5-20 rows), i.e. how many rows are written to the database together at most; ``flush_seconds``:
    they are also written at the first ``log`` that many seconds after the last write, so that a
    reader of the database alone (sqlite3, pandas) is that far behind the logged steps at most while
    steps come (a run that stops logging keeps its last rows in the ring until the next ``log`` or
    ``close``; ``read_only=True`` readers see them at once). ``background=True``: those writes run on
    a writer thread, so ``log`` never waits for SQLite unless the thread is still writing the other
    half (an error of that thread is raised by the next ``log``, ``flush`` or ``close``, the rows
    kept in the ring). NaN is stored as NULL (SQLite has no NaN) and read back as NaN; an infinity as itself.
    Every method but ``close`` raises ValueError once the store is closed.
    """

    def __init__(self, path: str | Path, *, resume: bool = False, read_only: bool = False,
                 pending_rows: int = 4096, flush_seconds: float = 2.0, background: bool = False) -> None:
        self.path = Path(path)
        self.read_only = read_only
        self._db = None
        self._ring = None
        self._writer: ThreadPoolExecutor | None = None
        self._writing = None  # the writer's lock on the run (an open file holding an exclusive flock)
        self._in_flight: Future | None = None  # the other half's transaction on the writer thread
        if isinstance(pending_rows, bool) or not isinstance(pending_rows, int) or pending_rows < 1:
            raise ValueError(f"pending_rows must be a positive int, got {pending_rows!r}")
        if isinstance(flush_seconds, bool) or not isinstance(flush_seconds, (int, float)) or not flush_seconds >= 0:
            raise ValueError(f"flush_seconds must be a number >= 0, got {flush_seconds!r}")
        if not isinstance(background, bool):
            raise TypeError(f"background must be True or False, got {background!r}")
        self.check_path(self.path, resume=resume, read_only=read_only)
        self._pending_path = self.path.with_name(self.path.name + "-pending")
        self._flush_seconds, self._flushed_at = float(flush_seconds), time.monotonic()
        # one connection, used by this thread and the writer thread in turn
        self._lock = threading.Lock()
        if read_only:
            # a URI: the path percent-encoded (a folder named "exp#1" or "what?" is no query or fragment).
            # A finished run (no writer's lock, no write-ahead log) is read as immutable: SQLite then
            # leaves no -wal / -shm files beside it, which a read-only connection cannot remove
            finished = not any(self.path.with_name(self.path.name + suffix).exists() for suffix in ("-wal", "-lock"))
            query = "mode=ro&immutable=1" if finished else "mode=ro"
            self._db = sqlite3.connect(f"{self.path.resolve().as_uri()}?{query}", uri=True)
            return
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._writing = _writer_lock(self.path)
            try:
                self._db = sqlite3.connect(self.path, check_same_thread=False)
                self._db.execute("PRAGMA journal_mode=WAL")
            except sqlite3.OperationalError as error:  # SQLite's own message names neither the path nor why
                size = len(os.fsencode(self.path.resolve()))
                why = f"SQLite opens paths of at most 512 bytes, this one has {size}: choose a shorter log_dir" \
                    if size > 512 else "check that the folder is writable and on a local file system"
                raise OSError(f"cannot open the run store {str(self.path)!r} ({error}): {why}") from None
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.executescript(_SCHEMA)
            self._db.commit()
            self._ids = {name: i for i, name in self._db.execute("SELECT id, name FROM names")}
            if self._pending_path.exists():  # what a killed writer left: into the database first, older half first
                left = np.load(self._pending_path, mmap_mode="r+")
                for half in _ordered_halves(left):
                    self._commit_half(half)
                fits = left.shape == (2, pending_rows + 1, 3)
                del left
                if not fits:
                    self._pending_path.unlink()
            if not self._pending_path.exists():
                np.lib.format.open_memmap(self._pending_path, mode="w+", dtype=np.float64,
                                          shape=(2, pending_rows + 1, 3)).flush()
            # the same mapped pages; slices without memmap's bookkeeping
            self._ring = np.load(self._pending_path, mmap_mode="r+").view(np.ndarray)
        except BaseException:  # a new run that failed to start leaves no file behind; a resumed one stays
            self._ring = None
            self.discard() if not resume else self.close()
            raise
        self._active = int(np.argmax(self._ring[:, 0, 1]))  # the steps continue in the half filled last
        self._half = self._ring[self._active]
        self._count = 0
        self._sequence = int(self._half[0, 1])
        if background:
            self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="shockwatch-store")

    @staticmethod
    def check_path(path: str | Path, *, resume: bool = False, read_only: bool = False) -> None:
        """Raise what opening ``path`` so would raise about its existence (FileExistsError for a new run
        over an old one, FileNotFoundError for nothing to read or resume, IsADirectoryError for a folder
        such as a Monitor's log_dir), before anything is written."""
        path = Path(path)
        if path.is_dir():  # a Monitor's log_dir: the store is the file in it (SQLite said "disk I/O error")
            inside = " (the run store in it)" if (path / "run.sqlite").exists() else ""
            raise IsADirectoryError(f"{path} is a folder: a run store is one file; a Monitor writes it as "
                                    f"{path / 'run.sqlite'}{inside}: pass that path")
        if read_only or resume:
            if not path.exists():
                raise FileNotFoundError(f"{path} does not exist: nothing to {'read' if read_only else 'resume'}")
        elif path.exists():
            raise FileExistsError(f"{path} exists: pass resume=True to continue that run, or choose a new path")

    def _name_id(self, name: str) -> int:
        found = self._ids.get(name)
        if found is None:  # a new name is committed before any row that refers to it
            with self._lock:
                with self._db:
                    found = self._db.execute("INSERT INTO names (name) VALUES (?)", (name,)).lastrowid
                self._ids[name] = found  # under the lock: the writer thread reads the map
        return found

    def _writable(self) -> None:
        self._open()
        if self.read_only:
            raise PermissionError(f"{self.path} was opened read_only")

    def _open(self) -> None:
        if self._db is None:
            raise ValueError(f"the run store {self.path} is closed: open it again (RunStore(path, resume=True) "
                             "to write, read_only=True to read)")

    def log(self, step: int, values: Mapping[str, float]) -> None:
        """Record ``values`` at ``step``; a second value for (name, step) replaces the first."""
        self._writable()
        step = int(step)
        rows = [(step, self._name_id(name), float(value)) for name, value in values.items()]
        if self._count + len(rows) > len(self._half) - 1:
            self._hand_off()
            if len(rows) > len(self._half) - 1:  # more than a half holds: straight to the database, after it
                self._settle()
                self._commit(rows)
                return
        half = self._half
        half[1 + self._count: 1 + self._count + len(rows)] = rows
        self._count += len(rows)
        half[0, 0] = self._count  # published after the rows it counts
        # on time as well as on size: a plain SQLite reader (sqlite3, pandas), which does not read the
        # ring, is at most flush_seconds behind the steps logged (a transaction costs ~20-130 us)
        if time.monotonic() - self._flushed_at >= self._flush_seconds:
            self._hand_off()

    def _hand_off(self) -> None:
        """The active half into the database (on the writer thread with ``background``), the steps from
        here into the other half, once that one's own transaction is done."""
        self._settle()
        if self._count:
            full = self._half
            self._active = 1 - self._active
            self._half = self._ring[self._active]
            self._sequence += 1
            self._half[0, 1] = self._sequence  # the newer half: a recovery moves it last
            self._count = 0
            if self._writer is not None:
                self._in_flight = self._writer.submit(self._commit_half, full)
            else:
                self._commit_half(full)
        self._flushed_at = time.monotonic()

    def _settle(self) -> None:
        """Wait for the writer thread's transaction of the other half, then move into the database, in
        this thread, whatever that half still holds: the rows of a transaction that failed (a reader
        holding the database, a full disk since freed), tried once more here, raising if it fails too."""
        in_flight, self._in_flight = self._in_flight, None
        if in_flight is not None:
            in_flight.exception()  # waits; a failure left the half's count set, for the line below
        self._commit_half(self._ring[1 - self._active])

    def _commit_half(self, half: np.ndarray) -> None:
        """One half's rows into the database, then its count cleared (a kill before that line: the same
        rows again next time, replacing themselves)."""
        count = min(int(half[0, 0]), len(half) - 1)
        if count:
            self._commit(half[1: 1 + count].tolist())
            half[0, 0] = 0

    def _commit(self, rows) -> None:
        with self._lock:
            if not self._ids:
                self._ids = {name: i for i, name in self._db.execute("SELECT id, name FROM names")}
            names = {i: name for name, i in self._ids.items()}
            with self._db:
                self._db.executemany("INSERT OR REPLACE INTO scalars VALUES (?, ?, ?)",
                                     [(int(step), names[int(i)], None if math.isnan(value) else value)
                                      for step, i, value in rows])

    def flush(self) -> None:
        """Move the pending steps into the database now, in this thread (waiting for the writer thread)."""
        self._writable()
        self._settle()  # the older half first
        self._commit_half(self._half)
        self._count = 0
        self._flushed_at = time.monotonic()

    def _pending(self) -> list[tuple[int, str, float]]:
        """The ring's rows (a reader's view: the writer flushes instead)."""
        if self._ring is not None:
            self.flush()
            return []
        try:
            ring = np.load(self._pending_path, mmap_mode="r")
        except (OSError, ValueError):  # none, or a writer creating it right now
            return []
        names = dict(self._db.execute("SELECT id, name FROM names"))
        rows = []
        for half in _ordered_halves(ring):
            count = min(int(half[0, 0]), len(half) - 1)
            rows += [(int(step), names[int(i)], value) for step, i, value in half[1: 1 + count].tolist()
                     if int(i) in names]
        return rows

    def event(self, step: int, kind: str, message: str) -> None:
        self._writable()
        with self._lock, self._db:
            self._db.execute("INSERT INTO events VALUES (?, ?, ?)", (int(step), kind, message))

    def set_meta(self, values: Mapping[str, str]) -> None:
        self._writable()
        with self._lock, self._db:
            self._db.executemany("INSERT OR REPLACE INTO meta VALUES (?, ?)", [(k, str(v)) for k, v in values.items()])

    def meta(self) -> dict[str, str]:
        self._open()
        with self._lock:
            return dict(self._db.execute("SELECT key, value FROM meta"))

    def names(self) -> list[str]:
        self._open()
        pending = {name for _, name, _ in self._pending()}
        with self._lock:
            return sorted(pending | {row[0] for row in self._db.execute("SELECT DISTINCT name FROM scalars")})

    def scalars(self, name: str) -> tuple[list[int], list[float]]:
        """(steps, values) of one observable, in step order."""
        self._open()
        pending = self._pending()  # first: a writer moves its ring into the database
        with self._lock:
            rows = dict(self._db.execute("SELECT step, value FROM scalars WHERE name = ?", (name,)))
        rows.update((step, value) for step, pending_name, value in pending if pending_name == name)
        steps = sorted(rows)
        return steps, [math.nan if rows[s] is None else rows[s] for s in steps]

    def series(self) -> dict[str, tuple[list[int], list[float]]]:
        """Every observable's (steps, values), in step order, from one scan of the table."""
        self._open()
        pending = self._pending()  # first: a writer moves its ring into the database
        by_name: dict[str, dict[int, float | None]] = {}
        with self._lock:
            for step, name, value in self._db.execute("SELECT step, name, value FROM scalars ORDER BY step"):
                by_name.setdefault(name, {})[step] = value
        for step, name, value in pending:
            by_name.setdefault(name, {})[step] = value
        out = {}
        for name, rows in sorted(by_name.items()):
            steps = sorted(rows)
            out[name] = (steps, [math.nan if rows[s] is None else rows[s] for s in steps])
        return out

    def events(self) -> list[tuple[int, str, str]]:
        self._open()
        with self._lock:
            return list(self._db.execute("SELECT step, kind, message FROM events ORDER BY rowid"))

    def last_step(self) -> int | None:
        self._open()
        pending = [step for step, _, _ in self._pending()]
        with self._lock:
            stored = self._db.execute("SELECT MAX(step) FROM scalars").fetchone()[0]
        return max([*pending, *([stored] if stored is not None else [])], default=None)

    def drop_after(self, step: int) -> int:
        """Remove the rows and events of every step after ``step`` (a run resumed from an earlier
        checkpoint: training discarded those steps); returns how many steps had rows."""
        self.flush()
        with self._lock, self._db:
            removed = self._db.execute("SELECT COUNT(DISTINCT step) FROM scalars WHERE step > ?", (int(step),)).fetchone()[0]
            self._db.execute("DELETE FROM scalars WHERE step > ?", (int(step),))
            self._db.execute("DELETE FROM events WHERE step > ?", (int(step),))
        return int(removed)

    def _stop_writer(self) -> None:
        if self._writer is not None:
            self._writer.shutdown(wait=True)
            self._writer = None

    def close(self) -> None:
        """Move the pending steps into the database and close it (idempotent). The ring's file goes.
        Should the last transaction fail, its error is raised and the ring's file kept (a writer
        opening the run again moves it)."""
        if self._db is None:
            return
        writer = self._ring is not None
        try:
            if writer:
                self.flush()
        finally:
            self._stop_writer()
            self._ring = self._half = None
            self._db.close()
            self._db = None
            self._release()
        if writer:  # reached only once every pending row is in the database
            self._pending_path.unlink(missing_ok=True)

    def discard(self) -> None:
        """Close and delete the run's files (the database, its WAL and shared memory, the ring): for a
        writer whose run never started (a constructor that failed after opening it)."""
        self._stop_writer()
        if self._db is not None:
            self._db.close()
            self._db = None
        self._ring = None
        for suffix in ("", "-wal", "-shm", "-journal", "-pending"):
            self.path.with_name(self.path.name + suffix).unlink(missing_ok=True)
        self._release()

    def _release(self) -> None:
        """The writer's lock let go (its file removed first, while still held)."""
        if self._writing is not None:
            Path(self._writing.name).unlink(missing_ok=True)
            self._writing.close()
            self._writing = None

    def __enter__(self) -> RunStore:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
