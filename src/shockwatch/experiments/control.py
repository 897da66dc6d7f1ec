r"""Control: acting ahead of a forecast Transformer instability (Miyagawa 2026 §6, the third use).

The question: does acting on a forecast (the live warnings of ``monitor.warnings``) help, and does it
help more when the forecast comes from the symmetry-corrected signal than from the raw one? Measured
on the attention-spike bed (``testbeds.SPIKE_TESTBEDS``: a small decoder under AdamW with decay /
no-decay groups, warmup and cosine decay, whose attention logits grow until the loss leaves its best
level for good in most seeds), with seeds the forecast rules were not tuned on.

Arms (every one trains under the same Monitor and schedule, so the wall times compare the actions):
    none            the bed as it is
    quotient-cut    ``CutLR`` on the forecast of the GL-invariant max_h |W_Q^h^T W_K^h|_2
                    (``attention/qk_product_max``) approaching ``quotient_bound``
    raw-cut         the same controller on the raw max_h |W_Q^h| |W_K^h| (``attention/qk_weight_max``)
                    approaching ``raw_bound``
    quotient-cap    ``CapLogits`` (attention logits soft-capped) on the quotient forecast
    skip-olmo       ``SkipStep`` on OLMo-core's loss rule (6 sigma over 128 steps): the production
    skip-foundry    response, after the fact; LLM Foundry's (2x the 100-step mean, patience 4) and
    skip-lightning  Lightning's (relative tolerance 2 over 10 steps) rules likewise
    qk-norm         static fixes: qk-layernorm (the bed's control), a longer warmup
    long-warmup     (``long_warmup`` steps in place of 300), attention logits capped from the first
    static-cap      step (``cap``). The z-loss is in every other arm (the bed's own 1e-4, as
    no-z-loss       Wortsman et al. ran it); ``no-z-loss`` is the bed without it.

The bounds come from the transformer-spikes experiment's sweeps over seeds 0-9 (the settings with
about 2 false alarms per 1000 quiet steps: 311-542 quotient, 850-991 raw); the seeds here are 10 on.

Measured per run: the instability (``transformer_spikes.instability_onset``: the loss leaving its best
level for good) and its step, transient spikes, the peak of the smoothed loss over its best before,
the mean training loss over the last ``final_window`` steps, the held-out loss at the end, the
interventions, and the wall time (extra compute: against the ``none`` arm of the same seed).

The classic beds (``classic``, at the tiny scale, seeds 0, 1, 2: the catapult and edge of stability,
full-batch gradient descent, and the grokking transformer, full-batch AdamW with its "slingshot" loss
spikes) run the arms none, quotient-cut, raw-cut and the three production skips. On the first two the
cut is driven by the stability rules on eta lambda_max (raw Lanczos against the quotient's, every
``curvature_every`` steps and at steps 1, 2, 4, ...): ``Approach`` to the bound 2 and ``Crossing`` of
it (the catapult starts above it); on the grokking transformer by the head products approaching
``grokking_bound``, as on the spike bed. Measured: the loss's peak over its initial value (the
catapult's spike), the step of the peak, transient spikes (3x the previous 20 steps' mean), the final
loss, eta times the final sharpness, the grokking step (test accuracy >= 0.9) and the final test
accuracy, the interventions. Theory for what to expect: a cut
below 2 / lambda keeps gradient descent stable, so the catapult's spike should not come while the
cut holds; whether it comes once the rate is back (the curvature has not dropped, which is what the
spike does) and whether the run at the edge of stability is better for leaving it, is measured.
"""

from __future__ import annotations

import math
import tempfile
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np

from ..control import CapLogits, Controller, CutLR, SkipStep
from ..control.logit_cap import ForwardCap
from ..monitor import Monitor, Schedule
from ..monitor.warnings import Approach, Crossing, RatioSpike, RelativeSpike, SigmaSpike
from ..symmetry import find_symmetries
from . import testbeds as tb
from ._files import write_result
from ._progress import progress_bars, step_bar
from .transformer_spikes import instability_onset, spike_onsets

NAME = "control"
ARMS = ("none", "quotient-cut", "raw-cut", "quotient-cap", "skip-olmo", "skip-foundry", "skip-lightning",
        "qk-norm", "long-warmup", "static-cap", "no-z-loss")
