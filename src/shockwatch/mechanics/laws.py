r"""The laws of torch.optim.SGD for Noether charges, written once (Kunin et al. 2021, §4 and App. B).

Every law the tracker reports is one call of ``advance`` on a ``LawState``: vectorised NumPy over
*parts*, a part being either a whole symmetry group (every parameter of it in one param group: the
usual case) or one block of a symmetry whose parameters are updated by different rules
(``blocks.BlockLaws``). Per part, with sign s = +1 (or -1 on a rescale symmetry's outgoing slots) and
the settings eta, lambda, mu (momentum), tau (dampening), Nesterov of its param group:

    Q = s |theta|^2, X = s <theta, g>, G = s |g|^2, P = s <theta, b>, B = s |b|^2, C = s <b, g>
    (translation: Q = <theta, 1>, X = <g, 1>, P = <b, 1>; no G, B, C), b the momentum buffer.

For a whole symmetry X = 0 (<grad L, xi> = 0). The inputs from the run are X, G and C only.

Discrete law (exact, float64): d = g + lambda theta, so <theta, d> = X + lambda Q,
|d|^2 = G + 2 lambda X + lambda^2 Q and <d, b> = C + lambda P;
    b' = mu b + (1 - tau) d (b' = d where the buffer does not exist yet; mu = 0: no buffer, u = d),
    u = b' or d + mu b' (Nesterov), theta' = theta - eta u:
    Q' = Q - 2 eta <theta, u> + eta^2 |u|^2, P' = <theta, b'> - eta <u, b'>, B' = |b'|^2.
Without momentum this is Q' = (1 - eta lambda)^2 Q + eta^2 G for a whole symmetry (translation:
Q' = (1 - eta lambda) Q).

Continuous law, without momentum (the paper's eqs. 4-6, gradient flow of the modified loss on the
part's clock t = sum eta): dQ/dt = -k lambda Q - 2 X + eta G (k = 2; translation k = 1 and
dQ/dt = -lambda Q - X), stepped exactly over dt = eta with the drive held:
    Q <- e^{-k lambda eta} (Q + eta^2 G - 2 eta X)  (translation: e^{-lambda eta} (Q - eta X)),
which for a whole symmetry is Q(t) = e^{-k lambda t} Q(0) + eta int e^{-k lambda (t - s)} G ds
by the left-point rule (never a raw e^{+k lambda t}).

Continuous law with momentum (App. B): the damped oscillator m Q'' + (1 - mu) Q' + k lambda Q = F
over dt = eta (1 - tau), m = dt (1 + mu) / 2, F = 2 m |dtheta/dt|^2 - 2 X (translation: -X), with
dtheta/dt = -u / (1 - tau); Nesterov adds 2 [mu X_{k-1} - mu X_k - mu eta_{k-1} <u_{k-1}, g_{k-1}>]
(``oscillator_propagator`` derives it). Stepped exactly by the propagator of the augmented linear
system (every damping regime). Dampening 1 with lr > 0 moves theta while no continuous time passes:
no continuous law from then on (``LawState.applies`` False, NaN in the record).
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import NamedTuple

import numpy as np
import torch

__all__ = ["Coefficients", "LawState", "Steps", "advance", "coefficients", "mass_of", "oscillator_propagator"]

SETTINGS = ("lr", "weight_decay", "momentum", "dampening", "nesterov")


def oscillator_propagator(eta: np.ndarray, lam: np.ndarray, mu: np.ndarray, tau: np.ndarray, nesterov: np.ndarray,
                          spring: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    r"""Per entry: the one-step propagator E (n, 2, 2) and drive column r (n, 2) of
    m Q'' + (1 - mu) Q' + spring lambda Q = F over dt = eta (1 - tau), and whether this continuous law
    applies (n,) bool: [Q, Q']_{k+1} = E [Q, Q']_k + (F/m) r.

    Heavy ball (Kunin et al. 2021, App. B): theta_{k+1} - theta_k = mu (theta_k - theta_{k-1}) - h d_k with
    h = eta (1 - tau) (dampening rescales the step), Taylor-expanded to first order in h:
    (1 - mu) theta' + (h/2)(1 + mu) theta'' = -d, so m = h (1 + mu)/2.
    Nesterov (torch: dampening 0): with v_k = theta_k - theta_{k-1}, exactly v_{k+1} - mu v_k = -eta f_k,
    f_k = (1 + mu) d_k - mu d_{k-1}: heavy ball (the same m) driven by f in place of d. Projected on
    theta_k, <theta_k, d_{k-1}> = X_{k-1} + <v_k, g_{k-1}> + lambda <theta_k, theta_{k-1}> (the last
    taken as lambda Q_k, an O(eta lambda) error), so F gains 2 [mu X_{k-1} - mu X_k - mu eta_{k-1}
    <u_{k-1}, g_{k-1}>] (translation: mu (X_{k-1} - X_k) with X = <g, 1>). The last term is O(1) for
    noisy gradients: taking d_k - d_{k-1} = eta d' (smooth gradients) instead gives m = eta (1 - mu +
    2 mu^2)/2 and misses it (measured: the scale law's gap stays at 8e-2 as eta halves, where with the
    measured term it halves).
    Exact for every damping regime: the matrix exponential of [Q, Q', 1]' = [[0, 1, 0], [-k/m,
    -(1 - mu)/m, F/m], [0, 0, 0]] [Q, Q', 1]. dt = 0 (lr 0, or dampening 1): E = I, r = 0. Dampening 1
    with lr > 0 moves theta while no continuous time passes: no continuous law (applies = False).
    """
    eta, lam, mu, tau, nesterov = (np.asarray(a, dtype=np.float64) for a in (eta, lam, mu, tau, nesterov))
    n = len(eta)
    dt = eta * (1 - tau)
    matrix = np.zeros((n, 2, 2))
    matrix[:, 0, 0] = matrix[:, 1, 1] = 1.0
    drive = np.zeros((n, 2))
    moving = dt > 0
    if moving.any():
        h, m_mu = dt[moving], mu[moving]
        mass = h * (1 + m_mu) / 2
        system = torch.zeros(int(moving.sum()), 3, 3, dtype=torch.float64)
        system[:, 0, 1] = 1.0
        system[:, 1, 0] = torch.from_numpy(-spring * lam[moving] / mass)
        system[:, 1, 1] = torch.from_numpy(-(1 - m_mu) / mass)
        system[:, 1, 2] = 1.0
        exponential = torch.linalg.matrix_exp(system * torch.from_numpy(h).reshape(-1, 1, 1)).numpy()
        matrix[moving] = exponential[:, :2, :2]
        drive[moving] = exponential[:, :2, 2]
    applies = ~((tau >= 1) & (eta > 0))
    return np.ascontiguousarray(matrix), np.ascontiguousarray(drive), applies


def mass_of(eta: np.ndarray, mu: np.ndarray, tau: np.ndarray) -> np.ndarray:
    """The oscillator's mass m = eta (1 - tau) (1 + mu) / 2 (``oscillator_propagator``), 0 where no time passes."""
    return eta * (1 - tau) * (1 + mu) / 2


class Coefficients(NamedTuple):
    """What one step of ``advance`` needs from the optimizer's settings alone, per part: the settings,
    their products, and the oscillator's propagator (``oscillator_propagator``, split into contiguous
    rows: x' = [[e00, e01], [e10, e11]] x + (F/m) (r0, r1)). Made once per setting (``Steps``)."""

    eta: np.ndarray
    lam: np.ndarray
    mu: np.ndarray
    tau: np.ndarray
    with_momentum: np.ndarray | bool  # ``_uniform``: a bool where every part agrees
    nesterov: np.ndarray | bool
    lam2: np.ndarray
    omt: np.ndarray  # 1 - tau
    omt2: np.ndarray
    mu2: np.ndarray
    cross: np.ndarray  # 2 mu (1 - tau)
    eta2: np.ndarray
    decay: np.ndarray  # e^{-spring lambda eta}: the flow's step without momentum
    oscillator: tuple | None  # (e00, e01, e10, e11, r0, r1, applies (True: all), 1/m where m > 0 else 0, m > 0,
    # 2/(1 - tau)^2 where tau < 1 else 0): the momentum law's continuous step


def coefficients(settings: tuple[np.ndarray, ...], spring: float, group: np.ndarray, momentum_law: bool) -> Coefficients:
    """``Coefficients`` per part from ``settings`` per param group (eta, lambda, mu, tau, nesterov) and
    each part's param group ``group``."""
    eta, lam, mu, tau, nest = (np.ascontiguousarray(np.asarray(v, dtype=np.float64)[group]) for v in settings)
    omt = 1 - tau
    oscillator = None
    if momentum_law:
        matrix, drive, applies = (a[group] for a in oscillator_propagator(*settings, spring))
        mass = mass_of(eta, mu, tau)
        live = mass > 0
        oscillator = (*(np.ascontiguousarray(matrix[:, i, j]) for i in (0, 1) for j in (0, 1)),
                      np.ascontiguousarray(drive[:, 0]), np.ascontiguousarray(drive[:, 1]),
                      True if applies.all() else applies,
                      np.divide(1.0, mass, out=np.zeros_like(mass), where=live), _uniform(live),
                      np.divide(2.0, omt**2, out=np.zeros_like(omt), where=tau < 1))
    return Coefficients(eta, lam, mu, tau, _uniform(mu > 0), _uniform(nest > 0), lam**2, omt, omt**2, mu**2,
                        2 * mu * omt, eta**2, np.exp(-spring * lam * eta), oscillator)


class Steps:
    """``coefficients`` made once per setting: a key that changes when the settings do, the spring,
    the parts' param groups and the law; recomputed only when one of them changes."""

    def __init__(self) -> None:
        self._cache: dict = {}

    def __call__(self, key, settings: tuple[np.ndarray, ...], spring: float, group: np.ndarray,
                 momentum_law: bool) -> Coefficients:
        cache_key = (key, spring, group.tobytes(), momentum_law)
        found = self._cache.get(cache_key)
        if found is None:
            if len(self._cache) > 64:  # a schedule changing lr every step: keep the cache small
                self._cache.clear()
            found = self._cache[cache_key] = coefficients(settings, spring, group, momentum_law)
        return found


@dataclass
class LawState:
    """Per part, float64: the discrete law's Q, P, B; the continuous law's Q (``flow``, without momentum)
    or oscillator (Q, dQ/dt) (with momentum); whether the continuous law still applies; Nesterov's X and
    eta <u, g> at the part's last step. Parts are rows (``grow`` adds them)."""

    q: np.ndarray
    p: np.ndarray
    b: np.ndarray
    flow: np.ndarray
    oscillator: np.ndarray  # (parts, 2)
    applies: np.ndarray  # bool
    x_prev: np.ndarray
    carry: np.ndarray

    @classmethod
    def start(cls, q: np.ndarray) -> LawState:
        """Every part at charge ``q``, at rest (no buffer, no velocity)."""
        q = np.array(q, dtype=np.float64)
        zeros = np.zeros_like(q)
        return cls(q, zeros.copy(), zeros.copy(), q.copy(), np.stack([q, zeros], axis=-1),
                   np.ones(len(q), dtype=bool), zeros.copy(), zeros.copy())

    @classmethod
    def empty(cls) -> LawState:
        return cls.start(np.zeros(0))

    def __len__(self) -> int:
        return len(self.q)

    def continuous(self, momentum_law: bool) -> np.ndarray:
        """The continuous law's Q per part (a copy), NaN where it no longer applies."""
        values = (self.oscillator[:, 0] if momentum_law else self.flow).copy()
        values[~self.applies] = np.nan
        return values

    def grow(self, count: int) -> None:
        """``count`` more parts at zero (set them with ``put``)."""
        extra = LawState.start(np.zeros(count))
        for f in fields(self):
            setattr(self, f.name, np.concatenate([getattr(self, f.name), getattr(extra, f.name)]))

    def state_dict(self) -> dict:
        return {f.name: torch.from_numpy(np.array(getattr(self, f.name))) for f in fields(self)}

    def load_state_dict(self, state: dict) -> None:
        for f in fields(self):
            mine = getattr(self, f.name)
            value = np.array(torch.as_tensor(state[f.name]).numpy(), dtype=mine.dtype)
            if value.shape != mine.shape:
                raise ValueError(f"law state has {value.shape} for {f.name}, this tracker {mine.shape}: a different "
                                 "model or symmetry set")
            setattr(self, f.name, value)


def _uniform(flags: np.ndarray | bool) -> np.ndarray | bool:
    """``flags`` as a Python bool where every entry agrees (the usual case: one setting for every part),
    so that ``_where`` takes a branch instead of computing both and selecting."""
    if isinstance(flags, (bool, np.bool_)):
        return bool(flags)
    if flags.all():
        return True
    return False if not flags.any() else flags


def _where(flags: np.ndarray | bool, a, b):
    """np.where(flags, a, b), with no work where ``flags`` is a bool (``_uniform``)."""
    if flags is True:
        return a
    if flags is False:
        return b
    return np.where(flags, a, b)


def advance(state: LawState, spring: float, k: Coefficients, x: np.ndarray | None, g: np.ndarray | None,
            c: np.ndarray | None, moves: np.ndarray | bool, fresh: np.ndarray | bool, momentum_law: bool) -> None:
    r"""One optimizer step of every part (module docstring), in place.

    spring: 1 (translation: Q linear in theta) or 2 (scale and rescale: Q quadratic). k: the step's
    ``Coefficients`` (from the settings of each part's param group). x, g, c: X, G, C per part (x None:
    0, a whole symmetry; g and c unread for translation; c unread without momentum). moves: whether
    each part is stepped (False: it keeps its state); fresh: whether its momentum buffer does not
    exist yet (b' = d). momentum_law: the continuous law is the oscillator (else the flow)."""
    eta, lam, mu = k.eta, k.lam, k.mu
    q, p = state.q, state.p
    moves, fresh = _uniform(moves), _uniform(fresh)
    with_momentum, nesterov = k.with_momentum, k.nesterov
    x_prev = state.x_prev
    x_now = 0.0 if x is None else x
    if spring == 1.0:
        d = lam * q if x is None else x + lam * q
        b_new = _where(fresh, d, mu * p + k.omt * d)
        u = _where(with_momentum, _where(nesterov, d + mu * b_new, b_new), d)
        q_new = q - eta * u
        p_new = _where(with_momentum, b_new, p)
        b_sq_new = state.b
        # F = -X; Nesterov: -(1 + mu) X_k + mu X_{k-1}
        force = _where(nesterov, -(1 + mu) * x_now + mu * x_prev, -x_now) if (x is not None or nesterov is not False) \
            else None
        carry = 0.0
        u_sq = 0.0
        g_flow = 0.0
    else:
        b = state.b
        c = 0.0 if c is None else c
        theta_d = lam * q if x is None else x + lam * q
        d_sq = g + k.lam2 * q if x is None else g + 2 * lam * x + k.lam2 * q
        d_b = c + lam * p
        theta_b = _where(fresh, theta_d, mu * p + k.omt * theta_d)
        b_sq = _where(fresh, d_sq, k.mu2 * b + k.cross * d_b + k.omt2 * d_sq)
        if nesterov is False:
            theta_u, u_sq, u_b = theta_b, b_sq, b_sq
        else:
            d_b_new = _where(fresh, d_sq, mu * d_b + k.omt * d_sq)
            theta_u = _where(nesterov, theta_d + mu * theta_b, theta_b)
            u_sq = _where(nesterov, d_sq + 2 * mu * d_b_new + k.mu2 * b_sq, b_sq)
            u_b = _where(nesterov, d_b_new + mu * b_sq, b_sq)
        theta_u = _where(with_momentum, theta_u, theta_d)
        u_sq = _where(with_momentum, u_sq, d_sq)
        q_new = q - 2 * eta * theta_u + k.eta2 * u_sq
        p_new = _where(with_momentum, theta_b - eta * u_b, p)
        b_sq_new = _where(with_momentum, b_sq, b)
        # F - 2 m |theta'|^2 = -2 X; Nesterov: 2 [-(1 + mu) X_k + mu X_{k-1} - mu eta_{k-1} <u_{k-1}, g_{k-1}>]
        force = _where(nesterov, 2 * (-(1 + mu) * x_now + mu * x_prev - mu * state.carry), -2 * x_now) \
            if (x is not None or nesterov is not False) else None
        if nesterov is False:
            carry = 0.0
        else:
            d_g = g + lam * x_now
            b_g = _where(fresh, d_g, mu * c + k.omt * d_g)
            carry = _where(nesterov, eta * (d_g + mu * b_g), 0.0)
        g_flow = k.eta2 * g
    if not momentum_law:
        flow = k.decay * (state.flow + g_flow + (0.0 if force is None else eta * force))
        state.flow = _where(moves, flow, state.flow)
    else:
        e00, e01, e10, e11, r0, r1, applies, inverse_mass, has_mass, velocity = k.oscillator
        live = has_mass if moves is True else moves & has_mass
        # F/m per part: the force over the mass, plus 2 |dtheta/dt|^2 = 2 |u|^2 / (1 - tau)^2 (scale, rescale)
        per_mass = 0.0 if force is None else force * inverse_mass
        if spring != 1.0:
            per_mass = per_mass + velocity * u_sq
        per_mass = _where(live, per_mass, 0.0) if live is not True else per_mass
        old = state.oscillator
        q_osc, v_osc = old[:, 0], old[:, 1]
        advanced = np.empty_like(old)
        advanced[:, 0] = e00 * q_osc + e01 * v_osc + per_mass * r0
        advanced[:, 1] = e10 * q_osc + e11 * v_osc + per_mass * r1
        state.oscillator = _where(moves if isinstance(moves, bool) else moves[:, None], advanced, old)
        if applies is not True:  # dampening 1 with lr > 0 somewhere: those parts lose their continuous law
            state.applies = state.applies & (applies | ~np.asarray(moves, dtype=bool))
    if x is not None or moves is not True:
        state.x_prev = _where(moves, np.zeros_like(q) if x is None else x, state.x_prev)
    elif x_prev.any():
        state.x_prev = np.zeros_like(q)
    if nesterov is not False or moves is not True:
        state.carry = _where(moves, np.zeros_like(q) + carry, state.carry)
    elif state.carry.any():
        state.carry = np.zeros_like(q)
    state.q = _where(moves, q_new, q)
    state.p = _where(moves, p_new, p)
    state.b = _where(moves, b_sq_new, state.b)
