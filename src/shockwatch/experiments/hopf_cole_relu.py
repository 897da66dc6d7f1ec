r"""Miyagawa 2026, §3.1 (Table 1, Figure 2): the Hopf-Cole profile on a slice of a quotient ReLU model.

Model (eq. 1): f(x) = sum_j a_j relu(u_j . (x, 1)) + c, width m = 2, binary cross-entropy
U = (1/N) sum_i BCE(f(x_i), y_i), in the balanced gauge |a_j| = |u_j|, whose quotient coordinates
are gamma_j = a_j |u_j|, s_j = u_j/|u_j| in S^1, c. The slice rotates s_1:
s_1(theta) = cos(theta) s_1* + sin(theta) J s_1* (J = rotation by +90 degrees), all else fixed, and
U(theta) is the loss there; theta is an angle, so U lives on the whole circle.

Heat flow on the slice (eqs. 2-3), for every reading of Delta_Q and of the time (``Variant``):
    w(tau) = exp(tau D d^2/dtheta^2) phi,   phi = e^{-U/nu},   u = -nu log w,
    D = nu (eq2: exp(nu tau Delta_Q) as eqs. 2-3 write it)  or  nu/2 (half: P_{nu tau} of §2.3),
    divided by |gamma_1| for the balanced metric (u_1 = sqrt|gamma_1| s_1: g_thetatheta = |gamma_1|,
    Delta_Q = (1/|gamma_1|) d^2/dtheta^2) and not for the flat one (d^2/dtheta^2).
- first-order (eq. 3): w ~ phi + tau D L_h phi, L_h the 3-point finite-difference d^2/dtheta^2 on the
  91-point window (one-sided at its ends), evaluated as e^{-min U/nu} (phi_hat + tau D L_h phi_hat),
  phi_hat = e^{-(U - min U)/nu}: the same numbers, no underflow until (U - min U)/nu > 708.
- exact: u(theta) = -nu log \int (4 pi D tau)^{-1/2} e^{-(theta - y)^2/(4 D tau)} e^{-U(y)/nu} dy over
  the line, i.e. the wrapped Gaussian on the circle: ``pde.sphere_local_entropy`` on S^1 (log
  domain, t = 2 D tau/nu), with composite Gauss-Legendre nodes placed between the ReLU kinks of U
  (U' jumps where s_1(theta) . (x_i, 1) = 0: 84 such kinks lie in the default window), so the
  quadrature is spectral on every smooth piece. Measured against scipy quad: |error of u| <= 1e-15.
- u', u'': finite differences on the 91-point window, as the paper says (3-point stencils); for the
  exact variants Table 1 also gets the resolved max|u''| from ``pde.hopf_cole`` (exact derivatives
  of a 4096-point circle quadrature). They agree to 0.5% except balanced/half at nu = 0.05, where
  sqrt(2 D tau) = 0.02 < h = 0.03 and the 91-point stencil misses the peak (2.26 vs 2.93).

Readings where the paper is silent, all in ``Config``:
1. Data: x_i = linspace(-2, 2, 96) + N(0, 0.035^2) ("deterministic ... with jitter"), labels
   1{x_i > 0} of the jittered x_i.
2. Training: nn.Linear's default initialisation, balanced; plain SGD on the raw (a, u, c) with
   lr 0.035 for 2000 epochs, every unit rebalanced after every step (Gauge.PROJECT), in float32.
   The paper's gauge error 2.384e-7 is exactly 2^-22, one float32 ulp on [2, 4): that is
   projection plus float32 round-off, which is what we get (2.384e-7 too). Without projection
   (Gauge.FREE) |a_j|^2 - |u_j|^2 drifts by lr^2 (g_a^2 - |g_u|^2) per step: 1.6e-3 after 4000 steps.
3. Seed and batch size (not given): seed 1, batch 48 (two minibatches an epoch). Rule: among seeds
   0-7 x batch {96, 64, 48, 32, 24, 16}, the run whose final loss is closest to the paper's
   2.862e-2 among those whose rotated unit is alive (|gamma_1| >= 1). Closest overall is seed 3 at
   batch 32 (2.857e-2), but its unit 1 is dead (gamma_1 = -0.055): its slice is flat (U moves by
   4e-4) and shows nothing. The trained nets come in three shapes (two opposite units: seeds 0, 1,
   6; one unit plus a dead one: 3, 4, 5, 7; two units on one side: 2), and Table 1 depends on the
   shape far more than on anything else (``Result.sweep``: seeds 0-7 x batch {96, 48}).
4. "The first hidden unit" is unit 0 in the trained order (``rotated_unit``). The labels are
   arbitrary (permutation symmetry); for the default net unit 0 is also the larger |gamma|.
5. Both parameter sets are run: the text's nu in {0.05, 0.1, 0.5}, tau in {0, 0.006, 0.012, 0.05,
   0.1} (and Table 1 at tau = 0.1) and Figure 2's caption's nu in {0.01, 0.1, 1.0}, tau in {0,
   0.006, 0.012, 0.030, 0.054}. They differ in the paper; the figure draws the caption's.
6. min w is of w itself (not of the rescaled phi_hat); for the exact variants w = e^{-u/nu}.
   Where eq. (3) gives w <= 0, or phi_hat underflows, u and every derivative whose stencil touches
   that point are None (``nonpositive_w_at``, ``underflow_at``); nothing is NaN.

Measured (default Config, about 10 s on one core, 0.2 s of it training): loss 2.728e-2 (paper
2.862e-2), accuracy 1.0 (1.0), gauge error 2.384e-7 (2.384e-7). Table 1, max|u''| / min w at
tau = 0.1 (paper: 4.663 / 1.00e-6, 4.412 / 1.46e-3, 3.328 / 0.283 for nu = 0.05, 0.1, 0.5):
    first-order flat eq2 (the paper's method as written)  254.5 / 1.4e-9   87.8 / 1.4e-4   462.7 / 0.165
    first-order flat half                                 156.3 / 2.1e-9   44.9 / 9.4e-5   233.5 / 0.152
    first-order balanced eq2                               47.7 / 2.6e-9    8.3 / 6.1e-5    48.5 / 0.142
    first-order balanced half                              26.7 / 2.6e-9    4.7 / 5.6e-5    23.4 / 0.140
    exact flat eq2                                        1.111 / 5.3e-8  1.095 / 2.2e-4  1.031 / 0.169
    exact flat half                                       1.293 / 1.4e-8  1.314 / 1.2e-4  1.429 / 0.154
    exact balanced eq2                                    1.980 / 4.0e-9  1.982 / 6.3e-5  2.040 / 0.142
    exact balanced half                                   2.256 / 3.3e-9  2.114 / 5.7e-5  2.139 / 0.140
No variant reproduces Table 1. Closest in max|u''| is exact balanced half (mean |log10 ratio| 0.28),
in min w exact flat eq2 (0.78 decades). The causes, with numbers:
- The net. min w = e^{-max u/nu} is set by the slice's loss barrier: the paper's min w give
  max u = 0.691, 0.653, 0.631, ours reaches U = 0.987 at theta = 1.35. Over the sweep the exact
  flat eq2 max|u''| ranges 0.001-3.45 and min w (nu = 0.05) 8e-20-0.46. One-unit nets (seeds 5,
  7) give max|u''| 3.33-3.45, 3.28-3.43, 2.81-3.37, near the paper's and falling with nu like
  them, but min w 10-14 decades below the paper's (their slice barrier is U = 3.7-7.6).
- Eq. (3) with finite differences: U is only piecewise smooth (84 kinks in the window), L_h phi
  carries the jumps of U' as O(jump/h) spikes, and u'' differentiates them twice more: max|u''|
  of eq. (3) is 20-480 for every net with two opposite units (seeds 0, 1, 6) and largest at
  nu = 0.5 (the correction's weight tau D grows with nu), opposite to the paper's trend. For
  nu = 0.01 (caption) eq. (3) gives w <= 0 at both window ends for every tau > 0. Eq. (3)
  converges to the exact semigroup only at order 1 in tau (measured 1.00, 0.64, 0.89 for nu =
  0.05, 0.1, 0.5), because L_h phi != phi'' at the kinks; to the semigroup of its own L_h
  (exp(tau D L_h) phi) at order 2 (2.00, 1.98, 1.91).
- The factor 1/2 and the metric change max|u''| by 15-40% (half) and 1.8-2x (balanced,
  |gamma_1| = 9.51): far less than the net or eq. (3) do.
- The paper's claim (peak curvature falls as nu grows) holds here only for exact flat eq2
  (1.111 > 1.095 > 1.031); the other exact variants vary by at most 11% across nu without
  falling monotonically, and eq. (3) is not monotone either (``monotone_in_nu``).
"""

