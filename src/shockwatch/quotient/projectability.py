r"""Assumption 2.1 of Miyagawa 2026 measured on a model: do the pushed-forward drift and noise
covariance depend only on the quotient point?

Definitions (Thm 2.2's notation). Phi = ``canonical``, the section of the orbits (balanced rescale
units, centred translation groups, unit-norm scale groups, the balanced-SVD form of every GL head,
sorted units). For a representative theta' = g theta of theta's orbit,

    b(theta')    = D Phi(theta') grad L(theta')                                (full-batch gradient)
    Xi_k(theta') = D Phi(theta') (grad L_{B_k}(theta') - grad L(theta')),     k = 1..K minibatches
    A(theta')    = (1/K) sum_k Xi_k Xi_k^T,

all as vectors in the canonical representative's parameter layout (the chart is Phi itself, an
embedding of the quotient in R^D). D Phi(theta') v = P_H(Phi theta')[g'_* v], with g' the group
element that carries theta' to Phi(theta'): entrywise factors (rescale, scale; translations have
g'_* = 1), then the matrix M0 of every GL head (A_in -> M0 A_in, A_out -> M0^-T A_out, found by
least squares from the head before and after its balancing), then the permutations. For models
without GL groups this is exactly ``push_forward``; with GL groups it is the Euclidean horizontal
lift at Phi of the quotient vector (the section's own tangent differs by a vertical vector only).
P_H is the Euclidean projection, built here densely from the orbit generators at Phi (an
orthonormal basis of their span), so that many vectors are projected in one product.

The K minibatches are the same for every representative (common random numbers): a spread is
then the representative's effect, not Monte Carlo noise. ``M`` is the minibatch gradient minus
the full-batch gradient, as in the paper; for a BatchNorm model in training mode the minibatch
loss uses its own batch statistics, so E M != 0 there and A is the second moment about the
full-batch gradient (still a function on the orbit if and only if the assumption holds).

Spreads, for representatives r = 1..R against r = 0:

    drift       |b_r - b_0| / |b_0|
    covariance  |A_r - A_0|_F / |A_0|_F   (exact, from a thin QR of [Xi_r; Xi_0]: no D x D matrix)
    trace       |tr A_r - tr A_0| / tr A_0

0 (to round-off) means projectable at that point. What to expect, derived for one ReLU unit
theta = (u, a) of any network (u the incoming weights and bias, a the outgoing weights): at the
representative theta_rho = (rho u*, a*/rho) of a balanced point (|u*| = |a*| = n) every per-sample
loss is invariant, so grad L(theta_rho) = (G_u / rho, rho G_a) with (G_u, G_a) the gradient at the
balanced point, and g'_* scales by (1/rho, rho):

    b(rho) = P_H[(G_u / rho^2, rho^2 G_a)] = (G_u/rho^2 - kappa u*, rho^2 G_a + kappa a*),
    kappa  = k (rho^-2 - rho^2) / (2 n^2),  k = <u*, G_u> = <a*, G_a>  (the symmetry's identity).

In the paper's coordinates gamma = a|u| and s = u/|u|:  b_gamma(rho) = b_gamma(1) (rho^2 + rho^-2)/2
and b_s(rho) = b_s(1) / rho^2; every minibatch gradient transforms the same way, so
A_gammagamma(rho) = A_gammagamma(1) ((rho^2 + rho^-2)/2)^2 and A_ss(rho) = A_ss(1) / rho^4. The
Euclidean gradient is not invariant under a non-isometric group action: under rescale, scale
(b ~ 1/|w|^2, the "effective learning rate" of a normalised layer) and non-orthogonal GL
elements (through M^T M) the drift depends on the representative; under translations
(g'_* = 1) and permutations it does not. What *is* a function on the quotient is b evaluated at a
fixed section -- b(Y) := b(Phi^-1 Y) at the balanced representative -- and gradient flow
conserves the charges that select the representative, so a run started balanced stays balanced
up to O(eta^2) per SGD step.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass

import torch
from torch import Tensor, nn

from ..symmetry import (
    Kind,
    Symmetry,
    SymmetrySet,
    act,
    act_gl,
    act_rotation,
    generator,
    gl_generator_combination,
    permute,
    unit_matrix,
)
from ..symmetry.group import random_gl_element
from .chart import canonical

__all__ = ["Projectability", "QuotientMoments", "projectability", "quotient_moments"]

_CONTINUOUS = (Kind.TRANSLATION, Kind.SCALE, Kind.RESCALE, Kind.ROTATION, Kind.GL)

Element = Mapping[str, "float | Tensor"]  # symmetry label -> amount (one-parameter), matrix (GL), order (permutation)


@dataclass(frozen=True)
class QuotientMoments:
    """b, the noise vectors Xi_k and Phi at one representative, flattened in ``names`` order (float64)."""

    names: tuple[str, ...]  # parameter names, the order of the flat vectors
    point: Tensor  # Phi(theta), (D,)
    drift: Tensor  # b = D Phi grad L, (D,)
    noise: Tensor  # Xi_k = D Phi (grad L_{B_k} - grad L), (K, D)
    loss: float  # L(theta), full batch
    orbit_dimension: int  # rank of the orbit generators at Phi: the quotient has dimension D - this

    @property
    def covariance_trace(self) -> float:
        return float(self.noise.square().sum()) / self.noise.shape[0]


@dataclass(frozen=True)
class Projectability:
    """Spreads of b and A over representatives of one orbit (module docstring); index r-1 for r = 1..R."""

    drift_spread: tuple[float, ...]  # |b_r - b_0| / |b_0|
    covariance_spread: tuple[float, ...]  # |A_r - A_0|_F / |A_0|_F
    trace_spread: tuple[float, ...]  # |tr A_r - tr A_0| / tr A_0
    loss_change: tuple[float, ...]  # |L_r - L_0| / |L_0|: how exact the symmetry is at that element
    chart_change: tuple[float, ...]  # max |Phi(theta_r) - Phi(theta_0)| / max |Phi(theta_0)|
    element_size: tuple[float, ...]  # largest |log factor| (rescale, scale) or log cond(M) (GL) in g_r
    kinds: tuple[str, ...]  # the kinds the group elements act with (permutation where units were reordered)
    reference: str  # "canonical" (theta_0 = Phi(theta), balanced) or "given" (theta itself)
    drift_norm: float  # |b_0|
    covariance_norm: float  # |A_0|_F
    dimension: int  # the quotient's dimension at theta_0: D parameters minus the orbit's (the chart embeds it in R^D)
    batches: int  # K

    @property
    def max_drift_spread(self) -> float:
        return max(self.drift_spread, default=0.0)

    @property
    def max_covariance_spread(self) -> float:
        return max(self.covariance_spread, default=0.0)

    def projectable(self, tol: float = 1e-8) -> bool:
        """Both spreads below ``tol`` at every representative."""
        return self.max_drift_spread <= tol and self.max_covariance_spread <= tol

    def summary(self) -> str:
        verdict = "projectable" if self.projectable() else "NOT projectable"
        return (f"{len(self.drift_spread)} representatives ({', '.join(self.kinds) or 'identity'}; element size <= "
                f"{max(self.element_size, default=0.0):.2f}) vs {self.reference}: drift spread "
                f"{self.max_drift_spread:.2e}, covariance spread {self.max_covariance_spread:.2e} (trace "
                f"{max(self.trace_spread, default=0.0):.2e}); loss change {max(self.loss_change, default=0.0):.1e}, "
                f"chart change {max(self.chart_change, default=0.0):.1e} -> {verdict}")

    def to_json(self) -> dict:
        return asdict(self) | {"summary": self.summary()}


def projectability(model: nn.Module, loss_fn: Callable[[Tensor, Tensor], Tensor], data: tuple[Tensor, Tensor],
                   syms: SymmetrySet, *, representatives: int = 4, strength: float = 1.0,
                   kinds: Sequence[str] | None = None, permute_units: bool = True,
                   elements: Sequence[Element] | None = None, reference: str = "canonical",
                   batches: int | Sequence[Tensor] = 16, batch_size: int | None = None,
                   seed: int = 0) -> Projectability:
    r"""How far b = D Phi grad L and A = Cov(D Phi M) move across representatives of one orbit.

    ``data`` = (inputs, targets), samples along dim 0; ``loss_fn(model(inputs), targets)`` is the
    mean loss. theta_0 is Phi(theta) (``reference="canonical"``: the balanced representative) or
    the model's parameters (``"given"``); theta_r = g_r theta_0 with g_r either ``elements[r-1]``
    (symmetry label -> log-factor / shift for one-parameter groups, matrix for GL, order for a
    permutation; labels not named are left alone) or random: every symmetry of ``kinds`` (default:
    the continuous kinds present) with amount uniform in [-strength, strength], GL heads with
    ``random_gl_element(d, strength)``, and, with ``permute_units``, random unit orders.
    ``batches``: K random minibatches of ``batch_size`` samples (default: a quarter of the data,
    at least 1), drawn without replacement within a batch, or explicit index tensors; the same
    minibatches serve every representative. Computed in float64 on a copy of the model (its
    buffers, e.g. BatchNorm running statistics, are not touched); the model's train/eval mode is
    kept, so BatchNorm's scale symmetry needs training mode.
    Raises: ValueError for a set without continuous symmetries (or none of ``kinds``), fewer than
    2 minibatches, a batch size outside [1, samples], representatives < 1, strength < 0 or an
    unknown reference; the message names the value and what is accepted.
    """
    kinds_used = _check(syms, kinds, representatives if elements is None else len(elements), strength, reference)
    samples = int(data[0].shape[0])
    generator_ = torch.Generator().manual_seed(seed)
    index_sets = _minibatches(batches, batch_size, samples, generator_)
    work = _float64_copy(model)
    params = {name: p.detach().to(torch.float64).clone() for name, p in work.named_parameters()}
    theta0 = canonical(syms, params).params if reference == "canonical" else params
    if elements is None:
        elements = [_random_element(syms, theta0, kinds_used, strength, permute_units, generator_)
                    for _ in range(representatives)]
    by_label = {sym.label: sym for sym in syms}
    for element in elements:
        unknown = sorted(set(element) - set(by_label))
        if unknown:
            raise ValueError(f"elements name symmetries that are not in the set: {unknown[:5]}")
    base = quotient_moments(work, loss_fn, data, syms, theta0, index_sets, _copied=True)
    if float(base.drift.norm()) == 0.0 or base.covariance_trace == 0.0:
        raise ValueError("the pushed-forward drift or minibatch noise vanishes at theta_0 (a critical point, or "
                         "minibatches equal to the whole data set): relative spreads are undefined there")
    drift, cov, trace, loss, chart, size = [], [], [], [], [], []
    point_scale = float(base.point.abs().max())
    for element in elements:
        moved = _apply(syms, by_label, theta0, element)
        other = quotient_moments(work, loss_fn, data, syms, moved, index_sets, _copied=True)
        drift.append(float((other.drift - base.drift).norm() / base.drift.norm()))
        cov.append(_covariance_spread(other.noise, base.noise))
        trace.append(abs(other.covariance_trace - base.covariance_trace) / base.covariance_trace)
        loss.append(abs(other.loss - base.loss) / abs(base.loss) if base.loss else abs(other.loss))
        chart.append(float((other.point - base.point).abs().max()) / point_scale)
        size.append(_element_size(by_label, element))
    acted = {by_label[label].kind for element in elements for label in element}
    kinds_used = tuple(kind for kind in (*_CONTINUOUS, Kind.PERMUTATION) if kind in acted)
    covariance_norm = float((base.noise @ base.noise.T).norm()) / len(index_sets)  # = |Xi^T Xi|_F / K
    return Projectability(tuple(drift), tuple(cov), tuple(trace), tuple(loss), tuple(chart), tuple(size),
                          tuple(k.value for k in kinds_used), reference, float(base.drift.norm()), covariance_norm,
                          base.point.numel() - base.orbit_dimension, len(index_sets))


def quotient_moments(model: nn.Module, loss_fn: Callable[[Tensor, Tensor], Tensor], data: tuple[Tensor, Tensor],
                     syms: SymmetrySet, params: Mapping[str, Tensor], batches: Sequence[Tensor], *,
                     _copied: bool = False) -> QuotientMoments:
    """b, Xi_k and Phi at the representative ``params`` (module docstring), minibatches ``batches``
    (index tensors). The model is copied to float64 first unless ``_copied``."""
    work = model if _copied else _float64_copy(model)
    names = tuple(name for name, _ in work.named_parameters())
    params = {name: params[name].detach().to(torch.float64) for name in names}
    buffers = {name: b for name, b in work.named_buffers()}
    inputs, targets = data
    if inputs.is_floating_point():
        inputs = inputs.to(torch.float64)

    def gradient(index: Tensor | None) -> tuple[float, Tensor]:
        leaves = {name: p.clone().requires_grad_(True) for name, p in params.items()}
        state = {name: b.clone() for name, b in buffers.items()} | leaves
        x, y = (inputs, targets) if index is None else (inputs[index], targets[index])
        value = loss_fn(torch.func.functional_call(work, state, (x,)), y)
        grads = torch.autograd.grad(value, list(leaves.values()), allow_unused=True)
        return float(value.detach()), torch.cat([(g if g is not None else torch.zeros_like(p)).reshape(-1)
                                        for g, p in zip(grads, leaves.values())])

    loss, full = gradient(None)
    noise = torch.stack([gradient(index)[1] - full for index in batches])
    chart = _Chart(syms, params, names)
    vectors = chart.push(torch.cat([full.unsqueeze(0), noise]))
    return QuotientMoments(names, chart.point, vectors[0], vectors[1:], loss, chart.basis.shape[1])


class _Chart:
    """D Phi(theta) on flat vectors: the steps of ``Canonical.carry`` (factors, GL matrices,
    permutations) as index maps, then P_H at Phi (dense)."""

    def __init__(self, syms: SymmetrySet, params: Mapping[str, Tensor], names: tuple[str, ...]) -> None:
        self.names = names
        self.shapes = [params[name].shape for name in names]
        full = canonical(syms, params)
        self.point = self._flat(full.params)
        positions = self._positions()
        self.steps: list[tuple] = []  # ("factors", flat a) or ("gl", M, M^-T, (index_in, index_out))
        for step in full.steps:
            if step[0] == "factors":
                self.steps.append(("factors", self._flat(step[1])))
            elif step[0] == "rotation":
                sym, angle = step[1], step[2]
                index = tuple(torch.cat([slot.view(positions).reshape(-1) for slot in slots]).round().long()
                              for slots in (sym.incoming, sym.outgoing))
                self.steps.append(("rotation", math.cos(angle), math.sin(angle), index))
            else:
                sym, matrix = step[1], step[2]
                index = tuple(unit_matrix(sym, slots, positions).round().long() for slots in (sym.incoming, sym.outgoing))
                self.steps.append(("gl", matrix, torch.linalg.inv(matrix).T, index))
        for sym, order in full.orders:
            positions = permute(sym, positions, order)
        self.order = self._flat(positions).round().long()  # (perm v)[i] = v[order[i]]
        self.basis = self._horizontal_complement(syms, full.params)

    def _flat(self, tensors: Mapping[str, Tensor]) -> Tensor:
        return torch.cat([tensors[name].detach().to(torch.float64).reshape(-1) for name in self.names])

    def _unflat(self, flat: Tensor) -> dict[str, Tensor]:
        sizes = [math.prod(shape) for shape in self.shapes]
        return {name: piece.reshape(shape) for name, piece, shape in zip(self.names, flat.split(sizes), self.shapes)}

    def _positions(self) -> dict[str, Tensor]:
        total = sum(math.prod(shape) for shape in self.shapes)
        return self._unflat(torch.arange(total, dtype=torch.float64))

    def _horizontal_complement(self, syms: SymmetrySet, point: Mapping[str, Tensor]) -> Tensor:
        """An orthonormal basis (D, k) of the span of the orbit generators at Phi."""
        columns = []
        for sym in syms:
            if sym.kind.one_parameter or sym.kind is Kind.ROTATION:
                dense = generator(sym, point)
                columns.append(self._flat({name: dense.get(name, torch.zeros_like(point[name])) for name in self.names}))
            elif sym.kind is Kind.GL:
                count = sym.unit_count
                for e in torch.eye(count * count, dtype=torch.float64):
                    dense = gl_generator_combination(sym, point, e)
                    columns.append(self._flat({name: dense.get(name, torch.zeros_like(point[name], dtype=torch.float64))
                                               for name in self.names}))
        if not columns:
            return torch.zeros(self.point.numel(), 0, dtype=torch.float64)
        generators = torch.stack(columns, dim=1)
        u, singular, _ = torch.linalg.svd(generators, full_matrices=False)
        keep = singular > singular.max() * generators.shape[0] * torch.finfo(torch.float64).eps
        return u[:, keep]

    def push(self, vectors: Tensor) -> Tensor:
        """D Phi(theta) applied to the rows of ``vectors`` (n, D)."""
        moved = vectors.clone()
        for step in self.steps:
            if step[0] == "factors":
                moved = moved * step[1]
                continue
            if step[0] == "rotation":
                _, c, s, (x, y) = step
                moved_x, moved_y = moved[:, x], moved[:, y]
                moved[:, x], moved[:, y] = c * moved_x - s * moved_y, s * moved_x + c * moved_y
                continue
            _, matrix, inverse_t, index = step
            for transform, where in ((matrix, index[0]), (inverse_t, index[1])):
                moved[:, where] = torch.einsum("ij,njr->nir", transform, moved[:, where])  # (n, units, rest)
        moved = moved[:, self.order]
        return moved - (moved @ self.basis) @ self.basis.T


def _covariance_spread(noise: Tensor, reference: Tensor) -> float:
    """|Xi^T Xi - Xi0^T Xi0|_F / |Xi0^T Xi0|_F from the thin QR of [Xi; Xi0]^T: entrywise accurate
    (no cancellation of |A|^2-sized terms), and no D x D matrix."""
    k = noise.shape[0]
    _, r = torch.linalg.qr(torch.cat([noise, reference]).T)
    first, second = r[:, :k], r[:, k:]
    return float((first @ first.T - second @ second.T).norm() / (second @ second.T).norm())


def _check(syms: SymmetrySet, kinds: Sequence[str] | None, count: int, strength: float, reference: str) -> tuple[Kind, ...]:
    present = tuple(kind for kind in _CONTINUOUS if syms.of_kind(kind))
    if not present:
        raise ValueError("projectability needs at least one continuous symmetry (translation, scale, rescale or gl); "
                         f"the set has {syms.counts()}")
    if kinds is None:
        chosen = present
    else:
        try:
            chosen = tuple(Kind(k) for k in kinds)
        except ValueError as error:
            raise ValueError(f"kinds must be among {[k.value for k in _CONTINUOUS]}, got {list(kinds)}") from error
        missing = [k.value for k in chosen if k not in present]
        if missing or not chosen or any(k not in _CONTINUOUS for k in chosen):
            raise ValueError(f"kinds {list(kinds)}: the set has continuous symmetries of kinds "
                             f"{[k.value for k in present]} only")
    if count < 1:
        raise ValueError(f"need at least 1 representative besides the reference, got {count}")
    if not (strength >= 0 and math.isfinite(strength)):
        raise ValueError(f"strength must be finite and >= 0, got {strength}")
    if reference not in ("canonical", "given"):
        raise ValueError(f"reference must be 'canonical' or 'given', got {reference!r}")
    return chosen


def _minibatches(batches: int | Sequence[Tensor], batch_size: int | None, samples: int,
                 generator_: torch.Generator) -> list[Tensor]:
    if isinstance(batches, int):
        if batches < 2:
            raise ValueError(f"too few minibatches: need >= 2 to estimate a covariance, got {batches}")
        size = max(1, samples // 4) if batch_size is None else batch_size
        if not 1 <= size <= samples:
            raise ValueError(f"batch_size must be in [1, {samples}] (the number of samples), got {size}")
        return [torch.randperm(samples, generator=generator_)[:size] for _ in range(batches)]
    index_sets = [torch.as_tensor(index, dtype=torch.long) for index in batches]
    if len(index_sets) < 2:
        raise ValueError(f"too few minibatches: need >= 2 to estimate a covariance, got {len(index_sets)}")
    for index in index_sets:
        if index.ndim != 1 or index.numel() == 0 or int(index.min()) < 0 or int(index.max()) >= samples:
            raise ValueError(f"every minibatch must be a non-empty 1-D index tensor into {samples} samples")
    return index_sets


def _float64_copy(model: nn.Module) -> nn.Module:
    work = copy.deepcopy(model).to(torch.float64)
    work.train(model.training)
    return work


def _random_element(syms: SymmetrySet, params: Mapping[str, Tensor], kinds: tuple[Kind, ...], strength: float,
                    permute_units: bool, generator_: torch.Generator) -> dict[str, object]:
    element: dict[str, object] = {}
    for sym in syms:
        if sym.kind in kinds and sym.kind.one_parameter:
            element[sym.label] = float(strength * (2 * torch.rand((), generator=generator_, dtype=torch.float64) - 1))
        elif sym.kind in kinds and sym.kind is Kind.GL:
            element[sym.label] = random_gl_element(sym.unit_count, strength, generator_)
        elif sym.kind is Kind.PERMUTATION and permute_units:
            element[sym.label] = torch.randperm(sym.unit_count, generator=generator_)
        elif sym.kind in kinds and sym.kind is Kind.ROTATION:
            element[sym.label] = float(math.pi * (2 * torch.rand((), generator=generator_, dtype=torch.float64) - 1))
    return element


def _apply(syms: SymmetrySet, by_label: Mapping[str, Symmetry], params: Mapping[str, Tensor],
           element: Element) -> dict[str, Tensor]:
    """g theta: one-parameter groups first (in the set's order), then GL, then permutations."""
    moved = {name: p.clone() for name, p in params.items()}
    for sym in syms:
        if sym.label in element and sym.kind.one_parameter:
            act(sym, moved, float(element[sym.label]), copy=False)
    for sym in syms.of_kind(Kind.ROTATION):
        if sym.label in element:
            act_rotation(sym, moved, float(element[sym.label]), copy=False)
    for sym in syms.of_kind(Kind.GL):
        if sym.label in element:
            moved = act_gl(sym, moved, torch.as_tensor(element[sym.label], dtype=torch.float64))
    for sym in syms.of_kind(Kind.PERMUTATION):
        if sym.label in element:
            moved = permute(sym, moved, torch.as_tensor(element[sym.label]))
    return moved


def _element_size(by_label: Mapping[str, Symmetry], element: Element) -> float:
    size = 0.0
    for label, amount in element.items():
        kind = by_label[label].kind
        if kind in (Kind.RESCALE, Kind.SCALE):
            size = max(size, abs(float(amount)))
        elif kind is Kind.GL:
            singular = torch.linalg.svdvals(torch.as_tensor(amount, dtype=torch.float64))
            size = max(size, float((singular.max() / singular.min()).log()))
    return size
