r"""Miyagawa 2026 §6's falsifiable prediction, put to the test on testbeds with published transitions.

The conjecture: symmetry-corrected (quotient) curvature forecasts abrupt training transitions better
than the raw curvature. Each testbed (``testbeds``: grokking with an MLP and a transformer, the
catapult phase, edge of stability) is trained once under the ``Monitor`` with the curvature on a
schedule (``curvature_samples`` evenly spaced steps, and steps 1, 2, 4, ... before the first); it logs the extreme eigenvalues of the raw
Hessian H and of P_H H P_H (the quotient), and the shock-step forecast -1/(eta lambda_min) of Thm 4.3.

Ground truth, on the curve that carries the testbed's published transition: for grokking (test
accuracy) the step where it rises halfway from its start to its maximum (``midpoint_crossing``: one
event, the grokking step, however many setbacks the rise has; the transformer's runs through
"slingshot" loss spikes that ``abrupt_changes`` split into several or none); for the catapult and edge
of stability (training loss) its ``abrupt_changes``. Warning rules, the same rule on each signal:
    shock:     the forecast shock enters the horizon, -1/(eta lambda_min) < horizon (§6: a
               characteristic crossing ahead), i.e. lambda_min < -1/(eta horizon); once per entry;
    stability: eta lambda_max > 2 (the classical gradient-descent stability bound; a detection of
               the crossing, the baseline every curvature-based forecast has to beat);
    approach:  eta lambda_max approaching 2: within 10 % of it, or the line through its last 3
               samples reaching it within the horizon (a forecast: never on the crossing itself).
Under AdamW (the grokking testbeds) both use the preconditioned curvature D^{1/2} H D^{1/2},
D = 1/(sqrt(v_hat) + eps) (the monitor's forecast; ``curvature.adam_preconditioner``), and the
stability bound is Adam's 38 at beta1 = 0.9 (``stability_threshold``): Adam's step is eta D g.
Each rule fires at most once per horizon (refractory); the Monitor runs all three live (``_rules``)
and the warnings scored are the ones it wrote to the run store. Scores (``score``): per event the lead time
(steps from the latest warning within the horizon before it), precision (warnings followed by an
event within the horizon), recall (events preceded by a warning) and the false-alarm rate (warnings
followed by no event within the horizon, per 1000 steps). Whatever comes out is reported.
"""

from __future__ import annotations

import math
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..monitor import Monitor, Schedule, abrupt_changes, midpoint_crossing, score
from ..monitor.curvature import Curvature
from ..monitor.warnings import Approach, Crossing, replay, stability_threshold, warnings_in
from ..symmetry import find_symmetries
from . import testbeds as tb
from ._files import write_result
from ._progress import progress_bars, step_bar

NAME = "falsifiable-prediction"
SIGNALS = ("quotient", "raw")
RULES = ("shock", "stability", "approach")


@dataclass(frozen=True)
class Config:
    testbeds: tuple[str, ...] = tb.TESTBEDS
    scale: str = "default"  # testbeds.make_testbed's scale ("tiny" for tests)
    seed: int = 0
    curvature_samples: int = 25  # Lanczos runs (raw and quotient) per testbed, evenly spaced
    # and at steps 1, 2, 4, 8, ... before the first of them (Schedule.early): the catapult's spike
    # (step ~10 of 300) falls before an evenly spaced first sample (step 12 at the default scale)
    early_samples: bool = True
    curvature_tol: float = 1e-4  # Lanczos' relative tolerance: the rules need signs and magnitudes only
    horizon_fraction: float = 0.1  # warning horizon = this fraction of the run's steps (at least 2 curvature samples)
    event_threshold: float = 8.0  # abrupt_changes threshold in noise units

    def __post_init__(self) -> None:
        unknown = [name for name in self.testbeds if name not in tb.TESTBEDS]
        if unknown or not self.testbeds:
            raise ValueError(f"testbeds must be a non-empty subset of {', '.join(tb.TESTBEDS)}; got {self.testbeds}")
        if self.curvature_samples < 2 or not 0 < self.horizon_fraction <= 1:
            raise ValueError(f"need curvature_samples >= 2 and 0 < horizon_fraction <= 1, got "
                             f"{self.curvature_samples}, {self.horizon_fraction}")


