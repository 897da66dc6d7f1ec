r"""Transformer loss spikes: do symmetry-corrected signals forecast them better than raw ones?

Miyagawa 2026 §6 aims its claim at Transformers, where "raw parameter norms are distorted by symmetry
redundancy": the GL(d_head) freedom of W_Q^h W_K^h^T and W_V^h W_O^h lets |W_Q^h| |W_K^h| move while
every logit stays. Here that is put to the test on the loss spikes Transformer trainers fear
(Wortsman et al. 2023, "Small-scale proxies for large-scale Transformer training instabilities"):
attention-logit growth, which qk-layernorm prevents, and output-logit divergence, which the z-loss
prevents. Each spike testbed (``testbeds.SPIKE_TESTBEDS``: a small decoder, AdamW with the decay /
no-decay groups, warmup and cosine decay) runs with its control (the same run with the published fix)
for every seed, under the ``Monitor`` with the attention observables and the GL-invariant head
products every step and the curvature along the update every ``update_curvature_every`` steps.

Ground truth (``spike_onsets``), on the training loss: a spike starts at step t when
    L_t > ratio * mean(L_{t-w}, ..., L_{t-1})   and   L_t - mean > min_rise
(ratio 1.5, w = 20, min_rise 0.1 by default), counted once per run of such steps, from step
``warmup / 2`` on (the loss's first fall is not a spike). Runs with a spike are the spike runs;
runs without one (the controls, and any spike-bed seed that did not spike) measure false alarms.

Signals, raw beside symmetry-corrected (``Monitor``'s names), each watched by one rule family:
    attention-logit    raw: max_l |W_Q||W_K| (``qk_weight_norm/*``) vs the measured largest logit
                       (``logit_max/*``, GL-invariant); Approach, log trend (exponential growth)
    qk-product         raw: max_h |W_Q^h||W_K^h| vs max_h |W_Q^h^T W_K^h|_2 (``attention/qk_*``)
    vo-product         raw: max_h |W_V^h||W_O^h| vs max_h |W_O^h W_V^h|_2 (``attention/vo_*``)
    attention-entropy  the smallest attention entropy falling (``entropy_min/*``; no raw counterpart)
    update-stability   eta times the curvature along the update, Adam-preconditioned, raw vs along
                       its horizontal part (``update_curvature/preconditioned_*``); linear trend
and the production detectors on the loss, detections after the fact (``monitor.warnings``: OLMo-core's
sigma rule, LLM Foundry's ratio rule, Lightning's relative rule, Megatron-LM's max rule). Every rule
has one knob (the bound it forecasts against, or the detector's threshold), swept over a grid; each is
scored at the setting that keeps its false alarms at most ``false_alarm_rate`` per 1000 steps of the
runs without a spike (``monitor.warnings.at_false_alarm_rate``): per spike, the lead = onset - the
earliest warning within ``horizon`` steps before it (or up to ``late`` after: negative, a detection).
Whatever comes out is reported, the verdict on the paper's claim included.
"""

from __future__ import annotations

import math
import tempfile
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..monitor import Monitor, Schedule
from ..monitor.warnings import (
    Approach,
    MaxRatioSpike,
    RatioSpike,
    RelativeSpike,
    Rule,
    RuleScore,
    Run,
    SigmaSpike,
    at_false_alarm_rate,
    by_step,
    score_rule,
)
from ..symmetry import find_symmetries
from . import testbeds as tb
from ._files import write_result

NAME = "transformer-spikes"
CONTROLS = {"attention-spike": "attention-spike-qknorm", "logit-divergence": "logit-divergence-zloss"}


@dataclass(frozen=True)
class Config:
    beds: tuple[str, ...] = ("attention-spike", "logit-divergence")  # each runs with its control
    seeds: tuple[int, ...] = (0, 1, 2)
    scale: str = "default"
    steps: int | None = None  # None: the testbed's own length
    horizon: int = 50  # a warning up to this many steps before a spike's onset counts, with its lead
    late: int = 5  # ... and up to this many after it (negative lead: the detectors')
    false_alarm_rate: float = 2.0  # warnings per 1000 steps of the runs without a spike
    attention_every: int = 1
    update_curvature_every: int = 5
    spike_ratio: float = 1.5
    spike_window: int = 20
    spike_min_rise: float = 0.1
    knobs: int = 16  # settings per rule

    def __post_init__(self) -> None:
        unknown = [bed for bed in self.beds if bed not in CONTROLS]
        if unknown or not self.beds:
            raise ValueError(f"beds must be a non-empty subset of {', '.join(CONTROLS)}; got {self.beds}")
        if not self.seeds or self.horizon < 1 or self.late < 0 or self.false_alarm_rate < 0 or self.knobs < 2:
            raise ValueError(f"need seeds, horizon >= 1, late >= 0, false_alarm_rate >= 0, knobs >= 2; got {self.seeds}, "
                             f"{self.horizon}, {self.late}, {self.false_alarm_rate}, {self.knobs}")
        if self.scale not in tb.SCALES:
            raise ValueError(f"scale must be one of {', '.join(tb.SCALES)}, got {self.scale!r}")


