"""Overhead of ConservationTracker.update() per training step, as a ratio to the plain step.

    .venv/bin/python benchmarks/tracker_overhead.py [--record-every K] [--width-divisor D] [--rounds R] [--compile] [--out FILE]

Model: models.vgg("vgg11", width_divisor=4, batch_norm=True, image_size=32, hidden=128), float32,
CPU; batch of 64 random 3x32x32 images; SGD(lr=0.01, momentum=0.9, weight_decay=5e-4). A step is
zero_grad + forward + backward + optimizer.step (+ tracker.update()). Timed: 20 rounds of 10 plain
and 10 tracked steps after 5 warm-up steps, every step timed on its own; the ratio is of the
medians of the steps (this shared 2-core machine drifts by +-15% between blocks of steps, which made the earlier
min-of-3-blocks ratio swing from 1.04 to 1.14 between identical runs). update() alone, called back to back
(hot caches, so a lower bound), is timed too. --width-divisor 1 is the full-width VGG-11.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F

import shockwatch as sw


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "tracker_overhead.json")
    parser.add_argument("--record-every", type=int, default=1)
    parser.add_argument("--width-divisor", type=int, default=4, help="1 = the full VGG-11 widths (64..512)")
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--compile", action="store_true", help="ConservationTracker(compile=True)")
    args = parser.parse_args()
    torch.manual_seed(0)
    model = sw.models.vgg("vgg11", width_divisor=args.width_divisor, batch_norm=True, image_size=32, hidden=128)
    x, y = torch.randn(64, 3, 32, 32), torch.randint(0, 10, (64,))
    syms = sw.find_symmetries(model, x)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    tracker = sw.ConservationTracker(model, opt, syms, record_every=args.record_every,
                                     compile=args.compile)

    def step(tracked: bool) -> None:
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
        if tracked:
            tracker.update()

    for _ in range(5):
        step(True)
    plain, tracked, update = [], [], []
    for _ in range(args.rounds):
        for flag, bucket in ((False, plain), (True, tracked)):
            for _ in range(10):
                start = time.perf_counter()
                step(flag)
                bucket.append(time.perf_counter() - start)
    for _ in range(10 * args.rounds):
        start = time.perf_counter()
        tracker.update()
        update.append(time.perf_counter() - start)
    plain_s, tracked_s = statistics.median(plain), statistics.median(tracked)
    record = {"groups": syms.counts(), "plain_step_s": plain_s, "tracked_step_s": tracked_s,
              "ratio": tracked_s / plain_s, "update_alone_hot_cache_s": statistics.median(update), "record_every": args.record_every,
              "width_divisor": args.width_divisor, "compile": args.compile, "parameters": sum(p.numel() for p in model.parameters()),
              "torch": torch.__version__, "threads": torch.get_num_threads()}
    print(json.dumps(record, indent=1))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(record, indent=1))


if __name__ == "__main__":
    main()
