"""The floor under the monitor's per-step overhead: its fused C passes alone, beside the whole Monitor.

    .venv/bin/python benchmarks/monitor_floor.py --model mlp|vgg [--rounds N] [--out FILE]

Three loops on one model, interleaved step by step in one process (plain, floor, monitor, plain,
...), each with its own SGD(lr=0.01, momentum=0.9, weight_decay=5e-4):
- plain: the training step;
- floor: the step plus only the C calls the Monitor's every-step observables need, with every
  pointer array made once: before the step (optimizer pre-hook) one ``sw_units`` over the pairs
  (theta, g), (g, g), (b, g) that copies theta, and one ``sw_scatter``; after it one ``sw_units``
  over (theta, theta) that measures the move against the copy, and one ``sw_scatter``. No Python
  beyond the calls, no laws, no store: what no per-step monitor of these observables can go below
  on this machine, whatever is done in Python;
- monitor: the step plus ``Monitor.step`` (every-step observables, tracker every step, run store).
Reported: the median plain step and, for floor and monitor, the median per-round extra time and
the ratio (median plain + extra) / median plain. Models as in monitor_overhead.py.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

import shockwatch as sw
from shockwatch.symmetry import _native


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=("mlp", "vgg"), default="mlp")
    parser.add_argument("--rounds", type=int, default=400)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    lib = _native.library()
    if lib is None:
        raise SystemExit(f"the C kernel is needed for the floor: {_native.reason()}")
    torch.manual_seed(0)
    if args.model == "mlp":
        model = sw.models.mlp((64, 256, 256, 10))
        x, y = torch.randn(128, 64), torch.randint(0, 10, (128,))
    else:
        model = sw.models.vgg("vgg11", width_divisor=4, batch_norm=True, image_size=32, hidden=128)
        x, y = torch.randn(64, 3, 32, 32), torch.randint(0, 10, (64,))
    make = lambda: torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    plain_opt, floor_opt, monitor_opt = make(), make(), make()
    symmetries = sw.find_symmetries(model, x)
    named = dict(model.named_parameters())
    layout = symmetries.native_layout({name: tuple(named[name].shape) for name in symmetries.quadratic_params})
    names = layout.names
    pointers = lambda values: (ctypes.c_void_p * len(values))(*values)
    copy = [torch.empty_like(named[n]) for n in names]
    theta_at = [named[n].data_ptr() for n in names]
    copy_array = pointers([c.data_ptr() for c in copy])
    theta_theta = pointers(theta_at)
    units3, units1 = np.zeros((3, layout.size)), np.zeros((1, layout.size))
    groups3, groups1 = np.zeros((3, 2 * layout.groups + 1)), np.zeros((1, 2 * layout.groups + 1))
    moved = np.zeros(())
    scatter = (len(layout.row), layout.position.ctypes.data, layout.row.ctypes.data, layout.sign.ctypes.data,
               len(layout.cover), layout.cover.ctypes.data, layout.groups)

    def before_step(optimizer, *_):
        grads = [named[n].grad.data_ptr() for n in names]
        state = optimizer.state
        buffers = [state[named[n]]["momentum_buffer"].data_ptr() if named[n] in state else grads[i]
                   for i, n in enumerate(names)]
        units3.fill(0.0)
        groups3.fill(0.0)
        lib.sw_units(0, 3, len(names), layout.blocks, layout.row_offset, layout.col_offset,
                     pointers(theta_at + grads + grads), pointers(grads + grads + buffers), units3.ctypes.data,
                     layout.size, copy_array, None, None)
        lib.sw_scatter(3, layout.size, units3.ctypes.data, *scatter, groups3.ctypes.data)

    def after_step():
        units1.fill(0.0)
        groups1.fill(0.0)
        lib.sw_units(0, 1, len(names), layout.blocks, layout.row_offset, layout.col_offset, theta_theta,
                     theta_theta, units1.ctypes.data, layout.size, None, copy_array, moved.ctypes.data)
        lib.sw_scatter(1, layout.size, units1.ctypes.data, *scatter, groups1.ctypes.data)

    floor_opt.register_step_pre_hook(before_step)
    with tempfile.TemporaryDirectory() as directory:
        monitor = sw.Monitor(model, monitor_opt, Path(directory) / "run", symmetries=symmetries, tensorboard=False,
                             schedule=sw.Schedule(quotient=None))

        def step(kind: str) -> float:
            opt = {"plain": plain_opt, "floor": floor_opt, "monitor": monitor_opt}[kind]
            start = time.perf_counter()
            opt.zero_grad()
            loss = F.cross_entropy(model(x), y)
            loss.backward()
            opt.step()
            if kind == "floor":
                after_step()
            elif kind == "monitor":
                monitor.step(loss)
            return time.perf_counter() - start

        for _ in range(5):
            for kind in ("plain", "floor", "monitor"):
                step(kind)
        plain, extra = [], {"floor": [], "monitor": []}
        for _ in range(args.rounds):
            for kind in ("floor", "monitor"):
                base = step("plain")
                plain.append(base)
                extra[kind].append(step(kind) - base)
        monitor.close()
    median_plain = statistics.median(plain)
    result = {"model": args.model, "parameters": sum(p.numel() for p in model.parameters()), "rounds": args.rounds,
              "plain_step_s": median_plain, "torch": torch.__version__, "threads": torch.get_num_threads()}
    for kind, values in extra.items():
        result[f"{kind}_extra_s"] = statistics.median(values)
        result[f"{kind}_ratio"] = (median_plain + statistics.median(values)) / median_plain
    text = json.dumps(result, indent=1)
    print(text)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
