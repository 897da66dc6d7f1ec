r"""Horizontal projection: remove from a parameter-space vector its components along the orbits.

At theta the orbit directions are the generators xi_k(theta) of every one-parameter symmetry
(translation 1_A, scale theta_A, rescale (theta_A1, -theta_A2)) and, for each GL(d) group of an
attention head, the d^2 generators xi_E = (E A_in, -E^T A_out). With J v = (<xi_k, v>)_k and the
Euclidean metric,

    P_H v = v - J^T c,    (J J^T) c = J v,

solved by conjugate gradients on the Gram operator J J^T, preconditioned by its diagonal (|xi_k|^2)
and, on each GL group's d^2 rows, by that group's own block solved exactly (a Sylvester equation),
matrix-free: J and J^T are one gather / scatter per (parameter, dim, sign) of the SymmetrySet's
plan, and one d x d product per GL group.

Metrics (``Metric``): Euclidean, or GL-invariant on the attention heads' parameters,

    <V, W>_theta = tr(V_in^T (A_in A_in^T)^-1 W_in) + tr(V_out^T (A_out A_out^T)^-1 W_out)

per GL group (unit axis first) and Euclidean elsewhere: the metric of the quotient of pairs of
full-rank factors by GL(d) used in Riemannian low-rank optimisation (Mishra et al. 2014), which
makes the projection equivariant, P_H(g theta)(g_* v) = g_* P_H(theta) v. (The G-invariant metrics
of Da Silva et al. 2025 named in DESIGN.md could not be consulted here; this is the standard one.)
With a metric G the projection solves (J G J^T) c = J G v and returns v - J^T c.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
import enum
import functools
import math
from dataclasses import dataclass

import numpy as np
import torch
from scipy.sparse import csc_matrix, csr_matrix
from scipy.sparse.csgraph import connected_components
from torch import Tensor

from ..symmetry import Kind, SymmetrySet, generator, generator_entries, gl_generator_combination, gl_generator_inner, unit_matrix

__all__ = ["HorizontalProjector", "Metric", "OrbitOperator", "check_vectors", "horizontal_projection", "horizontal_projector"]

_KINDS = (Kind.TRANSLATION, Kind.SCALE, Kind.RESCALE)


class Metric(enum.StrEnum):
    EUCLIDEAN = "euclidean"
    GL_INVARIANT = "gl-invariant"  # (A A^T)^-1-weighted on every GL group's slots (module docstring)


def _apply_metric(metric: Metric, symmetries: SymmetrySet, params: Mapping[str, Tensor],
                  vectors: dict[str, Tensor]) -> dict[str, Tensor]:
    """G v: the identity for the Euclidean metric; (A A^T)^-1 V on each side of every GL group."""
    if metric is Metric.EUCLIDEAN:
        return vectors
    out = {name: t.clone() for name, t in vectors.items()}
    for sym in symmetries.of_kind(Kind.GL):
        count = sym.unit_count
        for slots in (sym.incoming, sym.outgoing):
            a = unit_matrix(sym, slots, params).double()
            weight = torch.linalg.inv(a @ a.T)
            for slot in slots:
                block = vectors[slot.param].narrow(slot.dim, slot.start, slot.stop - slot.start).movedim(slot.dim, 0)
                moved = (weight @ block.reshape(count, -1)).reshape(block.shape).movedim(0, slot.dim)
                out[slot.param].narrow(slot.dim, slot.start, slot.stop - slot.start).copy_(moved)
    return out


@dataclass(frozen=True, eq=False)
class OrbitOperator:
    """J: parameter vectors -> R^K, v -> (<xi_k(theta), v>)_k over the one-parameter symmetries."""

    symmetries: SymmetrySet
    params: Mapping[str, Tensor]

    @property
    def sizes(self) -> tuple[int, ...]:
        """Rows per block: one per one-parameter kind, one for all rotations, then d^2 per GL group."""
        return (tuple(len(self.symmetries.of_kind(kind)) for kind in _KINDS)
                + (len(self.symmetries.of_kind(Kind.ROTATION)),)
                + tuple(sym.unit_count**2 for sym in self.symmetries.of_kind(Kind.GL)))

    @functools.cached_property
    def _rotation_generators(self) -> list[dict[str, Tensor]]:
        """Dense (-y, x) of every rotation at ``params``: built once, read by every CG iteration."""
        return [generator(sym, self.params) for sym in self.symmetries.of_kind(Kind.ROTATION)]

    def matvec(self, vectors: Mapping[str, Tensor]) -> Tensor:
        parts = [self.symmetries.generator_inner(kind, self.params, vectors) for kind, n in zip(_KINDS, self.sizes) if n]
        rotations = self._rotation_generators
        if rotations:
            parts.append(torch.stack([sum((xi[name].double() * vectors[name].double()).sum() for name in xi)
                                      for xi in rotations]).to(torch.float64))
        parts += [gl_generator_inner(sym, self.params, vectors).reshape(-1) for sym in self.symmetries.of_kind(Kind.GL)]
        return torch.cat(parts) if parts else torch.zeros(0, dtype=torch.float64)

    def rmatvec(self, coefficients: Tensor) -> dict[str, Tensor]:
        out: dict[str, Tensor] = {}
        blocks = torch.split(coefficients, self.sizes)
        for sym, part in zip(self.symmetries.of_kind(Kind.GL), blocks[len(_KINDS) + 1:]):
            gl_generator_combination(sym, self.params, part, into=out)  # summed in place: heads share tensors
        pieces = [self.symmetries.generator_combination(kind, self.params, part)
                  for kind, part in zip(_KINDS, blocks) if part.numel()]
        pieces += [{name: float(c) * dense.double() for name, dense in xi.items()}
                   for xi, c in zip(self._rotation_generators, blocks[len(_KINDS)])]
        for piece in pieces:
            for name, dense in piece.items():
                out[name] = out[name] + dense if name in out else dense
        return out

    def diagonal(self) -> Tensor:
        """|xi_k|^2 for every k: the Gram operator's diagonal (the preconditioner)."""
        values = []
        for kind in _KINDS:
            for sym in self.symmetries.of_kind(kind):
                if kind is Kind.TRANSLATION:
                    values.append(float(sum(s.view(self.params).numel() for s in sym.incoming)))
                else:
                    values.append(float(sum(s.view(self.params).double().square().sum() for s in sym.slots)))
        values += [float(sum(s.view(self.params).double().square().sum() for s in sym.slots))  # |(-y, x)|^2
                   for sym in self.symmetries.of_kind(Kind.ROTATION)]
        diagonal = [torch.tensor(values, dtype=torch.float64)]
        for sym in self.symmetries.of_kind(Kind.GL):  # |xi_{E_ab}|^2 = |A_in row b|^2 + |A_out row a|^2
            rows_in = unit_matrix(sym, sym.incoming, self.params).double().square().sum(1)
            rows_out = unit_matrix(sym, sym.outgoing, self.params).double().square().sum(1)
            diagonal.append((rows_out.unsqueeze(1) + rows_in.unsqueeze(0)).reshape(-1))
        return torch.cat(diagonal)

    def preconditioner(self) -> Callable[[Tensor], Tensor]:
        """r -> M^-1 r for CG on the Euclidean Gram matrix J J^T: its diagonal on the one-parameter and
        rotation rows, and on each GL group's d^2 rows the group's own block solved exactly. That block
        is M_out (x) I + I (x) M_in (row-major (a, b), M = A A^T of the head's outgoing and incoming
        slots; checked against J J^T in tests/quotient/test_projector_blocks.py), so its solve is the
        Sylvester equation M_out X + X M_in = R: X = U [(U^T R V) / (lambda_a + sigma_b)] V^T with
        M_out = U diag(lambda) U^T, M_in = V diag(sigma) V^T (one eigh of each, d x d, per group). The
        diagonal alone leaves CG the condition number of A A^T on every head (GPT-2, one layer: hundreds
        of iterations a projection)."""
        tiny = torch.finfo(torch.float64).tiny
        diagonal = self.diagonal().clamp(min=tiny)
        solvers = []
        for sym in self.symmetries.of_kind(Kind.GL):
            a_in = unit_matrix(sym, sym.incoming, self.params).double()
            a_out = unit_matrix(sym, sym.outgoing, self.params).double()
            sigma, v = torch.linalg.eigh(a_in @ a_in.T)
            lam, u = torch.linalg.eigh(a_out @ a_out.T)
            denominator = lam.unsqueeze(1) + sigma.unsqueeze(0)
            solvers.append((u, v, denominator.clamp(min=max(float(denominator.max()) * 1e-14, tiny))))
        head = sum(self.sizes[:len(_KINDS) + 1])

        def apply(residual: Tensor) -> Tensor:
            out = residual / diagonal
            offset = head
            for u, v, denominator in solvers:
                d = u.shape[0]
                block = residual[offset:offset + d * d].reshape(d, d)
                out[offset:offset + d * d] = (u @ ((u.T @ block @ v) / denominator) @ v.T).reshape(-1)
                offset += d * d
            return out

        return apply


