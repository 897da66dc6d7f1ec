r"""Conservative finite-volume solvers for (source-corrected, viscous) Burgers (Miyagawa 2026, Thm 4.2).

    v_tau + (v^2/2)_s = (nu/2) (v_ss + kappa v_s + kappa' v) = (nu/2) (v_s + kappa v)_s,

so the whole right-hand side is the derivative of a flux and the scheme stays conservative:
F = v^2/2 - (nu/2)(v_s + kappa v). Unknowns are cell averages. The advective part uses the
exact Riemann (Godunov) flux of Burgers between reconstructed states; the viscous part a centred
face derivative. Everything is vectorised over cells and over any leading batch axes (many
initial data or many nu at once, on any torch device).
"""

from __future__ import annotations

import enum
import functools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor

from ._interop import as_tensor, check_choice, check_finite, check_positive, uniform_step

__all__ = ["Boundary", "Godunov", "WENO5", "Scheme", "Stepper", "ssp_step", "solve_burgers", "solve_burgers_at", "godunov_flux"]

_GHOST = 3  # WENO5 needs 3 ghost cells per side; Godunov reads 1 of them


class Boundary(enum.StrEnum):
    PERIODIC = "periodic"  # grid = one period, cell centres a + (i + 1/2) h or any uniform offset
    OUTFLOW = "outflow"  # zero-gradient ghost cells: waves leave without reflection


def godunov_flux(left: Tensor, right: Tensor) -> Tensor:
    r"""Exact Riemann flux of Burgers, f(v) = v^2/2, between states ``left`` and ``right``.

    Equation: F = max(f(max(v_L, 0)), f(min(v_R, 0))), which is f(v*) for the self-similar
        solution's value v* at the interface: the upwind state for a shock or a one-sided fan,
        0 for a transonic rarefaction (v_L < 0 < v_R).
    """
    return 0.5 * torch.maximum(left.clamp(min=0).square(), right.clamp(max=0).square())


@dataclass(frozen=True)
class Godunov:
    """Godunov's method: piecewise-constant states, exact Riemann flux, forward Euler in time.

    First order in space and time; monotone, so no new extrema (total-variation diminishing).
    Viscous fluxes by the 2-point face difference (second order).
    """

    cfl: float = 0.9
    order: ClassVar[int] = 1
    time_order: ClassVar[int] = 1

    def __post_init__(self) -> None:
        if not 0 < self.cfl <= 1:
            raise ValueError(f"Godunov: cfl must be in (0, 1], got {self.cfl}")

    @property
    def courant(self) -> float:
        return self.cfl

    def faces(self, padded: Tensor) -> tuple[Tensor, Tensor]:
        n = padded.shape[-1] - 2 * _GHOST
        return padded[..., _GHOST - 1:_GHOST + n], padded[..., _GHOST:_GHOST + n + 1]

    def face_derivative(self, padded: Tensor, h: Tensor | float) -> Tensor:
        n = padded.shape[-1] - 2 * _GHOST
        return (padded[..., _GHOST:_GHOST + n + 1] - padded[..., _GHOST - 1:_GHOST + n]) / h

    def advance(self, v: Tensor, dt: Tensor | float, rhs: Callable[[Tensor], Tensor]) -> Tensor:
        return ssp_step(Stepper.EULER, v, dt, rhs)


class Stepper(enum.StrEnum):
    """Strong-stability-preserving Runge-Kutta methods (explicit; SSP coefficient c: stable and
    TVD wherever forward Euler is, at c times its step)."""

    EULER = "euler"  # order 1, 1 stage, c = 1
    SSPRK3 = "ssprk3"  # Shu & Osher 1988: order 3, 3 stages, c = 1
    SSPRK104 = "ssprk104"  # Ketcheson 2008: order 4, 10 stages, c = 6, two registers


_STEPPER_ORDER = {Stepper.EULER: 1, Stepper.SSPRK3: 3, Stepper.SSPRK104: 4}
_STEPPER_CFL = {Stepper.EULER: 0.9, Stepper.SSPRK3: 0.8, Stepper.SSPRK104: 2.4}  # for WENO5's defaults


