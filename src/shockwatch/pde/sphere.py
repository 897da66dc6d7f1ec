r"""Heat kernel of P_t = e^{(t/2) Delta} on the unit spheres S^1, S^2, S^3, and local entropy on them.

Miyagawa 2026, §2.3 and Thm 3.1 on the quotient directions s_j = u_j/|u_j| of ReLU units:

    u^nu(tau, q) = -nu log (P_{nu tau} e^{-U/nu})(q) = -nu log \int p_{nu tau}(q.y) e^{-U(y)/nu} dvol(y),

solves u_tau + |grad u|^2/2 = (nu/2) Delta u on the sphere. e^{-U/nu} underflows float64 once
U/nu > ~745, and a truncated eigen-series of p_t goes negative in its tails, so everything here is
a logarithm: log p_t from formulas whose terms are positive (S^3 near the pole subtracts terms
e^{-pi^2/t}-smaller than the one it keeps), and u^nu as one logsumexp over quadrature nodes.

Kernels, with gamma the geodesic angle, a = pi - gamma (kept separately: it carries the antipode's
accuracy) and |S^d| the area (2 pi, 4 pi, 2 pi^2):
    S^1  (2 pi t)^{-1/2} sum_k e^{-(gamma + 2 pi k)^2/(2t)}                          (every t)
    S^2  McKean's integral, t < 1: 2 e^{t/8} (2 pi t)^{-3/2} \int_0^{pi/2} G(phi)/sin(phi/2) dpsi,
         G(phi) = sum_k (-1)^k (phi + 2 pi k) e^{-(phi + 2 pi k)^2/(2t)},
         cos(phi/2) = cos(gamma/2) cos(psi)  (the Mehler-Dirichlet formula for P_l, summed by Poisson;
         this substitution removes the 1/sqrt(cos gamma - cos phi) singularity of the textbook form)
    S^3  t < 1: e^{t/2} (2 pi t)^{-3/2} sum_k (gamma + 2 pi k)/sin(gamma) e^{-(gamma + 2 pi k)^2/(2t)}
    S^d  t >= 1: |S^d|^{-1} sum_l e^{-l(l+d-1)t/2} (2l+d-1)/(d-1) C_l^{(d-1)/2}(cos gamma)   (d = 2, 3)
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

from ._interop import as_tensor, check_finite, check_positive

__all__ = ["log_heat_kernel_sphere", "sphere_local_entropy", "sphere_grid"]

_DIMS = (1, 2, 3)
_AREA = {1: 2 * math.pi, 2: 4 * math.pi, 3: 2 * math.pi**2}
# Below t = 1 the images/integral, from t = 1 the eigen-series. At t = 1 they agree to 1.8e-15 in
# log p for every gamma, S^2 and S^3 alike, and to 9e-15 on [0.7, 1.2] (measured, 2001 angles plus
# 50 within 1e-12..1 of the antipode). Below t ~ 0.5 the series loses digits to cancellation at the
# antipode (1e-10 at t = 0.3); above t ~ 2 the images miss their first dropped pair.
_SWITCH_T = 1.0
_DROP = 50.0  # an integrand layer ends where its exponent has fallen by 50 (e^-50 = 2e-22)
_GL = np.polynomial.legendre.leggauss(24)  # per piece: 2e-14 relative to 200 nodes; 20 gives 6e-13
_STENCIL = np.arange(-3, 5)  # degree-7 local polynomials of the S^2 table
_TABLE_STEP = 0.01  # in v = log(a + t/pi); table error <= 6e-14 relative in log p (measured)
_CHUNK = 1 << 22  # entries per (queries x nodes) block: 32 MiB of float64 per temporary


def log_heat_kernel_sphere(cos_angle, t: float, dim: int):
    r"""log p_t(gamma): the log of the heat kernel of P_t = e^{(t/2) Delta} on S^dim, gamma = arccos(cos_angle).

    Equation: d p/dt = (1/2) Delta p, p_0 = delta; Delta the Laplace-Beltrami operator of the
        round unit sphere, so p_t is Brownian motion run for time t ("variance" t), normalised by
        \int_{S^dim} p_t dvol = 1. Radially, Delta p = p'' + (dim - 1) cot(gamma) p'.
    Scheme: S^1 the wrapped Gaussian, summed over images by logsumexp (exact for every t).
        t < 1: S^2 McKean's integral (module docstring) by Gauss-Legendre (24 nodes on each of 3
        pieces, cut where the pole and antipode layers of the integrand have decayed by e^{-50});
        S^3 the closed image sum, images paired about 0 near the pole and about pi near the
        antipode so that no pair cancels. t >= 1: the Gegenbauer eigen-series, positive there.
    Accuracy: |error of log p| <= 1e-13 max(1, |log p|) for t in [1e-6, 100] and every gamma,
        antipode included; the max(1, |log p|) is float64's own rounding of log p ~ -gamma^2/(2t).
        Measured: S^2 <= 4e-15 of that against the Legendre series in mpmath (up to 2200 digits,
        t >= 1e-3) and <= 1e-14 against mpmath quadrature of the textbook integral (t = 1e-4,
        1e-6); the S^2 quadrature agrees with a 200-node one to 2e-14 for t in [1e-8, 1); S^1 and
        S^3 <= 5e-16 against mpmath. Exact for the cos_angle given: near gamma = 0 or pi a
        rounded cosine moves gamma by ~1e-8, which is the caller's.
    Cost: S^2 with t < 1 evaluates 72 integrand nodes per point (~10 us); the rest a few dozen flops.
    Raises: ValueError for t <= 0 (t = 0 is a delta), dim not in (1, 2, 3), cos_angle with NaN or
        outside [-1, 1] by more than 1e-6.
    Shapes: cos_angle any shape -> same shape. NumPy in -> NumPy out; torch in -> torch out on the
        input's device; float32 in -> float32 out (computed in float64).
    """
    c, kind = as_tensor(cos_angle, "cos_angle")
    t = check_positive(t, "t")
    _check_dim(dim)
    check_finite(c, "cos_angle")
    if c.numel() and float(c.abs().max()) > 1 + 1e-6:
        raise ValueError(f"cos_angle: values up to {float(c.abs().max()):.9g} in magnitude; a cosine lies in [-1, 1]")
    c64 = c.detach().to(torch.float64).clamp(-1, 1).reshape(-1)
    kernel = _kernel(t, dim, c64.device, bulk=False)
    rows = max(1, _CHUNK // (3 * len(_GL[0])))
    out = torch.cat([kernel(torch.arccos(b), torch.arccos(-b)) for b in c64.split(rows)]) if c64.numel() else c64
    return kind.back(out.reshape(c.shape).to(c.dtype))


def sphere_grid(n: int, dim: int, *, dtype: torch.dtype = torch.float64, device=None) -> tuple[Tensor, Tensor]:
    r"""(points, weights): a product quadrature on S^dim, weights summing to its area.

    Scheme: S^1 n equispaced angles 2 pi j/n, weights 2 pi/n (trapezoid: exact for trigonometric
        polynomials of degree < n). S^2 n Gauss-Legendre nodes in cos(theta) x 2n equispaced phi:
        2 n^2 points, exact for spherical harmonics of degree < 2n. S^3 n Gauss-Chebyshev (second
        kind) nodes in cos(chi) x the S^2 grid: 2 n^3 points, exact to degree < 2n in chi too.
    Order: spectral for smooth integrands; node spacing about pi/n (2 pi/n on S^1).
    Raises: ValueError for n < 1 or dim not in (1, 2, 3).
    Shapes: points (m, dim+1) unit vectors, weights (m,); torch tensors (``.numpy()`` for NumPy).
    """
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise ValueError(f"n must be an integer >= 1, got {n!r}")
    _check_dim(dim)
    n = int(n)
    if dim == 1:
        ang = 2 * math.pi * torch.arange(n, dtype=torch.float64) / n
        pts, w = torch.stack([ang.cos(), ang.sin()], 1), torch.full((n,), 2 * math.pi / n, dtype=torch.float64)
    elif dim == 2:
        x, wx = (torch.from_numpy(v) for v in np.polynomial.legendre.leggauss(n))
        ring, wr = sphere_grid(2 * n, 1)
        r = torch.sqrt((1 - x * x).clamp(min=0))
        pts = torch.cat([r[:, None, None] * ring[None], x[:, None, None].expand(n, 2 * n, 1)], 2).reshape(-1, 3)
        w = (wx[:, None] * wr[None]).reshape(-1)
    else:
        chi = math.pi * torch.arange(1, n + 1, dtype=torch.float64) / (n + 1)
        wc = math.pi / (n + 1) * chi.sin() ** 2  # \int f(x) sqrt(1 - x^2) dx, x = cos(chi)
        s2, w2 = sphere_grid(n, 2)
        pts = torch.cat([chi.cos()[:, None, None].expand(n, len(w2), 1), chi.sin()[:, None, None] * s2[None]], 2)
        pts, w = pts.reshape(-1, 4), (wc[:, None] * w2[None]).reshape(-1)
    return pts.to(dtype=dtype, device=device), w.to(dtype=dtype, device=device)


def sphere_local_entropy(U, points, nu: float, tau: float, weights=None, query=None):
    r"""u^nu(tau, q) = -nu log \int_{S^d} p_{nu tau}(q.y) e^{-U(y)/nu} dvol(y) at ``query`` (Thm 3.1).

    Equation: u_tau + |grad u|^2/2 = (nu/2) Delta u on S^d (d = points.shape[1] - 1), u(0) = U;
        as nu -> 0 it tends to Hopf-Lax, min_y U(y) + d(q, y)^2/(2 tau), d the geodesic distance.
    Scheme: the quadrature sum_j w_j p_t(q.y_j) e^{-U_j/nu}, t = nu tau, as one logsumexp of
        log w_j - U_j/nu + log p_t (``log_heat_kernel_sphere``; e^{-U/nu} is never formed), in
        blocks of <= 2^22 (query, node) pairs. Angles come from chords |q -+ y|, accurate at 0 and
        pi. On S^2 below t = 1 log p_t is read from a table of the exact integral in
        v = log(pi - gamma + t/pi) with degree-7 local polynomials (<= 6e-14 relative, measured).
    Order: that of the node quadrature on the integrand p_t e^{-U/nu}: spectral for smooth U on
        ``sphere_grid`` nodes once their spacing is <= sqrt(nu tau)/2 (required, see Raises). Only
        sigma = sqrt(nu tau) is checked: where tau U'' >> 1 the integrand is narrower,
        sigma/sqrt(1 + tau U''), and the nodes must resolve that too (measured on S^1 with
        tau U'' ~ 9, nu = 1e-4: at 2 nodes per width, |u - Hopf-Lax|/nu is still constant to 0.2%).
    Raises: ValueError for nu <= 0, tau < 0, NaN or inf in U, points or query that are not unit
        vectors (tolerance 1e-6) or not of shape (m, d+1) with d in (1, 2, 3), U of a shape other
        than (m,), weights that are negative or do not sum to |S^d| (1e-6 relative), weights=None
        with nodes not from ``sphere_grid`` (S^1: any equispaced circle), query given with
        tau = 0, and a grid whose spacing (max w_j)^(1/d) exceeds sqrt(nu tau)/2.
    Cost: m q kernel evaluations, about 1e7 (query, node) pairs per second on one CPU core (measured
        on S^1, S^2, S^3), memory bounded by the blocks.
    Shapes: U (m,), points (m, d+1), weights (m,), query (q, d+1) -> (q,) (default query = the
        nodes). tau = 0 returns U itself (a copy). NumPy in -> NumPy out, torch -> torch on U's
        device, in U's dtype (computed in float64).
    """
    U_t, kind = as_tensor(U, "U")
    Y = _unit_rows(points, "points", U_t.device)
    dim = Y.shape[1] - 1
    _check_dim(dim)
    if tuple(U_t.shape) != (Y.shape[0],):
        raise ValueError(f"U has shape {tuple(U_t.shape)} but points has {Y.shape[0]} rows; U must be ({Y.shape[0]},)")
    check_finite(U_t, "U")
    nu = check_positive(nu, "nu")
    tau = check_positive(tau, "tau", allow_zero=True)
    w = _weights(weights, Y, dim)
    if tau == 0:
        if query is not None:
            raise ValueError("tau = 0 with query points: U is known only at the nodes; pass query=None or tau > 0")
        return kind.back(U_t.clone())
    Q = Y if query is None else _unit_rows(query, "query", U_t.device)
    if Q.shape[1] != Y.shape[1]:
        raise ValueError(f"query has {Q.shape[1]} coordinates but points have {Y.shape[1]}; they must match")
    t = nu * tau
    h, sigma = float(w.max()) ** (1 / dim), math.sqrt(t)
    if h > sigma / 2:
        need = math.ceil(4 * math.pi / sigma) if dim == 1 else math.ceil(2 * math.pi / sigma)
        hint = f"{need} equispaced points" if dim == 1 else f"sphere_grid(n >= {need}, {dim})"
        raise ValueError(
            f"grid too coarse: node spacing ~{h:.3g} exceeds half the kernel width sqrt(nu*tau)/2 = "
            f"{sigma / 2:.3g}; use {hint} or more nodes, or a larger nu*tau"
        )
    U64 = U_t.detach().to(torch.float64)
    u_min = U64.min()
    # relative to min U: -nu * lse is then the O(nu log) correction, not a difference of U/nu ~ 1e4 terms
    z = torch.log(w) - (U64 - u_min) / nu
    kernel = _kernel(t, dim, Y.device, bulk=True)
    cols = min(Y.shape[0], _CHUNK)
    rows = max(1, _CHUNK // cols)
    out = torch.empty(Q.shape[0], dtype=torch.float64, device=Y.device)
    for r0 in range(0, Q.shape[0], rows):
        lse = torch.full((min(rows, Q.shape[0] - r0),), -math.inf, dtype=torch.float64, device=Y.device)
        for c0 in range(0, Y.shape[0], cols):
            gamma, anti = _pair_angles(Q[r0:r0 + rows], Y[c0:c0 + cols])
            lse = torch.logaddexp(lse, torch.logsumexp(z[c0:c0 + cols] + kernel(gamma, anti), 1))
        out[r0:r0 + rows] = u_min - nu * lse
    return kind.back(out.to(U_t.dtype))


# --------------------------------------------------------------------------------------------
def _check_dim(dim) -> None:
    if isinstance(dim, bool) or dim not in _DIMS:
        raise ValueError(f"dim must be 1, 2 or 3 (S^1, S^2, S^3), got {dim!r}")


def _unit_rows(x, name: str, device) -> Tensor:
    """``x`` as float64 rows of unit length on ``device`` (renormalised after the 1e-6 check)."""
    X, _ = as_tensor(x, name, device=device)
    X = X.detach().to(torch.float64)
    if X.ndim != 2 or X.shape[1] < 2 or X.shape[0] < 1:
        raise ValueError(f"{name}: expected shape (m, d+1) with d in (1, 2, 3), got {tuple(X.shape)}")
    check_finite(X, name)
    norm = X.norm(dim=1)
    worst = float((norm - 1).abs().max())
    if worst > 1e-6:
        raise ValueError(f"{name}: rows must be unit vectors (|norm - 1| <= 1e-6); worst is off by {worst:.3g}")
    return X / norm[:, None]


def _weights(weights, Y: Tensor, dim: int) -> Tensor:
    m, area = Y.shape[0], _AREA[dim]
    if weights is not None:
        w, _ = as_tensor(weights, "weights", device=Y.device)
        w = w.detach().to(torch.float64)
        if tuple(w.shape) != (m,):
            raise ValueError(f"weights has shape {tuple(w.shape)}; it must be ({m},), one per node")
        check_finite(w, "weights")
        if bool((w < 0).any()) or abs(float(w.sum()) / area - 1) > 1e-6:
            raise ValueError(f"weights must be >= 0 and sum to the area {area:.12g} of S^{dim}; "
                             f"they sum to {float(w.sum()):.12g}")
        return w
    if dim == 1:  # any rotation and order of an equispaced circle
        ang = torch.sort(torch.atan2(Y[:, 1], Y[:, 0])).values
        gaps = torch.diff(torch.cat([ang, ang[:1] + 2 * math.pi]))
        if float((gaps - 2 * math.pi / m).abs().max()) <= 1e-6:
            return torch.full((m,), area / m, dtype=torch.float64, device=Y.device)
    else:
        n = round((m / 2) ** (1 / dim))  # sphere_grid(n, dim) has 2 n^dim nodes
        if 2 * n**dim == m:
            pts, w = sphere_grid(n, dim, device=Y.device)
            if float((pts - Y).abs().max()) <= 1e-6:
                return w
    raise ValueError(f"weights=None needs the nodes of sphere_grid(n, {dim}) in its order"
                     f"{' (or any equispaced circle)' if dim == 1 else ''}; pass quadrature weights for other nodes")


def _pair_angles(Q: Tensor, Y: Tensor) -> tuple[Tensor, Tensor]:
    """(gamma, pi - gamma) for all pairs: 2 asin(chord/2) of the nearer of y and -y, pi minus it for the other."""
    minus = sum((Q[:, None, k] - Y[None, :, k]) ** 2 for k in range(Q.shape[1]))
    plus = sum((Q[:, None, k] + Y[None, :, k]) ** 2 for k in range(Q.shape[1]))
    # asin is exact near 0 but loses half the digits near 1: use it on the shorter chord only
    near = 2 * torch.asin((torch.minimum(minus, plus).sqrt() / 2).clamp(max=1))
    pole = minus <= plus
    return torch.where(pole, near, math.pi - near), torch.where(pole, math.pi - near, near)


def _kernel(t: float, dim: int, device, bulk: bool):
    """log p_t as a function of (gamma, pi - gamma); ``bulk`` swaps S^2's quadrature for its table."""
    if dim == 1:
        return lambda g, a: _log_circle(g, a, t)
    if t >= _SWITCH_T:
        return lambda g, a: _log_series(torch.cos(g), t, dim)
    if dim == 3:
        return lambda g, a: _log_s3_images(g, a, t)
    return _s2_table(t, device) if bulk else (lambda g, a: _log_s2_integral(g, a, t))


