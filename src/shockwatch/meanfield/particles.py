r"""Particles of a wide two-layer ReLU network pushed forward to the rescaling quotient (Miyagawa 2026, §5.5).

The network (mean-field scaling, bias folded into the input, x~ = (x, 1) in R^D, D = d + 1)

    f(x) = (1/m) sum_j a_j relu(u_j . x~)

is the empirical measure mu = (1/m) sum_j delta_{theta_j} of its particles theta_j = (a_j, u_j) in
R x R^D. Each unit's positive rescaling (a, u) -> (a / r, r u), r > 0, leaves f unchanged; its
quotient is M = R x S^{D-1} with the chart pi(a, u) = (gamma, s) = (a |u|, u / |u|) (the paper's
§3.1 coordinates, as ``quotient.relu_unit_coordinates``), and nu = pi_# mu.

Mean-field gradient flow: d theta_j / dt = V[mu](theta_j) = -m grad_{theta_j} L with
L = (1/2n) sum_i (f(x_i) - y_i)^2 (gradient descent with step eta is its Euler scheme, t = eta n):

    V[mu](a, u) = (G(u), a H(u)),    rho_i = f(x_i) - y_i,
    G(u) = -(1/n) sum_i rho_i relu(u . x~_i)          (degree 1 in u),
    H(u) = -(1/n) sum_i rho_i 1[u . x~_i > 0] x~_i     (degree 0 in u; u . H(u) = G(u)).

The derivative of pi applied to a tangent vector (da, du) is

    D pi (da, du) = (|u| da + a s . du,  (I - s s^T) du / |u|),

so the pushed velocity of a particle is (with P_s = I - s s^T)

    d gamma = (a^2 + |u|^2) G(s),    d s = (a / |u|) P_s H(s).

It depends on the representative, not on (gamma, s) alone: with the unit's rescale charge
q = a^2 - |u|^2 (Kunin et al. 2021; conserved by the flow), a^2 + |u|^2 = sqrt(q^2 + 4 gamma^2) and
a / |u| = sign(gamma) (q + sqrt(q^2 + 4 gamma^2)) / (2 |gamma|). So Assumption 5.3 holds on every
section of fixed charge, in particular on the balanced one (q = 0, |a| = |u|):

    V-bar[nu](gamma, s) = (2 |gamma| G(s), sign(gamma) P_s H(s)),

and not for arbitrary representatives: the representative (a / r, r u) of a balanced unit has
d gamma(r) = ((r^2 + r^-2) / 2) d gamma(1) and d s(r) = r^-2 d s(1) (``velocity_factors``).
G and H need only f, which needs only nu: f(x) = int gamma relu(s . x~) d nu.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor

__all__ = ["QuotientTestFunction", "balance", "charge", "default_test_functions", "integrals", "lift", "output",
           "particle_velocity", "pushed_velocity", "pushforward", "quotient_velocity", "rebalance",
           "transport_residual", "velocity_factors", "weak_velocity"]


def _check_tensor(value: object, name: str, ndim: int) -> Tensor:
    if not isinstance(value, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(value).__name__}")
    if not value.is_floating_point():
        raise ValueError(f"{name} must be a floating-point tensor (float64 for reference runs), got {value.dtype}")
    if value.ndim != ndim:
        raise ValueError(f"{name} must have {ndim} dimension(s), got shape {tuple(value.shape)}")
    if not bool(torch.isfinite(value).all()):
        raise ValueError(f"{name} contains NaN or inf; only finite values are accepted")
    return value


def _check_particles(a: Tensor, u: Tensor, names: tuple[str, str] = ("a", "u")) -> None:
    _check_tensor(a, names[0], 1)
    _check_tensor(u, names[1], 2)
    if a.shape[0] < 1:
        raise ValueError(f"need at least one particle (m >= 1), got m = {a.shape[0]}")
    if u.shape[0] != a.shape[0] or u.shape[1] < 1:
        raise ValueError(f"{names[1]} must have shape (m, D) = ({a.shape[0]}, D >= 1) to match {names[0]}, "
                         f"got {tuple(u.shape)}")


def _check_data(x_tilde: Tensor, y: Tensor, dim: int) -> None:
    _check_tensor(x_tilde, "x_tilde", 2)
    _check_tensor(y, "y", 1)
    if x_tilde.shape[0] < 1 or x_tilde.shape[1] != dim or y.shape[0] != x_tilde.shape[0]:
        raise ValueError(f"need x_tilde of shape (n >= 1, {dim}) and y of shape (n,), got "
                         f"{tuple(x_tilde.shape)} and {tuple(y.shape)}")


def _norms(u: Tensor, name: str = "u") -> Tensor:
    norm = u.norm(dim=1)
    if bool((norm == 0).any()):
        j = int(torch.nonzero(norm == 0)[0])
        raise ValueError(f"{name}[{j}] = 0: that unit lies on the singular stratum where s = u/|u| is undefined; "
                         f"every |u_j| must be > 0")
    return norm


def lift(x: Tensor) -> Tensor:
    """x~ = (x, 1): inputs of shape (n, d) or (n,) with a constant 1 appended, shape (n, d + 1)."""
    if not isinstance(x, Tensor):
        raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
    x = x.unsqueeze(1) if x.ndim == 1 else x
    _check_tensor(x, "x", 2)
    return torch.cat([x, torch.ones_like(x[:, :1])], dim=1)


def output(a: Tensor, u: Tensor, x_tilde: Tensor) -> Tensor:
    r"""f(x_i) = (1/m) sum_j a_j relu(u_j . x~_i), shape (n,).

    Rescaling-invariant, so ``output(gamma, s, x_tilde)`` gives the same f from the quotient
    coordinates alone: f = int gamma relu(s . x~) d nu.
    Shapes: a (m,), u (m, D), x_tilde (n, D). Raises: ValueError for mismatched shapes or NaN.
    """
    _check_particles(a, u)
    _check_tensor(x_tilde, "x_tilde", 2)
    if x_tilde.shape[1] != u.shape[1]:
        raise ValueError(f"x_tilde must have {u.shape[1]} columns to match u, got {tuple(x_tilde.shape)}")
    return torch.relu(x_tilde @ u.T) @ a / a.shape[0]


def pushforward(a: Tensor, u: Tensor) -> tuple[Tensor, Tensor]:
    r"""(gamma, s) = (a |u|, u / |u|): each particle's point on the quotient M = R x S^{D-1}.

    Equation: pi(a, u) = (a |u|, u / |u|); pi(a / r, r u) = pi(a, u) for every r > 0.
    Shapes: a (m,), u (m, D) -> gamma (m,), s (m, D).
    Raises: ValueError for mismatched shapes, m < 1, NaN, or a unit with u = 0.
    """
    _check_particles(a, u)
    norm = _norms(u)
    return a * norm, u / norm.unsqueeze(1)


def pushed_velocity(a: Tensor, u: Tensor, da: Tensor, du: Tensor) -> tuple[Tensor, Tensor]:
    r"""(d gamma, d s) = D pi_(a, u) (da, du): a tangent vector carried exactly to the quotient.

    Equation: d gamma = |u| da + a s . du,  d s = (I - s s^T) du / |u|  (d s is tangent to the sphere).
    For the flow's velocity (da, du) = V[mu](a, u) this is the integrand D pi V of Thm 5.4.
    Shapes: a (m,), u (m, D), da (m,), du (m, D).
    Raises: ValueError for mismatched shapes, NaN, or a unit with u = 0.
    """
    _check_particles(a, u)
    _check_particles(da, du, ("da", "du"))
    if da.shape != a.shape or du.shape != u.shape:
        raise ValueError(f"the velocity must have the particles' shapes {tuple(a.shape)}, {tuple(u.shape)}, "
                         f"got {tuple(da.shape)}, {tuple(du.shape)}")
    norm = _norms(u)
    s = u / norm.unsqueeze(1)
    radial = (s * du).sum(1)
    return norm * da + a * radial, (du - radial.unsqueeze(1) * s) / norm.unsqueeze(1)


def _positive_factors(r: Tensor | float, m: int, like: Tensor) -> Tensor:
    r = torch.as_tensor(r, dtype=like.dtype, device=like.device)
    if r.ndim == 0:
        r = r.expand(m)
    if r.shape != (m,):
        raise ValueError(f"r must be a positive number or a tensor of shape ({m},), got shape {tuple(r.shape)}")
    if not bool(torch.isfinite(r).all()) or not bool((r > 0).all()):
        raise ValueError(f"every rescaling factor r_j must be finite and > 0, got min {float(r.min()):.3g}")
    return r


def rebalance(a: Tensor, u: Tensor, r: Tensor | float) -> tuple[Tensor, Tensor]:
    r"""(a / r, r u): another representative of every unit's orbit (the same f and the same pushforward).

    Shapes: a (m,), u (m, D), r a number or (m,). Raises: ValueError for r <= 0, NaN or mismatched shapes.
    """
    _check_particles(a, u)
    r = _positive_factors(r, a.shape[0], a)
    return a / r, u * r.unsqueeze(1)


def balance(a: Tensor, u: Tensor) -> tuple[Tensor, Tensor]:
    r"""The balanced representative of each unit's orbit: |a'| = |u'| = sqrt(|a| |u|), charge 0.

    Equation: r = sqrt(|a| / |u|), (a', u') = (a / r, r u).
    Raises: ValueError for a unit with a = 0 or u = 0 (singular: its orbit has no balanced point
    other than the origin), mismatched shapes or NaN.
    """
    _check_particles(a, u)
    norm = _norms(u)
    if bool((a == 0).any()):
        raise ValueError(f"a[{int(torch.nonzero(a == 0)[0])}] = 0: balance needs every a_j != 0")
    return rebalance(a, u, (a.abs() / norm).sqrt())


def charge(a: Tensor, u: Tensor) -> Tensor:
    """q_j = a_j^2 - |u_j|^2, the rescale charge of each unit (conserved by gradient flow), shape (m,)."""
    _check_particles(a, u)
    return a.square() - u.square().sum(1)


def velocity_factors(a: Tensor, u: Tensor) -> tuple[Tensor, Tensor]:
    r"""(c_gamma, c_s): the pushed flow velocity at (a, u) over that at its orbit's balanced representative.

    Equation: c_gamma = (a^2 + |u|^2) / (2 |a| |u|) >= 1,  c_s = |a| / |u|; for (a / r, r u) from a
    balanced unit: c_gamma = (r^2 + r^-2) / 2, c_s = r^-2 (module docstring: d gamma = (a^2 + |u|^2) G(s),
    d s = (a / |u|) P_s H(s), with G, H functions of (nu, s) only).
    Raises: ValueError for a unit with a = 0 or u = 0, mismatched shapes or NaN.
    """
    _check_particles(a, u)
    norm = _norms(u)
    if bool((a == 0).any()):
        raise ValueError(f"a[{int(torch.nonzero(a == 0)[0])}] = 0: velocity_factors needs every a_j != 0")
    return (a.square() + norm.square()) / (2 * a.abs() * norm), a.abs() / norm


def _residual_fields(s: Tensor, rho: Tensor, x_tilde: Tensor) -> tuple[Tensor, Tensor]:
    """G(s) (m,) and H(s) (m, D) of the module docstring for residuals rho (n,)."""
    pre = s @ x_tilde.T  # (m, n)
    n = x_tilde.shape[0]
    return -(torch.relu(pre) @ rho) / n, -((pre > 0).to(rho.dtype) * rho) @ x_tilde / n


def particle_velocity(a: Tensor, u: Tensor, x_tilde: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
    r"""V[mu](theta_j) = -m grad_{theta_j} L: each particle's mean-field gradient-flow velocity (da, du).

    Equation: L = (1/2n) sum_i (f(x_i) - y_i)^2, da_j = G(u_j), du_j = a_j H(u_j) (module docstring;
    relu'(0) = 0, as in autograd). Gradient descent with step eta: theta <- theta + eta V.
    Shapes: a (m,), u (m, D), x_tilde (n, D), y (n,). Raises: ValueError for mismatched shapes or NaN.
    """
    f = output(a, u, x_tilde)
    _check_data(x_tilde, y, u.shape[1])
    g, h = _residual_fields(u, f - y, x_tilde)
    return g, a.unsqueeze(1) * h


def quotient_velocity(gamma: Tensor, s: Tensor, x_tilde: Tensor, y: Tensor,
                      charge: Tensor | None = None) -> tuple[Tensor, Tensor]:
    r"""V-bar[nu](gamma_j, s_j): the pushed flow velocity computed from the quotient measure alone.

    Equation: with S = sqrt(q^2 + 4 gamma^2) and rho from f = int gamma relu(s . x~) d nu,
        d gamma = S G(s),  d s = sign(gamma) ((q + S) / (2 |gamma|)) P_s H(s),
    which is D pi V[mu] at every representative of charge q_j = a_j^2 - |u_j|^2. ``charge=None``
    is the balanced section q = 0: V-bar = (2 |gamma| G(s), sign(gamma) P_s H(s)) (Assumption 5.3
    holds there). (q + S) / (2|gamma|) is evaluated as 2|gamma| / (S - q) for q < 0 (no cancellation).
    Shapes: gamma (m,), s (m, D) unit rows, x_tilde (n, D), y (n,), charge (m,) or None.
    Raises: ValueError for mismatched shapes, NaN, rows of s off the unit sphere (by > 1e-8), or
    gamma_j = 0 with q_j > 0 (u = 0: singular).
    """
    _check_particles(gamma, s, ("gamma", "s"))
    _check_data(x_tilde, y, s.shape[1])
    if float((s.norm(dim=1) - 1).abs().max()) > 1e-8:
        raise ValueError("every row of s must be a unit vector (|s_j| = 1 to 1e-8); pass pushforward(a, u)[1]")
    q = torch.zeros_like(gamma) if charge is None else _check_tensor(charge, "charge", 1)
    if q.shape != gamma.shape:
        raise ValueError(f"charge must have shape {tuple(gamma.shape)}, got {tuple(q.shape)}")
    if bool(((gamma == 0) & (q > 0)).any()):
        raise ValueError("a unit with gamma = 0 and charge q > 0 has u = 0 (singular stratum); s is undefined there")
    g, h = _residual_fields(s, output(gamma, s, x_tilde) - y, x_tilde)
    total = torch.hypot(q, 2 * gamma)  # a^2 + |u|^2
    two_gamma = 2 * gamma.abs()
    safe = torch.where(two_gamma > 0, two_gamma, torch.ones_like(two_gamma))
    ratio = torch.where(q >= 0, (q + total) / safe, two_gamma / torch.where(total - q > 0, total - q, 1.0))
    ratio = torch.where((two_gamma == 0) & (q >= 0), torch.ones_like(ratio), ratio)  # q = gamma = 0: origin
    tangent = h - (s * h).sum(1, keepdim=True) * s
    return total * g, (torch.sign(gamma) * ratio).unsqueeze(1) * tangent


@dataclass(frozen=True)
class QuotientTestFunction:
    """A smooth phi(gamma, s) on M = R x S^{D-1} with its gradient (d phi / d gamma, ambient grad_s phi).

    ``value(gamma, s)`` -> (m,); ``gradient(gamma, s)`` -> ((m,), (m, D)). The ambient s-gradient is
    paired only with tangent vectors (``pushed_velocity`` returns those), so its normal part is harmless.
    """

    name: str
    value: Callable[[Tensor, Tensor], Tensor] = field(repr=False)
    gradient: Callable[[Tensor, Tensor], tuple[Tensor, Tensor]] = field(repr=False)


def default_test_functions(dim: int, width: float = 0.5,
                           centres: Sequence[Sequence[float]] | None = None) -> tuple[QuotientTestFunction, ...]:
    r"""gamma, gamma^2, tanh(gamma), gamma s_k (k < dim), and for each centre c a bump b_c(s) and gamma b_c(s).

    Bump: b_c(s) = exp((s . c - 1) / width^2) = exp(-|s - c|^2 / (2 width^2)) on the sphere; default
    centres: the 2 dim points +-e_k. ``dim`` = D, the length of s.
    Raises: ValueError for dim < 1, width <= 0, or centres not unit vectors of length dim.
    """
    if dim < 1 or not (width > 0 and math.isfinite(width)):
        raise ValueError(f"need dim >= 1 and a finite width > 0, got {dim=}, {width=}")
    eye = torch.eye(dim, dtype=torch.float64)
    cs = torch.cat([eye, -eye]) if centres is None else torch.as_tensor(centres, dtype=torch.float64)
    if cs.ndim != 2 or cs.shape[1] != dim or float((cs.norm(dim=1) - 1).abs().max()) > 1e-12:
        raise ValueError(f"centres must be unit vectors of length {dim}, got {cs.tolist()}")

    def zero_s(gamma: Tensor, s: Tensor) -> Tensor:
        return torch.zeros_like(s)

    funcs = [QuotientTestFunction("gamma", lambda g, s: g, lambda g, s: (torch.ones_like(g), zero_s(g, s))),
             QuotientTestFunction("gamma^2", lambda g, s: g.square(), lambda g, s: (2 * g, zero_s(g, s))),
             QuotientTestFunction("tanh(gamma)", lambda g, s: torch.tanh(g),
                                  lambda g, s: (1 - torch.tanh(g).square(), zero_s(g, s)))]
    for k in range(dim):
        def value(g: Tensor, s: Tensor, k: int = k) -> Tensor:
            return g * s[:, k]

        def grad(g: Tensor, s: Tensor, k: int = k) -> tuple[Tensor, Tensor]:
            ds = torch.zeros_like(s)
            ds[:, k] = g
            return s[:, k], ds

        funcs.append(QuotientTestFunction(f"gamma*s_{k}", value, grad))
    for i, c in enumerate(cs):
        def bump(s: Tensor, c: Tensor = c) -> Tensor:
            return torch.exp((s @ c.to(s) - 1) / width**2)

        def b_value(g: Tensor, s: Tensor, bump=bump) -> Tensor:
            return bump(s)

        def b_grad(g: Tensor, s: Tensor, bump=bump, c: Tensor = c) -> tuple[Tensor, Tensor]:
            b = bump(s)
            return torch.zeros_like(g), b.unsqueeze(1) * c.to(s) / width**2

        def gb_value(g: Tensor, s: Tensor, bump=bump) -> Tensor:
            return g * bump(s)

        def gb_grad(g: Tensor, s: Tensor, bump=bump, c: Tensor = c) -> tuple[Tensor, Tensor]:
            b = bump(s)
            return b, (g * b).unsqueeze(1) * c.to(s) / width**2

        funcs.append(QuotientTestFunction(f"bump_{i}(s)", b_value, b_grad))
        funcs.append(QuotientTestFunction(f"gamma*bump_{i}(s)", gb_value, gb_grad))
    return tuple(funcs)


def integrals(functions: Sequence[QuotientTestFunction], gamma: Tensor, s: Tensor) -> Tensor:
    r"""int phi_k d nu = (1/m) sum_j phi_k(gamma_j, s_j) for each test function, shape (k,)."""
    _check_particles(gamma, s, ("gamma", "s"))
    if not functions:
        raise ValueError("need at least one test function (e.g. default_test_functions(D))")
    return torch.stack([phi.value(gamma, s).mean() for phi in functions])


def weak_velocity(functions: Sequence[QuotientTestFunction], gamma: Tensor, s: Tensor, dgamma: Tensor,
                  ds: Tensor) -> Tensor:
    r"""int grad phi_k . V-bar d nu = (1/m) sum_j (d_gamma phi_k d gamma_j + grad_s phi_k . d s_j), shape (k,).

    The right side of Thm 5.4's weak transport equation; ``ds`` must be tangent to the sphere at s.
    Raises: ValueError for mismatched shapes or NaN.
    """
    _check_particles(gamma, s, ("gamma", "s"))
    _check_particles(dgamma, ds, ("dgamma", "ds"))
    if dgamma.shape != gamma.shape or ds.shape != s.shape:
        raise ValueError(f"the velocity must have the shapes of (gamma, s) {tuple(gamma.shape)}, {tuple(s.shape)}, "
                         f"got {tuple(dgamma.shape)}, {tuple(ds.shape)}")
    if not functions:
        raise ValueError("need at least one test function (e.g. default_test_functions(D))")
    rows = []
    for phi in functions:
        d_gamma, d_s = phi.gradient(gamma, s)
        rows.append((d_gamma * dgamma + (d_s * ds).sum(1)).mean())
    return torch.stack(rows)


def transport_residual(functions: Sequence[QuotientTestFunction], before: tuple[Tensor, Tensor],
                       after: tuple[Tensor, Tensor], velocity: tuple[Tensor, Tensor], eta: float) -> Tensor:
    r"""(int phi d nu_{n+1} - int phi d nu_n) / eta - int grad phi . V-bar d nu_n for each phi, shape (k,).

    Equation: Thm 5.4's weak transport equation d/dt int phi d nu_t = int grad phi . V-bar[nu_t] d nu_t,
    its time derivative replaced by a forward difference over one step of length eta; ``before``
    and ``after`` are (gamma, s) at steps n and n + 1, ``velocity`` (d gamma, d s) at step n.
    Order: for theta_{n+1} = theta_n + eta V and velocity = D pi V, the residual is
    (eta / 2) int D^2(phi o pi)[V, V] d mu + O(eta^2): first order in eta.
    Raises: ValueError for eta <= 0, mismatched shapes or NaN.
    """
    if not (eta > 0 and math.isfinite(eta)):
        raise ValueError(f"eta must be finite and > 0, got {eta}")
    lhs = (integrals(functions, *after) - integrals(functions, *before)) / eta
    return lhs - weak_velocity(functions, *before, *velocity)
