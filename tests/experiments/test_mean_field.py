"""The mean-field reproduction (Thm 5.4, Assumption 5.3): numbers against derived truths, files written."""

import json
import math

import pytest

from shockwatch.experiments import mean_field

# etas small enough for the unbalanced start's fastest units (angular speed |a|/|u| up to ~13 at
# width 512): at eta = 0.05 they turn by ~0.9 rad in one step, outside the asymptotic regime.
SMALL = mean_field.Config(width=512, samples=48, horizon=0.5, etas=(0.04, 0.02, 0.01, 0.005),
                          strengths=(0.0, 0.1, 0.3), representatives=8, snapshot_particles=50)


@pytest.fixture(scope="module")
def result():
    return mean_field.run(SMALL)


def test_transport_residual_is_first_order_wherever_the_closure_is_exact(result):
    """Truth: Taylor: a forward difference along theta + eta V is off by (eta/2) int D^2(phi o pi)[V, V],
    so slope 1 for the particles' own pushed velocity; the charge drifts O(eta) under gradient
    descent, so the balanced closure (balanced start) and the conserved-charge closure stay O(eta)."""
    for closure in mean_field.CLOSURES:
        assert 0.9 < result.local_slope["balanced"][closure] < 1.1, result.residual["balanced"]
        assert 0.9 < result.slope["balanced"][closure] < 1.2, result.residual["balanced"]
    for closure in ("particles", "conserved charge"):
        assert 0.85 < result.local_slope["unbalanced"][closure] < 1.2, result.residual["unbalanced"]
    assert result.residual["balanced"]["particles"][-1] < 0.05


def test_balanced_closure_of_an_unbalanced_start_does_not_converge(result):
    """Truth: d gamma = (a^2 + |u|^2) G, d s = (a/|u|) P_s H differ from the balanced V-bar by O(1)
    factors when log r ~ N(0, 0.5^2): the residual plateaus (slope ~ 0) at the closure's gap."""
    plateau = result.residual["unbalanced"]["balanced"]
    assert plateau[-1] > 0.2 and result.local_slope["unbalanced"]["balanced"] < 0.3, plateau
    assert result.closure_gap["unbalanced"]["balanced"] > 0.1
    assert result.closure_gap["unbalanced"]["conserved charge"] < 1e-12
    assert max(result.closure_gap["balanced"].values()) < 1e-12


def test_charge_drift_is_first_order(result):
    """Truth: one step changes q_j by eta^2 (V_a^2 - |V_u|^2), so over a fixed time by O(eta)."""
    for start in mean_field.STARTS:
        assert 0.9 < result.charge_drift_slope[start] < 1.1, result.charge_drift[start]


def test_same_pushforward_at_start_different_at_the_end(result):
    """Truth: the unbalanced start is a rebalancing of the balanced one (same nu_0 to round-off); the
    velocities differ by the factors above, so nu_T differs: nu_t is not determined by nu_0."""
    assert result.same_start_gap["t=0"] < 1e-13
    assert result.same_start_gap["t=T"] > 1e-2
    assert result.loss["balanced"][0] == pytest.approx(result.loss["unbalanced"][0], rel=1e-12)


def test_rebalancing_moves_only_the_velocity_and_by_the_analytic_law(result):
    """Truth: pi(a/r, r u) = pi(a, u) (round-off); pushed velocity factors (r^2 + r^-2)/2 and r^-2
    (to 1e-12); spread of cosh(2 sigma xi) and e^{-2 sigma xi} over xi ~ N(0, 1), to sampling error."""
    for state, metrics in result.rebalancing.items():
        for key in ("pushforward_change", "output_change", "integral_change", "formula_error",
                    "balanced_closure_gap"):
            assert max(metrics[key]) < 1e-12, (state, key, metrics[key])
        assert metrics["spread_gamma"][0] == 0.0 and metrics["spread_s"][0] == 0.0
        for part in ("gamma", "s"):
            for measured, law in zip(metrics[f"spread_{part}"][1:], result.predicted[f"spread_{part}"][1:]):
                assert measured == pytest.approx(law, rel=0.25), (state, part)  # seeds 0-2: within 17%
        assert metrics["spread_s"][1] > 0.15 and metrics["weak_spread"][2] > 0


def test_predicted_spread_has_the_small_sigma_limits():
    """Truth: Taylor of the closed forms: spread_gamma ~ 2 sqrt(2) sigma^2, spread_s ~ 2 sigma."""
    law = mean_field._predicted((1e-3,))
    assert law["spread_gamma"][0] == pytest.approx(2 * math.sqrt(2) * 1e-6, rel=1e-3)
    assert law["spread_s"][0] == pytest.approx(2e-3, rel=1e-3)


def test_save_writes_json_and_png(result, tmp_path):
    paths = result.save(tmp_path)
    assert {p.name for p in paths} == {"mean_field.json", "mean_field.png"}
    data = json.loads((tmp_path / "mean_field.json").read_text())
    assert data["slope"] == result.slope and data["config"]["width"] == 512
    assert (tmp_path / "mean_field.png").stat().st_size > 10_000


def test_progress_bar_run_and_sgd():
    """A minimal SGD run with the progress bar: the particles' own closure is still first order."""
    config = mean_field.Config(width=128, samples=16, batch=8, horizon=0.4, etas=(0.02, 0.01), strengths=(0.1,),
                               representatives=2, snapshot_particles=10)
    result = mean_field.run(config, progress=True)
    assert 0.8 < result.slope["balanced"]["particles"] < 1.2


@pytest.mark.parametrize("bad", [{"width": 0}, {"etas": (0.1,)}, {"etas": (0.1, -0.1)}, {"etas": (0.1, 5.0)},
                                 {"horizon": 0.0}, {"batch": 0}, {"batch": 1000}, {"strengths": ()},
                                 {"strengths": (-1.0,)}, {"representatives": 1}, {"init_imbalance": math.nan},
                                 {"bump_width": 0.0}, {"device": "not-a-device"}])
def test_config_rejects_bad_input(bad):
    with pytest.raises(ValueError):
        mean_field.Config(**bad)