def _log_circle(gamma: Tensor, anti: Tensor, t: float) -> Tensor:
    """log p_t on S^1: the wrapped Gaussian, images out to where they fall below e^{-DROP}."""
    # images at distances gamma + 2 pi k (k >= 0) and (2k - 1) pi + anti (k >= 1): all positive
    far = math.ceil(math.sqrt(2 * t * _DROP) / (2 * math.pi)) + 1
    lse = -gamma**2 / (2 * t)
    for k in range(far):
        for d in ((gamma + 2 * math.pi * (k + 1)), (2 * k + 1) * math.pi + anti):
            lse = torch.logaddexp(lse, -d * d / (2 * t))
    return lse - 0.5 * math.log(2 * math.pi * t)


def _log_series(x: Tensor, t: float, dim: int) -> Tensor:
    """log p_t on S^dim (dim >= 2) by the Gegenbauer eigen-series in x = cos(gamma), to e^{-DROP}."""
    lam = (dim - 1) / 2
    prev, cur = torch.ones_like(x), 2 * lam * x  # Gegenbauer C_0, C_1
    total = torch.ones_like(x)
    for l in range(1, math.ceil(math.sqrt(2 * _DROP / t)) + 4):
        total = total + math.exp(-l * (l + dim - 1) * t / 2) * (2 * l + dim - 1) / (dim - 1) * cur
        prev, cur = cur, (2 * x * (l + lam) * cur - (l + 2 * lam - 1) * prev) / (l + 1)
    return torch.log(total) - math.log(_AREA[dim])


