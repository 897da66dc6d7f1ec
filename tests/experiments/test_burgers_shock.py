"""The Figure 3 reproduction: numbers against analytic truths, files written."""

import json
import math

import numpy as np
import pytest

from shockwatch.experiments import burgers_shock


@pytest.fixture(scope="module")
def small_result():
    config = burgers_shock.Config(taus=(0.0, 0.5, 0.9, 1.0, 1.1, 1.5, 2.0), cells=800)
    return burgers_shock.run(config)


def test_shock_time_is_one(small_result):
    """Truth: inf U0'' = -1 at s = 0 for U0 = e^{-s^2/2}, so tau* = 1 (Thm 4.3)."""
    assert abs(small_result.tau_star - 1.0) < 1e-6


def test_inviscid_shock_state_after_tau_star(small_result):
    """Truth: feet solve e^{-y^2/2} = 1/tau, so v_L = -v_R = sqrt(2 log tau)/tau, position 0, speed 0."""
    assert [row["tau"] for row in small_result.inviscid_shock] == [1.1, 1.5, 2.0]
    for row in small_result.inviscid_shock:
        exact = math.sqrt(2 * math.log(row["tau"])) / row["tau"]
        assert abs(row["left"] - exact) < 1e-5 and abs(row["right"] + exact) < 1e-5
        assert abs(row["position"]) < 1e-8 and abs(row["speed"]) < 1e-8


def test_viscosity_smooths_the_layer(small_result):
    """Truth: the maximum principle for v_s under more diffusion; at tau = 0 every nu starts from
    max|U0''| = 1; past tau* the steepness orders as nu decreases; the layer width shrinks with nu."""
    slopes = {float(k): np.array(v) for k, v in small_result.max_slope.items()}
    assert all(abs(v[0] - 1.0) < 1e-3 for v in slopes.values())
    i = small_result.config.taus.index(1.5)
    assert slopes[0.02][i] > slopes[0.1][i] > slopes[0.4][i]
    widths = [small_result.viscous_layer[k]["width"] for k in small_result.viscous_layer]
    assert widths[0] < widths[1] < widths[2]
    # v_L - v_R ~ constant, width ~ nu: the ratio of widths follows the ratio of viscosities to 30%
    assert 0.7 < (widths[1] / widths[0]) / 5.0 < 1.3


def test_simulation_agrees_with_exact_hopf_cole(small_result):
    """Truth: the exact Hopf-Cole cell averages; at 800 cells the WENO5 gap is below 1e-3 for
    nu = 0.02 (its layer is only ~4 cells wide) and 2e-6 for nu >= 0.1 (1e-6 at 1600: test_burgers)."""
    gaps = small_result.simulation_l1
    assert max(gaps["0.02"]) < 1e-3
    assert max(gaps["0.1"]) < 2e-6 and max(gaps["0.4"]) < 2e-6


def test_save_writes_json_and_png(small_result, tmp_path):
    paths = small_result.save(tmp_path)
    assert {p.name for p in paths} == {"burgers_shock.json", "burgers_shock.png"}
    data = json.loads((tmp_path / "burgers_shock.json").read_text())
    assert data["tau_star"] == small_result.tau_star
    assert (tmp_path / "burgers_shock.png").stat().st_size > 10_000


def test_config_rejects_bad_values():
    with pytest.raises(ValueError, match="nus must be positive"):
        burgers_shock.Config(nus=(0.1, -1.0))
    with pytest.raises(ValueError, match="taus must be >= 0 and increasing"):
        burgers_shock.Config(taus=(1.0, 0.5))