@dataclass(frozen=True)
class TestbedOutcome:
    name: str
    published: str
    steps: int
    lr: float
    horizon: int
    transition_curve: str
    events: list[int]
    warnings: dict[str, list[int]]  # "<rule>/<signal>" -> steps
    lead_times: dict[str, list[float]]  # per event; nan: no warning within the horizon before it
    precision: dict[str, float]
    recall: dict[str, float]
    curves: dict[str, list[float]] = field(repr=False)  # transition curve and curvature series, for the figure
    runtime_s: float = 0.0


@dataclass(frozen=True)
class Result:
    config: Config
    outcomes: list[TestbedOutcome]
    totals: dict[str, dict[str, float]]  # "<rule>/<signal>" -> warnings, useful, events, caught, precision, recall
    verdict: str
    runtime_s: float

    def to_json(self) -> dict:
        return asdict(self)

    def save(self, out: Path) -> list[Path]:
        return write_result(out, "falsifiable_prediction", self.to_json(), plot(self))


def _events(curves: dict[str, list[float]], bed: tb.Testbed, threshold: float) -> list[int]:
    """Ground truth: the midpoint crossing of an accuracy curve, the abrupt changes of a loss curve
    (its own sampling sets the window)."""
    steps = curves["eval_step"] if bed.transition in curves and bed.transition != "loss" else curves["step"]
    values = curves[bed.transition]
    window = max(2, len(values) // 40)
    if bed.transition.endswith("accuracy"):
        return midpoint_crossing(steps, values, window=window, threshold=threshold)
    return abrupt_changes(steps, values, window=window, threshold=threshold)


def _rules(bound: float, horizon: int, adam: bool) -> list:
    """The three rules on both signals, run live by the Monitor: the shock forecast entering the
    horizon (``Crossing`` with ``forecast`` and hysteresis: a forecast that stays inside the horizon
    warns once, not once a horizon), eta lambda_max above the stability ``bound`` (a detection of the
    crossing), and eta lambda_max approaching it (``Approach``: within 10 % of it, or its line through
    the last 3 samples reaching it within the horizon; the forecast). Preconditioned under Adam."""
    rules = []
    for signal in SIGNALS:
        # the monitor's forecast -1/(eta lambda_min), preconditioned under Adam; "no crossing" (inf)
        # never fires
        rules.append(Crossing("shock", f"shock_steps/{signal}", signal, level=horizon, refractory=horizon,
                              forecast=True, hysteresis=True))
        # under Adam the step is eta D g: its stability is that of the preconditioned sharpness
        sharpness = f"curvature/{'preconditioned_' if adam else ''}{signal}_max"
        rules.append(Crossing("stability", sharpness, signal, scale="lr", level=bound, below=False, refractory=horizon))
        rules.append(Approach("approach", sharpness, signal, scale="lr", bound=bound, margin=0.1, horizon=horizon,
                              window=3))
    return rules


def rescore(outcome: dict, bound: float) -> dict[str, list[int]]:
    """The warnings today's rules give on a saved outcome (``TestbedOutcome.to_json`` of an earlier
    run, with its curvature curves): each rule replayed over the curves it would have seen live, the
    learning rate constant (the testbeds have no schedule); preconditioned where the curves are.
    ``bound``: the stability bound of the run's optimizer (``stability_threshold``)."""
    curves, lr, horizon = outcome["curves"], outcome["lr"], outcome["horizon"]
    steps = [int(step) for step in curves["curvature_step"]]
    adam = "curvature/preconditioned_raw_min" in curves
    series = {"lr": (steps, [lr] * len(steps))}
    kinds = ("", "preconditioned_") if adam else ("",)
    for kind in kinds:
        for signal in SIGNALS:
            for end in ("min", "max"):
                series[f"curvature/{kind}{signal}_{end}"] = (steps, curves[f"curvature/{kind}{signal}_{end}"])
    for signal in SIGNALS:  # the forecast as the monitor logged it (``Curvature.shock_steps``)
        kind = "preconditioned_" if adam else ""
        forecasts = [Curvature(math.nan, math.nan, math.nan, low, 0).shock_steps(lr) for low in
                     curves[f"curvature/{kind}{signal}_min"]]
        series[f"shock_steps/{signal}"] = (steps, forecasts)
    found = {f"{rule}/{signal}": [] for rule in RULES for signal in SIGNALS}
    for rule in _rules(bound, horizon, adam):
        found[f"{rule.name}/{rule.signal}"] = [w.step for w in replay(rule, series)]
    return found


def run_testbed(name: str, config: Config, log_dir: Path, *, bar=None, tensorboard: bool = False) -> TestbedOutcome:
    """Train one testbed under the monitor (run store in ``log_dir``) and score both rules on both
    signals against its events; ``bar``: a rich Progress to show the steps on."""
    start = time.perf_counter()
    bed = tb.make_testbed(name, seed=config.seed, scale=config.scale)
    first = bed.train_batch(0)
    every = max(1, bed.steps // config.curvature_samples)
    # softmax cross-entropy is blind to a common shift of the logits; a squared error is not
    symmetries = find_symmetries(bed.model, first[0], logits=bed.loss_fn is F.cross_entropy)
    horizon = max(2 * every, round(config.horizon_fraction * bed.steps))
    adam = type(bed.optimizer) in (torch.optim.Adam, torch.optim.AdamW)
    monitor = Monitor(bed.model, bed.optimizer, log_dir, symmetries=symmetries, example_input=first[0],
                      loss_fn=bed.loss_fn,  # the periods as given (the scores compare runs at fixed samples)
                      schedule=Schedule(quotient=every, curvature=every, early=config.early_samples, quotient_budget=None),
                      tensorboard=tensorboard, curvature_tol=config.curvature_tol, warnings=_rules(stability_threshold(bed.optimizer), horizon, adam))
    advance = step_bar(bar, name, bed.steps)
    with monitor:
        curves = tb.train(bed, on_step=lambda step, loss, batch: monitor.step(loss, batch=batch), progress=advance)
        events = _events(curves, bed, config.event_threshold)
        names = set(monitor.store.names())
        # the warnings the monitor raised live, read back from the store
        warnings = {f"{rule}/{signal}": [] for rule in RULES for signal in SIGNALS}
        for warning in warnings_in(monitor.store.events()):
            warnings[f"{warning.rule}/{warning.signal}"].append(warning.step)
        kinds = ("", "preconditioned_") if "curvature/preconditioned_raw_min" in names else ("",)
        series = {f"curvature/{kind}{s}_{end}": monitor.store.scalars(f"curvature/{kind}{s}_{end}")
                  for kind in kinds for s in SIGNALS for end in ("min", "max")}
    scored = {key: score(found, events, horizon=horizon) for key, found in warnings.items()}
    transition_steps = curves["eval_step"] if bed.transition != "loss" else curves["step"]
    figure_curves = {"transition_step": [float(s) for s in transition_steps],
                     "transition": [float(v) for v in curves[bed.transition]],
                     "curvature_step": [float(s) for s in series["curvature/raw_min"][0]]}
    figure_curves |= {key: [float(v) for v in values] for key, (_, values) in series.items()}
    return TestbedOutcome(name, bed.published, bed.steps, bed.lr, horizon, bed.transition, events, warnings,
                          {k: s.lead_times for k, s in scored.items()}, {k: s.precision for k, s in scored.items()},
                          {k: s.recall for k, s in scored.items()}, figure_curves, time.perf_counter() - start)


def _totals(outcomes: list[TestbedOutcome]) -> dict[str, dict[str, float]]:
    totals = {}
    for rule in RULES:
        for signal in SIGNALS:
            key = f"{rule}/{signal}"
            fired = sum(len(o.warnings[key]) for o in outcomes)
            useful = sum(round(o.precision[key] * len(o.warnings[key])) for o in outcomes if o.warnings[key])
            events = sum(len(o.events) for o in outcomes)
            caught = sum(sum(not math.isnan(t) for t in o.lead_times[key]) for o in outcomes)
            leads = [t for o in outcomes for t in o.lead_times[key] if not math.isnan(t)]
            steps = sum(o.steps for o in outcomes)
            totals[key] = {"warnings": fired, "useful": useful, "events": events, "caught": caught,
                           # warnings followed by no event within the horizon, per 1000 steps
                           "false_alarm_rate": 1000.0 * (fired - useful) / steps,
                           "precision": useful / fired if fired else math.nan,
                           "recall": caught / events if events else math.nan,
                           "median_lead": float(np.median(leads)) if leads else math.nan}
    return totals


def _verdict(totals: dict[str, dict[str, float]]) -> str:
    q, r = totals["shock/quotient"], totals["shock/raw"]
    if q["events"] == 0:
        return "no abrupt transitions detected: the prediction was not tested"

    def f1(t: dict[str, float]) -> float:
        p, c = t["precision"], t["recall"]
        return 0.0 if math.isnan(p) or math.isnan(c) or p + c == 0 else 2 * p * c / (p + c)

    fq, fr = f1(q), f1(r)
    if (q["caught"], q["useful"]) == (r["caught"], r["useful"]):
        # the same events caught by the same useful warnings: an F1 gap can only come from the count
        # of false alarms, which one curvature sample more or less below the line decides
        comparison = (f"no different from the raw one in what it caught ({q['caught']} of {q['events']} events each; "
                      f"{q['warnings']} vs {r['warnings']} warnings in all)")
    else:
        comparison = ("better than" if fq > fr else "worse than" if fq < fr else "no different from") + " the raw one"
    return (f"shock rule: quotient precision {q['precision']:.2f} recall {q['recall']:.2f} (F1 {fq:.2f}) vs raw "
            f"precision {r['precision']:.2f} recall {r['recall']:.2f} (F1 {fr:.2f}) over {q['events']} events: "
            f"the quotient forecast is {comparison} here")


def run(config: Config = Config(), progress: bool = False) -> Result:
    start = time.perf_counter()
    outcomes = []
    with tempfile.TemporaryDirectory() as directory, progress_bars(progress) as bar:
        for name in config.testbeds:
            outcomes.append(run_testbed(name, config, Path(directory) / name, bar=bar))
    totals = _totals(outcomes)
    return Result(config, outcomes, totals, _verdict(totals), time.perf_counter() - start)


def plot(result: Result):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    count = len(result.outcomes)
    fig, axes = plt.subplots(2, count, figsize=(4.2 * count, 6.2), layout="constrained", squeeze=False)
    for column, outcome in enumerate(result.outcomes):
        top, bottom = axes[0, column], axes[1, column]
        c = outcome.curves
        top.plot(c["transition_step"], c["transition"], lw=1.2)
        for event in outcome.events:
            top.axvline(event, color="red", lw=0.9, ls="--")
        top.set_title(f"{outcome.name}: {outcome.transition_curve}", fontsize=9)
        for signal, colour in (("quotient", "C0"), ("raw", "C1")):
            # the curvature the rules used: preconditioned under Adam
            kind = "preconditioned_" if f"curvature/preconditioned_{signal}_min" in c else ""
            bottom.plot(c["curvature_step"], c[f"curvature/{kind}{signal}_min"], color=colour, lw=1.1,
                        label=f"{signal} λ_min" + (" (D^½HD^½)" if kind else ""))
            for warning in outcome.warnings[f"shock/{signal}"]:
                bottom.axvline(warning, color=colour, lw=0.7, ls=":")
        for event in outcome.events:
            bottom.axvline(event, color="red", lw=0.9, ls="--")
        bottom.axhline(0.0, color="k", lw=0.5)
        bottom.set_yscale("symlog", linthresh=1e-3)
        bottom.set_xlabel("step")
        bottom.legend(fontsize=7)
    fig.suptitle("§6 prediction: events (red dashed) vs shock warnings (dotted)", fontsize=10)
    return fig
