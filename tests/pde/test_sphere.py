"""Heat kernel and local entropy on S^1, S^2, S^3 (shockwatch.pde.sphere) against independent truths."""

import math

import mpmath as mp
import numpy as np
import pytest
import torch
from scipy import special

from shockwatch.pde.sphere import log_heat_kernel_sphere, sphere_grid, sphere_local_entropy

AREA = {1: 2 * math.pi, 2: 4 * math.pi, 3: 2 * math.pi**2}
SHELL = {1: 2.0, 2: 2 * math.pi, 3: 4 * math.pi}  # area of S^{d-1}: dvol = SHELL sin^{d-1}(gamma) dgamma


def eigen_series(cos, t, dim, terms=400):
    """p_t by its eigen-series with SciPy's orthogonal polynomials (T_l, P_l, U_l), float64; trusted
    where it is positive and its cancellation small (t >= ~0.3 away from the antipode)."""
    x = np.asarray(cos, dtype=np.float64)
    shape = {1: lambda l: (2 - (l == 0)) * special.eval_chebyt(l, x),
             2: lambda l: (2 * l + 1) * special.eval_legendre(l, x),
             3: lambda l: (l + 1) * special.eval_chebyu(l, x)}[dim]
    total = np.zeros_like(x)
    for l in range(terms):
        decay = math.exp(-l * (l + dim - 1) * t / 2)
        if decay < 1e-30:
            break
        total += decay * shape(l)
    return total / AREA[dim]


def mp_log_legendre(cos, t, dps):
    """log p_t on S^2 by the Legendre series in mpmath at ``dps`` digits, enough to outlast the
    cancellation: exact to float64 however deep the tail."""
    with mp.workdps(dps):
        x, t = mp.mpf(cos), mp.mpf(t)
        terms = int(math.sqrt(2 * (dps * 2.31 + 60) / float(t))) + 20
        prev, cur, total = mp.mpf(1), x, 1 + 3 * mp.exp(-t) * x
        for l in range(2, terms):
            prev, cur = cur, ((2 * l - 1) * x * cur - (l - 1) * prev) / l
            total += (2 * l + 1) * mp.exp(-l * (l + 1) * t / 2) * cur
        return float(mp.log(total / (4 * mp.pi)))


def radial_integral(f, t):
    """\\int_0^pi f(gamma) dgamma by Gauss-Legendre on [0, 15 sqrt t] and the rest (f decays as e^{-gamma^2/2t})."""
    x, w = np.polynomial.legendre.leggauss(200)
    cut = min(math.pi, 15 * math.sqrt(t))
    total = 0.0
    for lo, hi in ((0.0, cut), (cut, math.pi)):
        if hi > lo:
            g = lo + (hi - lo) * (x + 1) / 2
            total += (hi - lo) / 2 * float(np.sum(w * f(g)))
    return total


# ----------------------------------------------------------------------------------- kernel
@pytest.mark.parametrize("dim", [1, 2, 3])
@pytest.mark.parametrize("t", [1e-6, 1e-4, 1e-2, 0.3, 0.99, 1.0, 5.0, 100.0])
def test_kernel_integrates_to_one(dim, t):
    """Truth: the definition, \\int_{S^d} p_t dvol = 1, by 400-node Gauss-Legendre in gamma."""
    def density(g):
        return SHELL[dim] * np.sin(g) ** (dim - 1) * np.exp(log_heat_kernel_sphere(np.cos(g), t, dim))
    assert abs(radial_integral(density, t) - 1) < 1e-10


@pytest.mark.parametrize("t", [1e-6, 1e-3, 0.1, 1.0, 7.0, 100.0])
def test_circle_kernel_is_the_wrapped_gaussian(t):
    """Truth: (2 pi t)^{-1/2} sum_{|k| <= 40} e^{-(gamma + 2 pi k)^2/(2t)} in mpmath at 60 digits."""
    gammas = [0.0, 1e-3, 0.5, 2.0, math.pi - 1e-4, math.pi]
    got = log_heat_kernel_sphere(np.cos(gammas), t, 1)
    with mp.workdps(60):
        for g, value in zip(gammas, got):
            gm = mp.acos(mp.mpf(math.cos(g)))  # the angle of the rounded cosine the kernel was given
            images = sum(mp.exp(-(gm + 2 * mp.pi * k) ** 2 / (2 * t)) for k in range(-40, 41))
            ref = mp.log(images / mp.sqrt(2 * mp.pi * t))
            assert abs(value - float(ref)) <= 1e-13 * max(1.0, abs(float(ref))), (g, value, float(ref))


