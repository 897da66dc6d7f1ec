"""The quotient SDE of Thm 2.2 against SGD: drift and noise against autograd, the simulator on an
Ornstein-Uhlenbeck process, weak order 1 on a reduced run, files written, bad configs rejected."""

import json
import math

import pytest
import torch
import torch.nn.functional as F

from shockwatch.experiments import quotient_sde as q


@pytest.fixture(scope="module")
def data():
    return q.StepData.make(96, 0.035, 0)


@pytest.mark.parametrize("charges", [None, (0.7, -0.4)])
def test_drift_and_noise_are_the_pushed_forward_gradients(data, charges):
    """Truth: autograd through the raw network (BCE of sum_j a_j relu(u_j.(x,1)) + c) and through
    the coordinates Y = (a|u|, atan2, c): b = DPhi grad L, A = Cov_i(DPhi grad l_i) / B (population
    covariance, minibatches of B drawn with replacement), at the representative with charges Q."""
    y0 = torch.tensor((0.6, -0.35, -0.55, -2.8, 0.1), dtype=torch.float64)
    q_tensor = None if charges is None else torch.tensor(charges, dtype=torch.float64)
    u, a, c = q.balanced_parameters(y0, q_tensor)
    expected_q = torch.zeros(2, dtype=torch.float64) if q_tensor is None else q_tensor
    assert torch.allclose(u.square().sum(-1) - a.square(), expected_q, atol=1e-14)
    assert torch.allclose(q.quotient_coordinates(u, a, c), y0, atol=1e-14)
    theta = torch.cat([u.reshape(-1), a, c.reshape(1)])

    def raw_loss(t, index=slice(None)):
        uu, aa, cc = t[:4].reshape(2, 2), t[4:6], t[6]
        x, y = data.x[index], data.y[index]
        f = (aa * torch.relu(x[:, None] * uu[:, 0] + uu[:, 1])).sum(-1) + cc
        return F.binary_cross_entropy_with_logits(f, y)

    def coords(t):
        return q.quotient_coordinates(t[:4].reshape(2, 2), t[4:6], t[6])

    jac = torch.func.jacrev(coords)(theta)  # (5, 7)
    expected_b = jac @ torch.func.grad(raw_loss)(theta)
    drift, _ = q.quotient_drift(y0, data, q_tensor)
    assert torch.allclose(drift, expected_b, atol=1e-14)
    per_sample = torch.stack([jac @ torch.func.grad(raw_loss)(theta, slice(i, i + 1)) for i in range(96)])
    expected_a = torch.cov(per_sample.T, correction=0) / 4
    _, sigma_rows = q.quotient_drift(y0.expand(96, 5), data, q_tensor, torch.eye(96, dtype=torch.float64), batch=4)
    assert torch.allclose(sigma_rows.T @ sigma_rows, expected_a, atol=1e-15)  # row i is sigma e_i
    # SGD's own gradients
    index = torch.tensor([[3, 50, 50, 90]])
    g_u, g_a, g_c = q._raw_gradients(u[None], a[None], c[None], data.x[index], data.y[index])
    expected = torch.func.grad(lambda t: raw_loss(t, index[0]))(theta)
    assert torch.allclose(torch.cat([g_u.reshape(-1), g_a.reshape(-1), g_c]), expected, atol=1e-15)


def test_balanced_drift_is_the_balanced_gauge_metric(data):
    """Truth: at Q = 0, b_gamma = 2|gamma| dU/dgamma, b_phi = (dU/dphi) / |gamma|, b_c = dU/dc
    (autograd of the quotient loss U)."""
    y0 = torch.tensor((0.9, -0.2, 0.3, -2.0, -0.1), dtype=torch.float64)
    grad_u = torch.func.grad(lambda y: q.quotient_loss(y, data))(y0)
    gamma = y0[:2].abs()
    expected = torch.cat([2 * gamma * grad_u[:2], grad_u[2:4] / gamma, grad_u[4:]])
    assert torch.allclose(q.quotient_drift(y0, data)[0], expected, atol=1e-15)


