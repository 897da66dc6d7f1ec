r"""Assumption 4.1 (one-dimensional closure) measured on a model's quotient, and Thm 4.2 against it.

A collective coordinate psi is taken along a slice direction ("along") and tested in a tube around
it along a second, orthogonal direction ("across"), on the flat 2-D slice of ``slice_entropy``:

(a) U(q) = Ubar(psi(q)):      defect_U = max_psi range_{|eta| <= tube} U(psi, eta) / range_psi U(psi, 0)
(b) u^nu = ubar(tau, psi):    the same ratio for u^nu(tau, .) at each tau
(c) |grad psi| = 1 and (d) Delta psi = kappa(psi): psi is the arc length of a flat slice, so both
    hold exactly with kappa = 0 (they are reported as such, not measured).

Thm 4.2 then says v = d ubar / d psi solves viscous Burgers v_tau + v v_psi = (nu/2) v_psipsi from
v0 = Ubar'. Three velocities are compared at each tau:
    v_burgers  the conservative solver (``pde.solve_burgers``) from v0 = dU(psi, 0)/dpsi,
    v_1d       d/dpsi of the exact 1-D Hopf-Cole field of U(., 0) (``pde.burgers_velocity``),
    v_2d       d/dpsi of the exact 2-D field u^nu(tau, psi, 0) (the across pass, then an exact 1-D velocity).
v_burgers vs v_1d checks the numerics (both exact for the 1-D problem); v_1d vs v_2d is the error
of the closure itself: how much diffusion across psi changes the coarse-grained gradient along it.
The reduced shock time is tau* = -1 / inf Ubar'' (Thm 4.3, ``pde.shock_time``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from .. import pde
from .entropy import BatchedLoss, Direction, QuotientChart, slice_entropy

__all__ = ["ClosureReport", "closure_test"]


@dataclass(frozen=True)
class ClosureReport:
    """Assumption 4.1 (a)-(d) and Thm 4.2 on one 2-D slice; per-tau lists follow ``taus``."""

    nu: float
    taus: list[float]
    psi: list[float]  # arc length along the collective coordinate
    potential: list[float]  # Ubar(psi) = U(psi, eta = 0)
    defect_potential: float  # (a)
    defect_entropy: list[float]  # (b), per tau
    grad_psi_error: float  # (c): 0 on a flat slice
    kappa: float  # (d): 0 on a flat slice
    tau_star: float  # -1 / inf Ubar'' (math.inf: no shock)
    v_burgers: list[list[float]]
    v_1d: list[list[float]]
    v_2d: list[list[float]]
    solver_gap: list[float]  # max |v_burgers - v_1d| / max |v_1d|
    closure_gap: list[float]  # max |v_2d - v_1d| / max |v_1d|


def closure_test(loss: BatchedLoss, chart: QuotientChart, along: Direction, across: Direction, nu: float,
                 taus: Sequence[float], *, points: tuple[int, int] = (128, 41), tube: float = 0.25,
                 metric: str = "quotient", half_width: tuple[float | None, float | None] = (None, None)) -> ClosureReport:
    """Measure Assumption 4.1 (a)-(d) and compare Thm 4.2's Burgers velocity with the exact fields.

    ``across`` must be a line ("radial", "free" or "line"): the tube |eta| <= ``tube`` around eta = 0
    is read off its grid, which is centred on the base point (``half_width[1]`` defaults to 2 tube).
    """
    if across.kind == "rotate":
        raise ValueError("across must be a line direction ('radial', 'free' or 'line'): its grid is centred on the base point")
    if not tube > 0:
        raise ValueError(f"tube must be > 0, got {tube}")
    taus = [float(t) for t in taus]
    if not taus or min(taus) <= 0:
        raise ValueError(f"taus must be > 0, got {taus}")
    n_across = points[1]
    if n_across % 2 == 0:
        raise ValueError(f"points across must be odd (a grid point on eta = 0), got {n_across}")
    widths = (half_width[0], half_width[1] if half_width[1] is not None else 2 * tube)
    field = slice_entropy(loss, chart, [along, across], nu, [0.0, *taus], points=points, metric=metric,
                          half_width=widths)
    psi, eta = field.grids
    centre = n_across // 2  # the across grid is symmetric about the base point
    inside = (eta - eta[centre]).abs() <= tube + 1e-12
    if int(inside.sum()) < 3:
        raise ValueError(f"the tube holds {int(inside.sum())} grid points across: widen tube or add points")
    potential = field.potential[:, centre]

    def defect(values: torch.Tensor) -> float:
        spread = values[:, inside].amax(dim=1) - values[:, inside].amin(dim=1)
        along_range = values[:, centre].max() - values[:, centre].min()
        return float(spread.max() / along_range.clamp(min=1e-300))

    periodic = field.domains[0] == "circle"
    domain = "circle" if periodic else "line"
    v0 = pde.finite_difference(potential, psi, derivative=1, accuracy=6, periodic=periodic)
    v_burgers, v_1d, v_2d, solver_gap, closure_gap, defect_entropy = [], [], [], [], [], []
    for i, tau in enumerate(taus, start=1):
        defect_entropy.append(defect(field.entropy[i]))
        exact_1d = pde.burgers_velocity(potential, psi, nu, tau, domain)
        # the 2-D semigroup factorises: smooth across first, then the psi pass is a 1-D Hopf-Cole whose
        # velocity is exact (softmax moments), so v_2d carries no differencing error
        across_smoothed = pde.local_entropy(field.potential, eta, nu, tau, field.domains[1])
        exact_2d = pde.burgers_velocity(across_smoothed[:, centre], psi, nu, tau, domain)
        solved = pde.solve_burgers(v0, psi, tau, nu=nu, boundary="periodic" if periodic else "outflow")
        scale = float(exact_1d.abs().max())
        interior = slice(None) if periodic else slice(8, -8)  # outflow ghosts and one-sided stencils at the ends
        solver_gap.append(float((solved - exact_1d)[interior].abs().max()) / scale)
        closure_gap.append(float((exact_2d - exact_1d)[interior].abs().max()) / scale)
        v_burgers.append(solved.tolist())
        v_1d.append(exact_1d.tolist())
        v_2d.append(exact_2d.tolist())
    return ClosureReport(float(nu), taus, psi.tolist(), potential.tolist(), defect(field.potential),
                         defect_entropy, 0.0, 0.0, pde.shock_time(potential, psi, domain), v_burgers, v_1d, v_2d,
                         solver_gap, closure_gap)
