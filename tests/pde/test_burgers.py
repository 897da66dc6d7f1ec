"""solve_burgers against exact solutions: Hopf-Cole, Riemann problems, Lax-Oleinik, conservation."""

import math

import numpy as np
import pytest
import torch
from scipy import optimize

import shockwatch as sw
from shockwatch.pde import WENO5, Godunov

ALL_SCHEMES = ["godunov", "weno5"]


def sine_potential(y):
    """U0 with U0' = sin(2 pi y) + 0.5: periodic velocity, non-periodic potential."""
    return (1 - np.cos(2 * np.pi * y)) / (2 * np.pi) + 0.5 * y


def hopf_lax_truth(potential, x, t):
    """Truth: Lax-Oleinik, u(t,x) = min_y U0(y) + (x-y)^2/(2t), by a dense scan then Brent to 1e-14."""
    ys = np.linspace(x.min() - 3 * t - 1, x.max() + 3 * t + 1, 20001)
    out = np.empty_like(x)
    for i, xi in enumerate(x):
        objective = potential(ys) + (xi - ys) ** 2 / (2 * t)
        j = int(np.argmin(objective))
        res = optimize.minimize_scalar(lambda y, xi=xi: potential(y) + (xi - y) ** 2 / (2 * t),
                                       bracket=(ys[j - 1], ys[j], ys[j + 1]), tol=1e-14)
        out[i] = min(res.fun, objective[j])
    return out


def sine_problem(n, t, scheme, **kw):
    faces = np.linspace(0, 1, n + 1)
    h = 1 / n
    v0 = np.diff(sine_potential(faces)) / h  # exact cell averages of v0
    v = sw.pde.solve_burgers(v0, 0.5 * (faces[1:] + faces[:-1]), t, scheme=scheme, boundary="periodic", **kw)
    exact = np.diff(hopf_lax_truth(sine_potential, faces, t)) / h if t > 0 else v0
    return faces, v, exact


def test_viscous_burgers_matches_exact_hopf_cole_figure3_data():
    """Truth: exact Hopf-Cole cell averages, (u(s_{i+1/2}) - u(s_{i-1/2}))/h with u = -nu log P e^{-U/nu},
    for the paper's Figure 3 data U0 = e^{-s^2/2}, nu = 0.1; acceptance: L1 <= 1e-6 at N = 1600."""
    nu, n = 0.1, 1600
    faces = np.linspace(-8, 8, n + 1)
    h = faces[1] - faces[0]
    U0 = np.exp(-faces**2 / 2)
    times = [0.5, 1.0, 2.0]
    sims = sw.pde.solve_burgers_at(np.diff(U0) / h, 0.5 * (faces[1:] + faces[:-1]), times, nu=nu,
                                   scheme="weno5", boundary="outflow")
    for t, sim in zip(times, sims):
        exact = np.diff(sw.pde.local_entropy(U0, faces, nu, t)) / h
        assert h * np.abs(sim - exact).sum() <= 1e-6, t


def riemann_cell_averages(left, right, faces, t):
    """Truth: the exact entropy solution of the Riemann problem at 0, averaged exactly over cells.
    Shock (left > right): speed (left + right)/2. Rarefaction: v = x/t inside [left t, right t]."""
    def antiderivative(x):
        if left > right:
            xs = 0.5 * (left + right) * t
            return np.where(x < xs, left * x, left * xs + right * (x - xs))
        a, b = left * t, right * t
        inside = np.clip(x, a, b)
        return left * np.minimum(x, a) + (inside**2 - a**2) / (2 * t) + right * np.maximum(x - b, 0) - (left * 0)
    return np.diff(antiderivative(faces)) / np.diff(faces)