def horizontal_projection(symmetries: SymmetrySet, params: Mapping[str, Tensor], vectors: Mapping[str, Tensor],
                          *, metric: str = "euclidean", rtol: float = 1e-12,
                          max_iterations: int = 10_000) -> dict[str, Tensor]:
    r"""P_H v: ``vectors`` with every orbit direction at ``params`` removed, orthogonally in ``metric``.

    Equation: P_H v = v - J^T c with (J G J^T) c = J G v (least squares if generators are
        dependent); G the identity ("euclidean") or the GL-invariant metric ("gl-invariant").
    Scheme: preconditioned conjugate gradients, float64, to |J P_H v| <= rtol |J v| (Euclidean: each GL
    group's block solved exactly, ``OrbitOperator.preconditioner``; GL-invariant: the diagonal).
    Returns float64 tensors for every key of ``vectors``.
    Raises: RuntimeError if CG does not reach rtol within ``max_iterations``; ValueError / TypeError
    (``SymmetrySet.check_params``) for parameters the set cannot act on, a vector that names no
    parameter or is not finite (a blown-up gradient: no iteration would converge).
    """
    metric = Metric(metric)
    symmetries.check_params(params)
    check_vectors(vectors, params)
    params = {name: p.detach().to(torch.float64) for name, p in params.items()}  # once, not per iteration
    v = {name: t.detach().to(torch.float64) for name, t in vectors.items()}
    return _horizontal_solver(OrbitOperator(symmetries, params), symmetries, params, metric, rtol, max_iterations)(v)