def ssp_step(stepper: Stepper, v: Tensor, dt: Tensor | float, rhs: Callable[[Tensor], Tensor]) -> Tensor:
    """One step of dv/dt = rhs(v) by ``stepper`` (see ``Stepper`` for orders and SSP coefficients)."""
    if stepper is Stepper.EULER:
        return v + dt * rhs(v)
    if stepper is Stepper.SSPRK3:
        v1 = v + dt * rhs(v)
        v2 = 0.75 * v + 0.25 * (v1 + dt * rhs(v1))
        return v / 3 + (2 / 3) * (v2 + dt * rhs(v2))
    # SSPRK(10,4), Ketcheson 2008, low-storage form: two registers, ten evaluations of rhs.
    q1 = v
    for _ in range(5):
        q1 = q1 + (dt / 6) * rhs(q1)
    q2 = v / 25 + (9 / 25) * q1
    q1 = 15 * q2 - 5 * q1
    for _ in range(4):
        q1 = q1 + (dt / 6) * rhs(q1)
    return q2 + 0.6 * q1 + (dt / 10) * rhs(q1)


@dataclass(frozen=True)
class WENO5:
    """WENO5-JS reconstruction of both face states, exact Riemann flux, an SSP Runge-Kutta stepper.

    Order 5 in space on smooth data away from critical points (where WENO-JS weights drop it
    towards 3); the stepper's order in time (4 for the default SSPRK(10,4), as PyClaw's SharpClaw
    uses; 3 for "ssprk3"); essentially non-oscillatory at shocks (first order there). Viscous
    fluxes by the 4th-order face derivative of cell averages,
    v_s(x_{j-1/2}) = (v_{j-2} - 15 v_{j-1} + 15 v_j - v_{j+1}) / (12 h).
    ``cfl`` is dt max|v| / h for the whole step (None: 2.4 for ssprk104, 0.8 for ssprk3).
    """

    cfl: float | None = None
    eps: float = 1e-6
    stepper: Stepper = Stepper.SSPRK104
    order: ClassVar[int] = 5

    def __post_init__(self) -> None:
        stepper = check_choice(self.stepper, Stepper, "WENO5: stepper")
        if stepper is Stepper.EULER:
            raise ValueError("WENO5: stepper must be 'ssprk3' or 'ssprk104' (forward Euler is unstable with WENO5)")
        limit = 0.4 * {Stepper.SSPRK3: 3, Stepper.SSPRK104: 6}[stepper]
        if self.cfl is not None and not 0 < self.cfl <= limit:
            raise ValueError(f"WENO5: cfl must be in (0, {limit:g}] with {stepper.value}, got {self.cfl}")
        if not self.eps > 0:
            raise ValueError(f"WENO5: eps must be > 0, got {self.eps}")

    @property
    def courant(self) -> float:
        return self.cfl if self.cfl is not None else _STEPPER_CFL[Stepper(self.stepper)]

    @property
    def time_order(self) -> int:
        return _STEPPER_ORDER[Stepper(self.stepper)]

    def faces(self, padded: Tensor) -> tuple[Tensor, Tensor]:
        """Left and right states at the N+1 faces (Jiang & Shu 1996), sharing every difference.

        The left state at face j reads cells j-3..j+1 and the right state the mirror stencil
        j+2..j-2, so their candidate values and smoothness indicators are the same three-point
        combinations of the padded array at shifted offsets: each is formed once, over 3-cell
        windows k..k+2 of the padded array, and read at offsets.
        """
        n = padded.shape[-1] - 2 * _GHOST
        p0, p1, p2 = padded[..., :-2], padded[..., 1:-1], padded[..., 2:]
        curvature = (13 / 12) * (p0 - 2 * p1 + p2) ** 2
        weight_rising = self._weight(curvature + 0.25 * (p0 - 4 * p1 + 3 * p2) ** 2)
        weight_centre = self._weight(curvature + 0.25 * (p0 - p2) ** 2)
        weight_falling = self._weight(curvature + 0.25 * (3 * p0 - 4 * p1 + p2) ** 2)
        last_right = (2 * p0 - 7 * p1 + 11 * p2) / 6  # right face of the window's last cell
        first_left = (11 * p0 - 7 * p1 + 2 * p2) / 6  # left face of its first cell
        middle_right = (-p0 + 5 * p1 + 2 * p2) / 6  # right face of its middle cell
        middle_left = (2 * p0 + 5 * p1 - p2) / 6  # left face of its middle cell

        def at(x: Tensor, k: int) -> Tensor:  # the window starting k cells right of face j's first
            return x[..., k:k + n + 1]

        a0, a1, a2 = 0.1 * at(weight_rising, 0), 0.6 * at(weight_centre, 1), 0.3 * at(weight_falling, 2)
        left = (a0 * at(last_right, 0) + a1 * at(middle_right, 1) + a2 * at(middle_left, 2)) / (a0 + a1 + a2)
        b0, b1, b2 = 0.1 * at(weight_falling, 3), 0.6 * at(weight_centre, 2), 0.3 * at(weight_rising, 1)
        right = (b0 * at(first_left, 3) + b1 * at(middle_left, 2) + b2 * at(middle_right, 1)) / (b0 + b1 + b2)
        return left, right

    def _weight(self, beta: Tensor) -> Tensor:
        return (self.eps + beta) ** -2

    def face_derivative(self, padded: Tensor, h: Tensor | float) -> Tensor:
        n = padded.shape[-1] - 2 * _GHOST
        s = [padded[..., k:k + n + 1] for k in range(1, 5)]  # cells j-2, j-1, j, j+1
        return (s[0] - 15 * s[1] + 15 * s[2] - s[3]) / (12 * h)

    def advance(self, v: Tensor, dt: Tensor | float, rhs: Callable[[Tensor], Tensor]) -> Tensor:
        return ssp_step(Stepper(self.stepper), v, dt, rhs)