@pytest.mark.parametrize("scheme", ALL_SCHEMES)
@pytest.mark.parametrize("left,right", [(1.0, 0.0), (2.0, -1.0), (-1.0, 1.0), (0.5, 1.5)])
def test_riemann_problems(scheme, left, right):
    """Truth: exact Riemann solutions (shock at (u_L + u_R)/2, rarefaction fans); L1 error shrinks
    with h (first order at a shock / O(h log h)-ish in a fan), and the solution stays in [min, max]."""
    t = 0.4
    errors = []
    for n in (200, 400):
        faces = np.linspace(-1.5, 1.5, n + 1)
        centres = 0.5 * (faces[1:] + faces[:-1])
        v0 = np.where(centres < 0, left, right)
        v = sw.pde.solve_burgers(v0, centres, t, scheme=scheme, boundary="outflow")
        exact = riemann_cell_averages(left, right, faces, t)
        errors.append(np.abs(v - exact).sum() * (faces[1] - faces[0]))
        lo, hi = min(left, right), max(left, right)
        assert v.min() >= lo - 1e-3 * (hi - lo) and v.max() <= hi + 1e-3 * (hi - lo)
    assert errors[1] < 0.75 * errors[0], errors
    assert errors[1] < 0.02, errors


@pytest.mark.parametrize("scheme", ALL_SCHEMES)
def test_shock_moves_at_rankine_hugoniot_speed(scheme):
    """Truth: Rankine-Hugoniot. With u_L = 2, u_R = -1 the shock moves at 0.5; its position from the
    conserved mass (exact for a conservative scheme, whatever the smearing) is 0.5 t."""
    n, t = 600, 0.8
    faces = np.linspace(-2, 2, n + 1)
    centres = 0.5 * (faces[1:] + faces[:-1])
    h = faces[1] - faces[0]
    v = sw.pde.solve_burgers(np.where(centres < 0, 2.0, -1.0), centres, t, scheme=scheme, boundary="outflow")
    # Exactly: d/dt sum(v) h = f(2) - f(-1) = 1.5 (boundary fluxes), and sum(v) h = 2 (x_s + 2) - (2 - x_s).
    mass = h * v.sum()
    assert abs(mass - (2.0 + 1.5 * t)) < 1e-12
    position = (mass - 2) / 3
    assert abs(position - sw.pde.rankine_hugoniot_speed(2.0, -1.0) * t) < 1e-9
    # and where the profile itself crosses the mean state: within a cell of the exact position
    crossing = np.interp(0.5, v[::-1], centres[::-1])
    assert abs(crossing - 0.5 * t) < h


@pytest.mark.parametrize("scheme", ALL_SCHEMES)
def test_sine_problem_before_and_after_the_shock(scheme):
    """Truth: Lax-Oleinik cell averages of the entropy solution for v0 = sin 2 pi x + 0.5 on the
    periodic unit interval (shock from t = 1/2pi); after it, the error away from the shock."""
    bound = {"godunov": (4e-3, 4e-3), "weno5": (2e-6, 2e-5)}[scheme]
    faces, v, exact = sine_problem(400, 0.1, scheme)
    assert np.abs(v - exact).sum() / 400 < bound[0]
    faces, v, exact = sine_problem(400, 0.5, scheme)
    centres = 0.5 * (faces[1:] + faces[:-1])
    jump = int(np.argmax(np.abs(np.diff(exact))))
    shock = faces[jump + 1]
    distance = np.abs((centres - shock + 0.5) % 1.0 - 0.5)
    away = distance > 0.05
    assert np.abs(v - exact)[away].sum() / 400 < bound[1]
    assert np.abs(v - exact).sum() / 400 < 0.01  # the shock itself is smeared over a few cells


def measured_order(scheme_for_n, t, ns):
    errors = []
    for n in ns:
        faces, v, exact = sine_problem(n, t, scheme_for_n(n))
        errors.append(np.abs(v - exact).sum() / n)
    slope = -np.polyfit(np.log(ns), np.log(errors), 1)[0]
    return slope, errors


def test_godunov_is_first_order_on_smooth_data():
    """Truth: Lax-Oleinik solution at t = 0.1 (before the shock); slope of log error vs log N."""
    slope, errors = measured_order(lambda n: "godunov", 0.1, [100, 200, 400, 800])
    assert 0.85 < slope < 1.2, (slope, errors)


