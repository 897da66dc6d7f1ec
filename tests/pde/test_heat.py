"""local_entropy / burgers_velocity / burgers_slope / hopf_lax against independent truths."""

import math

import numpy as np
import pytest
import torch
from scipy import integrate, special

import shockwatch as sw


def quad_reference(U_fn, s, nu, tau):
    """Truth: adaptive scipy quadrature of the kernel integral in float64, shifted by its maximum."""
    sigma = math.sqrt(nu * tau)
    def exponent(y):
        return -U_fn(y) / nu - (s - y) ** 2 / (2 * sigma**2)
    ys = np.linspace(s - 15 * sigma - 3, s + 15 * sigma + 3, 4001)
    peak = max(exponent(y) for y in ys)
    a, b = s - 15 * sigma - 4, s + 15 * sigma + 4
    mass, _ = integrate.quad(lambda y: math.exp(exponent(y) - peak), a, b, points=[s], limit=400, epsrel=1e-13, epsabs=0)
    first, _ = integrate.quad(lambda y: (s - y) * math.exp(exponent(y) - peak), a, b, points=[s], limit=400, epsrel=1e-13, epsabs=0)
    u = -nu * (peak + math.log(mass) - 0.5 * math.log(2 * math.pi * sigma**2))
    return u, first / mass / tau


@pytest.mark.parametrize("nu,tau", [(0.1, 0.5), (0.02, 1.0), (0.4, 2.0), (1.0, 0.3)])
def test_matches_adaptive_quadrature(nu, tau):
    """Truth: scipy.integrate.quad of the Gaussian-kernel integral, float64, at 5 points."""
    def U_fn(y):
        return math.sin(1.3 * y) + 0.1 * y * y
    s = np.linspace(-10, 10, 2001)
    U = np.sin(1.3 * s) + 0.1 * s * s
    u = sw.pde.local_entropy(U, s, nu, tau)
    v = sw.pde.burgers_velocity(U, s, nu, tau)
    for x in (-3.0, -0.5, 0.0, 0.71, 2.5):
        i = int(np.argmin(abs(s - x)))
        u_ref, v_ref = quad_reference(U_fn, s[i], nu, tau)
        assert abs(u[i] - u_ref) < 1e-9, (x, u[i], u_ref)
        assert abs(v[i] - v_ref) < 1e-8, (x, v[i], v_ref)


@pytest.mark.parametrize("nu", [1e-4, 1e-3, 0.02, 0.5, 10.0])
@pytest.mark.parametrize("a", [0.5, 3.0])
def test_quadratic_potential_closed_form(nu, a):
    """Truth: for U = a s^2/2 the heat flow of a Gaussian is Gaussian:
    u = a s^2 / (2 (1 + a tau)) + (nu/2) log(1 + a tau), v = a s / (1 + a tau), v_s = a / (1 + a tau).
    Covers nu from 1e-4 (e^{-U/nu} underflows float64) to 10 with no NaN."""
    tau = 0.7
    half_width = max(10.0, math.sqrt(100 * nu / a))  # beyond it e^{-U/nu} < e^{-50}: no truncation
    s = np.linspace(-half_width, half_width, 2 * int(half_width * 40) + 1)
    U = 0.5 * a * s**2
    window = np.abs(s) <= 4
    u = sw.pde.local_entropy(U, s, nu, tau)
    v = sw.pde.burgers_velocity(U, s, nu, tau)
    slope = sw.pde.burgers_slope(U, s, nu, tau)
    for x in (u, v, slope):
        assert np.isfinite(x).all()
    exact_u = a * s**2 / (2 * (1 + a * tau)) + 0.5 * nu * math.log(1 + a * tau)
    assert np.abs(u - exact_u)[window].max() < 1e-10 * max(1.0, nu)
    assert np.abs(v - a * s / (1 + a * tau))[window].max() < 1e-9
    assert np.abs(slope - a / (1 + a * tau))[window].max() < 1e-7