def _horizontal_solver(operator: OrbitOperator, symmetries: SymmetrySet, params: Mapping[str, Tensor], metric: Metric,
                       rtol: float, max_iterations: int) -> Callable[[Mapping[str, Tensor]], dict[str, Tensor]]:
    """``horizontal_projection``'s CG at float64 ``params`` (``operator`` the orbit operator there), for
    float64 vectors (checked by the caller): the preconditioner made once for every vector projected at
    these parameters (a Krylov run's start, the monitor's gradient and update), not once per vector."""
    made: list[Callable[[Tensor], Tensor]] = []

    def precondition(residual: Tensor) -> Tensor:
        if not made:
            if metric is Metric.EUCLIDEAN:
                made.append(operator.preconditioner())
            else:  # the GL-invariant metric changes the GL blocks: the diagonal of the Euclidean Gram matrix only
                diagonal = operator.diagonal().clamp(min=torch.finfo(torch.float64).tiny)
                made.append(diagonal.reciprocal().mul)
        return made[0](residual)

    def gram(c: Tensor) -> Tensor:
        combination = operator.rmatvec(c)
        dense = {name: combination.get(name, torch.zeros_like(p, dtype=torch.float64)) for name, p in params.items()}
        return operator.matvec(_apply_metric(metric, symmetries, params, dense))

    def solve(v: Mapping[str, Tensor]) -> dict[str, Tensor]:
        # parameters the caller left out take part as zeros (J needs every slot's tensor)
        full = {name: v[name] if name in v else torch.zeros_like(p, dtype=torch.float64) for name, p in params.items()}
        rhs = operator.matvec(_apply_metric(metric, symmetries, params, full))
        if rhs.numel() == 0 or float(rhs.norm()) == 0.0:
            return dict(v)
        c = torch.zeros_like(rhs)
        residual = rhs.clone()
        z = precondition(residual)
        direction = z.clone()
        rz = float(residual @ z)
        target = rtol * float(rhs.norm())
        for _ in range(max_iterations):
            if float(residual.norm()) <= target:
                break
            applied = gram(direction)
            step = rz / float(direction @ applied)
            c += step * direction
            residual -= step * applied
            z = precondition(residual)
            rz_new = float(residual @ z)
            direction = z + (rz_new / rz) * direction
            rz = rz_new
        else:
            raise RuntimeError(f"horizontal_projection: CG did not reach rtol={rtol} in {max_iterations} iterations "
                               f"(residual {float(residual.norm()) / float(rhs.norm()):.2e})")
        removed = operator.rmatvec(c)
        return {name: t - removed[name] if name in removed else t for name, t in v.items()}

    return solve


