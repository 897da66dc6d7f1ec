"""shock_time, first_crossing, characteristics and shocks_at against analytic truths."""

import math

import numpy as np
import pytest

import shockwatch as sw


@pytest.mark.parametrize("offset", [0.0, 0.01234, -0.3071])
def test_shock_time_of_gaussian_bump(offset):
    """Truth: U = e^{-(s-a)^2/2} has U'' = ((s-a)^2 - 1) e^{-(s-a)^2/2} >= -1 (at s = a): tau* = 1.
    The minimum sits between grid points for a != 0."""
    s = np.linspace(-8, 8, 1601)
    assert abs(sw.pde.shock_time(np.exp(-(s - offset) ** 2 / 2), s) - 1.0) < 1e-6


@pytest.mark.parametrize("amplitude,frequency,phase", [(0.7, 1, 0.1234), (0.2, 3, 2.0)])
def test_shock_time_on_the_circle(amplitude, frequency, phase):
    """Truth: U = -A cos(w (s - p)) on the circle has inf U'' = -A w^2: tau* = 1 / (A w^2)."""
    theta = np.linspace(0, 2 * np.pi, 600, endpoint=False)
    U = -amplitude * np.cos(frequency * (theta - phase))
    exact = 1 / (amplitude * frequency**2)
    assert abs(sw.pde.shock_time(U, theta, domain="circle") / exact - 1) < 1e-6


def test_convex_potential_never_shocks():
    """Truth: U'' >= 0 means characteristics never cross (Thm 4.3): tau* = inf."""
    s = np.linspace(-3, 3, 301)
    assert sw.pde.shock_time(s**2 + np.cosh(s), s) == math.inf
    assert sw.pde.first_crossing(s**2, s).tau == math.inf


def test_first_crossing_of_shifted_sine():
    """Truth: v0 = sin(2 pi s) + c: v0' is most negative at s = 1/2, tau* = 1/(2 pi), and that
    characteristic lands at 1/2 + tau* c (Galilean shift)."""
    c = 0.5
    s = np.linspace(-0.2, 1.2, 1401)
    U = (1 - np.cos(2 * np.pi * s)) / (2 * np.pi) + c * s
    crossing = sw.pde.first_crossing(U, s)
    assert abs(crossing.tau * 2 * np.pi - 1) < 1e-6
    assert abs(crossing.xi - 0.5) < 1e-6
    assert abs(crossing.velocity - c) < 1e-6
    assert abs(crossing.position - (0.5 + c / (2 * np.pi))) < 1e-6


def test_characteristic_map_folds_exactly_at_tau_star():
    """Truth: Thm 4.3's proof: d s(tau; xi)/d xi = 1 + tau v0'(xi) stays > 0 before tau* only."""
    xi = np.linspace(-4, 4, 4001)
    v0 = -xi * np.exp(-xi**2 / 2)
    paths = sw.pde.characteristics(v0, xi, [0.99, 1.01])
    assert (np.diff(paths[0]) > 0).all()
    assert (np.diff(paths[1]) < 0).any()


@pytest.mark.parametrize("tau", [1.05, 1.5, 2.0, 3.0])
def test_shock_state_of_gaussian_bump(tau):
    """Truth: for U = e^{-s^2/2} the shock sits at 0 by symmetry, and its feet solve
    U'(y) + y/tau = 0, i.e. e^{-y^2/2} = 1/tau: v_L = -v_R = sqrt(2 log tau)/tau."""
    s = np.linspace(-8, 8, 1601)
    (shock,) = sw.pde.shocks_at(np.exp(-s**2 / 2), s, tau)
    exact = math.sqrt(2 * math.log(tau)) / tau
    assert abs(shock.position) < 1e-9
    assert abs(shock.left - exact) < 1e-6 and abs(shock.right + exact) < 1e-6
    assert abs(shock.speed) < 1e-9


def test_shock_moves_with_a_galilean_boost():
    """Truth: adding c to v0 (c s to U) boosts the solution: the shock sits at c tau, v_L, v_R shift
    by c, and the Rankine-Hugoniot speed is c."""
    c, tau = 0.3, 2.0
    s = np.linspace(-8, 10, 1801)
    (shock,) = sw.pde.shocks_at(np.exp(-s**2 / 2) + c * s, s, tau)
    exact = math.sqrt(2 * math.log(tau)) / tau
    assert abs(shock.position - c * tau) < 1e-8
    assert abs(shock.left - (c + exact)) < 1e-6 and abs(shock.right - (c - exact)) < 1e-6
    assert abs(shock.speed - c) < 1e-6


def test_no_shock_before_tau_star():
    """Truth: before tau* = 1 the entropy solution is smooth (Thm 4.3)."""
    s = np.linspace(-8, 8, 1601)
    assert sw.pde.shocks_at(np.exp(-s**2 / 2), s, 0.95) == []


def test_bad_input():
    s = np.linspace(0, 1, 20)
    with pytest.raises(ValueError, match="uniform"):
        sw.pde.shock_time(s, s**2)
    with pytest.raises(ValueError, match="non-finite"):
        sw.pde.shock_time(np.where(s > 0.5, np.nan, s), s)
    with pytest.raises(ValueError, match="at least 7"):
        sw.pde.shock_time(s[:5], s[:5])
    with pytest.raises(ValueError, match="tau must be finite and > 0"):
        sw.pde.shocks_at(s, s, 0.0)


def test_shock_path_follows_rankine_hugoniot():
    """Truth: Galilean boost of the symmetric bump: position = c tau after tau* = 1, NaN before,
    and the finite-difference slope of the path equals the reported (v_L + v_R)/2."""
    c = -0.25
    s = np.linspace(-10, 8, 1801)
    taus = np.array([0.5, 0.9, 1.2, 1.6, 2.0, 2.4])
    path = sw.pde.shock_path(np.exp(-s**2 / 2) + c * s, s, taus)
    assert np.isnan(path.position[:2]).all()
    assert np.abs(path.position[2:] - c * taus[2:]).max() < 1e-8
    slopes = np.diff(path.position[2:]) / np.diff(taus[2:])
    assert np.abs(slopes - path.speed[3:]).max() < 1e-6


def test_a_float64_grid_far_from_zero_is_checked_at_its_own_precision():
    """The uniformity check allowed 8 float32 ulps of max |x| for any grid: offset by 1e6 (step 0.1),
    a float64 grid with one node moved half a step passed, and shock_time of the Gaussian (exact 1)
    read 0.839. Now its own dtype's ulps: refused; the uniform grid there still gives 1."""
    base = np.linspace(-8, 8, 161)
    moved = 1e6 + base
    moved[80] += 0.05
    with pytest.raises(ValueError, match="uniform"):
        sw.pde.shock_time(np.exp(-(moved - 1e6) ** 2 / 2), moved)
    assert sw.pde.shock_time(np.exp(-base ** 2 / 2), 1e6 + base) == pytest.approx(1.0, rel=1e-5)