class Scheme(enum.StrEnum):
    GODUNOV = "godunov"
    WENO5 = "weno5"


_SCHEMES = {Scheme.GODUNOV: Godunov, Scheme.WENO5: WENO5}


def solve_burgers(v0, grid, t_final: float, nu=0.0, kappa=None, scheme="weno5",
                  boundary="periodic", *, max_steps: int = 10_000_000, progress: bool = False,
                  compile: bool = False):
    r"""Cell averages v(t_final) of v_tau + (v^2/2)_s = (nu/2)(v_s + kappa v)_s from averages ``v0``.

    Equation: Miyagawa 2026 Thm 4.2; kappa = None (or 0) gives classic (viscous) Burgers, nu = 0
        the inviscid equation whose weak entropy solution is computed (shocks included).
    Scheme: finite volumes, exact Riemann flux; ``scheme`` "weno5" (WENO5-JS + SSPRK(10,4)) or
        "godunov" (first order), or a ``WENO5``/``Godunov`` instance to set cfl/eps/stepper. Time step
        dt = cfl / (max|v|/h + nu/h^2 + nu max|kappa| / (2h)), re-evaluated every 16 steps; the
        last step is shortened to land exactly on t_final.
    Order: ``scheme.order`` in space on smooth solutions (5 or 1), ``scheme.time_order`` in time
        (4 or 1), 1 at shocks.
    Boundary: "periodic" (the grid is one period) or "outflow" (zero-gradient ghost cells).
    kappa: None, a callable s -> kappa(s) (called once with the faces as a float64 NumPy array), or values at the cell centres
        (interpolated to faces to 4th order).
    nu: a float, or one value per batch row (shape v0.shape[:-1]) to run many viscosities at once.
    compile: fuse each time step with ``torch.compile`` (inductor, static shapes): 10-19x faster
        per step on a CPU (benchmarks/RESULTS.md), after a one-off compilation of 5-40 s per
        (size, dtype, scheme, boundary) that torch caches on disk; dynamo falls back to eager after
        8 different sizes in one process. Worth it for long or repeated runs on one grid.
    Raises: ValueError for bad input (negative nu or t_final, non-uniform grid, NaN, shapes);
        RuntimeError if the solution turns non-finite or more than ``max_steps`` steps are needed
        (never a silent early stop).
    Shapes: v0 (..., N), grid (N,) cell centres -> (..., N). NumPy in -> NumPy out.
    """
    out = solve_burgers_at(v0, grid, [t_final], nu=nu, kappa=kappa, scheme=scheme, boundary=boundary,
                           max_steps=max_steps, progress=progress, compile=compile)
    return out[0]