def check_vectors(vectors: Mapping[str, Tensor], params: Mapping[str, Tensor]) -> None:
    """One-line errors for tangent vectors: a key that is no parameter, a shape that is not its
    parameter's, a value that is not finite."""
    extra = [name for name in vectors if name not in params]
    if extra:
        raise ValueError(f"vectors names {', '.join(map(repr, extra[:3]))}, not among the parameters: give vectors "
                         "keyed by parameter name")
    for name, t in vectors.items():
        if tuple(t.shape) != tuple(params[name].shape):
            raise ValueError(f"vectors[{name!r}] has shape {tuple(t.shape)}, its parameter {tuple(params[name].shape)}")
        if not bool(torch.isfinite(t).all()):
            raise ValueError(f"vectors[{name!r}] is not finite (NaN or inf): a projection of it is not defined")


class HorizontalProjector:
    r"""v -> P_H v for flat float64 vectors (``horizontal_projector``), and ``krylov(start)``: the same
    projection for the vectors of one Krylov run, at the cost of a few dot products where it can.

    In a Krylov space of A = P_H H P_H - s I started at v_0, every vector is r = h + alpha u_0 with h
    horizontal and u_0 = v_0 - P_H v_0 the start's vertical part (A v = P_H(...) - s v adds nothing
    vertical but -s times its input's vertical part), so P_H r = r - alpha u_0 (P_H u_0 = 0). alpha
    is read off m random vertical functionals c_i = J^T z_i / |J^T z_i| (c_i . h = 0):

        alpha = <C r, C u_0> / |C u_0|^2,   accepted where |C r - alpha C u_0|_inf <= tau |r|,

    tau = 1e-12, and any other vector (an eigensolver's random restart, round-off grown past tau)
    gets the full projection. So the operator stays P_H H P_H on every vector, orbit zeros included,
    with one projection a product in place of two (measured in Lanczos on an 85k-parameter MLP:
    benchmarks/RESULTS.md)."""

    FUNCTIONALS = 3
    TOLERANCE = 1e-12

    def __init__(self, project: Callable[[np.ndarray], np.ndarray], vertical: Callable[[np.ndarray], np.ndarray] | None,
                 count: int):
        self._project = project
        self._vertical = vertical  # z (K) -> J^T z (D), or None where there is no orbit direction
        self._count = count

    def __call__(self, vector: np.ndarray) -> np.ndarray:
        return self._project(vector)

    @functools.cached_property
    def _functionals(self) -> np.ndarray:
        """C: FUNCTIONALS unit rows J^T z_i, z_i standard normal from a fixed seed."""
        rng = np.random.default_rng(0)
        rows = np.stack([self._vertical(rng.standard_normal(self._count)) for _ in range(self.FUNCTIONALS)])
        # a generator set that is zero here (a scale at theta_A = 0) leaves a zero row, which reads 0
        return rows / np.maximum(np.linalg.norm(rows, axis=1, keepdims=True), np.finfo(np.float64).tiny)

    def krylov(self, start: np.ndarray) -> Callable[[np.ndarray], np.ndarray]:
        """r -> P_H r for the vectors of a Krylov run started at ``start`` (see the class)."""
        if self._vertical is None:
            return self._project
        functionals = self._functionals
        vertical = start - self._project(start)
        seen = functionals @ vertical
        # a start horizontal to round-off: its Krylov vectors are horizontal, alpha = 0
        weight = float(seen @ seen) if float(np.abs(seen).max()) > self.TOLERANCE * float(np.linalg.norm(start)) else 0.0

        def project(vector: np.ndarray) -> np.ndarray:
            read = functionals @ vector
            alpha = float(read @ seen) / weight if weight else 0.0
            if float(np.abs(read - alpha * seen).max()) <= self.TOLERANCE * float(np.linalg.norm(vector)):
                return vector - alpha * vertical
            return self._project(vector)

        return project