@pytest.mark.parametrize("dim", [2, 3])
@pytest.mark.parametrize("t", [0.5, 0.7, 0.9, 0.999])
def test_small_t_formula_matches_eigen_series_below_the_switch(dim, t):
    """Truth: the Gegenbauer eigen-series by SciPy's P_l / U_l in float64, positive and accurate to
    ~1e-13 for t >= 0.5; the kernel uses its image/integral formula here (t < 1)."""
    g = np.concatenate([np.linspace(0, math.pi, 401), math.pi - np.logspace(-10, -1, 10)])
    got = log_heat_kernel_sphere(np.cos(g), t, dim)
    assert np.abs(got - np.log(eigen_series(np.cos(g), t, dim))).max() < 1e-12


@pytest.mark.parametrize("dim", [2, 3])
def test_kernel_is_continuous_across_the_switch(dim):
    """Truth: p_t is smooth in t, so log p at t = 1 extrapolated linearly from below (t = 1 - d, 1 - 2d,
    the image/integral formula) and from above (the eigen-series) must agree to O(d^2) + round-off."""
    c = np.cos(np.concatenate([np.linspace(0, math.pi, 301), math.pi - np.logspace(-9, -1, 9)]))
    d = 1e-6
    below = 2 * log_heat_kernel_sphere(c, 1 - d, dim) - log_heat_kernel_sphere(c, 1 - 2 * d, dim)
    above = 2 * log_heat_kernel_sphere(c, 1 + d, dim) - log_heat_kernel_sphere(c, 1 + 2 * d, dim)
    assert np.abs(above - below).max() < 1e-11


@pytest.mark.parametrize("t,gamma", [(0.005, math.pi), (0.005, math.pi - 1e-6), (0.005, math.pi - 0.05),
                                     (0.005, 2.0), (0.02, math.pi), (0.2, math.pi)])
def test_s2_antipodal_tail_against_mpmath_legendre(t, gamma):
    """Truth: the Legendre series in mpmath with enough digits (up to ~470) to survive the
    cancellation: p_0.005(pi) ~ e^{-987}, far below float64's range, yet log p is exact."""
    cos = math.cos(gamma) if gamma != math.pi else -1.0
    ref = mp_log_legendre(cos, t, dps=int(math.pi**2 / (2 * t) / 2.3) + 40)
    got = float(log_heat_kernel_sphere(np.array([cos]), t, 2)[0])
    assert abs(got - ref) <= 1e-13 * max(1.0, abs(ref)), (got, ref)


@pytest.mark.parametrize("t,gamma", [(1e-4, 0.5), (1e-4, math.pi - 0.3), (1e-4, math.pi - 0.01), (1e-6, 1.0),
                                     (1e-6, 0.01), (1e-3, 3.1)])