def solve_burgers_at(v0, grid, times: Sequence[float], nu=0.0, kappa=None, scheme="weno5",
                     boundary="periodic", *, max_steps: int = 10_000_000, progress: bool = False,
                     compile: bool = False):
    """Cell averages at each of the increasing ``times`` (>= 0), stacked on a new leading axis.

    One integration passes through every requested time exactly (see ``solve_burgers``).
    Shapes: v0 (..., N) -> (len(times), ..., N).
    """
    v, kind = as_tensor(v0, "v0")
    grid_t, _ = as_tensor(grid, "grid", dtype=torch.float64, device=v.device)
    h = uniform_step(grid_t, min_points=5)
    if v.shape[-1] != grid_t.numel():
        raise ValueError(f"v0 has {v.shape[-1]} cells along its last axis but grid has {grid_t.numel()}; they must match")
    check_finite(v, "v0")
    times = [check_positive(t, "times", allow_zero=True) for t in (times if isinstance(times, Sequence) else [times])]
    if not times or any(b < a for a, b in zip(times, times[1:])):
        raise ValueError(f"times must be a non-empty non-decreasing sequence of values >= 0, got {times}")
    scheme_obj = scheme if isinstance(scheme, (Godunov, WENO5)) else _SCHEMES[check_choice(scheme, Scheme, "scheme")]()
    boundary = check_choice(boundary, Boundary, "boundary")
    nu_t = _viscosity(nu, v)
    nu_max = float(nu_t.max())
    kappa_faces = _kappa_at_faces(kappa, grid_t, h, v, periodic=boundary is Boundary.PERIODIC)
    kappa_max = float(kappa_faces.abs().max()) if kappa_faces is not None else 0.0

    n = v.shape[-1]
    ghost_index = torch.arange(-_GHOST, n + _GHOST, device=v.device)
    ghost_index = ghost_index % n if boundary is Boundary.PERIODIC else ghost_index.clamp(0, n - 1)
    if not nu_max > 0:
        nu_t = kappa_faces = None
    advance = _compiled_step() if compile else _step
    h_t = torch.tensor(h, dtype=v.dtype, device=v.device)

    def stable_dt(state: Tensor) -> float:
        speed = float(state.abs().max())
        if not math.isfinite(speed):
            raise RuntimeError(f"solve_burgers: the solution turned non-finite at t={t:.6g}")
        rate = speed / h + nu_max / h**2 + 0.5 * nu_max * kappa_max / h
        return scheme_obj.courant / rate if rate > 0 else math.inf

    outputs = []
    t, steps = 0.0, 0
    dt = stable_dt(v)
    with _TimeProgress(progress, times[-1]) as advance_bar:
        for target in times:
            while t < target:
                if steps % 16 == 0:
                    dt = stable_dt(v)
                step = min(dt, target - t)
                if not step > 0:
                    raise RuntimeError(f"solve_burgers: time step collapsed to {step} at t={t:.6g}")
                v = advance(v, torch.tensor(step, dtype=v.dtype, device=v.device), scheme_obj, ghost_index,
                            h_t, nu_t, kappa_faces)
                t = target if step == target - t else t + step
                steps += 1
                if steps > max_steps:
                    raise RuntimeError(
                        f"solve_burgers: more than max_steps={max_steps} steps needed to reach "
                        f"t={target} (at t={t:.6g}, dt={dt:.3g}); raise max_steps or coarsen the grid")
                advance_bar(t)
            if not bool(torch.isfinite(v).all()):
                raise RuntimeError(f"solve_burgers: the solution turned non-finite before t={target}")
            outputs.append(v)
    return kind.back(torch.stack(outputs))