CLASSIC_BEDS = ("catapult", "edge-of-stability", "grokking-transformer")
CLASSIC_ARMS = ("none", "quotient-cut", "raw-cut", "skip-olmo", "skip-foundry", "skip-lightning")


@dataclass(frozen=True)
class Config:
    arms: tuple[str, ...] = ARMS
    seeds: tuple[int, ...] = (10, 11, 12)  # not among the seeds (0-9) the bounds were read from
    scale: str = "default"
    steps: int | None = None
    quotient_bound: float = 500.0
    raw_bound: float = 900.0
    horizon: int = 50
    cut_factor: float = 0.3
    cut_hold: int = 50
    cut_rewarm: int = 100
    cooldown: int = 100
    budget: int = 3
    cap: float = 30.0
    long_warmup: int = 450
    final_window: int = 20
    # the ground truth, as in transformer-spikes
    spike_ratio: float = 1.5
    recover: float = 1.2
    smooth: int = 10
    spike_window: int = 20
    spike_min_rise: float = 0.1
    # the classic beds (full-batch GD), at the tiny scale; the cut lasts a sixth of the run, the
    # re-warmup a third
    classic: tuple[str, ...] = CLASSIC_BEDS
    classic_arms: tuple[str, ...] = CLASSIC_ARMS
    classic_scale: str = "tiny"
    # measured: a catapult run ~40 s at 2 (its evaluation runs Lanczos too), edge of stability ~110-145 s at 25
    curvature_every: tuple[tuple[str, int], ...] = (("catapult", 3), ("edge-of-stability", 50),
                                                    ("grokking-transformer", 5))  # the last: attention's period
    # the grokking transformer's head products reach 5-9 over a tiny run (seed 0): the cut's bound
    grokking_bound: float = 8.0

    def __post_init__(self) -> None:
        unknown = [arm for arm in self.arms if arm not in ARMS]
        if unknown or not (self.arms or self.classic) or not self.seeds:
            raise ValueError(f"arms must be a subset of {', '.join(ARMS)} (empty only with classic beds) and seeds "
                             f"non-empty; got {self.arms}, {self.seeds}")
        if self.scale not in tb.SCALES:
            raise ValueError(f"scale must be one of {', '.join(tb.SCALES)}, got {self.scale!r}")
        if not (self.quotient_bound > 0 and self.raw_bound > 0 and self.cap > 0 and self.horizon >= 1):
            raise ValueError("quotient_bound, raw_bound, cap and horizon must be positive")
        if any(bed not in CLASSIC_BEDS for bed in self.classic) or any(
                arm not in CLASSIC_ARMS for arm in self.classic_arms):
            raise ValueError(f"classic must be a subset of {', '.join(CLASSIC_BEDS)} and classic_arms of "
                             f"{', '.join(CLASSIC_ARMS)}; got {self.classic}, {self.classic_arms}")


@dataclass(frozen=True)
class ArmRun:
    arm: str
    seed: int
    onset: int | None  # the instability's step (None: stable)
    spikes: list[int]
    peak: float  # max over t of the smoothed loss over its best before t
    final_loss: float
    held_out_loss: float
    interventions: list[int]  # the steps of the warnings acted on
    skipped: int
    runtime_s: float
    loss: list[float] = field(repr=False)


@dataclass(frozen=True)
class ArmRow:
    arm: str
    runs: int
    unstable: int
    onsets: list[int | None]
    mean_final_loss: float
    mean_held_out_loss: float
    mean_peak: float
    mean_interventions: float
    time_ratio: float  # mean wall time over the none arm's (same seeds), 1 without a none arm


@dataclass(frozen=True)
class ClassicRun:
    bed: str
    arm: str
    seed: int
    peak_over_initial: float  # max loss / loss at step 1 (the catapult's spike)
    peak_step: int
    final_loss: float
    final_lr_sharpness: float  # eta lambda_max at the end (stable below 2); NaN where not evaluated
    interventions: list[int]
    runtime_s: float
    loss: list[float] = field(repr=False)
    spikes: int = 0  # transient spikes after step 20 (the loss 3x its previous 20 steps' mean)
    grokked: int | None = None  # grokking beds: the first evaluation with test accuracy >= 0.9
    final_test_accuracy: float = math.nan