@dataclass(frozen=True)
class RunOutcome:
    bed: str
    seed: int
    steps: int
    events: list[int]
    runtime_s: float
    loss: list[float] = field(repr=False)  # the training loss per step, for the figure


@dataclass(frozen=True)
class Row:
    family: str
    signal: str  # "raw" | "quotient" (the detectors: "raw")
    knob: float | None  # the setting chosen at the matched false-alarm rate (None: none that quiet)
    false_alarm_rate: float
    caught: int
    events: int
    median_lead: float
    leads: list[float]


@dataclass(frozen=True)
class Result:
    config: Config
    runs: list[RunOutcome]
    rows: list[Row]
    sweeps: dict[str, list[dict]]  # "<family>/<signal>" -> every setting's score
    verdict: str
    runtime_s: float

    def to_json(self) -> dict:
        return asdict(self)

    def save(self, out: Path) -> list[Path]:
        return write_result(out, "transformer_spikes", self.to_json(), plot(self))


def spike_onsets(losses: list[float], *, ratio: float, window: int, min_rise: float, start: int) -> list[int]:
    """Ground truth: steps t (1-based, as ``testbeds.train`` counts) where L_t > ratio * mean of the
    previous ``window`` losses and exceeds it by ``min_rise``, the first of each run of such steps, from
    ``start`` on; a non-finite loss counts as a spike."""
    onsets, previous = [], -math.inf
    for i in range(max(window, start - 1), len(losses)):
        mean = sum(losses[i - window:i]) / window
        value = losses[i]
        if not math.isfinite(value) or (value > ratio * mean and value - mean > min_rise):
            if i - previous > 1:
                onsets.append(i + 1)
            previous = i
    return onsets


