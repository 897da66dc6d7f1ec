r"""Transformer loss spikes: do symmetry-corrected signals forecast them better than raw ones?

Miyagawa 2026 §6 aims its claim at Transformers, where "raw parameter norms are distorted by symmetry
redundancy": the GL(d_head) freedom of W_Q^h W_K^h^T and W_V^h W_O^h lets |W_Q^h| |W_K^h| move while
every logit stays. Here that is put to the test on two instabilities Transformer trainers fear, each a
bed of ``testbeds.SPIKE_TESTBEDS`` run with its control for every seed, under the ``Monitor`` with the
attention observables and the GL-invariant head products every step and the curvature along the update
every ``update_curvature_every`` steps (by default each bed's own period, ``UPDATE_CURVATURE_EVERY``):

    attention-spike   attention-logit growth (Wortsman et al. 2023, "Small-scale proxies for
                      large-scale Transformer training instabilities"): a small decoder on fresh
                      second-order Markov text, AdamW with the decay / no-decay groups, warmup and
                      cosine decay, peak lr 0.3. Control: the same run with qk-layernorm.
    adam-spike        Adam's preconditioner (Bai et al. 2025, arXiv 2506.04805): the same decoder
                      trained full batch to its loss floor, where (by their account) the squared
                      gradients fall below Adam's v, v decays as beta2^t and the preconditioned
                      curvature grows until the loss spikes; it spikes and recovers twice a run.
                      Control: AMSGrad (v never decays).

Ground truth, on the training loss, per bed (``GROUND_TRUTH``). attention-spike (``instability_onset``):
the step where it leaves its best level for good (its 10-step running mean above 1.5 x the best mean so
far, by at least 0.1, and never again below 1.2 x that best). adam-spike (``spike_onsets``): every
transient spike, L_t above 1.5 x the previous 20 steps' mean by at least 0.1. Transient spikes are
recorded for every run. Runs with an event are the spike runs; runs without one (whichever arm)
measure the false alarms; each bed is scored with its own control (the signals' scales differ by bed).

Measured on the adam-spike bed (default scale, seeds 0-4, under the monitor with the update curvature
every 5 steps: ``docs/results/transformer_spikes_adam*``): two spikes a run (steps 157-175 and
352-429), the loss rising from its floor ~0.03 to 41-194 x and back below 1.2 x within 29-57 steps;
AMSGrad: none in five runs, ending at 0.030-0.035 against 0.028-0.032. Larger eps is not a control:
eps 1e-4 to 3e-2 (the preconditioner bounded by 1/eps) still spiked in runs without the monitor. The
mechanism's own observable does not forecast them here: eta times the preconditioned curvature along the
update sits at 9-25 in the 40 steps before each spike, below Adam's bound 2(1 + beta1)/(1 - beta1) = 38,
and reaches 22-26 in the AMSGrad runs, which never spike; it jumps (to 52-86, or turns negative) only
at the spike's first step.

Not reproduced, and so not a testbed: output-logit divergence with its z-loss control. Measured on the
attention bed's decoder (a 256-way head over 32 used tokens, bf16 autocast, no decay on the head, seed
0): at lr 0.1-0.3 the mean logit drifts to -9 to -11 and log Z to 8-9 with a healthy loss in both arms; at
lr 1.0 both arms blow up (log Z 482 without the z-loss, 280 with it). What the drift is, measured
(``scripts/logit_drift.py``, ``docs/results/logit_drift.json``): the mean logit is <mu, h> + mean bias,
mu the mean output embedding, the charge of the head's softmax translation symmetry, which gradient
descent conserves (weight decay shrinks it at a known rate) and Adam does not (Stollenwerk et al. 2026,
"Output embedding centering"). At peak lr 3e-2, |mu| grows from 0.92 at step 100 to 6.1-6.3 at step
600, and the unused tokens' log-probability falls from -13.4 to -19, alike for eps 1e-8, 1e-12 and
1e-16: the drift follows the learning rate, not eps, and is still going when the cosine schedule ends. A shift common to every logit leaves the
softmax, the loss and every gradient unchanged, so it harms only through the precision of the logits
(bf16 spacing 0.06 at |logit| 10); this short CPU run ends long before that, and Wortsman et al. saw
the divergence at scales and step counts this budget does not reach. With qk-layernorm (the attention
instability removed), seed 0, float32, lr 0.5-3.0: both arms fail (final loss 2.2-4.0; the z-loss arm
ahead only at 0.5, 2.23 against 2.52), the mean logit positive (+1.5 to +75): not output-logit
divergence either.

Signals, raw beside symmetry-corrected (``Monitor``'s names), each watched by one rule family:
    attention-logit    raw: max_l |W_Q||W_K| (``qk_weight_norm/*``) vs the measured largest logit
                       (``logit_max/*``, GL-invariant); Approach, log trend (exponential growth)
    qk-product         raw: max_h |W_Q^h||W_K^h| vs max_h |W_Q^h^T W_K^h|_2 (``attention/qk_*``)
    vo-product         raw: max_h |W_V^h||W_O^h| vs max_h |W_O^h W_V^h|_2 (``attention/vo_*``)
    attention-entropy  the smallest head-mean attention entropy falling (``entropy_min/*``; no raw
                       counterpart)
    update-stability   eta times the curvature along the update, Adam-preconditioned, raw vs along
                       its horizontal part (``update_curvature/preconditioned_*``); linear trend
    charge-breaking    the largest gradient breaking of a scale or rescale symmetry
                       (``gradient_breaking/*``: max_k |<xi_k, g>| / (|xi_k| |g|)), rising
and the production detectors on the loss, detections after the fact (``monitor.warnings``: OLMo-core's
sigma rule, LLM Foundry's ratio rule, Lightning's relative rule, Megatron-LM's max rule). Every rule
has one knob (the bound it forecasts against, or the detector's threshold), swept over a grid; each is
scored at the setting that keeps its false alarms at most each of ``false_alarm_rates`` per 1000 steps
of the runs without an instability (``monitor.warnings.at_false_alarm_rate``): per instability, the lead =
onset - the earliest warning within ``horizon`` steps before it (or up to ``late`` after: negative, a
detection). Whatever comes out is reported, the verdict on the paper's claim included.
"""

