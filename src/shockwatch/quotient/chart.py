r"""The canonical representative of a parameter's orbit (a section of the quotient) and its differential.

Phi(theta) is the point of theta's orbit where

    rescale charges vanish   |theta_A1|^2 = |theta_A2|^2    (the balanced gauge, Miyagawa 2026 §3.1),
    translation charges vanish  <theta_A, 1> = 0             (centred columns and biases),
    scale groups have unit norm  |theta_A| = 1                (directions w/|w|),

and the units of every permutation symmetry are sorted by decreasing norm. Phi is constant on
orbits and leaves the realised function unchanged. These conditions are <theta, xi_k> = 0 (or
|theta_A| = 1), whose tangent space is exactly the horizontal space {v: <xi_k, v> = 0}: so at a
canonical point D Phi = P_H, and elsewhere D Phi(theta) v = P_H(Phi theta)[g_* v], with g the group
element that carried theta there (entrywise scalings, GL matrices on heads and permutations, each
linear, so g_* is g itself: ``Canonical.carry``).

Rotations of rotary frequency pairs (x, y) -> R(a)(x, y) keep every norm the other conditions
read; each is fixed once at the end by turning (x, y) onto their principal axes (<x, y> = 0,
|x| >= |y|, the largest entry of x positive); like the GL form, that section is not orthogonal.

GL(d) groups of attention heads (A_in, A_out) -> (M A_in, M^-T A_out) are fixed by the balanced
SVD form: with the invariant A_in^T A_out = U S V^T (thin, rank d), A_in = S^{1/2} U^T and
A_out = S^{1/2} V^T, each singular pair's sign fixed by its largest entry; then heads are sorted
too. That section is not Euclidean-orthogonal to the GL orbits, so for models with GL groups
``push_forward`` returns the horizontal lift at Phi(theta) of the quotient tangent vector (the
same quotient vector, represented horizontally), not the derivative of this particular Phi.

For a unit of a one-hidden-layer ReLU net the balanced gauge gives the paper's coordinates
gamma_j = a_j |u_j| and s_j = u_j / |u_j| (``relu_unit_coordinates``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import Tensor

from ..symmetry import Kind, Symmetry, SymmetrySet, act_gl, act_rotation, permute, unit_matrix
from .projection import check_vectors, horizontal_projection

__all__ = ["Canonical", "canonical", "gl_invariant", "push_forward", "relu_unit_coordinates"]


@dataclass(frozen=True)
class Canonical:
    params: dict[str, Tensor]  # Phi(theta), float64
    steps: tuple[tuple, ...]  # g, in order: ("factors", {name: a}) entrywise, ("gl", sym, M), ("rotation", sym, a)
    orders: tuple[tuple[Symmetry, Tensor], ...]  # the permutations applied last, in order
    sweeps: int
    imbalance: float  # max over the conditions of their relative violation at the end

    def carry(self, vectors: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """g_* v: the differential of the group element that carried theta to Phi(theta), applied to
        tangent vectors (a dict over every parameter; float64). Each step is linear in theta (an
        entrywise scaling, a GL matrix on a head, a permutation), so its differential is itself;
        translations shift theta by a constant and have the identity as differential."""
        moved = {name: v.detach().to(torch.float64) for name, v in vectors.items()}
        for step in self.steps:
            if step[0] == "factors":
                moved = {name: v * step[1][name] for name, v in moved.items()}
            elif step[0] == "rotation":
                moved = act_rotation(step[1], moved, step[2])
            else:
                moved = act_gl(step[1], moved, step[2])
        for sym, order in self.orders:
            moved = permute(sym, moved, order)
        return moved


def canonical(symmetries: SymmetrySet, params: Mapping[str, Tensor], *, tol: float = 1e-13,
              max_sweeps: int = 10_000) -> Canonical:
    r"""Phi(theta): alternate the conditions (each the exact minimiser or normaliser of its own
    group) until every one holds to ``tol`` relative; then sort permutable units.

    Scheme: one sweep = normalise every scale group, centre every translation group, balance
    every rescale unit (a = (|out|/|in|)^{1/2}), then put every GL group in its balanced SVD form
    (A_in A_in^T = A_out A_out^T), in model order. Each step solves its own condition exactly;
    sweeps are needed only where groups share parameters: the last hidden layer's rescale and the
    logits' translations on the classifier's columns, a norm's affine rescales against the
    columns of q, k and v whose rows a head's GL moves, the residual stream's scale on o's rows
    whose columns the value/output GL moves. Rescale, translation and GL steps each lower
    |theta|^2 within their own orbit, so with overlaps the sweeps descend to the joint balanced
    point (the zero of the joint moment map), where every condition holds at once.
    A rescale unit with no incoming or no outgoing weight (a zero-initialised head or LoRA B) and a
    head whose A_in^T A_out is rank-deficient (a zero-initialised output projection) have no balanced
    point (the group moves them towards it without reaching it, and keeps the degeneracy): they are
    left as they are, and not counted in the violation.
    Raises: RuntimeError if the conditions do not converge within ``max_sweeps``; ValueError /
    TypeError (``SymmetrySet.check_params``) for parameters the set cannot act on (missing, of
    another model's shapes, not real floating point, not finite).
    """
    symmetries.check_params(params)
    theta = {name: p.detach().to(torch.float64).clone() for name, p in params.items()}
    factors = {name: torch.ones_like(p) for name, p in theta.items()}
    steps: list[tuple] = []
    scale_groups = symmetries.of_kind(Kind.SCALE)
    translations = symmetries.of_kind(Kind.TRANSLATION)
    rescales = symmetries.of_kind(Kind.RESCALE)
    gl_groups = symmetries.of_kind(Kind.GL)
    imbalance, sweeps = float("inf"), 0
    while sweeps < max_sweeps:
        sweeps += 1
        for sym in scale_groups:
            norm = sum(float(s.view(theta).square().sum()) for s in sym.incoming) ** 0.5
            if norm > 0:
                for slot in sym.incoming:
                    slot.view(theta).div_(norm)
                    slot.view(factors).div_(norm)
        for sym in translations:
            size = sum(s.view(theta).numel() for s in sym.incoming)
            mean = sum(float(s.view(theta).sum()) for s in sym.incoming) / size
            for slot in sym.incoming:
                slot.view(theta).sub_(mean)
        for sym in rescales:
            inner = sum(float(s.view(theta).square().sum()) for s in sym.incoming)
            outer = sum(float(s.view(theta).square().sum()) for s in sym.outgoing)
            if inner > 0 and outer > 0:
                a = (outer / inner) ** 0.25
                for slot in sym.incoming:
                    slot.view(theta).mul_(a)
                    slot.view(factors).mul_(a)
                for slot in sym.outgoing:
                    slot.view(theta).div_(a)
                    slot.view(factors).div_(a)
        for sym in gl_groups:  # every sweep: balanced is an O(d) orbit, the SVD form fixes a point of it
            if _gl_degenerate(sym, theta):
                continue
            matrix = _gl_balancing(sym, theta)
            if float((matrix - torch.eye(len(matrix), dtype=matrix.dtype)).abs().max()) <= 1e-15:
                continue  # already in the SVD form: g_* needs no step
            if any(bool((f != 1).any()) for f in factors.values()):
                steps.append(("factors", factors))
                factors = {name: torch.ones_like(p) for name, p in theta.items()}
            steps.append(("gl", sym, matrix))
        imbalance = max([_violation(symmetries, theta)] + [_gl_imbalance(sym, theta) for sym in gl_groups])
        if imbalance <= tol:
            break
    else:
        raise RuntimeError(f"canonical: the gauge conditions did not converge in {max_sweeps} sweeps "
                           f"(violation {imbalance:.2e} > tol {tol:.0e})")
    steps.append(("factors", factors))
    for sym in symmetries.of_kind(Kind.ROTATION):  # norms are unchanged by it: no sweep needs it again
        angle = _principal_angle(sym, theta)
        act_rotation(sym, theta, angle, copy=False)
        steps.append(("rotation", sym, angle))
    orders = []
    for sym in symmetries.of_kind(Kind.PERMUTATION):
        key = sum(unit_matrix(sym, (slot,), theta).square().sum(1) for slot in sym.slots)
        order = torch.argsort(key, descending=True, stable=True)
        theta = permute(sym, theta, order)
        orders.append((sym, order))
    return Canonical(theta, tuple(steps), tuple(orders), sweeps, imbalance)


def _gl_balancing(sym: Symmetry, theta: dict[str, Tensor]) -> Tensor:
    """Put ``sym``'s heads in their balanced form in ``theta``; the M with (A_in, A_out) -> (M A_in,
    M^-T A_out) that did it (least squares, exact where the head has full rank).
    Raises: RuntimeError where the balancing is no group element (a rank-deficient head)."""
    a_in, a_out = unit_matrix(sym, sym.incoming, theta), unit_matrix(sym, sym.outgoing, theta)
    theta = _gl_balanced(sym, theta)
    b_in, b_out = unit_matrix(sym, sym.incoming, theta), unit_matrix(sym, sym.outgoing, theta)
    matrix = torch.linalg.lstsq(a_in.T, b_in.T).solution.T
    error = max(float((matrix @ a_in - b_in).abs().max()) / float(b_in.abs().max()),
                float((torch.linalg.inv(matrix).T @ a_out - b_out).abs().max()) / float(b_out.abs().max()))
    if error > 1e-6:
        raise RuntimeError(f"{sym.label}: the GL balancing is not a group element here "
                           f"(relative residual {error:.1e}; rank-deficient head?)")
    return matrix


def _principal_angle(sym: Symmetry, theta: Mapping[str, Tensor]) -> float:
    """The rotation angle a that puts a rotation's (x, y) on their principal axes: <x', y'> = 0 with
    |x'| >= |y'| (a = atan2(-2<x,y>, |x|^2 - |y|^2) / 2), and the largest entry of x' positive
    (a + pi otherwise): one point of each orbit, as the SVD form is for GL."""
    x = torch.cat([slot.view(theta).reshape(-1) for slot in sym.incoming])
    y = torch.cat([slot.view(theta).reshape(-1) for slot in sym.outgoing])
    angle = 0.5 * math.atan2(-2.0 * float(x @ y), float(x @ x - y @ y))
    turned = math.cos(angle) * x - math.sin(angle) * y
    return angle + math.pi if float(turned[turned.abs().argmax()]) < 0 else angle


def _gl_degenerate(sym: Symmetry, theta: Mapping[str, Tensor]) -> bool:
    """Whether A_in^T A_out (invariant under the group: (M A_in)^T M^-T A_out) has rank below the
    head's dimension: no balanced form is a group element there (a zero output projection)."""
    a_in, a_out = unit_matrix(sym, sym.incoming, theta), unit_matrix(sym, sym.outgoing, theta)
    singular = torch.linalg.svdvals(a_in.T @ a_out)[:sym.unit_count]
    scale = float(a_in.norm() * a_out.norm())
    return len(singular) < sym.unit_count or scale == 0.0 or float(singular.min()) <= 1e-12 * scale


