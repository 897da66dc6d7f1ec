r"""Sharpening a transition: lowering the viscosity ahead of grokking (Miyagawa 2026 §6, control).

In the paper's scaling (``control.controller``'s docstring) the viscosity is the quotient diffusion's
temperature, nu ~ eta s with s the gradient-noise scale (~ 1/batch size), and the heat time of the
local-entropy smoothing is tau = eta n / nu = n / s: a transition at a fixed tau* of the
coarse-grained dynamics (the Burgers shock of Thm 4.3, tau* = -1 / inf U'') comes after n* = s tau*
optimizer steps, and its layer has a width ~ nu. Lowering nu by lowering the noise (a larger batch,
here through gradient accumulation) should therefore bring the transition sooner and make it
sharper; raising nu (noise injected along horizontal directions only, which moves no Noether charge)
should delay and smooth it. This experiment tests both directions on grokking.

Bed: ``grokking-mlp`` at the tiny scale (modular addition mod 59, half the pairs for training,
AdamW with weight decay 2) trained on minibatches of ``batch`` pairs (``make_testbed(batch=)``),
so that there is gradient noise to act on: at batch 256 test accuracy reaches 0.9 at steps
1300-1850 (seeds 0-2), against 750-900 on the full batch (measured while choosing the setting; 64
never got there in 2000 steps). The trigger (a live warning, ``Crossing``): the training loss
leaving its plateau (below ``trigger_loss``, from ~3.1), which on this bed comes 400-1000 steps
before the test accuracy rises. No symmetry-corrected signal forecasts grokking on this MLP (the
falsifiable-prediction experiment found none, and its quotient and raw gradient norms agree to three
digits), so this experiment tests the control knob, not a quotient forecast.

Arms, each from the same seed and the same stream of minibatches:
    none          batch ``batch`` throughout
    sharpen       on the warning, ``Accumulate(factor)``: factor x the batch from then on (nu / factor)
    smooth        on the warning, ``InjectNoise(noise)``: horizontal noise of ``noise`` x |g| (nu up)
    large-batch   factor x the batch from the first step (the static version of sharpen)
Measured: the grokking step (the first evaluation with test accuracy >= 0.9) and its width (steps
from test accuracy 0.1 to 0.9), the final test accuracy, the micro-batches (compute) spent until
grokking, the warning's step.
"""

from __future__ import annotations

import math
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from ..control import Accumulate, Controller, InjectNoise
from ..monitor import Monitor
from ..monitor.warnings import Crossing
from ..symmetry import find_symmetries
from . import testbeds as tb
from ._files import write_result
from ._progress import progress_bars, step_bar

NAME = "sharpening"
ARMS = ("none", "sharpen", "smooth", "large-batch")


@dataclass(frozen=True)
class Config:
    arms: tuple[str, ...] = ARMS
    seeds: tuple[int, ...] = (0, 1, 2)
    bed: str = "grokking-mlp"
    scale: str = "tiny"
    batch: int = 256
    steps: int = 2000
    factor: int = 4  # Accumulate's factor: nu / factor
    noise: float = 1.0  # InjectNoise's scale (x |g|)
    trigger_loss: float = 2.5
    grokked: float = 0.9  # test accuracy that marks the transition
    started: float = 0.1  # ... and its start (the width is the steps between them)

    def __post_init__(self) -> None:
        unknown = [arm for arm in self.arms if arm not in ARMS]
        if unknown or not self.arms or not self.seeds:
            raise ValueError(f"arms must be a non-empty subset of {', '.join(ARMS)} and seeds non-empty; got "
                             f"{self.arms}, {self.seeds}")
        if not self.bed.startswith("grokking") or self.scale not in tb.SCALES:
            raise ValueError(f"bed must be a grokking bed and scale one of {tb.SCALES}; got {self.bed!r}, {self.scale!r}")
        if self.batch < 1 or self.factor < 2 or not self.noise > 0 or not 0 < self.started < self.grokked <= 1:
            raise ValueError("need batch >= 1, factor >= 2, noise > 0 and 0 < started < grokked <= 1")


@dataclass(frozen=True)
class ArmRun:
    arm: str
    seed: int
    warning: int | None  # the trigger's first warning (acted on in sharpen and smooth; for the record in the others)
    grokked: int | None  # first evaluation with test accuracy >= config.grokked
    width: int | None  # steps from test accuracy >= started to >= grokked
    final_test_accuracy: float
    micro_batches_to_grok: int | None  # compute until grokking
    runtime_s: float
    eval_step: list[int] = field(repr=False)
    test_accuracy: list[float] = field(repr=False)


@dataclass(frozen=True)
class ArmRow:
    arm: str
    grokked: list[int | None]
    mean_grokked: float  # over the seeds that grokked
    mean_width: float
    mean_final_test_accuracy: float
    mean_micro_batches: float