from __future__ import annotations

import math
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
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
    score_rule,
)
from ..symmetry import find_symmetries
from . import testbeds as tb
from ._files import write_result
from ._progress import progress_bars, step_bar

NAME = "transformer-spikes"
CONTROLS = {bed: control for control, bed in tb.SPIKE_CONTROLS.items()}  # each bed's control
# the ground truth each bed is scored on: a lasting instability, or every transient spike (module docstring)
GROUND_TRUTH = {"attention-spike": "instability", "adam-spike": "spikes"}
# the curvature along the update every this many steps, by default (a sample costs ~18 plain steps on the
# attention bed: float64 HVPs and a projection); the Adam bed's spikes build within a few steps
UPDATE_CURVATURE_EVERY = {"attention-spike": 10, "adam-spike": 5}


@dataclass(frozen=True)
class Config:
    beds: tuple[str, ...] = ("attention-spike", "adam-spike")  # each runs with its control
    # five seeds: at the default scale 2 of 3 diverge, so three give two instabilities to score
    seeds: tuple[int, ...] = (0, 1, 2, 3, 4)
    scale: str = "default"
    steps: int | None = None  # None: the testbed's own length
    horizon: int = 50  # a warning up to this many steps before a spike's onset counts, with its lead
    late: int = 5  # ... and up to this many after it (negative lead: the detectors')
    # warnings per 1000 steps of the runs without an instability: every rule is compared at each
    # cap (one rate alone is fragile: a rule just above it drops out)
    false_alarm_rates: tuple[float, ...] = (1.0, 2.0, 3.0, 5.0)
    attention_every: int = 1
    update_curvature_every: int | None = None  # None: each bed's own (UPDATE_CURVATURE_EVERY)
    spike_ratio: float = 1.5  # the instability: the smoothed loss above 1.5 x its best ...
    recover: float = 1.2  # ... never again below 1.2 x that best
    smooth: int = 10  # steps in the running mean the ground truth reads
    spike_window: int = 20  # transient spikes: 1.5 x the mean of the previous 20 steps
    spike_min_rise: float = 0.1
    start: int | None = None  # the first step the ground truth reads (None: half the warmup)
    knobs: int = 16  # settings per rule

    def __post_init__(self) -> None:
        unknown = [bed for bed in self.beds if bed not in CONTROLS]
        if unknown or not self.beds:
            raise ValueError(f"beds must be a non-empty subset of {', '.join(CONTROLS)}; got {self.beds}")
        if (not self.seeds or self.horizon < 1 or self.late < 0 or not self.false_alarm_rates
                or min(self.false_alarm_rates) < 0 or self.knobs < 2):
            raise ValueError(f"need seeds, horizon >= 1, late >= 0, false_alarm_rates >= 0, knobs >= 2; got {self.seeds}, "
                             f"{self.horizon}, {self.late}, {self.false_alarm_rates}, {self.knobs}")
        every = self.update_curvature_every
        if every is not None and (isinstance(every, bool) or not isinstance(every, int) or every < 1):
            raise ValueError(f"update_curvature_every must be a positive int or None, got {self.update_curvature_every!r}")
        if self.scale not in tb.SCALES:
            raise ValueError(f"scale must be one of {', '.join(tb.SCALES)}, got {self.scale!r}")


