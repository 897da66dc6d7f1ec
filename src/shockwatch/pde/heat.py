r"""Local entropy u^nu = -nu log P_{nu tau} e^{-U/nu} on the line and the circle, in the log domain.

Miyagawa 2026, §2.3 and Thm 3.1: with P_t = e^{(t/2) Delta}, w(tau) = P_{nu tau} e^{-U/nu} solves
w_tau = (nu/2) w_ss, so u = -nu log w solves the viscous Hamilton-Jacobi equation

    u_tau + (u_s)^2 / 2 = (nu/2) u_ss,        u(0, .) = U,

and v = u_s solves viscous Burgers, v_tau + v v_s = (nu/2) v_ss (Hopf-Cole). The kernel of P_{nu tau}
is the Gaussian of variance sigma^2 = nu*tau, so

    u(tau, s) = -nu log \int G_sigma(s - y) exp(-U(y)/nu) dy.

e^{-U/nu} underflows float64 once U/nu > ~745, so nothing here forms it: the integral is one
logsumexp over quadrature nodes, and v = u_s and v_s are moments of the same softmax weights
(exact derivatives of the quadrature formula, never finite differences of u).
"""

from __future__ import annotations

import enum
import math
from typing import NamedTuple

import numpy as np

import torch
from torch import Tensor

from ._interop import (
    as_tensor,
    check_choice,
    check_finite,
    check_positive,
    check_same_shape,
    uniform_step,
)
from .differences import finite_difference

__all__ = [
    "Domain",
    "HopfCole",
    "hopf_cole",
    "local_entropy",
    "burgers_velocity",
    "burgers_slope",
    "hopf_lax",
    "hopf_lax_velocity",
]

_CHUNK_ENTRIES = 1 << 22  # (rows x nodes) per logsumexp: 32 MiB of float64


class Domain(enum.StrEnum):
    """Where s lives: the real line, or a circle whose period is the grid's span (n*h)."""

    LINE = "line"  # U is extended by its end values beyond the grid
    CIRCLE = "circle"  # grid = a + h*arange(n), one period, endpoint excluded


def local_entropy(U, grid, nu: float, tau: float, domain: str = "line", *, max_nodes: int = 1 << 17):
    r"""u^nu(tau, s) = -nu log (P_{nu tau} e^{-U/nu})(s) on ``grid`` (Miyagawa 2026, §2.3, Thm 3.1).

    Equation: u_tau + (u_s)^2/2 = (nu/2) u_ss, u(0, .) = U. P_t = e^{(t/2) Delta} has the Gaussian
        kernel of variance sigma^2 = nu*tau on the line and the wrapped Gaussian on the circle.
    Scheme: the kernel integral by the trapezoid rule, summed by one logsumexp. The nodes are the
        grid refined until the integrand's width sigma / sqrt(1 + tau max U''_+) has >= 2 nodes
        (U interpolated by local cubics: O(h^4)). On the line, U is held at its end values beyond
        the grid and the nodes run 10 sigma past each end, so boundary points are not truncated.
        On the circle the images y + kL within reach of the kernel are summed (the kernel is
        uniform to 1e-34 once sigma > 2L, and is then used as such).
    Order: spectral in the node spacing for smooth U (trapezoid on a decaying Gaussian integrand);
        O(h^4) from interpolating U when the grid itself does not resolve sigma; O(h^2) for points
        within a few sigma of the ends of a line grid when U'(end) != 0 (the kink of the extension).
    Raises: ValueError for nu <= 0, tau < 0, NaN in U, a non-uniform grid, shapes that differ, an
        unknown domain, or a grid so coarse against sigma that resolving it would take more than
        ``max_nodes`` nodes (use ``hopf_lax``, the nu -> 0 limit, or a larger nu*tau then).
    Shapes: U (..., n), grid (n,) -> (..., n). NumPy in -> NumPy out; torch in -> torch out.
    """
    return _coarse_grain(U, grid, nu, tau, domain, max_nodes, want="u")


def burgers_velocity(U, grid, nu: float, tau: float, domain: str = "line", *, max_nodes: int = 1 << 17):
    r"""v^nu(tau, s) = d/ds u^nu(tau, s), the exact Hopf-Cole solution of viscous Burgers.

    Equation: v_tau + v v_s = (nu/2) v_ss, v(0, .) = U'. Hopf-Cole: v = -nu w_s / w, which for the
        Gaussian kernel is the softmax-weighted mean  v = E_p[s - y] / tau,
        p(y) ~ exp(-U(y)/nu - (s - y)^2 / (2 nu tau))  (over images y + kL on the circle).
    Scheme, order, raises, shapes: as ``local_entropy`` (same nodes, same weights). At tau = 0 the
        kernel is a delta and v = U' is taken by 6th-order finite differences of the samples.
    """
    return _coarse_grain(U, grid, nu, tau, domain, max_nodes, want="v")


