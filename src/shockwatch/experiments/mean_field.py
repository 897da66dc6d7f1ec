r"""Miyagawa 2026, §5.5 (Thm 5.4, Assumption 5.3): mean-field transport on the rescaling quotient, measured.

A wide two-layer ReLU network f(x) = (1/m) sum_j a_j relu(u_j . x~), x~ = (x, 1), trained by
gradient descent with step eta on the mean-field time scale (theta_j <- theta_j - eta m grad_j L,
t = eta n; L the half mean squared error on data from a small ReLU teacher). Its particles are
pushed to gamma_j = a_j |u_j|, s_j = u_j / |u_j| (``meanfield.pushforward``).

1. Weak transport (Thm 5.4). For 13 test functions phi(gamma, s) (gamma, gamma^2, tanh gamma,
   gamma s_k, bumps b_c(s) and gamma b_c(s)) the left side d/dt int phi d nu_t is the forward
   difference of the empirical pushforward along the actual run, the right side int grad phi .
   V-bar d nu_t with three readings of V-bar:
   - "particles": D pi V at each particle (the chain rule; the proof's first line, no assumption);
   - "balanced": V-bar[nu] of the balanced section, from nu alone (Assumption 5.3's closure);
   - "conserved charge": V-bar[nu] on the section of each particle's charge q_j(0) = a_j^2 - |u_j|^2
     at t = 0 (conserved by the flow: the closure on the measure of (gamma, s, q)).
   The residual (max over steps of |left - right| over max |right|, max over phi) is measured for
   each eta from two starts with the SAME nu_0: a balanced one and its rebalancing by random
   r_j = exp(init_imbalance * xi_j). Theory: the forward difference is off by
   (eta/2) int D^2(phi o pi)[V, V] d mu, so first order (slope 1) wherever the closure is exact;
   under gradient descent the charge drifts by eta^2 (|V_a|^2 - |V_u|^2) per step, so the closures
   inherit an O(eta) error on top; the balanced closure of an unbalanced start is off by O(1)
   (slope 0).
2. Assumption 5.3 by rebalancing. At t = 0 and at t = horizon (balanced again), K representatives
   (a_j / r_jk, r_jk u_j), r_jk = exp(sigma xi_jk), of the same nu: the pushforward, f and every
   integral stay put (round-off); the pushed velocities move by the analytic factors
   (r^2 + r^-2)/2 (gamma) and r^-2 (s). The relative spread across representatives (RMS over units
   of the std over k, over the RMS of the balanced velocity) is compared with its law for
   log r ~ N(0, sigma^2): sqrt((1 + e^{8 sigma^2})/2 - e^{4 sigma^2}) (gamma, ~ 2.83 sigma^2) and
   sqrt(e^{8 sigma^2} - e^{4 sigma^2}) (s, ~ 2 sigma).

What the paper leaves open, and the reading taken here: V[mu] is the gradient-flow velocity of the
mean-field scaling (1/m, time t = eta n); x~ = (x, 1) so that s lives on S^d and the bias rescales
with the unit; "pushed velocity" is D pi applied to that velocity (not a horizontal projection);
M = R x S^d carries the product metric, so grad phi . V-bar pairs the gamma-derivative with
d gamma and the ambient s-gradient with the tangent d s.

Measured at the default size (m = 4096, d = 1, n = 64, horizon 2, eta = 0.2 ... 0.0125; 9 s on one
core): residual of the balanced start 0.68 -> 0.035, slope 1.07 (1.02 between the two smallest
etas), the same for all three closures (their right sides agree to 1e-16 at t = 0); unbalanced start
(log r ~ N(0, 0.25)): particles and conserved-charge closures 2.8 -> 0.135, slope 1.09 (local 1.03);
balanced closure 2.6 -> 0.88, local slope 0.07: it does not converge (its right side is off by 41%
at t = 0). Charge drift O(eta) (slope 1.02). Same nu_0 (gap 3e-17), nu_T 65% apart, final losses
0.159 vs 0.101. Rebalancing leaves pushforward, f and integrals put to <= 1e-15 and matches the
analytic factors to 2e-15 (1.7e-12 at sigma = 1); the spread follows the law to 10% for sigma <= 0.5
(at sigma = 1 the log-normal tail makes the sample spread erratic: 45 vs 38, 132 vs 54).
Unbalanced units are stiff: the angular speed is |a|/|u| |P_s H|, so the first-order regime needs
eta |a|/|u| << 1 (at m = 512, |a|/|u| reaches 13 and eta = 0.05 turns such a unit by 0.9 rad).
"""