@dataclass(frozen=True)
class Result:
    config: Config
    runs: list[ArmRun]
    rows: list[ArmRow]
    verdict: str
    runtime_s: float

    def to_json(self) -> dict:
        return asdict(self)

    def save(self, out: Path) -> list[Path]:
        return write_result(out, "sharpening", self.to_json(), plot(self))


def _run_arm(arm: str, seed: int, config: Config, log_dir: Path, bar=None) -> ArmRun:
    start = time.perf_counter()
    bed = tb.make_testbed(config.bed, seed=seed, scale=config.scale, steps=config.steps, batch=config.batch)
    symmetries = find_symmetries(bed.model, bed.train_batch(1)[0])
    trigger = Crossing("loss-plateau-left", "loss", "raw", level=config.trigger_loss, hysteresis=True)
    controller = None
    if arm == "sharpen":
        controller = Controller([Accumulate(config.factor, steps=config.steps)], signals=None, budget=1)
    elif arm == "smooth":
        controller = Controller([InjectNoise(config.noise, steps=config.steps, seed=seed)], signals=None, budget=1)
    accumulation = (lambda: config.factor) if arm == "large-batch" else None if controller is None else (
        lambda: controller.accumulation)
    warned: list[int] = []
    monitor = Monitor(bed.model, bed.optimizer, log_dir, symmetries=symmetries, tensorboard=False,
                      warnings=[trigger], controller=controller, on_warning=lambda w: warned.append(w.step))
    advance = step_bar(bar, f"{arm} seed {seed}", bed.steps)
    with monitor:
        curves = tb.train(bed, on_step=lambda step, loss, batch: monitor.step(loss), progress=advance,
                          accumulation=accumulation)
    steps, test = curves["eval_step"], curves["test_accuracy"]
    grokked = tb.first_at_least(steps, test, config.grokked)
    began = tb.first_at_least(steps, test, config.started)
    spent = None if grokked is None else int(sum(curves["micro_batches"][:grokked]))
    acted = warned[0] if warned and (controller is None or controller.interventions) else None
    return ArmRun(arm, seed, acted, grokked, None if grokked is None or began is None else grokked - began,
                  float(test[-1]), spent, time.perf_counter() - start, [int(s) for s in steps], [float(a) for a in test])


def _mean(values: list) -> float:
    found = [v for v in values if v is not None]
    return float(np.mean(found)) if found else math.nan


def _rows(runs: list[ArmRun], config: Config) -> list[ArmRow]:
    rows = []
    for arm in config.arms:
        mine = [r for r in runs if r.arm == arm]
        rows.append(ArmRow(arm, [r.grokked for r in mine], _mean([r.grokked for r in mine]),
                           _mean([r.width for r in mine]), _mean([r.final_test_accuracy for r in mine]),
                           _mean([r.micro_batches_to_grok for r in mine])))
    return rows


def _verdict(runs: list[ArmRun], config: Config) -> str:
    """Per seed, each arm's grokking step against none's: the theory says sharpen < none < smooth."""
    parts = []
    none = {r.seed: r for r in runs if r.arm == "none"}
    for arm, predicted in (("sharpen", "sooner"), ("smooth", "later"), ("large-batch", "sooner")):
        mine = [r for r in runs if r.arm == arm and r.seed in none]
        if not mine:
            continue
        late = lambda r: math.inf if r.grokked is None else r.grokked
        sooner = sum(late(r) < late(none[r.seed]) for r in mine)
        later = sum(late(r) > late(none[r.seed]) for r in mine)
        held = sooner if predicted == "sooner" else later
        parts.append(f"{arm}: {sooner} of {len(mine)} seeds sooner, {later} later than none "
                     f"(theory: {predicted}; {'holds' if held == len(mine) else 'fails'} on {held}/{len(mine)})")
    return "; ".join(parts)


def run(config: Config = Config(), progress: bool = False) -> Result:
    start = time.perf_counter()
    runs: list[ArmRun] = []
    with tempfile.TemporaryDirectory() as directory, progress_bars(progress) as bar:
        for seed in config.seeds:
            for arm in config.arms:
                runs.append(_run_arm(arm, seed, config, Path(directory) / f"{arm}-{seed}", bar))
    return Result(config, runs, _rows(runs, config), _verdict(runs, config), time.perf_counter() - start)


def plot(result: Result):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    seeds = sorted({r.seed for r in result.runs})
    fig, axes = plt.subplots(1, len(seeds), figsize=(4.2 * len(seeds), 3.4), layout="constrained", squeeze=False)
    for ax, seed in zip(axes[0], seeds):
        for run_ in (r for r in result.runs if r.seed == seed):
            line, = ax.plot(run_.eval_step, run_.test_accuracy, lw=1.0, label=run_.arm)
            if run_.warning is not None:
                ax.axvline(run_.warning, color=line.get_color(), lw=0.6, ls=":")
        ax.set_title(f"seed {seed}", fontsize=9)
        ax.set_xlabel("step")
        ax.set_ylabel("test accuracy")
    axes[0][-1].legend(fontsize=7)
    fig.suptitle("grokking under each arm; dotted: the warning acted on", fontsize=10)
    return fig
