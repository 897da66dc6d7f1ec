r"""Check every reported symmetry numerically on a model and a batch (Kunin et al. 2021, §3).

For each symmetry: the relative change of the loss under finite group elements (scale and
rescale factors e^{+-4.6} = 1e2..1e-2 and e^{+-1}; translations c = +-0.5, +-3; three random
orders for a permutation, which has no generator and no charge), and the
infinitesimal statement |<grad L, xi>| / (|grad L| |xi|) with xi the generator at theta, and its
derivative, the Hessian identity of Kunin et al.'s Tables 2-3: differentiating <grad L, xi(theta)> = 0

    H xi + (D xi)^T grad L = 0:   H 1_A = 0 (translation),  H theta_A = -grad_A L (scale),
                                  H (theta_A1 - theta_A2) = -(grad_A1 L - grad_A2 L) (rescale),

through Hessian-vector products (double backward, float64 where the model is). Exact
symmetries give round-off (1e-15 in float64); an architecture that breaks one slightly (BatchNorm's
eps, weight decay inside the loss, a norm in eval mode) gives the size of the breaking instead.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn
from torch.func import functional_call
from torch.nn.attention import SDPBackend, sdpa_kernel

from .detect import ExampleInputError, check_input, class_axis, exact_check
from .group import (Kind, Symmetry, SymmetrySet, act, act_gl, act_rotation, generator, permutation_generators, permute,
                    random_gl_element, unit_matrix)
from .trace import EXACT_TOLERANCE, TraceError, call_arguments, model_output, unwrapped_model

__all__ = ["Verification", "VerificationRow", "verify_symmetries"]

_AMOUNTS = {Kind.SCALE: (-4.6, -1.0, 1.0, 4.6), Kind.RESCALE: (-4.6, -1.0, 1.0, 4.6),
            Kind.TRANSLATION: (-3.0, -0.5, 0.5, 3.0)}


@dataclass(frozen=True)
class VerificationRow:
    label: str
    kind: Kind
    loss_change: float | None  # max over the group elements of |L(g theta) - L(theta)| / max(|L|, tiny)
    gradient_alignment: float | None  # |<grad L, xi>| / (|grad L| |xi|); None for a permutation
    hessian_residual: float | None = None  # |H xi + (D xi)^T g| / (|H xi| + |(D xi)^T g| + |H|~ |xi|)


@dataclass(frozen=True)
class Verification:
    rows: tuple[VerificationRow, ...]
    loss: float
    joint_loss_change: dict[str, float]  # kind -> relative loss change when every symmetry of the
    # kind acts at once, each with its own random element (one evaluation per kind and size)
    exact: dict[str, float] = field(default_factory=dict)  # label -> relative output change in float64
    # with every norm epsilon at 0 and dropout off (``exact_defects``): round-off for a true symmetry
    breakers: dict[str, float] = field(default_factory=dict)  # known breakers and their size:
    # "eps:<op>" -> the epsilon the model uses there, "weight_decay" -> lambda
    exact_error: str = ""  # why the exact measurement could not run (a model torch.export cannot trace)
    hessian_error: str = ""  # why the Hessian checks could not run (no double backward through an op)

    def accepted(self, label: str) -> bool:
        """True where the exact float64 change is round-off (< EXACT_TOLERANCE): any change the
        float32 checks show is then explained by the listed breakers. A symmetry not measured alone
        (``exact_samples``) is accepted by its kind's joint measurement."""
        value = self.exact.get(label)
        if value is None:
            kind = next((row.kind for row in self.rows if row.label == label), None)
            value = self.exact.get(f"joint/{kind.value}", float("inf")) if kind is not None else float("inf")
        return value < EXACT_TOLERANCE

    def refuted(self) -> list[str]:
        """Labels (and "joint/<kind>" entries) whose exact float64 change exceeds round-off."""
        return [label for label, value in self.exact.items() if not value < EXACT_TOLERANCE]

    def max_loss_change(self, kind: Kind | str | None = None) -> float:
        values = [r.loss_change for r in self.rows
                  if r.loss_change is not None and (kind is None or r.kind == kind)]
        values += [v for k, v in self.joint_loss_change.items() if kind is None or k == kind]
        return max(values, default=0.0)

    def max_gradient_alignment(self, kind: Kind | str | None = None) -> float:
        values = [r.gradient_alignment for r in self.rows
                  if r.gradient_alignment is not None and (kind is None or r.kind == kind)]
        return max(values, default=0.0)

    def max_hessian_residual(self, kind: Kind | str | None = None) -> float:
        """The largest Hessian residual among the checked rows (of ``kind``); NaN where the Hessian
        checks could not run (``hessian_error`` says why), so that a skipped check never reads as a pass."""
        if self.hessian_error:
            return math.nan
        values = [r.hessian_residual for r in self.rows
                  if r.hessian_residual is not None and (kind is None or r.kind == kind)]
        return max(values, default=0.0)

    def worst(self, count: int = 5) -> list[VerificationRow]:
        return sorted(self.rows, key=lambda r: -max(r.loss_change or 0.0, r.gradient_alignment or 0.0,
                                                    r.hessian_residual or 0.0))[:count]