from __future__ import annotations

import math
import time
from contextlib import contextmanager, nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from .. import meanfield as mf
from ._files import write_result

NAME = "mean-field"

CLOSURES = ("particles", "balanced", "conserved charge")
STARTS = ("balanced", "unbalanced")


@dataclass(frozen=True)
class Config:
    width: int = 4096  # m, particles (hidden units)
    input_dim: int = 1  # d; s lives on S^d
    samples: int = 64  # n, training points, uniform in [-1, 1]^d
    teacher_units: int = 4
    horizon: float = 2.0  # t = eta * steps covered by every run
    etas: tuple[float, ...] = (0.2, 0.1, 0.05, 0.025, 0.0125)
    batch: int | None = None  # None: full-batch gradient descent; k: SGD on k samples per step
    init_imbalance: float = 0.5  # sigma of log r_j for the unbalanced start (same nu_0)
    strengths: tuple[float, ...] = (0.0, 0.05, 0.1, 0.2, 0.5, 1.0)  # sigma of log r for rebalancing
    representatives: int = 8  # K per strength
    bump_width: float = 0.5
    snapshot_particles: int = 600  # particles stored per snapshot for the figure
    device: str = "cpu"
    seed: int = 0

    def __post_init__(self) -> None:
        if self.width < 1 or self.input_dim < 1 or self.samples < 1 or self.teacher_units < 1:
            raise ValueError(f"need width, input_dim, samples, teacher_units >= 1, got {self.width=}, "
                             f"{self.input_dim=}, {self.samples=}, {self.teacher_units=}")
        if not (self.horizon > 0 and math.isfinite(self.horizon)):
            raise ValueError(f"horizon must be finite and > 0, got {self.horizon}")
        if len(set(self.etas)) < 2 or any(not (e > 0 and math.isfinite(e)) for e in self.etas):
            raise ValueError(f"etas must hold at least two distinct finite values > 0 (to fit a slope), "
                             f"got {self.etas}")
        if any(round(self.horizon / e) < 1 for e in self.etas):
            raise ValueError(f"every eta must be <= horizon ({self.horizon}) so that each run takes a step, "
                             f"got {self.etas}")
        if self.batch is not None and not 1 <= self.batch <= self.samples:
            raise ValueError(f"batch must be None (full batch) or in [1, samples={self.samples}], got {self.batch}")
        if not (self.init_imbalance >= 0 and math.isfinite(self.init_imbalance)):
            raise ValueError(f"init_imbalance must be finite and >= 0, got {self.init_imbalance}")
        if not self.strengths or any(not (s >= 0 and math.isfinite(s)) for s in self.strengths):
            raise ValueError(f"strengths must be a non-empty tuple of finite values >= 0, got {self.strengths}")
        if self.representatives < 2:
            raise ValueError(f"representatives must be >= 2 (a spread needs two), got {self.representatives}")
        if not (self.bump_width > 0 and math.isfinite(self.bump_width)) or self.snapshot_particles < 1:
            raise ValueError(f"need bump_width > 0 and snapshot_particles >= 1, got {self.bump_width=}, "
                             f"{self.snapshot_particles=}")
        try:
            torch.device(self.device)
        except RuntimeError as error:
            raise ValueError(f"device must be a torch device string such as 'cpu' or 'cuda', "
                             f"got {self.device!r}") from error

    @classmethod
    def full(cls) -> Config:
        """A larger run: 65536 particles, 2-D inputs, 256 samples, etas down to 1/320."""
        return cls(width=65536, input_dim=2, samples=256, etas=(0.2, 0.1, 0.05, 0.025, 0.0125, 0.00625, 0.003125),
                   representatives=16, device="cuda" if torch.cuda.is_available() else "cpu")


