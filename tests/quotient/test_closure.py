"""Assumption 4.1 measured: losses where the closure holds, holds only additively, or fails."""

import pytest
import torch

from shockwatch.quotient import Direction, closure_test


def angle(params):
    return torch.atan2(params["0.bias"][:, 0], params["0.weight"][:, 0, 0])


def gamma_2(params):
    return params["2.weight"][:, 0, 1] * params["0.weight"][:, 1].norm(dim=-1).hypot(params["0.bias"][:, 1])


@pytest.fixture(scope="module")
def chart():
    from test_entropy import step_task  # the §3.1 data and a width-2 ReLU net

    return step_task(2, seed=1, train_steps=300)[2]


def run(chart, loss, taus=(0.02, 0.05)):
    return closure_test(loss, chart, Direction("rotate", 0), Direction("radial", 1), 0.1, taus, points=(256, 41),
                        tube=0.2)


def test_a_loss_of_psi_alone_satisfies_the_closure_exactly(chart):
    """Truth: U = f(angle of s_1) depends on psi only, so (a), (b) vanish and the 2-D field's velocity
    is the 1-D one to round-off; the Burgers solver agrees with the exact Hopf-Cole velocity."""
    report = run(chart, lambda p: torch.cos(angle(p)) + 0.5 * torch.sin(2 * angle(p)))
    assert report.defect_potential < 1e-14 and max(report.defect_entropy) < 1e-14
    assert max(report.closure_gap) < 1e-12
    assert max(report.solver_gap) < 2e-3
    assert report.grad_psi_error == 0.0 and report.kappa == 0.0


def test_an_additive_loss_breaks_a_but_not_the_velocity(chart):
    """Truth: U = f(psi) + g(eta) factorises under the heat semigroup, so v along psi is unchanged
    (closure gap ~ 0) although U depends on eta (defect (a) > 0)."""
    report = run(chart, lambda p: torch.cos(angle(p)) + 0.3 * gamma_2(p) ** 2)
    assert report.defect_potential > 0.01
    assert max(report.closure_gap) < 1e-12


def test_a_coupled_loss_breaks_the_closure_and_the_gap_grows_with_tau(chart):
    """Truth: U = f(psi) (1 + g(eta)) couples the directions; the coarse-grained velocity along psi then
    differs from the 1-D prediction, more the longer the smoothing acts (before the shock: measured
    0.007, 0.017 at tau = 0.01, 0.02, with the solver within 4e-5 of the exact 1-D velocity)."""
    report = run(chart, lambda p: torch.cos(angle(p)) * (1 + 0.5 * gamma_2(p)), taus=(0.005, 0.01, 0.02))
    assert max(report.solver_gap) < 1e-4
    assert report.defect_potential > 0.01
    assert min(report.closure_gap) > 1e-4
    assert report.closure_gap[0] < report.closure_gap[1] < report.closure_gap[2]


def test_bad_input(chart):
    loss = lambda p: torch.cos(angle(p))  # noqa: E731
    with pytest.raises(ValueError, match="across must be a line"):
        closure_test(loss, chart, Direction("rotate", 0), Direction("rotate", 1), 0.1, [0.1])
    with pytest.raises(ValueError, match="odd"):
        closure_test(loss, chart, Direction("rotate", 0), Direction("radial", 1), 0.1, [0.1], points=(64, 40))
    with pytest.raises(ValueError, match="taus must be > 0"):
        closure_test(loss, chart, Direction("rotate", 0), Direction("radial", 1), 0.1, [0.0])