def _record(name: str, seed: int, config: Config, log_dir: Path, bar=None) -> tuple[RunOutcome, Run]:
    """Train one bed under the monitor; its curves (for replay) and its ground-truth spikes."""
    start = time.perf_counter()
    bed = tb.make_testbed(name, seed=seed, scale=config.scale, steps=config.steps)
    first = bed.train_batch(1)
    symmetries = find_symmetries(bed.model, first[0])
    schedule = Schedule(quotient=None, attention=config.attention_every, update_curvature=config.update_curvature_every)
    monitor = Monitor(bed.model, bed.optimizer, log_dir, symmetries=symmetries, loss_fn=bed.loss_fn, schedule=schedule,
                      tensorboard=False, warnings=())  # the rules are replayed over the record below
    advance = None
    if bar is not None:
        task = bar.add_task(f"{name} seed {seed}", total=bed.steps)
        advance = lambda step: bar.update(task, completed=step)
    with monitor:
        curves = tb.train(bed, on_step=lambda step, loss, batch: monitor.step(loss, batch=batch), progress=advance)
        series = monitor.store.series()
    events = spike_onsets(curves["loss"], ratio=config.spike_ratio, window=config.spike_window,
                          min_rise=config.spike_min_rise, start=int(bed.notes["warmup"]) // 2)
    outcome = RunOutcome(name, seed, bed.steps, events, time.perf_counter() - start, curves["loss"])
    return outcome, Run(series, tuple(events), bed.steps)


def _values(runs: list[Run], observable: str, scale: str | None, reduce: str = "max") -> np.ndarray:
    """Every value a rule on ``observable`` (times ``scale``) would read, pooled over the runs."""
    probe = Rule("probe", observable, scale=scale, reduce=reduce)
    found = [probe.read(values) for run in runs for _, values in by_step(run.series)]
    return np.asarray([x for x in found if x is not None], dtype=np.float64)


def _families(runs: list[Run], config: Config) -> list[tuple[str, str, Callable[[float], Rule], list[float]]]:
    """(family, signal, make(knob) -> Rule, knob grid) for every rule scored; the grids span each
    signal's own range over the runs (bounds from its median to 1.5 x its largest value; for a
    falling signal from its median down to half its smallest)."""
    horizon = config.horizon

    def bounds(observable: str, scale: str | None = None, rising: bool = True, reduce: str = "max") -> list[float]:
        values = _values(runs, observable, scale, reduce)
        values = values[np.isfinite(values)]
        if len(values) == 0:
            return []
        if rising:
            low, high = float(np.median(values)), 1.5 * float(values.max())
        else:
            low, high = 0.5 * float(values.min()), float(np.median(values))
        if not (low > 0 and high > low):
            return list(np.linspace(low, high, config.knobs)) if high > low else []
        return list(np.geomspace(low, high, config.knobs))

    def approach(name: str, observable: str, signal: str, *, log: bool = True, scale: str | None = None,
                 rising: bool = True, reduce: str = "max"):
        grid = bounds(observable, scale, rising, reduce)
        make = lambda knob: Approach(name, observable, signal, scale=scale, reduce=reduce, bound=knob, rising=rising,
                                     margin=None, horizon=horizon, log=log)
        return name, signal, make, grid

    families = [
        approach("attention-logit", "qk_weight_norm/*", "raw"),
        approach("attention-logit", "logit_max/*", "quotient"),
        approach("qk-product", "attention/qk_weight_max", "raw"),
        approach("qk-product", "attention/qk_product_max", "quotient"),
        approach("vo-product", "attention/vo_weight_max", "raw"),
        approach("vo-product", "attention/vo_product_max", "quotient"),
        approach("attention-entropy", "entropy_min/*", "quotient", rising=False, reduce="min"),
        approach("update-stability", "update_curvature/preconditioned_raw", "raw", log=False, scale="lr"),
        approach("update-stability", "update_curvature/preconditioned_quotient", "quotient", log=False, scale="lr"),
        ("spike-sigma", "raw", lambda k: SigmaSpike(sigmas=k), list(np.geomspace(2.0, 12.0, config.knobs))),
        ("spike-ratio", "raw", lambda k: RatioSpike(multiplier=k, window=min(100, config.spike_window * 5)),
         list(np.geomspace(1.1, 3.0, config.knobs))),
        ("spike-relative", "raw", lambda k: RelativeSpike(rtol=k), list(np.geomspace(0.2, 4.0, config.knobs))),
        ("spike-max", "raw", lambda k: MaxRatioSpike(factor=k, samples=config.spike_window),
         list(np.geomspace(1.05, 10.0, config.knobs))),
    ]
    return [family for family in families if family[3]]


def _row(family: str, signal: str, chosen: RuleScore | None, events: int) -> Row:
    if chosen is None:
        return Row(family, signal, None, math.nan, 0, events, math.nan, [])
    return Row(family, signal, chosen.knob, chosen.false_alarm_rate, chosen.caught, events, chosen.median_lead,
               list(chosen.leads))


def _verdict(rows: list[Row], events: int) -> str:
    if events == 0:
        return "no spike in any run: the prediction was not tested"
    by_key = {(row.family, row.signal): row for row in rows}
    compared = []
    for family in ("attention-logit", "qk-product", "vo-product", "update-stability"):
        raw, quotient = by_key.get((family, "raw")), by_key.get((family, "quotient"))
        if raw is None or quotient is None:
            continue
        forecast = lambda row: sum(1 for t in row.leads if not math.isnan(t) and t > 0)
        if forecast(quotient) > forecast(raw):
            compared.append(f"{family}: quotient better ({forecast(quotient)} vs {forecast(raw)} spikes forecast)")
        elif forecast(quotient) < forecast(raw):
            compared.append(f"{family}: raw better ({forecast(raw)} vs {forecast(quotient)} spikes forecast)")
        else:
            compared.append(f"{family}: no difference ({forecast(raw)} spikes forecast each)")
    return (f"over {events} spikes, at the same false-alarm rate, symmetry-corrected against raw: " + "; ".join(compared))


def run(config: Config = Config(), progress: bool = False) -> Result:
    start = time.perf_counter()
    outcomes: list[RunOutcome] = []
    recorded: list[Run] = []
    if progress:
        from rich.progress import Progress

        bars = Progress(transient=True)
    else:
        bars = nullcontext()
    threads = torch.get_num_threads()
    with tempfile.TemporaryDirectory() as directory, bars as bar:
        for bed in config.beds:
            for name in (bed, CONTROLS[bed]):
                for seed in config.seeds:
                    outcome, run_ = _record(name, seed, config, Path(directory) / f"{name}-{seed}", bar)
                    outcomes.append(outcome)
                    recorded.append(run_)
    torch.set_num_threads(threads)
    spike_runs = [r for r in recorded if r.events]
    quiet_runs = [r for r in recorded if not r.events]
    events = sum(len(r.events) for r in spike_runs)
    rows, sweeps = [], {}
    for family, signal, make, grid in _families(recorded, config):
        scores = score_rule(make, grid, spike_runs, quiet_runs, horizon=config.horizon, late=config.late)
        sweeps[f"{family}/{signal}"] = [{"knob": s.knob, "false_alarm_rate": s.false_alarm_rate, "caught": s.caught,
                                         "median_lead": s.median_lead} for s in scores]
        rows.append(_row(family, signal, at_false_alarm_rate(scores, config.false_alarm_rate), events))
    return Result(config, outcomes, rows, sweeps, _verdict(rows, events), time.perf_counter() - start)


def plot(result: Result):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    beds = sorted({o.bed for o in result.runs}, key=lambda b: [o.bed for o in result.runs].index(b))
    fig, axes = plt.subplots(1, len(beds), figsize=(4.2 * len(beds), 3.4), layout="constrained", squeeze=False)
    for ax, bed in zip(axes[0], beds):
        for outcome in (o for o in result.runs if o.bed == bed):
            line, = ax.plot(range(1, len(outcome.loss) + 1), outcome.loss, lw=0.8, label=f"seed {outcome.seed}")
            for event in outcome.events:
                ax.axvline(event, color=line.get_color(), lw=0.6, ls="--")
        ax.set_title(bed, fontsize=9)
        ax.set_xlabel("step")
        ax.set_yscale("log")
        ax.legend(fontsize=7)
    fig.suptitle("training loss; dashed: spike onsets (ground truth)", fontsize=10)
    return fig