def test_s2_small_t_against_mpmath_textbook_integral(t, gamma):
    """Truth: McKean's integral in its textbook form, sqrt(2) e^{t/8} (2 pi t)^{-3/2}
    sum_k (-1)^k \\int_gamma^pi (phi + 2 pi k) e^{-(phi+2 pi k)^2/2t} / sqrt(cos gamma - cos phi) dphi,
    by mpmath's Gauss-Legendre at 40 digits, phi = gamma + s^2 taking the endpoint singularity and
    cuts at multiples of the k = 0 image's width sqrt(t/gamma) in s (at t = 1e-4 it agrees with the
    600-digit Legendre series to 1e-14; tanh-sinh without the dense cuts was off by 1e-11)."""
    with mp.workdps(40):
        g, tm = mp.acos(mp.mpf(math.cos(gamma))), mp.mpf(t)  # the angle of the cosine the kernel gets

        def f(s):
            phi = g + s * s
            images = sum((-1) ** k * (phi + 2 * mp.pi * k) * mp.exp(-(phi + 2 * mp.pi * k) ** 2 / (2 * tm))
                         for k in (-2, -1, 0, 1))
            return 2 * s * images / mp.sqrt(2 * mp.sin(g + s * s / 2) * mp.sin(s * s / 2))

        width, end = mp.sqrt(tm / g), mp.sqrt(mp.pi - g)
        cuts = [mp.mpf(0)] + [c * width for c in (0.5, 1, 1.5, 2, 3, 4, 6, 8, 12) if c * width < end] + [end]
        integral = mp.quad(f, cuts, method="gauss-legendre")
        ref = float(mp.log(mp.sqrt(2) * mp.exp(tm / 8) * (2 * mp.pi * tm) ** -1.5 * integral))
    got = float(log_heat_kernel_sphere(np.array([math.cos(gamma)]), t, 2)[0])
    assert abs(got - ref) <= 1e-13 * max(1.0, abs(ref)), (got, ref)


@pytest.mark.parametrize("dim,n,times", [
    (1, 512, [(0.05, 0.1), (0.4, 0.9), (2.0, 3.0)]),
    (2, 48, [(0.05, 0.1), (0.4, 0.9), (2.0, 3.0)]),
])
def test_semigroup_property(dim, n, times):
    """Truth: Chapman-Kolmogorov, p_{t+s}(x.z) = \\int p_t(x.y) p_s(y.z) dy, the integral by the
    sphere_grid quadrature (exact for band-limited integrands; the kernels decay like e^{-l^2 t/2})."""
    y, w = sphere_grid(n, dim)
    y, w = y.numpy(), w.numpy()
    rng = np.random.default_rng(3)
    x = rng.normal(size=dim + 1)
    x /= np.linalg.norm(x)
    z = rng.normal(size=(6, dim + 1))
    z /= np.linalg.norm(z, axis=1, keepdims=True)
    z[0] = -x  # the antipode of x, where the semigroup's tail is thinnest
    for t, s in times:
        left = log_heat_kernel_sphere(y @ x, t, dim)[None, :] + log_heat_kernel_sphere(z @ y.T, s, dim)
        conv = np.log(np.sum(w * np.exp(left), axis=1))
        direct = log_heat_kernel_sphere(np.clip(z @ x, -1, 1), t + s, dim)
        assert np.abs(conv - direct).max() < 1e-10, (t, s, conv - direct)


@pytest.mark.parametrize("dim", [1, 2, 3])
@pytest.mark.parametrize("t", [0.05, 0.5, 3.0])
def test_heat_equation(dim, t):
    """Truth: dp/dt = (1/2)(p'' + (d-1) cot(gamma) p'), checked on l = log p as
    l_t = (1/2)(l'' + l'^2 + (d-1) cot(gamma) l') with 4th-order central differences in t and gamma."""
    g = np.linspace(0.3, 2.8, 11)

    def ell(gamma, tt):
        return log_heat_kernel_sphere(np.cos(gamma), tt, dim)

    h, k = 1e-3, 1e-4 * t
    a2, a1, a0, b1, b2 = (ell(g + j * h, t) for j in (-2, -1, 0, 1, 2))
    d1 = (a2 - 8 * a1 + 8 * b1 - b2) / (12 * h)
    d2 = (-a2 + 16 * a1 - 30 * a0 + 16 * b1 - b2) / (12 * h**2)
    s2, s1, r1, r2 = (ell(g, t + j * k) for j in (-2, -1, 1, 2))
    dt = (s2 - 8 * s1 + 8 * r1 - r2) / (12 * k)
    rhs = 0.5 * (d2 + d1**2 + (dim - 1) * d1 / np.tan(g))
    assert np.abs(dt - rhs).max() < 1e-6 * max(1.0, np.abs(dt).max())