def test_euler_maruyama_on_an_ornstein_uhlenbeck_process():
    """Truth: dY = -k Y dt + sqrt(eta) s dB has E Y_T = y0 e^{-kT} and Var Y_T = eta s^2 (1 - e^{-2kT}) / (2k);
    Euler-Maruyama's own mean is exactly y0 (1 - k h)^n (linear drift, additive noise), and the
    linear response L of the control variate equals Y - (that mean) path by path."""
    k = torch.tensor([1.5, 0.4], dtype=torch.float64)
    s, eta, horizon, y0 = 0.8, 0.25, 1.0, torch.tensor([1.0, -2.0], dtype=torch.float64)

    def drift_noise(y, dw):
        return k * y, s * dw

    step = 0.05
    reference = q.reference_path(lambda y: k * y, y0, horizon, step / 2)
    generator = torch.Generator().manual_seed(0)
    paths = q.euler_maruyama(drift_noise, y0, eta=eta, horizon=horizon, step=step, runs=40000, noise_dim=2,
                             generator=generator, reference=reference)
    n = round(horizon / step)
    em_fine = y0 * (1 - k * step / 2) ** (2 * n)
    em_coarse = y0 * (1 - k * step) ** n
    mean, se = paths.fine.mean(0), paths.fine.std(0) / math.sqrt(40000)
    assert torch.all((mean - em_fine).abs() < 4 * se)
    assert torch.all((paths.coarse.mean(0) - em_coarse).abs() < 4 * se)
    assert torch.allclose(paths.fine - paths.fine_linear, em_fine.expand(40000, 2), atol=1e-12)
    assert torch.allclose(paths.coarse - paths.coarse_linear, em_coarse.expand(40000, 2), atol=1e-12)
    exact_mean = y0 * torch.exp(-k * horizon)
    assert torch.allclose(2 * em_fine - em_coarse, exact_mean, atol=2e-4)  # Richardson: O(h^2)
    variance = eta * s**2 * (1 - torch.exp(-2 * k * horizon)) / (2 * k)
    # sampling error of a variance ~ sqrt(2/R) relative (1%), EM's variance bias O(h) (~4%)
    assert torch.allclose(paths.fine.var(0), variance, rtol=0.06)
    assert torch.allclose(reference.path[-1], exact_mean, rtol=1e-7)  # RK4 gradient flow
    assert torch.allclose(reference.jacobians[0], torch.diag(k))


@pytest.fixture(scope="module")
def result():
    config = q.Config(etas=(0.4, 0.2, 0.1), sgd_runs=6000, sde_runs=1500, substeps=4,
                      projectability_models=("relu-3.1",))
    return q.run(config)


def test_weak_error_is_first_order_and_resolved(result):
    """Truth: Thm 2.2 + the weak approximation: |E f(SGD) - E f(SDE)| = O(eta), slope 1 in log-log;
    the Monte Carlo standard error is well below the error measured."""
    for test in ("loss", "cos_angle_1"):
        assert 0.7 <= result.slope[test] <= 1.3, (test, result.slope[test])
        for error, se in zip(result.weak_error[test], result.weak_error_se[test]):
            assert abs(error) > 4 * se, (test, error, se)
    assert result.weak_error["loss"][-1] < result.weak_error["loss"][0] / 2.5
    # the noiseless limit: SGD tends to gradient flow
    assert abs(result.sgd_mean["loss"][-1] - result.gradient_flow["loss"]) < abs(result.sgd_mean["loss"][0]
                                                                                  - result.gradient_flow["loss"])


def test_unbalanced_start_needs_the_charges(result):
    """Truth: b depends on the representative through the charges Q (Assumption 2.1 fails on M):
    SGD from an unbalanced representative of Y_0 stays O(1) away from the balanced SDE as eta -> 0,
    and converges at O(eta) to the SDE evaluated at its own charges."""
    gap, charged = result.unbalanced_vs_balanced_sde["loss"], result.unbalanced_vs_charged_sde["loss"]
    assert min(abs(g) for g in gap) > 10 * max(abs(c) for c in charged[1:])
    assert abs(gap[-1]) > 0.8 * abs(gap[0])
    assert abs(charged[-1]) < abs(charged[0]) / 2.5
    # SGD moves the charges by O(eta^2) per step: O(eta) at a fixed time
    drift = [max(abs(v) for v in row) for row in result.charge_drift]
    ratios = [d / eta for d, eta in zip(drift, result.config.etas)]
    assert max(ratios) / min(ratios) < 1.15


def test_projectability_table_and_files(result, tmp_path):
    table = result.projectability["relu-3.1"]
    assert max(table["balanced"]["drift_spread"]) < 1e-12
    assert max(table["unbalanced"]["drift_spread"]) > 0.5
    paths = result.save(tmp_path)
    assert {p.name for p in paths} == {"quotient_sde.json", "quotient_sde.png"}
    saved = json.loads((tmp_path / "quotient_sde.json").read_text())
    assert saved["slope"] == result.slope and saved["config"]["etas"] == [0.4, 0.2, 0.1]


@pytest.mark.parametrize("kwargs, message", [
    ({"etas": (0.1, -0.2)}, "etas must be positive"),
    ({"etas": (0.1,)}, "at least two distinct etas"),
    ({"etas": (0.3, 0.1)}, "does not divide"),
    ({"batch": 0}, "batch must be in"),
    ({"sde_runs": 2}, "sde_runs >= 10"),
    ({"start": (0.5, 0.1)}, "odd length"),
    ({"start": (0.0, 0.1, 0.0)}, "nonzero"),
    ({"projectability_models": ("resnet",)}, "unknown projectability models"),
])
def test_config_validation(kwargs, message):
    with pytest.raises(ValueError, match=message):
        q.Config(**kwargs)
