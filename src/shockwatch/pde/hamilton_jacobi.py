r"""Residuals of the viscous Hamilton-Jacobi equations of Miyagawa 2026 (Thm 3.1 and Thm 4.2).

    r = u_tau + (u_s)^2 / 2 - (nu/2) (u_ss + kappa(s) u_s)

kappa = 0 is the quotient Hamilton-Jacobi equation on a flat 1-D slice (Thm 3.1); a kappa gives
the source-corrected one-dimensional reduction (Thm 4.2), kappa = Delta_M psi of the collective
coordinate. A field that solves the equation has a residual at the level of the derivatives'
truncation error, O(h^accuracy + dtau^accuracy).
"""

from __future__ import annotations

import torch

from ._interop import as_tensor, check_finite, check_positive, uniform_step
from .differences import finite_difference

__all__ = ["hj_residual", "hj_residual_2d"]


def hj_residual(u, taus, grid, nu: float, kappa=None, *, periodic: bool = False, accuracy: int = 4):
    r"""The residual u_tau + u_s^2/2 - (nu/2)(u_ss + kappa u_s) of a field sampled on a (tau, s) grid.

    Equation: Thm 3.1 (kappa = None) or Thm 4.2 (kappa a callable s -> kappa(s) taking a float64
        NumPy array, or values on ``grid``).
    Scheme: finite differences of order ``accuracy`` in tau and in s (centred inside, one-sided
        at the ends of non-periodic axes; tau is never periodic).
    Order: ``accuracy`` in both steps for smooth u.
    Raises: ValueError for non-uniform taus or grid, nu < 0, NaN in u, u not of shape
        (len(taus), len(grid)), fewer than accuracy + 2 samples in tau.
    Shapes: u (k, n), taus (k,), grid (n,) -> (k, n). NumPy in -> NumPy out.
    """
    u_t, kind = as_tensor(u, "u", dtype=torch.float64)
    taus_t, _ = as_tensor(taus, "taus", dtype=torch.float64, device=u_t.device)
    grid_t, _ = as_tensor(grid, "grid", dtype=torch.float64, device=u_t.device)
    nu = check_positive(nu, "nu", allow_zero=True)
    uniform_step(taus_t, "taus", min_points=accuracy + 2)
    uniform_step(grid_t, "grid", min_points=accuracy + 2)
    if tuple(u_t.shape) != (taus_t.numel(), grid_t.numel()):
        raise ValueError(f"u must have shape (len(taus), len(grid)) = ({taus_t.numel()}, {grid_t.numel()}), got {tuple(u_t.shape)}")
    check_finite(u_t, "u")
    u_tau = finite_difference(u_t.T, taus_t, derivative=1, accuracy=accuracy).T
    u_s = finite_difference(u_t, grid_t, derivative=1, accuracy=accuracy, periodic=periodic)
    u_ss = finite_difference(u_t, grid_t, derivative=2, accuracy=accuracy, periodic=periodic)
    viscous = u_ss
    if kappa is not None:
        values = kappa(grid_t.cpu().numpy()) if callable(kappa) else kappa
        kappa_t, _ = as_tensor(values, "kappa", dtype=torch.float64, device=u_t.device)
        if kappa_t.shape != grid_t.shape:
            raise ValueError(f"kappa must give one value per grid point ({grid_t.numel()}), got shape {tuple(kappa_t.shape)}")
        check_finite(kappa_t, "kappa")
        viscous = viscous + kappa_t * u_s
    residual = u_tau + 0.5 * u_s**2 - 0.5 * nu * viscous
    return kind.back(residual.to(as_tensor(u, "u")[0].dtype))


def hj_residual_2d(u, taus, grids, nu: float, *, periodic=(False, False), accuracy: int = 4):
    r"""The residual u_tau + |grad u|^2/2 - (nu/2) Delta u of a field on a (tau, x, y) grid (Thm 3.1
    on a flat 2-D slice: Delta = d_xx + d_yy).

    Scheme and order: as ``hj_residual``, finite differences of order ``accuracy`` along each axis.
    Shapes: u (k, n1, n2), taus (k,), grids ((n1,), (n2,)) -> (k, n1, n2). NumPy in -> NumPy out.
    """
    u_t, kind = as_tensor(u, "u", dtype=torch.float64)
    taus_t, _ = as_tensor(taus, "taus", dtype=torch.float64, device=u_t.device)
    nu = check_positive(nu, "nu", allow_zero=True)
    if len(grids) != 2 or len(periodic) != 2:
        raise ValueError(f"grids and periodic need one entry per axis (2), got {len(grids)} and {len(periodic)}")
    x_t, _ = as_tensor(grids[0], "grids[0]", dtype=torch.float64, device=u_t.device)
    y_t, _ = as_tensor(grids[1], "grids[1]", dtype=torch.float64, device=u_t.device)
    uniform_step(taus_t, "taus", min_points=accuracy + 2)
    if tuple(u_t.shape) != (taus_t.numel(), x_t.numel(), y_t.numel()):
        raise ValueError(f"u must have shape (len(taus), len(grids[0]), len(grids[1])) = "
                         f"({taus_t.numel()}, {x_t.numel()}, {y_t.numel()}), got {tuple(u_t.shape)}")
    check_finite(u_t, "u")
    u_tau = finite_difference(u_t.permute(1, 2, 0), taus_t, derivative=1, accuracy=accuracy).permute(2, 0, 1)
    u_y = finite_difference(u_t, y_t, derivative=1, accuracy=accuracy, periodic=periodic[1])
    u_yy = finite_difference(u_t, y_t, derivative=2, accuracy=accuracy, periodic=periodic[1])
    along_x = u_t.transpose(1, 2)
    u_x = finite_difference(along_x, x_t, derivative=1, accuracy=accuracy, periodic=periodic[0]).transpose(1, 2)
    u_xx = finite_difference(along_x, x_t, derivative=2, accuracy=accuracy, periodic=periodic[0]).transpose(1, 2)
    residual = u_tau + 0.5 * (u_x**2 + u_y**2) - 0.5 * nu * (u_xx + u_yy)
    return kind.back(residual)