from __future__ import annotations

import enum
import itertools
import math
import time
from contextlib import contextmanager, nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from .. import pde
from ._files import write_result

NAME = "hopf-cole-relu"

PAPER_TRAINING = {"final_loss": 2.862e-2, "accuracy": 1.0, "gauge_error": 2.384e-7}
PAPER_TABLE1 = {0.05: {"max_abs_d2u": 4.663319, "min_w": 1.001520e-6},
                0.1: {"max_abs_d2u": 4.412071, "min_w": 1.456738e-3},
                0.5: {"max_abs_d2u": 3.328405, "min_w": 2.831267e-1}}
PARAMETER_SETS = ("text", "caption")
_LOG_TINY = -math.log(np.finfo(np.float64).tiny)  # 708.4: e^{-x} is subnormal (then 0 past 745) beyond it
_J = torch.tensor([[0.0, -1.0], [1.0, 0.0]], dtype=torch.float64)  # rotation by +90 degrees


class Precision(enum.StrEnum):
    """The floating-point type SGD runs in (the slice is always evaluated in float64)."""

    FLOAT32 = "float32"  # PyTorch's default; the paper's gauge error 2.384e-7 = 2^-22 is a float32 ulp
    FLOAT64 = "float64"


class Gauge(enum.StrEnum):
    """How SGD keeps the balanced gauge |a_j| = |u_j|."""

    PROJECT = "project"  # SGD on raw (a, u, c), then every unit rebalanced (a/r, r u), r = sqrt(|a|/|u|)
    FREE = "free"  # plain SGD on raw (a, u, c): |a_j|^2 - |u_j|^2 drifts by lr^2 (|g_a|^2 - |g_u|^2) a step


class Method(enum.StrEnum):
    """How w = exp(tau D d^2/dtheta^2) e^{-U/nu} is computed."""

    FIRST_ORDER = "first-order"  # eq. (3): phi + tau D phi'', phi'' by finite differences on the window
    EXACT = "exact"  # the heat semigroup on the circle, log-domain quadrature (pde.sphere_local_entropy)


class Laplacian(enum.StrEnum):
    """Delta_Q on the slice."""

    FLAT = "flat"  # d^2/dtheta^2: the slice's own angle (what the paper most likely used)
    BALANCED = "balanced"  # (1/|gamma_1|) d^2/dtheta^2: the balanced quotient metric, g_thetatheta = |gamma_1|


class TimeScale(enum.StrEnum):
    """Which heat time the semigroup runs for."""

    EQ2 = "eq2"  # exp(nu tau Delta_Q), as eqs. (2) and (3) are written
    HALF = "half"  # P_{nu tau} = exp((nu tau / 2) Delta_Q), the semigroup of §2.3 and Thm 3.1


@dataclass(frozen=True)
class Variant:
    """One reading of eqs. (2)-(3): method x Laplacian x time scale."""

    method: Method
    laplacian: Laplacian
    time_scale: TimeScale

    @property
    def key(self) -> str:
        return f"{self.method}/{self.laplacian}/{self.time_scale}"

    def diffusivity(self, nu: float, gamma_1: float) -> float:
        """D with w(tau) = exp(tau D d^2/dtheta^2) phi: nu, halved for HALF, over |gamma_1| if BALANCED."""
        scale = 1.0 if self.time_scale is TimeScale.EQ2 else 0.5
        metric = 1.0 if self.laplacian is Laplacian.FLAT else abs(gamma_1)
        return scale * nu / metric


