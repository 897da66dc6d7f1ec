r"""Early warnings and the ground truth they are scored against (Miyagawa 2026 §6's prediction).

- ``abrupt_changes``: where a curve (loss, accuracy) changes abruptly. The change over a window of
  w steps, D_t = m(t + w) - m(t - w) with m a running median (robust to single spikes), is compared
  with the curve's own noise, the median absolute step difference times sqrt(2w); a change is a local
  extremum of |D_t| above ``threshold`` noise units, and its step is the extremum's.
- ``midpoint_crossing``: for a curve that rises once through noise and setbacks (test accuracy under
  grokking, whose rise in a transformer runs through loss spikes, the "slingshot"): the first step at
  which its running median reaches halfway from its start to its maximum, if that rise is larger than
  ``threshold`` noise units. One event per run: the step of the transition, not each setback.
- ``threshold_warnings``: the steps where a signal first crosses below (or above) a level, with a
  ``refractory`` number of steps before the next warning can fire: e.g. quotient_min < 0 (a forecast
  characteristic crossing), or the same rule on the raw curvature.
- ``score``: each event's lead time (event step - the latest warning before it within ``horizon``),
  precision (warnings followed by an event within the horizon) and recall (events preceded by one).

Live rules (``Rule``): each sees one step's logged values at a time (``observe(step, values)``) and
returns an ``EarlyWarning`` or None; the Monitor runs them in the training thread and writes each
warning as an event of kind "warning" whose message starts with the rule's name and "raw" or
"quotient". ``replay`` runs a fresh copy of a rule over a stored run: the same definition offline.
- ``Approach``: a *forecast*. It fires while a value approaches a bound, before it crosses it: when
  the value is within ``margin`` of the bound, or when the least-squares line through its last
  ``window`` samples reaches the bound within ``horizon`` steps; the forecast step is where that
  line meets the bound, lead = (bound - x_t) / slope. Once fired it stays quiet until the value has
  moved back past twice the margin, so a value that sits at the bound (edge of stability) gives one
  warning, not one per sample. A crossing itself never fires it.
- ``Crossing``: the value crosses a level (one warning per ``refractory`` steps): a detection,
  unless the value is itself a forecast in steps (the shock forecast -1/(eta lambda_min)), in which
  case ``forecast=True`` adds it to the step.
- The production spike detectors, detections after the fact, for comparison (each on the loss):
  ``SigmaSpike`` (OLMo-core: loss above the mean of the last 128 steps by 6 standard deviations),
  ``RatioSpike`` (LLM Foundry's KillLossSpike: loss above twice the mean of the last 100 steps,
  ``patience`` = 4 such steps in a row), ``RelativeSpike`` (Lightning's SpikeDetection: loss - mean
  over the last 10 steps above rtol = 2 times that mean), ``MaxRatioSpike`` (Megatron-LM's
  ``--check-for-spiky-loss``: loss above 10 times the largest seen so far, after 100 samples).
  Written from their documented rules, not imported: none of those libraries is a dependency.
- ``stability_threshold``: the bound on eta lambda_max of gradient descent, momentum and Adam.
- ``default_rules``: what the Monitor watches unless told otherwise (see there).

Scoring at a matched false-alarm rate (``score_rule``, ``at_false_alarm_rate``): a rule with one knob
(a bound, a number of sigmas) is replayed over recorded spike runs and control runs (no spike) for
each knob value; per setting, each event's lead (event - the earliest warning within ``horizon``
before it, or up to ``late`` steps after, negative then) and the warnings per 1000 control steps.
Rules are compared at the setting that keeps them below the same false-alarm rate.
"""

from __future__ import annotations

import functools
import math
import re
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace

import numpy as np

__all__ = ["Approach", "Crossing", "EarlyWarning", "MaxRatioSpike", "RatioSpike", "RelativeSpike", "Rule", "RuleScore",
           "Run", "Score", "SigmaSpike", "abrupt_changes", "at_false_alarm_rate", "by_step", "default_rules", "event_leads",
           "midpoint_crossing", "replay", "score", "score_rule", "stability_threshold", "threshold_warnings",
           "warnings_in"]


