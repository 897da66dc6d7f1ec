"""The control experiment's wiring, on the tiny spike bed.

Truth: determinism (a run whose controller never acts is the uncontrolled run, bit for bit, and a
cut changes nothing before the step after its warning); the peak of a hand-made loss curve. The
rate a cut gives is checked against its formula in tests/control."""

import itertools
import math

import pytest
import torch

from shockwatch.experiments import control


def test_peak_is_the_smoothed_loss_over_its_best_before():
    losses = [1.0] * 10 + [0.5] * 10 + [2.0] * 10
    # 10-step means: 1.0 ... 0.5 (best), then up to 2.0: the peak is 2.0 / 0.5
    assert control._peak(losses, 10) == pytest.approx(4.0)
    assert math.isnan(control._peak([1.0] * 5, 10))


@pytest.mark.slow
def test_an_idle_controller_is_the_plain_run_and_a_cut_scales_the_rate(tmp_path):
    torch.set_num_threads(1)
    config = control.Config(arms=("none", "skip-olmo", "quotient-cut"), seeds=(10,), scale="tiny", steps=60,
                            quotient_bound=1.0, cut_factor=0.5, cut_hold=5, cut_rewarm=5)
    runs = {arm: control._run_arm(arm, 10, config, tmp_path / arm) for arm in config.arms}
    assert runs["skip-olmo"].interventions == [] and runs["skip-olmo"].loss == runs["none"].loss
    warned = runs["quotient-cut"].interventions
    assert len(warned) == 1  # the bound of 1 is passed at once; the budget and cooldown allow one in 60 steps
    first = warned[0]
    assert runs["quotient-cut"].loss[:first + 1] == runs["none"].loss[:first + 1]  # the cut starts after the warning
    assert runs["quotient-cut"].loss[first + 1] != runs["none"].loss[first + 1]
    rows = control._rows(list(runs.values()), config)
    assert [row.arm for row in rows] == list(config.arms) and [row.mean_interventions for row in rows] == [0, 0, 1]


def test_bad_configs_are_refused():
    with pytest.raises(ValueError, match="arms must be"):
        control.Config(arms=("nothing",))
    with pytest.raises(ValueError, match="scale must be"):
        control.Config(scale="huge")


@pytest.mark.slow
def test_a_cut_on_the_stability_crossing_holds_off_the_catapult_while_it_lasts(tmp_path):
    """Catapult (GD at eta = 3 / lambda0): the stability crossing fires at step 1 (eta lambda_max = 3 > 2)
    and the cut to 0.3 x eta puts eta lambda below 2, where gradient descent on the quadratic part
    only descends: no spike while the cut holds (10 steps), where the uncontrolled run's loss grows
    more than 5-fold within its first 10 steps."""
    torch.set_num_threads(1)
    config = control.Config(arms=(), classic=("catapult",), curvature_every=(("catapult", 10),))
    none = control._classic_arm("catapult", "none", 0, config, tmp_path / "none")
    cut = control._classic_arm("catapult", "quotient-cut", 0, config, tmp_path / "cut")
    assert cut.interventions[0] == 1
    held = cut.loss[1:11]  # the steps taken under the cut (60 steps: hold 10)
    assert all(b <= a for a, b in itertools.pairwise(held))
    assert max(none.loss[:10]) > 5 * none.loss[0]


def test_a_result_with_classic_beds_only_is_plotted_and_saved(tmp_path):
    """The figure is drawn for any mix of spike-bed and classic runs (a classic-only run lost its
    results once to an empty figure)."""
    runs = [control.ClassicRun("catapult", arm, 0, 2.0, 5, 0.1, 0.9, [], 1.0, [1.0, 2.0, 0.5]) for arm in ("none", "raw-cut")]
    result = control.Result(control.Config(arms=()), [], [], "", 1.0, runs)
    paths = result.save(tmp_path)
    assert [p.name for p in paths] == ["control.json", "control.png"] and all(p.stat().st_size > 0 for p in paths)
