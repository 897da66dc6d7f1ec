r"""Miyagawa 2026, Thm 2.2 and the SDE after it: does SGD on a ReLU net follow the quotient SDE
dY = -b(Y) dt + sqrt(eta) sigma(Y) dB to weak order 1 in eta? And Assumption 2.1 on real models.

Model (the paper's §3.1): f(x) = sum_j a_j relu(u_j . (x, 1)) + c, width m = 2, N = 96 points
x_i = linspace(-2, 2) + N(0, 0.035^2) jitter, labels 1{x_i > 0}, mean BCE loss L. Raw parameters
theta = (u_j in R^2, a_j, c). Quotient coordinates Y = Phi(theta) = (gamma_j = a_j |u_j|,
phi_j = angle of s_j = u_j / |u_j|, c), dimension 2m + 1.

SGD (raw parameters): theta_{n+1} = theta_n - eta grad L_{B_n}(theta_n), B_n = ``batch`` indices
drawn uniformly *with* replacement, independently per step and run (so M_{n+1} = grad L_B - grad L
is a martingale difference with Cov = Cov_i(grad l_i) / B), for n = T / eta steps; Y_T = Phi(theta_n).

Drift and noise on the quotient, at the representative with rescale charges Q_j = |u_j|^2 - a_j^2
(the balanced one, Q = 0, unless stated): with r_i = sigmoid(f(x_i)) - y_i, z_ji = s_j . (x_i, 1),
p_j = sqrt(Q_j^2 + 4 gamma_j^2) = |u_j|^2 + a_j^2 and w_j = |u_j|^2 = (Q_j + p_j) / 2, the
pushed-forward per-sample gradient D Phi grad l_i is

    xi_i = (p_j r_i relu(z_ji),  (gamma_j / w_j) r_i 1{z_ji > 0} (J s_j) . (x_i, 1),  r_i),

b(Y) = mean_i xi_i, A(Y) = Cov_i(xi_i) / B. (At Q = 0: b_gamma = 2|gamma| dU/dgamma, b_phi =
dU/dphi / |gamma|: the balanced-gauge metric. The Q-dependence is Assumption 2.1's failure, made
explicit; gradient flow conserves Q, SGD moves it by eta^2 (|g_u|^2 - g_a^2) per step.)

SDE: dY = -b(Y) dt + sqrt(eta) sigma(Y) dB, sigma sigma^T = A, simulated by Euler-Maruyama.

Readings taken where the paper is silent:
1. sigma: the (2m+1) x N matrix of centred per-sample vectors (xi_i - b) / sqrt(B N), driven by N
   independent Brownian motions: sigma sigma^T = A exactly, no matrix square root (the law of the
   SDE depends on A only).
2. Representative: b and A at the balanced representative of Y (Q = 0), the runs start balanced.
   A second set of SGD runs starts at an unbalanced representative of the *same* Y_0 (every unit
   rescaled by e^lambda, ``unbalanced_log_factor``): it is compared with the balanced SDE and
   with the SDE whose b, A use the start's charges Q_0 (the reduction on quotient x charges).
3. Time: t = eta n, T = ``horizon``; every eta must divide T.
4. The SDE step: h = eta / ``substeps``, and a second path at h / 2 driven by the same Brownian
   increments; the reported SDE value is the Richardson extrapolation 2 E_{h/2} - E_h (EM's O(h)
   weak bias removed; its size E_{h/2} - E_h is reported as ``sde_step_bias``).
5. Statistical error: each path carries a control variate with mean exactly 0, the linear
   response L_T of the noise along the deterministic (gradient-flow) path Ybar:
   L_{k+1} = (I - dt Db(Ybar(t_k))) L_k + (the step's own noise increment); the estimator is
   f(Y_T) - grad f(Ybar_T) . L_T. Its variance is O(eta^2) instead of O(eta), so the standard
   error falls with eta like the weak error does. SGD and SDE runs are independent; the standard
   error of their difference combines both.
6. Test functions: the loss U(Y_T), gamma_1, cos phi_1 and c. The slope is a weighted
   least-squares fit of log|error| on log eta (weights (error / standard error)^2).

Assumption 2.1 on networks: ``shockwatch.quotient.projectability`` on the §3.1 net, an MLP, a
VGG-style CNN with BatchNorm (eps = 1e-30: exact scale symmetry) and the GPT-2-style model, at
balanced representatives (translations and permutations only) and at unbalanced ones (random
log-factors / GL elements of size ``projectability_strength``), also kind by kind.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .. import models
from ..quotient.projectability import projectability
from ..symmetry import find_symmetries
from ._files import write_result

NAME = "quotient-sde"

TESTS = ("loss", "gamma_1", "cos_angle_1", "c")
PROJECTABILITY_MODELS = ("relu-3.1", "mlp", "vgg-bn", "gpt")


@dataclass(frozen=True)
class Config:
    etas: tuple[float, ...] = (0.4, 0.2, 0.1, 0.05)  # learning rates; each must divide horizon
    horizon: float = 2.0  # T = eta * n
    batch: int = 4  # minibatch size B (with replacement)
    sgd_runs: int = 16000
    sde_runs: int = 4000
    substeps: int = 8  # SDE steps per SGD step (h = eta / substeps), plus the h/2 path
    points: int = 96
    jitter: float = 0.035
    start: tuple[float, ...] = (0.6, -0.35, -0.55, -2.8, 0.0)  # Y_0 = (gamma_1..m, phi_1..m, c)
    unbalanced_log_factor: float = 0.5  # lambda: the unbalanced start rescales every unit by e^lambda
    projectability_models: tuple[str, ...] = PROJECTABILITY_MODELS
    projectability_strength: float = 2.0
    seed: int = 0

    def __post_init__(self) -> None:
        if not self.etas or any(not (eta > 0 and math.isfinite(eta)) for eta in self.etas):
            raise ValueError(f"etas must be positive and finite, got {self.etas}")
        if len(set(self.etas)) < 2:
            raise ValueError(f"need at least two distinct etas to fit a slope, got {self.etas}")
        if not (self.horizon > 0 and math.isfinite(self.horizon)):
            raise ValueError(f"horizon must be positive and finite, got {self.horizon}")
        for eta in self.etas:
            steps = round(self.horizon / eta)
            if steps < 1 or abs(steps * eta - self.horizon) > 1e-9 * self.horizon:
                raise ValueError(f"horizon {self.horizon} must be a whole number of steps of every eta; "
                                 f"eta = {eta} does not divide it")
        if self.batch < 1 or self.batch > self.points:
            raise ValueError(f"batch must be in [1, points = {self.points}], got {self.batch}")
        if self.sgd_runs < 10 or self.sde_runs < 10:
            raise ValueError(f"need sgd_runs and sde_runs >= 10 for a standard error, got {self.sgd_runs}, {self.sde_runs}")
        if self.substeps < 1:
            raise ValueError(f"substeps must be >= 1, got {self.substeps}")
        if self.points < 2 or self.jitter < 0:
            raise ValueError(f"need points >= 2 and jitter >= 0, got {self.points}, {self.jitter}")
        if len(self.start) < 3 or len(self.start) % 2 != 1:
            raise ValueError(f"start must be (gamma_1..m, phi_1..m, c), an odd length >= 3, got {len(self.start)} values")
        if any(g == 0 for g in self.start[: self.width]):
            raise ValueError(f"every gamma_j in start must be nonzero (the regular stratum), got {self.start}")
        unknown = [name for name in self.projectability_models if name not in PROJECTABILITY_MODELS]
        if unknown:
            raise ValueError(f"unknown projectability models {unknown}; accepted: {PROJECTABILITY_MODELS}")
        if not self.projectability_strength > 0:
            raise ValueError(f"projectability_strength must be > 0, got {self.projectability_strength}")

    @property
    def width(self) -> int:
        return (len(self.start) - 1) // 2


@dataclass(frozen=True)
class Result:
    config: Config
    tests: tuple[str, ...]
    gradient_flow: dict[str, float]  # f(Ybar_T), the noiseless limit
    sgd_mean: dict[str, list[float]]  # test -> per eta
    sgd_se: dict[str, list[float]]
    sde_mean: dict[str, list[float]]  # Richardson-extrapolated Euler-Maruyama
    sde_se: dict[str, list[float]]
    sde_step_bias: dict[str, list[float]]  # E_{h/2} - E_h: EM's bias at h/2, removed by the extrapolation
    weak_error: dict[str, list[float]]  # E f(SGD) - E f(SDE)
    weak_error_se: dict[str, list[float]]
    slope: dict[str, float]  # d log|weak error| / d log eta
    slope_se: dict[str, float]
    charge_drift: list[list[float]]  # per eta, per unit: mean Q_j(T) - Q_j(0) of the balanced SGD runs
    unbalanced_vs_balanced_sde: dict[str, list[float]]  # E f(SGD from unbalanced) - E f(balanced SDE)
    unbalanced_vs_balanced_sde_se: dict[str, list[float]]
    unbalanced_vs_charged_sde: dict[str, list[float]]  # ... - E f(SDE with the start's charges)
    unbalanced_vs_charged_sde_se: dict[str, list[float]]
    charged_slope: dict[str, float]  # the slope of unbalanced_vs_charged_sde (the reduction on quotient x charges)
    projectability: dict[str, dict[str, dict]] = field(default_factory=dict)  # model -> setting -> numbers
    runtime_s: float = 0.0

    def to_json(self) -> dict:
        return asdict(self)

    def save(self, out: Path) -> list[Path]:
        return write_result(out, "quotient_sde", self.to_json(), plot(self))


# ---------------------------------------------------------------------------------------------
# The §3.1 network, vectorised over runs


@dataclass(frozen=True)
class StepData:
    """The step task of §3.1: inputs x (N,) and labels y (N,), float64."""

    x: Tensor
    y: Tensor

    @classmethod
    def make(cls, points: int, jitter: float, seed: int) -> StepData:
        generator = torch.Generator().manual_seed(seed)
        x = torch.linspace(-2.0, 2.0, points, dtype=torch.float64)
        x = x + jitter * torch.randn(points, generator=generator, dtype=torch.float64)
        return cls(x, (x > 0).to(torch.float64))


def balanced_parameters(y: Tensor, charges: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """The representative (u (.., m, 2), a (.., m), c (..)) of Y with rescale charges Q (default 0)."""
    m = (y.shape[-1] - 1) // 2
    gamma, phi, c = y[..., :m], y[..., m:2 * m], y[..., 2 * m]
    q = torch.zeros_like(gamma) if charges is None else charges.expand_as(gamma)
    w = (q + torch.sqrt(q * q + 4 * gamma * gamma)) / 2  # |u|^2
    norm = w.sqrt()
    u = norm.unsqueeze(-1) * torch.stack([phi.cos(), phi.sin()], -1)
    return u, gamma / norm, c


def quotient_coordinates(u: Tensor, a: Tensor, c: Tensor) -> Tensor:
    """Y = (a_j |u_j|, atan2(u_j2, u_j1), c)."""
    return torch.cat([a * u.norm(dim=-1), torch.atan2(u[..., 1], u[..., 0]), c.unsqueeze(-1)], -1)


def quotient_loss(y: Tensor, data: StepData) -> Tensor:
    """U(Y): the mean BCE of f_Q(x) = sum_j gamma_j relu(s_j . (x, 1)) + c (batch dims kept)."""
    m = (y.shape[-1] - 1) // 2
    gamma, phi, c = y[..., :m], y[..., m:2 * m], y[..., 2 * m]
    z = phi.cos().unsqueeze(-1) * data.x + phi.sin().unsqueeze(-1)
    f = (gamma.unsqueeze(-1) * z.clamp(min=0)).sum(-2) + c.unsqueeze(-1)
    return F.binary_cross_entropy_with_logits(f, data.y.expand_as(f), reduction="none").mean(-1)


def quotient_drift(y: Tensor, data: StepData, charges: Tensor | None = None, increments: Tensor | None = None,
                   batch: int = 1) -> tuple[Tensor, Tensor | None]:
    """b(Y) (.., 2m+1) and, given Brownian increments dW (.., N), sigma(Y) dW with sigma = (xi_i - b) / sqrt(B N)
    (module docstring), for the representative with charges Q (default 0, balanced)."""
    m = (y.shape[-1] - 1) // 2
    n = data.x.numel()
    gamma, phi, c = y[..., :m], y[..., m:2 * m], y[..., 2 * m]
    q = torch.zeros_like(gamma) if charges is None else charges.expand_as(gamma)
    p = torch.sqrt(q * q + 4 * gamma * gamma)
    w = (q + p) / 2
    cos, sin = phi.cos().unsqueeze(-1), phi.sin().unsqueeze(-1)
    z = cos * data.x + sin  # s . (x, 1)
    tangent = cos - sin * data.x  # (J s) . (x, 1)
    hidden = z.clamp(min=0)
    f = torch.einsum("...m,...mn->...n", gamma, hidden) + c.unsqueeze(-1)
    r = torch.sigmoid(f) - data.y  # (.., N)
    weights = r.unsqueeze(-2) if increments is None else torch.stack([r, r * increments], -2)  # (.., k, N)
    h_sums = torch.einsum("...mn,...kn->...mk", hidden, weights)
    t_sums = torch.einsum("...mn,...kn->...mk", torch.where(z > 0, tangent, 0.0), weights)
    r_sums = weights.sum(-1)  # (.., k)
    drift = torch.cat([p * h_sums[..., 0], gamma / w * t_sums[..., 0], r_sums[..., :1]], -1) / n
    if increments is None:
        return drift, None
    noisy = torch.cat([p * h_sums[..., 1], gamma / w * t_sums[..., 1], r_sums[..., 1:]], -1)
    centred = noisy - drift * increments.sum(-1, keepdim=True)  # sum_i (xi_i - b) dW_i
    return drift, centred / math.sqrt(batch * n)


def observables(y: Tensor, data: StepData) -> Tensor:
    """(loss, gamma_1, cos phi_1, c) at Y, last axis."""
    m = (y.shape[-1] - 1) // 2
    return torch.stack([quotient_loss(y, data), y[..., 0], y[..., m].cos(), y[..., 2 * m]], -1)


# ---------------------------------------------------------------------------------------------
# Simulators


@dataclass(frozen=True)
class ReferencePath:
    """The gradient-flow path Ybar on a uniform grid, with Db(Ybar) at every grid point."""

    times: Tensor  # (K+1,)
    path: Tensor  # (K+1, d)
    jacobians: Tensor  # (K+1, d, d)

    def jacobian_at(self, t: float) -> Tensor:
        step = float(self.times[1] - self.times[0])
        return self.jacobians[min(int(t / step + 1e-9), len(self.times) - 1)]


def reference_path(drift: Callable[[Tensor], Tensor], y0: Tensor, horizon: float, step: float) -> ReferencePath:
    """dY/dt = -b(Y) by classical RK4 at ``step`` (rounded to divide ``horizon``), Db by autograd."""
    count = max(1, math.ceil(horizon / step - 1e-9))
    h = horizon / count
    path = [y0]
    y = y0
    for _ in range(count):
        k1 = -drift(y)
        k2 = -drift(y + h / 2 * k1)
        k3 = -drift(y + h / 2 * k2)
        k4 = -drift(y + h * k3)
        y = y + h / 6 * (k1 + 2 * k2 + 2 * k3 + k4)
        path.append(y)
    stacked = torch.stack(path)
    jacobians = torch.func.vmap(torch.func.jacrev(drift))(stacked)
    return ReferencePath(torch.linspace(0, horizon, count + 1, dtype=y0.dtype), stacked, jacobians)


@dataclass(frozen=True)
class SDEPaths:
    """Y_T at step h/2 (``fine``) and h (``coarse``), same Brownian path, with the linear responses L_T."""

    fine: Tensor  # (R, d)
    coarse: Tensor
    fine_linear: Tensor  # (R, d); zeros without a reference path
    coarse_linear: Tensor


def euler_maruyama(drift_noise: Callable[[Tensor, Tensor], tuple[Tensor, Tensor]], y0: Tensor, *, eta: float,
                   horizon: float, step: float, runs: int, noise_dim: int, generator: torch.Generator,
                   reference: ReferencePath | None = None, progress: Callable[[], None] | None = None) -> SDEPaths:
    r"""dY = -b(Y) dt + sqrt(eta) sigma(Y) dB on [0, horizon], B an R^noise_dim Brownian motion.

    ``drift_noise(Y, dW)`` returns (b(Y), sigma(Y) dW) for a batch (R, d) and increments (R, noise_dim).
    Scheme: Euler-Maruyama at ``step`` (rounded down to divide ``horizon``) and at half of it, the
    coarse increments being sums of pairs of fine ones (for Richardson extrapolation). With
    ``reference``, each path also carries L_{k+1} = (I - dt Db(Ybar(t_k))) L_k + sqrt(eta) sigma dW,
    whose mean is exactly 0 (a control variate). ``progress`` is called once per coarse step.
    """
    count = max(1, math.ceil(horizon / step - 1e-9))
    h = horizon / count
    fine = y0.expand(runs, -1).clone()
    coarse = fine.clone()
    fine_linear = torch.zeros_like(fine)
    coarse_linear = torch.zeros_like(fine)
    root_eta = math.sqrt(eta)
    for k in range(count):
        total = torch.zeros(runs, noise_dim, dtype=y0.dtype)
        for half in range(2):
            increment = torch.randn(runs, noise_dim, generator=generator, dtype=y0.dtype) * math.sqrt(h / 2)
            total += increment
            b, noise = drift_noise(fine, increment)
            fine = fine - (h / 2) * b + root_eta * noise
            if reference is not None:
                jac = reference.jacobian_at(k * h + half * h / 2)
                fine_linear = fine_linear - (h / 2) * fine_linear @ jac.T + root_eta * noise
        b, noise = drift_noise(coarse, total)
        coarse = coarse - h * b + root_eta * noise
        if reference is not None:
            coarse_linear = coarse_linear - h * coarse_linear @ reference.jacobian_at(k * h).T + root_eta * noise
        if progress is not None:
            progress()
    return SDEPaths(fine, coarse, fine_linear, coarse_linear)


def _raw_gradients(u: Tensor, a: Tensor, c: Tensor, xs: Tensor, ys: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Mean BCE gradients (g_u (R, m, 2), g_a (R, m), g_c (R,)) over samples xs, ys (R or 1, K)."""
    z = u[..., 0:1] * xs.unsqueeze(-2) + u[..., 1:2]  # (R, m, K)
    hidden = z.clamp(min=0)
    f = (a.unsqueeze(-1) * hidden).sum(-2) + c.unsqueeze(-1)
    r = torch.sigmoid(f) - ys  # (R, K)
    k = xs.shape[-1]
    g_a = (hidden @ r.unsqueeze(-1)).squeeze(-1)
    weighted = torch.where(z > 0, a.unsqueeze(-1) * r.unsqueeze(-2), 0.0)  # (R, m, K)
    g_u = torch.stack([(weighted @ xs.unsqueeze(-1)).squeeze(-1), weighted.sum(-1)], -1)
    return g_u / k, g_a / k, r.mean(-1)