VARIANTS = tuple(Variant(m, lap, t) for m in Method for lap in Laplacian for t in TimeScale)
PAPER_VARIANT = Variant(Method.FIRST_ORDER, Laplacian.FLAT, TimeScale.EQ2)  # eq. (3) as written


def _choice(value, enum_type: type, name: str):
    try:
        return enum_type(value)
    except ValueError:
        choices = ", ".join(repr(m.value) for m in enum_type)
        raise ValueError(f"{name} must be one of {choices}; got {value!r}") from None


def _is_real(v) -> bool:
    return isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool)


def _positive_finite(values, name: str, allow_zero: bool = False) -> None:
    bad = [v for v in values if not (_is_real(v) and math.isfinite(v) and (v >= 0 if allow_zero else v > 0))]
    if bad:
        raise ValueError(f"{name} must be {'>= 0' if allow_zero else '> 0'} and finite, got {tuple(values)}")


@dataclass(frozen=True)
class Config:
    samples: int = 96  # N, on a uniform grid of [-data_half_width, data_half_width] before jitter
    data_half_width: float = 2.0
    jitter: float = 0.035  # sd of the Gaussian jitter added to each x_i
    width: int = 2  # hidden units m
    lr: float = 0.035
    epochs: int = 2000
    batch: int = 48  # minibatch size (reshuffled each epoch); 96 = full batch. Not given by the paper
    seed: int = 1  # data jitter, initialisation and shuffling. Not given by the paper
    precision: Precision = Precision.FLOAT32
    gauge: Gauge = Gauge.PROJECT
    rotated_unit: int = 0  # j of the direction s_j that the slice rotates ("the first hidden unit")
    theta_max: float = 1.35  # the window theta in [-theta_max, theta_max]
    theta_points: int = 91
    text_nus: tuple[float, ...] = (0.05, 0.1, 0.5)  # §3.1's text (and Table 1)
    text_taus: tuple[float, ...] = (0.0, 0.006, 0.012, 0.05, 0.1)
    caption_nus: tuple[float, ...] = (0.01, 0.1, 1.0)  # Figure 2's caption: not the text's
    caption_taus: tuple[float, ...] = (0.0, 0.006, 0.012, 0.030, 0.054)
    table_tau: float = 0.1  # Table 1's "final heat-flow time"; must be one of text_taus
    fd_accuracy: int = 2  # order of the finite differences on the window (2: the 3-point stencils)
    panel_nodes: int = 12  # Gauss-Legendre nodes per panel of the exact semigroup's quadrature
    resolved_points: int = 4096  # equispaced circle for the resolved curvature (pde.hopf_cole)
    convergence_halvings: int = 12 # first order vs exact at tau = table_tau * 2^-k, k < this
    figure_laplacian: Laplacian = Laplacian.FLAT
    figure_time_scale: TimeScale = TimeScale.EQ2
    sweep_seeds: tuple[int, ...] = tuple(range(8))  # Table 1 over seeds x batches; () skips it
    sweep_batches: tuple[int, ...] = (96, 48)

    def __post_init__(self) -> None:
        # enum fields accept their string values (the CLI passes strings); stored as the enums
        for name, enum_type in (("precision", Precision), ("gauge", Gauge), ("figure_laplacian", Laplacian),
                                ("figure_time_scale", TimeScale)):
            object.__setattr__(self, name, _choice(getattr(self, name), enum_type, name))
        integers = ("samples", "width", "epochs", "batch", "seed", "rotated_unit", "theta_points", "fd_accuracy",
                    "panel_nodes", "resolved_points", "convergence_halvings")
        for name in integers:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
                raise ValueError(f"{name} must be an integer, got {value!r}")  # noqa: TRY004 (house rule: ValueError)
        if any(isinstance(v, bool) or not isinstance(v, (int, np.integer)) for v in (*self.sweep_seeds,
                                                                                     *self.sweep_batches)):
            raise ValueError(f"sweep_seeds and sweep_batches must hold integers, got {self.sweep_seeds}, "
                             f"{self.sweep_batches}")
        _positive_finite((self.theta_max, self.table_tau), "theta_max and table_tau")
        if self.samples < 4 or self.width < 1 or self.epochs < 1:
            raise ValueError(f"need samples >= 4, width >= 1, epochs >= 1; got {self.samples=}, {self.width=}, "
                             f"{self.epochs=}")
        if not 0 <= self.rotated_unit < self.width:
            raise ValueError(f"rotated_unit must be in [0, width={self.width}), got {self.rotated_unit}")
        if not 1 <= self.batch <= self.samples:
            raise ValueError(f"batch must be in [1, samples={self.samples}], got {self.batch}")
        _positive_finite((self.lr, self.data_half_width), "lr and data_half_width")
        _positive_finite((self.jitter,), "jitter", allow_zero=True)
        if not 0 < self.theta_max < math.pi:
            raise ValueError(f"theta_max must lie in (0, pi) so the window is part of one circle, "
                             f"got {self.theta_max}")
        if self.fd_accuracy not in (2, 4, 6):
            raise ValueError(f"fd_accuracy must be 2, 4 or 6, got {self.fd_accuracy}")
        if self.theta_points < self.fd_accuracy + 5:
            raise ValueError(f"theta_points must be >= fd_accuracy + 5 = {self.fd_accuracy + 5}, "
                             f"got {self.theta_points}")
        for name in ("text", "caption"):
            nus, taus = getattr(self, f"{name}_nus"), getattr(self, f"{name}_taus")
            if not nus or not taus:
                raise ValueError(f"{name}_nus and {name}_taus must not be empty, got {nus}, {taus}")
            _positive_finite(nus, f"{name}_nus")
            _positive_finite(taus, f"{name}_taus", allow_zero=True)
            if list(taus) != sorted(set(taus)):
                raise ValueError(f"{name}_taus must be strictly increasing, got {taus}")
        if self.table_tau not in self.text_taus or self.table_tau <= 0:
            raise ValueError(f"table_tau must be a positive member of text_taus {self.text_taus}, got {self.table_tau}")
        if self.panel_nodes < 4 or self.resolved_points < 256 or self.convergence_halvings < 3:
            raise ValueError(f"need panel_nodes >= 4, resolved_points >= 256, convergence_halvings >= 3; got "
                             f"{self.panel_nodes=}, {self.resolved_points=}, {self.convergence_halvings=}")
        if any(not 1 <= b <= self.samples for b in self.sweep_batches):
            raise ValueError(f"sweep_batches must lie in [1, samples={self.samples}], got {self.sweep_batches}")

    @property
    def theta(self) -> np.ndarray:
        return np.linspace(-self.theta_max, self.theta_max, self.theta_points)

    def parameter_set(self, name: str) -> tuple[tuple[float, ...], tuple[float, ...]]:
        return getattr(self, f"{name}_nus"), getattr(self, f"{name}_taus")