@dataclass(frozen=True)
class RunOutcome:
    bed: str
    seed: int
    steps: int
    events: list[int]  # the instability's onset (ground truth), or none
    spikes: list[int]  # transient spikes (``spike_onsets``), recovered or not: for the record
    runtime_s: float
    loss: list[float] = field(repr=False)  # the training loss per step, for the figure


@dataclass(frozen=True)
class Row:
    bed: str  # the bed whose runs (with its control's) were scored
    family: str
    signal: str  # "raw" | "quotient" (the detectors: "raw")
    rate_cap: float  # the false-alarm rate (per 1000 quiet steps) the setting had to stay within
    knob: float | None  # the setting chosen at that rate (None: none that quiet)
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
    sweeps: dict[str, list[dict]]  # "<bed>/<family>/<signal>" -> every setting's score
    verdict: str  # per bed, "<bed>: ..."
    runtime_s: float
    # every run's recorded curves, the scoring's input: saved beside the JSON (``save_records``) so
    # that the rules can be scored again, or with more seeds, without training again
    records: list[Run] = field(default_factory=list, repr=False)

    def to_json(self) -> dict:
        data = asdict(replace(self, records=[]))  # the curves go to their own archive (``save``)
        del data["records"]
        return data

    def save(self, out: Path) -> list[Path]:
        paths = write_result(out, "transformer_spikes", self.to_json(), plot(self))
        if self.records:
            paths.append(save_records(self.records, Path(out) / "transformer_spikes_records.npz",
                                      [outcome.bed for outcome in self.runs]))
        return paths


def save_records(records: list[Run], path: Path, beds: list[str] | None = None) -> Path:
    """The runs' curves, events and lengths in one compressed NumPy archive (``load_records`` reads it),
    each labelled with the bed it belongs to (``beds``, one per run: a bed or its control)."""
    if beds is not None and len(beds) != len(records):
        raise ValueError(f"beds must name one bed per run: {len(beds)} for {len(records)} runs")
    arrays = {}
    for index, run_ in enumerate(records):
        if beds is not None:
            arrays[f"{index}/bed"] = np.asarray([beds[index]])
        arrays[f"{index}/events"] = np.asarray(run_.events, dtype=np.int64)
        arrays[f"{index}/steps"] = np.asarray([run_.steps], dtype=np.int64)
        for name, (steps, values) in run_.series.items():
            arrays[f"{index}/series/{name}/steps"] = np.asarray(steps, dtype=np.int64)
            arrays[f"{index}/series/{name}/values"] = np.asarray(values, dtype=np.float64)
    np.savez_compressed(path, **arrays)
    return path


def load_records(path: Path, bed: str | None = None) -> list[Run]:
    """The runs ``save_records`` wrote, in order; with ``bed``, only that bed's and its control's
    (an archive without labels holds attention-spike runs: it predates the other beds)."""
    if bed is not None and bed not in CONTROLS:
        raise ValueError(f"bed must be one of {', '.join(CONTROLS)}; got {bed!r}")
    with np.load(path) as archive:
        keys = list(archive.keys())
        count = 1 + max(int(key.split("/", 1)[0]) for key in keys) if keys else 0
        records = []
        for index in range(count):
            prefix = f"{index}/series/"
            names = sorted({key[len(prefix):].rsplit("/", 1)[0] for key in keys if key.startswith(prefix)})
            series = {name: (archive[f"{prefix}{name}/steps"].tolist(), archive[f"{prefix}{name}/values"].tolist())
                      for name in names}
            label = str(archive[f"{index}/bed"][0]) if f"{index}/bed" in archive else "attention-spike"
            if bed is None or tb.spike_bed(label) == bed:
                records.append(Run(series, tuple(archive[f"{index}/events"].tolist()), int(archive[f"{index}/steps"][0])))
    return records


def spike_onsets(losses: list[float], *, ratio: float, window: int, min_rise: float, start: int) -> list[int]:
    """Transient spikes: steps t (1-based, as ``testbeds.train`` counts) where L_t > ratio * mean of
    the previous ``window`` losses and exceeds it by ``min_rise``, the first of each run of such steps,
    from ``start`` on; a non-finite loss counts as a spike."""
    onsets, previous = [], -math.inf
    for i in range(max(window, start - 1), len(losses)):
        mean = sum(losses[i - window:i]) / window
        value = losses[i]
        if not math.isfinite(value) or (value > ratio * mean and value - mean > min_rise):
            if i - previous > 1:
                onsets.append(i + 1)
            previous = i
    return onsets