def _gl_imbalance(sym: Symmetry, theta: Mapping[str, Tensor]) -> float:
    """|A_in A_in^T - A_out A_out^T|_F / (|A_in|^2 + |A_out|^2): zero exactly at the balanced form
    (0 for a degenerate head, which has none)."""
    if _gl_degenerate(sym, theta):
        return 0.0
    a_in, a_out = unit_matrix(sym, sym.incoming, theta), unit_matrix(sym, sym.outgoing, theta)
    size = float(a_in.square().sum() + a_out.square().sum())
    return float((a_in @ a_in.T - a_out @ a_out.T).norm()) / size if size > 0 else 0.0


def _gl_balanced(sym: Symmetry, theta: dict[str, Tensor]) -> dict[str, Tensor]:
    """The balanced SVD representative of a GL orbit (module docstring), written into ``theta``."""
    count = sym.unit_count
    a_in, a_out = unit_matrix(sym, sym.incoming, theta), unit_matrix(sym, sym.outgoing, theta)
    u, singular, vh = torch.linalg.svd(a_in.T @ a_out, full_matrices=False)
    u, singular, vh = u[:, :count], singular[:count], vh[:count]
    flip = torch.sign(u.gather(0, u.abs().argmax(0, keepdim=True)).squeeze(0))
    flip[flip == 0] = 1.0
    root = (singular.sqrt() * flip).unsqueeze(1)  # flipping u_i and v_i together keeps U S V^T
    new_in, new_out = root * u.T, root * vh
    for slots, matrix in ((sym.incoming, new_in), (sym.outgoing, new_out)):
        column = 0
        for slot in slots:
            target = slot.view(theta).movedim(slot.dim, 0)
            width = target[0].numel()
            target.copy_(matrix[:, column:column + width].reshape(target.shape))
            column += width
    return theta