@dataclass(frozen=True)
class Result:
    config: Config
    training: dict  # final_loss, accuracy, gauge_error (+ float64), steps, seconds, loss_history, paper
    quotient: dict  # gamma, s, c of the trained net (float64 of the trained values), raw a, u
    data: dict  # x, y: the training set (the slice's loss is evaluated on it)
    theta: list[float]  # the window grid
    U: list[float]  # the loss on the slice at theta
    kinks: list[float]  # angles in the window where a ReLU of unit 1 switches on a data point (U' jumps)
    profiles: dict  # set -> variant key -> str(nu) -> u, du, d2u (tau x theta; None where undefined), ...
    phi_underflow: dict  # set -> str(nu) -> theta where plain float64 e^{-U/nu} is subnormal or 0 (U/nu > 708.4)
    table1: list[dict]  # per text nu: the paper's values and each variant's
    closest: dict  # variants ranked by mean |log10(ours / paper)| over Table 1's nus, per column
    monotone_in_nu: dict  # variant key -> does max|u''| at table_tau fall as nu grows (text nus)?
    convergence: dict  # first order vs exact as tau -> 0: errors and fitted orders, per text nu
    sweep: list[dict] = field(default_factory=list)  # Table 1 columns for each (seed, batch)
    notes: dict = field(default_factory=dict)
    seconds: float = 0.0

    def to_json(self) -> dict:
        return asdict(self)

    def save(self, out: Path) -> list[Path]:
        return write_result(out, "hopf_cole_relu", self.to_json(), plot(self))


# ----------------------------------------------------------------------------------------- training
@dataclass(frozen=True)
class Trained:
    """The trained net (float64 copies of the trained values), its data and its training record."""

    x: Tensor  # (N,) float64
    y: Tensor  # (N,) float64 in {0, 1}
    a: Tensor  # (m,) float64 copies of the trained values
    u: Tensor  # (m, 2)
    c: float
    final_loss: float
    accuracy: float
    gauge_error: float  # in the training precision
    gauge_error_float64: float
    steps: int
    seconds: float
    loss_history: list[tuple[int, float]]


def _rebalance(a: Tensor, u: Tensor) -> tuple[Tensor, Tensor]:
    """(a/r, r u) with r = sqrt(|a|/|u|): the balanced representative, |a| = |u| = sqrt(|a| |u|)."""
    r = torch.sqrt(a.abs() / u.norm(dim=1))
    return a / r, u * r[:, None]


def _net(X: Tensor, a: Tensor, u: Tensor, c) -> Tensor:
    return (X @ u.T).clamp(min=0) @ a + c


def train(config: Config = Config(), seed: int | None = None, batch: int | None = None, on_epoch=None) -> Trained:
    """The trained net of §3.1: SGD on raw (a, u, c) from a balanced start (config's seed and batch by default).

    Hand-written gradients (a width-2 net on 96 points: autograd would only add overhead).

    Runs on one intra-op thread (restored afterwards): on tensors of 96 x 2 a second thread only adds
    synchronisation, 15 s instead of 0.2 s for the default run on a loaded 2-core machine (measured).
    """
    with _one_thread():
        return _sgd(config, config.seed if seed is None else seed, config.batch if batch is None else batch,
                    on_epoch)