def _push(u: Tensor, a: Tensor, v_u: Tensor, v_a: Tensor, v_c: Tensor) -> Tensor:
    """D Phi(theta) (v_u, v_a, v_c) in Y = (gamma, phi, c): (a s.v_u + |u| v_a, (J s).v_u / |u|, v_c)."""
    norm = u.norm(dim=-1)
    s = u / norm.unsqueeze(-1)
    d_gamma = a * (s * v_u).sum(-1) + norm * v_a
    d_phi = (s[..., 0] * v_u[..., 1] - s[..., 1] * v_u[..., 0]) / norm
    return torch.cat([d_gamma, d_phi, v_c.unsqueeze(-1)], -1)


@dataclass(frozen=True)
class SGDRuns:
    final: Tensor  # (R, d): Y_T
    linear: Tensor  # (R, d): L_T, the control variate (mean 0)
    charges: Tensor  # (R, m): Q_j(T) = |u_j|^2 - a_j^2


def sgd_runs(start: tuple[Tensor, Tensor, Tensor], data: StepData, *, eta: float, horizon: float, batch: int,
             runs: int, generator: torch.Generator, reference: ReferencePath | None = None,
             progress: Callable[[], None] | None = None) -> SGDRuns:
    """Minibatch SGD in raw parameters, ``runs`` independent runs at once, T / eta steps.

    With ``reference``, L_{n+1} = (I - eta Db(Ybar(n eta))) L_n - eta D Phi(theta_n) M_{n+1}, M the
    minibatch gradient minus the full one: a martingale, so E L_T = 0 exactly (a control variate).
    """
    u0, a0, c0 = start
    u, a, c = u0.expand(runs, -1, -1).clone(), a0.expand(runs, -1).clone(), c0.expand(runs).clone()
    n = data.x.numel()
    linear = torch.zeros(runs, 2 * u.shape[-2] + 1, dtype=u.dtype)
    for step in range(round(horizon / eta)):
        index = torch.randint(0, n, (runs, batch), generator=generator)
        g_u, g_a, g_c = _raw_gradients(u, a, c, data.x[index], data.y[index])
        if reference is not None:
            f_u, f_a, f_c = _raw_gradients(u, a, c, data.x.unsqueeze(0), data.y.unsqueeze(0))
            noise = _push(u, a, g_u - f_u, g_a - f_a, g_c - f_c)
            linear = linear - eta * linear @ reference.jacobian_at(step * eta).T - eta * noise
        u, a, c = u - eta * g_u, a - eta * g_a, c - eta * g_c
        if progress is not None:
            progress()
    return SGDRuns(quotient_coordinates(u, a, c), linear, u.square().sum(-1) - a.square())