def _violation(symmetries: SymmetrySet, theta: Mapping[str, Tensor]) -> float:
    worst = 0.0
    for sym in symmetries.of_kind(Kind.RESCALE):
        inner = sum(float(s.view(theta).square().sum()) for s in sym.incoming)
        outer = sum(float(s.view(theta).square().sum()) for s in sym.outgoing)
        if inner > 0 and outer > 0:  # one side zero: no balanced point (``canonical``), not counted
            worst = max(worst, abs(inner - outer) / (inner + outer))
    for sym in symmetries.of_kind(Kind.TRANSLATION):
        total = sum(float(s.view(theta).sum()) for s in sym.incoming)
        size = sum(float(s.view(theta).abs().sum()) for s in sym.incoming)
        if size > 0:
            worst = max(worst, abs(total) / size)
    for sym in symmetries.of_kind(Kind.SCALE):
        norm = sum(float(s.view(theta).square().sum()) for s in sym.incoming) ** 0.5
        if norm > 0:
            worst = max(worst, abs(norm - 1.0))
    return worst


def push_forward(symmetries: SymmetrySet, params: Mapping[str, Tensor], vectors: Mapping[str, Tensor],
                 *, point: Canonical | None = None) -> dict[str, Tensor]:
    r"""D Phi(theta) v = P_H(Phi theta)[g_* v]: a tangent vector carried to the quotient chart (g the
    group element that carried theta to Phi(theta), ``Canonical.carry``; for models with GL groups
    the result is the horizontal lift at Phi(theta), see the module docstring).

    The drift of Thm 2.2 is b = D Phi grad L. ``point``: a ``canonical(...)`` result for ``params``
    to reuse. Returns float64 tensors for every key of ``vectors``.
    """
    check_vectors(vectors, params)
    point = point or canonical(symmetries, params)
    moved = point.carry({name: vectors[name] if name in vectors else torch.zeros_like(value)
                         for name, value in point.params.items()})
    projected = horizontal_projection(symmetries, point.params, moved)
    return {name: projected[name] for name in vectors}