def test_weno5_order_on_smooth_data():
    """Truth: Lax-Oleinik solution at t = 0.1. At the default CFL SSP-RK3's O(dt^3) shows (>= 3);
    with dt ~ h^(5/3) the spatial order shows (WENO-JS loses some at the sine's critical points)."""
    slope, errors = measured_order(lambda n: "weno5", 0.1, [50, 100, 200, 400])
    assert slope >= 2.8, (slope, errors)
    slope, errors = measured_order(lambda n: WENO5(cfl=0.8 * (50 / n) ** (2 / 3)), 0.1, [50, 100, 200, 400])
    assert slope >= 4.0, (slope, errors)


@pytest.mark.parametrize("scheme", ALL_SCHEMES)
def test_periodic_mass_is_conserved_to_round_off(scheme):
    """Truth: a conservative scheme with periodic boundaries keeps sum(v) h exactly (round-off)."""
    faces, v, _ = sine_problem(256, 0.5, scheme)
    v0 = np.diff(sine_potential(faces)) * 256
    assert abs(v.sum() - v0.sum()) / 256 < 1e-12


def test_batch_of_viscosities_equals_separate_runs():
    """Truth: the separate runs; rows of a batch do not interact (time step = the batch's smallest)."""
    faces = np.linspace(-6, 6, 301)
    centres = 0.5 * (faces[1:] + faces[:-1])
    v0 = np.diff(np.exp(-faces**2 / 2)) / (faces[1] - faces[0])
    nus = np.array([0.05, 0.2])
    batch = sw.pde.solve_burgers(np.stack([v0, v0]), centres, 1.5, nu=nus, boundary="outflow")
    for row, nu in zip(batch, nus):
        single = sw.pde.solve_burgers(v0, centres, 1.5, nu=float(nu), boundary="outflow")
        assert np.abs(row - single).max() < 1e-6  # different step sequences; both converged


def test_kappa_zero_is_classic_burgers():
    """Truth: Thm 4.2 with kappa = 0 is the classic viscous Burgers equation."""
    faces = np.linspace(-6, 6, 201)
    centres = 0.5 * (faces[1:] + faces[:-1])
    v0 = np.sin(centres) * np.exp(-centres**2 / 4)
    plain = sw.pde.solve_burgers(v0, centres, 1.0, nu=0.1, boundary="outflow")
    zero = sw.pde.solve_burgers(v0, centres, 1.0, nu=0.1, kappa=np.zeros_like(centres), boundary="outflow")
    assert np.array_equal(plain, zero)


def test_source_corrected_burgers_radial_exact_solution():
    """Truth: in R^3 a radial heat solution is w = phi(r)/r with phi a 1-D heat solution, here
    w = 1 + beta sin(k r)/r e^{-nu k^2 tau/2}; v = -nu w_r / w then solves Thm 4.2's equation with
    kappa(s) = 2/s (Delta of |x| in R^3). Without kappa the same data go wrong."""
    nu, beta, k, t = 0.3, 0.8, 2.0, 0.3
    def v_exact(r, tau):
        decay = math.exp(-nu * k**2 * tau / 2)
        w = 1 + beta * np.sin(k * r) / r * decay
        w_r = beta * decay * (k * np.cos(k * r) / r - np.sin(k * r) / r**2)
        return -nu * w_r / w
    faces = np.linspace(1.0, 7.0, 601)
    centres = 0.5 * (faces[1:] + faces[:-1])
    fine = np.linspace(0, 1, 41)[:, None] * np.diff(faces)[None, :] + faces[:-1][None, :]
    averages = lambda tau: np.trapezoid(v_exact(fine, tau), fine, axis=0) / np.diff(faces)
    interior = (centres > 2.5) & (centres < 5.5)
    corrected = sw.pde.solve_burgers(averages(0.0), centres, t, nu=nu, kappa=lambda s: 2 / s, boundary="outflow")
    plain = sw.pde.solve_burgers(averages(0.0), centres, t, nu=nu, boundary="outflow")
    error = np.abs(corrected - averages(t))[interior].max()
    assert error < 1e-6, error
    assert np.abs(plain - averages(t))[interior].max() > 100 * error


