r"""Local entropy of a model's loss on its quotient (Miyagawa 2026, §2.3, Thm 3.1, §3.1).

    u^nu(tau, q) = -nu log (P_{nu tau} e^{-U/nu})(q),     P_t = e^{(t/2) Delta_M},

U the loss as a function of the quotient point q. The quotient is charted as in the paper's §3.1:
each chosen ReLU unit j (a rescale symmetry (a_j, u_j) -> (a_j / r, r u_j)) by

    gamma_j = a_j |u_j| in R^k,     s_j = u_j / |u_j| on S^{d-1},

(u_j: the unit's incoming weights and bias, a_j: its k outgoing weights) and every parameter entry
no chosen unit touches (the "free" entries, e.g. the output bias c) as a line. Going back, the
balanced representative is used: |u_j| = sqrt|gamma_j|, u_j = |u_j| s_j, a_j = gamma_j / |u_j|.

Units are chosen greedily in the SymmetrySet's order among rescale symmetries whose slots overlap
no unit already chosen and whose (d, k) matches the first: for an MLP this is its first hidden
layer (the second layer's units share the weight matrix between the layers with the first's).
Deeper units stay as free entries: the chart quotients one layer's rescalings. In a CNN with
BatchNorm the first units are BatchNorm's (weight, bias) pairs against the next conv's input
channel (d = 2). A model with no ReLU rescale units (e.g. a GELU transformer, whose quotient comes
from GL heads and scale groups) has no (gamma, s) chart: QuotientChart.at says so.

Two metrics:
- "quotient" (default for slices): the metric of the balanced section, which is horizontal (each
  of its tangent vectors is orthogonal to the rescale orbits), i.e. the quotient metric. On a unit
  it is the cone metric d sigma^2 + (sigma^2 / 2) |ds|^2 with sigma = sqrt(2 |gamma|): rotating s_j
  by theta has arc length sqrt|gamma_j| theta, changing |gamma_j| radially has arc length
  d sqrt(2 |gamma_j|).
- "product": the product of the standard lines (gamma_j, free entries) and unit spheres (s_j): the
  paper's "Brownian increments on the product of lines and spheres". The Monte Carlo estimate uses it.

Slices: 1-D (one ``Direction``) or 2-D (two on different units or entries: the product of two flat
factors, so the 2-D heat semigroup is the composition of two 1-D ones, exactly). Each direction is
parametrised by its arc length, so the slice is flat and ``pde.local_entropy`` (log-domain
quadrature, circle or line) gives u exactly; a rotation and a radial change of the same unit span
a cone and are refused as a 2-D slice.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.func import functional_call, vmap

from .. import pde
from ..symmetry import Kind, Symmetry, SymmetrySet

__all__ = ["Direction", "LangevinGradient", "MonteCarloEntropy", "QuotientChart", "SliceEntropy", "batched_loss",
           "langevin_gradient", "monte_carlo_entropy", "slice_entropy", "sphere_walk"]

BatchedLoss = Callable[[Mapping[str, Tensor]], Tensor]  # stacked params (S, *shape) -> losses (S,)


def batched_loss(model: nn.Module, loss_fn: Callable[[Tensor, Tensor], Tensor], batch: Sequence[Tensor], *,
                 chunk: int = 256) -> BatchedLoss:
    """U at many parameter points at once: loss_fn(model_theta(inputs), targets) for each stacked theta.

    torch.func.vmap over functional_call, ``chunk`` points at a time; buffers are the model's own
    (BatchNorm in eval mode uses its running statistics). Differentiable in the parameters.
    """
    inputs, targets = batch
    buffers = {name: b.detach() for name, b in model.named_buffers()}

    def one(params: Mapping[str, Tensor]) -> Tensor:
        return loss_fn(functional_call(model, {**params, **buffers}, (inputs,)), targets)

    mapped = vmap(one)

    def losses(stacked: Mapping[str, Tensor]) -> Tensor:
        count = next(iter(stacked.values())).shape[0]
        parts = [mapped({k: v[i:i + chunk] for k, v in stacked.items()}) for i in range(0, count, chunk)]
        return torch.cat(parts)

    return losses


def _flat_positions(slot, shapes: Mapping[str, torch.Size]) -> Tensor:
    """Row-major flat indices of slot's block in its parameter, in the order reshape(-1) reads it."""
    shape = shapes[slot.param]
    index = torch.arange(math.prod(shape)).reshape(shape)
    return index.narrow(slot.dim, slot.start, slot.stop - slot.start).reshape(-1)


