"""Overhead of ConservationTracker.update() per training step, as a ratio to the plain step.

    .venv/bin/python benchmarks/tracker_overhead.py [--out FILE]

Model: models.vgg("vgg11", width_divisor=4, batch_norm=True, image_size=32, hidden=128), float32,
CPU; batch of 64 random 3x32x32 images; SGD(lr=0.01, momentum=0.9, weight_decay=5e-4). A step is
zero_grad + forward + backward + optimizer.step (+ tracker.update()). Timed: 40 steps after 5
warm-up steps, alternating plain and tracked blocks 3 times, min per block.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
import torch.nn.functional as F

import shockwatch as sw


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "tracker_overhead.json")
    parser.add_argument("--record-every", type=int, default=1)
    args = parser.parse_args()
    torch.manual_seed(0)
    model = sw.models.vgg("vgg11", width_divisor=4, batch_norm=True, image_size=32, hidden=128)
    x, y = torch.randn(64, 3, 32, 32), torch.randint(0, 10, (64,))
    syms = sw.find_symmetries(model, x)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    tracker = sw.ConservationTracker(model, opt, syms, record_every=args.record_every)

    def step(tracked: bool) -> None:
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
        if tracked:
            tracker.update()

    for _ in range(5):
        step(True)
    plain, tracked = [], []
    for _ in range(3):
        for flag, bucket in ((False, plain), (True, tracked)):
            start = time.perf_counter()
            for _ in range(40):
                step(flag)
            bucket.append((time.perf_counter() - start) / 40)
    record = {"groups": syms.counts(), "plain_step_s": min(plain), "tracked_step_s": min(tracked),
              "ratio": min(tracked) / min(plain), "record_every": args.record_every,
              "torch": torch.__version__, "threads": torch.get_num_threads()}
    print(json.dumps(record, indent=1))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(record, indent=1))


if __name__ == "__main__":
    main()