def _log_pair(psi: float, x: Tensor, t: float) -> Tensor:
    r"""log{[(psi - x) e^{-(psi-x)^2/2t} - (psi + x) e^{-(psi+x)^2/2t}] / x}: two mirror images at once.

    Written as e^{-(psi-x)^2/2t} [(psi + x)(2 psi/t) E(2 psi x/t) - 2], E(z) = (1 - e^{-z})/z, so it
    neither cancels as x -> 0 nor overflows for psi x >> t; positive while psi (psi + x) > t.
    """
    z = 2 * psi * x / t
    e = torch.where(z > 0, -torch.expm1(-z) / z.clamp(min=1e-300), torch.ones_like(z))
    return -(psi - x) ** 2 / (2 * t) + torch.log((psi + x) * (2 * psi / t) * e - 2)


def _log_sub(pos: Tensor, neg: Tensor) -> Tensor:
    """log(e^pos - e^neg) for neg < pos."""
    return pos + torch.log1p(-torch.exp(neg - pos))


def _log_sinc(x: Tensor) -> Tensor:
    return torch.log(torch.sinc(x / math.pi))  # log(sin x / x), x in [0, pi)


def _log_s2_integral(gamma: Tensor, anti: Tensor, t: float) -> Tensor:
    """log p_t on S^2 for t < 1 by McKean's integral (module docstring); gamma, anti of shape (N,)."""
    g, a = gamma[:, None], anti[:, None]
    cos_h, sin_h = torch.sin(a / 2), torch.sin(g / 2)  # cos(gamma/2), sin(gamma/2)
    # Pole layer: e^{-phi^2/2t} falls by e^-DROP at phi1; antipode layer: the k = -1 image falls
    # by e^-DROP at pi - b2. Cut psi there, so Gauss-Legendre sees at most that much variation.
    phi1 = torch.sqrt(g**2 + 2 * t * _DROP)
    half_gap = t * _DROP / (phi1 + g)  # (phi1 - gamma)/2 without cancellation
    s1 = torch.sqrt(torch.sin(half_gap) * torch.sin((phi1 + g) / 2)) / cos_h
    psi1 = torch.where(phi1 >= math.pi, math.pi / 2, torch.asin(s1.clamp(max=1)))
    b2 = min(2 * t * _DROP / (math.sqrt(math.pi**2 + 2 * t * _DROP) + math.pi), math.pi)
    psi2 = torch.acos((math.sin(b2 / 2) / cos_h).clamp(max=1))
    edges = torch.cat([torch.zeros_like(g), torch.minimum(psi1, psi2), torch.maximum(psi1, psi2),
                       torch.full_like(g, math.pi / 2)], 1)
    x, wx = (torch.as_tensor(v, device=g.device) for v in _GL)
    half = ((edges[:, 1:] - edges[:, :-1]) / 2).clamp(min=0)[..., None]
    psi = ((edges[:, 1:] + edges[:, :-1])[..., None] / 2 + half * x).flatten(1)
    log_w = torch.log(half * wx).flatten(1)  # -inf on empty pieces
    half_phi = torch.atan2(torch.sqrt(sin_h**2 + (cos_h * psi.sin()) ** 2), cos_h * psi.cos())
    phi = 2 * half_phi
    # G/phi: the k = 0 image and the (1, -1) pair, both positive; the (2, -2) pair is dropped, it is
    # below 3 e^{-4 pi^2/t} < 1e-16 of the rest for t < 1.
    log_g = torch.logaddexp(-phi**2 / (2 * t), _log_pair(2 * math.pi, phi, t))
    integrand = math.log(2) - _log_sinc(half_phi) + log_g  # log(G / sin(phi/2)), G = phi * (G/phi)
    return math.log(2) + t / 8 - 1.5 * math.log(2 * math.pi * t) + torch.logsumexp(log_w + integrand, 1)


