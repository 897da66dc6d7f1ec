r"""Shock geometry of inviscid Burgers, v_tau + v v_s = 0, v(0, .) = U' (Miyagawa 2026, §4.1, Thm 4.3).

Characteristics s(tau; xi) = xi + tau v0(xi) carry v0(xi); the map xi -> s stays invertible until
tau* = -1 / inf v0' = -1 / inf U''. After tau* the weak entropy solution is the derivative of the
Hopf-Lax value u(tau, s) = min_y U(y) + (s - y)^2 / (2 tau) (Lax-Oleinik); a shock sits where the
minimiser jumps from y_L to y_R, and moves at the Rankine-Hugoniot speed (v_L + v_R) / 2.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from scipy.interpolate import CubicSpline

from ._interop import as_tensor, check_choice, check_finite, check_positive, uniform_step
from .differences import finite_difference
from .heat import Domain, hopf_lax_velocity

__all__ = [
    "Crossing",
    "Shock",
    "ShockPath",
    "characteristics",
    "first_crossing",
    "rankine_hugoniot_speed",
    "shock_path",
    "shock_time",
    "shocks_at",
]


@dataclass(frozen=True)
class Crossing:
    """Where characteristics first cross: time ``tau``, foot ``xi`` (argmin U''), point ``position``."""

    tau: float
    xi: float
    position: float
    velocity: float  # v0(xi): the value carried into the shock's birth


@dataclass(frozen=True)
class Shock:
    """A shock of the entropy solution at time ``tau``: position, one-sided values, speed."""

    tau: float
    position: float
    left: float  # v(tau, position-)
    right: float  # v(tau, position+)
    foot_left: float  # the characteristics' feet y_L < y_R that meet there
    foot_right: float

    @property
    def speed(self) -> float:
        """Rankine-Hugoniot: [v^2/2] / [v] = (v_L + v_R) / 2."""
        return rankine_hugoniot_speed(self.left, self.right)


def rankine_hugoniot_speed(left: float, right: float) -> float:
    r"""ds/dtau = (f(v_R) - f(v_L)) / (v_R - v_L) = (v_L + v_R) / 2 for Burgers' flux f = v^2/2."""
    return 0.5 * (float(left) + float(right))


def _curvature(U, grid, domain: str):
    U_t, _ = as_tensor(U, "U", dtype=torch.float64)
    grid_t, _ = as_tensor(grid, "grid", dtype=torch.float64)
    domain = check_choice(domain, Domain, "domain")
    h = uniform_step(grid_t, min_points=7)
    if U_t.ndim != 1 or U_t.numel() != grid_t.numel():
        raise ValueError(f"U must be 1-D with one value per grid point ({grid_t.numel()}), got shape {tuple(U_t.shape)}")
    check_finite(U_t, "U")
    curvature = finite_difference(U_t, grid_t, derivative=2, accuracy=6, periodic=domain is Domain.CIRCLE)
    return curvature.numpy(), grid_t.numpy(), h, domain


def _refined_minimum(values: np.ndarray, grid: np.ndarray, h: float, periodic: bool) -> tuple[float, float]:
    """(x, min) of the quartic through the 5 samples around the discrete minimum of ``values``."""
    n = values.size
    j = int(np.argmin(values))
    centre = j if periodic else min(max(j, 2), n - 3)
    idx = np.arange(centre - 2, centre + 3)
    local = values[idx % n]
    poly = np.polynomial.Polynomial.fit(np.arange(-2, 3), local, 4, domain=[-2, 2], window=[-2, 2])
    lo, hi = (-1.0, 1.0) if periodic or 2 <= j <= n - 3 else (-2.0, 2.0)
    t = np.linspace(lo, hi, 4001)
    k = int(np.argmin(poly(t)))
    return float(grid[0] + (centre + t[k]) * h), float(min(poly(t[k]), values[j]))