def verify_symmetries(model: nn.Module, loss_fn: Callable[[Tensor, Tensor], Tensor], batch: Sequence[Tensor],
                      symmetries: SymmetrySet | Sequence[Symmetry], *, train_mode: bool = True,
                      seed: int = 0, hessian_samples: int = 16, element_samples: int | None = 256,
                      weight_decay: float = 0.0, exact: bool = True, logits: bool | None = None,
                      class_dim: int | None = None, exact_samples: int | None = 256) -> Verification:
    """Loss invariance and gradient orthogonality of each symmetry, measured on ``batch``.

    ``batch`` = (inputs, targets); ``loss_fn(model(inputs), targets)`` is the loss; inputs may be a
    tensor, a tuple of positional inputs or a dict of keyword inputs (Hugging Face models). The model runs
    in training mode by default (BatchNorm's scale symmetry holds for batch statistics only) and
    with the same random seed for every evaluation (dropout masks then agree); its parameters and
    buffers are left as they were. ``weight_decay`` adds (lambda/2)|theta|^2 to the loss (the
    functional parameters are used, so the breaking it causes is measured, not hidden). The
    Hessian identity costs one Hessian-vector product per
    symmetry, so it is checked on ``hessian_samples`` symmetries per kind, spread evenly over the
    model (all of them if there are fewer; 0 skips it). Finite group elements cost 4 loss
    evaluations per symmetry, so they run on ``element_samples`` symmetries per kind (None: all);
    on top, every symmetry of a kind acts at once with independent random elements (log-factors
    uniform in [-4.6, 4.6], shifts in [-3, 3]) in one evaluation per kind: ``joint_loss_change``.
    The gradient identity is checked for every symmetry (one gradient serves all).
    With ``exact`` (default), each symmetry is also measured where nothing but round-off can move the
    output (``exact_defects``: the traced model in float64, norm epsilons at 0, dropout off), and the
    known breakers are listed with their size (``breakers``): a symmetry is ``accepted`` only if that
    exact change is round-off, so a false candidate cannot pass behind an eps-sized breaking of a true
    one. The exact change is the larger of the one at the model's parameters and the one at a random
    point near them, so an action that forgets a tensor whose values hide it here (a norm's gains,
    all 1 at initialisation) is not accepted. ``logits``: compare log-probabilities (default: where
    the set has translations) over the output's ``class_dim`` axis (default: the axis the set was
    found with, ``SymmetrySet.class_dim``, else -1).
    ``exact_samples``: symmetries per kind measured exactly one by one, beside one joint measurement
    per kind (all of them where the joint one is not round-off; None: every symmetry alone).
    The global RNG, the model's mode, parameters and buffers are left as they were.
    """
    model = unwrapped_model(model)  # symmetries are named on the model a torch.compile or DDP wrapper holds
    try:
        returned = check_input(model, batch[0])
    except ExampleInputError as error:
        double = any(p.dtype == torch.float64 for p in model.parameters())
        hint = (" (some kernels take no float64, e.g. torch's grouped product behind Hugging Face's mixtures of "
                "experts: verify in float32; the exact check runs in float64 on its own trace)") if double else ""
        raise ExampleInputError(f"{error}{hint}") from None
    rng = torch.get_rng_state()
    try:
        # the Hessian checks differentiate twice: PyTorch's fused attention kernels (flash, memory-efficient,
        # the CPU's flash) have no double backward, its math one has, so attention runs on it here
        with sdpa_kernel([SDPBackend.MATH]):
            result = _verify(model, loss_fn, batch, symmetries, train_mode, seed, hessian_samples, element_samples,
                             weight_decay)
    finally:
        torch.set_rng_state(rng)
    if not exact:
        return result
    inputs = batch[0]
    breakers = {"weight_decay": weight_decay} if weight_decay else {}
    if logits is None:
        logits = any(sym.kind is Kind.TRANSLATION for sym in symmetries)
    if class_dim is None:
        found_with = symmetries.class_dim if isinstance(symmetries, SymmetrySet) else None
        class_dim = -1 if found_with is None else found_with
    class_axis(logits, class_dim, model_output(returned) if logits else None)
    try:
        exact_values, epsilons = exact_check(model, inputs, list(symmetries), logits=logits, class_dim=class_dim, seed=seed,
                                             samples=exact_samples, anywhere=True)
        breakers.update({f"eps:{name}": value for name, value in epsilons.items()})
        error = ""
    except (TraceError, ValueError) as failure:
        exact_values, error = {}, str(failure)
    return Verification(result.rows, result.loss, result.joint_loss_change, exact_values, breakers, error,
                        result.hessian_error)