def test_naive_computation_underflows_where_log_domain_does_not():
    """Truth: float64 underflow of e^{-U/nu} (what the log domain exists for)."""
    s = np.linspace(-3, 3, 121)
    U = 1.0 + s**2
    with np.errstate(under="ignore"):
        assert (np.exp(-U / 1e-3) == 0).all()
    u = sw.pde.local_entropy(U, s, 1e-3, 0.1)
    assert np.isfinite(u).all() and u.min() > 0.9


@pytest.mark.parametrize("nu,tau", [(0.5, 0.2), (2.0, 1.0), (1.0, 8.0)])
def test_circle_matches_bessel_series(nu, tau):
    """Truth: e^{-k cos(t)/nu} = sum_n (-1)^n I_n(k/nu) e^{i n t}; the heat flow multiplies mode n by
    e^{-n^2 nu tau / 2}. Evaluated with scipy's scaled Bessel functions in float64."""
    k = 1.0
    z = k / nu
    theta = np.linspace(0, 2 * np.pi, 256, endpoint=False)
    U = k * np.cos(theta)
    n = np.arange(1, 60)
    series = special.ive(0, z) + 2 * np.sum(
        ((-1.0) ** n * special.ive(n, z) * np.exp(-(n**2) * nu * tau / 2))[:, None] * np.cos(np.outer(n, theta)), axis=0)
    exact = -nu * (z + np.log(series / (2 * np.pi)) + math.log(2 * np.pi))
    u = sw.pde.local_entropy(U, theta, nu, tau, domain="circle")
    assert np.abs(u - exact).max() < 1e-10


def test_circle_is_periodic_and_line_agrees_far_from_ends_when_kernel_is_narrow():
    """Truth: invariance under rotation of the grid (a periodic problem has no preferred origin)."""
    theta = np.linspace(0, 2 * np.pi, 400, endpoint=False)
    U = np.sin(theta) + 0.5 * np.cos(3 * theta)
    u = sw.pde.local_entropy(U, theta, 0.05, 0.3, domain="circle")
    u_shifted = sw.pde.local_entropy(np.roll(U, 37), theta, 0.05, 0.3, domain="circle")
    assert np.abs(np.roll(u, 37) - u_shifted).max() < 1e-12


def test_hopf_lax_limit_with_laplace_correction():
    """Truth: Laplace's method, u^nu = u^0 + (nu/2) log(1 + tau U''(y*)) + O(nu^2), y* = s - tau v^0
    (before the shock, where the minimiser is unique)."""
    s = np.linspace(-6, 6, 2401)
    U = np.exp(-s**2 / 2)
    tau = 0.5
    u0 = sw.pde.hopf_lax(U, s, tau)
    v0 = sw.pde.hopf_lax_velocity(U, s, tau)
    y_star = s - tau * v0
    correction = 0.5 * np.log(1 + tau * (y_star**2 - 1) * np.exp(-y_star**2 / 2))
    window = np.abs(s) < 3
    errors = []
    for nu in (1e-2, 1e-3):
        u = sw.pde.local_entropy(U, s, nu, tau)
        errors.append(np.abs((u - u0) / nu - correction)[window].max())
    assert errors[1] < 1e-2 and errors[1] < errors[0] / 5, errors


def test_hopf_lax_quadratic_exact():
    """Truth: for U = s^2/2, min_y U(y) + (s-y)^2/(2 tau) = s^2 / (2 (1 + tau))."""
    s = np.linspace(-5, 5, 1001)
    tau = 1.3
    u = sw.pde.hopf_lax(s**2 / 2, s, tau)
    v = sw.pde.hopf_lax_velocity(s**2 / 2, s, tau)
    inner = np.abs(s) < 3
    assert np.abs(u - s**2 / (2 * (1 + tau)))[inner].max() < 1e-12
    assert np.abs(v - s / (1 + tau))[inner].max() < 1e-10