def burgers_slope(U, grid, nu: float, tau: float, domain: str = "line", *, max_nodes: int = 1 << 17):
    r"""d/ds v^nu(tau, s) = u_ss, exact for the quadrature: (1 - Var_p(s - y) / (nu tau)) / tau.

    The steepness of the viscous shock layer (Fig. 3 of Miyagawa 2026 reports max |v_s|).
    Scheme, order, raises, shapes: as ``burgers_velocity``; tau = 0 gives U'' by finite differences.
    """
    return _coarse_grain(U, grid, nu, tau, domain, max_nodes, want="slope")


class HopfCole(NamedTuple):
    """The three Hopf-Cole fields at one (nu, tau): local entropy, its velocity and slope."""

    u: Tensor | np.ndarray  # -nu log P_{nu tau} e^{-U/nu}
    v: Tensor | np.ndarray  # u_s
    slope: Tensor | np.ndarray  # u_ss = v_s


def hopf_cole(U, grid, nu: float, tau: float, domain: str = "line", *, max_nodes: int = 1 << 17) -> HopfCole:
    """``local_entropy``, ``burgers_velocity`` and ``burgers_slope`` from one pass (a third of the cost)."""
    U_t, grid_t, kind, domain, tau, h = _checked(U, grid, tau, domain)
    nu = check_positive(nu, "nu")
    fields = _fields(U_t, grid_t, nu, tau, domain, h, max_nodes, ("u", "v", "slope"))
    return HopfCole(*(kind.back(fields[w]) for w in ("u", "v", "slope")))


def hopf_lax(U, grid, tau: float, domain: str = "line"):
    r"""u^0(tau, s) = min_y U(y) + (s - y)^2 / (2 tau): the viscosity solution of u_tau + u_s^2/2 = 0.

    The nu -> 0 limit of ``local_entropy`` (Laplace's method: u^nu = u^0 + O(nu) where the minimiser
    is unique). Its derivative ``hopf_lax_velocity`` is the entropy solution of inviscid Burgers
    (Lax-Oleinik), shocks included.
    Scheme: minimum over the grid nodes (and their images on the circle), refined by the vertex of
        the parabola through the discrete minimiser and its two neighbours.
    Order: O(h^3) in the value for smooth U with a unique minimiser.
    Raises: ValueError for tau < 0, NaN in U, a non-uniform grid, shapes that differ, unknown domain.
    """
    return _hopf_lax(U, grid, tau, domain, want="u")


def hopf_lax_velocity(U, grid, tau: float, domain: str = "line"):
    r"""v^0(tau, s) = (s - y*(s)) / tau, y* the minimiser in ``hopf_lax``: inviscid Burgers' entropy solution."""
    return _hopf_lax(U, grid, tau, domain, want="v")


# --------------------------------------------------------------------------------------------
def _checked(U, grid, tau, domain):
    U_t, kind = as_tensor(U, "U")
    grid_t, _ = as_tensor(grid, "grid", device=U_t.device)
    domain = check_choice(domain, Domain, "domain")
    tau = check_positive(tau, "tau", allow_zero=True)
    h = uniform_step(grid_t)
    check_same_shape(U_t, grid_t, "U", "grid")
    check_finite(U_t, "U")
    return U_t, grid_t.to(torch.float64), kind, domain, tau, h


def _interpolate_cubic(U: Tensor, h: float, refine: int, periodic: bool) -> Tensor:
    """U at the nodes x_0 + j h / refine by 4-point Lagrange cubics (O(h^4)); the grid values are kept."""
    n = U.shape[-1]
    count = n * refine if periodic else (n - 1) * refine + 1
    j = torch.arange(count, device=U.device)
    base = torch.div(j, refine, rounding_mode="floor")
    t = ((j - base * refine).to(U.dtype) / refine).unsqueeze(0)  # in [0, 1)
    if not periodic:
        base = base.clamp(1, n - 3)  # keep the 4-point stencil inside; t then runs over [-1, 2]
        t = ((j.to(U.dtype) / refine) - base.to(U.dtype)).unsqueeze(0)
    idx = torch.stack([base - 1, base, base + 1, base + 2])
    idx = idx % n if periodic else idx
    f = U[..., idx]  # (..., 4, count)
    weights = torch.stack([
        -t * (t - 1) * (t - 2) / 6,
        (t + 1) * (t - 1) * (t - 2) / 2,
        -(t + 1) * t * (t - 2) / 2,
        (t + 1) * t * (t - 1) / 6,
    ]).squeeze(1)
    return (f * weights).sum(-2)