def _verify(model, loss_fn, batch, symmetries, train_mode, seed, hessian_samples, element_samples,
            weight_decay) -> Verification:
    inputs, targets = batch
    args, kwargs = call_arguments(model, inputs)
    params = {name: p.detach() for name, p in model.named_parameters()}
    buffers = {name: b.detach().clone() for name, b in model.named_buffers()}
    was_training = model.training
    model.train(train_mode)

    def loss_at(values: Mapping[str, Tensor]) -> Tensor:
        torch.manual_seed(seed)
        # a fresh copy of the buffers each time: BatchNorm's running statistics must not drift
        state = {**values, **{name: b.clone() for name, b in buffers.items()}}
        loss = loss_fn(functional_call(model, state, args, kwargs), targets)
        if weight_decay:
            loss = loss + 0.5 * weight_decay * sum(p.square().sum() for p in values.values())
        return loss

    try:
        leaves = {name: p.clone().requires_grad_(True) for name, p in params.items()}
        base = loss_at(leaves)
        names = list(leaves)
        grad_list = torch.autograd.grad(base, list(leaves.values()), create_graph=hessian_samples > 0,
                                        allow_unused=True)
        grads = {name: (g if g is not None else torch.zeros_like(leaves[name])) for name, g in zip(names, grad_list)}
        differentiable = [name for name, g in zip(names, grad_list) if g is not None and g.requires_grad]
        base_value = float(base.detach())
        scale = max(abs(base_value), torch.finfo(base.dtype).tiny)
        grad_norm = sum(float(g.detach().square().sum()) for g in grads.values()) ** 0.5
        checked = _spread(symmetries, hessian_samples)
        hessian_error = ""
        sampled = _spread(symmetries, element_samples) if element_samples is not None else None
        try:
            curvature = _curvature_scale(grads, leaves, differentiable, seed) if checked and differentiable else 0.0
        except RuntimeError as failure:  # an op with no double backward: the Hessian checks cannot run, and say so
            checked, curvature = set(), 0.0
            hessian_error = f"no second derivative of the loss: {failure}".splitlines()[0][:300]
        rows = []
        random = torch.Generator().manual_seed(seed)
        for sym in symmetries:
            if sym.kind is Kind.GL:
                rows.append(_verify_gl(sym, params, grads, grad_norm, base_value, scale, loss_at, random))
                continue
            if sym.kind is Kind.ROTATION:  # the loss moved only for the sampled ones, as for one-parameter kinds
                rows.append(_verify_rotation(sym, params, grads, grad_norm, base_value, scale,
                                             loss_at if sampled is None or sym.label in sampled else None))
                continue
            if not sym.kind.one_parameter:
                # the two generators of S_n (invariance under both is invariance under every
                # permutation) and a random permutation
                orders = [*permutation_generators(sym.unit_count), torch.randperm(sym.unit_count, generator=random)]
                with torch.no_grad():
                    change = max(abs(float(loss_at(permute(sym, params, order))) - base_value) / scale for order in orders)
                rows.append(VerificationRow(sym.label, sym.kind, change, None, None))
                continue
            change = None
            if sampled is None or sym.label in sampled:
                with torch.no_grad():
                    change = max(abs(float(loss_at(act(sym, params, amount))) - base_value) / scale
                                 for amount in _AMOUNTS[sym.kind])
            inner, xi_norm = _inner_with_generator(sym, params, grads)
            alignment = abs(inner) / (grad_norm * xi_norm) if grad_norm > 0 and xi_norm > 0 else 0.0
            residual = None
            if sym.label in checked and differentiable:
                xi = generator(sym, params)  # dense: only for the sampled Hessian checks
                residual = _hessian_residual(sym, xi, grads, leaves, differentiable, curvature)
            rows.append(VerificationRow(sym.label, sym.kind, change, alignment, residual))
        joint = {}
        with torch.no_grad():
            for kind in (k for k in Kind if k.one_parameter):
                members = [sym for sym in symmetries if sym.kind is kind]
                if not members:
                    continue
                bound = _AMOUNTS[kind][-1]
                moved = {name: p.clone() for name, p in params.items()}
                for sym, u in zip(members, torch.rand(len(members), generator=random, dtype=torch.float64)):
                    act(sym, moved, float((2 * u - 1) * bound), copy=False)
                joint[kind.value] = abs(float(loss_at(moved)) - base_value) / scale
    finally:
        model.train(was_training)
    return Verification(tuple(rows), base_value, joint, hessian_error=hessian_error)


