r"""Miyagawa 2026 Assumption 4.1 and Thm 4.2 on real models: is the one-dimensional closure true?

Two collective coordinates psi, each tested in a tube across it (``quotient.closure_test``):

1. The §3.1 slice: the width-2 ReLU net of §3.1 (96 points on [-2, 2] with jitter 0.035, labels
   1{x > 0}, BCE, full-batch SGD lr 0.035 for 2000 epochs), psi = the arc length of rotating s_1
   (quotient metric: sqrt|gamma_1| theta, a circle), across = the radial direction of unit 2
   (d sqrt(2|gamma_2|)).
2. A real MLP's own direction: a width-``mlp_width`` ReLU net trained by SGD on the same task; the
   quotient trajectory is recorded in the chart's flat coordinates (gamma_j, angle of s_j, output
   bias) and psi is its leading principal direction through the final point, across the second
   (product metric; the slice spans the trajectory's extent along psi).

For each: (a) and (b) as defects (0 = closure holds), (c) and (d) exact on a flat slice (kappa = 0),
the reduced shock time tau* = -1/inf Ubar'', and the Burgers velocity from Ubar' against the exact
1-D and 2-D Hopf-Cole velocities. Reading: defect (a) says how much U varies across psi; the
closure gap says how much that variation changes the coarse-grained gradient along psi (only the
non-additive part of U(psi, eta) matters: an additive one factorises under the heat semigroup).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .. import models
from ..quotient import (
    ClosureReport,
    Direction,
    QuotientChart,
    batched_loss,
    closure_test,
)
from ..symmetry import find_symmetries
from ._files import write_result

NAME = "closure"


@dataclass(frozen=True)
class Config:
    nu: float = 0.05
    taus: tuple[float, ...] = (0.02, 0.05, 0.1)
    points: tuple[int, int] = (128, 41)  # along psi, across (odd)
    tube: float = 0.2  # |eta| <= tube around psi's line
    samples: int = 96
    jitter: float = 0.035
    relu_epochs: int = 2000
    relu_lr: float = 0.035
    mlp_width: int = 8
    mlp_steps: int = 600
    mlp_lr: float = 0.5
    record_every: int = 10
    seed: int = 0

    def __post_init__(self) -> None:
        if not (self.nu > 0 and math.isfinite(self.nu)):
            raise ValueError(f"nu must be positive and finite, got {self.nu}")
        if not self.taus or min(self.taus) <= 0 or list(self.taus) != sorted(self.taus):
            raise ValueError(f"taus must be > 0 and increasing, got {self.taus}")
        if self.points[0] < 16 or self.points[1] < 5 or self.points[1] % 2 == 0:
            raise ValueError(f"points must be (>= 16, odd >= 5), got {self.points}")
        if min(self.relu_epochs, self.mlp_steps, self.samples, self.mlp_width, self.record_every) < 1:
            raise ValueError("relu_epochs, mlp_steps, samples, mlp_width and record_every must be >= 1")
        if self.mlp_steps < 3 * self.record_every:
            raise ValueError(f"mlp_steps must cover >= 3 recordings (record_every={self.record_every}), got {self.mlp_steps}")


@dataclass(frozen=True)
class Result:
    config: Config
    cases: dict[str, dict]  # case -> ClosureReport as a dict, plus the training summary

    def to_json(self) -> dict:
        return asdict(self)

    def save(self, out: Path) -> list[Path]:
        return write_result(out, "closure", self.to_json(), plot(self))


def _data(config: Config) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(config.seed)
    x = torch.linspace(-2, 2, config.samples, dtype=torch.float64)
    x = x + config.jitter * torch.randn(config.samples, dtype=torch.float64, generator=generator)
    return x[:, None], (x > 0).double()


def _bce(out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return F.binary_cross_entropy_with_logits(out[:, 0], target)


def _train(width: int, steps: int, lr: float, data, seed: int, record_every: int | None = None):
    torch.manual_seed(seed)
    model = models.mlp((1, width, 1)).double()
    x, y = data
    syms = find_symmetries(model, x, logits=False)
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    trajectory = []
    for step in range(steps):
        optimizer.zero_grad()
        loss = _bce(model(x), y)
        loss.backward()
        optimizer.step()
        if record_every and (step + 1) % record_every == 0:
            trajectory.append(QuotientChart.at(dict(model.named_parameters()), syms).flat_coordinates())
    final = float(_bce(model(x), y).detach())
    accuracy = float(((model(x)[:, 0] > 0).double() == y).double().mean())
    return model, syms, trajectory, {"final_loss": final, "accuracy": accuracy}


def _report(report: ClosureReport, training: dict, psi_name: str, across_name: str) -> dict:
    return {**asdict(report), "training": training, "psi_meaning": psi_name, "across_meaning": across_name}


def run(config: Config = Config(), progress: bool = False) -> Result:
    from rich.progress import Progress

    data = _data(config)
    cases = {}
    with Progress(disable=not progress, transient=True) as bar:
        task = bar.add_task("closure", total=4)
        model, syms, _, training = _train(2, config.relu_epochs, config.relu_lr, data, config.seed)
        bar.advance(task)
        chart = QuotientChart.at(dict(model.named_parameters()), syms)
        loss = batched_loss(model, _bce, data)
        report = closure_test(loss, chart, Direction("rotate", 0), Direction("radial", 1), config.nu, config.taus,
                              points=config.points, tube=config.tube)
        cases["relu-width-2"] = _report(report, training, "arc length of s_1's rotation (quotient metric)",
                                        "radial direction of unit 2")
        bar.advance(task)
        model, syms, trajectory, training = _train(config.mlp_width, config.mlp_steps, config.mlp_lr, data,
                                                   config.seed + 1, config.record_every)
        bar.advance(task)
        path = np.unwrap(torch.stack(trajectory).numpy(), axis=0)  # angles continuous along the run
        centred = path - path.mean(axis=0)
        _, singular, directions = np.linalg.svd(centred, full_matrices=False)
        chart = QuotientChart.at(dict(model.named_parameters()), syms)
        extent = float(np.abs((path - path[-1]) @ directions[0]).max())
        loss = batched_loss(model, _bce, data)
        report = closure_test(loss, chart, Direction("line", tangent=tuple(directions[0].tolist())),
                              Direction("line", tangent=tuple(directions[1].tolist())), config.nu, config.taus,
                              points=config.points, tube=config.tube, metric="product",
                              half_width=(max(extent, 4 * config.tube), None))
        explained = (singular**2 / (singular**2).sum()).tolist()
        cases[f"mlp-width-{config.mlp_width}"] = _report(
            report, {**training, "trajectory_variance_explained": explained[:3]},
            "leading principal direction of the quotient trajectory (product metric)", "second principal direction")
        bar.advance(task)
    return Result(config, cases)


def plot(result: Result):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, len(result.cases), figsize=(6 * len(result.cases), 7), layout="constrained",
                             squeeze=False)
    for column, (name, case) in enumerate(result.cases.items()):
        psi = case["psi"]
        top, bottom = axes[0, column], axes[1, column]
        top.plot(psi, case["potential"], "k", lw=1.5)
        top.set_title(f"{name}: Ubar(psi); defect (a) = {case['defect_potential']:.2g}, tau* = {case['tau_star']:.3g}",
                      fontsize=9)
        top.set_xlabel("psi (arc length)")
        for i, tau in enumerate(case["taus"]):
            bottom.plot(psi, case["v_1d"][i], lw=1.4, label=f"1-D Hopf-Cole, tau={tau:g}")
            bottom.plot(psi, case["v_2d"][i], "--", lw=1.0, label=f"2-D field, gap {case['closure_gap'][i]:.1e}")
            bottom.plot(psi, case["v_burgers"][i], ":", lw=1.0, color="k")
        bottom.set_title("v = d ubar/d psi: 1-D exact (solid), 2-D exact (dashed), Burgers solver (dotted)", fontsize=9)
        bottom.set_xlabel("psi")
        bottom.legend(fontsize=6)
    return fig
