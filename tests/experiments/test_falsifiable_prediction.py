"""The §6 falsifiable-prediction experiment on the catapult testbed (tiny): the warnings, lead times,
precision and recall recomputed independently from the logged curvature and the detected events."""

import json
import math

import pytest

from shockwatch.experiments import EXPERIMENTS
from shockwatch.experiments import falsifiable_prediction as fp


@pytest.fixture(scope="module")
def result():
    return fp.run(fp.Config(testbeds=("catapult",), scale="tiny", curvature_samples=30))


def test_the_catapult_spike_is_an_event(result):
    """Truth: the published catapult: the loss peaks within the first steps; an event must sit there."""
    outcome = result.outcomes[0]
    steps, loss = outcome.curves["transition_step"], outcome.curves["transition"]
    peak = steps[max(range(len(loss)), key=loss.__getitem__)]
    assert any(abs(event - peak) <= 5 for event in outcome.events), (outcome.events, peak)


def test_warnings_lead_times_and_scores_follow_from_the_curves(result):
    outcome = result.outcomes[0]
    c = outcome.curves
    for signal in fp.SIGNALS:
        lams = c[f"curvature/{signal}_min"]
        # first crossing of the shock rule, by hand: -1/(eta lambda) < horizon  <=>  lambda < -1/(eta horizon)
        crossing = [s for s, lam in zip(c["curvature_step"], lams) if lam < -1.0 / (outcome.lr * outcome.horizon)]
        found = outcome.warnings[f"shock/{signal}"]
        assert (found[:1] == [int(crossing[0])]) if crossing else found == []
        tops = c[f"curvature/{signal}_max"]
        unstable = [s for s, lam in zip(c["curvature_step"], tops) if outcome.lr * lam > 2.0]
        assert outcome.warnings[f"stability/{signal}"][:1] == ([int(unstable[0])] if unstable else [])
        # the approach rule forecasts: never on a sample past the bound, and (with its 10 % margin) no
        # later than the first sample inside the margin that precedes the first crossing
        level = {s: outcome.lr * lam for s, lam in zip(c["curvature_step"], tops)}
        approach = outcome.warnings[f"approach/{signal}"]
        assert all(level[w] < 2.0 for w in approach)
        inside = [s for s in c["curvature_step"] if 1.8 <= level[s] < 2.0 and (not unstable or s < unstable[0])]
        if inside:
            assert approach and approach[0] <= inside[0]
    for key, found in outcome.warnings.items():
        for event, lead in zip(outcome.events, outcome.lead_times[key]):
            before = [w for w in found if 0 <= event - w <= outcome.horizon]
            assert (math.isnan(lead) and not before) or lead == event - max(before)
        useful = [w for w in found if any(0 <= e - w <= outcome.horizon for e in outcome.events)]
        assert math.isnan(outcome.precision[key]) if not found else outcome.precision[key] == len(useful) / len(found)
        caught = sum(not math.isnan(t) for t in outcome.lead_times[key])
        assert outcome.recall[key] == (caught / len(outcome.events) if outcome.events else outcome.recall[key])


def test_result_is_saved_and_registered(result, tmp_path):
    assert EXPERIMENTS["falsifiable-prediction"] is fp
    paths = result.save(tmp_path)
    data = json.loads(paths[0].read_text())
    assert data["outcomes"][0]["name"] == "catapult" and "verdict" in data
    assert paths[1].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(ValueError, match="testbeds must be"):
        fp.Config(testbeds=("nope",))


def test_stability_thresholds_are_where_the_linear_step_map_turns_unstable():
    """Truth: the spectral radius of each optimizer's step map on the quadratic L = lambda x^2 / 2,
    built from torch's own optimizer (SGD, heavy ball, dampening, Nesterov) run on that quadratic: just
    below the bound the iterate shrinks, just above it grows."""
    import torch

    from shockwatch.experiments.falsifiable_prediction import stability_threshold

    for settings in ({}, {"momentum": 0.9}, {"momentum": 0.5, "dampening": 0.3}, {"momentum": 0.9, "nesterov": True}):
        probe = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0, **settings)
        bound = stability_threshold(probe)
        for factor, grows in ((0.98, False), (1.02, True)):
            x = torch.ones(1, dtype=torch.float64, requires_grad=True)
            opt = torch.optim.SGD([x], lr=1.0, **settings)
            for _ in range(2000):
                opt.zero_grad()
                (0.5 * factor * bound * x.square()).sum().backward()  # eta lambda = factor * bound
                opt.step()
            assert (abs(float(x.detach())) > 1) == grows, (settings, factor, float(x.detach()))
    adam = torch.optim.AdamW([torch.zeros(1, requires_grad=True)], betas=(0.9, 0.98))
    assert stability_threshold(adam) == pytest.approx(38.0)


def test_rescoring_a_saved_outcome_gives_the_warnings_raised_live(result):
    """Truth: the monitor's own live warnings on this run; ``rescore`` rebuilds them from the saved
    curves alone (how the README's older runs were re-scored with today's rules)."""
    from dataclasses import asdict

    outcome = result.outcomes[0]
    assert fp.rescore(asdict(outcome), 2.0) == outcome.warnings