@dataclass(frozen=True, eq=False)
class QuotientChart:
    """(gamma_j, s_j) of the chosen ReLU units and the free entries, at a balanced representative.

    ``parameters(gamma, s, free)`` maps stacked coordinates (S, J, k), (S, J, d), (S, F) back to
    stacked parameters (S, *shape) (differentiably); ``coordinates()`` gives those of the base point.
    """

    units: tuple[Symmetry, ...]
    base: dict[str, Tensor]  # float64 balanced representative
    gamma: Tensor  # (J, k)
    s: Tensor  # (J, d)
    free: Tensor  # (F,)
    _layout: dict  # param -> (positions, sources) into the value vector [free | u (J*d) | a (J*k)]

    @classmethod
    def at(cls, params: Mapping[str, Tensor], symmetries: SymmetrySet) -> QuotientChart:
        base = {name: p.detach().to(torch.float64).clone() for name, p in params.items()}
        shapes = {name: p.shape for name, p in base.items()}
        chosen, taken, sizes = [], {}, None
        for sym in symmetries.of_kind(Kind.RESCALE):
            blocks = [(slot, set(_flat_positions(slot, shapes).tolist())) for slot in sym.slots]
            if any(taken.get(slot.param, set()) & entries for slot, entries in blocks):
                continue
            size = (sum(len(e) for s, e in blocks if s in sym.incoming), sum(len(e) for s, e in blocks if s in sym.outgoing))
            if sizes is not None and size != sizes:
                continue
            sizes = size
            chosen.append(sym)
            for slot, entries in blocks:
                taken.setdefault(slot.param, set()).update(entries)
        if not chosen:
            raise ValueError("QuotientChart needs a ReLU rescale symmetry; this SymmetrySet has none "
                             "(find_symmetries on a network with ReLU hidden units gives them)")
        d, k = sizes
        free_positions = {name: sorted(set(range(math.prod(shape))) - taken.get(name, set()))
                          for name, shape in shapes.items()}
        free_count = sum(len(v) for v in free_positions.values())
        layout, offset = {}, 0
        for name, shape in shapes.items():
            positions, sources = [torch.tensor(free_positions[name], dtype=torch.long)], \
                [torch.arange(offset, offset + len(free_positions[name]))]
            offset += len(free_positions[name])
            layout[name] = [positions, sources]
        for j, sym in enumerate(chosen):
            for slots, start, width in ((sym.incoming, free_count + j * d, d),
                                        (sym.outgoing, free_count + len(chosen) * d + j * k, k)):
                cursor = start
                for slot in slots:
                    flat = _flat_positions(slot, shapes)
                    layout[slot.param][0].append(flat)
                    layout[slot.param][1].append(torch.arange(cursor, cursor + len(flat)))
                    cursor += len(flat)
                assert cursor == start + width
        layout = {name: (torch.cat(p), torch.cat(s)) for name, (p, s) in layout.items()}
        values = torch.zeros(free_count + len(chosen) * (d + k), dtype=torch.float64)
        for name, (positions, sources) in layout.items():
            values[sources] = base[name].reshape(-1)[positions]
        free = values[:free_count]
        u = values[free_count:free_count + len(chosen) * d].reshape(len(chosen), d)
        a = values[free_count + len(chosen) * d:].reshape(len(chosen), k)
        norm = u.norm(dim=1, keepdim=True)
        if bool((norm == 0).any()):
            raise ValueError("QuotientChart: a unit has zero incoming weights (s = u/|u| undefined); "
                             "perturb the parameters or drop the unit")
        chart = cls(tuple(chosen), base, a * norm, u / norm, free.clone(), layout)
        # the base becomes the balanced representative of its own orbit
        balanced = chart.parameters(chart.gamma[None], chart.s[None], chart.free[None])
        object.__setattr__(chart, "base", {name: p[0] for name, p in balanced.items()})
        return chart

    @property
    def dims(self) -> tuple[int, int, int]:
        """(number of units J, sphere ambient dimension d, outgoing size k)."""
        return self.s.shape[0], self.s.shape[1], self.gamma.shape[1]

    def flat_coordinates(self) -> Tensor:
        """(gamma (J*k), angle of each s_j (J), free (F)): flat coordinates when every s_j is on a circle."""
        if self.dims[1] != 2:
            raise ValueError(f"flat coordinates need circles (d = 2), this chart's spheres live in R^{self.dims[1]}")
        return torch.cat([self.gamma.reshape(-1), torch.atan2(self.s[:, 1], self.s[:, 0]), self.free])

    def from_flat(self, flat: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Stacked flat coordinates (S, J*k + J + F) -> (gamma (S, J, k), s (S, J, 2), free (S, F))."""
        J, _, k = self.dims
        gamma = flat[:, :J * k].reshape(-1, J, k)
        angle = flat[:, J * k:J * k + J]
        return gamma, torch.stack([torch.cos(angle), torch.sin(angle)], dim=-1), flat[:, J * k + J:]

    def parameters(self, gamma: Tensor, s: Tensor, free: Tensor) -> dict[str, Tensor]:
        """Balanced parameters at stacked coordinates: |u_j| = sqrt|gamma_j|, u_j = |u_j| s_j, a_j = gamma_j / |u_j|."""
        count = gamma.shape[0]
        radius = gamma.norm(dim=-1, keepdim=True).sqrt()  # (S, J, 1)
        u = radius * s
        a = gamma / radius.clamp(min=torch.finfo(torch.float64).tiny)
        values = torch.cat([free, u.reshape(count, -1), a.reshape(count, -1)], dim=1)
        out = {}
        for name, (positions, sources) in self._layout.items():
            shape = self.base[name].shape
            flat = values.new_zeros(count, math.prod(shape))
            flat = flat.index_copy(1, positions, values[:, sources])
            out[name] = flat.reshape(count, *shape)
        return out


def _line_tangent(chart: QuotientChart, direction: Direction, metric: str) -> Tensor:
    J, d, k = chart.dims
    if metric != "product" or d != 2:
        raise ValueError("a 'line' direction needs metric='product' and circles (units with one input and a bias, "
                         f"d = 2); got metric={metric!r}, d = {d}")
    tangent = torch.tensor(direction.tangent, dtype=torch.float64)
    size = J * k + J + chart.free.numel()
    if tangent.shape != (size,) or float(tangent.norm()) == 0:
        raise ValueError(f"a 'line' tangent needs {size} entries (gamma, angles, free), not all zero; got {tuple(tangent.shape)}")
    return tangent / tangent.norm()


# --------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Direction:
    """One slice direction through the chart's base point.

    kind "rotate": s_unit(theta) = cos(theta) s + sin(theta) e, e the unit ``tangent`` made
        orthogonal to s (default: the basis vector least aligned with s); a circle.
    kind "radial": |gamma_unit| changes, its direction and s fixed; a half-line (|gamma| > 0).
    kind "free": free entry number ``entry`` (of ``QuotientChart.free``) changes; a line.
    kind "line": a straight line along ``tangent`` in the flat coordinates (gamma (J*k), angle of each
        s_j (J), free (F)) of a chart whose spheres are circles (d = 2): product metric only.
    """

    kind: str
    unit: int = 0
    entry: int = 0
    tangent: tuple[float, ...] | None = None

    def __post_init__(self) -> None:
        if self.kind not in ("rotate", "radial", "free", "line"):
            raise ValueError(f"Direction kind must be 'rotate', 'radial', 'free' or 'line', got {self.kind!r}")
        if self.kind == "line" and self.tangent is None:
            raise ValueError("a 'line' direction needs its tangent in the chart's flat coordinates")


def _tangent(direction: Direction, s: Tensor) -> Tensor:
    if direction.tangent is not None:
        e = torch.tensor(direction.tangent, dtype=torch.float64)
        if e.shape != s.shape:
            raise ValueError(f"tangent must have {s.numel()} entries (the unit's sphere lives in R^{s.numel()}), got {e.numel()}")
    else:
        e = torch.zeros_like(s)
        e[int(s.abs().argmin())] = 1.0
    e = e - (e @ s) * s
    if float(e.norm()) < 1e-12:
        raise ValueError("tangent is parallel to s: choose a direction with a component orthogonal to s")
    return e / e.norm()


def _axis(chart: QuotientChart, direction: Direction, metric: str, points: int, half_width: float | None):
    """(arc-length grid, domain, map grid -> stacked coordinates (gamma, s, free))."""
    J, d, k = chart.dims
    if direction.kind in ("rotate", "radial") and not 0 <= direction.unit < J:
        raise ValueError(f"unit must be in [0, {J}), got {direction.unit}")
    if direction.kind == "free" and not 0 <= direction.entry < chart.free.numel():
        raise ValueError(f"entry must be in [0, {chart.free.numel()}), got {direction.entry}")
    if direction.kind == "line":
        tangent = _line_tangent(chart, direction, metric)
        width = half_width if half_width is not None else 1.0
        grid = torch.linspace(-width, width, points, dtype=torch.float64)
        base = chart.flat_coordinates()

        def coordinates(x: Tensor):
            return chart.from_flat(base + x[:, None] * tangent)

        return grid, "line", coordinates
    if direction.kind == "rotate":
        scale = float(chart.gamma[direction.unit].norm().sqrt()) if metric == "quotient" else 1.0
        # arc length sqrt|gamma| theta (quotient) or theta (product); one period, endpoint excluded
        period = 2 * math.pi * scale
        grid = torch.arange(points, dtype=torch.float64) * (period / points) - period / 2
        if half_width is not None:
            raise ValueError("a rotation slice is a whole circle: leave half_width unset")
        e, s0 = _tangent(direction, chart.s[direction.unit]), chart.s[direction.unit]

        def coordinates(x: Tensor):
            theta = x / scale
            s = chart.s.expand(len(x), J, d).clone()
            s[:, direction.unit] = torch.cos(theta)[:, None] * s0 + torch.sin(theta)[:, None] * e
            return chart.gamma.expand(len(x), J, k), s, chart.free.expand(len(x), -1)

        return grid, "circle", coordinates
    g0 = chart.gamma[direction.unit]
    if direction.kind == "radial":
        magnitude = float(g0.norm())
        centre = math.sqrt(2 * magnitude) if metric == "quotient" else magnitude
        width = half_width if half_width is not None else 0.9 * centre
        if width >= centre:
            raise ValueError(f"half_width {width:g} would reach gamma = 0 (the cone's tip, where s is undefined): "
                             f"keep it below {centre:g}")
    else:
        centre, width = float(chart.free[direction.entry]), half_width if half_width is not None else 1.0
    grid = torch.linspace(centre - width, centre + width, points, dtype=torch.float64)

    def coordinates(x: Tensor):
        gamma = chart.gamma.expand(len(x), J, k).clone()
        free = chart.free.expand(len(x), -1).clone()
        if direction.kind == "radial":
            magnitude = x**2 / 2 if metric == "quotient" else x  # sigma = sqrt(2 |gamma|)
            gamma[:, direction.unit] = magnitude[:, None] * (g0 / g0.norm())
        else:
            free[:, direction.entry] = x
        return gamma, chart.s.expand(len(x), J, d), free

    return grid, "line", coordinates


@dataclass(frozen=True)
class SliceEntropy:
    """u^nu(tau, .) on a 1-D or 2-D slice; grids are arc lengths (flat), ``potential`` is U there."""

    directions: tuple[Direction, ...]
    metric: str
    nu: float
    grids: tuple[Tensor, ...]
    domains: tuple[str, ...]
    taus: Tensor  # (T,)
    potential: Tensor  # (n,) or (n1, n2)
    entropy: Tensor  # (T, n) or (T, n1, n2)

    def hj_residual(self, accuracy: int = 4) -> Tensor:
        """u_tau + |grad u|^2/2 - (nu/2) Delta u by finite differences (Thm 3.1); needs uniform taus."""
        periodic = tuple(domain == "circle" for domain in self.domains)
        if len(self.grids) == 1:
            return pde.hj_residual(self.entropy, self.taus, self.grids[0], self.nu, periodic=periodic[0],
                                   accuracy=accuracy)
        return pde.hj_residual_2d(self.entropy, self.taus, self.grids, self.nu, periodic=periodic, accuracy=accuracy)


@torch.no_grad()
def slice_entropy(loss: BatchedLoss, chart: QuotientChart, directions: Sequence[Direction], nu: float,
                  taus: Sequence[float], *, points: int | Sequence[int] = 91, metric: str = "quotient",
                  half_width: float | Sequence[float | None] | None = None) -> SliceEntropy:
    r"""The exact local entropy of U on a slice through the chart's base point, for each tau.

    1-D: u = ``pde.local_entropy`` of U along the arc length (circle for "rotate", line otherwise).
    2-D: the heat semigroup of a product of flat factors factorises, so
        -nu log P^{(1)} P^{(2)} e^{-U/nu} = local_entropy along axis 1 of (local_entropy along axis 2 of U),
    exact: each pass is a log-domain quadrature, no e^{-U/nu} is ever formed.
    """
    if metric not in ("quotient", "product"):
        raise ValueError(f"metric must be 'quotient' or 'product', got {metric!r}")
    if len(directions) not in (1, 2):
        raise ValueError(f"a slice has 1 or 2 directions, got {len(directions)}")
    if len(directions) == 2:
        first, second = directions
        if "line" in (first.kind, second.kind):
            if first.kind != second.kind:
                raise ValueError("a 'line' direction pairs only with another 'line' direction")
            dot = float(_line_tangent(chart, first, metric) @ _line_tangent(chart, second, metric))
            if abs(dot) > 1e-9:
                raise ValueError(f"the two 'line' tangents must be orthogonal (a flat product), their cosine is {dot:.3g}")
        same_unit = first.kind in ("rotate", "radial") and second.kind in ("rotate", "radial") and first.unit == second.unit
        if same_unit or (first.kind == second.kind == "free" and first.entry == second.entry):
            raise ValueError("the two directions of a 2-D slice must move different units or entries "
                             "(a rotation and a radial change of one unit span a cone, not a flat product)")
    taus_t = torch.as_tensor(taus, dtype=torch.float64)
    if taus_t.ndim != 1 or len(taus_t) == 0 or bool((taus_t < 0).any()):
        raise ValueError(f"taus must be a non-empty 1-D sequence of values >= 0, got {taus}")
    counts = [points] * len(directions) if isinstance(points, int) else list(points)
    widths = [half_width] * len(directions) if half_width is None or isinstance(half_width, (int, float)) \
        else list(half_width)
    if len(counts) != len(directions) or len(widths) != len(directions) or min(counts) < 8:
        raise ValueError(f"points and half_width need one entry per direction and points >= 8, got {points}, {half_width}")
    axes = [_axis(chart, d, metric, n, w) for d, n, w in zip(directions, counts, widths)]
    grids = tuple(a[0] for a in axes)
    domains = tuple(a[1] for a in axes)
    if len(axes) == 1:
        gamma, s, free = axes[0][2](grids[0])
        potential = loss(chart.parameters(gamma, s, free)).double()
    else:
        g1, s1, f1 = axes[0][2](grids[0])  # coordinates along axis 1 at the base of axis 2, then overlay axis 2
        n1, n2 = len(grids[0]), len(grids[1])
        g2, s2, f2 = axes[1][2](grids[1])
        second = directions[1]
        if second.kind == "line":
            base = chart.flat_coordinates()
            t1, t2 = _line_tangent(chart, directions[0], metric), _line_tangent(chart, second, metric)
            flat = base + grids[0][:, None, None] * t1 + grids[1][None, :, None] * t2
            gamma, s, free = chart.from_flat(flat.reshape(n1 * n2, -1))
            potential = loss(chart.parameters(gamma, s, free)).double().reshape(n1, n2)
        else:
            gamma = g1[:, None].expand(n1, n2, *g1.shape[1:]).clone()
            s = s1[:, None].expand(n1, n2, *s1.shape[1:]).clone()
            free = f1[:, None].expand(n1, n2, f1.shape[1]).clone()
            if second.kind == "rotate":
                s[:, :, second.unit] = s2[None, :, second.unit]
            elif second.kind == "radial":
                gamma[:, :, second.unit] = g2[None, :, second.unit]
            else:
                free[:, :, second.entry] = f2[None, :, second.entry]
            potential = loss(chart.parameters(gamma.reshape(n1 * n2, *gamma.shape[2:]), s.reshape(n1 * n2, *s.shape[2:]),
                                              free.reshape(n1 * n2, -1))).double().reshape(n1, n2)
    if not bool(torch.isfinite(potential).all()):
        raise ValueError("the loss is not finite on the slice: shrink half_width")
    fields = []
    for tau in taus_t.tolist():
        if len(axes) == 1:
            fields.append(pde.local_entropy(potential, grids[0], nu, tau, domains[0]) if tau > 0 else potential)
        elif tau == 0:
            fields.append(potential)
        else:
            inner = pde.local_entropy(potential, grids[1], nu, tau, domains[1])
            fields.append(pde.local_entropy(inner.T.contiguous(), grids[0], nu, tau, domains[0]).T)
    return SliceEntropy(tuple(directions), metric, float(nu), grids, domains, taus_t, potential, torch.stack(fields))


# --------------------------------------------------------------------------------------------------
def sphere_walk(start: Tensor, time: float, substeps: int, generator: torch.Generator) -> Tensor:
    r"""Brownian motion with generator (1/2) Delta on unit spheres, rows of ``start`` (..., d), at ``time``.

    Scheme: x <- (x + sqrt(h) P_x xi) / |x + sqrt(h) P_x xi|, h = time / substeps, P_x = I - x x^T
    (the projected random walk). Order: weak 1 in h; E<X_t, x_0> = e^{-(d-1) t / 2} is matched to
    O(h) (tests/quotient/test_entropy.py).
    """
    x = start.clone()
    h = time / substeps
    for _ in range(substeps):
        xi = torch.randn(x.shape, dtype=x.dtype, generator=generator)
        xi = xi - (xi * x).sum(-1, keepdim=True) * x
        x = x + math.sqrt(h) * xi
        x = x / x.norm(dim=-1, keepdim=True)
    return x


@dataclass(frozen=True)
class MonteCarloEntropy:
    """u^nu(tau, q) by Monte Carlo, its standard error, and the importance weights' effective size."""

    value: float
    standard_error: float
    effective_samples: float
    samples: int
    gradient_lines: Tensor  # grad of u along the line factors (gamma (J*k), then free (F)): E_w[q - Y] / tau


@torch.no_grad()
def monte_carlo_entropy(loss: BatchedLoss, chart: QuotientChart, nu: float, tau: float, *, samples: int = 4096,
                        substeps: int = 16, factors: str = "all", seed: int = 0) -> MonteCarloEntropy:
    r"""u^nu(tau, q) = -nu log E[exp(-U(Y_{nu tau}) / nu)], Y Brownian motion from q on the product
    of lines (gamma_j, free entries) and spheres (s_j), generator (1/2) Delta (the product metric).

    Estimator: log-mean-exp of -U/nu over ``samples`` endpoints (log domain); standard error by the
    delta method, nu std(r)/sqrt(S) with r_i = S softmax(-U/nu)_i. On the line factors the gradient is
    E_rho[q - Y]/tau with rho the e^{-U/nu}-weighted endpoints (exact for the flat factors: the
    Gaussian kernel's score). ``factors``: "all", "lines" (spheres held at q) or "spheres".
    """
    if not (nu > 0 and tau > 0):
        raise ValueError(f"nu and tau must be > 0, got nu={nu}, tau={tau}")
    if factors not in ("all", "lines", "spheres"):
        raise ValueError(f"factors must be 'all', 'lines' or 'spheres', got {factors!r}")
    if samples < 16 or substeps < 1:
        raise ValueError(f"need samples >= 16 and substeps >= 1, got {samples}, {substeps}")
    generator = torch.Generator().manual_seed(seed)
    J, d, k = chart.dims
    t = nu * tau
    gamma = chart.gamma.expand(samples, J, k).clone()
    free = chart.free.expand(samples, -1).clone()
    if factors != "spheres":
        gamma = gamma + math.sqrt(t) * torch.randn(gamma.shape, dtype=torch.float64, generator=generator)
        free = free + math.sqrt(t) * torch.randn(free.shape, dtype=torch.float64, generator=generator)
    s = chart.s.expand(samples, J, d)
    if factors != "lines":
        s = sphere_walk(s, t, substeps, generator)
    potential = loss(chart.parameters(gamma, s, free)).double()
    if not bool(torch.isfinite(potential).all()):
        raise ValueError("the loss is not finite at some Monte Carlo endpoints")
    log_weights = -potential / nu
    log_mean = torch.logsumexp(log_weights, 0) - math.log(samples)
    weights = torch.softmax(log_weights, 0)
    ratios = samples * weights
    lines = torch.cat([gamma.reshape(samples, -1), free], dim=1)
    base = torch.cat([chart.gamma.reshape(-1), chart.free])
    gradient = (weights[:, None] * (base - lines)).sum(0) / tau
    return MonteCarloEntropy(float(-nu * log_mean), float(nu * ratios.std() / math.sqrt(samples)),
                             float(1.0 / (weights**2).sum()), samples, gradient)


@dataclass(frozen=True)
class LangevinGradient:
    """grad u^nu along the line factors by Langevin sampling (Entropy-SGD), with a standard error."""

    gradient: Tensor
    standard_error: Tensor
    steps: int


def langevin_gradient(loss: BatchedLoss, chart: QuotientChart, nu: float, tau: float, *, chains: int = 64,
                      steps: int = 400, burn_in: int = 100, step_size: float | None = None,
                      seed: int = 0) -> LangevinGradient:
    r"""grad u^nu(tau, q) = E_rho[q - y] / tau on the line factors (gamma, free; spheres held at q),

    rho(y) ∝ exp(-U(y)/nu - |y - q|^2 / (2 nu tau)), sampled by unadjusted Langevin dynamics
    y <- y - h grad(-log rho)(y) + sqrt(2h) xi (Chaudhari et al. 2017's inner loop), ``chains`` in
    parallel, averaged after ``burn_in``. Bias O(h); h defaults to nu tau / 50. The standard error
    is over chains (chain means are independent).
    """
    if not (nu > 0 and tau > 0) or steps <= burn_in or chains < 2:
        raise ValueError(f"need nu, tau > 0, steps > burn_in, chains >= 2; got {nu}, {tau}, {steps}, {burn_in}, {chains}")
    generator = torch.Generator().manual_seed(seed)
    J, d, k = chart.dims
    h = step_size if step_size is not None else nu * tau / 50
    base = torch.cat([chart.gamma.reshape(-1), chart.free])
    split = J * k
    y = base.expand(chains, -1).clone()
    s = chart.s.expand(chains, J, d)
    total = torch.zeros_like(y)
    for step in range(steps):
        y = y.detach().requires_grad_(True)
        potential = loss(chart.parameters(y[:, :split].reshape(chains, J, k), s, y[:, split:]))
        (grad,) = torch.autograd.grad(potential.sum(), y)
        with torch.no_grad():
            drift = grad / nu + (y - base) / (nu * tau)
            y = y - h * drift + math.sqrt(2 * h) * torch.randn(y.shape, dtype=torch.float64, generator=generator)
            if step >= burn_in:
                total += y
    means = total / (steps - burn_in)
    estimates = (base - means) / tau
    return LangevinGradient(estimates.mean(0), estimates.std(0) / math.sqrt(chains), steps)