@dataclass(frozen=True)
class Result:
    config: Config
    test_functions: list[str]
    residual: dict[str, dict[str, list[float]]]  # start -> closure -> per eta (relative, max over phi and steps)
    residual_per_function: dict[str, dict[str, list[float]]]  # start -> phi -> per eta ("particles")
    slope: dict[str, dict[str, float]]  # start -> closure -> least-squares slope of log residual vs log eta
    local_slope: dict[str, dict[str, float]]  # start -> closure -> slope between the two smallest etas
    closure_gap: dict[str, dict[str, float]]  # start -> closure -> |rhs - rhs_particles| / |rhs_particles| at t=0
    charge_drift: dict[str, list[float]]  # start -> per eta: max_j |q_j(T) - q_j(0)| / (a_j^2 + |u_j|^2)
    charge_drift_slope: dict[str, float]
    loss_times: list[float]
    loss: dict[str, list[float]]  # start -> full-batch loss (smallest eta)
    same_start_gap: dict[str, float]  # "t=0", "t=T": max_phi |int phi d nu^bal - int phi d nu^unbal| / max |.|
    snapshot_times: list[float]
    snapshots: list[dict[str, list[float]]]  # balanced start, smallest eta: gamma and angle of (s_0, s_1)
    rebalancing: dict[str, dict[str, list[float]]]  # state -> metric -> per strength
    predicted: dict[str, list[float]]  # spread_gamma, spread_s, deviation_gamma, deviation_s per strength
    runtime_s: float

    def to_json(self) -> dict:
        return asdict(self)

    def save(self, out: Path) -> list[Path]:
        return write_result(out, "mean_field", self.to_json(), plot(self))


def _data(config: Config, generator: torch.Generator, dtype: torch.dtype,
          device: torch.device) -> tuple[Tensor, Tensor]:
    x = 2 * torch.rand(config.samples, config.input_dim, generator=generator, dtype=dtype) - 1
    x_tilde = mf.lift(x)
    teacher_a = torch.randn(config.teacher_units, generator=generator, dtype=dtype)
    teacher_u = torch.randn(config.teacher_units, config.input_dim + 1, generator=generator, dtype=dtype)
    y = mf.output(teacher_a, teacher_u, x_tilde)
    y = (y - y.mean()) / y.std() if config.samples > 1 and float(y.std()) > 0 else y
    return x_tilde.to(device), y.to(device)


