r"""Exact laws for symmetries whose blocks are updated by different rules (per-block bookkeeping).

A symmetry's parameters may sit in several optimizer param groups (the decay / no-decay split of
nanoGPT's ``configure_optimizers``: a ReLU unit's incoming weight row decays, its bias does not), be
frozen (``requires_grad=False``), be outside the optimizer, or get no gradient at a step (torch's SGD
then skips the tensor: no weight decay, no momentum update). Each *block* B (the slots of one
parameter, with the charge's sign s_B = +1, or -1 on a rescale symmetry's outgoing slots) is then
updated by its own rule, and the charge Q = sum_B Q_B is followed block by block.

Discrete law (exact for torch.optim.SGD, per block, settings eta_B, lambda_B, mu_B, tau_B of its
group; d = g + lambda theta, b the momentum buffer, u the step direction, theta' = theta - eta u):
    Q_B = s_B |theta_B|^2, X_B = s_B <theta_B, g_B>, G_B = s_B |g_B|^2, P_B = s_B <theta_B, b_B>,
    B_B = s_B |b_B|^2, C_B = s_B <b_B, g_B>  (translation: Q_B = <theta_B, 1>, X_B = <g_B, 1>, P_B = <b_B, 1>)
    <theta, d> = X + lambda Q, |d|^2 = G + 2 lambda X + lambda^2 Q, <d, b> = C + lambda P;
    b' = mu b + (1 - tau) d (b' = d where the buffer does not exist yet; no buffer for mu = 0, u = d);
    u = b' or d + mu b' (Nesterov);  Q_B' = Q_B - 2 eta <theta, u> + eta^2 |u|^2,
    P_B' = <theta, b'> - eta <u, b'>, B_B' = |b'|^2; a block that does not move keeps Q_B, P_B, B_B.
For SGD without momentum this is Q_B' = |(1 - eta_B lambda_B) theta_B - eta_B g_B|^2 summed with signs.
The symmetry enters through sum_B X_B = 0 (<grad L, xi> = 0): where every block's gradient is known
(computed, or None with requires_grad=True: zero) the first block's X is replaced by minus the sum of
the others, so that blocks sharing their settings recover the single-group law exactly (X drops out)
and what is measured from the run is only the exchange sum_B (c_B - c_1) X_B between blocks with
different settings. Where a block is frozen (its gradient is not computed) the constraint cannot be
used: the row is then each block's bookkeeping with the measured X_B, and the charge is not conserved
(``NoLaw(law="symmetry")``).

Continuous law (per block, gradient flow of the modified loss on the block's own clock eta_B):
    SGD:       dQ_B/dt = -k lambda_B Q_B - 2 X_B + eta_B G_B (k = 2; translation k = 1, dQ/dt = -k lambda Q - X),
               stepped exactly over dt = eta_B: Q_B <- e^{-k lambda eta}(Q_B + eta^2 G_B - 2 eta X_B);
    momentum:  m Q_B'' + (1 - mu) Q_B' + k lambda Q_B = 2 m |theta_B'|^2 - 2 X_B (translation: -X_B),
               the oscillator of ``oscillator_propagator`` on the block's clock (Nesterov: its force
               terms there, with the block's X_{k-1} and eta_{k-1} <u_{k-1}, g_{k-1}>).
With one setting for every block the exchange terms cancel (sum_B X_B = 0) and this is the
single-group law. With different settings **no closed continuous law in Q exists**: the blocks
exchange charge at the rate sum_B (eta_B / eta) X_B, which depends on the gradients' direction and not
on Q; what is reported is the block-wise flow driven by the run's measured exchange
(``NoLaw(law="continuous")`` names the groups).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..symmetry import Kind, Symmetry, SymmetrySet

__all__ = ["NoLaw", "oscillator_propagator"]


@dataclass(frozen=True)
class NoLaw:
    """A law the tracker cannot give, for which symmetries, and why.

    law: "discrete" (no exact update-rule law: the optimizer is not modelled), "continuous" (no closed
    continuous law: what the continuous row holds instead is in ``reason``; NaN where none at all) or
    "symmetry" (the discrete row is each block's bookkeeping, without the symmetry's constraint: the
    charge is not conserved). groups: optimizer param-group indices concerned (() where none).
    labels: the symmetries concerned (every one for a run without a law)."""

    law: str
    reason: str
    groups: tuple[int, ...]
    labels: tuple[str, ...]

    @property
    def message(self) -> str:
        """One line for an event: the law, the reason, the groups and the first labels."""
        shown = ", ".join(self.labels[:3]) + (f", ... ({len(self.labels)} in all)" if len(self.labels) > 3 else "")
        groups = f" (param groups {', '.join(map(str, self.groups))})" if self.groups else ""
        return f"no {self.law} law{groups}: {self.reason}; symmetries {shown}"


def oscillator_propagator(eta: np.ndarray, lam: np.ndarray, mu: np.ndarray, tau: np.ndarray, nesterov: np.ndarray,
                          spring: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    r"""Per entry: the one-step propagator E (n, 2, 2) and drive column r (n, 2) of
    m Q'' + (1 - mu) Q' + spring lambda Q = F over dt = eta (1 - tau), and whether this continuous law
    applies (n,) bool.

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


