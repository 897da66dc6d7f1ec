"""Mean-field particles on the rescaling quotient: pushforward, exact velocities, closures, transport order."""

import math

import numpy as np
import pytest
import torch
from torch import nn

import shockwatch as sw
from shockwatch.meanfield import (
    balance,
    charge,
    default_test_functions,
    integrals,
    lift,
    output,
    particle_velocity,
    pushed_velocity,
    pushforward,
    quotient_velocity,
    rebalance,
    transport_residual,
    velocity_factors,
    weak_velocity,
)
from shockwatch.quotient import relu_unit_coordinates

F64 = torch.float64


def particles(m=300, dim=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(m, generator=g, dtype=F64), torch.randn(m, dim, generator=g, dtype=F64)


def data(n=40, d=2, seed=1):
    g = torch.Generator().manual_seed(seed)
    x = 2 * torch.rand(n, d, generator=g, dtype=F64) - 1
    return lift(x), torch.sin(3 * x[:, 0]) + x[:, -1] ** 2


def log_uniform(m, spread, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.exp(spread * (2 * torch.rand(m, generator=g, dtype=F64) - 1))


def test_pushforward_is_invariant_under_rescaling():
    """Truth: the definition: (a/r) |r u| = a |u| and r u / |r u| = u / |u| for r in [e^-6, e^6]."""
    a, u = particles()
    gamma, s = pushforward(a, u)
    gamma_r, s_r = pushforward(*rebalance(a, u, log_uniform(len(a), 6.0, seed=2)))
    assert float(((gamma_r - gamma) / gamma).abs().max()) < 1e-12
    assert float((s_r - s).abs().max()) < 1e-12
    assert float((s.norm(dim=1) - 1).abs().max()) < 1e-15


def test_pushforward_agrees_with_the_projects_relu_unit_chart():
    """Truth: ``quotient.relu_unit_coordinates`` on the same network built as an nn.Module, its
    rescale units found by ``find_symmetries`` (incoming = weight row and bias, outgoing = a_j)."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(2, 6), nn.ReLU(), nn.Linear(6, 1, bias=False)).double()
    syms = sw.find_symmetries(net, torch.randn(8, 2, dtype=F64), logits=False)
    params = {k: v.detach() for k, v in net.named_parameters()}
    a = params["2.weight"][0]
    u = torch.cat([params["0.weight"], params["0.bias"].unsqueeze(1)], dim=1)
    gamma, s = pushforward(a, u)
    rescales = syms.of_kind("rescale")
    assert len(rescales) == 6
    for sym in rescales:
        j = sym.incoming[0].start
        g_j, s_j = relu_unit_coordinates(sym, params)
        assert abs(float(g_j - gamma[j])) < 1e-14 and float((s_j - s[j]).abs().max()) < 1e-14
    x = torch.randn(10, 2, dtype=F64)
    assert float((output(a, u, lift(x)) * len(a) - net(x).detach()[:, 0]).abs().max()) < 1e-13


def test_pushed_velocity_is_the_exact_derivative_of_the_pushforward():
    """Truth: torch.func.jvp of ``pushforward`` (to round-off) and central differences along the
    velocity, whose error is O(eps^2): halving eps divides it by 4."""
    a, u = particles()
    da, du = particles(seed=5)
    dgamma, ds = pushed_velocity(a, u, da, du)
    _, (jg, js) = torch.func.jvp(lambda a_, u_: pushforward(a_, u_), (a, u), (da, du))
    assert float((dgamma - jg).abs().max()) < 1e-12 and float((ds - js).abs().max()) < 1e-12
    assert float((ds * pushforward(a, u)[1]).sum(1).abs().max()) < 1e-13  # tangent to the sphere

    def central_error(eps):
        gp, sp = pushforward(a + eps * da, u + eps * du)
        gm, sm = pushforward(a - eps * da, u - eps * du)
        return max(float(((gp - gm) / (2 * eps) - dgamma).abs().max()), float(((sp - sm) / (2 * eps) - ds).abs().max()))

    errors = [central_error(eps) for eps in (2e-4, 1e-4, 5e-5)]
    assert errors[0] < 1e-4
    ratios = [errors[i] / errors[i + 1] for i in range(2)]
    assert all(3.5 < r < 4.5 for r in ratios), (errors, ratios)


def test_particle_velocity_is_minus_m_times_the_gradient():
    """Truth: autograd of L = (1/2n) sum (f - y)^2 with f = (1/m) sum a relu(u . x~)."""
    a, u = particles(dim=3)
    x_tilde, y = data(d=2)
    a_, u_ = a.clone().requires_grad_(), u.clone().requires_grad_()
    loss = 0.5 * (torch.relu(x_tilde @ u_.T) @ a_ / len(a) - y).square().mean()
    ga, gu = torch.autograd.grad(loss, (a_, u_))
    va, vu = particle_velocity(a, u, x_tilde, y)
    assert float((va + len(a) * ga).abs().max()) < 1e-13 and float((vu + len(a) * gu).abs().max()) < 1e-13


def test_pushed_velocity_under_rebalancing_follows_the_analytic_factors():
    """Truth: hand derivation: d gamma = (a^2 + |u|^2) G(s), d s = (a/|u|) P_s H(s) with G, H fixed by
    nu; so (a/r, r u) from a balanced unit moves by ((r^2 + r^-2)/2, r^-2) times the balanced velocity."""
    a, u = balance(*particles())
    x_tilde, y = data(d=2)
    base_g, base_s = pushed_velocity(a, u, *particle_velocity(a, u, x_tilde, y))
    r = log_uniform(len(a), 1.5, seed=3)
    ar, ur = rebalance(a, u, r)
    g, s = pushed_velocity(ar, ur, *particle_velocity(ar, ur, x_tilde, y))
    c_gamma, c_s = (r.square() + r.pow(-2)) / 2, r.pow(-2)
    assert float((g - c_gamma * base_g).abs().max() / base_g.abs().max()) < 1e-12
    assert float((s - c_s.unsqueeze(1) * base_s).abs().max() / base_s.abs().max()) < 1e-12
    fg, fs = velocity_factors(ar, ur)
    assert float((fg - c_gamma).abs().max()) < 1e-12 and float((fs - c_s).abs().max()) < 1e-12
    # the velocity really differs across representatives: Assumption 5.3 fails off the balanced section
    assert float((g - base_g).abs().max() / base_g.abs().max()) > 0.5


@pytest.mark.parametrize("spread", [0.0, 0.7, 4.0])
def test_quotient_velocity_is_the_pushed_velocity_on_its_charge_section(spread):
    """Truth: D pi V at the particles (``pushed_velocity`` of ``particle_velocity``) against the
    formula from (nu, q) alone; spread 4 gives charges with |q| / gamma up to ~e^8 of both signs,
    where (q + S) / (2|gamma|) would cancel catastrophically for q < 0."""
    a, u = balance(*particles())
    a, u = rebalance(a, u, log_uniform(len(a), spread, seed=4))
    x_tilde, y = data(d=2)
    gamma, s = pushforward(a, u)
    truth = pushed_velocity(a, u, *particle_velocity(a, u, x_tilde, y))
    closed = quotient_velocity(gamma, s, x_tilde, y, charge=charge(a, u))
    for t, c in zip(truth, closed):
        assert float(((c - t).abs() / t.abs().max()).max()) < 1e-11
    balanced = pushed_velocity(*balance(a, u), *particle_velocity(*balance(a, u), x_tilde, y))
    for t, c in zip(balanced, quotient_velocity(gamma, s, x_tilde, y)):  # charge=None: balanced section
        assert float((c - t).abs().max() / t.abs().max()) < 1e-12


def test_gradient_descent_changes_the_charge_by_eta_squared():
    """Truth: q = a^2 - |u|^2 and a V_a = u . V_u (Euler for relu), so one step changes q by exactly
    eta^2 (V_a^2 - |V_u|^2): balancedness is conserved by the flow and drifts O(eta) over a fixed time."""
    a, u = balance(*particles())
    x_tilde, y = data(d=2)
    va, vu = particle_velocity(a, u, x_tilde, y)
    eta = 0.05
    change = charge(a + eta * va, u + eta * vu) - charge(a, u)
    expected = eta**2 * (va.square() - vu.square().sum(1))
    assert float((change - expected).abs().max()) < 1e-13
    assert float(charge(a, u).abs().max()) < 1e-13 and float((a * va - (u * vu).sum(1)).abs().max()) < 1e-13


def test_rebalancing_leaves_the_function_and_every_integral_unchanged():
    """Truth: pi(a/r, r u) = pi(a, u), so f and int phi d nu agree to round-off for r in [e^-3, e^3]."""
    a, u = particles()
    x_tilde, _ = data(d=2)
    phis = default_test_functions(3)
    ar, ur = rebalance(a, u, log_uniform(len(a), 3.0, seed=6))
    assert float((output(ar, ur, x_tilde) - output(a, u, x_tilde)).abs().max()) < 1e-12
    before, after = integrals(phis, *pushforward(a, u)), integrals(phis, *pushforward(ar, ur))
    assert float((after - before).abs().max()) < 1e-12 * float(before.abs().max())
    # f from the quotient alone: int gamma relu(s . x~) d nu
    assert float((output(*pushforward(a, u), x_tilde) - output(a, u, x_tilde)).abs().max()) < 1e-13


def test_test_function_gradients_match_autograd():
    """Truth: autograd of each phi's value with respect to gamma and (ambient) s."""
    gamma, s = pushforward(*particles(m=50))
    for phi in default_test_functions(3, width=0.7):
        g_, s_ = gamma.clone().requires_grad_(), s.clone().requires_grad_()
        dg, ds = torch.autograd.grad(phi.value(g_, s_).sum(), (g_, s_), allow_unused=True, materialize_grads=True)
        mine_g, mine_s = phi.gradient(gamma, s)
        assert float((mine_g - dg).abs().max()) < 1e-13 and float((mine_s - ds).abs().max()) < 1e-13, phi.name


def _second_variation(phis, a, u, va, vu):
    """(1/2) int D^2(phi o pi)[V, V] d mu by nested forward-mode derivatives."""
    def along(eps):
        return integrals(phis, *pushforward(a + eps * va, u + eps * vu))

    def first(eps):
        return torch.func.jvp(along, (eps,), (torch.ones((), dtype=F64),))[1]

    return 0.5 * torch.func.jvp(first, (torch.zeros((), dtype=F64),), (torch.ones((), dtype=F64),))[1]


def test_transport_residual_of_one_step_is_half_the_second_variation():
    """Truth: Taylor: (int phi d nu_{n+1} - int phi d nu_n)/eta - int grad phi . D pi V d nu_n
    = (eta/2) int D^2(phi o pi)[V, V] d mu + O(eta^2), the second variation by forward-mode AD."""
    a, u = balance(*particles(m=200))
    x_tilde, y = data(d=2)
    phis = default_test_functions(3)
    va, vu = particle_velocity(a, u, x_tilde, y)
    leading = _second_variation(phis, a, u, va, vu)
    for eta in (1e-3, 1e-4):
        after = pushforward(a + eta * va, u + eta * vu)
        residual = transport_residual(phis, pushforward(a, u), after, pushed_velocity(a, u, va, vu), eta)
        assert float((residual - eta * leading).abs().max()) < 20 * eta**2 * float(leading.abs().max()), eta


def test_transport_residual_along_gradient_descent_is_first_order_in_eta():
    """Truth: the one-step Taylor bound summed over a fixed time: max over steps and phi of the
    residual is O(eta), so its log-log slope is 1 (accepted: [0.9, 1.1])."""
    a0, u0 = balance(*particles(m=400, dim=2))
    x_tilde, y = data(d=1)
    phis = default_test_functions(2)
    etas = [0.04, 0.02, 0.01, 0.005]
    worst = []
    for eta in etas:
        a, u, w = a0, u0, 0.0
        for _ in range(round(0.4 / eta)):
            va, vu = particle_velocity(a, u, x_tilde, y)
            a_next, u_next = a + eta * va, u + eta * vu
            res = transport_residual(phis, pushforward(a, u), pushforward(a_next, u_next),
                                     pushed_velocity(a, u, va, vu), eta)
            w = max(w, float(res.abs().max()))
            a, u = a_next, u_next
        worst.append(w)
    slope = np.polyfit(np.log(etas), np.log(worst), 1)[0]
    assert 0.9 < slope < 1.1, (worst, slope)


def test_weak_velocity_pairs_the_gradient_with_the_velocity():
    """Truth: for phi = gamma the integrand is d gamma itself; for phi = gamma^2 it is 2 gamma d gamma."""
    a, u = particles()
    gamma, s = pushforward(a, u)
    dg, ds = pushed_velocity(a, u, *particles(seed=9))
    phis = default_test_functions(3)
    w = weak_velocity(phis, gamma, s, dg, ds)
    assert abs(float(w[0] - dg.mean())) < 1e-14 and abs(float(w[1] - (2 * gamma * dg).mean())) < 1e-13


def test_bad_input_raises_a_value_error_naming_the_problem():
    a, u = particles(m=5)
    x_tilde, y = data(n=4, d=2)
    with pytest.raises(ValueError, match="shape"):
        pushforward(a, u[:4])
    with pytest.raises(ValueError, match="m >= 1"):
        pushforward(a[:0], u[:0])
    with pytest.raises(ValueError, match="> 0"):
        rebalance(a, u, torch.tensor([1.0, 2.0, 0.0, 1.0, 1.0], dtype=F64))
    with pytest.raises(ValueError, match="> 0"):
        rebalance(a, u, -1.0)
    with pytest.raises(ValueError, match=r"shape \(5,\)"):
        rebalance(a, u, torch.ones(3, dtype=F64))
    with pytest.raises(ValueError, match="NaN"):
        pushforward(torch.tensor([math.nan, 1, 1, 1, 1], dtype=F64), u)
    zero_u = u.clone()
    zero_u[2] = 0
    with pytest.raises(ValueError, match=r"u\[2\] = 0"):
        pushforward(a, zero_u)
    with pytest.raises(ValueError, match="velocity"):
        pushed_velocity(a, u, a, u[:, :2])
    with pytest.raises(ValueError, match="columns"):
        output(a, u, x_tilde[:, :2])
    with pytest.raises(ValueError, match=r"y of shape"):
        particle_velocity(a, u, x_tilde, y[:3])
    gamma, s = pushforward(a, u)
    with pytest.raises(ValueError, match="unit vector"):
        quotient_velocity(gamma, 2 * s, x_tilde, y)
    with pytest.raises(ValueError, match="singular"):
        quotient_velocity(torch.zeros_like(gamma), s, x_tilde, y, charge=torch.ones_like(gamma))
    with pytest.raises(ValueError, match="eta"):
        transport_residual(default_test_functions(3), (gamma, s), (gamma, s), (gamma, s), 0.0)
    with pytest.raises(ValueError, match="dim >= 1"):
        default_test_functions(0)
    with pytest.raises(ValueError, match="a_j != 0"):
        balance(torch.zeros_like(a), u)
    with pytest.raises(TypeError):
        pushforward([1.0], [[1.0]])