def _velocity(a: Tensor, u: Tensor, x_tilde: Tensor, y: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """-m grad L by autograd (independent of ``meanfield.particle_velocity``) and L itself."""
    a, u = a.detach().requires_grad_(True), u.detach().requires_grad_(True)
    loss = 0.5 * (mf.output(a, u, x_tilde) - y).square().mean()
    grad_a, grad_u = torch.autograd.grad(loss, (a, u))
    m = a.shape[0]
    return -m * grad_a, -m * grad_u, loss.detach()


def _train(config: Config, a: Tensor, u: Tensor, x_tilde: Tensor, y: Tensor, eta: float, functions,
           advance, record: bool) -> dict:
    """One run of ``round(horizon / eta)`` steps; transport residuals of every closure at every step."""
    steps = round(config.horizon / eta)
    q0 = mf.charge(a, u)
    generator = torch.Generator().manual_seed(config.seed + 7)
    worst = {c: torch.zeros(len(functions), dtype=a.dtype, device=a.device) for c in CLOSURES}
    scale = torch.zeros(len(functions), dtype=a.dtype, device=a.device)
    gap0: dict[str, float] = {}
    losses, snapshots = [], []
    snap_at = {0, steps // 2, steps} if record else set()
    integrals_before = mf.integrals(functions, *mf.pushforward(a, u))
    for n in range(steps + 1):
        if n in snap_at:
            snapshots.append((n * eta, *mf.pushforward(a, u)))
        if n == steps:
            break
        if config.batch is None:
            xb, yb = x_tilde, y
        else:
            index = torch.randperm(config.samples, generator=generator)[: config.batch].to(x_tilde.device)
            xb, yb = x_tilde[index], y[index]
        va, vu, loss = _velocity(a, u, xb, yb)
        if record:
            losses.append(float(loss) if config.batch is None else
                          float(0.5 * (mf.output(a, u, x_tilde) - y).square().mean()))
        a_next, u_next = a + eta * va, u + eta * vu
        if not (bool(torch.isfinite(a_next).all()) and bool(torch.isfinite(u_next).all())):
            raise RuntimeError(f"gradient descent diverged at eta = {eta}, step {n}: use smaller etas")
        before, after = mf.pushforward(a, u), mf.pushforward(a_next, u_next)
        integrals_after = mf.integrals(functions, *after)
        lhs = (integrals_after - integrals_before) / eta  # = transport_residual + rhs, integrals reused
        velocities = {"particles": mf.pushed_velocity(a, u, va, vu),
                      "balanced": mf.quotient_velocity(*before, xb, yb),
                      "conserved charge": mf.quotient_velocity(*before, xb, yb, charge=q0)}
        rhs = {closure: mf.weak_velocity(functions, *before, *v) for closure, v in velocities.items()}
        scale = torch.maximum(scale, rhs["particles"].abs())
        for closure in CLOSURES:
            worst[closure] = torch.maximum(worst[closure], (lhs - rhs[closure]).abs())
            if n == 0:
                gap0[closure] = float((rhs[closure] - rhs["particles"]).norm() / rhs["particles"].norm())
        a, u, integrals_before = a_next, u_next, integrals_after
        advance()
    drift = float(((mf.charge(a, u) - q0).abs() / (a.square() + u.square().sum(1))).max())
    relative = {c: (worst[c] / scale).tolist() for c in CLOSURES}
    return {"relative": relative, "gap0": gap0, "drift": drift, "losses": losses, "snapshots": snapshots,
            "final": (a, u)}


def _rebalancing(config: Config, a: Tensor, u: Tensor, x_tilde: Tensor, y: Tensor, functions,
                 generator: torch.Generator) -> dict[str, list[float]]:
    """Every metric of part 2 at one balanced state, per strength."""
    gamma, s = mf.pushforward(a, u)
    f0, i0 = mf.output(a, u, x_tilde), mf.integrals(functions, gamma, s)
    va, vu, _ = _velocity(a, u, x_tilde, y)
    dg0, ds0 = mf.pushed_velocity(a, u, va, vu)
    w0 = mf.weak_velocity(functions, gamma, s, dg0, ds0)
    closed_g, closed_s = mf.quotient_velocity(gamma, s, x_tilde, y)
    closure_gap = max(float((closed_g - dg0).abs().max() / dg0.abs().max()),
                      float((closed_s - ds0).abs().max() / ds0.abs().max()))
    metrics: dict[str, list[float]] = {k: [] for k in (
        "spread_gamma", "spread_s", "deviation_gamma", "deviation_s", "weak_spread", "formula_error",
        "pushforward_change", "output_change", "integral_change", "balanced_closure_gap")}
    m, k_reps = a.shape[0], config.representatives
    for sigma in config.strengths:
        r = torch.exp(sigma * torch.randn(k_reps, m, generator=generator, dtype=a.dtype)).to(a.device)
        dgs, dss, ws = [], [], []
        formula = moved = out_change = int_change = 0.0
        for rk in r:
            ak, uk = mf.rebalance(a, u, rk)
            gk, sk = mf.pushforward(ak, uk)
            moved = max(moved, float((gk - gamma).abs().max() / gamma.abs().max()), float((sk - s).abs().max()))
            out_change = max(out_change, float((mf.output(ak, uk, x_tilde) - f0).abs().max() / f0.abs().max()))
            int_change = max(int_change, float((mf.integrals(functions, gk, sk) - i0).abs().max() / i0.abs().max()))
            vak, vuk, _ = _velocity(ak, uk, x_tilde, y)
            dgk, dsk = mf.pushed_velocity(ak, uk, vak, vuk)
            formula = max(formula, float((dgk - (rk.square() + rk.pow(-2)) / 2 * dg0).abs().max() / dg0.abs().max()),
                          float((dsk - rk.pow(-2).unsqueeze(1) * ds0).abs().max() / ds0.abs().max()))
            dgs.append(dgk), dss.append(dsk), ws.append(mf.weak_velocity(functions, gamma, s, dgk, dsk))
        dg, ds, w = torch.stack(dgs), torch.stack(dss), torch.stack(ws)
        metrics["spread_gamma"].append(float(dg.var(0).sum().sqrt() / dg0.norm()))
        metrics["spread_s"].append(float(ds.var(0).sum().sqrt() / ds0.norm()))
        metrics["deviation_gamma"].append(float((dg - dg0).norm(dim=1).mean() / dg0.norm()))
        metrics["deviation_s"].append(float((ds - ds0).flatten(1).norm(dim=1).mean() / ds0.norm()))
        metrics["weak_spread"].append(float(w.var(0).sum().sqrt() / w0.norm()))
        metrics["formula_error"].append(formula)
        metrics["pushforward_change"].append(moved)
        metrics["output_change"].append(out_change)
        metrics["integral_change"].append(int_change)
        metrics["balanced_closure_gap"].append(closure_gap)
    return metrics


def _predicted(strengths: tuple[float, ...]) -> dict[str, list[float]]:
    """Spread and mean deviation of c_gamma = cosh(2 sigma xi), c_s = e^{-2 sigma xi}, xi ~ N(0, 1)."""
    out: dict[str, list[float]] = {"spread_gamma": [], "spread_s": [], "deviation_gamma": [], "deviation_s": []}
    for sigma in strengths:
        e2, e4, e8 = (math.exp(k * sigma**2) for k in (2, 4, 8))
        out["spread_gamma"].append(math.sqrt(max((1 + e8) / 2 - e4, 0.0)))
        out["spread_s"].append(math.sqrt(max(e8 - e4, 0.0)))
        out["deviation_gamma"].append(math.sqrt(max((1 + e8) / 2 - 2 * e2 + 1, 0.0)))
        out["deviation_s"].append(math.sqrt(max(e8 - 2 * e2 + 1, 0.0)))
    return out


def _slope(etas: list[float], values: list[float]) -> float:
    """Least-squares slope of log value vs log eta (nan if a value is not positive)."""
    v = np.asarray(values, dtype=float)
    if not np.all(v > 0):
        return float("nan")
    return float(np.polyfit(np.log(etas), np.log(v), 1)[0])


@contextmanager
def _single_threaded(device: torch.device):
    """torch's intra-op threads set to 1 on CPU for the run, restored after.

    Every tensor here is small (m x n ~ 3e5 entries) and there are ~100 ops per step: with 2 threads
    on a loaded 2-core machine each op paid ~2.8 ms of synchronisation (exp of 4096 entries: 2.8 ms
    vs 14 us on one thread), and the default run took 79 s instead of 9 s.
    """
    threads = torch.get_num_threads()
    if device.type == "cpu":
        torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def run(config: Config = Config(), progress: bool = False) -> Result:
    """Both parts at every eta and strength (about 9 s on one CPU core at the default size)."""
    with _single_threaded(torch.device(config.device)):
        return _run(config, progress)


def _run(config: Config, progress: bool) -> Result:
    start_clock = time.perf_counter()
    dtype, device = torch.float64, torch.device(config.device)
    generator = torch.Generator().manual_seed(config.seed)
    x_tilde, y = _data(config, generator, dtype, device)
    functions = mf.default_test_functions(config.input_dim + 1, width=config.bump_width)
    a0 = torch.randn(config.width, generator=generator, dtype=dtype)
    u0 = torch.randn(config.width, config.input_dim + 1, generator=generator, dtype=dtype)
    balanced = mf.balance(a0.to(device), u0.to(device))
    r_init = torch.exp(config.init_imbalance * torch.randn(config.width, generator=generator, dtype=dtype))
    starts = {"balanced": balanced, "unbalanced": mf.rebalance(*balanced, r_init.to(device))}
    etas = list(config.etas)
    smallest = min(etas)
    total = 2 * sum(round(config.horizon / e) for e in etas)

    if progress:
        from rich.progress import Progress

        bar_context = Progress(transient=True)
    else:
        bar_context = nullcontext()
    runs: dict[str, dict[float, dict]] = {name: {} for name in STARTS}
    with bar_context as bar:
        task = bar.add_task("mean-field runs", total=total) if bar is not None else None

        def advance() -> None:
            if bar is not None:
                bar.advance(task)

        for name, (a, u) in starts.items():
            for eta in etas:
                runs[name][eta] = _train(config, a, u, x_tilde, y, eta, functions, advance, record=eta == smallest)

    names = [phi.name for phi in functions]
    residual = {name: {c: [max(runs[name][e]["relative"][c]) for e in etas] for c in CLOSURES} for name in STARTS}
    per_function = {name: {phi: [runs[name][e]["relative"]["particles"][i] for e in etas]
                           for i, phi in enumerate(names)} for name in STARTS}
    slope = {name: {c: _slope(etas, residual[name][c]) for c in CLOSURES} for name in STARTS}
    two = sorted(range(len(etas)), key=etas.__getitem__)[:2]
    local = {name: {c: _slope([etas[i] for i in two], [residual[name][c][i] for i in two]) for c in CLOSURES}
             for name in STARTS}
    drift = {name: [runs[name][e]["drift"] for e in etas] for name in STARTS}
    finals = {name: runs[name][smallest]["final"] for name in STARTS}
    integral_at = {name: mf.integrals(functions, *mf.pushforward(*finals[name])) for name in STARTS}
    start_integrals = {name: mf.integrals(functions, *mf.pushforward(*starts[name])) for name in STARTS}

    def gap(values: dict[str, Tensor]) -> float:
        return float((values["balanced"] - values["unbalanced"]).abs().max() / values["balanced"].abs().max())

    snaps = runs["balanced"][smallest]["snapshots"]
    keep = slice(0, min(config.snapshot_particles, config.width))
    snapshots = [{"gamma": g[keep].tolist(), "angle": torch.atan2(s[keep, 1], s[keep, 0]).tolist()}
                 for _, g, s in snaps]
    rebalance_generator = torch.Generator().manual_seed(config.seed + 1)
    rebalancing = {"t=0": _rebalancing(config, *balanced, x_tilde, y, functions, rebalance_generator),
                   "t=T": _rebalancing(config, *mf.balance(*finals["balanced"]), x_tilde, y, functions,
                                       rebalance_generator)}
    steps_small = round(config.horizon / smallest)
    return Result(
        config=config, test_functions=names, residual=residual, residual_per_function=per_function, slope=slope,
        local_slope=local,
        closure_gap={name: runs[name][etas[0]]["gap0"] for name in STARTS},
        charge_drift=drift, charge_drift_slope={name: _slope(etas, drift[name]) for name in STARTS},
        loss_times=[n * smallest for n in range(steps_small)],
        loss={name: runs[name][smallest]["losses"] for name in STARTS},
        same_start_gap={"t=0": gap(start_integrals), "t=T": gap(integral_at)},
        snapshot_times=[t for t, _, _ in snaps], snapshots=snapshots, rebalancing=rebalancing,
        predicted=_predicted(config.strengths), runtime_s=time.perf_counter() - start_clock)


def plot(result: Result):
    """Four panels: residual vs eta, nu_t at three times, velocity spread vs sigma, loss; reads only ``result``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 4, figsize=(19, 4.2), layout="constrained")
    etas = np.asarray(result.config.etas)
    ax = axes[0]
    styles = {"particles": "-o", "balanced": "--s", "conserved charge": ":^"}
    colours = {"balanced": "tab:blue", "unbalanced": "tab:red"}
    for start in STARTS:
        for closure in CLOSURES:
            ax.loglog(etas, result.residual[start][closure], styles[closure], color=colours[start], ms=4,
                      label=f"{start} start, {closure} (slope {result.slope[start][closure]:.2f}, "
                            f"last two {result.local_slope[start][closure]:.2f})")
    ref = result.residual["balanced"]["particles"]
    i_min = int(np.argmin(etas))
    ax.loglog(etas, ref[i_min] * etas / etas[i_min], "k-", lw=0.6, alpha=0.5, label="slope 1")
    ax.set_xticks(etas, [f"{e:g}" for e in etas], minor=False)
    ax.set_xticks([], minor=True)
    ax.set_xlabel("eta")
    ax.set_ylabel("max |d/dt int phi - int grad phi . V| / max |rhs|")
    ax.set_title("Thm 5.4: weak transport residual")
    ax.legend(fontsize=6)
    ax.grid(alpha=0.3, which="both")

    ax = axes[1]
    for colour, t, snap in zip(plt.cm.viridis(np.linspace(0, 0.9, len(result.snapshots))), result.snapshot_times,
                               result.snapshots):
        ax.scatter(snap["angle"], snap["gamma"], s=3, color=colour, alpha=0.6, label=f"t = {t:.2f}")
    ax.set_xlabel("angle of (s_0, s_1)")
    ax.set_ylabel("gamma = a |u|")
    ax.set_title("pushforward nu_t (balanced start)")
    ax.legend(fontsize=7, markerscale=3)
    ax.grid(alpha=0.3)

    ax = axes[2]
    sigma = np.asarray(result.config.strengths)
    positive = sigma > 0
    for part, colour in (("gamma", "tab:purple"), ("s", "tab:green")):
        ax.loglog(sigma[positive], np.asarray(result.predicted[f"spread_{part}"])[positive], "-", color=colour,
                  lw=1, label=f"d {part}: law")
        for state, marker in (("t=0", "o"), ("t=T", "x")):
            ax.loglog(sigma[positive], np.asarray(result.rebalancing[state][f"spread_{part}"])[positive], marker,
                      color=colour, label=f"d {part}: measured {state}")
    ax.set_xlabel("sigma of log r (rebalancing strength)")
    ax.set_ylabel("spread of pushed velocity / |balanced|")
    ax.set_title("Assumption 5.3: spread across representatives")
    ax.legend(fontsize=6)
    ax.grid(alpha=0.3, which="both")

    ax = axes[3]
    for start in STARTS:
        ax.semilogy(result.loss_times, result.loss[start], color=colours[start], label=f"{start} start")
    ax.set_xlabel("t = eta * step")
    ax.set_ylabel("loss")
    ax.set_title(f"same nu_0, different nu_t (gap at T: {result.same_start_gap['t=T']:.1e})")
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3, which="both")
    fig.suptitle("Mean-field two-layer ReLU network on the rescaling quotient (Miyagawa 2026, §5.5)", fontsize=10)
    return fig