def _running_median(values: np.ndarray, half: int) -> np.ndarray:
    padded = np.pad(values, half, mode="edge")
    windows = np.lib.stride_tricks.sliding_window_view(padded, 2 * half + 1)
    return np.median(windows, axis=1)


def abrupt_changes(steps: Sequence[int], values: Sequence[float], *, window: int = 10,
                   threshold: float = 8.0) -> list[int]:
    """Steps of abrupt changes in ``values`` (see the module docstring); NaNs are skipped."""
    steps_a, values_a = _finite(steps, values, window, threshold)
    if len(values_a) < 4 * window + 2:
        return []
    smooth = _running_median(values_a, max(1, window // 4))
    change = np.zeros_like(smooth)
    change[window:-window] = smooth[2 * window:] - smooth[:-2 * window]
    noise = _noise(values_a, window)
    scale = noise if noise > 0 else np.finfo(np.float64).tiny
    strength = np.abs(change) / scale
    found = []
    for i in range(window, len(strength) - window):
        if strength[i] > threshold and strength[i] == strength[max(0, i - window):i + window + 1].max():
            if not found or steps_a[i] - found[-1] > window:
                found.append(int(steps_a[i]))
    return found


def _finite(steps: Sequence[int], values: Sequence[float], window: int,
            threshold: float) -> tuple[np.ndarray, np.ndarray]:
    """The detectors' arguments checked, and (steps, values) without the non-finite values."""
    if window < 1 or threshold <= 0:
        raise ValueError(f"need window >= 1 and threshold > 0, got {window}, {threshold}")
    steps_a, values_a = np.asarray(steps), np.asarray(values, dtype=np.float64)
    if steps_a.shape != values_a.shape:
        raise ValueError(f"steps and values differ in length: {len(steps_a)} vs {len(values_a)}")
    keep = np.isfinite(values_a)
    return steps_a[keep], values_a[keep]


def _noise(values: np.ndarray, window: int) -> float:
    """A curve's own noise over a window of w steps: median |step difference| times sqrt(2 w)."""
    return float(np.median(np.abs(np.diff(values)))) * math.sqrt(2 * window)


def midpoint_crossing(steps: Sequence[int], values: Sequence[float], *, window: int = 2,
                      threshold: float = 8.0) -> list[int]:
    """[the first step where the running median (2 window + 1 samples) of ``values`` reaches
    (m_0 + max m) / 2], m_0 its first value, or [] when the rise max m - m_0 is at most ``threshold``
    times the noise (median |step difference| times sqrt(2 window), as in ``abrupt_changes``)."""
    steps_a, values_a = _finite(steps, values, window, threshold)
    if len(values_a) < 2 * window + 2:
        return []
    smooth = _running_median(values_a, window)
    rise = smooth.max() - smooth[0]
    if not rise > threshold * _noise(values_a, window):
        return []
    return [int(steps_a[np.argmax(smooth >= smooth[0] + rise / 2)])]


def threshold_warnings(steps: Sequence[int], values: Sequence[float], level: float, *, below: bool = True,
                       refractory: int = 50) -> list[int]:
    """Steps where ``values`` first crosses ``level`` (from above if ``below``), at most one per
    ``refractory`` steps; NaN values never fire: ``Crossing`` replayed over the curve."""
    rule = Crossing("threshold", "value", level=level, below=below, refractory=refractory)
    return [w.step for w in replay(rule, {"value": (steps, values)})]


@dataclass(frozen=True)
class Score:
    lead_times: list[float]  # per event: steps from the latest preceding warning (nan: none in horizon)
    precision: float
    recall: float
    false_alarms: int = 0  # warnings followed by no event within the horizon


def score(warnings: Sequence[int], events: Sequence[int], *, horizon: int) -> Score:
    """Lead times, precision, recall and false alarms of ``warnings`` against ``events`` within
    ``horizon`` steps."""
    if horizon < 1:
        raise ValueError(f"horizon must be >= 1, got {horizon}")
    lead = []
    for event in events:
        before = [w for w in warnings if 0 <= event - w <= horizon]
        lead.append(float(event - max(before)) if before else math.nan)
    useful = [w for w in warnings if any(0 <= e - w <= horizon for e in events)]
    precision = len(useful) / len(warnings) if warnings else math.nan
    recall = sum(not math.isnan(t) for t in lead) / len(events) if events else math.nan
    return Score(lead, precision, recall, len(warnings) - len(useful))


# ---- live rules --------------------------------------------------------------------------------

SIGNALS = ("raw", "quotient")
Series = Mapping[str, tuple[Sequence[int], Sequence[float]]]  # RunStore.series(): name -> (steps, values)
_MESSAGE = re.compile(r"^(?P<rule>\S+) (?P<signal>raw|quotient): (?P<observable>\S+) = (?P<value>[^;\s]+)"
                      r"(?:; (?P<detail>.*?))??(?:; forecast step (?P<forecast>-?\d+))?$", re.DOTALL)


@dataclass(frozen=True)
class EarlyWarning:
    """One warning: which rule fired on which signal at which step, the value it saw and, for a
    forecast, the step it expects the transition at (``lead`` = forecast - step)."""

    rule: str
    signal: str  # "raw" | "quotient"
    step: int
    observable: str  # what the rule read ("lr*curvature/quotient_max": the scale times the value)
    value: float
    forecast: int | None = None  # None: a detection, which forecasts nothing
    detail: str = ""

    @property
    def lead(self) -> int | None:
        return None if self.forecast is None else self.forecast - self.step

    @property
    def message(self) -> str:
        """"<rule> <signal>: <observable> = <value>[; detail][; forecast step N]": the event's text,
        which ``warnings_in`` reads back."""
        text = f"{self.rule} {self.signal}: {self.observable} = {self.value:.6g}"
        if self.detail:
            text += f"; {self.detail}"
        if self.forecast is not None:
            text += f"; forecast step {self.forecast}"
        return text

    @classmethod
    def from_event(cls, step: int, message: str) -> EarlyWarning:
        """The warning a "warning" event's message was written from (``message``'s format)."""
        found = _MESSAGE.match(message)
        if found is None:
            raise ValueError(f"not a warning message: {message!r}; expected '<rule> raw|quotient: <observable> = <value>...'")
        forecast = found["forecast"]
        return cls(found["rule"], found["signal"], int(step), found["observable"], float(found["value"]),
                   None if forecast is None else int(forecast), found["detail"] or "")


def warnings_in(events: Sequence[tuple[int, str, str]]) -> list[EarlyWarning]:
    """The warnings among a run store's events (``RunStore.events()``), in the order written; an event
    of kind "warning" whose message is not in ``EarlyWarning.message``'s format (written by hand) is
    left out."""
    return [EarlyWarning.from_event(step, message) for step, kind, message in events
            if kind == "warning" and _MESSAGE.match(message)]


@dataclass
class Rule:
    """A live warning rule: ``observe(step, values)`` once per logged step, with every value logged
    at that step; returns an ``EarlyWarning`` or None. ``observable`` names one logged value, or ends
    in "*" to read the largest (``reduce="max"``) or smallest of every value whose name starts with
    what precedes it ("logit_max/*": every layer's); ``scale`` names a value it is multiplied by
    ("lr"). A step without the value (not scheduled there) or with a non-finite one is skipped.
    ``fresh()``: the same rule with no history."""

    name: str
    observable: str
    signal: str = "raw"
    scale: str | None = None
    reduce: str = "max"

    def __post_init__(self) -> None:
        if self.signal not in SIGNALS:
            raise ValueError(f"signal must be one of {SIGNALS}, got {self.signal!r}")
        if self.reduce not in ("max", "min"):
            raise ValueError(f"reduce must be 'max' or 'min', got {self.reduce!r}")
        if not self.name or " " in self.name:
            raise ValueError(f"a rule's name must be one word (it starts the warning's message), got {self.name!r}")

    @property
    def label(self) -> str:
        return self.observable if self.scale is None else f"{self.scale}*{self.observable}"

    def read(self, values: Mapping[str, float]) -> float | None:
        if self.observable.endswith("*"):
            prefix = self.observable[:-1]
            found = [float(v) for name, v in values.items() if name.startswith(prefix) and math.isfinite(v)]
            if not found:
                return None
            x = max(found) if self.reduce == "max" else min(found)
        else:
            x = values.get(self.observable)
            if x is None:
                return None
            x = float(x)
        if self.scale is not None:
            factor = values.get(self.scale)
            if factor is None:
                return None
            x *= float(factor)
        return x if math.isfinite(x) else None

    def observe(self, step: int, values: Mapping[str, float]) -> EarlyWarning | None:
        raise NotImplementedError

    def fresh(self) -> Rule:
        return replace(self)

    def _warn(self, step: int, x: float, forecast: int | None = None, detail: str = "") -> EarlyWarning:
        return EarlyWarning(self.name, self.signal, int(step), self.label, x, forecast, detail)


def _slope(steps: Sequence[float], values: Sequence[float]) -> float:
    """The least-squares slope of values against steps."""
    t = np.asarray(steps, dtype=np.float64)
    y = np.asarray(values, dtype=np.float64)
    t = t - t.mean()
    denominator = float(t @ t)
    return float(t @ (y - y.mean())) / denominator if denominator > 0 else 0.0


@dataclass
class Approach(Rule):
    r"""A forecast: x (the observable times ``scale``) approaches ``bound`` from below (``rising``)
    or from above, and has not crossed it. It fires when x is within ``margin`` |bound| of the bound,
    or when the least-squares line through the last ``window`` samples of x (of log x with
    ``log=True``: exponential growth) meets the bound within ``horizon`` steps:
        lead = (b - x_t) / slope  (log: (log b - log x_t) / slope of log x),   forecast = t + lead.
    After firing it waits until the line no longer meets the bound within the horizon and x is
    beyond 2 ``margin`` |bound| (0.2 |bound| without a margin) from the bound before it can fire
    again, so a value that reaches the bound and sits on it gives one warning; a crossing never
    fires it."""

    bound: float = 1.0
    rising: bool = True
    margin: float | None = 0.1
    horizon: int | None = None
    window: int = 4
    log: bool = False
    _history: deque = field(init=False, repr=False)
    _armed: bool = field(init=False, repr=False)

    def __post_init__(self) -> None:
        super().__post_init__()
        if not math.isfinite(self.bound) or (self.log and self.bound <= 0):
            raise ValueError(f"bound must be finite{' and > 0 with log=True' if self.log else ''}, got {self.bound}")
        if self.margin is None and self.horizon is None:
            raise ValueError("an Approach needs a margin, a horizon or both")
        if self.margin is not None and not 0 < self.margin < 0.5:
            raise ValueError(f"margin must be in (0, 0.5), got {self.margin}")
        if self.horizon is not None and self.horizon < 1:
            raise ValueError(f"horizon must be >= 1 step, got {self.horizon}")
        if self.window < 2:
            raise ValueError(f"window must be >= 2 samples (a line needs two), got {self.window}")
        self._history = deque(maxlen=self.window)
        self._armed = True

    def observe(self, step: int, values: Mapping[str, float]) -> EarlyWarning | None:
        x = self.read(values)
        if x is None or (self.log and x <= 0):
            return None
        sign = 1.0 if self.rising else -1.0
        gap = sign * (self.bound - x)  # > 0: not crossed yet
        u, target = (math.log(x), math.log(self.bound)) if self.log else (x, self.bound)
        self._history.append((step, u))
        lead = None
        if len(self._history) == self.window:
            slope = sign * _slope(*zip(*self._history))
            if slope > 0:  # (round-off below 1e-9 step is not a step later: ceil below)
                lead = sign * (target - u) / slope - 1e-9
        near = self.margin is not None and 0 < gap <= self.margin * abs(self.bound)
        soon = self.horizon is not None and lead is not None and 0 < lead <= self.horizon
        if not self._armed:
            # re-armed once neither trigger would fire and x is clear of the bound by twice the
            # margin (20 % without one): a value sitting at the bound does not fire again and again
            clear = 2 * (self.margin if self.margin is not None else 0.1)
            self._armed = not soon and gap > clear * abs(self.bound)
            return None
        if gap <= 0 or not (near or soon):
            return None
        self._armed = False
        forecast = step + math.ceil(lead) if lead is not None and gap > 0 else None
        detail = f"{'within ' + format(self.margin, '.0%') + ' of' if near else 'approaching'} the bound {self.bound:.6g}"
        return self._warn(step, x, forecast, detail)


@dataclass
class Crossing(Rule):
    """x (the observable times ``scale``) below ``level`` (above it with ``below=False``), at most one
    warning per ``refractory`` steps; with ``hysteresis`` only on entering that state (a value that
    stays across the level warns once, not once a refractory period). ``forecast=True``: x is itself
    a number of steps ahead (the shock forecast), and the warning forecasts step + x."""

    level: float = 0.0
    below: bool = True
    refractory: int = 50
    forecast: bool = False
    hysteresis: bool = False
    _last: float = field(init=False, repr=False)
    _inside: bool = field(init=False, repr=False)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.refractory < 0:
            raise ValueError(f"refractory must be >= 0, got {self.refractory}")
        self._last, self._inside = -math.inf, False

    def observe(self, step: int, values: Mapping[str, float]) -> EarlyWarning | None:
        x = self.read(values)
        if x is None:
            return None
        crossed = x < self.level if self.below else x > self.level
        entering = crossed and not self._inside
        self._inside = crossed
        if not crossed or step - self._last <= self.refractory or (self.hysteresis and not entering):
            return None
        self._last = step
        forecast = step + math.ceil(x) if self.forecast else None
        return self._warn(step, x, forecast, f"{'below' if self.below else 'above'} {self.level:.6g}")


@dataclass
class _Detector(Rule):
    """A detector on the loss after the fact: at most one warning per ``refractory`` steps."""

    observable: str = "loss"
    refractory: int = 10
    _last: float = field(init=False, repr=False)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.refractory < 0:
            raise ValueError(f"refractory must be >= 0, got {self.refractory}")
        self._last = -math.inf

    def observe(self, step: int, values: Mapping[str, float]) -> EarlyWarning | None:
        x = self.read(values)
        if x is None:
            return None
        detail = self._spike(x)
        if detail is None or step - self._last <= self.refractory:
            return None
        self._last = step
        return self._warn(step, x, None, detail)

    def _spike(self, x: float) -> str | None:
        raise NotImplementedError


@dataclass
class SigmaSpike(_Detector):
    """OLMo-core's rule: x > mean + ``sigmas`` std over the previous ``window`` values (at least
    ``min_samples`` of them); every value enters the window. The mean and variance come from running
    sums over the window of x - K, K the window's mean when they were last summed afresh (every
    ``window`` steps): E[x^2] - mean^2 of the values themselves cancels catastrophically (a constant
    loss ln 2 read a spread of 1e-8 and warned)."""

    name: str = "spike-sigma"
    window: int = 128
    sigmas: float = 6.0
    min_samples: int = 10
    _seen: deque = field(init=False, repr=False)
    _sums: list = field(init=False, repr=False)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.window < 2 or self.sigmas <= 0 or not 2 <= self.min_samples <= self.window:
            raise ValueError(f"need window >= 2, sigmas > 0, 2 <= min_samples <= window; got {self.window}, "
                             f"{self.sigmas}, {self.min_samples}")
        self._seen = deque(maxlen=self.window)
        # sum (x - K), sum (x - K)^2 over the window; values added since summed afresh; K (None: the first value)
        self._sums = [0.0, 0.0, 0, None]

    def _spike(self, x: float) -> str | None:
        seen, sums = self._seen, self._sums
        if sums[3] is None:
            sums[3] = x
        centre = sums[3]
        count = len(seen)
        found = None
        if count >= self.min_samples:
            shift = sums[0] / count
            mean = centre + shift
            std = math.sqrt(max(sums[1] / count - shift * shift, 0.0))
            if x > mean + self.sigmas * std:
                above = f"{(x - mean) / std:.1f} sigma above" if std > 0 else "above a constant value over"
                found = f"{above} the last {count} steps' mean {mean:.4g}"
        if count == self.window:  # the oldest value leaves
            old = seen[0] - centre
            sums[0] -= old
            sums[1] -= old * old
        seen.append(x)
        sums[0] += x - centre
        sums[1] += (x - centre) ** 2
        sums[2] += 1
        if sums[2] >= self.window:
            centre = math.fsum(seen) / len(seen)
            sums[:] = [math.fsum(v - centre for v in seen), math.fsum((v - centre) ** 2 for v in seen), 0, centre]
        return found


@dataclass
class RatioSpike(_Detector):
    """LLM Foundry's KillLossSpike rule: x > ``multiplier`` times the mean of the last ``window``
    values that were not outliers (the window full), more than ``patience`` outliers in a row (its
    callback counts them and fires when the count exceeds patience: the 5th at its default 4)."""

    name: str = "spike-ratio"
    window: int = 100
    multiplier: float = 2.0
    patience: int = 4
    _seen: deque = field(init=False, repr=False)
    _run: int = field(init=False, repr=False)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.window < 1 or self.multiplier <= 1 or self.patience < 1:
            raise ValueError(f"need window >= 1, multiplier > 1, patience >= 1; got {self.window}, "
                             f"{self.multiplier}, {self.patience}")
        self._seen, self._run = deque(maxlen=self.window), 0

    def _spike(self, x: float) -> str | None:
        if len(self._seen) < self.window:
            self._seen.append(x)
            return None
        mean = sum(self._seen) / len(self._seen)
        if x <= self.multiplier * mean:
            self._seen.append(x)
            self._run = 0
            return None
        self._run += 1
        if self._run <= self.patience:
            return None
        self._run = 0
        return f"{self.patience + 1} steps in a row above {self.multiplier:g} x the last {self.window} steps' mean {mean:.4g}"


@dataclass
class RelativeSpike(_Detector):
    """Lightning's SpikeDetection rule: x - mean > ``rtol`` |mean| over the previous ``window``
    values (the window full); every value enters the window."""

    name: str = "spike-relative"
    window: int = 10
    rtol: float = 2.0
    _seen: deque = field(init=False, repr=False)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.window < 1 or self.rtol <= 0:
            raise ValueError(f"need window >= 1 and rtol > 0; got {self.window}, {self.rtol}")
        self._seen = deque(maxlen=self.window)

    def _spike(self, x: float) -> str | None:
        full = len(self._seen) == self.window
        mean = sum(self._seen) / len(self._seen) if self._seen else 0.0
        self._seen.append(x)
        if full and x - mean > self.rtol * abs(mean):
            return f"{x / mean if mean else math.inf:.3g} x the last {self.window} steps' mean {mean:.4g}"
        return None


@dataclass
class MaxRatioSpike(_Detector):
    """Megatron-LM's ``--check-for-spiky-loss`` rule: |x| > ``factor`` times the largest |x| seen
    before, once ``samples`` values have been seen."""

    name: str = "spike-max"
    factor: float = 10.0
    samples: int = 100
    _largest: float = field(init=False, repr=False)
    _count: int = field(init=False, repr=False)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.factor <= 1 or self.samples < 1:
            raise ValueError(f"need factor > 1 and samples >= 1; got {self.factor}, {self.samples}")
        self._largest, self._count = 0.0, 0

    def _spike(self, x: float) -> str | None:
        largest = self._largest
        self._count += 1
        self._largest = max(largest, abs(x))
        if self._count > self.samples and abs(x) > self.factor * largest:
            return f"{abs(x) / largest:.3g} x the largest loss before, {largest:.4g}"
        return None


def replay(rule: Rule, series: Series) -> list[EarlyWarning]:
    """A fresh copy of ``rule`` run over stored curves, ``{name: (steps, values)}`` (``RunStore.series()``):
    at each step it sees every value logged there, as the Monitor showed it live."""
    return _replay_steps(rule, by_step(series))


def _replay_steps(rule: Rule, steps: Sequence[tuple[int, Mapping[str, float]]]) -> list[EarlyWarning]:
    """``replay`` over curves already regrouped by step (``by_step``)."""
    rule = rule.fresh()
    found = (rule.observe(step, values) for step, values in steps)
    return [warning for warning in found if warning is not None]


def by_step(series: Series) -> list[tuple[int, dict[str, float]]]:
    """Stored curves ``{name: (steps, values)}`` regrouped as [(step, {name: value logged there})],
    in step order: what the Monitor showed its rules at each step."""
    grouped: dict[int, dict[str, float]] = {}
    for name, (steps, values) in series.items():
        if len(steps) != len(values):
            raise ValueError(f"{name}: steps and values differ in length: {len(steps)} vs {len(values)}")
        for step, value in zip(steps, values):
            grouped.setdefault(int(step), {})[name] = value
    return sorted(grouped.items())


def stability_threshold(optimizer) -> float:
    """The bound on eta lambda_max past which the step is unstable along the top eigenvector of a
    quadratic (where the linear map's characteristic root crosses -1): 2 for gradient descent;
    (2 + 2 mu)/(1 - tau) for torch's SGD with momentum mu and dampening tau (b' = mu b + (1 - tau) g),
    (2 + 2 mu)/((1 + 2 mu)(1 - tau)) with Nesterov; for Adam/AdamW, on the preconditioned sharpness,
    (2 + 2 beta1)/(1 - beta1) (38 at beta1 = 0.9; Cohen et al. 2022, "Adaptive gradient methods at the
    edge of stability"). Other optimizers: 2."""
    import torch

    group = optimizer.param_groups[0]
    if type(optimizer) in (torch.optim.Adam, torch.optim.AdamW):
        beta = group["betas"][0]
        return (2 + 2 * beta) / (1 - beta)
    if not isinstance(optimizer, torch.optim.SGD):
        return 2.0
    momentum, dampening = group.get("momentum") or 0.0, group.get("dampening") or 0.0
    bound = 2 + 2 * momentum
    if group.get("nesterov"):
        bound /= 1 + 2 * momentum
    return bound / (1 - dampening) if momentum else bound


def default_rules(optimizer, *, horizon: int = 50) -> list[Rule]:
    """What the Monitor watches unless given ``warnings=``, each on what its schedule logs (a rule
    whose values are not logged never fires, and costs one dictionary lookup a step):

    - every step, on the loss: ``SigmaSpike`` (a detection, "spike-sigma raw");
    - with ``Schedule.curvature``, raw and quotient: ``Approach("stability")`` on eta lambda_max
      (eta D^1/2 H D^1/2's under Adam) towards ``stability_threshold``, margin 10 %, trend over 4
      samples within ``horizon`` steps; ``Crossing("shock", forecast=True)`` on the shock forecast
      -1/(eta lambda_min) below ``horizon`` steps (under Adam the preconditioned forecast, which
      measured as a permanent alarm: read its false-alarm rate before trusting it);
    - with ``Schedule.update_curvature``: ``Approach("update-stability")`` on eta times the curvature
      along the last update (a lower bound on eta lambda_max for two Hessian-vector products), raw
      and quotient, towards the same bound;
    - with ``Schedule.attention``: ``Approach("attention-logits")`` of the largest attention logit
      (GL-invariant, "quotient") and of |W_Q||W_K| (its raw counterpart) growing exponentially
      (log trend over 4 samples) towards 50 within ``horizon`` steps, and
      ``Approach("attention-entropy")`` of the smallest attention entropy falling to 0.1 nats."""
    import torch

    adam = type(optimizer) in (torch.optim.Adam, torch.optim.AdamW)
    bound = stability_threshold(optimizer)
    rules: list[Rule] = [SigmaSpike()]
    for signal in SIGNALS:
        sharpness = f"curvature/{'preconditioned_' if adam else ''}{signal}_max"
        rules.append(Approach("stability", sharpness, signal, scale="lr", bound=bound, horizon=horizon))
        along = f"update_curvature/{'preconditioned_' if adam else ''}{signal}"
        rules.append(Approach("update-stability", along, signal, scale="lr", bound=bound, horizon=horizon))
        rules.append(Crossing("shock", f"shock_steps/{signal}", signal, level=horizon, refractory=horizon, forecast=True))
    rules.append(Approach("attention-logits", "logit_max/*", "quotient", bound=50.0, margin=None, horizon=horizon, log=True))
    rules.append(Approach("attention-logits", "qk_weight_norm/*", "raw", bound=50.0, margin=None, horizon=horizon, log=True))
    rules.append(Approach("attention-entropy", "entropy_min/*", "quotient", reduce="min", bound=0.1, rising=False,
                          margin=None, horizon=horizon))
    return rules


# ---- scoring rules at a matched false-alarm rate ---------------------------------------------------


@dataclass(frozen=True)
class Run:
    """One recorded run for scoring: its curves (``RunStore.series()``), its ground-truth events (none
    on a control run) and its length in steps."""

    series: Series
    events: tuple[int, ...]
    steps: int

    @functools.cached_property
    def by_step(self) -> list[tuple[int, dict[str, float]]]:
        """``by_step(series)``, regrouped once: every rule and knob scored replays the same steps."""
        return by_step(self.series)


@dataclass(frozen=True)
class RuleScore:
    """A rule at one setting of its knob over spike and control runs. Per event, the lead is
    event - the earliest warning in [event - horizon, event + late] (negative: after the onset, as
    every detector is); ``false_alarms`` counts the warnings on the control runs, and
    ``false_alarm_rate`` is that per 1000 control steps."""

    knob: float
    leads: tuple[float, ...]  # per event on the spike runs; nan: not caught
    false_alarms: int
    false_alarm_rate: float
    warnings_on_spike_runs: int

    @property
    def caught(self) -> int:
        return sum(not math.isnan(t) for t in self.leads)

    @property
    def recall(self) -> float:
        return self.caught / len(self.leads) if self.leads else math.nan

    @property
    def median_lead(self) -> float:
        caught = [t for t in self.leads if not math.isnan(t)]
        return float(np.median(caught)) if caught else math.nan


def event_leads(warnings: Sequence[int], events: Sequence[int], *, horizon: int, late: int = 0) -> list[float]:
    """Per event, event - the earliest warning step in [event - horizon, event + late]; nan if none."""
    if horizon < 1 or late < 0:
        raise ValueError(f"need horizon >= 1 and late >= 0, got {horizon}, {late}")
    leads = []
    for event in events:
        inside = [w for w in warnings if event - horizon <= w <= event + late]
        leads.append(float(event - min(inside)) if inside else math.nan)
    return leads


def score_rule(make, knobs: Sequence[float], spike_runs: Sequence[Run], control_runs: Sequence[Run], *,
               horizon: int, late: int = 0) -> list[RuleScore]:
    """``make(knob)`` -> a Rule, replayed over every run for each knob: its leads on the spike runs'
    events and its false alarms on the control runs (``RuleScore``)."""
    control_steps = sum(run.steps for run in control_runs)
    scores = []
    for knob in knobs:
        rule = make(knob)
        leads, on_spike_runs = [], 0
        for run in spike_runs:
            steps = [w.step for w in _replay_steps(rule, run.by_step)]
            on_spike_runs += len(steps)
            leads += event_leads(steps, run.events, horizon=horizon, late=late)
        false = sum(len(_replay_steps(rule, run.by_step)) for run in control_runs)
        rate = 1000.0 * false / control_steps if control_steps else math.nan
        scores.append(RuleScore(float(knob), tuple(leads), false, rate, on_spike_runs))
    return scores


def at_false_alarm_rate(scores: Sequence[RuleScore], rate: float) -> RuleScore | None:
    """The setting whose control false-alarm rate is at most ``rate`` (per 1000 steps) that catches
    the most events, then with the longest median lead; None if no setting is that quiet."""
    quiet = [s for s in scores if s.false_alarm_rate <= rate]
    if not quiet:
        return None
    return max(quiet, key=lambda s: (s.caught, -math.inf if math.isnan(s.median_lead) else s.median_lead))