# ---------------------------------------------------------------------------------------------
# The experiment


def _estimate(values: Tensor) -> tuple[Tensor, Tensor]:
    """Mean and standard error over runs (dim 0)."""
    return values.mean(0), values.std(0) / math.sqrt(values.shape[0])


def _slope(etas: list[float], errors: list[float], ses: list[float]) -> tuple[float, float]:
    """Weighted least squares of log|e| on log eta, weights (|e| / se)^2: slope and its standard error."""
    x = torch.tensor([math.log(e) for e in etas], dtype=torch.float64)
    y = torch.tensor([math.log(max(abs(e), 1e-300)) for e in errors], dtype=torch.float64)
    w = torch.tensor([(abs(e) / s) ** 2 if s > 0 else 1e12 for e, s in zip(errors, ses)], dtype=torch.float64)
    xm, ym = (w * x).sum() / w.sum(), (w * y).sum() / w.sum()
    sxx = (w * (x - xm) ** 2).sum()
    return float((w * (x - xm) * (y - ym)).sum() / sxx), float(sxx.rsqrt())


def run(config: Config = Config(), progress: bool = False) -> Result:
    """SGD vs the quotient SDE at every eta, the unbalanced-start comparison, and the projectability
    table (about 45 s on 2 shared CPU cores at the default size)."""
    began = time.perf_counter()
    data = StepData.make(config.points, config.jitter, config.seed)
    y0 = torch.tensor(config.start, dtype=torch.float64)
    m = config.width
    lam = config.unbalanced_log_factor
    charges0 = 2 * y0[:m].abs() * math.sinh(2 * lam)  # Q_j of (e^lam u*, a* / e^lam)
    h_min = min(config.etas) / config.substeps / 2
    reference = reference_path(lambda y: quotient_drift(y, data)[0], y0, config.horizon, h_min)
    charged_reference = reference_path(lambda y: quotient_drift(y, data, charges0)[0], y0, config.horizon, h_min)
    gradients = torch.func.jacrev(lambda y: observables(y, data))(reference.path[-1])  # (tests, d)
    charged_gradients = torch.func.jacrev(lambda y: observables(y, data))(charged_reference.path[-1])
    gradient_flow = dict(zip(TESTS, observables(reference.path[-1], data).tolist()))
    generator = torch.Generator().manual_seed(config.seed + 1)
    balanced_start = balanced_parameters(y0)
    u_star, a_star, c_star = balanced_start
    unbalanced_start = (u_star * math.exp(lam), a_star * math.exp(-lam), c_star)

    out = {key: {t: [] for t in TESTS} for key in ("sgd_mean", "sgd_se", "sde_mean", "sde_se", "sde_step_bias",
                                                   "weak_error", "weak_error_se", "ub_mean", "ub_se", "uc_mean",
                                                   "uc_se")}
    charge_drift = []
    work = sum(round(config.horizon / eta) * (2 + 2 * config.substeps) for eta in config.etas)
    work += len(config.projectability_models)
    with _Progress(progress, work) as tick:
        for eta in config.etas:
            sgd = sgd_runs(balanced_start, data, eta=eta, horizon=config.horizon, batch=config.batch,
                           runs=config.sgd_runs, generator=generator, reference=reference, progress=tick)
            sgd_values = observables(sgd.final, data) - sgd.linear @ gradients.T
            sgd_mean, sgd_se = _estimate(sgd_values)
            charge_drift.append((sgd.charges.mean(0) - 0.0).tolist())
            unbalanced = sgd_runs(unbalanced_start, data, eta=eta, horizon=config.horizon, batch=config.batch,
                                  runs=config.sgd_runs, generator=generator, reference=charged_reference, progress=tick)
            ub_mean, ub_se = _estimate(observables(unbalanced.final, data) - unbalanced.linear @ charged_gradients.T)
            sde_mean, sde_se, sde_bias = _sde_estimate(config, data, eta, y0, None, reference, gradients, generator, tick)
            charged_mean, charged_se, _ = _sde_estimate(config, data, eta, y0, charges0, charged_reference,
                                                        charged_gradients, generator, tick)
            for i, test in enumerate(TESTS):
                out["sgd_mean"][test].append(float(sgd_mean[i]))
                out["sgd_se"][test].append(float(sgd_se[i]))
                out["sde_mean"][test].append(float(sde_mean[i]))
                out["sde_se"][test].append(float(sde_se[i]))
                out["sde_step_bias"][test].append(float(sde_bias[i]))
                out["weak_error"][test].append(float(sgd_mean[i] - sde_mean[i]))
                out["weak_error_se"][test].append(math.hypot(float(sgd_se[i]), float(sde_se[i])))
                out["ub_mean"][test].append(float(ub_mean[i] - sde_mean[i]))
                out["ub_se"][test].append(math.hypot(float(ub_se[i]), float(sde_se[i])))
                out["uc_mean"][test].append(float(ub_mean[i] - charged_mean[i]))
                out["uc_se"][test].append(math.hypot(float(ub_se[i]), float(charged_se[i])))
        table = {}
        for name in config.projectability_models:
            table[name] = _projectability_of(name, config, data, y0)
            tick()
    slopes = {t: _slope(list(config.etas), out["weak_error"][t], out["weak_error_se"][t]) for t in TESTS}
    charged = {t: _slope(list(config.etas), out["uc_mean"][t], out["uc_se"][t])[0] for t in TESTS}
    return Result(config, TESTS, gradient_flow, out["sgd_mean"], out["sgd_se"], out["sde_mean"], out["sde_se"],
                  out["sde_step_bias"], out["weak_error"], out["weak_error_se"], {t: s for t, (s, _) in slopes.items()},
                  {t: se for t, (_, se) in slopes.items()}, charge_drift, out["ub_mean"], out["ub_se"],
                  out["uc_mean"], out["uc_se"], charged, table, time.perf_counter() - began)