def horizontal_projector(symmetries: SymmetrySet, params: Mapping[str, Tensor], *, rtol: float = 1e-8,
                         max_iterations: int = 10_000,
                         max_dense_entries: int = 16_000_000) -> HorizontalProjector:
    r"""v -> P_H v (Euclidean) at ``params``, for flat float64 vectors in the order of ``params``' keys:
    for many vectors at one point (a Lanczos run, the monitor's gradient and update).

    Where the K x K Gram matrix G = J J^T of the K generators has at most ``max_dense_entries`` entries:
        P_H v = v - J^T G^+ J v, J^T the sparse D x K generator matrix (``generator_matrix``: each
        generator touches a few rows and columns of its layers), G^+ by eigh with the directions
        below round-off dropped (generators may be dependent), block by block: G is block-diagonal
        over the generators that share no parameter entry (the connected components of its sparsity
        graph; a width/4 VGG-11's 1633 generators fall in 25 blocks, the largest 384, so the eigh
        costs 1/37 of one of the whole G): two sparse products and a block-diagonal one per
        vector in place of a CG solve (measured on an 85k-parameter MLP: a quotient Hessian product
        1.27x a raw one, against 9.8x with CG; benchmarks/RESULTS.md).
    Otherwise each call is ``horizontal_projection`` (CG to ``rtol``; RuntimeError if it does not
    converge within ``max_iterations``). ``HorizontalProjector.krylov`` serves a Krylov run's vectors.
    Raises: ValueError / TypeError (``SymmetrySet.check_params``) for parameters the set cannot act on.
    """
    symmetries.check_params(params)
    # a host copy: the projector takes and returns NumPy vectors, and it is at these parameters also
    # after they move (the monitor projects the update theta_{t+1} - theta_t at theta_t; float64
    # parameters would otherwise be held by reference); the set's index plans with them, on the host
    # (a set moved to a GPU with its model: CG gathered host tensors with device indices)
    params = {name: p.detach().to("cpu", torch.float64, copy=True) for name, p in params.items()}
    if symmetries.device.type != "cpu":
        symmetries = symmetries.to("cpu")
    names = list(params)
    sizes = [params[name].numel() for name in names]
    operator = OrbitOperator(symmetries, params)
    count = sum(operator.sizes)
    if count == 0:
        return HorizontalProjector(lambda vector: vector, None, 0)
    if count * count > max_dense_entries:
        solve = _horizontal_solver(operator, symmetries, params, Metric.EUCLIDEAN, rtol, max_iterations)

        def by_cg(vector: np.ndarray) -> np.ndarray:
            pieces = torch.from_numpy(np.ascontiguousarray(vector, dtype=np.float64)).split(sizes)
            unflat = {name: piece.reshape(params[name].shape) for name, piece in zip(names, pieces)}
            check_vectors(unflat, params)  # a non-finite vector: ValueError, as horizontal_projection
            projected = solve(unflat)
            return torch.cat([projected[name].reshape(-1) for name in names]).numpy()

        def combination(coefficients: np.ndarray) -> np.ndarray:
            dense = operator.rmatvec(torch.from_numpy(coefficients))
            return torch.cat([dense[name].reshape(-1) if name in dense else torch.zeros(params[name].numel(),
                                                                                        dtype=torch.float64)
                              for name in names]).numpy()

        return HorizontalProjector(by_cg, combination, count)
    sparse = generator_matrix(symmetries, params)
    inverse = _gram_pseudo_inverse(sparse)
    # both products row-compressed: J^T u as a gather per parameter (CSR) took half the time of the
    # column-compressed scatter (0.12 against 0.22 ms on the 85k MLP)
    transposed, rows = sparse.T.tocsr(), sparse.tocsr()

    def by_generators(vector: np.ndarray) -> np.ndarray:
        out = rows @ (inverse @ (transposed @ vector))
        return np.subtract(vector, out, out=out)

    return HorizontalProjector(by_generators, lambda coefficients: rows @ coefficients, sparse.shape[1])


