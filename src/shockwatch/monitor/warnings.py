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
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

__all__ = ["Score", "abrupt_changes", "midpoint_crossing", "score", "threshold_warnings"]


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
    ``refractory`` steps; NaN values never fire."""
    if refractory < 0:
        raise ValueError(f"refractory must be >= 0, got {refractory}")
    warnings, last = [], -math.inf
    for step, value in zip(steps, values):
        if not math.isfinite(value):
            continue
        crossed = value < level if below else value > level
        if crossed and step - last > refractory:
            warnings.append(int(step))
            last = step
    return warnings


@dataclass(frozen=True)
class Score:
    lead_times: list[float]  # per event: steps from the latest preceding warning (nan: none in horizon)
    precision: float
    recall: float


def score(warnings: Sequence[int], events: Sequence[int], *, horizon: int) -> Score:
    """Lead times, precision and recall of ``warnings`` against ``events`` within ``horizon`` steps."""
    if horizon < 1:
        raise ValueError(f"horizon must be >= 1, got {horizon}")
    lead = []
    for event in events:
        before = [w for w in warnings if 0 <= event - w <= horizon]
        lead.append(float(event - max(before)) if before else math.nan)
    useful = [w for w in warnings if any(0 <= e - w <= horizon for e in events)]
    precision = len(useful) / len(warnings) if warnings else math.nan
    recall = sum(not math.isnan(t) for t in lead) / len(events) if events else math.nan
    return Score(lead, precision, recall)