def _nodes(U: Tensor, grid: Tensor, h: float, sigma: float, tau: float, domain: Domain, max_nodes: int):
    """Quadrature nodes y, U(y) and the spacing h_q, resolving the integrand's width."""
    n = grid.numel()
    periodic = domain is Domain.CIRCLE
    if n >= 4:
        curvature = finite_difference(U, grid, derivative=2, accuracy=2, periodic=periodic)
        stiff = float(curvature.clamp(min=0).max()) * tau
    else:
        stiff = 0.0
    width = sigma / math.sqrt(1.0 + stiff)
    refine = max(1, math.ceil(h / (width / 2)))
    h_q = h / refine
    period = n * h
    reach = 10 * sigma
    extra = 0 if periodic else math.ceil(reach / h_q)
    count = (n * refine if periodic else (n - 1) * refine + 1) + 2 * extra
    images = 2 * math.ceil(0.5 + reach / period) + 1 if periodic and sigma <= 2 * period else 1
    if count * images > max_nodes:
        # say which term made the count: the refinement a coarse grid needs, the grid itself, or the
        # padding of 10 sqrt(nu tau) beyond it
        own, padding = count - 2 * extra, 2 * extra
        if refine > 1 and own >= padding:
            why = (f"grid step h={h:.3g} does not resolve the kernel width sqrt(nu*tau)={sigma:.3g}"
                   f"{f' (narrowed to {width:.3g} by U curvature)' if stiff > 0 else ''}, so each step is cut in "
                   f"{refine}; pass a finer grid, a larger nu*tau or max_nodes, or use hopf_lax for the nu -> 0 limit")
        elif own >= padding:
            why = f"the grid itself has {n} points; pass a larger max_nodes"
        else:
            why = (f"the kernel reaches 10 sqrt(nu*tau) = {reach:.3g} beyond the grid ({padding} padding nodes); pass a "
                   "smaller nu*tau or a larger max_nodes")
        raise ValueError(f"the quadrature would need {count * images} nodes > max_nodes={max_nodes}: {why}")
    Uy = _interpolate_cubic(U, h, refine, periodic) if refine > 1 and n >= 4 else U
    if refine > 1 and n < 4:
        raise ValueError(f"grid: at least 4 points are needed to refine the quadrature, got {n}")
    y = grid[0] + h_q * torch.arange(Uy.shape[-1], device=U.device, dtype=torch.float64)
    if extra:
        left = grid[0] - h_q * torch.arange(extra, 0, -1, device=U.device, dtype=torch.float64)
        right = y[-1] + h_q * torch.arange(1, extra + 1, device=U.device, dtype=torch.float64)
        y = torch.cat([left, y, right])
        Uy = torch.cat([Uy[..., :1].expand(*Uy.shape[:-1], extra), Uy, Uy[..., -1:].expand(*Uy.shape[:-1], extra)], -1)
    if periodic and images > 1:
        k = torch.arange(-(images // 2), images // 2 + 1, device=U.device, dtype=torch.float64)
        y = (y.unsqueeze(0) + period * k.unsqueeze(1)).reshape(-1)
        Uy = Uy.repeat(*([1] * (Uy.ndim - 1)), images)
    return y, Uy, h_q


def _coarse_grain(U, grid, nu, tau, domain, max_nodes, want: str):
    U_t, grid_t, kind, domain, tau, h = _checked(U, grid, tau, domain)
    nu = check_positive(nu, "nu")
    fields = _fields(U_t, grid_t, nu, tau, domain, h, max_nodes, (want,))
    return kind.back(fields[want])


def _fields(U_t: Tensor, grid_t: Tensor, nu: float, tau: float, domain: Domain, h: float, max_nodes: int,
            wants: tuple[str, ...]) -> dict[str, Tensor]:
    """u, v and/or v_s (as asked in ``wants``) from one pass of softmax weights over the nodes."""
    if tau == 0:
        periodic = domain is Domain.CIRCLE
        grid_u = grid_t.to(U_t.dtype)
        exact = {"u": lambda: U_t.clone(),
                 "v": lambda: finite_difference(U_t, grid_u, derivative=1, periodic=periodic),
                 "slope": lambda: finite_difference(U_t, grid_u, derivative=2, periodic=periodic)}
        return {w: exact[w]() for w in wants}
    out_dtype = U_t.dtype
    U64 = U_t.to(torch.float64)
    sigma = math.sqrt(nu * tau)
    period = grid_t.numel() * h
    if domain is Domain.CIRCLE and sigma > 2 * period:
        return {w: _uniform_kernel(U64, nu, period, w).to(out_dtype) for w in wants}
    y, Uy, h_q = _nodes(U64, grid_t, h, sigma, tau, domain, max_nodes)
    batch_shape = U64.shape[:-1]
    Uy = Uy.reshape(-1, Uy.shape[-1])
    log_norm = math.log(h_q) - 0.5 * math.log(2 * math.pi * sigma**2)
    # Nodes farther than `reach` from s weigh < e^{-50} of the node at s itself:
    # z_y - z_s <= (max U - min U)/nu - d^2/(2 sigma^2) + 1/8 (h_q <= sigma/2).
    reach = math.sqrt(2 * tau * float(U64.max() - U64.min()) + 101 * sigma**2)
    rows = max(16, _CHUNK_ENTRIES // y.numel())
    results = {w: [] for w in wants}
    for b in range(Uy.shape[0]):
        pieces = {w: [] for w in wants}
        for start in range(0, grid_t.numel(), rows):
            s = grid_t[start:start + rows]
            lo, hi = torch.searchsorted(y, torch.stack([s[0] - reach, s[-1] + reach])).tolist()
            lo, hi = max(lo - 1, 0), min(hi + 1, y.numel())
            d = s.unsqueeze(1) - y[lo:hi].unsqueeze(0)  # (rows, nodes in reach)
            z = -Uy[b, lo:hi] / nu - d * d / (2 * sigma**2)
            lse = torch.logsumexp(z, dim=1)
            if "u" in wants:
                pieces["u"].append(-nu * (lse + log_norm))
            if "v" not in wants and "slope" not in wants:
                continue
            p = torch.exp(z - lse.unsqueeze(1))
            mean_d = (p * d).sum(1)
            if "v" in wants:
                pieces["v"].append(mean_d / tau)
            if "slope" in wants:
                centred = d - mean_d.unsqueeze(1)
                var_d = (p * centred * centred).sum(1)
                pieces["slope"].append((1.0 - var_d / sigma**2) / tau)
        for w in wants:
            results[w].append(torch.cat(pieces[w]))
    return {w: torch.stack(results[w]).reshape(*batch_shape, grid_t.numel()).to(out_dtype) for w in wants}


def _uniform_kernel(U64: Tensor, nu: float, period: float, want: str) -> Tensor:
    """sigma > 2L: the wrapped kernel is 1/L to 1e-34, so u is the constant -nu log mean e^{-U/nu}."""
    if want != "u":
        return torch.zeros_like(U64)
    n = U64.shape[-1]
    u = -nu * (torch.logsumexp(-U64 / nu, dim=-1) - math.log(n))
    return u.unsqueeze(-1).expand_as(U64).clone()


def _hopf_lax(U, grid, tau, domain, want: str):
    U_t, grid_t, kind, domain, tau, h = _checked(U, grid, tau, domain)
    if tau == 0:
        if want == "u":
            return kind.back(U_t.clone())
        return kind.back(finite_difference(U_t, grid_t.to(U_t.dtype), derivative=1,
                                           periodic=domain is Domain.CIRCLE))
    U64 = U_t.to(torch.float64)
    n = grid_t.numel()
    y, Uy = grid_t, U64
    if domain is Domain.CIRCLE:  # the minimising image is within half a period; 3 copies suffice
        period = n * h
        y = torch.cat([grid_t - period, grid_t, grid_t + period])
        Uy = torch.cat([U64, U64, U64], -1)
    batch_shape = U64.shape[:-1]
    Uy = Uy.reshape(-1, Uy.shape[-1])
    rows = max(1, _CHUNK_ENTRIES // y.numel())
    results = []
    for b in range(Uy.shape[0]):
        pieces = []
        for start in range(0, n, rows):
            s = grid_t[start:start + rows].unsqueeze(1)
            objective = Uy[b] + (s - y) ** 2 / (2 * tau)
            j = objective.argmin(1).clamp(1, y.numel() - 2)
            f0, f1, f2 = (objective.gather(1, (j + k).unsqueeze(1)).squeeze(1) for k in (-1, 0, 1))
            curvature = f0 - 2 * f1 + f2
            # vertex of the parabola through the three values; guard flat or concave triples
            shift = torch.where(curvature > 0, 0.5 * (f0 - f2) / curvature.clamp(min=1e-300), torch.zeros_like(f1))
            shift = shift.clamp(-1, 1)
            value = f1 - 0.25 * (f0 - f2) * shift
            y_star = y[j] + shift * h
            pieces.append(value if want == "u" else (s.squeeze(1) - y_star) / tau)
        results.append(torch.cat(pieces))
    out = torch.stack(results).reshape(*batch_shape, n)
    return kind.back(out.to(U_t.dtype))
