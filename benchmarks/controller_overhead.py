"""Cost of the controller's actions per optimizer step (``shockwatch.control``), without a Monitor.

    .venv/bin/python benchmarks/controller_overhead.py [--steps N] [--out FILE]

Model and step: the attention-spike testbed's decoder (2 layers, 4 heads, d 64, batch 32 x 64
tokens, AdamW with decay / no-decay groups), one thread. Timed per step (forward, backward, step),
N steps after a warm-up, median of 5 repeats, in milliseconds and as a ratio to the plain step:
    plain          no controller
    idle           a Controller with CutLR attached, no warning (its two optimizer hooks)
    cut            CutLR holding a cut (the rate scaled before and restored after every step)
    skip-armed     SkipStep attached: the parameters and AdamW's state copied every step
    cap            CapLogits holding a cap: every attention softmax recomputed through tanh
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch
from _common import git_commit

from shockwatch.control import CapLogits, Controller, CutLR, SkipStep
from shockwatch.experiments import testbeds as tb
from shockwatch.monitor import EarlyWarning

CASES = ("plain", "idle", "cut", "skip-armed", "cap")


def per_step_ms(case: str, steps: int) -> float:
    bed = tb.make_testbed("attention-spike", seed=0, steps=steps + 10)
    controller = None
    if case != "plain":
        action = {"idle": CutLR(0.3, hold=10**6, rewarm=1), "cut": CutLR(0.3, hold=10**6, rewarm=1),
                  "skip-armed": SkipStep(), "cap": CapLogits(30.0)}[case]
        controller = Controller([action], signals=None, cooldown=0, budget=None)
        controller.attach(bed.model, bed.optimizer)
        if case in ("cut", "cap"):
            controller(EarlyWarning("benchmark", "raw", 0, "loss", 1.0))
    model, optimizer = bed.model, bed.optimizer

    def step(index: int) -> None:
        inputs, targets = bed.train_batch(index)
        optimizer.zero_grad(set_to_none=True)
        bed.loss_fn(model(inputs), targets).backward()
        optimizer.step()

    for index in range(1, 6):
        step(index)
    start = time.perf_counter()
    for index in range(6, 6 + steps):
        step(index)
    elapsed = time.perf_counter() - start
    if controller is not None:
        controller.close()
    return 1e3 * elapsed / steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "controller_overhead.json")
    args = parser.parse_args()
    torch.set_num_threads(1)
    times = {case: [] for case in CASES}
    for _ in range(5):  # interleaved, so that a change of the machine's load spreads over every case
        for case in CASES:
            times[case].append(per_step_ms(case, args.steps))
    medians = {case: statistics.median(values) for case, values in times.items()}
    result = {"command": "benchmarks/controller_overhead.py", "steps": args.steps, "model": "attention-spike decoder",
              "machine": platform.platform(), "python": platform.python_version(), "threads": 1,
              "commit": git_commit(),
              "ms_per_step": medians, "ratio_to_plain": {case: medians[case] / medians["plain"] for case in CASES}}
    args.out.write_text(json.dumps(result, indent=1))
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