def mass_of(eta: np.ndarray, mu: np.ndarray, tau: np.ndarray, nesterov: np.ndarray) -> np.ndarray:
    """The oscillator's mass m (see ``oscillator_propagator``), 0 where no time passes."""
    return eta * (1 - tau) * (1 + mu) / 2


class BlockLaws:
    """The per-block state of the symmetries the tracker follows block by block (module docstring).

    Built from (block name, column, symmetry) triples; the tracker measures the blocks' inputs before
    each optimizer step (``measure``), advances them after it (``advance``) and reads each column's
    discrete and continuous prediction (``predictions``)."""

    _STATE = ("q", "p", "b", "flow", "oscillator", "continuous_applies", "x_prev", "carry")

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.parts: dict[str, list[tuple[int, str, float]]] = {"translation": [], "quadratic": []}
        self._symmetries: dict[str, list[Symmetry]] = {"translation": [], "quadratic": []}
        self.labels: dict[str, list[str]] = {"translation": [], "quadratic": []}
        self.q: dict[str, np.ndarray] = {b: np.zeros(0) for b in self.parts}  # discrete Q_B
        self.p = {b: np.zeros(0) for b in self.parts}  # P_B
        self.b = {b: np.zeros(0) for b in self.parts}  # B_B (quadratic)
        self.flow = {b: np.zeros(0) for b in self.parts}  # continuous, SGD form
        self.oscillator = {b: np.zeros((0, 2)) for b in self.parts}  # continuous, momentum form
        self.continuous_applies = {b: np.ones(0, dtype=bool) for b in self.parts}
        self.x_prev = {b: np.zeros(0) for b in self.parts}  # Nesterov: X_B at the block's last step
        self.carry = {b: np.zeros(0) for b in self.parts}  # Nesterov: eta <u_B, g_B> at the block's last step
        self._propagators: dict = {}  # (block, settings key) -> oscillator_propagator per param group
        self._index()

    def add(self, entries: list[tuple[str, int, Symmetry]]) -> dict[str, np.ndarray]:
        """Follow these (block, column, symmetry) block by block from now on; returns, per block, the
        mask of the parts just added (their state zero until ``reset``)."""
        before = {b: len(p) for b, p in self.parts.items()}
        for block, column, sym in entries:
            signed = [(slot, 1.0) for slot in sym.incoming] + [(slot, -1.0) for slot in sym.outgoing]
            for param in dict.fromkeys(slot.param for slot, _ in signed):
                for sign in (1.0, -1.0):
                    slots = tuple(slot for slot, s in signed if slot.param == param and s == sign)
                    if not slots:
                        continue
                    kind = Kind.TRANSLATION if block == "translation" else Kind.SCALE
                    self._symmetries[block].append(Symmetry(kind, f"{len(self.parts[block])}", slots))
                    self.parts[block].append((column, param, sign))
                    self.labels[block].append(sym.label)
        for name in self._STATE:
            state = getattr(self, name)
            for b in self.parts:
                grow = len(self.parts[b]) - before[b]
                pad = np.ones(grow, dtype=bool) if name == "continuous_applies" else np.zeros((grow, *state[b].shape[1:]))
                state[b] = np.concatenate([state[b], pad])
        self._index()
        return {b: np.arange(len(p)) >= before[b] for b, p in self.parts.items()}

    def _index(self) -> None:
        self.sets = {b: SymmetrySet(tuple(s), self.device) for b, s in self._symmetries.items()}
        self.column = {b: np.array([c for c, _, _ in parts], dtype=np.int64) for b, parts in self.parts.items()}
        self.sign = {b: np.array([s for _, _, s in parts], dtype=np.float64) for b, parts in self.parts.items()}
        self.param = {b: [p for _, p, _ in parts] for b, parts in self.parts.items()}
        self.first = {}  # each column's first part: where a carried-over prediction's difference goes
        for b in self.parts:
            first = np.zeros(len(self.parts[b]), dtype=bool)
            if len(first):
                first[np.unique(self.column[b], return_index=True)[1]] = True
            self.first[b] = first

    def __len__(self) -> int:
        return sum(len(p) for p in self.parts.values())

    def columns(self, block: str) -> np.ndarray:
        """The columns (symmetries of ``block``, tracker order) followed here."""
        return np.unique(self.column[block])

    # ------------------------------------------------------------------------------------------
    def sums(self, block: str, pairs: list[tuple[dict, dict]]) -> np.ndarray:
        """Per pair (x, y) and part: s_B <x_B, y_B> (quadratic) or <y_B, 1> (translation, x unread), float64."""
        if not self.parts[block]:
            return np.zeros((len(pairs), 0))
        if block == "quadratic":
            rows = self.sets[block].quadratic_sums(pairs).detach().to("cpu", torch.float64).numpy()
        else:
            rows = np.stack([self.sets[block].charges(Kind.TRANSLATION, y).detach().to("cpu", torch.float64).numpy()
                             for _, y in pairs])
        return rows * self.sign[block]

    def reset(self, block: str, mask: np.ndarray, q: np.ndarray, p: np.ndarray, b: np.ndarray,
              target_q: np.ndarray | None = None, target_p: np.ndarray | None = None,
              target_b: np.ndarray | None = None, target_continuous: np.ndarray | None = None,
              target_velocity: np.ndarray | None = None) -> None:
        """Set the parts in ``mask`` to measured values, with each column's first part carrying the
        difference to the column's ``target`` (a prediction carried so far by another law), so that
        the sum over a column's parts continues that prediction exactly."""
        def fill(state: np.ndarray, measured: np.ndarray, target: np.ndarray | None) -> None:
            state[mask] = measured[mask]
            if target is not None:
                total = np.bincount(self.column[block][mask], weights=measured[mask], minlength=len(target))
                first = mask & self.first[block]
                state[first] += (target - total)[self.column[block][first]]
        fill(self.q[block], q, target_q)
        fill(self.p[block], p, target_p)
        fill(self.b[block], b, target_b)
        fill(self.flow[block], q, target_continuous)
        osc = self.oscillator[block]
        osc[mask, 0] = self.flow[block][mask]
        osc[mask, 1] = 0.0
        if target_velocity is not None:
            first = mask & self.first[block]
            osc[first, 1] = target_velocity[self.column[block][first]]
        self.continuous_applies[block][mask] = True

    def advance(self, block: str, settings: tuple[np.ndarray, ...], key, inputs: dict, momentum_law: bool) -> None:
        """One optimizer step of every part (module docstring): ``settings`` per optimizer param group
        (eta, lambda, mu, tau, nesterov), ``key`` a hashable that changes when they do (the oscillator's
        propagators are exponentiated once per group and key); ``inputs``: group (each part's param
        group, -1: none), x (X_B), g (G_B), c (C_B), moves, known, has_buffer per part."""
        if not self.parts[block]:
            return
        group = np.maximum(inputs["group"], 0)
        eta, lam, mu, tau, nest = (np.asarray(values, dtype=np.float64)[group] for values in settings)
        x = inputs["x"].copy()
        moves, has_buffer = inputs["moves"], inputs["has_buffer"]
        # the symmetry: sum_B X_B = 0 over a column whose every gradient is known, applied to the
        # column's first moving part (the X of a part that does not move is never read)
        column = self.column[block]
        n_columns = int(column.max()) + 1
        unknown = np.bincount(column, weights=(~inputs["known"]).astype(np.float64), minlength=n_columns) > 0
        total = np.bincount(column, weights=x, minlength=n_columns)
        moving = np.flatnonzero(moves)
        _, at = np.unique(column[moving], return_index=True)
        first = moving[at]
        first = first[~unknown[column[first]]]
        x[first] -= total[column[first]]
        q, p = self.q[block], self.p[block]
        with_momentum = mu > 0
        fresh = ~has_buffer
        if block == "translation":
            d = x + lam * q
            b_new = np.where(fresh, d, mu * p + (1 - tau) * d)
            u = np.where(with_momentum, np.where(nest > 0, d + mu * b_new, b_new), d)
            q_new = q - eta * u
            p_new = np.where(with_momentum, b_new, p)
            b_sq_new = self.b[block]
            # F = -X_B; Nesterov: -(1 + mu) X_k + mu X_{k-1} (oscillator_propagator)
            drive_per_mass_num = np.where(nest > 0, -(1 + mu) * x + mu * self.x_prev[block], -x)
            carry = np.zeros_like(q)
            u_sq = np.zeros_like(q)
            spring = 1.0
        else:
            g, c, b = inputs["g"], inputs["c"], self.b[block]
            theta_d = x + lam * q
            d_sq = g + 2 * lam * x + lam**2 * q
            d_b = c + lam * p
            theta_b = np.where(fresh, theta_d, mu * p + (1 - tau) * theta_d)
            b_sq = np.where(fresh, d_sq, mu**2 * b + 2 * mu * (1 - tau) * d_b + (1 - tau) ** 2 * d_sq)
            d_b_new = np.where(fresh, d_sq, mu * d_b + (1 - tau) * d_sq)
            nesterov = nest > 0
            theta_u = np.where(nesterov, theta_d + mu * theta_b, theta_b)
            u_sq = np.where(nesterov, d_sq + 2 * mu * d_b_new + mu**2 * b_sq, b_sq)
            u_b = np.where(nesterov, d_b_new + mu * b_sq, b_sq)
            theta_u = np.where(with_momentum, theta_u, theta_d)
            u_sq = np.where(with_momentum, u_sq, d_sq)
            q_new = q - 2 * eta * theta_u + eta**2 * u_sq
            p_new = np.where(with_momentum, theta_b - eta * u_b, p)
            b_sq_new = np.where(with_momentum, b_sq, b)
            # F - 2 m |theta'|^2 = -2 X_B; Nesterov: 2 [-(1 + mu) X_k + mu X_{k-1} - mu eta_{k-1} <u_{k-1}, g_{k-1}>]
            drive_per_mass_num = np.where(nesterov, 2 * (-(1 + mu) * x + mu * self.x_prev[block] - mu * self.carry[block]),
                                          -2 * x)
            d_g = g + lam * x
            b_g = np.where(fresh, d_g, mu * c + (1 - tau) * d_g)
            carry = np.where(nesterov, eta * (d_g + mu * b_g), 0.0)
            spring = 2.0
        # continuous: the SGD flow, or the oscillator on the block's clock
        if not momentum_law:
            decay = np.exp(-spring * lam * eta)
            extra = eta**2 * g if block == "quadratic" else 0.0
            flow_new = decay * (self.flow[block] + extra + eta * drive_per_mass_num)
            self.flow[block] = np.where(moves, flow_new, self.flow[block])
        else:
            propagator = self._propagators.get((block, key))
            if propagator is None:
                if len(self._propagators) > 64:  # a schedule changing lr every step: keep the cache small
                    self._propagators.clear()
                propagator = self._propagators[(block, key)] = oscillator_propagator(*settings, spring)
            matrix, drive, applies = (a[group] for a in propagator)
            mass = mass_of(eta, mu, tau, nest)
            live = moves & (mass > 0)
            per_mass = np.zeros_like(q)
            velocity_sq = np.divide(u_sq, (1 - tau) ** 2, out=np.zeros_like(q), where=tau < 1)
            per_mass[live] = (2 * velocity_sq[live] if block == "quadratic" else 0.0) \
                + drive_per_mass_num[live] / mass[live]
            state = self.oscillator[block]
            advanced = np.empty_like(state)
            advanced[:, 0] = matrix[:, 0, 0] * state[:, 0] + matrix[:, 0, 1] * state[:, 1] + per_mass * drive[:, 0]
            advanced[:, 1] = matrix[:, 1, 0] * state[:, 0] + matrix[:, 1, 1] * state[:, 1] + per_mass * drive[:, 1]
            self.oscillator[block] = np.where(moves[:, None], advanced, state)
            self.continuous_applies[block] &= applies | ~moves
        self.x_prev[block] = np.where(moves, x, self.x_prev[block])
        self.carry[block] = np.where(moves, carry, self.carry[block])
        self.q[block] = np.where(moves, q_new, q)
        self.p[block] = np.where(moves, p_new, p)
        self.b[block] = np.where(moves, b_sq_new, self.b[block])

    def predictions(self, block: str, width: int, momentum_law: bool) -> tuple[np.ndarray, np.ndarray]:
        """Per column (``width`` of them; columns without parts 0): the summed discrete and continuous
        predictions (continuous NaN where a part has none)."""
        column = self.column[block]
        discrete = np.bincount(column, weights=self.q[block], minlength=width)
        values = self.oscillator[block][:, 0] if momentum_law else self.flow[block]
        continuous = np.bincount(column, weights=values, minlength=width)
        broken = np.bincount(column, weights=(~self.continuous_applies[block]).astype(np.float64), minlength=width)
        continuous[broken > 0] = np.nan
        return discrete, continuous

    def state_dict(self) -> dict:
        return {name: {b: torch.from_numpy(np.array(v)) for b, v in getattr(self, name).items()} for name in self._STATE}

    def load_state_dict(self, state: dict) -> None:
        for name in self._STATE:
            mine = getattr(self, name)
            for b, v in state[name].items():
                if tuple(v.shape) != mine[b].shape:
                    raise ValueError(f"state has {tuple(v.shape)} blocks for {b}, this tracker {mine[b].shape}")
                mine[b] = np.array(v.numpy(), dtype=mine[b].dtype)