def _rhs(state: Tensor, scheme: Godunov | WENO5, ghost_index: Tensor, h: Tensor | float,
         nu: Tensor | None, kappa_faces: Tensor | None) -> Tensor:
    """-(F_{j+1/2} - F_{j-1/2}) / h with F = Riemann flux - (nu/2)(v_s + kappa v) at every face."""
    # index_select, not fancy indexing: the latter is multithreaded and stalls on a busy CPU
    padded = state.index_select(-1, ghost_index)
    left, right = scheme.faces(padded)
    flux = godunov_flux(left, right)
    if nu is not None:
        gradient = scheme.face_derivative(padded, h)
        if kappa_faces is not None:
            gradient = gradient + kappa_faces * 0.5 * (left + right)
        flux = flux - 0.5 * nu * gradient
    return -(flux[..., 1:] - flux[..., :-1]) / h


def _step(v: Tensor, dt: Tensor, scheme: Godunov | WENO5, ghost_index: Tensor, h: Tensor,
          nu: Tensor | None, kappa_faces: Tensor | None) -> Tensor:
    # module level, with every number a tensor argument (dt, h), so torch.compile traces it once
    # per size: static-shape kernels run ~3x faster at N = 1e4 than the dynamic-shape ones
    return scheme.advance(v, dt, lambda state: _rhs(state, scheme, ghost_index, h, nu, kappa_faces))


@functools.cache
def _compiled_step():
    return torch.compile(_step, dynamic=False, fullgraph=True)


def _viscosity(nu, v: Tensor) -> Tensor:
    if isinstance(nu, (int, float)):
        return torch.tensor(check_positive(nu, "nu", allow_zero=True), dtype=v.dtype, device=v.device)
    nu_t, _ = as_tensor(nu, "nu", dtype=v.dtype, device=v.device)
    check_finite(nu_t, "nu")
    if bool((nu_t < 0).any()):
        raise ValueError("nu must be >= 0 everywhere")
    if tuple(nu_t.shape) != tuple(v.shape[:-1]):
        raise ValueError(f"nu: one value per batch row expected, shape {tuple(v.shape[:-1])}, got {tuple(nu_t.shape)}")
    return nu_t.unsqueeze(-1)


def _kappa_at_faces(kappa, grid: Tensor, h: float, v: Tensor, periodic: bool) -> Tensor | None:
    """kappa at the N+1 faces x_{j-1/2}, j = 0..N, or None when kappa is absent or zero."""
    if kappa is None:
        return None
    faces = torch.cat([grid - 0.5 * h, grid[-1:] + 0.5 * h])
    if callable(kappa):
        values = kappa(faces.cpu().numpy())
        values, _ = as_tensor(values, "kappa(s)", dtype=v.dtype, device=v.device)
        if values.shape != faces.shape:
            raise ValueError(f"kappa(s) must return one value per point: {tuple(faces.shape)}, got {tuple(values.shape)}")
    else:
        centres, _ = as_tensor(kappa, "kappa", dtype=torch.float64, device=v.device)
        if centres.shape != grid.shape:
            raise ValueError(f"kappa: one value per cell expected ({grid.numel()}), got shape {tuple(centres.shape)}")
        index = torch.arange(-2, grid.numel() + 2, device=v.device)
        padded = centres[index % grid.numel() if periodic else index.clamp(0, grid.numel() - 1)]
        values = (-padded[:-3] + 9 * padded[1:-2] + 9 * padded[2:-1] - padded[3:]) / 16
        values = values.to(v.dtype)
    check_finite(values, "kappa")
    return None if not bool(values.any()) else values


class _TimeProgress:
    """A rich progress bar over simulated time, or nothing."""

    def __init__(self, show: bool, total: float) -> None:
        self.show, self.total = show, total

    def __enter__(self):
        if not self.show:
            return lambda t: None
        from rich.progress import Progress

        self.bar = Progress(transient=True)
        self.bar.__enter__()
        task = self.bar.add_task("Burgers", total=self.total)
        return lambda t: self.bar.update(task, completed=t)

    def __exit__(self, *exc) -> None:
        if self.show:
            self.bar.__exit__(*exc)
