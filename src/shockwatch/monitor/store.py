"""The run store: one SQLite file per run, written as the run goes, and its ring of pending steps.

Tables: ``scalars(step, name, value)``, ``events(step, kind, message)``, ``meta(key, value)``,
``names(id, name)``. Scalars are stored by (step, name), without a rowid: one step's rows share a
page; ``series()`` reads every name in one scan.

A transaction per step costs more than the rest of a small model's monitor (18 us warm, 130 us
right after a training step, measured in the loop: benchmarks/RESULTS.md), so steps are first
written to ``<database>-pending``: a memory-mapped float64 ring of (step, name id, value) rows,
whose first row holds the count of rows in use, written after the rows it counts. A write to a
shared mapping is in the kernel's page cache as soon as it is made, so a killed process (SIGKILL,
an out-of-memory kill, a crash) loses at most the step it was writing, as with a transaction per
step; a power cut can lose what the kernel had not written back (as SQLite's ``synchronous=NORMAL``
can lose its last transactions). The ring is moved into the database in one transaction when it is
full and at ``close()``; a writer opening the run again moves what a killed one left; a reader
(``read_only=True``) merges it into what it reads without changing either file, so a run can be
read while it is written. Events and meta are committed at once (they are rare).
"""

from __future__ import annotations

import math
import sqlite3
import time
from collections.abc import Mapping
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


