"""shockwatch's Monitor beside Cockpit's "economy" configuration on the same model, in one run.

    python benchmarks/cockpit_side_by_side.py     # needs cockpit-for-pytorch (and backpack) installed

MLP 64-256-256-10 (ReLU), batch 128, float32, CPU, SGD(lr=0.01, momentum=0.9, weight_decay=5e-4).
Five loops share the model shape and data: plain; Cockpit's "economy" configuration (its nine
quantities every step, BackPACK extensions on the model and loss); Cockpit with only the economy
quantities the monitor also logs every step ("cockpit-equivalent": Loss, GradNorm, UpdateSize,
Distance); the usual hand-written logging (``loss.item()`` and ``get_total_norm(grads).item()``
every step, "item-logging"); the shockwatch Monitor (every-step observables, no TensorBoard). 20
rounds of 10 steps of each, each step timed; ratio of medians. Cockpit is not a dependency of
shockwatch: this script is only run where it is installed.
"""

from __future__ import annotations

import json
import statistics
import tempfile
import time
from pathlib import Path

import torch
from _common import git_commit
from torch import nn

import shockwatch as sw


def main() -> None:
    from backpack import extend
    from cockpit import Cockpit
    from cockpit.utils.configuration import configuration

    torch.manual_seed(0)
    x, y = torch.randn(128, 64), torch.randint(0, 10, (128,))
    from cockpit import quantities
    from cockpit.utils import schedules

    cockpits = ("cockpit", "cockpit-equivalent")
    models = {name: sw.models.mlp((64, 256, 256, 10)) for name in ("plain", *cockpits, "item-logging", "shockwatch")}
    for name in cockpits:
        models[name] = extend(models[name])
    optimizers = {name: torch.optim.SGD(m.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
                  for name, m in models.items()}
    loss_fn = nn.CrossEntropyLoss()
    cockpit_loss, individual = extend(nn.CrossEntropyLoss()), nn.CrossEntropyLoss(reduction="none")
    equivalent = [quantity(track_schedule=schedules.linear(interval=1))  # every step (economy's own schedule)
                  for quantity in (quantities.Loss, quantities.GradNorm, quantities.UpdateSize, quantities.Distance)]
    instruments = {"cockpit": Cockpit(models["cockpit"].parameters(), quantities=configuration("economy")),
                   "cockpit-equivalent": Cockpit(models["cockpit-equivalent"].parameters(), quantities=equivalent)}
    with tempfile.TemporaryDirectory() as directory:
        monitor = sw.Monitor(models["shockwatch"], optimizers["shockwatch"], Path(directory) / "run",
                             example_input=x, tensorboard=False, schedule=sw.Schedule(quotient=None))
        counters = dict.fromkeys(cockpits, 0)
        logged = []

        def step(name: str) -> None:
            model, opt = models[name], optimizers[name]
            opt.zero_grad()
            outputs = model(x)
            if name in cockpits:
                cockpit = instruments[name]
                global_step = counters[name]  # from 0, as Cockpit's own loops count
                counters[name] += 1
                loss = cockpit_loss(outputs, y)
                with cockpit(global_step, info={"batch_size": len(x), "individual_losses": individual(outputs, y),
                                                "loss": loss, "optimizer": opt}):
                    loss.backward(create_graph=cockpit.create_graph(global_step))
                opt.step()
                return
            loss = loss_fn(outputs, y)
            loss.backward()
            opt.step()
            if name == "shockwatch":
                monitor.step(loss)
            elif name == "item-logging":
                grads = [p.grad for p in model.parameters()]
                logged.append((loss.item(), torch.nn.utils.get_total_norm(grads).item()))

        for name in models:
            for _ in range(5):
                step(name)
        times = {name: [] for name in models}
        for _ in range(20):
            for name in models:
                for _ in range(10):
                    start = time.perf_counter()
                    step(name)
                    times[name].append(time.perf_counter() - start)
        monitor.close()
    plain = statistics.median(times["plain"])
    record = {name: {"median_step_s": statistics.median(t), "ratio": statistics.median(t) / plain}
              for name, t in times.items()}
    from importlib.metadata import version

    record["torch"], record["threads"] = torch.__version__, torch.get_num_threads()
    record["cockpit_version"], record["commit"] = version("cockpit-for-pytorch"), git_commit()
    record["date"] = time.strftime("%Y-%m-%d")
    print(json.dumps(record, indent=1))
    out = Path(__file__).parent / "results" / "cockpit_side_by_side.json"
    out.write_text(json.dumps(record, indent=1))


if __name__ == "__main__":
    main()
