"""Overhead of Monitor.step() (every-step observables, SQLite store) as a ratio to the plain step.

    .venv/bin/python benchmarks/monitor_overhead.py --model vgg|mlp [--tensorboard] [--quotient N] [--out FILE]

vgg: models.vgg("vgg11", width_divisor=4, batch_norm=True, image_size=32, hidden=128), batch 64 of
3x32x32; mlp: models.mlp((64, 256, 256, 10)), batch 128; mlp-mnist: models.mlp((784, 1024, 1024, 10)),
batch 256. float32, CPU, SGD(lr=0.01, momentum=0.9,
weight_decay=5e-4). The monitor: every-step observables with the tracker recording every step, the
SQLite store, TensorBoard files only with --tensorboard, the quotient norms every N steps with
--quotient N (off by default: they are scheduled, not every-step, observables). 20 rounds of 10 plain and 10 monitored steps, each step timed; ratio of medians
(the method of tracker_overhead.py).
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

import shockwatch as sw


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=("vgg", "mlp", "mlp-mnist"), default="vgg")
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--tensorboard", action="store_true")
    parser.add_argument("--quotient", type=int, default=None)
    parser.add_argument("--compile", action="store_true", help="Monitor(compile=True): the fused per-step pass compiled")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    torch.manual_seed(0)
    if args.model == "vgg":
        model = sw.models.vgg("vgg11", width_divisor=4, batch_norm=True, image_size=32, hidden=128)
        x, y = torch.randn(64, 3, 32, 32), torch.randint(0, 10, (64,))
    elif args.model == "mlp":
        model = sw.models.mlp((64, 256, 256, 10))
        x, y = torch.randn(128, 64), torch.randint(0, 10, (128,))
    else:  # an MNIST-size MLP at a usual batch: where a fixed per-step cost stops mattering
        model = sw.models.mlp((784, 1024, 1024, 10))
        x, y = torch.randn(256, 784), torch.randint(0, 10, (256,))
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    # plain steps use their own optimizer: the monitor's pre-step hook lives on ``opt`` only
    plain_opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    with tempfile.TemporaryDirectory() as directory:
        monitor = sw.Monitor(model, opt, Path(directory) / "run", example_input=x, tensorboard=args.tensorboard,
                             schedule=sw.Schedule(quotient=args.quotient), compile=args.compile)
        monitoring = False

        def step() -> None:
            optimizer = opt if monitoring else plain_opt
            optimizer.zero_grad()
            loss = F.cross_entropy(model(x), y)
            loss.backward()
            optimizer.step()
            if monitoring:
                monitor.step(loss)

        for _ in range(5):
            monitoring = True
            step()
        plain, watched = [], []
        for _ in range(args.rounds):
            for flag, bucket in ((False, plain), (True, watched)):
                monitoring = flag
                for _ in range(10):
                    start = time.perf_counter()
                    step()
                    bucket.append(time.perf_counter() - start)
        monitor.close()
    record = {"model": args.model, "compile": args.compile, "tensorboard": args.tensorboard, "quotient_every": args.quotient, "parameters": sum(p.numel() for p in model.parameters()),
              "plain_step_s": statistics.median(plain), "monitored_step_s": statistics.median(watched),
              "ratio": statistics.median(watched) / statistics.median(plain), "torch": torch.__version__,
              "threads": torch.get_num_threads()}
    print(json.dumps(record, indent=1))
    suffix = ("_compiled" if args.compile else "") + ("_tb" if args.tensorboard else "") + (f"_q{args.quotient}" if args.quotient else "")
    out = args.out or Path(__file__).parent / "results" / f"monitor_overhead_{args.model}{suffix}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(record, indent=1))


if __name__ == "__main__":
    main()