@dataclass(frozen=True)
class Result:
    config: Config
    runs: list[ArmRun]
    rows: list[ArmRow]
    verdict: str
    runtime_s: float
    classic: list[ClassicRun] = field(default_factory=list)

    def to_json(self) -> dict:
        return asdict(self)

    def save(self, out: Path) -> list[Path]:
        return write_result(out, "control", self.to_json(), plot(self))


def _qk_forecast(signal: str, bound: float, config: Config) -> Approach:
    """The head products' exponential growth towards ``bound``: GL-invariant max_h |W_Q^h^T W_K^h|_2
    ("quotient") or raw max_h |W_Q^h||W_K^h|."""
    observable = "attention/qk_weight_max" if signal == "raw" else "attention/qk_product_max"
    return Approach("qk-approach", observable, signal, bound=bound, margin=None, horizon=config.horizon, log=True)


def _controller(arm: str, config: Config) -> tuple[Controller | None, list]:
    """The arm's controller and the warning rules that drive it."""
    if arm in ("quotient-cut", "raw-cut", "quotient-cap"):
        signal = "raw" if arm == "raw-cut" else "quotient"
        rule = _qk_forecast(signal, config.raw_bound if signal == "raw" else config.quotient_bound, config)
        action = (CutLR(config.cut_factor, config.cut_hold, config.cut_rewarm) if arm.endswith("cut")
                  else CapLogits(config.cap, steps=config.cut_hold + config.cut_rewarm))
        return Controller([action], signals=(signal,), cooldown=config.cooldown, budget=config.budget), [rule]
    if arm.startswith("skip-"):
        detector = {"skip-olmo": SigmaSpike(), "skip-foundry": RatioSpike(), "skip-lightning": RelativeSpike()}[arm]
        return Controller([SkipStep()], signals=("raw",), cooldown=0, budget=None), [detector]
    return None, []