def instability_onset(losses: list[float], *, ratio: float, recover: float, min_rise: float, window: int,
                      start: int) -> list[int]:
    """Ground truth: [the step where the loss leaves its best level for good], or []. On the running
    mean m over ``window`` steps (the minibatch noise averaged out), with b the smallest m before: the
    first window ending at t >= ``start`` with m_t > ratio * b, m_t - b > min_rise, and m never again
    below recover * b; the onset is that window's first step whose loss exceeds ratio * b. A spike
    that recovers is not an instability; a non-finite loss is one."""
    values = np.asarray(losses, dtype=np.float64)
    bad = np.flatnonzero(~np.isfinite(values))
    if len(bad):
        values = values[: bad[0]]
    if len(values) < window:
        return [int(bad[0]) + 1] if len(bad) else []
    smooth = np.convolve(values, np.ones(window) / window, mode="valid")  # smooth[j]: steps j+1 .. j+window
    later_min = np.minimum.accumulate(smooth[::-1])[::-1]
    best = np.inf
    for j, m in enumerate(smooth):
        step = j + window
        if step >= start and best < np.inf and m > ratio * best and m - best > min_rise and later_min[j] > recover * best:
            # the onset: the first step of that window already above ratio * best (the mean lags it)
            above = np.flatnonzero(values[j:j + window] > ratio * best)
            return [j + 1 + int(above[0])] if len(above) else [step]
        best = min(best, m)
    return [int(bad[0]) + 1] if len(bad) else []


def _record(name: str, seed: int, config: Config, log_dir: Path, bar=None) -> tuple[RunOutcome, Run]:
    """Train one bed under the monitor; its curves (for replay) and its ground-truth spikes."""
    start = time.perf_counter()
    bed = tb.make_testbed(name, seed=seed, scale=config.scale, steps=config.steps)
    first = bed.train_batch(1)
    symmetries = find_symmetries(bed.model, first[0])
    every = config.update_curvature_every or UPDATE_CURVATURE_EVERY[tb.spike_bed(name)]
    schedule = Schedule(quotient=None, attention=config.attention_every, update_curvature=every)
    monitor = Monitor(bed.model, bed.optimizer, log_dir, symmetries=symmetries, loss_fn=bed.loss_fn, schedule=schedule,
                      tensorboard=False, warnings=())  # the rules are replayed over the record below
    advance = step_bar(bar, f"{name} seed {seed}", bed.steps)
    with monitor:
        curves = tb.train(bed, on_step=lambda step, loss, batch: monitor.step(loss, batch=batch), progress=advance)
        series = monitor.store.series()
    begin = int(bed.notes["warmup"]) // 2 if config.start is None else config.start
    spikes = spike_onsets(curves["loss"], ratio=config.spike_ratio, window=config.spike_window,
                          min_rise=config.spike_min_rise, start=begin)
    if GROUND_TRUTH[tb.spike_bed(name)] == "spikes":
        events = spikes
    else:
        events = instability_onset(curves["loss"], ratio=config.spike_ratio, recover=config.recover,
                                   window=config.smooth, min_rise=config.spike_min_rise, start=begin)
    outcome = RunOutcome(name, seed, bed.steps, events, spikes, time.perf_counter() - start, curves["loss"])
    return outcome, Run(series, tuple(events), bed.steps)


def _values(runs: list[Run], observable: str, scale: str | None, reduce: str = "max") -> np.ndarray:
    """Every value a rule on ``observable`` (times ``scale``) would read, pooled over the runs."""
    probe = Rule("probe", observable, scale=scale, reduce=reduce)
    found = [probe.read(values) for run in runs for _, values in run.by_step]
    return np.asarray([x for x in found if x is not None], dtype=np.float64)


def _families(runs: list[Run], config: Config) -> list[tuple[str, str, Callable[[float], Rule], list[float]]]:
    """(family, signal, make(knob) -> Rule, knob grid) for every rule scored; the grids span each
    signal's own range over the runs (bounds from its median to 1.5 x its largest value; for a
    falling signal from its median down to half its smallest)."""
    horizon = config.horizon

    def bounds(observable: str, scale: str | None = None, rising: bool = True, reduce: str = "max",
               log: bool = True) -> list[float]:
        values = _values(runs, observable, scale, reduce)
        values = values[np.isfinite(values) & (values > 0)] if log else values[np.isfinite(values)]
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
        grid = bounds(observable, scale, rising, reduce, log)
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
        approach("charge-breaking", "gradient_breaking/*", "quotient"),
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


