"""Event detection and warning scores on curves with known transitions."""

import math

import numpy as np
import torch
import pytest

from shockwatch.monitor.warnings import (
    Approach,
    Crossing,
    EarlyWarning,
    MaxRatioSpike,
    RatioSpike,
    RelativeSpike,
    SigmaSpike,
    abrupt_changes,
    default_rules,
    midpoint_crossing,
    replay,
    score,
    stability_threshold,
    threshold_warnings,
    warnings_in,
)


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
    assert result.precision == 0.5 and result.recall == 0.5 and result.false_alarms == 1  # the warning at 60
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


# ---- live rules: each against a curve whose crossing step is known in closed form ----



def _run(rule, values, name="x", start=0):
    return replay(rule, {name: (list(range(start, start + len(values))), list(values))})


def test_approach_forecasts_a_linear_rise_at_its_crossing_step():
    """Truth: x_t = t / 4 reaches the bound 16 at t = 64 exactly; the trend trigger (horizon 20) holds
    from t = 44, where the lead (16 - t/4) / (1/4) = 64 - t first is <= 20; one warning only, though x
    keeps rising to the bound and then sits on it (the edge of stability)."""
    values = [t / 4 for t in range(64)] + [16.0 + 0.2 * (-1) ** t for t in range(100)]
    found = _run(Approach("stability", "x", bound=16.0, margin=None, horizon=20), values)
    assert [(w.step, w.forecast, w.lead) for w in found] == [(44, 64, 20)]
    assert found[0].message == "stability raw: x = 11; approaching the bound 16; forecast step 64"
    # the margin trigger alone: x within 10 % of 16, i.e. x >= 14.4, first at t = 58 (forecast from the line)
    found = _run(Approach("stability", "x", bound=16.0, margin=0.1, horizon=None), values)
    assert [(w.step, w.forecast) for w in found] == [(58, 64)]


def test_approach_in_log_space_forecasts_exponential_growth():
    """Truth: x_t = e^{t/10} reaches e^5 at t = 50; a log-linear fit is exact, so with horizon 10 the
    rule fires at t = 40 with forecast 50; the same rule falling (rising=False) towards e^-5 likewise."""
    up = [math.exp(t / 10) for t in range(60)]
    found = _run(Approach("attention-logits", "x", "quotient", bound=math.exp(5), margin=None, horizon=10, log=True), up)
    assert [(w.step, w.forecast, w.signal) for w in found] == [(40, 50, "quotient")]
    down = [math.exp(-t / 10) for t in range(60)]
    found = _run(Approach("entropy", "x", bound=math.exp(-5), rising=False, margin=None, horizon=10, log=True), down)
    assert [(w.step, w.forecast) for w in found] == [(40, 50)]


def test_approach_never_fires_on_the_crossing_and_rearms_after_moving_away():
    """A jump straight past the bound is no forecast: no warning. A second approach after the value
    has gone back well below the bound gives a second warning; NaN samples are skipped."""
    jump = [0.0] * 10 + [5.0] * 10
    assert _run(Approach("a", "x", bound=2.0, margin=0.1, horizon=5), jump) == []
    twice = [1.85] * 5 + [1.0] * 5 + [math.nan] + [1.9] * 5
    found = _run(Approach("a", "x", bound=2.0, margin=0.1), twice)
    assert [w.step for w in found] == [0, 11]


def test_crossing_forecast_and_scale():
    """Crossing with forecast=True adds the value (a number of steps) to the step; scale multiplies
    by another logged value (lr * sharpness against the bound 2)."""
    rule = Crossing("shock", "shock_steps/raw", level=10, refractory=5, forecast=True)
    found = replay(rule, {"shock_steps/raw": ([0, 1, 2, 8], [50.0, 7.2, 3.0, 4.0])})
    assert [(w.step, w.forecast) for w in found] == [(1, 9), (8, 12)]
    # hysteresis: a forecast that stays inside the horizon warns once, until it leaves and comes back
    rule = Crossing("shock", "s", level=10, refractory=0, forecast=True, hysteresis=True)
    found = replay(rule, {"s": ([0, 1, 2, 3, 4, 5], [5.0, 4.0, 3.0, 20.0, 2.0, 1.0])})
    assert [(w.step, w.forecast) for w in found] == [(0, 5), (4, 6)]
    rule = Crossing("stability", "curvature/raw_max", level=2.0, below=False, scale="lr", refractory=0)
    found = replay(rule, {"curvature/raw_max": ([0, 1], [30.0, 30.0]), "lr": ([0, 1], [0.05, 0.1])})
    assert [(w.step, w.observable, w.value) for w in found] == [(1, "lr*curvature/raw_max", 3.0)]


