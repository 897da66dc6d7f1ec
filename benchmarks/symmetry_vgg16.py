"""Find + verify the symmetries of a VGG-16-layout CNN at CIFAR widths; charges vs a forward pass.

    .venv/bin/python benchmarks/symmetry_vgg16.py [--out FILE]

Model: shockwatch.models.vgg("vgg16", width_divisor=1, batch_norm=True, image_size=32, hidden=512,
num_classes=10), float32, CPU; batch of 8 random 3x32x32 images with random labels. Timed: find_symmetries,
verify_symmetries (every gradient identity, finite elements on 16 symmetries per kind, the joint action
of each kind, Hessian identities on 4 per kind), the charges of every group (all kinds), and one
forward pass of the batch and of a batch of 128 (min of 5 / 3).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
import torch.nn.functional as F

import shockwatch as sw


def best_of(fn, repeats: int = 5) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "symmetry_vgg16.json")
    args = parser.parse_args()
    torch.manual_seed(0)
    model = sw.models.vgg("vgg16", width_divisor=1, batch_norm=True, image_size=32, hidden=512, num_classes=10)
    x, y = torch.randn(8, 3, 32, 32), torch.randint(0, 10, (8,))
    start = time.perf_counter()
    syms = sw.find_symmetries(model, x)
    find_s = time.perf_counter() - start
    start = time.perf_counter()
    report = sw.verify_symmetries(model, F.cross_entropy, (x, y), syms, element_samples=16, hessian_samples=4)
    verify_s = time.perf_counter() - start
    params = dict(model.named_parameters())
    charges_s = best_of(lambda: [syms.charges(kind, params) for kind in sw.Kind if kind.one_parameter])
    x_large = torch.randn(128, 3, 32, 32)
    with torch.no_grad():
        forward_s = best_of(lambda: model(x))
        forward_large_s = best_of(lambda: model(x_large), repeats=3)
    record = {
        "parameters": sum(p.numel() for p in model.parameters()),
        "counts": syms.counts(), "unanalysed": list(syms.unanalysed),
        "find_s": find_s, "verify_s": verify_s, "charges_all_kinds_s": charges_s, "forward_batch8_s": forward_s,
        "forward_batch128_s": forward_large_s,
        "max_loss_change": {k.value: report.max_loss_change(k) for k in sw.Kind},
        "joint_loss_change": report.joint_loss_change,
        "max_gradient_alignment": {k.value: report.max_gradient_alignment(k) for k in sw.Kind if k.one_parameter},
        "max_hessian_residual": {k.value: report.max_hessian_residual(k) for k in sw.Kind if k.one_parameter},
        "torch": torch.__version__, "threads": torch.get_num_threads(),
    }
    print(json.dumps(record, indent=1))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(record, indent=1))


if __name__ == "__main__":
    main()