@contextmanager
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _sgd(config: Config, seed: int, batch: int, on_epoch) -> Trained:
    start = time.perf_counter()
    dtype = torch.float32 if config.precision is Precision.FLOAT32 else torch.float64
    generator = torch.Generator().manual_seed(seed)
    n, m = config.samples, config.width
    x64 = torch.linspace(-config.data_half_width, config.data_half_width, n, dtype=torch.float64)
    x64 = x64 + config.jitter * torch.randn(n, generator=generator, dtype=torch.float64)
    y64 = (x64 > 0).to(torch.float64)
    # nn.Linear(1, m) and nn.Linear(m, 1)'s default initialisation, then balanced
    w_in = 2 * torch.rand(m, 2, generator=generator, dtype=torch.float64) - 1  # fan_in 1: U(-1, 1)
    bound = 1 / math.sqrt(m)
    a = (2 * torch.rand(m, generator=generator, dtype=torch.float64) - 1) * bound
    c = ((2 * torch.rand(1, generator=generator, dtype=torch.float64) - 1) * bound)[0]
    a, u = _rebalance(a.to(dtype), w_in.to(dtype))
    c = c.to(dtype)
    X = torch.stack([x64, torch.ones_like(x64)], 1).to(dtype)
    y = y64.to(dtype)
    lr = config.lr
    history, steps = [], 0
    every = max(1, config.epochs // 100)
    for epoch in range(config.epochs):
        order = torch.randperm(n, generator=generator) if batch < n else None
        for first in range(0, n, batch):
            Xb, yb = (X, y) if order is None else (X[order[first:first + batch]], y[order[first:first + batch]])
            z = Xb @ u.T
            hidden = z.clamp(min=0)
            g_f = (torch.sigmoid(hidden @ a + c) - yb) / Xb.shape[0]  # d mean BCE / d logit
            g_a = hidden.T @ g_f
            g_u = ((g_f[:, None] * a[None, :]) * (z > 0)).T @ Xb
            a, u, c = a - lr * g_a, u - lr * g_u, c - lr * g_f.sum()
            if config.gauge is Gauge.PROJECT:
                a, u = _rebalance(a, u)
            steps += 1
        if epoch % every == 0 or epoch == config.epochs - 1:
            history.append((epoch + 1, float(F.binary_cross_entropy_with_logits(_net(X, a, u, c), y))))
        if on_epoch is not None:
            on_epoch()
    gauge = float((a.abs() - u.norm(dim=1)).abs().max())
    a64, u64, c64 = a.double(), u.double(), float(c)
    X64 = torch.stack([x64, torch.ones_like(x64)], 1)
    logits = _net(X64, a64, u64, c64)
    return Trained(
        x=x64, y=y64, a=a64, u=u64, c=c64,
        final_loss=float(F.binary_cross_entropy_with_logits(logits, y64)),
        accuracy=float(((logits > 0) == (y64 > 0.5)).double().mean()),
        gauge_error=gauge, gauge_error_float64=float((a64.abs() - u64.norm(dim=1)).abs().max()),
        steps=steps, seconds=time.perf_counter() - start, loss_history=history)


# -------------------------------------------------------------------------------------------- slice
@dataclass(frozen=True)
class _Slice:
    """U(theta): the loss with s_k rotated by theta, all other quotient coordinates fixed (float64)."""

    X: Tensor  # (N, 2): (x_i, 1)
    y: Tensor
    gamma: Tensor  # (m,)
    s: Tensor  # (m, 2) unit rows
    c: float
    k: int  # the rotated unit

    @classmethod
    def of(cls, trained: Trained, k: int) -> _Slice:
        norm = trained.u.norm(dim=1)
        X = torch.stack([trained.x, torch.ones_like(trained.x)], 1)
        return cls(X, trained.y, trained.a * norm, trained.u / norm[:, None], trained.c, k)

    @property
    def gamma_k(self) -> float:
        return float(self.gamma[self.k])

    def loss(self, theta) -> Tensor:
        theta = torch.as_tensor(theta, dtype=torch.float64)
        s_k = self.s[self.k]
        rotated = torch.cos(theta)[:, None] * s_k + torch.sin(theta)[:, None] * (_J @ s_k)
        others = torch.arange(self.s.shape[0]) != self.k
        rest = (self.X @ self.s[others].T).clamp(min=0) @ self.gamma[others] + self.c  # (N,)
        logits = self.gamma[self.k] * (self.X @ rotated.T).clamp(min=0) + rest[:, None]  # (N, T)
        targets = self.y[:, None].expand_as(logits)
        return F.binary_cross_entropy_with_logits(logits, targets, reduction="none").mean(0)

    def kinks(self) -> Tensor:
        """Sorted angles in [-pi, pi) where s_k(theta) . (x_i, 1) = 0: U is smooth between them."""
        along, across = self.X @ self.s[self.k], self.X @ (_J @ self.s[self.k])
        first = torch.atan2(-along, across)  # cos(t) along + sin(t) across = 0
        both = torch.cat([first, first + math.pi])
        return torch.sort(torch.remainder(both + math.pi, 2 * math.pi) - math.pi).values


def _circle_points(theta: Tensor) -> Tensor:
    return torch.stack([torch.cos(theta), torch.sin(theta)], 1)


def _quadrature(kinks: Tensor, panel: float, k: int) -> tuple[Tensor, Tensor]:
    """Composite k-point Gauss-Legendre nodes and weights on [-pi, pi): panels <= ``panel`` between kinks."""
    breaks = torch.cat([torch.tensor([-math.pi], dtype=torch.float64), kinks,
                        torch.tensor([math.pi], dtype=torch.float64)])
    lo, hi = breaks[:-1], breaks[1:]
    keep = hi - lo > 1e-14
    lo, hi = lo[keep], hi[keep]
    pieces = torch.ceil((hi - lo) / panel).long().clamp(min=1)
    index = torch.repeat_interleave(torch.arange(lo.numel()), pieces)
    offset = torch.arange(int(pieces.sum())) - torch.repeat_interleave(torch.cumsum(pieces, 0) - pieces, pieces)
    length = ((hi - lo) / pieces)[index]
    left = lo[index] + offset * length
    xg, wg = (torch.from_numpy(v) for v in np.polynomial.legendre.leggauss(k))
    nodes = (left[:, None] + 0.5 * length[:, None] * (xg[None] + 1)).reshape(-1)
    weights = (0.5 * length[:, None] * wg[None]).reshape(-1)
    return nodes, weights


def _exact_u(sl: _Slice, kinks: Tensor, lipschitz: float, nu: float, heat_time: float, theta: Tensor,
             panel_nodes: int) -> Tensor:
    """u = -nu log exp(heat_time d^2/dtheta^2) e^{-U/nu} at ``theta``: heat kernel on the circle, log domain.

    ``pde.sphere_local_entropy`` on S^1 runs P_{nu t} = e^{(nu t/2) d^2} (kernel variance nu t), so
    t = 2 heat_time / nu. Nodes: Gauss-Legendre panels between the ReLU kinks of U (the integrand is
    smooth on each), short enough that every weight is <= 0.45 sigma (the routine needs <= sigma/2;
    3.6 sigma for 12 nodes) and <= 2 nu / max|U'| (e^{-U/nu} changes by at most e^2 across a panel).
    """
    if heat_time == 0:
        return sl.loss(theta)
    t = 2 * heat_time / nu
    sigma = math.sqrt(nu * t)
    largest_weight = float(np.polynomial.legendre.leggauss(panel_nodes)[1].max()) / 2  # per unit panel length
    panel = min(0.45 * sigma / largest_weight, 2 * nu / max(lipschitz, 1e-12), 0.25)
    nodes, weights = _quadrature(kinks, panel, panel_nodes)
    return pde.sphere_local_entropy(sl.loss(nodes), _circle_points(nodes), nu, t, weights=weights,
                                    query=_circle_points(theta))


@dataclass(frozen=True)
class _Profile:
    """u and its theta-derivatives on the window, with where they are undefined."""

    u: Tensor
    du: Tensor
    d2u: Tensor
    ok: Tensor  # bool: u defined (w > 0, no underflow)
    ok_derivatives: Tensor  # bool: every stencil point defined
    min_w: float  # may be <= 0 for the first-order formula, or underflow to 0
    log10_min_w: float | None  # None where min_w <= 0
    nonpositive: Tensor  # bool: w <= 0
    underflow: Tensor  # bool: e^{-(U - min U)/nu} underflows


def _first_order(U: Tensor, theta: Tensor, nu: float, heat_time: float, accuracy: int):
    """Eq. (3): w = phi + heat_time phi'' (phi'' by finite differences), as log w and masks.

    phi is scaled by e^{min U/nu} (w = e^{-min U/nu} (phi_hat + heat_time phi_hat'')), which changes
    no digit of the formula and pushes its float64 underflow from U/nu > 708 to (U - min U)/nu > 708.
    """
    shift = float(U.min())
    exponent = (U - shift) / nu
    underflow = exponent > _LOG_TINY
    phi_hat = torch.exp(-exponent)
    w_hat = phi_hat + heat_time * pde.finite_difference(phi_hat, theta, derivative=2, accuracy=accuracy)
    ok = (w_hat > 0) & ~underflow
    log_w = torch.where(ok, torch.log(torch.where(ok, w_hat, torch.ones_like(w_hat))), torch.zeros_like(w_hat))
    min_w = float(w_hat.min()) * math.exp(-shift / nu)
    return log_w - shift / nu, ok, min_w, (w_hat <= 0) & ~underflow, underflow


def _derivatives(u: Tensor, theta: Tensor, ok: Tensor, accuracy: int) -> tuple[Tensor, Tensor, Tensor]:
    """u', u'' by finite differences; a point whose stencil touches an undefined u is undefined too."""
    filled = torch.where(ok, u, torch.zeros_like(u))
    du = pde.finite_difference(filled, theta, derivative=1, accuracy=accuracy)
    d2u = pde.finite_difference(filled, theta, derivative=2, accuracy=accuracy)
    reach = accuracy + 2  # the widest stencil (one-sided, derivative 2) spans accuracy + 2 points
    bad = F.max_pool1d((~ok).double()[None, None], 2 * reach + 1, stride=1, padding=reach)[0, 0] > 0
    return du, d2u, ~bad


def _profile(sl: _Slice, U: Tensor, kinks: Tensor, lipschitz: float, theta: Tensor, variant: Variant, nu: float,
             tau: float, config: Config) -> _Profile:
    heat_time = tau * variant.diffusivity(nu, sl.gamma_k)
    none = torch.zeros_like(U, dtype=torch.bool)
    if variant.method is Method.EXACT:
        u = _exact_u(sl, kinks, lipschitz, nu, heat_time, theta, config.panel_nodes)
        ok, nonpositive, underflow = ~none, none, none
        log_min_w = -float(u.max()) / nu
        min_w = math.exp(log_min_w)
    else:
        log_w, ok, min_w, nonpositive, underflow = _first_order(U, theta, nu, heat_time, config.fd_accuracy)
        u = -nu * log_w
        log_min_w = float(log_w[ok].min()) if bool(ok.all()) else None
    du, d2u, ok_d = _derivatives(u, theta, ok, config.fd_accuracy)
    log10 = None if log_min_w is None else log_min_w / math.log(10)
    return _Profile(u, du, d2u, ok, ok_d, min_w, log10, nonpositive, underflow)


def _listed(values: Tensor, ok: Tensor) -> list:
    return [float(v) if good else None for v, good in zip(values.tolist(), ok.tolist())]


def _resolved_curvature(sl: _Slice, variant: Variant, nu: float, tau: float, config: Config) -> float:
    """max |u''| on the window from pde.hopf_cole on an equispaced circle (u'' exact for its quadrature)."""
    n = config.resolved_points
    grid = -math.pi + 2 * math.pi * torch.arange(n, dtype=torch.float64) / n
    heat_time = tau * variant.diffusivity(nu, sl.gamma_k)
    fields = pde.hopf_cole(sl.loss(grid), grid, nu, 2 * heat_time / nu, domain="circle")
    window = grid.abs() <= config.theta_max
    return float(fields.slope[window].abs().max())


def _table_columns(sl: _Slice, config: Config, variants, resolved: bool = False) -> dict:
    """Table 1's columns (max|u''| and min w at table_tau) for each variant and text nu."""
    theta = torch.from_numpy(config.theta)
    U, kinks = sl.loss(theta), sl.kinks()
    lipschitz = _lipschitz(sl)
    out = {}
    for variant in variants:
        rows = {}
        for nu in config.text_nus:
            p = _profile(sl, U, kinks, lipschitz, theta, variant, nu, config.table_tau, config)
            curvature = p.d2u[p.ok_derivatives].abs()
            row = {"max_abs_d2u": float(curvature.max()) if curvature.numel() else None, "min_w": p.min_w,
                   "log10_min_w": p.log10_min_w,
                   "nonpositive_w": int(p.nonpositive.sum()), "underflow": int(p.underflow.sum())}
            if resolved and variant.method is Method.EXACT:
                row["resolved_max_abs_d2u"] = _resolved_curvature(sl, variant, nu, config.table_tau, config)
            rows[repr(float(nu))] = row
        out[variant.key] = rows
    return out


def _lipschitz(sl: _Slice) -> float:
    grid = torch.linspace(-math.pi, math.pi, 8193, dtype=torch.float64)
    return float((torch.diff(sl.loss(grid)).abs() / (grid[1] - grid[0])).max())


# ---------------------------------------------------------------------------------------------- run
def run(config: Config = Config(), progress: bool = False) -> Result:
    """Train, slice, and compute every variant at both parameter sets (about 10 s on one CPU core)."""
    with _one_thread():  # small tensors: a second thread costs more than it gives (measured, 2 cores)
        return _run(config, progress)


def _run(config: Config, progress: bool) -> Result:
    clock = time.perf_counter()
    sets = {name: config.parameter_set(name) for name in PARAMETER_SETS}
    work = sum(len(nus) * len(VARIANTS) for nus, _ in sets.values()) + len(config.text_nus)
    work += len(config.sweep_seeds) * len(config.sweep_batches)
    bar_context = nullcontext()
    if progress:
        from rich.progress import Progress

        bar_context = Progress(transient=True)
    with bar_context as bar:
        train_task = bar.add_task("training (epochs)", total=config.epochs) if bar is not None else None
        slice_task = bar.add_task("slice: variants, tables, sweep", total=work) if bar is not None else None

        def advance(task) -> None:
            if bar is not None:
                bar.advance(task)

        trained = _sgd(config, config.seed, config.batch, on_epoch=lambda: advance(train_task))
        sl = _Slice.of(trained, config.rotated_unit)
        theta = torch.from_numpy(config.theta)
        U, kinks = sl.loss(theta), sl.kinks()
        lipschitz = _lipschitz(sl)
        gamma_1 = sl.gamma_k

        profiles, underflow = {}, {}
        for name, (nus, taus) in sets.items():
            profiles[name] = {}
            underflow[name] = {repr(float(nu)): theta[U / nu > _LOG_TINY].tolist() for nu in nus}
            for variant in VARIANTS:
                per_nu = {}
                for nu in nus:
                    rows = [_profile(sl, U, kinks, lipschitz, theta, variant, nu, tau, config) for tau in taus]
                    per_nu[repr(float(nu))] = _record(rows, theta)
                    advance(slice_task)
                profiles[name][variant.key] = per_nu

        columns = _table_columns(sl, config, VARIANTS, resolved=True)
        table1 = []
        for nu in config.text_nus:
            key = repr(float(nu))
            row = {"nu": float(nu), "tau": config.table_tau, "paper": PAPER_TABLE1.get(float(nu))}
            row.update({variant.key: columns[variant.key][key] for variant in VARIANTS})
            table1.append(row)
        closest = _closest(table1)
        monotone = {v.key: _falls([columns[v.key][repr(float(nu))]["max_abs_d2u"] for nu in config.text_nus])
                    for v in VARIANTS}
        convergence = _convergence(sl, U, kinks, lipschitz, theta, config, lambda: advance(slice_task))

        sweep = []
        for seed in config.sweep_seeds:
            for batch in config.sweep_batches:
                other = trained if (seed, batch) == (config.seed, config.batch) else _sgd(config, seed, batch, None)
                chosen = (PAPER_VARIANT, Variant(Method.EXACT, Laplacian.FLAT, TimeScale.EQ2),
                          Variant(Method.EXACT, Laplacian.FLAT, TimeScale.HALF))
                sweep.append({"seed": seed, "batch": batch, "final_loss": other.final_loss,
                              "accuracy": other.accuracy, "gauge_error": other.gauge_error,
                              "gamma": (other.a * other.u.norm(dim=1)).tolist(),
                              "table1": _table_columns(_Slice.of(other, config.rotated_unit), config, chosen)})
                advance(slice_task)

    training = {"final_loss": trained.final_loss, "accuracy": trained.accuracy, "gauge_error": trained.gauge_error,
                "gauge_error_float64": trained.gauge_error_float64, "steps": trained.steps,
                "seconds": trained.seconds, "loss_history": trained.loss_history, "paper": dict(PAPER_TRAINING)}
    quotient = {"gamma": sl.gamma.tolist(), "s": sl.s.tolist(), "c": sl.c, "a": trained.a.tolist(),
                "u": trained.u.tolist(), "metric_factor": abs(gamma_1)}
    window_kinks = kinks[kinks.abs() <= config.theta_max].tolist()
    return Result(config, training, quotient, {"x": trained.x.tolist(), "y": trained.y.tolist()},
                  config.theta.tolist(), U.tolist(), window_kinks, profiles, underflow, table1, closest, monotone,
                  convergence, sweep, _notes(config), time.perf_counter() - clock)


def _record(rows: list[_Profile], theta: Tensor) -> dict:
    grid = theta.tolist()
    return {
        "u": [_listed(p.u, p.ok) for p in rows],
        "du": [_listed(p.du, p.ok_derivatives) for p in rows],
        "d2u": [_listed(p.d2u, p.ok_derivatives) for p in rows],
        "min_w": [p.min_w for p in rows],
        "log10_min_w": [p.log10_min_w for p in rows],
        "max_abs_d2u": [float(p.d2u[p.ok_derivatives].abs().max()) if bool(p.ok_derivatives.any()) else None
                        for p in rows],
        "nonpositive_w_at": [[grid[i] for i in torch.nonzero(p.nonpositive).flatten().tolist()] for p in rows],
        "underflow_at": [[grid[i] for i in torch.nonzero(p.underflow).flatten().tolist()] for p in rows],
    }


def _falls(values: list) -> bool | None:
    if any(v is None for v in values):
        return None
    return all(b < a for a, b in itertools.pairwise(values))


def _closest(table1: list[dict]) -> dict:
    """Variants ranked by mean |log10(ours/paper)| over the nus the paper tabulates, per column."""
    out = {}
    for column in ("max_abs_d2u", "min_w"):
        scores = {}
        for variant in VARIANTS:
            errs = []
            for row in table1:
                entry, paper = row[variant.key], (row["paper"] or {}).get(column)
                if paper is None:
                    continue
                ours = entry["log10_min_w"] if column == "min_w" else _log10(entry["max_abs_d2u"])
                errs.append(abs(ours - math.log10(paper)) if ours is not None else math.inf)
            if errs:
                scores[variant.key] = sum(errs) / len(errs)
        ranked = sorted(scores.items(), key=lambda kv: kv[1])
        out[column] = [{"variant": k, "mean_abs_log10_ratio": v if math.isfinite(v) else None} for k, v in ranked]
    return out


def _log10(value: float | None) -> float | None:
    return math.log10(value) if value is not None and value > 0 else None


def _convergence(sl: _Slice, U: Tensor, kinks: Tensor, lipschitz: float, theta: Tensor, config: Config,
                 advance) -> dict:
    """max_theta |u_first-order - u_reference| at tau = table_tau 2^-k (flat, eq2), and fitted orders.

    Two references: the exact semigroup on the circle, and exp(tau nu L_h) phi with L_h the very
    finite-difference matrix eq. (3) uses on the window (torch.matrix_exp). Eq. (3) is the first two
    Taylor terms of the second, so that gap is O(tau^2); the gap to the first is O(tau) wherever
    L_h phi != phi'' (U' jumps at the ReLU kinks, and the O(h^2) of the stencil).
    """
    taus = [config.table_tau * 2.0**-k for k in range(config.convergence_halvings)]
    first = Variant(Method.FIRST_ORDER, Laplacian.FLAT, TimeScale.EQ2)
    exact = Variant(Method.EXACT, Laplacian.FLAT, TimeScale.EQ2)
    n = theta.numel()
    L_h = pde.finite_difference(torch.eye(n, dtype=torch.float64), theta, derivative=2,
                                accuracy=config.fd_accuracy).T
    shift = float(U.min())
    out = {"taus": taus, "laplacian": "flat", "time_scale": "eq2", "vs_exact": {}, "vs_discrete": {},
           "order_vs_exact": {}, "order_vs_discrete": {}}
    for nu in config.text_nus:
        key = repr(float(nu))
        gaps = {"vs_exact": [], "vs_discrete": []}
        for tau in taus:
            a = _profile(sl, U, kinks, lipschitz, theta, first, nu, tau, config)
            b = _profile(sl, U, kinks, lipschitz, theta, exact, nu, tau, config)
            w_disc = torch.linalg.matrix_exp(tau * first.diffusivity(nu, 1.0) * L_h) @ torch.exp(-(U - shift) / nu)
            both = a.ok & (w_disc > 0)
            u_disc = shift - nu * torch.log(torch.where(both, w_disc, torch.ones_like(w_disc)))
            for name, ref, mask in (("vs_exact", b.u, a.ok), ("vs_discrete", u_disc, both)):
                diff = (a.u - ref).abs()[mask]
                gaps[name].append(float(diff.max()) if diff.numel() else None)
        advance()
        for name, errs in gaps.items():
            out[name][key] = errs
            out[f"order_{name}"][key] = _order(taus, errs)
    return out


def _order(taus: list[float], errs: list) -> float | None:
    """Least-squares slope of log error vs log tau over the four smallest taus."""
    tail = [(t, e) for t, e in zip(taus, errs) if e is not None and e > 0][-4:]
    if len(tail) < 2:
        return None
    return float(np.polyfit(np.log([t for t, _ in tail]), np.log([e for _, e in tail]), 1)[0])


def _notes(config: Config) -> dict:
    return {
        "parameter_sets": "The text of §3.1 uses nu in {0.05, 0.1, 0.5}, tau in {0, 0.006, 0.012, 0.05, 0.1} "
                          "(and Table 1 at tau = 0.1); Figure 2's caption uses nu in {0.01, 0.1, 1.0}, tau in "
                          "{0, 0.006, 0.012, 0.030, 0.054}. They differ; both are run ('text', 'caption').",
        "variants": "method (first-order eq. 3 | exact semigroup) x Laplacian (flat d2/dtheta2 | balanced "
                    "(1/|gamma_1|) d2/dtheta2) x time (eq2: exp(nu tau Delta) | half: exp(nu tau Delta / 2), §2.3).",
        "paper_variant": PAPER_VARIANT.key,
        "undefined": "None in u, du, d2u where the first-order w <= 0 (log undefined) or e^{-(U - min U)/nu} "
                     "underflows, and at derivatives whose stencil touches such a point.",
    }


# --------------------------------------------------------------------------------------------- plot
def plot(result: Result):
    """Figure 2: rows u, u', u''; columns the caption's nu; colour tau; solid exact, dotted eq. (3)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    config = result.config
    nus, taus = config.caption_nus, config.caption_taus
    exact = Variant(Method.EXACT, config.figure_laplacian, config.figure_time_scale).key
    first = Variant(Method.FIRST_ORDER, config.figure_laplacian, config.figure_time_scale).key
    theta = np.asarray(result.theta)
    fig, axes = plt.subplots(3, len(nus), figsize=(4.3 * len(nus), 8.4), squeeze=False, layout="constrained")
    colours = plt.cm.viridis(np.linspace(0, 0.9, len(taus)))
    labels = ("u = -nu log w", "du/dtheta", "d2u/dtheta2")
    for col, nu in enumerate(nus):
        key = repr(float(nu))
        for row, field_name in enumerate(("u", "du", "d2u")):
            ax = axes[row, col]
            shown = []
            for colour, tau, values in zip(colours, taus, result.profiles["caption"][exact][key][field_name]):
                v = np.array([np.nan if x is None else x for x in values])
                shown.append(v)
                ax.plot(theta, v, color=colour, lw=1.4, label=f"tau={tau:g}")
            for colour, values in zip(colours, result.profiles["caption"][first][key][field_name]):
                ax.plot(theta, [np.nan if x is None else x for x in values], color=colour, lw=0.9, ls=":")
            finite = np.concatenate(shown)
            finite = finite[np.isfinite(finite)]
            if finite.size:
                lo, hi = float(finite.min()), float(finite.max())
                pad = 0.15 * max(hi - lo, 1e-12)
                ax.set_ylim(lo - pad, hi + pad)  # eq. (3)'s dotted curves may leave the frame
            ax.grid(alpha=0.3)
            if row == 0:
                ax.set_title(f"nu = {nu:g}")
            if col == 0:
                ax.set_ylabel(labels[row])
            if row == 2:
                ax.set_xlabel("theta (rotation of s_1)")
    axes[0, 0].legend(fontsize=7, loc="best")
    t = result.training
    fig.suptitle(f"Hopf-Cole profile on the s_1 slice ({config.figure_laplacian}, {config.figure_time_scale}): "
                 f"solid exact semigroup, dotted first order eq. (3) (clipped). Trained: loss "
                 f"{t['final_loss']:.4g}, acc {t['accuracy']:.3f}, gauge err {t['gauge_error']:.3g}", fontsize=9)
    return fig