def test_the_sigma_rule_on_constant_and_offset_losses():
    """A constant float64 loss (ln 2) read a spread of 1e-8 from E[x^2] - mean^2 and warned at steps 26
    and 58; noise of 1e-4 on 1e4 gave 959 alarms in 20000 steps (a 6-sigma excursion of a Gaussian has
    probability 1e-9). Truth: the rule's own definition, mean + 6 std of the window."""
    assert _run(SigmaSpike(), [math.log(2)] * 300, "loss") == []
    noise = (1e4 + 1e-4 * torch.randn(20000, dtype=torch.float64, generator=torch.Generator().manual_seed(0))).tolist()
    assert _run(SigmaSpike(), noise, "loss") == []
    jump = [math.log(2)] * 50 + [math.log(2) + 1e-3]
    (found,) = _run(SigmaSpike(), jump, "loss")  # above a constant: any rise is beyond 6 std (OLMo-core's rule)
    assert found.step == 50 and "constant" in found.message


def test_production_spike_detectors_on_hand_made_losses():
    """Truth: each detector's stated rule worked by hand on the curve."""
    base = [1.0 + 0.01 * (-1) ** t for t in range(200)]  # mean 1, std 0.01
    sigma = base[:150] + [1.05] + base[151:170] + [1.2] + base[171:]  # 5 and 20 sigma
    assert [w.step for w in _run(SigmaSpike(), sigma, "loss")] == [170]
    # 3 in a row, then 4, then 5: LLM Foundry fires when more than its patience 4 are (the 5th)
    ratio = [1.0] * 100 + [2.5] * 3 + [1.0] + [2.5] * 4 + [1.0] + [2.5] * 5 + [1.0] * 5
    assert [w.step for w in _run(RatioSpike(), ratio, "loss")] == [113]
    relative = [1.0] * 10 + [2.99] + [1.0] * 10 + [3.2]  # (x - mean) / mean 1.99 then 2.2 (mean 1.0)
    assert [w.step for w in _run(RelativeSpike(), relative, "loss")] == [21]
    largest = [0.5] * 99 + [1.0] + [9.9, 99.5]  # 100 samples seen, largest 1.0; then 9.9 the largest
    assert [w.step for w in _run(MaxRatioSpike(), largest, "loss")] == [101]


def test_warning_messages_round_trip_and_bad_rules_are_refused():
    warning = EarlyWarning("stability", "quotient", 7, "lr*curvature/quotient_max", 1.83, 19, "within 10% of the bound 2")
    assert warning.message == "stability quotient: lr*curvature/quotient_max = 1.83; within 10% of the bound 2; forecast step 19"
    assert EarlyWarning.from_event(7, warning.message) == warning
    # a hand-written "warning" event is not one of ours: left out, not an error
    assert warnings_in([(3, "warning", "look here"), (7, "warning", warning.message), (8, "nonfinite", "x")]) == [warning]
    with pytest.raises(ValueError, match="signal must be one of"):
        Approach("a", "x", "quotiënt")
    with pytest.raises(ValueError, match="needs a margin, a horizon or both"):
        Approach("a", "x", margin=None)
    with pytest.raises(ValueError, match="one word"):
        Crossing("two words", "x")


def test_default_rules_follow_the_optimizer():
    """The stability bound: 2 for SGD, Adam's (2 + 2 beta1) / (1 - beta1) on the preconditioned
    sharpness; a rule per signal."""
    import torch

    p = [torch.nn.Parameter(torch.zeros(2))]
    adam = default_rules(torch.optim.AdamW(p, betas=(0.8, 0.99)))
    stability = [r for r in adam if r.name == "stability"]
    assert {r.signal for r in stability} == {"raw", "quotient"}
    assert all(r.bound == pytest.approx(18.0) and r.observable.startswith("curvature/preconditioned_") for r in stability)
    assert stability_threshold(torch.optim.SGD(p, lr=0.1)) == 2.0


def test_scoring_at_a_matched_false_alarm_rate():
    """Truth: worked by hand. A spike run whose signal rises linearly from step 0 and an event at 50;
    a control run with the same signal flat at 0.5. A Crossing above the knob fires on the spike run
    at the first step where t / 100 > knob, and on the control run only when knob < 0.5."""
    from shockwatch.monitor.warnings import Run, at_false_alarm_rate, event_leads, score_rule

    assert event_leads([10, 45, 52], [50, 90], horizon=20, late=5) == [5.0, math.nan]
    spike = Run({"x": (list(range(100)), [t / 100 for t in range(100)])}, (50,), 100)
    control = Run({"x": (list(range(100)), [0.5] * 100)}, (), 100)
    scores = score_rule(lambda knob: Crossing("level", "x", level=knob, below=False, refractory=1000),
                        [0.2, 0.3, 0.45, 0.6], [spike], [control], horizon=25)
    # knob 0.2: first warning at 21 (lead 29 > horizon: not caught); 0.3 -> 31 (lead 19); 0.45 -> 46 (4);
    # 0.6 -> 61 (after the event, not caught); the control run fires once (step 0) for every knob < 0.5
    assert [s.leads for s in scores] == [(math.nan,), (19.0,), (4.0,), (math.nan,)]
    assert [s.false_alarm_rate for s in scores] == [10.0, 10.0, 10.0, 0.0]
    assert at_false_alarm_rate(scores, 10.0).knob == 0.3
    assert at_false_alarm_rate(scores, 1.0).knob == 0.6 and at_false_alarm_rate(scores, 1.0).recall == 0.0
    assert at_false_alarm_rate([s for s in scores if s.knob < 0.5], 1.0) is None