class RunStore:
    """Scalars and events of one run in ``path`` (created; ``resume=True`` appends to an existing one;
    ``read_only=True`` reads an existing one, live or finished, and changes nothing).

    ``pending_rows``: the ring's size in scalar rows (a step of the monitor is 5-20 rows), i.e. how
    many rows are written to the database together at most; ``flush_seconds``: they are also written
    at the first ``log`` that many seconds after the last write, so that a reader of the database alone
    (sqlite3, pandas) is that far behind the logged steps at most while steps come (a run that stops
    logging keeps its last rows in the ring until the next ``log`` or ``close``; ``read_only=True``
    readers see them at once). Non-finite values are stored as NULL (SQLite has no NaN) and read back
    as NaN. Every method but ``close`` raises ValueError once the store is closed.
    """

    def __init__(self, path: str | Path, *, resume: bool = False, read_only: bool = False,
                 pending_rows: int = 4096, flush_seconds: float = 2.0) -> None:
        self.path = Path(path)
        self.read_only = read_only
        self._db = None
        if isinstance(pending_rows, bool) or not isinstance(pending_rows, int) or pending_rows < 1:
            raise ValueError(f"pending_rows must be a positive int, got {pending_rows!r}")
        if isinstance(flush_seconds, bool) or not isinstance(flush_seconds, (int, float)) or not flush_seconds >= 0:
            raise ValueError(f"flush_seconds must be a number >= 0, got {flush_seconds!r}")
        self.check_path(self.path, resume=resume, read_only=read_only)
        self._pending_path = self.path.with_name(self.path.name + "-pending")
        self._flush_seconds, self._flushed_at = float(flush_seconds), time.monotonic()
        if read_only:
            self._db = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True)
            self._ring = None
            return
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(self.path)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.executescript(_SCHEMA)
            self._db.commit()
            self._ids = {name: i for i, name in self._db.execute("SELECT id, name FROM names")}
            if self._pending_path.exists():  # what a killed writer left: into the database first
                self._ring = np.load(self._pending_path, mmap_mode="r+")
                self.flush()
                if len(self._ring) != pending_rows + 1:
                    del self._ring
                    self._pending_path.unlink()
            if not self._pending_path.exists():
                self._ring = np.lib.format.open_memmap(self._pending_path, mode="w+", dtype=np.float64,
                                                       shape=(pending_rows + 1, 3))
        except BaseException:  # a new run that failed to start leaves no file behind; a resumed one stays
            self._ring = None
            self.discard() if not resume else self.close()
            raise
        self._ring = self._ring.view(np.ndarray)  # the same mapped pages; slices without memmap's bookkeeping
        self._count = 0

    @staticmethod
    def check_path(path: str | Path, *, resume: bool = False, read_only: bool = False) -> None:
        """Raise what opening ``path`` so would raise about its existence (FileExistsError for a new run
        over an old one, FileNotFoundError for nothing to read or resume), before anything is written."""
        path = Path(path)
        if read_only or resume:
            if not path.exists():
                raise FileNotFoundError(f"{path} does not exist: nothing to {'read' if read_only else 'resume'}")
        elif path.exists():
            raise FileExistsError(f"{path} exists: pass resume=True to continue that run, or choose a new path")

    def _name_id(self, name: str) -> int:
        found = self._ids.get(name)
        if found is None:  # a new name is committed before any row that refers to it
            with self._db:
                found = self._db.execute("INSERT INTO names (name) VALUES (?)", (name,)).lastrowid
            self._ids[name] = found
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
        if self._count + len(rows) > len(self._ring) - 1:
            self.flush()
            if len(rows) > len(self._ring) - 1:  # more than the ring holds: straight to the database
                self._commit(rows)
                return
        self._ring[1 + self._count: 1 + self._count + len(rows)] = rows
        self._count += len(rows)
        self._ring[0, 0] = self._count  # published after the rows it counts
        # on time as well as on size: a plain SQLite reader (sqlite3, pandas), which does not read the
        # ring, is at most flush_seconds behind the steps logged (a transaction costs ~20-130 us)
        if time.monotonic() - self._flushed_at >= self._flush_seconds:
            self.flush()

    def _commit(self, rows) -> None:
        names = {i: name for name, i in self._ids.items()}
        with self._db:
            self._db.executemany("INSERT OR REPLACE INTO scalars VALUES (?, ?, ?)",
                                 [(int(step), names[int(i)], value if math.isfinite(value) else None)
                                  for step, i, value in rows])

    def flush(self) -> None:
        """Move the pending steps into the database (one transaction)."""
        self._writable()
        count = int(self._ring[0, 0])
        if count:
            if not self._ids:
                self._ids = {name: i for i, name in self._db.execute("SELECT id, name FROM names")}
            self._commit(self._ring[1: 1 + count].tolist())
            self._ring[0, 0] = 0  # a kill before this line: the same rows again next time, replacing themselves
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
        count = min(int(ring[0, 0]), len(ring) - 1)
        names = dict(self._db.execute("SELECT id, name FROM names"))
        return [(int(step), names[int(i)], value) for step, i, value in ring[1: 1 + count].tolist()
                if int(i) in names]

    def event(self, step: int, kind: str, message: str) -> None:
        self._writable()
        with self._db:
            self._db.execute("INSERT INTO events VALUES (?, ?, ?)", (int(step), kind, message))

    def set_meta(self, values: Mapping[str, str]) -> None:
        self._writable()
        with self._db:
            self._db.executemany("INSERT OR REPLACE INTO meta VALUES (?, ?)", [(k, str(v)) for k, v in values.items()])

    def meta(self) -> dict[str, str]:
        self._open()
        return dict(self._db.execute("SELECT key, value FROM meta"))

    def names(self) -> list[str]:
        self._open()
        pending = {name for _, name, _ in self._pending()}
        return sorted(pending | {row[0] for row in self._db.execute("SELECT DISTINCT name FROM scalars")})

    def scalars(self, name: str) -> tuple[list[int], list[float]]:
        """(steps, values) of one observable, in step order."""
        self._open()
        pending = self._pending()  # first: a writer moves its ring into the database
        rows = dict(self._db.execute("SELECT step, value FROM scalars WHERE name = ?", (name,)))
        rows.update((step, value) for step, pending_name, value in pending if pending_name == name)
        steps = sorted(rows)
        return steps, [math.nan if rows[s] is None else rows[s] for s in steps]

    def series(self) -> dict[str, tuple[list[int], list[float]]]:
        """Every observable's (steps, values), in step order, from one scan of the table."""
        self._open()
        pending = self._pending()  # first: a writer moves its ring into the database
        by_name: dict[str, dict[int, float | None]] = {}
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
        return list(self._db.execute("SELECT step, kind, message FROM events ORDER BY rowid"))

    def last_step(self) -> int | None:
        self._open()
        pending = [step for step, _, _ in self._pending()]
        stored = self._db.execute("SELECT MAX(step) FROM scalars").fetchone()[0]
        return max([*pending, *([stored] if stored is not None else [])], default=None)

    def close(self) -> None:
        """Move the pending steps into the database and close it (idempotent). The ring's file goes."""
        if self._db is None:
            return
        if self._ring is not None:
            self.flush()
            del self._ring
            self._ring = None
            self._pending_path.unlink(missing_ok=True)
        self._db.close()
        self._db = None

    def discard(self) -> None:
        """Close and delete the run's files (the database, its WAL and shared memory, the ring): for a
        writer whose run never started (a constructor that failed after opening it)."""
        if self._db is not None:
            self._db.close()
            self._db = None
        self._ring = None
        for suffix in ("", "-wal", "-shm", "-journal", "-pending"):
            self.path.with_name(self.path.name + suffix).unlink(missing_ok=True)

    def __enter__(self) -> RunStore:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