def _row(bed: str, family: str, signal: str, cap: float, chosen: RuleScore | None, events: int) -> Row:
    if chosen is None:
        return Row(bed, family, signal, cap, None, math.nan, 0, events, math.nan, [])
    return Row(bed, family, signal, cap, chosen.knob, chosen.false_alarm_rate, chosen.caught, events, chosen.median_lead,
               list(chosen.leads))


def _verdict(rows: list[Row], events: int) -> str:
    """Per family, quotient against raw: how many instabilities each forecast (lead > 0) at every
    false-alarm cap, summed over the caps (a family better at one cap and worse at another is mixed)."""
    if events == 0:
        return "no instability in any run: the prediction was not tested"
    forecast = lambda row: sum(1 for t in row.leads if not math.isnan(t) and t > 0)
    compared = []
    for family in ("attention-logit", "qk-product", "vo-product", "update-stability"):
        pairs = [(raw, quotient) for raw in rows for quotient in rows if raw.family == quotient.family == family
                 and raw.signal == "raw" and quotient.signal == "quotient" and raw.rate_cap == quotient.rate_cap]
        if not pairs:
            continue
        better = sum(forecast(q) > forecast(r) for r, q in pairs)
        worse = sum(forecast(q) < forecast(r) for r, q in pairs)
        counts = ", ".join(f"{forecast(q)} vs {forecast(r)} at {r.rate_cap:g}" for r, q in pairs)
        word = ("quotient better" if better and not worse else "raw better" if worse and not better
                else "mixed" if better else "no difference")
        compared.append(f"{family}: {word} (quotient vs raw forecasts per false-alarm cap: {counts})")
    return (f"over {events} instabilities, symmetry-corrected against raw at matched false-alarm rates: "
            + "; ".join(compared))


def run(config: Config = Config(), progress: bool = False) -> Result:
    start = time.perf_counter()
    outcomes: list[RunOutcome] = []
    recorded: list[Run] = []
    threads = torch.get_num_threads()
    with tempfile.TemporaryDirectory() as directory, progress_bars(progress) as bar:
        for bed in config.beds:
            for name in (bed, CONTROLS[bed]):
                for seed in config.seeds:
                    outcome, run_ = _record(name, seed, config, Path(directory) / f"{name}-{seed}", bar)
                    outcomes.append(outcome)
                    recorded.append(run_)
    torch.set_num_threads(threads)
    rows, sweeps, verdicts = [], {}, []
    for bed in config.beds:  # each bed scored with its own control: the signals' scales differ by bed
        mine = [run_ for outcome, run_ in zip(outcomes, recorded) if tb.spike_bed(outcome.bed) == bed]
        bed_rows, bed_sweeps, verdict = score_records(mine, config, bed)
        rows += bed_rows
        sweeps.update({f"{bed}/{key}": value for key, value in bed_sweeps.items()})
        verdicts.append(f"{bed}: {verdict}")
    return Result(config, outcomes, rows, sweeps, "; ".join(verdicts), time.perf_counter() - start, recorded)


def score_records(recorded: list[Run], config: Config, bed: str = "attention-spike"
                  ) -> tuple[list[Row], dict[str, list[dict]], str]:
    """Every rule family swept and scored over the recorded runs of one bed and its control (``run``'s,
    or ``load_records``' from one or several saved experiments): the rows at each false-alarm cap,
    every setting's score, the verdict. Runs with a ground-truth event are the spike runs, the others
    (whichever arm) measure the false alarms."""
    spike_runs = [r for r in recorded if r.events]
    quiet_runs = [r for r in recorded if not r.events]
    events = sum(len(r.events) for r in spike_runs)
    rows, sweeps = [], {}
    for family, signal, make, grid in _families(recorded, config):
        scores = score_rule(make, grid, spike_runs, quiet_runs, horizon=config.horizon, late=config.late)
        sweeps[f"{family}/{signal}"] = [{"knob": s.knob, "false_alarm_rate": s.false_alarm_rate, "caught": s.caught,
                                         "median_lead": s.median_lead} for s in scores]
        for cap in config.false_alarm_rates:
            rows.append(_row(bed, family, signal, cap, at_false_alarm_rate(scores, cap), events))
    return rows, sweeps, _verdict(rows, events)


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
    fig.suptitle("training loss; dashed: instability onsets (ground truth)", fontsize=10)
    return fig