def _classic_arm(bed_name: str, arm: str, seed: int, config: Config, log_dir: Path) -> ClassicRun:
    """One catapult, edge-of-stability or grokking-transformer run under ``arm`` (``CLASSIC_ARMS``)."""
    start = time.perf_counter()
    bed = tb.make_testbed(bed_name, seed=seed, scale=config.classic_scale)
    every = dict(config.curvature_every)[bed_name]
    hold, rewarm = max(1, bed.steps // 6), max(1, bed.steps // 3)
    grokking = bed_name == "grokking-transformer"
    controller, rules = None, []
    if arm in ("quotient-cut", "raw-cut"):
        signal = "raw" if arm == "raw-cut" else "quotient"
        if grokking:  # the head products' growth (the slingshots come with it), as on the spike bed
            rules = [_qk_forecast(signal, config.grokking_bound, config)]
        else:
            observable = f"curvature/{signal}_max"
            rules = [Approach("stability", observable, signal, scale="lr", bound=2.0, horizon=4 * every),
                     Crossing("stability-crossed", observable, signal, scale="lr", level=2.0, below=False,
                              hysteresis=True)]
        controller = Controller([CutLR(config.cut_factor, hold, rewarm)], signals=(signal,), cooldown=hold + rewarm,
                                budget=config.budget)
    elif arm.startswith("skip-"):
        controller, rules = _controller(arm, config)
    batch = bed.train_batch(1)
    schedule = (Schedule(quotient=None, attention=every) if grokking
                else Schedule(quotient=None, curvature=every, early=True))
    monitor = Monitor(bed.model, bed.optimizer, log_dir, symmetries=find_symmetries(bed.model, batch[0]),
                      loss_fn=bed.loss_fn, schedule=schedule, tensorboard=False, warnings=rules, controller=controller)
    with monitor:
        curves = tb.train(bed, on_step=lambda step, loss, b: monitor.step(loss, batch=b))
    losses = curves["loss"]
    peak = int(np.argmax(losses))
    spikes = spike_onsets(losses, ratio=3.0, window=20, min_rise=0.1, start=21)
    grokked = tb.first_at_least(curves["eval_step"], curves["test_accuracy"], 0.9) if grokking else None
    return ClassicRun(bed_name, arm, seed, float(losses[peak] / losses[0]), peak + 1, float(losses[-1]),
                      math.nan if grokking else float(bed.lr * curves["sharpness"][-1]),
                      [] if controller is None else [i.step for i in controller.interventions],
                      time.perf_counter() - start, [float(x) for x in losses], len(spikes), grokked,
                      float(curves["test_accuracy"][-1]) if grokking else math.nan)


def _peak(losses: list[float], window: int) -> float:
    values = np.asarray(losses, dtype=np.float64)
    values = values[: np.flatnonzero(~np.isfinite(values))[0]] if not np.isfinite(values).all() else values
    if len(values) < 2 * window:
        return math.nan
    smooth = np.convolve(values, np.ones(window) / window, mode="valid")
    best = np.minimum.accumulate(smooth)
    return float(np.max(smooth[1:] / best[:-1]))


def _run_arm(arm: str, seed: int, config: Config, log_dir: Path, bar=None) -> ArmRun:
    start = time.perf_counter()
    name = "attention-spike-qknorm" if arm == "qk-norm" else "attention-spike"
    bed = tb.make_testbed(name, seed=seed, scale=config.scale, steps=config.steps,
                          warmup=config.long_warmup if arm == "long-warmup" else None,
                          z_loss=0.0 if arm == "no-z-loss" else None)
    symmetries = find_symmetries(bed.model, bed.train_batch(1)[0])
    controller, rules = _controller(arm, config)
    static_cap = ForwardCap(bed.model) if arm == "static-cap" else None
    if static_cap is not None:
        static_cap.cap = config.cap
    monitor = Monitor(bed.model, bed.optimizer, log_dir, symmetries=symmetries, loss_fn=bed.loss_fn,
                      schedule=Schedule(quotient=None, attention=1), tensorboard=False, warnings=rules,
                      controller=controller)
    advance = step_bar(bar, f"{arm} seed {seed}", bed.steps)
    diverged = False
    try:
        with monitor:
            try:
                curves = tb.train(bed, on_step=lambda step, loss, batch: monitor.step(loss, batch=batch), progress=advance)
            except FloatingPointError:  # a non-finite loss: the run is over, and unstable
                diverged, curves = True, None
            losses = monitor.store.series()["loss"][1]
    finally:
        if static_cap is not None:
            static_cap.remove()
    held_out = math.nan if diverged else curves["held_out_loss"][-1]
    if diverged:
        losses = [*losses, math.inf]
    begin = int(bed.notes["warmup"]) // 2
    onsets = instability_onset(losses, ratio=config.spike_ratio, recover=config.recover, window=config.smooth,
                               min_rise=config.spike_min_rise, start=begin)
    spikes = spike_onsets(losses, ratio=config.spike_ratio, window=config.spike_window,
                          min_rise=config.spike_min_rise, start=begin)
    finite = [x for x in losses[-config.final_window:] if math.isfinite(x)]
    final = float(np.mean(finite)) if len(finite) == config.final_window else math.inf
    interventions = [] if controller is None else [i.step for i in controller.interventions]
    skipped = 0 if controller is None else controller.skipped
    return ArmRun(arm, seed, onsets[0] if onsets else None, spikes, _peak(losses, config.smooth), final, held_out,
                  interventions, skipped, time.perf_counter() - start, [float(x) for x in losses])


def _rows(runs: list[ArmRun], config: Config) -> list[ArmRow]:
    base = {r.seed: r.runtime_s for r in runs if r.arm == "none"}
    rows = []
    for arm in config.arms:
        mine = [r for r in runs if r.arm == arm]
        ratios = [r.runtime_s / base[r.seed] for r in mine if r.seed in base]
        rows.append(ArmRow(arm, len(mine), sum(r.onset is not None for r in mine), [r.onset for r in mine],
                           float(np.mean([r.final_loss for r in mine])), float(np.mean([r.held_out_loss for r in mine])),
                           float(np.mean([r.peak for r in mine])), float(np.mean([len(r.interventions) for r in mine])),
                           float(np.mean(ratios)) if ratios else 1.0))
    return rows


def _verdict(rows: list[ArmRow]) -> str:
    by = {row.arm: row for row in rows}
    parts = []
    none = by.get("none")
    for arm, row in by.items():
        if arm == "none" or none is None:
            continue
        change = ("fewer than" if row.unstable < none.unstable else "more than" if row.unstable > none.unstable
                  else "as many as")
        loss = ("lower" if row.mean_held_out_loss < none.mean_held_out_loss else "higher"
                if row.mean_held_out_loss > none.mean_held_out_loss else "equal")
        parts.append(f"{arm}: {row.unstable}/{row.runs} unstable ({change} none's {none.unstable}/{none.runs}), "
                     f"held-out loss {row.mean_held_out_loss:.3f} ({loss}), {row.time_ratio:.2f}x time")
    quotient, raw = by.get("quotient-cut"), by.get("raw-cut")
    if quotient is not None and raw is not None:
        # the held-out loss only where the instabilities are as many (its differences are noise otherwise)
        word = ("quotient-driven control better" if quotient.unstable < raw.unstable
                else "raw-driven control better" if quotient.unstable > raw.unstable
                else "as many instabilities either way")
        parts.append(f"quotient vs raw forecast driving the same cut: {word} ({quotient.unstable} vs {raw.unstable} "
                     f"unstable, held-out {quotient.mean_held_out_loss:.3f} vs {raw.mean_held_out_loss:.3f})")
    return "; ".join(parts)


def _classic_verdict(classic: list[ClassicRun]) -> str:
    """Per classic bed, each arm's mean spike height, final loss and final eta lambda_max against none's."""
    parts = []
    for bed in dict.fromkeys(r.bed for r in classic):
        mine = [r for r in classic if r.bed == bed]
        summary = []
        for arm in dict.fromkeys(r.arm for r in mine):
            runs = [r for r in mine if r.arm == arm]
            summary.append(f"{arm} peak {np.mean([r.peak_over_initial for r in runs]):.3g}x at step "
                           f"{np.mean([r.peak_step for r in runs]):.0f}, final loss {np.mean([r.final_loss for r in runs]):.3g}, "
                           f"eta lambda_max {np.mean([r.final_lr_sharpness for r in runs]):.3g}")
        parts.append(f"{bed}: " + ", ".join(summary))
    return "; ".join(parts)


def run(config: Config = Config(), progress: bool = False) -> Result:
    start = time.perf_counter()
    runs: list[ArmRun] = []
    with tempfile.TemporaryDirectory() as directory, progress_bars(progress) as bar:
        # one short run first, untimed: what is built or loaded once (the C kernel, imports) is not charged to an arm
        if config.arms:
            _run_arm("none", config.seeds[0], replace(config, steps=5), Path(directory) / "warm-up")
        for seed in config.seeds:
            for arm in config.arms:
                runs.append(_run_arm(arm, seed, config, Path(directory) / f"{arm}-{seed}", bar))
        classic = [_classic_arm(bed, arm, seed, config, Path(directory) / f"{bed}-{arm}-{seed}")
                   for bed in config.classic for seed in range(len(config.seeds)) for arm in config.classic_arms]
    rows = _rows(runs, config)
    verdict = "; ".join(part for part in (_verdict(rows), _classic_verdict(classic)) if part)
    return Result(config, runs, rows, verdict, time.perf_counter() - start, classic)


def plot(result: Result):
    """One panel per spike-bed seed (every arm's 10-step mean loss), then one per classic bed (every
    arm's loss on its first seed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    seeds = sorted({r.seed for r in result.runs})
    beds = list(dict.fromkeys(r.bed for r in result.classic))
    panels = max(1, len(seeds) + len(beds))
    fig, axes = plt.subplots(1, panels, figsize=(4.4 * panels, 3.6), layout="constrained", squeeze=False)
    for ax, seed in zip(axes[0], seeds):
        for run_ in (r for r in result.runs if r.seed == seed):
            finite = np.asarray([x if math.isfinite(x) else np.nan for x in run_.loss])
            smooth = np.convolve(finite, np.ones(10) / 10, mode="valid")
            ax.plot(range(10, 10 + len(smooth)), smooth, lw=0.9, label=run_.arm)
        ax.set_title(f"attention-spike, seed {seed}", fontsize=9)
    for ax, bed in zip(axes[0][len(seeds):], beds):
        first = min(r.seed for r in result.classic if r.bed == bed)
        for run_ in (r for r in result.classic if r.bed == bed and r.seed == first):
            ax.plot(range(1, len(run_.loss) + 1), run_.loss, lw=0.9, label=run_.arm)
        ax.set_title(f"{bed}, seed {first}", fontsize=9)
    for ax in axes[0]:
        ax.set_xlabel("step")
        ax.set_yscale("log")
        if ax.lines:
            ax.legend(fontsize=6, ncol=2)
    fig.suptitle("training loss under each arm", fontsize=10)
    return fig
