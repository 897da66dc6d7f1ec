"""Event detection and warning scores on curves with known transitions."""

import math

import numpy as np
import pytest

from shockwatch.monitor.warnings import abrupt_changes, midpoint_crossing, score, threshold_warnings


def test_abrupt_changes_finds_known_transitions_and_ignores_noise_and_spikes():
    """Truth: the construction: two sigmoid drops at steps 300 and 700 on a noisy plateau, one spike."""
    rng = np.random.default_rng(0)
    steps = np.arange(1000)
    values = 2.0 - 1.0 / (1 + np.exp(-(steps - 300) / 3.0)) - 0.8 / (1 + np.exp(-(steps - 700) / 3.0))
    values = values + 0.01 * rng.standard_normal(1000)
    values[500] += 1.0  # a single-step spike is not a regime change
    found = abrupt_changes(steps, values, window=10)
    assert len(found) == 2 and abs(found[0] - 300) <= 3 and abs(found[1] - 700) <= 3, found
    assert abrupt_changes(steps, 0.01 * rng.standard_normal(1000), window=10) == []


def test_threshold_warnings_and_scores():
    steps = list(range(100))
    values = [1.0] * 100
    values[20] = values[21] = -1.0
    values[60] = -1.0
    values[30] = math.nan
    warnings = threshold_warnings(steps, values, 0.0, refractory=5)
    assert warnings == [20, 60]
    result = score(warnings, [25, 90], horizon=10)
    assert result.lead_times[0] == 5.0 and math.isnan(result.lead_times[1])
    assert result.precision == 0.5 and result.recall == 0.5
    with pytest.raises(ValueError, match="horizon"):
        score(warnings, [25], horizon=0)
    with pytest.raises(ValueError, match="differ in length"):
        abrupt_changes([1, 2], [1.0])


def test_midpoint_crossing_marks_one_rise_through_setbacks():
    """Truth: the construction: accuracy rising from 0.01 to 0.99 as a sigmoid centred at step 500 (so its
    midpoint is crossed there), with three one-sample collapses to 0.2 on the way up (slingshot-like
    setbacks) and noise; abrupt_changes splits such a rise, the midpoint crossing gives one event."""
    rng = np.random.default_rng(1)
    steps = np.arange(0, 1500, 25)
    values = 0.01 + 0.98 / (1 + np.exp(-(steps - 500) / 60.0)) + 0.01 * rng.standard_normal(len(steps))
    for at in (450, 600, 800):
        values[steps == at] = 0.2
    found = midpoint_crossing(steps, values)
    assert len(found) == 1 and abs(found[0] - 500) <= 25, found
    assert midpoint_crossing(steps, 0.01 + 0.01 * rng.standard_normal(len(steps))) == []  # noise: no rise
    assert midpoint_crossing(steps[:3], values[:3]) == []  # too short to tell