def _verify_gl(sym: Symmetry, params, grads, grad_norm: float, base_value: float, scale: float, loss_at,
               random: torch.Generator) -> VerificationRow:
    """GL(d): the loss under three random M = expm(s R) (R Gaussian / sqrt(d), s = 0.3, 1, 1) and the
    identity G = grad_in A_in^T - A_out grad_out^T = 0, i.e. <grad L, xi_E> = 0 for every E in gl(d);
    reported as |G|_F / (|grad L| |A|)."""
    count = sym.unit_count
    dtype = next(iter(params.values())).dtype
    change = 0.0
    with torch.no_grad():
        for strength in (0.3, 1.0, 1.0):
            matrix = random_gl_element(count, strength, random).to(dtype)
            change = max(change, abs(float(loss_at(act_gl(sym, params, matrix))) - base_value) / scale)
    a_in = unit_matrix(sym, sym.incoming, params).double()
    a_out = unit_matrix(sym, sym.outgoing, params).double()
    g_in = unit_matrix(sym, sym.incoming, {k: v.detach() for k, v in grads.items()}).double()
    g_out = unit_matrix(sym, sym.outgoing, {k: v.detach() for k, v in grads.items()}).double()
    identity = g_in @ a_in.T - a_out @ g_out.T
    size = grad_norm * float((a_in.square().sum() + a_out.square().sum()).sqrt())
    alignment = float(identity.norm()) / size if size > 0 else 0.0
    return VerificationRow(sym.label, sym.kind, change, alignment, None)


def _verify_rotation(sym: Symmetry, params, grads, grad_norm: float, base_value: float, scale: float,
                     loss_at) -> VerificationRow:
    """A rotation: the loss at angles 0.3, 1 and 2.5 (where ``loss_at`` is given: a sampled one), and
    |<grad L, xi>| / (|grad L| |xi|) with xi = (-y, x) on the paired slots."""
    change = None
    if loss_at is not None:
        with torch.no_grad():
            change = max(abs(float(loss_at(act_rotation(sym, params, angle))) - base_value) / scale
                         for angle in (0.3, 1.0, 2.5))
    xi = generator(sym, params)
    inner = sum(float((xi[name] * grads[name].detach()).sum()) for name in xi)
    xi_norm = sum(float(v.square().sum()) for v in xi.values()) ** 0.5
    alignment = abs(inner) / (grad_norm * xi_norm) if grad_norm > 0 and xi_norm > 0 else 0.0
    return VerificationRow(sym.label, sym.kind, change, alignment, None)