def relu_unit_coordinates(sym: Symmetry, params: Mapping[str, Tensor]) -> tuple[Tensor, Tensor]:
    r"""(gamma, s) of a rescale unit with one outgoing weight: gamma = a |u|, s = u / |u| (§3.1).

    u is the unit's incoming vector (weights and bias), a its outgoing weight; both are invariant
    under the unit's rescaling, so they are coordinates on its quotient (gamma in R, s on a sphere).
    """
    if sym.kind is not Kind.RESCALE:
        raise ValueError(f"{sym.label}: relu_unit_coordinates needs a RESCALE symmetry, got {sym.kind}")
    u = torch.cat([s.view(params).detach().reshape(-1).double() for s in sym.incoming])
    a = torch.cat([s.view(params).detach().reshape(-1).double() for s in sym.outgoing])
    if a.numel() != 1:
        raise ValueError(f"{sym.label}: gamma = a |u| needs a single outgoing weight, got {a.numel()}")
    norm = u.norm()
    return a[0] * norm, u / norm


def gl_invariant(sym: Symmetry, params: Mapping[str, Tensor]) -> Tensor:
    """A_in^T A_out: unchanged by (A_in, A_out) -> (M A_in, M^-T A_out) (e.g. W_Q^T W_K of a head)."""
    if sym.kind is not Kind.GL:
        raise ValueError(f"{sym.label}: gl_invariant needs a GL symmetry, got {sym.kind}")
    a_in = unit_matrix(sym, sym.incoming, params).detach().double()
    a_out = unit_matrix(sym, sym.outgoing, params).detach().double()
    return a_in.T @ a_out
