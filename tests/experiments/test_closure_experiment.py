"""The closure reproduction at a reduced size: both cases measured, numbers consistent, files written."""

import json
import math

import pytest

from shockwatch.experiments import closure


@pytest.fixture(scope="module")
def result():
    return closure.run(closure.Config(relu_epochs=400, mlp_steps=200, points=(96, 21)))


def test_both_collective_coordinates_are_measured(result):
    """Truth: the solver and the exact Hopf-Cole velocity solve the same 1-D problem (small gap); the
    2-D field's velocity differs from it only by the closure error, which must be finite and reported."""
    assert set(result.cases) == {"relu-width-2", "mlp-width-8"}
    for case in result.cases.values():
        assert case["training"]["accuracy"] >= 0.95
        assert max(case["solver_gap"]) < 5e-3
        assert all(math.isfinite(g) and g >= 0 for g in case["closure_gap"])
        assert case["defect_potential"] >= 0 and len(case["defect_entropy"]) == len(result.config.taus)
        assert case["tau_star"] > 0
    variance = result.cases["mlp-width-8"]["training"]["trajectory_variance_explained"]
    assert variance[0] > 0.5 and sum(variance) <= 1.0 + 1e-12


def test_files(result, tmp_path):
    paths = result.save(tmp_path)
    assert {p.name for p in paths} == {"closure.json", "closure.png"}
    data = json.loads((tmp_path / "closure.json").read_text())
    assert data["cases"]["relu-width-2"]["tau_star"] == result.cases["relu-width-2"]["tau_star"]


def test_config_validation():
    with pytest.raises(ValueError, match="points must be"):
        closure.Config(points=(64, 20))
    with pytest.raises(ValueError, match="taus must be"):
        closure.Config(taus=(0.1, 0.05))