def test_kernel_returns_the_input_kind_and_dtype():
    """Truth: the interop contract (NumPy -> NumPy, torch -> torch, float32 kept) and the float64 values."""
    c64 = np.cos(np.linspace(0, math.pi, 7))
    ref = log_heat_kernel_sphere(c64, 0.1, 2)
    out32 = log_heat_kernel_sphere(c64.astype(np.float32), 0.1, 2)
    assert isinstance(out32, np.ndarray) and out32.dtype == np.float32
    out_t = log_heat_kernel_sphere(torch.tensor(c64), 0.1, 2)
    assert isinstance(out_t, torch.Tensor) and out_t.dtype == torch.float64
    assert np.allclose(out_t.numpy(), ref, rtol=0, atol=0)
    assert np.allclose(out32, ref, rtol=1e-6, atol=0)
    assert log_heat_kernel_sphere(np.zeros((2, 0)), 0.1, 2).shape == (2, 0)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_matches_cpu():
    """Truth: the CPU float64 result; the same code on the GPU returns the same numbers on the GPU."""
    c = torch.cos(torch.linspace(0, math.pi, 101, dtype=torch.float64))
    P, W = sphere_grid(40, 2)
    U = P[:, 0] + P[:, 2] ** 2
    for t in (1e-3, 0.5, 2.0):
        got = log_heat_kernel_sphere(c.cuda(), t, 2)
        assert got.is_cuda and torch.allclose(got.cpu(), log_heat_kernel_sphere(c, t, 2), rtol=1e-13, atol=0)
    u = sphere_local_entropy(U.cuda(), P.cuda(), 0.1, 0.5)
    assert u.is_cuda and torch.allclose(u.cpu(), sphere_local_entropy(U, P, 0.1, 0.5), rtol=0, atol=1e-12)


# ----------------------------------------------------------------------------------- grid
@pytest.mark.parametrize("dim,n,f,exact", [
    (1, 9, lambda p: p[:, 0] ** 8, 2 * math.pi * 35 / 128),  # \int cos^8 = 2 pi (8 choose 4)/2^8
    (2, 5, lambda p: p[:, 2] ** 8 + p[:, 0] ** 2 * p[:, 1] ** 2, 4 * math.pi / 9 + 4 * math.pi / 15),
    (3, 5, lambda p: p[:, 0] ** 4 + p[:, 3] ** 2, 2 * math.pi**2 / 8 + 2 * math.pi**2 / 4),
])
def test_grid_integrates_polynomials_exactly(dim, n, f, exact):
    """Truth: closed-form moments of the uniform measure on S^d (x_i^2 averages 1/(d+1), x^4 3/((d+1)(d+3)),
    x^8 on S^2 is 1/9, x^2 y^2 on S^2 is 1/15); the rules are exact for these degrees."""
    p, w = sphere_grid(n, dim)
    assert p.shape == (len(w), dim + 1)
    assert torch.allclose(p.norm(dim=1), torch.ones(len(w), dtype=torch.float64), atol=1e-15)
    assert abs(float(w.sum()) - AREA[dim]) < 1e-13
    assert abs(float((w * f(p)).sum()) - exact) < 1e-13


# ----------------------------------------------------------------------------------- local entropy
@pytest.mark.parametrize("dim,n", [(1, 64), (2, 24), (3, 10)])
def test_constant_potential_is_unchanged(dim, n):
    """Truth: P_t 1 = 1 (the heat flow conserves mass), so u = U for constant U (t = 0.5: S^2 reads
    its table, S^3 its image sum)."""
    P, _ = sphere_grid(n, dim)
    U = torch.full((len(P),), 0.7, dtype=torch.float64)
    assert (sphere_local_entropy(U, P, 0.5, 1.0, query=P[::5]) - 0.7).abs().max() < 1e-12