def _sde_estimate(config: Config, data: StepData, eta: float, y0: Tensor, charges: Tensor | None,
                  reference: ReferencePath, gradients: Tensor, generator: torch.Generator, tick) -> tuple[Tensor, Tensor, Tensor]:
    """Richardson-extrapolated E f(Y_T) of the SDE with its standard error, and EM's step bias."""
    paths = euler_maruyama(lambda y, dw: quotient_drift(y, data, charges, dw, config.batch), y0, eta=eta,
                           horizon=config.horizon, step=eta / config.substeps, runs=config.sde_runs,
                           noise_dim=data.x.numel(), generator=generator, reference=reference,
                           progress=tick)
    fine = observables(paths.fine, data) - paths.fine_linear @ gradients.T
    coarse = observables(paths.coarse, data) - paths.coarse_linear @ gradients.T
    mean, se = _estimate(2 * fine - coarse)
    return mean, se, (fine - coarse).mean(0)


# ---------------------------------------------------------------------------------------------
# Assumption 2.1 on real models


def _exact_norms(model: nn.Module) -> nn.Module:
    for module in model.modules():
        if isinstance(getattr(module, "eps", None), float):
            module.eps = 1e-30
    return model


def _projectability_case(name: str, data: StepData, y0: Tensor):
    """(model, loss_fn, (inputs, targets), example input, logits) of one table row, float64, seeded."""
    torch.manual_seed(0)
    generator = torch.Generator().manual_seed(1)
    if name == "relu-3.1":
        model = nn.Sequential(nn.Linear(1, (y0.numel() - 1) // 2), nn.ReLU(), nn.Linear((y0.numel() - 1) // 2, 1)).double()
        u, a, c = balanced_parameters(y0)
        with torch.no_grad():
            model[0].weight.copy_(u[:, :1])
            model[0].bias.copy_(u[:, 1])
            model[2].weight.copy_(a.unsqueeze(0))
            model[2].bias.copy_(c.reshape(1))
        inputs = data.x.unsqueeze(-1)

        def loss_fn(out, target):
            return F.binary_cross_entropy_with_logits(out.squeeze(-1), target)

        return model, loss_fn, (inputs, data.y), inputs, False
    if name == "mlp":
        model = models.mlp((8, 16, 16, 4)).double()
        inputs = torch.randn(128, 8, generator=generator, dtype=torch.float64)
        targets = (inputs @ torch.randn(8, 4, generator=generator, dtype=torch.float64)).argmax(1)
        return model, F.cross_entropy, (inputs, targets), inputs[:16], True
    if name == "vgg-bn":
        model = _exact_norms(models.vgg("tiny", width_divisor=4, image_size=8, hidden=16).double())
        inputs = torch.randn(128, 3, 8, 8, generator=generator, dtype=torch.float64)
        targets = (F.avg_pool2d(inputs, 4).flatten(1) @ torch.randn(12, 10, generator=generator, dtype=torch.float64)).argmax(1)
        return model, F.cross_entropy, (inputs, targets), inputs[:16], True
    vocabulary = 16
    model = models.GPT(models.GPTConfig(vocab_size=vocabulary, block_size=8, n_layer=2, n_head=2, d_model=16)).double()
    tokens = torch.randint(0, vocabulary, (64, 8), generator=generator)
    targets = (3 * tokens + 1) % vocabulary

    def gpt_loss(out, target):
        return F.cross_entropy(out.reshape(-1, vocabulary), target.reshape(-1))

    return model, gpt_loss, (tokens, targets), tokens[:8], True


def _projectability_of(name: str, config: Config, data: StepData, y0: Tensor) -> dict[str, dict]:
    """Balanced (translations and permutations only), unbalanced (every kind) and kind by kind."""
    model, loss_fn, batch, example, logits = _projectability_case(name, data, y0)
    syms = find_symmetries(model, example, logits=logits)
    strength = config.projectability_strength
    kinds = [k for k in ("translation", "scale", "rescale", "gl") if syms.of_kind(k)]
    common = {"representatives": 3, "batches": 8, "seed": config.seed}
    if "translation" in kinds:
        balanced = projectability(model, loss_fn, batch, syms, strength=strength, kinds=["translation"], **common)
    else:  # no translation to draw: the balanced representatives are the canonical one's permutations
        generator = torch.Generator().manual_seed(config.seed)
        orders = [{s.label: torch.randperm(s.unit_count, generator=generator) for s in syms.of_kind("permutation")}
                  for _ in range(common["representatives"])]
        balanced = projectability(model, loss_fn, batch, syms, elements=orders, batches=8, seed=config.seed)
    settings = {"balanced": balanced,
                "unbalanced": projectability(model, loss_fn, batch, syms, strength=strength, **common)}
    for kind in kinds:
        settings[f"{kind} only"] = projectability(model, loss_fn, batch, syms, strength=strength, kinds=[kind],
                                                  permute_units=False, **common)
    return {setting: r.to_json() for setting, r in settings.items()}


class _Progress:
    """A rich progress bar when enabled; the context value is a callable advancing it (returns None)."""

    def __init__(self, enabled: bool, total: int) -> None:
        self.enabled, self.total, self.bar = enabled, total, None

    def __enter__(self) -> Callable[[], None]:
        if not self.enabled:
            return lambda: None
        from rich.progress import Progress

        self.bar = Progress()
        self.bar.__enter__()
        task = self.bar.add_task("quotient-sde", total=self.total)
        return lambda: self.bar.advance(task)

    def __exit__(self, *exc) -> None:
        if self.bar is not None:
            self.bar.__exit__(*exc)


def plot(result: Result):
    """Weak error vs eta (log-log, 2 SE bars, slope-1 guide); the unbalanced start against both SDEs;
    the projectability spreads per model. Reads only ``result``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    etas = list(result.config.etas)
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.4), layout="constrained")
    ax = axes[0]
    for test in result.tests:
        err = [abs(e) for e in result.weak_error[test]]
        ax.errorbar(etas, err, yerr=[2 * s for s in result.weak_error_se[test]], marker="o", capsize=3,
                    label=f"{test}: slope {result.slope[test]:.2f} ± {result.slope_se[test]:.2f}")
    top = max(abs(e) for e in result.weak_error[result.tests[0]])
    ax.plot(etas, [top * e / max(etas) for e in etas], "k--", lw=0.8, label="slope 1")
    ax.set(xscale="log", yscale="log", xlabel="eta", ylabel="|E f(SGD) - E f(SDE)|",
           title=f"weak error at T = {result.config.horizon:g} (balanced start)")
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3, which="both")
    ax = axes[1]
    for key, style, label in (("unbalanced_vs_balanced_sde", "-o", "vs balanced SDE (Q = 0)"),
                              ("unbalanced_vs_charged_sde", "--s", "vs SDE with the start's charges Q0")):
        values, ses = getattr(result, key), getattr(result, key + "_se")
        for test in result.tests[:3]:
            ax.errorbar(etas, [abs(v) for v in values[test]], yerr=[2 * s for s in ses[test]], fmt=style, capsize=3,
                        label=f"{test}, {label}")
    ax.set(xscale="log", yscale="log", xlabel="eta", ylabel="|E f(SGD) - E f(SDE)|",
           title=f"SGD from an unbalanced representative (lambda = {result.config.unbalanced_log_factor:g})")
    ax.legend(fontsize=6)
    ax.grid(alpha=0.3, which="both")
    ax = axes[2]
    names = list(result.projectability)
    if names:
        settings = ["balanced", "unbalanced"]
        width = 0.2
        for k, (setting, field_name) in enumerate([(s, f) for s in settings for f in ("drift_spread", "covariance_spread")]):
            values = [max(max(result.projectability[n][setting][field_name], default=0.0), 1e-17) for n in names]
            ax.bar([i + (k - 1.5) * width for i in range(len(names))], values, width, label=f"{setting}: {field_name}")
        ax.set_xticks(range(len(names)), names)
        ax.set(yscale="log", ylabel="max relative spread over representatives",
               title=f"Assumption 2.1: spread of b and A (strength {result.config.projectability_strength:g})")
        ax.legend(fontsize=6, loc="center right")
        ax.grid(alpha=0.3, axis="y")
    fig.suptitle("Quotient SDE (Miyagawa 2026, Thm 2.2) on the §3.1 ReLU net", fontsize=10)
    return fig