def test_torch_float32_and_landing_exactly_on_t_final():
    """Truth: the float64 NumPy run; and a run to t1 then t2 (solve_burgers_at) passes through t1."""
    faces, v64, _ = sine_problem(128, 0.12, "weno5")
    centres = torch.tensor(0.5 * (faces[1:] + faces[:-1]), dtype=torch.float32)
    v0 = torch.tensor(np.diff(sine_potential(faces)) * 128, dtype=torch.float32)
    v32 = sw.pde.solve_burgers(v0, centres, 0.12)
    assert v32.dtype == torch.float32 and np.abs(v32.numpy() - v64).max() < 1e-4
    both = sw.pde.solve_burgers_at(v0.double(), centres.double(), [0.05, 0.12])
    assert torch.allclose(both[1], torch.tensor(v64), atol=1e-9)


def test_errors_are_raised_not_swallowed():
    """Truth: the documented error paths, including never stopping early."""
    x = np.linspace(0, 1, 50)
    v0 = np.sin(2 * np.pi * x)
    with pytest.raises(RuntimeError, match="max_steps"):
        sw.pde.solve_burgers(v0, x, 1.0, max_steps=10)
    with pytest.raises(ValueError, match="scheme must be one of"):
        sw.pde.solve_burgers(v0, x, 0.1, scheme="weno7")
    with pytest.raises(ValueError, match="boundary must be one of"):
        sw.pde.solve_burgers(v0, x, 0.1, boundary="reflecting")
    with pytest.raises(ValueError, match="times must be finite and >= 0"):
        sw.pde.solve_burgers(v0, x, -0.1)
    with pytest.raises(ValueError, match="non-finite"):
        sw.pde.solve_burgers(np.where(x > 0.5, np.nan, 0.0), x, 0.1)
    with pytest.raises(ValueError, match="one value per batch row"):
        sw.pde.solve_burgers(np.stack([v0, v0]), x, 0.1, nu=np.array([0.1, 0.2, 0.3]))
    with pytest.raises(ValueError, match="cfl must be in"):
        Godunov(cfl=1.5)


@pytest.mark.parametrize("stepper,order", [("euler", 1), ("ssprk3", 3), ("ssprk104", 4)])
def test_ssp_steppers_have_their_order(stepper, order):
    """Truth: dv/dt = A v with A = [[0, 1], [-1, -0.1]] (a damped rotation): v(1) = expm(A) v(0);
    the error after 1 time unit falls as dt^order."""
    from scipy.linalg import expm
    A = torch.tensor([[0.0, 1.0], [-1.0, -0.1]], dtype=torch.float64)
    v0 = torch.tensor([1.0, 0.0], dtype=torch.float64)
    exact = torch.tensor(expm(A.numpy()) @ v0.numpy())
    errors = []
    for steps in (20, 40):
        v = v0
        for _ in range(steps):
            v = sw.pde.ssp_step(sw.pde.Stepper(stepper), v, 1 / steps, lambda x: A @ x)
        errors.append(float((v - exact).abs().max()))
    measured = math.log2(errors[0] / errors[1])
    assert abs(measured - order) < 0.3, (errors, measured)


@pytest.mark.slow
def test_compiled_steps_agree_with_eager():
    """Truth: the eager computation (same arithmetic, fused by inductor); agreement to round-off."""
    faces = np.linspace(0, 1, 129)
    centres = 0.5 * (faces[1:] + faces[:-1])
    v0 = np.diff(sine_potential(faces)) * 128
    eager = sw.pde.solve_burgers(v0, centres, 0.3)
    fused = sw.pde.solve_burgers(v0, centres, 0.3, compile=True)
    assert np.abs(eager - fused).max() < 1e-12