def shock_time(U, grid, domain: str = "line") -> float:
    r"""tau* = -1 / inf U'' (Thm 4.3); math.inf when U'' >= 0 everywhere (no characteristic crossing).

    Equation: d(xi + tau U'(xi))/d xi = 1 + tau U''(xi) first vanishes at tau* = -1/inf U''.
    Scheme: U'' by 6th-order finite differences of the samples; the infimum refined by the
        minimum of the quartic through the 5 samples around the discrete minimum.
    Order: O(h^5) for smooth U (the quartic's interpolation error), so 1e-6 relative at h ~ 0.01.
    Raises: ValueError for a non-uniform grid, NaN in U, fewer than 7 points, shape mismatch,
        an unknown domain ("line" or "circle": on the circle the grid is one period).
    """
    curvature, grid_np, h, domain = _curvature(U, grid, domain)
    _, inf_curvature = _refined_minimum(curvature, grid_np, h, domain is Domain.CIRCLE)
    return -1.0 / inf_curvature if inf_curvature < 0 else math.inf


def first_crossing(U, grid, domain: str = "line") -> Crossing:
    """Where and when the characteristics of v0 = U' first cross (see ``shock_time``)."""
    curvature, grid_np, h, domain = _curvature(U, grid, domain)
    xi, inf_curvature = _refined_minimum(curvature, grid_np, h, domain is Domain.CIRCLE)
    if inf_curvature >= 0:
        return Crossing(math.inf, xi, math.nan, math.nan)
    tau = -1.0 / inf_curvature
    U_np = np.asarray(as_tensor(U, "U", dtype=torch.float64)[0])
    slope = finite_difference(U_np, grid_np, derivative=1, accuracy=6, periodic=domain is Domain.CIRCLE)
    velocity = float(CubicSpline(grid_np, slope)(xi))
    return Crossing(tau, xi, xi + tau * velocity, velocity)


def characteristics(v0, grid, taus):
    r"""s(tau; xi) = xi + tau v0(xi) for each tau in ``taus`` and each foot xi on ``grid``.

    Shapes: v0 (n,), grid (n,), taus (k,) -> (k, n). NumPy in -> NumPy out.
    """
    v_t, kind = as_tensor(v0, "v0")
    grid_t, _ = as_tensor(grid, "grid", dtype=v_t.dtype, device=v_t.device)
    taus_t, _ = as_tensor(taus, "taus", dtype=v_t.dtype, device=v_t.device)
    if v_t.shape != grid_t.shape:
        raise ValueError(f"v0 and grid must have the same shape, got {tuple(v_t.shape)} and {tuple(grid_t.shape)}")
    check_finite(v_t, "v0")
    if bool((taus_t < 0).any()):
        raise ValueError("taus must be >= 0")
    return kind.back(grid_t.unsqueeze(0) + taus_t.reshape(-1, 1) * v_t.unsqueeze(0))