@pytest.mark.parametrize("dim,nu,tau", [(1, 1.0, 0.5), (1, 0.5, 4.0), (2, 1.0, 0.5), (2, 0.5, 4.0)])
def test_large_nu_matches_the_direct_sum(dim, nu, tau):
    """Truth: -nu log sum_j w_j p_t(q.y_j) e^{-U_j/nu} formed directly in float64 (no logs; fine at
    nu ~ 1), with p_t from the SciPy eigen-series; t = nu tau = 0.5 reads S^2's table, 2 the series."""
    P, W = sphere_grid(256 if dim == 1 else 32, dim)
    P, W = P.numpy(), W.numpy()
    U = np.sin(3 * P[:, 0]) + P[:, 1] ** 2
    query = np.random.default_rng(0).normal(size=(25, dim + 1))
    query /= np.linalg.norm(query, axis=1, keepdims=True)
    got = sphere_local_entropy(U, P, nu, tau, query=query)
    kernel = eigen_series(np.clip(query @ P.T, -1, 1), nu * tau, dim)
    direct = -nu * np.log(np.sum(W * kernel * np.exp(-U / nu), axis=1))
    assert isinstance(got, np.ndarray) and np.abs(got - direct).max() < 1e-10


@pytest.mark.parametrize("dim,n,tau", [(1, 2048, 1.0), (2, 130, 25.0)])
def test_small_nu_is_finite_where_the_direct_sum_underflows(dim, n, tau):
    """Truth: e^{-U/nu} = 0 in float64 for U in [1, 2] at nu = 1e-4, so the direct formula is -log 0;
    the log-domain result must be finite and obey min U <= u <= max U (P_t is an average)."""
    nu = 1e-4
    P, W = sphere_grid(n, dim)
    U = 1.5 + 0.5 * torch.sin(2 * P[:, 0] + P[:, 1])
    with np.errstate(divide="ignore"):
        assert not np.any(np.exp(-U.numpy() / nu)) and np.isinf(-np.log(np.exp(-U.numpy() / nu).sum()))
    query = P[:: max(1, len(P) // 40)]
    u = sphere_local_entropy(U, P, nu, tau, query=query)
    assert torch.isfinite(u).all()
    assert float(u.min()) >= float(U.min()) - 1e-12 and float(u.max()) <= float(U.max()) + 1e-12


def hopf_lax(U_fn, query, fine, tau):
    """min_y U(y) + d(q, y)^2/(2 tau) over a much finer node set, d = arccos(q.y)."""
    d = np.arccos(np.clip(query @ fine.T, -1, 1))
    return np.min(U_fn(fine)[None, :] + d**2 / (2 * tau), axis=1)


@pytest.mark.parametrize("dim,n,fine_n,nus", [(1, 4096, 1 << 17, [1e-2, 1e-3, 1e-4]),
                                              (2, 210, 500, [1e-2, 3e-3, 1e-3])])
def test_hopf_lax_limit(dim, n, fine_n, nus):
    """Truth: Hopf-Lax, u^nu -> min_y U(y) + d(q,y)^2/(2 tau) as nu -> 0 (Laplace's method), with
    error O(nu): error/nu must stay put as nu falls 10- or 100-fold. The min is over a much finer grid."""
    tau = 1.0

    def U_fn(p):
        return np.cos(3 * p[:, 0]) + 0.5 * p[:, 1] * p[:, 0] + 0.3 * p[:, -1]

    P, _ = sphere_grid(n, dim)
    query = P.numpy()[np.random.default_rng(1).choice(len(P), 12, replace=False)]
    truth = hopf_lax(U_fn, query, sphere_grid(fine_n, dim)[0].numpy(), tau)
    U = U_fn(P.numpy())
    errors = [np.abs(sphere_local_entropy(U, P.numpy(), nu, tau, query=query) - truth).max() for nu in nus]
    ratios = [e / nu for e, nu in zip(errors, nus)]
    # measured: error/nu = 0.91 (S^1) and 1.3 (S^2) at every nu, i.e. the error is c(q) nu
    assert max(ratios) < 2.0 and min(ratios) > 0.8 * max(ratios), (errors, ratios)


def test_tau_zero_returns_U_exactly():
    """Truth: u(0, .) = U (P_0 is the identity), bit for bit, in U's own kind and dtype."""
    P, _ = sphere_grid(16, 2)
    U = (P[:, 0] + P[:, 2] ** 3).numpy().astype(np.float32)
    u = sphere_local_entropy(U, P.numpy(), 0.3, 0.0)
    assert isinstance(u, np.ndarray) and u.dtype == np.float32 and np.array_equal(u, U)


def test_float32_in_float32_out_agrees_with_float64():
    """Truth: the float64 run with explicit weights; float32 inputs are computed in float64 and
    rounded once, so the two agree to float32's resolution."""
    P, W = sphere_grid(16, 2)
    U = (P[:, 0] + P[:, 2] ** 3).numpy()
    u64 = sphere_local_entropy(U, P.numpy(), 0.5, 1.0, weights=W.numpy())
    u32 = sphere_local_entropy(U.astype(np.float32), P.numpy().astype(np.float32), 0.5, 1.0)
    assert u32.dtype == np.float32 and np.abs(u32 - u64).max() < 1e-6


def test_weights_none_takes_any_equispaced_circle_and_nothing_else():
    """Truth: an equispaced circle in any rotation and order has the trapezoid weights 2 pi/m (u = U
    for constant U); 50 steps of 0.3 rad wrap unevenly and must be refused."""
    ang = 2 * np.pi * np.arange(50) / 50 + 0.1
    ring = np.stack([np.cos(ang), np.sin(ang)], 1)[::-1]
    assert np.abs(sphere_local_entropy(np.ones(50), ring, 1.0, 1.0) - 1).max() < 1e-12
    uneven = np.stack([np.cos(0.3 * np.arange(50)), np.sin(0.3 * np.arange(50))], 1)
    with pytest.raises(ValueError, match="equispaced"):
        sphere_local_entropy(np.zeros(50), uneven, 1.0, 1.0)


def _bad_calls():
    P, W = sphere_grid(16, 2)
    U = torch.zeros(len(P), dtype=torch.float64)
    off = P.clone()
    off[3] *= 1.01
    nan_U = U.clone()
    nan_U[5] = math.nan
    return [
        (lambda: sphere_local_entropy(U, P, 0.0, 1.0), "nu must be finite and > 0"),
        (lambda: sphere_local_entropy(U, P, 0.1, -1.0), "tau must be finite and >= 0"),
        (lambda: sphere_local_entropy(U, off, 0.1, 1.0), "unit vectors"),
        (lambda: sphere_local_entropy(nan_U, P, 0.1, 1.0), "non-finite"),
        (lambda: sphere_local_entropy(U[:-1], P, 0.1, 1.0), "U must be"),
        (lambda: sphere_local_entropy(U, P, 0.1, 1.0, weights=W[:-1]), "one per node"),
        (lambda: sphere_local_entropy(U, P, 0.1, 1.0, weights=W / 2), "sum to the area"),
        (lambda: sphere_local_entropy(U, P, 0.1, 1.0, query=sphere_grid(8, 1)[0]), "coordinates"),
        (lambda: sphere_local_entropy(U, P, 0.1, 0.0, query=P[:3]), "tau = 0 with query"),
        (lambda: sphere_local_entropy(U, P, 1e-3, 1.0), r"grid too coarse.*sphere_grid\(n >= 199, 2\)"),
        (lambda: sphere_local_entropy(U[:-2], P[:-2], 0.1, 1.0), "weights=None needs the nodes of sphere_grid"),
        (lambda: sphere_local_entropy(torch.zeros(5), torch.eye(5), 0.1, 1.0), "dim must be 1, 2 or 3"),
        (lambda: log_heat_kernel_sphere(np.zeros(3), 0.0, 2), "t must be finite and > 0"),
        (lambda: log_heat_kernel_sphere(np.zeros(3), 0.1, 4), "dim must be 1, 2 or 3"),
        (lambda: log_heat_kernel_sphere(np.array([1.5]), 0.1, 2), r"lies in \[-1, 1\]"),
        (lambda: log_heat_kernel_sphere(np.array([math.nan]), 0.1, 2), "non-finite"),
        (lambda: sphere_grid(0, 2), "n must be an integer >= 1"),
        (lambda: sphere_grid(4, 0), "dim must be 1, 2 or 3"),
    ]


@pytest.mark.parametrize("call,message", _bad_calls(), ids=[message for _, message in _bad_calls()])
def test_bad_input_raises_one_clear_value_error(call, message):
    """Truth: the documented contract; each message names the value and what is accepted."""
    with pytest.raises(ValueError, match=message):
        call()
