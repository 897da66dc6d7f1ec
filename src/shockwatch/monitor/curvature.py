r"""Raw and quotient curvature of the loss, and the shock-time forecast (Miyagawa 2026 §4.1, §6).

    raw:       extreme eigenvalues of the Hessian H of L at theta,
    quotient:  extreme eigenvalues of P_H H P_H on the horizontal space (P_H the Euclidean
               projection orthogonal to every orbit direction; ``quotient.horizontal_projection``).

Along orbit directions an exact symmetry makes the loss flat, so H has zeros (and, away from a
critical point, spurious curvature between orbit and horizontal directions) that say nothing about
the quotient; P_H H P_H removes them. The forecast: Thm 4.3's reduced shock time tau* = -1/inf Ubar''
with the most negative quotient curvature in place of inf Ubar'', converted to optimizer steps by
t = eta n (the characteristic crossing time of gradient flow along that direction): steps = tau*/eta.

Scheme: Lanczos (scipy.sparse.linalg.eigsh, implicitly restarted) on a LinearOperator whose
matvec is one Hessian-vector product (float64; one backward through the gradient's graph) and, for the
quotient, one projection before and after (``quotient.horizontal_projector``: the sparse generator
matrix with its K x K Gram matrix pseudo-inverted once per call where it has at most
``max_dense_entries`` entries, else CG). Order: eigsh converges to ``tol`` relative (the
top eigenvalue; the bottom one relative to lambda_max - lambda_min).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from scipy.sparse.linalg import LinearOperator, eigsh
from threadpoolctl import threadpool_limits
from torch import Tensor, nn
from torch.func import functional_call
from torch.nn.attention import SDPBackend, sdpa_kernel

from ..quotient import horizontal_projector
from ..symmetry import SymmetrySet

__all__ = ["CURVATURE_PATH", "Curvature", "HessianVectorProducts", "UpdateCurvature", "adam_preconditioner", "curvature",
           "update_curvature"]

# what the run's meta records as the curvature's method
CURVATURE_PATH = ("Hessian-vector products reverse-over-reverse in float64 on a copy of the model; "
                  "scaled_dot_product_attention on its math backend (sdpa_kernel(SDPBackend.MATH)), whose "
                  "backward has a derivative where the fused CPU/GPU kernels' have none")


@dataclass(frozen=True)
class Curvature:
    """Extreme eigenvalues of the raw Hessian and of its quotient (horizontal) restriction;
    ``preconditioned``: the same four of S H S and S P_H H P_H S, S = D^{1/2}, where a diagonal
    preconditioner D was given (None otherwise)."""

    raw_max: float
    raw_min: float
    quotient_max: float
    quotient_min: float
    matvecs: int
    preconditioned: Curvature | None = None
    # the four extreme eigenvectors (flat float64, in the model's named_parameters order): the next
    # sample's Lanczos starts from them (``curvature(warm=)``)
    vectors: tuple[np.ndarray, ...] | None = field(default=None, compare=False, repr=False)

    def shock_steps(self, lr: float, *, quotient: bool = True) -> float:
        """tau*/eta = -1/(eta lambda_min) when lambda_min < 0 and eta > 0, else math.inf (no crossing
        forecast: a step at eta = 0, a warmup's first, moves nothing).

        With a preconditioner (an optimizer stepping theta' = theta - eta D g, as Adam does with
        D = 1/(sqrt(v_hat) + eps)) the flow along a direction runs at the rate of D H, whose spectrum
        is that of D^{1/2} H D^{1/2}: lambda_min is then the preconditioned one. Without it, Adam's
        steps (eta/sqrt(v_hat), often 1e2-1e4 times eta) would make the forecast that much too long."""
        found = self.preconditioned if self.preconditioned is not None else self
        smallest = found.quotient_min if quotient else found.raw_min
        return -1.0 / (lr * smallest) if smallest < 0 and lr > 0 else math.inf


def curvature(model: nn.Module, loss_fn: Callable[[Tensor, Tensor], Tensor], batch: Sequence[Tensor],
              symmetries: SymmetrySet, *, tol: float = 1e-8, max_matvecs: int = 2000,
              max_dense_entries: int = 16_000_000, preconditioner: Mapping[str, Tensor] | None = None,
              warm: Curvature | None = None, dtype: torch.dtype = torch.float64) -> Curvature:
    """Raw and quotient extreme Hessian eigenvalues of loss_fn(model(inputs), targets) at the model's
    parameters (float64 copies; buffers as they are; the model's train/eval mode is used).

    ``preconditioner``: a positive diagonal D per parameter (name -> tensor of its shape, e.g.
    ``adam_preconditioner(optimizer, model)``); then also the extremes of S H S and S P_H H P_H S with
    S = D^{1/2} (``Curvature.preconditioned``), at twice the Lanczos cost. ``warm``: an earlier sample
    of the same model, whose eigenvectors start each Lanczos run. Measured (benchmarks/RESULTS.md):
    it saves products (264 against 624 a sample on an 85k-parameter MLP, samples 20 steps apart, tol
    1e-4), but in one trial the quotient's bottom run stopped on the wrong eigenvalue (-0.1162 against
    -0.1263, two eigenvalues 0.25% of the spectrum's width apart, which tol 1e-4 does not separate): a
    Ritz pair converges to *an* eigenvalue, and a start vector near the last sample's can miss a new
    extreme. The monitor starts every sample cold unless ``Monitor(curvature_warm=True)``; use ``warm``
    with a tolerance that separates the ends of the spectrum. ``dtype``: the products' precision (float64 by default; float32 halves their
    cost on the CPU, to ~1e-7 relative per product: benchmarks/RESULTS.md)."""
    # BLAS (the projection's products, ARPACK's) on one thread: beside torch's threads, which spin
    # between the Hessian-vector products, a multithreaded BLAS call took ~90x longer (measured)
    with threadpool_limits(limits=1, user_api="blas"):
        return _curvature(model, loss_fn, batch, symmetries, tol, max_matvecs, max_dense_entries, preconditioner,
                          warm, dtype)


def _curvature(model, loss_fn, batch, symmetries, tol, max_matvecs, max_dense_entries, preconditioner, warm,
               dtype) -> Curvature:
    hessian = HessianVectorProducts(model, loss_fn, batch, dtype=dtype)
    params, hvp, dimension = hessian.params, hessian.hvp, hessian.dimension
    scale = None  # S = D^{1/2}, flat, checked before any Lanczos run
    if preconditioner is not None:
        scale = hessian.flat_diagonal(preconditioner).sqrt().numpy()

    # the projection's own CG tolerance (where CG is used): well below Lanczos' so it does not limit
    # the eigenvalues
    project = horizontal_projector(symmetries, params, rtol=min(1e-8, 1e-3 * tol), max_dense_entries=max_dense_entries)

    def projected(vector: np.ndarray) -> np.ndarray:
        return project(hvp(project(vector)))

    def quotient_run(start: np.ndarray) -> Callable[[np.ndarray], np.ndarray]:
        """P_H H P_H for the vectors of a Lanczos run from ``start``: the input's projection by
        ``HorizontalProjector.krylov`` (a few dot products where the vector is of the run's form)."""
        krylov = project.krylov(start)
        return lambda vector: project(hvp(krylov(vector)))

    starts = _warm_starts(warm, dimension)
    raw = _extremes(lambda start: hvp, dimension, tol, max_matvecs, starts[0:2])
    quotient = _extremes(quotient_run, dimension, tol, max_matvecs, starts[2:4])
    preconditioned = None
    if scale is not None:
        # S P_H H P_H S: the projection's inputs S v are not of a Krylov run's form, so both are full
        starts = _warm_starts(warm.preconditioned if warm is not None else None, dimension)
        raw_scaled = _extremes(lambda start: lambda v: scale * hvp(scale * v), dimension, tol, max_matvecs, starts[0:2])
        quotient_scaled = _extremes(lambda start: lambda v: scale * projected(scale * v), dimension, tol, max_matvecs,
                                    starts[2:4])
        preconditioned = Curvature(raw_scaled[1], raw_scaled[0], quotient_scaled[1], quotient_scaled[0], 0,
                                   vectors=(*raw_scaled[2:], *quotient_scaled[2:]))
    return Curvature(raw[1], raw[0], quotient[1], quotient[0], hessian.count, preconditioned,
                     vectors=(*raw[2:], *quotient[2:]))


def _warm_starts(warm: Curvature | None, dimension: int) -> tuple[np.ndarray | None, ...]:
    """(raw bottom, raw top, quotient bottom, quotient top) start vectors from an earlier sample, or Nones."""
    if warm is None or warm.vectors is None or any(len(v) != dimension for v in warm.vectors):
        return (None,) * 4
    return warm.vectors


@dataclass(frozen=True)
class UpdateCurvature:
    """The curvature along the last update, raw and along its horizontal part (``update_curvature``);
    ``preconditioned``: whether a diagonal D weighted the denominator."""

    raw: float
    quotient: float
    preconditioned: bool


def update_curvature(model: nn.Module, loss_fn: Callable[[Tensor, Tensor], Tensor], batch: Sequence[Tensor],
                     update: Mapping[str, Tensor], symmetries: SymmetrySet, *,
                     preconditioner: Mapping[str, Tensor] | None = None) -> UpdateCurvature:
    r"""The loss's curvature along the optimizer's update u (name -> tensor, e.g. theta_{t+1} - theta_t),
    raw and reduced, at the model's parameters:

        raw      = u^T H u / u^T D^{-1} u,
        quotient = u_H^T H u_H / u_H^T D^{-1} u_H,   u_H = P_H u (``quotient.horizontal_projector``).

    With D = I these are Rayleigh quotients of H; with Adam's D (``adam_preconditioner``) they are
    those of D^{1/2} H D^{1/2} at v = D^{-1/2} u, the update in the coordinates where Adam's step is a
    gradient step (Cohen et al. 2022's preconditioned sharpness is its largest eigenvalue). Each is a
    lower bound on that top eigenvalue, read along the direction training actually moves, for two
    Hessian-vector products instead of Lanczos' hundreds; eta times it is compared with the stability
    bound. Along an orbit the loss is flat only to first order: the vertical part of u (weight decay's
    radial shrink, momentum along an orbit) adds curvature that says nothing about the quotient,
    which the projection removes. NaN where u is zero, or u_H is (|u_H| <= 1e-8 |u|)."""
    hessian = HessianVectorProducts(model, loss_fn, batch)
    weight = hessian.flat_diagonal(preconditioner).reciprocal().numpy() if preconditioner is not None else None
    u = hessian.flat(update)
    # one vector: a CG solve, not the dense Gram pseudo-inverse (an eigh of K x K, seconds at K ~ 1e3)
    project = horizontal_projector(symmetries, hessian.params, rtol=1e-10, max_dense_entries=0)

    def rayleigh(vector: np.ndarray) -> float:
        denominator = float(vector @ (vector if weight is None else weight * vector))
        return float(vector @ hessian.hvp(vector)) / denominator if denominator > 0 else math.nan

    with threadpool_limits(limits=1, user_api="blas"):  # see curvature()
        horizontal = project(u)
        # a horizontal part at the projection's round-off is none: its direction would be noise
        flat = np.linalg.norm(horizontal) <= 1e-8 * np.linalg.norm(u)
        return UpdateCurvature(rayleigh(u), math.nan if flat else rayleigh(horizontal), preconditioner is not None)


class HessianVectorProducts:
    """Hessian-vector products of loss_fn(model(inputs), targets) at the model's parameters, on a
    float64 copy of the model (``dtype``: another precision; vectors stay float64 NumPy either way;
    buffers as they are, the model's train/eval mode used): the
    gradient's graph is built once and each product is one backward through it (reverse-over-reverse,
    about 4x cheaper here than forward-over-reverse per product). Fused attention kernels (the flash
    kernel on the CPU) have no double backward: the forward runs on the math backend. Dropout draws
    in the copy's forward come from a forked RNG: the caller's random stream is left where it was.
    Vectors are flat float64 NumPy arrays in ``names`` order; ``count`` the products taken."""

    def __init__(self, model: nn.Module, loss_fn: Callable[[Tensor, Tensor], Tensor], batch: Sequence[Tensor], *,
                 dtype: torch.dtype = torch.float64) -> None:
        if not dtype.is_floating_point:
            raise ValueError(f"dtype must be a floating dtype (torch.float64, torch.float32), got {dtype}")
        inputs, targets = batch
        self.dtype = dtype
        model = copy.deepcopy(model).to(dtype)  # a reference copy: the caller's model is not touched
        self.names = [name for name, _ in model.named_parameters()]
        self.params = {name: p.detach() for name, p in model.named_parameters()}
        buffers = {name: b.detach() for name, b in model.named_buffers()}
        self.shapes = [self.params[name].shape for name in self.names]
        self.sizes = [math.prod(shape) for shape in self.shapes]
        double = [t.to(dtype) if t.is_floating_point() else t for t in (inputs, targets)]
        self._leaves = leaves = [p.detach().requires_grad_(True) for p in self.params.values()]
        devices = sorted({p.device.index or 0 for p in leaves if p.device.type == "cuda"})
        with torch.enable_grad(), torch.random.fork_rng(devices=devices), sdpa_kernel(SDPBackend.MATH):
            outputs = functional_call(model, {**dict(zip(self.names, leaves)), **buffers}, (double[0],))
            gradient = torch.autograd.grad(loss_fn(outputs, double[1]), leaves, create_graph=True, allow_unused=True)
        self._gradient = [g if g is not None else torch.zeros_like(p) for g, p in zip(gradient, leaves)]
        self.count = 0

    @property
    def dimension(self) -> int:
        return sum(self.sizes)

    @property
    def zero(self) -> bool:
        """Whether H = 0 identically: the loss is linear in every parameter (no gradient depends on one)."""
        return not any(g.requires_grad for g in self._gradient)

    def unflat(self, vector: np.ndarray) -> dict[str, Tensor]:
        device = self._leaves[0].device if self._leaves else torch.device("cpu")
        pieces = torch.from_numpy(np.ascontiguousarray(vector, dtype=np.float64)).to(device, self.dtype).split(self.sizes)
        return {name: piece.reshape(shape) for name, piece, shape in zip(self.names, pieces, self.shapes)}

    def flat(self, tensors: Mapping[str, Tensor]) -> np.ndarray:
        return torch.cat([tensors[name].detach().to("cpu", torch.float64).reshape(-1) for name in self.names]).numpy()

    def flat_diagonal(self, diagonal: Mapping[str, Tensor]) -> Tensor:
        """A positive diagonal given per parameter (name -> tensor of its shape), flat, checked."""
        missing = [name for name in self.names if name not in diagonal]
        if missing:
            raise ValueError(f"preconditioner has no diagonal for {missing[:3]}: give one per parameter (name -> tensor)")
        flat = torch.cat([diagonal[name].detach().to("cpu", torch.float64).reshape(-1) for name in self.names])
        if flat.shape[0] != self.dimension or not bool((torch.isfinite(flat) & (flat > 0)).all()):
            raise ValueError("preconditioner must be finite and positive everywhere (a diagonal D > 0), one value per entry")
        return flat

    def hvp(self, vector: np.ndarray) -> np.ndarray:
        """H v: one backward through the gradient's graph with v as its output's cotangent."""
        self.count += 1
        direction = self.unflat(vector)
        live = [(g, direction[name]) for g, name in zip(self._gradient, self.names) if g.requires_grad]
        if not live:  # the loss is linear in every parameter: H = 0
            return np.zeros_like(vector)
        with torch.enable_grad():
            out = torch.autograd.grad([g for g, _ in live], self._leaves, grad_outputs=[v for _, v in live],
                                      retain_graph=True, allow_unused=True)
        return torch.cat([(o if o is not None else torch.zeros_like(p)).reshape(-1)
                          for o, p in zip(out, self._leaves)]).to("cpu", torch.float64).numpy()


def adam_preconditioner(optimizer: torch.optim.Optimizer, model: nn.Module) -> dict[str, Tensor] | None:
    """Adam's and AdamW's diagonal D = 1/(sqrt(v_hat) + eps), v_hat = v / (1 - beta2^t) (AMSGrad: the
    running max of v), per parameter of ``model``: the step is theta' = theta - eta D m_hat, so near a
    steady gradient (m_hat ~ g) the loss's curvature acts through D H. None for another optimizer or
    before every parameter has a state (the first step)."""
    if type(optimizer) not in (torch.optim.Adam, torch.optim.AdamW):
        return None
    group_of = {id(p): group for group in optimizer.param_groups for p in group["params"]}
    out = {}
    for name, p in model.named_parameters():
        state = optimizer.state.get(p)
        if id(p) not in group_of or not state or "exp_avg_sq" not in state:
            return None
        group = group_of[id(p)]
        step = float(state["step"])
        second = state["max_exp_avg_sq"] if group.get("amsgrad") else state["exp_avg_sq"]
        corrected = second.detach().double() / (1 - group["betas"][1] ** step)
        out[name] = 1.0 / (corrected.sqrt() + group["eps"])
    return out


def _extremes(matvec_for: Callable[[np.ndarray], Callable[[np.ndarray], np.ndarray]], n: int, tol: float,
              max_matvecs: int, starts: tuple[np.ndarray | None, np.ndarray | None] = (None, None)
              ) -> tuple[float, float, np.ndarray, np.ndarray]:
    """(smallest, largest) algebraic eigenvalue of a symmetric operator by Lanczos, and their
    eigenvectors; ``matvec_for(start)``: the operator's product for the vectors of a run from
    ``start`` (the same operator whatever the start); ``starts``: (bottom, top) start vectors (an
    earlier sample's eigenvectors), else a fixed random one."""
    cold = np.random.default_rng(0).standard_normal(n)
    if n <= 3:
        matvec = matvec_for(cold)
        dense = np.stack([matvec(e) for e in np.eye(n)], axis=1)
        values, vectors = np.linalg.eigh(0.5 * (dense + dense.T))
        return float(values[0]), float(values[-1]), vectors[:, 0], vectors[:, -1]

    def run(shift: float, which: str, start: np.ndarray | None) -> tuple[float, np.ndarray]:
        start = cold if start is None else start
        matvec = matvec_for(start)
        shifted = matvec if shift == 0.0 else (lambda v: matvec(v) - shift * v)
        operator = LinearOperator((n, n), matvec=shifted, dtype=np.float64)
        values, vectors = eigsh(operator, k=1, which=which, tol=tol, maxiter=max_matvecs, v0=start)
        return float(values[0]), vectors[:, 0]

    top, top_vector = run(0.0, "LA", starts[1])
    # the bottom as the largest-magnitude eigenvalue of H - top I (all <= 0): its tolerance is then
    # relative to the spectrum's width, not to |lambda_min|, which is often tiny beside lambda_max and
    # made a two-ended ("BE") run take 2-4x the matvecs for the same absolute accuracy
    bottom, bottom_vector = run(top, "LM", starts[0])
    return min(bottom + top, top), top, bottom_vector, top_vector