def shocks_at(U, grid, tau: float, *, min_jump: float = 1e-3) -> list[Shock]:
    r"""The shocks of the entropy solution v = u_s of inviscid Burgers at time ``tau``, v(0) = U'.

    Equation: u(tau, s) = min_y U(y) + (s - y)^2/(2 tau) (Hopf-Lax); a shock is a point x where two
        minimisers y_L < y_R tie: x = (y_L + y_R)/2 + tau (U(y_R) - U(y_L)) / (y_R - y_L), with
        v_L = (x - y_L)/tau, v_R = (x - y_R)/tau; it moves at (v_L + v_R)/2.
    Scheme: minimisers on the grid locate the jumps; then U is a cubic spline, each minimiser is
        polished by Newton on U'(y) + (y - x)/tau = 0 and x by the tie formula, alternately.
    Order: O(h^4) (the spline), line domain only. A shock is a jump of the minimiser over a
        region where 1 + tau U'' < 0; jumps below ``min_jump`` (relative to the grid span) are not
        examined (a shock just being born, narrower than the grid can show).
    Raises: ValueError for tau <= 0 or the input errors of ``shock_time``.
    """
    tau = check_positive(tau, "tau")
    U_t, _ = as_tensor(U, "U", dtype=torch.float64)
    grid_t, _ = as_tensor(grid, "grid", dtype=torch.float64)
    uniform_step(grid_t, min_points=7)
    if U_t.ndim != 1 or U_t.numel() != grid_t.numel():
        raise ValueError(f"U must be 1-D with one value per grid point ({grid_t.numel()}), got shape {tuple(U_t.shape)}")
    check_finite(U_t, "U")
    y = grid_t.numpy()
    U_np = U_t.numpy()
    spline = CubicSpline(y, U_np)
    feet = y - tau * hopf_lax_velocity(U_np, y, tau)
    span = y[-1] - y[0]
    shocks = []
    for j in np.flatnonzero(np.diff(feet) > min_jump * span):
        # A shock skips feet where the Hopf-Lax objective is not convex (1 + tau U'' < 0); a
        # steep but smooth compression only spreads its feet apart. That region also separates
        # the two branches, so each foot is polished on its own side of it.
        probe = np.linspace(feet[j], feet[j + 1], 64)
        convexity = 1.0 + tau * spline(probe, 2)
        if convexity.min() >= 0:
            continue
        separator = float(probe[np.argmin(convexity)])
        y_left, y_right, x = feet[j], feet[j + 1], 0.5 * (y[j] + y[j + 1])
        for _ in range(20):
            y_left = _polish_foot(spline, y_left, x, tau, y[0], separator)
            y_right = _polish_foot(spline, y_right, x, tau, separator, y[-1])
            x_new = 0.5 * (y_left + y_right) + tau * float(spline(y_right) - spline(y_left)) / (y_right - y_left)
            converged = abs(x_new - x) < 1e-14 * max(1.0, abs(x))
            x = x_new
            if converged:
                break
        x = float(x)
        shocks.append(Shock(tau, x, (x - y_left) / tau, (x - y_right) / tau, float(y_left), float(y_right)))
    return shocks


@dataclass(frozen=True)
class ShockPath:
    """The strongest shock at each time: arrays over ``taus`` (NaN where no shock exists yet)."""

    taus: np.ndarray
    position: np.ndarray
    left: np.ndarray
    right: np.ndarray
    speed: np.ndarray  # Rankine-Hugoniot (v_L + v_R)/2; d position / d tau where the path is smooth


def shock_path(U, grid, taus, *, min_jump: float = 1e-3) -> ShockPath:
    r"""Position, one-sided values and speed of the strongest shock (largest v_L - v_R) over ``taus``.

    ``shocks_at`` at each tau; before the first crossing (and where the grid cannot yet resolve the
    newborn shock) the entries are NaN. Checks: position' = speed (Rankine-Hugoniot) between samples.
    """
    taus_np = np.asarray(as_tensor(taus, "taus", dtype=torch.float64)[0], dtype=np.float64).reshape(-1)
    rows = np.full((taus_np.size, 4), np.nan)
    for i, tau in enumerate(taus_np):
        if tau <= 0:
            continue
        found = shocks_at(U, grid, float(tau), min_jump=min_jump)
        if found:
            strongest = max(found, key=lambda shock: shock.left - shock.right)
            rows[i] = (strongest.position, strongest.left, strongest.right, strongest.speed)
    return ShockPath(taus_np, *rows.T)


def _polish_foot(spline: CubicSpline, y: float, x: float, tau: float, lo: float, hi: float) -> float:
    """Damped Newton on F(y) = U(y) + (x - y)^2/(2 tau): F never increases, so the foot stays in the
    basin it started in and cannot cross the local maximum into the other branch."""
    def objective(z: float) -> float:
        return float(spline(z)) + (x - z) ** 2 / (2 * tau)

    value = objective(y)
    for _ in range(60):
        g = float(spline(y, 1)) + (y - x) / tau
        dg = float(spline(y, 2)) + 1.0 / tau
        step = -g / dg if dg > 0 else -np.sign(g) * 1e-3 * (hi - lo)
        for _ in range(60):
            candidate = float(np.clip(y + step, lo, hi))
            new_value = objective(candidate)
            if new_value <= value:
                break
            step *= 0.5
        else:
            return y
        moved = abs(candidate - y)
        y, value = candidate, new_value
        if moved < 1e-15 * max(1.0, abs(y)):
            break
    return y