def _gram_pseudo_inverse(sparse: csc_matrix) -> csr_matrix:
    """G^+ for G = J J^T (``sparse`` = J^T, D x K) as a sparse K x K matrix. G is block-diagonal over
    the connected components of its sparsity graph (generators that share no parameter entry); each
    block is inverted by eigh, its eigenvalues at or below max(eig G) K eps dropped: the cut of one
    eigh of the whole G, whose largest eigenvalue is the largest of the blocks'."""
    gram = (sparse.T @ sparse).tocsr()
    count = gram.shape[0]
    components, labels = connected_components(gram, directed=False)
    order = np.argsort(labels, kind="stable")
    blocks = np.split(order, np.cumsum(np.bincount(labels, minlength=components))[:-1])
    lone = np.array([block[0] for block in blocks if len(block) == 1], dtype=np.int64)
    solved = [(block, *np.linalg.eigh(gram[block][:, block].toarray())) for block in blocks if len(block) > 1]
    diagonal = gram.diagonal()[lone]
    cut = max([float(values.max()) for _, values, _ in solved] + [float(diagonal.max(initial=0.0))])
    cut *= count * np.finfo(np.float64).eps
    kept = diagonal > cut
    rows, columns = [lone[kept]], [lone[kept]]
    entries = [1.0 / diagonal[kept]]
    for block, values, vectors in solved:
        keep = values > cut
        rows.append(np.repeat(block, len(block)))
        columns.append(np.tile(block, len(block)))
        entries.append(((vectors[:, keep] / values[keep]) @ vectors[:, keep].T).reshape(-1))
    return csr_matrix((np.concatenate(entries), (np.concatenate(rows), np.concatenate(columns))), shape=(count, count))