def _inner_with_generator(sym: Symmetry, params: Mapping[str, Tensor], grads: Mapping[str, Tensor]) -> tuple[float, float]:
    """(<grad L, xi>, |xi|) slot by slot, without forming xi densely."""
    inner, norm_sq = 0.0, 0.0
    for sign, slots in ((1.0, sym.incoming), (-1.0, sym.outgoing)):
        for slot in slots:
            g = slot.view(grads).detach()
            if sym.kind is Kind.TRANSLATION:
                inner += float(g.sum())
                norm_sq += g.numel()
            else:
                theta = slot.view(params)
                inner += sign * float((g * theta).sum())
                norm_sq += float(theta.square().sum())
    return inner, norm_sq**0.5


def _spread(symmetries, per_kind: int) -> set[str]:
    """Labels of up to ``per_kind`` symmetries of each kind, evenly spaced in model order."""
    chosen: set[str] = set()
    for kind in Kind:
        members = [s for s in symmetries if s.kind is kind]
        if per_kind <= 0 or not members:
            continue
        step = max(1, len(members) // per_kind)
        chosen.update(s.label for s in members[::step][:per_kind])
    return chosen


def _hvp(grads: dict[str, Tensor], leaves: dict[str, Tensor], differentiable: list[str],
         direction: dict[str, Tensor]) -> dict[str, Tensor]:
    """H v by double backward (works through BatchNorm's batch statistics)."""
    vectors = [direction.get(name, torch.zeros_like(leaves[name])) for name in differentiable]
    hvp = torch.autograd.grad([grads[name] for name in differentiable], [leaves[name] for name in differentiable],
                              grad_outputs=vectors, retain_graph=True, allow_unused=True)
    return {name: (h if h is not None else torch.zeros_like(leaves[name])).detach()
            for name, h in zip(differentiable, hvp)}


def _curvature_scale(grads, leaves, differentiable, seed: int) -> float:
    """|H u| / |u| for one seeded Gaussian u: the Hessian's size, against which H xi ~ 0 is judged
    (a translation's identity H 1_A = 0 has no other term to compare with)."""
    generator_ = torch.Generator(device=leaves[differentiable[0]].device).manual_seed(seed)
    u = {name: torch.randn(leaves[name].shape, generator=generator_, dtype=leaves[name].dtype,
                           device=leaves[name].device) for name in differentiable}
    hu = _hvp(grads, leaves, differentiable, u)
    norm_u = sum(float(v.square().sum()) for v in u.values()) ** 0.5
    return sum(float(v.square().sum()) for v in hu.values()) ** 0.5 / norm_u


def _hessian_residual(sym: Symmetry, xi: dict[str, Tensor], grads: dict[str, Tensor], leaves: dict[str, Tensor],
                      differentiable: list[str], curvature: float) -> float:
    """|H xi + (D xi)^T g| / (|H xi| + |(D xi)^T g| + curvature |xi|): D xi is 0 (translation),
    the slot mask (scale), +mask on incoming and -mask on outgoing (rescale)."""
    hessian_xi = _hvp(grads, leaves, differentiable, xi)
    correction = {name: torch.zeros_like(h) for name, h in hessian_xi.items()}
    if sym.kind is not Kind.TRANSLATION:
        for sign, slots in ((1.0, sym.incoming), (-1.0, sym.outgoing)):
            for slot in slots:
                if slot.param in correction:
                    target = correction[slot.param].narrow(slot.dim, slot.start, slot.stop - slot.start)
                    target.add_(sign * slot.view(grads).detach())
    total = sum(float((hessian_xi[n] + correction[n]).square().sum()) for n in hessian_xi) ** 0.5
    size = (sum(float(h.square().sum()) for h in hessian_xi.values()) ** 0.5
            + sum(float(c.square().sum()) for c in correction.values()) ** 0.5
            + curvature * sum(float(d.square().sum()) for d in xi.values()) ** 0.5)
    return total / size if size > 0 else 0.0
