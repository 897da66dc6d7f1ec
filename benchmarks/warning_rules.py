"""Cost of the Monitor's default warning rules per step (``monitor.warnings.default_rules``).

    .venv/bin/python benchmarks/warning_rules.py [--steps N] [--out FILE]

The rules see what a monitored MLP logs every step with the default schedule (loss, lr, |g|,
|theta|, the update, gradient breaking, charge drift and law error for two kinds: 12 values), the
loss varying; every default rule observes every step, as in ``Monitor.step``. Timed: N steps after
a warm-up of 200, median of 5 repeats, microseconds per step. With SGD and with AdamW (the rule
set differs only in which curvature names it reads).
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

from shockwatch.monitor.warnings import default_rules

VALUES = {"loss": 1.0, "lr": 0.1, "grad_norm": 1.0, "param_norm": 3.0, "update_norm": 0.1, "update_ratio": 0.01,
          "gradient_breaking/scale": 1e-9, "charge_drift/scale": 1e-3, "charge_law_error/scale": 1e-9,
          "gradient_breaking/rescale": 1e-9, "charge_drift/rescale": 1e-3, "charge_law_error/rescale": 1e-9}


def per_step(optimizer, steps: int) -> float:
    rules = default_rules(optimizer)
    values = dict(VALUES)
    for step in range(200):
        values["loss"] = 1.0 + 0.01 * (step % 7)
        for rule in rules:
            rule.observe(step, values)
    start = time.perf_counter()
    for step in range(200, 200 + steps):
        values["loss"] = 1.0 + 0.01 * (step % 7)
        for rule in rules:
            rule.observe(step, values)
    return 1e6 * (time.perf_counter() - start) / steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=20_000)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "warning_rules.json")
    args = parser.parse_args()
    parameter = [torch.nn.Parameter(torch.zeros(1))]
    result = {"command": "benchmarks/warning_rules.py", "steps": args.steps, "values_per_step": len(VALUES),
              "machine": platform.platform(), "python": platform.python_version(),
              "commit": git_commit()}
    for name, optimizer in (("sgd", torch.optim.SGD(parameter, lr=0.1)), ("adamw", torch.optim.AdamW(parameter))):
        result[f"{name}_rules"] = len(default_rules(optimizer))
        result[f"{name}_us_per_step"] = statistics.median(per_step(optimizer, args.steps) for _ in range(5))
    args.out.write_text(json.dumps(result, indent=1))
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