def generator_matrix(symmetries: SymmetrySet, params: Mapping[str, Tensor]) -> csc_matrix:
    """J^T: the sparse D x K matrix whose columns are the orbit generators xi_k(theta) (``generator``;
    GL: one per entry of each head's d x d), in ``OrbitOperator``'s row order, over the parameters in
    ``params``' order (flattened), float64. Built from the slots' entries alone (memory ~ the
    generators' nonzeros, not D x K): ``symmetry.generator_entries`` placed at their flat indices. The
    one-parameter and rotation columns' pattern (which entries, read from which entry of theta) is
    built once per set and shapes (``_one_parameter_pattern``) and each call gathers theta into it."""
    names = list(params)
    offsets = dict(zip(names, np.cumsum([0, *[params[n].numel() for n in names[:-1]]]).tolist()))
    pattern = _pattern_of(symmetries, tuple((name, tuple(params[name].shape)) for name in names))
    values = pattern.factor.copy()
    if len(pattern.read):
        theta = torch.cat([params[name].detach().reshape(-1).to(torch.float64) for name in names]).numpy()
        values[pattern.reads] *= theta[pattern.read]
    rows, columns, entries = [pattern.rows], [pattern.columns], [values]

    def add(column: int, index: np.ndarray, values: np.ndarray) -> None:
        rows.append(index)
        columns.append(np.full(len(index), column, dtype=np.int64))
        entries.append(values)

    column = pattern.count
    for sym in symmetries.of_kind(Kind.GL):  # one generator per (a, b) of each head's d x d
        for k in range(sym.unit_count ** 2):
            unit = torch.zeros(sym.unit_count ** 2, dtype=torch.float64)
            unit[k] = 1.0
            for name, dense in gl_generator_combination(sym, params, unit).items():
                flat = dense.reshape(-1).numpy()  # gl_generator_combination's tensors are float64
                nonzero = np.flatnonzero(flat)
                add(column, offsets[name] + nonzero, flat[nonzero])
            column += 1
    dimension = sum(params[n].numel() for n in names)
    return csc_matrix((np.concatenate(entries), (np.concatenate(rows), np.concatenate(columns))), shape=(dimension, column))


@dataclass(frozen=True)
class _Pattern:
    """The one-parameter and rotation columns of J^T without theta: entry i sits at (rows[i],
    columns[i]) and is factor[i], times theta[read] where ``reads`` marks it (scale, rescale,
    rotation: +-theta at some entry; a translation's 1 reads nothing)."""

    rows: np.ndarray
    columns: np.ndarray
    factor: np.ndarray
    reads: np.ndarray
    read: np.ndarray
    count: int


_PATTERNS: dict[tuple[int, tuple], tuple[SymmetrySet, _Pattern]] = {}  # (id(set), shapes) -> (set, pattern)


def _pattern_of(symmetries: SymmetrySet, shapes: tuple) -> _Pattern:
    """``_one_parameter_pattern`` of a set at these shapes, kept for the last four (set, shapes): keyed by
    the set's identity (the set is immutable, and held with its pattern so that its id is not reused),
    as hashing a tuple of 1642 symmetries costs 2.8 ms, a quotient sample's share of a VGG step."""
    key = (id(symmetries), shapes)
    found = _PATTERNS.get(key)
    if found is None or found[0] is not symmetries:
        if len(_PATTERNS) >= 4:
            _PATTERNS.pop(next(iter(_PATTERNS)))
        one_parameter = tuple(sym for kind in (*_KINDS, Kind.ROTATION) for sym in symmetries.of_kind(kind))
        found = _PATTERNS[key] = (symmetries, _one_parameter_pattern(one_parameter, shapes))
    return found[1]


def _one_parameter_pattern(symmetries: tuple, shapes: tuple) -> _Pattern:
    """``generator_entries`` evaluated once at theta = (flat index + 2): every such generator is a
    constant (translation: 1) or +-theta at an entry, so a value v with |v| >= 2 reads entry |v| - 2
    with sign v, and a value of magnitude below 2 is a constant (indices are exact in float64 to 2^53)."""
    index, offset = {}, 2
    for name, shape in shapes:
        size = math.prod(shape)
        index[name] = torch.arange(offset, offset + size, dtype=torch.float64).reshape(shape)
        offset += size
    rows, columns, values = [], [], []
    for column, sym in enumerate(symmetries):
        for slot, entries in generator_entries(sym, index):
            target = slot.view(index).reshape(-1).numpy()
            rows.append(target.astype(np.int64) - 2)
            columns.append(np.full(len(target), column, dtype=np.int64))
            values.append(entries.reshape(-1).numpy())
    empty = np.zeros(0)
    values = np.concatenate(values or [empty])
    reads = np.abs(values) >= 2
    factor = np.where(reads, np.sign(values), values)
    return _Pattern(np.concatenate(rows or [empty]).astype(np.int64), np.concatenate(columns or [empty]).astype(np.int64),
                    factor, np.flatnonzero(reads), (np.abs(values[reads]) - 2).astype(np.int64), len(symmetries))
