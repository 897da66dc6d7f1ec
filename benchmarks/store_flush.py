"""What the run store's SQLite transactions cost the training thread, with and without the writer thread.

    .venv/bin/python benchmarks/store_flush.py [--steps 8192] [--rows 15] [--out FILE]

A monitor logs ~15 values a step. ``RunStore.log`` writes them to the memory-mapped ring; every
4096 rows (about 270 steps) a half of the ring is moved into SQLite in one transaction, in the
logging thread (``background=False``) or on the store's writer thread (``background=True``, what the
Monitor uses). Between calls a stand-in for the training step runs (``--work`` ms of a torch
matrix product on one thread, which releases the GIL as a training step does); each ``log`` call is
timed (perf_counter), and so is the whole step (work + log). The store is in a temporary directory.
The two settings alternate in blocks of 1024 steps, each in its own store, so both see the same
machine. Reported per setting: the mean, the median, the 99.9th percentile and the largest time of a
``log`` call and the same of a whole step.
Result in benchmarks/results/store_flush.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from _common import git_commit

from shockwatch.monitor import RunStore


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=8192)
    parser.add_argument("--rows", type=int, default=15)
    parser.add_argument("--work", type=float, default=1.0, help="ms of torch work a step (0: none)")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "store_flush.json")
    args = parser.parse_args()
    names = [f"value_{i}" for i in range(args.rows)]
    torch.set_num_threads(1)
    a = torch.randn(256, 256)
    repeats = 0
    if args.work > 0:  # how many products make --work ms
        start = time.perf_counter()
        for _ in range(50):
            a @ a
        repeats = max(1, round(args.work * 1e-3 / ((time.perf_counter() - start) / 50)))
    times: dict[bool, list[float]] = {False: [], True: []}
    steps_times: dict[bool, list[float]] = {False: [], True: []}
    with tempfile.TemporaryDirectory() as folder:
        stores = {background: RunStore(Path(folder) / f"{background}.sqlite", background=background)
                  for background in (False, True)}
        step = 0
        while step < args.steps:
            for background, store in stores.items():
                for offset in range(1024):
                    begin = time.perf_counter()
                    for _ in range(repeats):
                        a @ a
                    values = {name: float(step + offset) * 1e-3 + i for i, name in enumerate(names)}
                    start = time.perf_counter()
                    store.log(step + offset, values)
                    end = time.perf_counter()
                    times[background].append(end - start)
                    steps_times[background].append(end - begin)
            step += 1024
        for store in stores.values():
            store.close()
    record = {"steps": args.steps, "rows_per_step": args.rows, "pending_rows": 4096, "work_ms": args.work,
              "commit": git_commit()}
    for background in (False, True):
        key = "writer_thread" if background else "logging_thread"
        record[key] = {}
        for what, measured in (("log", times[background]), ("step", steps_times[background])):
            array = np.array(measured) * 1e6
            record[key][what] = {"mean_us": float(array.mean()), "median_us": float(statistics.median(array)),
                                 "p99_9_us": float(np.percentile(array, 99.9)), "max_us": float(array.max()),
                                 "max_at_step": int(array.argmax())}
    print(json.dumps(record, indent=1))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(record, indent=1))


if __name__ == "__main__":
    main()
