"""hj_residual: vanishes on exact solutions at the finite-difference order; kappa matters."""

import math

import numpy as np

import shockwatch as sw


def residual_of_local_entropy(n_s, n_tau, nu=0.1):
    """Max HJ residual of u^nu sampled on [-3, 3] with n_s points and n_tau times in [0.5, 0.9]."""
    taus = np.linspace(0.5, 0.9, n_tau)
    grid = np.linspace(-8, 8, 16 * (n_s - 1) // 6 + 1)  # a wider field, sampled on s by striding
    U = np.exp(-grid**2 / 2)
    field = np.stack([sw.pde.local_entropy(U, grid, nu, t) for t in taus])
    inside = (grid >= -3 - 1e-12) & (grid <= 3 + 1e-12)
    field = field[:, inside]
    r = sw.pde.hj_residual(field, taus, grid[inside], nu)
    return np.abs(r[2:-2, 2:-2]).max()


def test_local_entropy_solves_viscous_hamilton_jacobi_at_fourth_order():
    """Truth: Thm 3.1 (u = -nu log P e^{-U/nu} solves it exactly); the residual is the 4th-order
    finite-difference error, so halving both steps divides it by ~16."""
    coarse = residual_of_local_entropy(121, 17)
    fine = residual_of_local_entropy(241, 33)
    order = math.log2(coarse / fine)
    assert fine < 5e-6 and order > 3.6, (coarse, fine, order)


def test_source_corrected_residual_on_radial_quadratic():
    """Truth: in R^d, U = a|x|^2/2 gives u = a r^2/(2(1 + a tau)) + (nu d/2) log(1 + a tau), which
    solves Thm 4.2 with kappa = (d-1)/r; with kappa = 0 the residual is +(nu/2)(d-1) a/(1 + a tau)."""
    a, nu, d = 1.5, 0.2, 3
    r = np.linspace(0.5, 3, 101)
    taus = np.linspace(0.1, 0.5, 21)
    field = a * r[None, :] ** 2 / (2 * (1 + a * taus[:, None])) + 0.5 * nu * d * np.log(1 + a * taus[:, None])
    corrected = sw.pde.hj_residual(field, taus, r, nu, kappa=lambda s: (d - 1) / s)
    assert np.abs(corrected).max() < 1e-4  # the 4th-order error of u_tau at d tau = 0.02
    plain = sw.pde.hj_residual(field, taus, r, nu)
    # u is quadratic in r, so the s-derivatives are exact and the kappa term is all that differs
    expected = 0.5 * nu * (d - 1) * a / (1 + a * taus[:, None]) * np.ones_like(r)
    assert np.abs(plain - corrected - expected).max() < 1e-10
    zero = sw.pde.hj_residual(field, taus, r, nu, kappa=np.zeros_like(r))
    assert np.array_equal(zero, plain)