def _log_s3_images(gamma: Tensor, anti: Tensor, t: float) -> Tensor:
    """log p_t on S^3 for t < 1 by the closed image sum (module docstring)."""
    # sum_k (gamma + 2 pi k) e^{...} is odd about 0 and about pi: pair the images about 0 near the
    # pole (k = 0 alone is positive, the pairs are e^{-pi^2/t}-small negatives) and about pi near
    # the antipode (all pairs positive); either pairing alone cancels catastrophically at the other end.
    g, a = gamma.clamp(max=math.pi / 2), anti.clamp(max=math.pi / 2)
    pole = _log_sub(-g**2 / (2 * t), torch.logaddexp(_log_pair(2 * math.pi, g, t), _log_pair(4 * math.pi, g, t)))
    anti_pole = torch.logaddexp(_log_pair(math.pi, a, t), _log_pair(3 * math.pi, a, t))
    log_h = torch.where(gamma <= math.pi / 2, pole - _log_sinc(g), anti_pole - _log_sinc(a))
    return t / 2 - 1.5 * math.log(2 * math.pi * t) + log_h


def _s2_table(t: float, device):
    r"""log p_t on S^2 (t < 1) for bulk use: r = log p + gamma^2/(2t) tabulated in v = log(a + t/pi).

    r is smooth in v on O(1) scales uniformly in t: the antipodal focusing lives at a ~ t/pi and
    the 1/2 log(gamma/sin gamma) growth at a >> t/pi, both O(1) wide in v. Beyond both ends the
    table continues with the even extensions of log p in gamma and in a (p is smooth on the sphere),
    so every interval gets a centred 8-point stencil.
    """
    v0, v1 = math.log(t / math.pi), math.log(math.pi + t / math.pi)
    count = math.ceil((v1 - v0) / _TABLE_STEP)
    h = (v1 - v0) / count
    pad = -int(_STENCIL[0])
    v = v0 + h * torch.arange(-pad, count + 1 + pad, dtype=torch.float64, device=device)
    a = torch.exp(v) - t / math.pi  # runs past [0, pi] by the pads
    g = math.pi - a
    g_in, a_in = g.abs(), a.abs()  # folded back into [0, pi]: the even extensions
    g_in, a_in = torch.minimum(g_in, 2 * math.pi - g_in), torch.minimum(a_in, 2 * math.pi - a_in)
    r = _log_s2_integral(g_in, a_in, t) + g**2 / (2 * t)
    # monomial coefficients (in x = (v - v_i)/h) of the Lagrange interpolant on the stencil
    others = [np.delete(_STENCIL, i) for i in range(len(_STENCIL))]
    basis = np.stack([np.poly(o)[::-1] / np.prod(j - o) for j, o in zip(_STENCIL, others)])
    idx = torch.arange(count, device=device)[:, None] + pad + torch.as_tensor(_STENCIL, device=device)
    coef = (r[idx] @ torch.as_tensor(basis, device=device)).T.contiguous()  # (8, count)

    def log_p(gamma: Tensor, anti: Tensor) -> Tensor:
        s = (torch.log(anti + t / math.pi) - v0) / h
        i = s.floor().clamp(0, count - 1).long()
        x = s - i
        acc = coef[-1][i]
        for c in coef.flip(0)[1:]:
            acc = acc * x + c[i]
        return acc - gamma**2 / (2 * t)

    return log_p
