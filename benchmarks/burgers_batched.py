"""Throughput of the batched Burgers path: many initial data / many viscosities in one solve.

    .venv/bin/python benchmarks/burgers_batched.py [--device cuda] [--compile] [--out FILE]

Problem: the sine problem v0 = a sin(2 pi x) + 0.5 on the periodic unit interval, one amplitude a
per batch row (a in [0.5, 1]), N = 1000 cells, WENO5 + SSPRK(10,4), T = 0.1. Reported: wall time
(min of 3) and cell updates per second = B * N * steps / wall. The first (warm-up) solve is not
timed, so compilation, if asked for, is excluded and reported separately.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import time
from pathlib import Path

import torch

import shockwatch
from shockwatch.pde import solve_burgers


def case(batch: int, n: int, device: str):
    x = (torch.arange(n, dtype=torch.float64, device=device) + 0.5) / n
    amplitude = torch.linspace(0.5, 1.0, batch, dtype=torch.float64, device=device).unsqueeze(1)
    # exact cell averages of a sin(2 pi x) + 0.5
    h = 1.0 / n
    v0 = amplitude * (torch.cos(2 * math.pi * (x - h / 2)) - torch.cos(2 * math.pi * (x + h / 2))) / (2 * math.pi * h) + 0.5
    return v0, x


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--compile", action="store_true")
    parser.add_argument("--cells", type=int, default=1000)
    parser.add_argument("--batches", default="1,16,128")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "burgers_batched.json")
    args = parser.parse_args()
    t_final = 0.1
    rows = []
    for batch in [int(b) for b in args.batches.split(",")]:
        v0, x = case(batch, args.cells, args.device)
        start = time.perf_counter()
        solve_burgers(v0, x, t_final, compile=args.compile)
        warm_up = time.perf_counter() - start
        walls = []
        for _ in range(3):
            if args.device.startswith("cuda"):
                torch.cuda.synchronize()
            start = time.perf_counter()
            solve_burgers(v0, x, t_final, compile=args.compile)
            if args.device.startswith("cuda"):
                torch.cuda.synchronize()
            walls.append(time.perf_counter() - start)
        # the step count: dt = 2.4 h / max|v0| re-evaluated every 16 steps; max|v| does not grow
        steps = math.ceil(t_final / (2.4 / args.cells / 1.5))
        wall = min(walls)
        rows.append({"batch": batch, "cells": args.cells, "wall_s": wall, "warm_up_s": warm_up,
                     "approx_steps": steps, "cell_updates_per_s": batch * args.cells * steps / wall})
        print(f"B={batch:4d} N={args.cells} wall={wall:.4f}s warm-up={warm_up:.2f}s "
              f"cell-updates/s={rows[-1]['cell_updates_per_s']:.3e}", flush=True)
    record = {"device": args.device, "compile": args.compile, "torch": torch.__version__,
              "shockwatch": shockwatch.__version__, "threads": torch.get_num_threads(),
              "machine": platform.processor() or platform.machine(), "rows": rows}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    existing = json.loads(args.out.read_text()) if args.out.exists() else []
    existing = [r for r in existing if (r["device"], r["compile"]) != (args.device, args.compile)]
    args.out.write_text(json.dumps(existing + [record], indent=1))


if __name__ == "__main__":
    main()