def test_coarse_grid_is_refined_internally_at_fourth_order():
    """Truth: the same quantity on a grid fine enough to need no refinement; the gap falls ~h^4."""
    nu, tau = 0.01, 0.05  # sigma = 0.022, far below the coarse steps
    fine = np.linspace(-4, 4, 8001)
    reference = sw.pde.local_entropy(np.cos(2 * fine), fine, nu, tau)
    gaps = []
    for n in (81, 161):
        s = np.linspace(-4, 4, n)
        u = sw.pde.local_entropy(np.cos(2 * s), s, nu, tau)
        step = (len(fine) - 1) // (n - 1)
        gaps.append(np.abs(u - reference[::step])[np.abs(s) < 3].max())
    order = math.log2(gaps[0] / gaps[1])
    assert order > 3.5, (gaps, order)


def test_torch_in_torch_out_and_float32():
    """Truth: the float64 NumPy result (the same formula), to float32 resolution."""
    s = np.linspace(-4, 4, 401)
    U = np.exp(-s**2 / 2)
    ref = sw.pde.burgers_velocity(U, s, 0.1, 1.0)
    out = sw.pde.burgers_velocity(torch.tensor(U, dtype=torch.float32), torch.tensor(s, dtype=torch.float32), 0.1, 1.0)
    assert isinstance(out, torch.Tensor) and out.dtype == torch.float32
    assert np.abs(out.numpy() - ref).max() < 1e-5
    batch = sw.pde.local_entropy(np.stack([U, 2 * U]), s, 0.1, 1.0)
    assert batch.shape == (2, 401)
    assert np.abs(batch[1] - sw.pde.local_entropy(2 * U, s, 0.1, 1.0)).max() == 0


def test_tau_zero_returns_U_and_its_derivative():
    """Truth: P_0 = Id, so u(0) = U and v(0) = U' (cos -> -sin)."""
    s = np.linspace(0, 3, 301)
    U = np.cos(s)
    assert np.array_equal(sw.pde.local_entropy(U, s, 0.1, 0.0), U)
    assert np.abs(sw.pde.burgers_velocity(U, s, 0.1, 0.0) + np.sin(s)).max() < 1e-9


@pytest.mark.parametrize("kwargs,match", [
    (dict(nu=0.0), "nu must be finite and > 0"),
    (dict(nu=-1.0), "nu must be finite and > 0"),
    (dict(tau=-0.1), "tau must be finite and >= 0"),
    (dict(domain="sphere"), "domain must be one of"),
    (dict(U=np.full(50, np.nan)), "non-finite"),
    (dict(U=np.zeros(49)), "must match"),
    (dict(grid=np.r_[np.linspace(0, 1, 49), 1.5]), "uniform"),
    (dict(grid=np.linspace(1, 0, 50)), "increasing"),
    (dict(nu=1e-6, tau=1e-6, max_nodes=10_000), "does not resolve"),
    # a fine grid and a wide kernel were told to pass a finer grid or a larger nu*tau (worse, for the second)
    (dict(U=np.zeros(5000), grid=np.linspace(0, 1, 5000), nu=1e-4, tau=1e-2, max_nodes=4000),
     "the grid itself has 5000 points"),
    (dict(tau=1e4, max_nodes=10_000), "pass a smaller nu\*tau"),
])
def test_bad_input_raises_one_clear_line(kwargs, match):
    """Truth: the documented error paths."""
    args = dict(U=np.zeros(50), grid=np.linspace(0, 1, 50), nu=0.1, tau=0.1)
    args.update(kwargs)
    with pytest.raises(ValueError, match=match) as info:
        sw.pde.local_entropy(**args)
    assert "\n" not in str(info.value)


def test_circle_agrees_with_the_sphere_s1_implementation():
    """Truth: two independent implementations of P_t on S^1 (grid images here, the wrapped kernel
    over unit vectors in sphere.py) give the same local entropy."""
    theta = np.linspace(0, 2 * np.pi, 200, endpoint=False)
    U = np.sin(theta) + 0.3 * np.cos(2 * theta)
    points = np.stack([np.cos(theta), np.sin(theta)], axis=1)
    for nu, tau in [(0.05, 0.5), (0.5, 3.0)]:
        on_circle = sw.pde.local_entropy(U, theta, nu, tau, domain="circle")
        on_sphere = sw.pde.sphere_local_entropy(U, points, nu, tau)
        assert np.abs(on_circle - np.asarray(on_sphere)).max() < 1e-10
