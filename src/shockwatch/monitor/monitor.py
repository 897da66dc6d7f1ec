r"""The training-loop monitor: symmetry-aware observables beside their raw counterparts, per step.

Every step, from one pass over parameters and gradients in an optimizer pre-step hook (so the
gradient is paired with the parameters it was taken at) and one after the step:
    loss, grad_norm = |g_t|, param_norm = |theta_{t+1}| (after the step),
    update_norm = |theta_{t+1} - theta_t|, update_ratio = update_norm / param_norm,
    gradient_breaking/<kind> = max_k |<xi_k, g>| / (|xi_k| |g|) over scale/rescale groups: 0 for an
        exact symmetry (Kunin et al. 2021: <grad L, xi> = 0), so it measures how broken each kind is,
and, when the tracker records (``Schedule.charges``), from the conservation tracker:
    charge_drift/<kind> = max_k |Q_k(t) - Q_k(0)| / size_k(0),
    charge_law_error/<kind> = max_k |Q_k - Q_k^discrete| / size_k (the exact update-rule law).
Every ``Schedule.quotient`` steps, the quotient counterparts (P_H: the Euclidean projection
orthogonal to every orbit direction at theta_t, ``quotient.horizontal_projection``):
    grad_norm/quotient = |P_H g_t|, update_norm/quotient = |P_H (theta_{t+1} - theta_t)| (weight
    decay's radial shrink of scale-invariant groups is vertical and drops out),
    path_norm (ReLU networks: rescale-invariant; ``path_norm``) beside its raw counterpart param_norm.
    For an exact symmetry <xi_k, g> = 0, so |P_H g| = |g| identically: grad_norm/quotient departs from
    grad_norm only where a symmetry is broken (what gradient_breaking shows per group every step), while
    the update's vertical part (weight decay, momentum) shows in update_norm/quotient.
Every ``Schedule.curvature`` steps (with ``loss_fn`` and the step's batch): extreme raw and quotient
Hessian eigenvalues and the shock-step forecasts -1/(eta lambda_min) (``curvature``); under Adam or
AdamW also those of D^{1/2} H D^{1/2}, D = 1/(sqrt(v_hat) + eps) (``curvature/preconditioned_*``),
whose lambda_min the forecasts then use (the step is eta D g, not eta g). With ``curvature_warm=True`` each sample's Lanczos starts from the last
sample's eigenvectors (2.4x fewer products on an MLP, but a start near the old extreme can converge
to another eigenvalue: ``curvature``'s docstring). Every
``Schedule.update_curvature`` steps (with ``loss_fn`` and the batch): the curvature along the last
update, raw and horizontal, preconditioned under Adam (``curvature.update_curvature``: two
Hessian-vector products). Every
``Schedule.attention`` steps (attention models): GL-invariant attention observables
(``attention_observables``, with the step's batch) beside the raw |W_Q||W_K|, and for any model with GL
symmetries the head products' invariant norms beside their raw ones (``gl_invariants``: no batch).

A non-finite gradient is caught in the optimizer's pre-step hook: a "nonfinite" event at the step it appears in, the laws skip the step, and with
``raise_on_nonfinite=True`` FloatingPointError is raised there, before the optimizer applies it (the
parameters unchanged); a non-finite loss is seen at ``mon.step`` and treated the same way there. A step
the optimizer skips (a GradScaler's) is a "skipped-step" event, and the laws skip it exactly.
The settings each step used (lr, momentum, weight decay) are captured in the pre-step hook, so a
scheduler stepped before ``mon.step`` changes no law. The model's train/eval flags, its buffers and
the global RNG are left as they were by every routine (``_preserved.preserved``). Under torch.distributed the loss is
averaged over ranks and everything else is computed once, on rank 0 (DDP has already averaged the
gradients), which alone writes; under FSDP2 each rank sums its shards and the sums are all-reduced
(``symmetry.sharded``).
"""

from __future__ import annotations

import atexit
import math
import os
import shutil
import time
import weakref
from collections import deque
from collections.abc import Callable, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, fields, replace
from operator import attrgetter
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
import torch.distributed as dist
from threadpoolctl import threadpool_limits
from torch import Tensor, nn
from torch.utils._pytree import tree_flatten, tree_unflatten

from ..mechanics import ConservationTracker, unwrapped_optimizer
from ..mechanics.tracker import dense
from ..quotient import horizontal_projector
from ..symmetry import Kind, SymmetrySet, _native, find_symmetries, sharded
from ..symmetry.group import FusedSums
from ..symmetry.trace import unwrapped_model
from .._preserved import preserved
from .attention import attention_observables, gl_invariants
from .curvature import CURVATURE_PATH, adam_preconditioner, curvature, update_curvature
from .path_norm import path_norm, path_norm_unsupported
from .sinks import Sink, TensorBoardSink
from .store import RunStore
from .warnings import EarlyWarning, Rule, default_rules

__all__ = ["Monitor", "Schedule", "check_log_dir"]

_QUADRATIC = (Kind.SCALE, Kind.RESCALE)
_NO_SYMMETRIES = SymmetrySet(())  # the norms-only pass of a model without symmetries


@dataclass(frozen=True)
class Schedule:
    """How often each group of observables is computed, in optimizer steps (None: never).

    charges: the tracker's record (charge drift and law error); quotient: horizontal gradient and
    update norms and the path norm; curvature: Lanczos on the raw and projected Hessian (needs the
    monitor's ``loss_fn`` and the step's batch); attention: the attention observables (needs the batch);
    update_curvature: the curvature along the last update (needs ``loss_fn`` and the batch).
    early: the last three also at steps 1, 2, 4, 8, ... below their period. quotient_budget: the most
    of the run's time the quotient samples may take (the period stretched where one costs more).
    """

    charges: int = 1
    # the projection is a conjugate-gradient solve on the orbit Gram matrix (~10 passes over the
    # parameters): a few plain steps' worth, so not every step by default
    quotient: int | None = 50
    curvature: int | None = None
    attention: int | None = None
    # the curvature along the last update, raw and horizontal (two Hessian-vector products; needs
    # loss_fn and the batch): a cheap stand-in for the top eigenvalue between Lanczos samples
    update_curvature: int | None = None
    # also at steps 1, 2, 4, 8, ... below each period (quotient, curvature, attention): a transition
    # in the first steps (the catapult's loss spike comes within ~10) falls before the first evenly
    # spaced sample; log2(period) samples more
    early: bool = False
    # the quotient samples' share of the run's time: where one sample costs more than quotient_budget
    # times the quotient steps between two samples (measured: the sample against the median step of
    # the run) and more than 0.1 s, the monitor stretches the quotient period to a multiple of
    # ``quotient`` that keeps the share (a "quotient-period" event each time it grows). Measured: a
    # sample costs 2.1-2.4 steps on a width/4 VGG-11 (at the budget's edge: every 50 or 100) and 7-11
    # on one GPT-2 layer (its 24 GL(64) groups take the CG path; every 216 steps then). None: every
    # ``quotient`` steps
    quotient_budget: float | None = 0.05

    def __post_init__(self) -> None:
        if not isinstance(self.early, bool):
            raise ValueError(f"schedule.early must be True or False, got {self.early!r}")
        budget = self.quotient_budget
        if budget is not None and (isinstance(budget, bool) or not isinstance(budget, (int, float))
                                   or not 0 < budget <= 1):
            raise ValueError(f"schedule.quotient_budget must be a share of the run's time in (0, 1] or None, got {budget!r}")
        for entry in fields(self):
            if entry.name in ("early", "quotient_budget"):
                continue
            every = getattr(self, entry.name)
            if every is None and entry.name != "charges":
                continue
            if isinstance(every, bool) or not isinstance(every, int) or every < 1:
                accepted = "a positive int" + ("" if entry.name == "charges" else " or None")
                raise ValueError(f"schedule.{entry.name} must be {accepted}, got {every!r}")

    def due(self, name: str, step: int, every: int | None = None) -> bool:
        """Whether ``name`` is computed at ``step``: at the multiples of its period (``every`` where given:
        the quotient period a monitor stretched) and, with ``early``, at the powers of two below the
        scheduled period."""
        scheduled = getattr(self, name)
        if scheduled is None:
            return False
        if step % (every or scheduled) == 0:
            return True
        # powers of two below the period (the tracker's charges keep their own period)
        return self.early and name != "charges" and 0 < step < scheduled and step & (step - 1) == 0


def _total_norm(tensors: list[Tensor]) -> float:
    """sqrt(sum |t|^2) over the tensors: one fused norm per tensor, accumulated in float64 whatever the
    tensors' dtype (a bfloat16 norm rounds to 3 digits); over the ranks' shards for DTensors (FSDP2)."""
    if tensors and sharded.is_sharded(tensors[0]):
        return sharded.sharded_norm(tensors)
    return float(torch.stack(torch._foreach_norm(tensors, 2, dtype=torch.float64)).square().sum().sqrt())


def _needs_upcast(t: Tensor, compiled: bool) -> bool:
    """Whether ``fused_sums`` would sum ``t`` in a dtype below float64: everything but float64 and the
    C kernel's float32 (contiguous, on the CPU: it multiplies and sums in double)."""
    if t.dtype == torch.float64:
        return False
    return not (t.dtype == torch.float32 and t.device.type == "cpu" and t.is_contiguous() and not compiled
                and _native.library() is not None)


_dtype, _shape, _device = attrgetter("dtype"), attrgetter("shape"), attrgetter("device")
_requires_grad = attrgetter("requires_grad")


# gradient_breaking/rescale of a symmetry of the training loss: ~1e-7 from float32 gradients; past
# this, the loss the optimizer minimises breaks it ("symmetry-broken" event, once)
_BROKEN = 1e-3


def _holds(new: torch.dtype, old: torch.dtype) -> bool:
    """Whether every value of floating dtype ``old`` is one of ``new`` (as wide an exponent, as long a
    mantissa): a conversion that keeps the parameters' values, and with them every charge."""
    if new == old:
        return True
    if not (new.is_floating_point and old.is_floating_point):
        return False
    a, b = torch.finfo(new), torch.finfo(old)
    return a.eps <= b.eps and a.max >= b.max and a.tiny <= b.tiny


def check_log_dir(log_dir) -> None:
    """A run's log_dir: a non-empty path (str or PathLike) that is not a file; else one-line TypeError or
    NotADirectoryError (the Monitor's check, and the Trainer callback's when it is made)."""
    if not isinstance(log_dir, (str, os.PathLike)) or not str(log_dir):
        raise TypeError(f"log_dir must be a non-empty path (str or pathlib.Path), got {log_dir!r}")
    if Path(log_dir).exists() and not Path(log_dir).is_dir():
        raise NotADirectoryError(f"log_dir {str(log_dir)!r} is a file: give a directory (the run's store goes in it)")


def _check_types(model, log_dir, *, symmetries, loss_fn, sinks, curvature_tol, flags: dict) -> None:
    """The constructor's arguments of the wrong type, each refused in one line before anything is built."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    check_log_dir(log_dir)
    if symmetries is not None and not isinstance(symmetries, SymmetrySet):
        raise TypeError(f"symmetries must be a SymmetrySet (shockwatch.find_symmetries(model, x)), got {type(symmetries).__name__}")
    if loss_fn is not None and not callable(loss_fn):
        raise TypeError(f"loss_fn must be a function (outputs, targets) -> loss, got {type(loss_fn).__name__}")
    if isinstance(sinks, (str, bytes)) or not all(callable(getattr(sink, "log", None)) for sink in sinks):
        raise TypeError("sinks must be a sequence of objects with .log(step, values) (shockwatch.monitor.Sink), got "
                        f"{[type(sink).__name__ for sink in sinks] if not isinstance(sinks, (str, bytes)) else sinks!r}")
    if isinstance(curvature_tol, bool) or not isinstance(curvature_tol, (int, float)):
        raise TypeError(f"curvature_tol must be a number in (0, 1), got {curvature_tol!r}")
    for name, value in flags.items():
        if not isinstance(value, bool):
            raise TypeError(f"{name} must be True or False, got {value!r}")


def _unwrap(optimizer):
    """The torch optimizer inside wrappers that hold it as ``.optimizer`` and step it from their own
    step() (Accelerate's AcceleratedOptimizer, Lightning's LightningOptimizer): the hook goes on it."""
    optimizer = unwrapped_optimizer(optimizer)
    if not isinstance(optimizer, torch.optim.Optimizer) or not hasattr(optimizer, "register_step_pre_hook"):
        raise TypeError(f"optimizer must be a torch.optim.Optimizer or a wrapper holding one as .optimizer, "
                        f"got {type(optimizer).__name__}")
    return optimizer


@contextmanager
def _settings_restored(optimizer: torch.optim.Optimizer, settings: list[dict] | None):
    """The param groups' settings as the step used them (captured in the pre-step hook), put back while
    the laws read them: a scheduler stepped before ``mon.step`` must not change the law of the step."""
    groups = optimizer.param_groups
    changed = settings is not None and any(group.get(key) is not value for group, saved in zip(groups, settings)
                                           for key, value in saved.items())
    if not changed:
        yield
        return
    now = [{key: group[key] for key in saved if key in group} for group, saved in zip(groups, settings)]
    for group, saved in zip(groups, settings):
        group.update(saved)
    try:
        yield
    finally:
        for group, current in zip(groups, now):
            group.update(current)


def _ratios(a: np.ndarray, b: np.ndarray | None, denominator: np.ndarray, scale: float = 1.0) -> np.ndarray:
    """|a_k - b_k| / max(denominator_k scale, 1e-300) (b None: |a_k|), per k."""
    with np.errstate(invalid="ignore"):
        difference = np.abs(a) if b is None else np.abs(a - b)
        return difference / np.maximum(denominator * scale, 1e-300)


def _max_ratios(a: np.ndarray, b: np.ndarray | None, denominator: np.ndarray, starts: np.ndarray,
                scale: float = 1.0) -> list[float]:
    """max_k of ``_ratios`` over each segment [starts[i], starts[i + 1]) (the last to the end; every
    segment non-empty), NaN where any term of the segment is NaN, from one array operation: the
    per-kind maxima of a step in one call, not one per kind."""
    return np.maximum.reduceat(_ratios(a, b, denominator, scale), starts).tolist()


def _check_sharded(schedule: Schedule, symmetries, example_input) -> None:
    """What FSDP2 (DTensor parameters) allows: the every-step observables, charges and laws; not the
    routines that run the model or need the full parameters on one rank."""
    if symmetries is None and example_input is not None:
        raise ValueError("the model's parameters are sharded (FSDP2): find its symmetries on the model before "
                         "fully_shard (find_symmetries(model, x); the names do not change) and pass symmetries=")
    for name in ("curvature", "update_curvature", "attention"):
        if getattr(schedule, name) is not None:
            raise ValueError(f"schedule.{name} runs the model on one rank with its full parameters: not under FSDP2 "
                             f"(set schedule.{name}=None)")


def _rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


class _PreSums(NamedTuple):
    """The pre-step pass's sums (``Monitor._pass_sums``): on the device until read where deferred."""

    fused: FusedSums
    pairs: int  # 0 (no scale or rescale group), 1 (<theta, g>), 2 (+ |g_A|^2), 3 (+ <b_A, g_A>)
    law: str  # the tracker's law ("none" without one)
    extra: dict  # host values computed at the step (the quotient gradient norm, where due)


class _PostSums(NamedTuple):
    """The post-step pass's sums (``Monitor._post_sums``)."""

    fused: FusedSums
    record: bool  # whether the charges' (theta, theta) sums are among them
    have: bool  # whether theta_t was copied (the update is measured against it)
    translation: tuple | None  # the translation charges and sizes (deferred), else None
    extra: dict  # host values computed at the step (the quotient update norm, where due)


@dataclass
class _Pending:
    """One step's measurements: its loss, the settings it used, both passes' sums and the scheduled
    routines' values; in deferred mode held until the flush reads the sums off the device."""

    step: int
    loss: Tensor | float | None
    settings: list[dict] | None
    pre: _PreSums | None = None
    pre_values: dict = field(default_factory=dict)  # host values known at the step (see _observe_before)
    post: _PostSums | None = None
    scheduled: dict = field(default_factory=dict)


def _flush_at_exit(method_ref):
    """An atexit callback calling a monitor's ``_exit_flush`` while the monitor lives (held weakly:
    the registration keeps no monitor alive)."""
    def flush() -> None:
        method = method_ref()
        if method is not None:
            method()
    return flush


def _read_to_host(pending: list[_Pending]) -> None:
    """Every tensor the pending steps hold (their losses and both passes' sums), read to the host in one
    copy per device (through pinned memory, non blocking, from a GPU: one synchronisation for all of
    them) and put back as float64 NumPy arrays."""
    leaves, spec = tree_flatten([(measured.loss, measured.pre, measured.post) for measured in pending])
    by_device: dict[torch.device, list[int]] = {}
    for index, leaf in enumerate(leaves):
        if isinstance(leaf, Tensor):
            by_device.setdefault(leaf.device, []).append(index)
    for device, indices in by_device.items():
        flat = torch.cat([leaves[i].detach().reshape(-1).to(torch.float64) for i in indices])
        staging = flat
        if device.type == "cuda":
            try:
                staging = torch.empty(flat.shape, dtype=torch.float64, pin_memory=True)
                staging.copy_(flat, non_blocking=True)
                torch.cuda.current_stream(device).synchronize()
            except RuntimeError:  # no pinned memory here: an ordinary copy reads the same values
                staging = flat.cpu()
        values, offset = staging.numpy(), 0
        for i in indices:
            size, tensor_shape = leaves[i].numel(), leaves[i].shape
            leaves[i] = values[offset:offset + size].reshape(tensor_shape).copy()
            offset += size
    for measured, (loss, pre, post) in zip(pending, tree_unflatten(leaves, spec)):
        measured.loss, measured.pre, measured.post = loss, pre, post


class Monitor:
    """``mon.step(loss)`` after each ``optimizer.step()`` (before ``zero_grad``); ``close()`` at the end
    (or use it as a context manager).

    ``log_dir`` gets ``run.sqlite`` (the record; an existing run is refused unless ``resume=True``,
    which continues after the store's last step, or after ``start_step``: the optimizer steps already
    taken, as a checkpoint's global step counts them, the steps logged after it removed; either way a
    "resumed" event; a new run's first step is ``start_step + 1``)
    and, with ``tensorboard=True``, TensorBoard event files in ``log_dir/tensorboard``; ``sinks`` adds
    others (``MLflowSink``). ``symmetries`` or ``example_input`` (to find them: a tensor, a tuple or a
    dict of inputs as the model takes them) are optional: without either the monitor logs the raw
    observables only and records why. ``logits=False`` for a model whose output is not fed to a
    softmax (regression): its output head then has no translation symmetry, and none is tracked;
    ``class_dim=1`` for channel-first logits (a segmentation head's (batch, classes, H, W)). Scale
    symmetries are exact only with the norms' eps at 0: where the model's norms add eps (above 1e-15)
    a "norm-epsilon" event says so, and that breaking shows in gradient_breaking/scale and
    charge_law_error/scale (measured on a LayerNorm MLP, float64: 1e-5 at eps 1e-5, 1e-12 at eps
    1e-12). Symmetries acting on a frozen
    parameter (``requires_grad=False``) are left out, with a "frozen-parameters" event: training cannot
    move along them, so their charges obey no law. ``model`` may be wrapped in
    DistributedDataParallel, or sharded by FSDP2 (``fully_shard``: every rank then computes its shards'
    part of each per-group sum, charge and norm, the parts are all-reduced and rank 0 writes; no
    parameter is gathered; pass ``symmetries`` found before sharding; the quotient norms, path norm,
    curvature and attention routines need full parameters on one rank and are off); ``optimizer`` in a wrapper that holds it as ``.optimizer`` (Accelerate's
    AcceleratedOptimizer, Lightning's LightningOptimizer).

    A training loss that breaks the rescale symmetries found on the traced model (gradient_breaking
    above 1e-3: a head used in training mode only, a penalty added to the loss) gets one
    "symmetry-broken" event.

    Under DDP or FSDP2 every rank builds the monitor and calls ``step`` (the loss is averaged over
    the ranks, a collective: a monitor on rank 0 alone waits for the others until the process
    group's timeout); rank 0 writes.

    Observed parameters: the model's that ``optimizer`` holds with requires_grad (|g|, |theta| and the
    update also count what else it holds); a parameter it does not hold (another optimizer's, as in a
    GAN trained as one module) is in no norm, and the symmetries acting on it are left out as on a
    frozen one. ``model`` may be ``torch.compile``'d: symmetries are named as in the model inside.

    Mid-run changes: a dtype or storage change of the parameters (``model.double()``, ``p.data = ...``)
    rebuilds the per-step plan and the copies of theta_t; a param group added or a parameter frozen or
    unfrozen, the parameters moved to another device, or written between steps outside the optimizer
    (an in-place edit under ``no_grad`` such as a WGAN critic's clip, ``load_state_dict``, a dtype
    that rounds them such as bfloat16) rebuilds the laws from the charges at that step (a "rebound"
    event, once while it recurs at every step). An in-place edit
    through ``p.data`` (``p.data.clamp_``) bypasses the version counter that tells such writes and is
    not seen: the laws then carry its jump; write ``with torch.no_grad(): p.clamp_(...)`` instead.
    Writes before the first step (DDP's broadcast when it wraps the model, a checkpoint loaded) restart
    nothing that has begun, and say nothing; weights copied back as they were (an average swapped in
    for evaluation, then restored) count as a write: the laws start again, harmlessly. Under FSDP2
    each rank looks at its own shards and one all-reduce of a flag a step makes every rank start again.
    A new optimizer is observed once given to ``attach`` (until then
    ``mon.step`` raises, as it does when called with no optimizer step since the last call).
    A constructor that fails leaves no file behind; after ``close()`` every method but ``close``
    raises RuntimeError.

    Live warnings: after each step's values are logged (``lr``, the first param group's learning
    rate as the step used it, among them), the rules in ``warnings`` (``monitor.warnings``: ``Approach``
    forecasts, ``Crossing``, the production spike detectors) see them; each warning is written as an
    event of kind "warning" (its message starts with the rule's name and "raw" or "quotient", then
    the forecast step where the rule gives one), reaches the sinks (TensorBoard: as text) and is passed
    to ``on_warning(warning)`` in the training thread, on rank 0. ``warnings=None`` is
    ``default_rules``: every step the loss's 6-sigma spike detector (a detection, which forecasts
    nothing), and the stability, shock and attention forecasts on the steps their schedules log
    (curvature and attention are off by default: a curvature sample costs hundreds of plain steps on
    the small models measured, so the default forecasts nothing until a schedule turns them on).
    Measured cost of the default rules: a few microseconds a step. ``warnings=()`` turns them off.
    ``controller`` (a ``shockwatch.control.Controller``) acts on the warnings: attached here before the
    monitor's own hook (so the laws read the rate the step used), given each warning before
    ``on_warning``, each intervention a "control" event; a step it undid rebinds the laws. Refused
    under torch.distributed with more than one process.

    Cost per step: one pass over (theta, g, momentum buffer) in an optimizer pre-step hook, copying
    theta_t as it goes, and one over theta after the step, measuring the update against that copy
    (``SymmetrySet.fused_sums``: on the CPU a C kernel built at first use, each tensor read once);
    the laws (``mechanics.laws``, once for every optimizer setting) and the per-group arithmetic in
    NumPy on host vectors; a row per value in the run store's memory-mapped ring. What remains is
    bandwidth on large models and Python on small ones (benchmarks/RESULTS.md has the measured
    ratios and the floor). ``compile=True`` runs each pass through
    torch.compile instead (some seconds at the first step, eager fallback with a "compile-failed"
    event where it cannot compile): the path for a GPU, where the C kernel does not apply.

    Deferred mode (``deferred=None``: on when the parameters are on a GPU, without FSDP2 or a
    controller): nothing of a step is read on the host while it trains. Both passes leave their sums
    where they were computed (the translation charges too); every ``flush_every`` steps (and at
    ``flush()``, ``close()``, ``attach()`` and before the laws are rebuilt) the steps held are read in
    one copy, through pinned memory, and each step's values are then computed on the host in order,
    the laws advanced, logged and given to the warning rules: the same values, step by step, as
    without deferral (tests/monitor/test_deferred.py), seen up to ``flush_every`` steps late. An
    interpreter that exits without ``close()`` still writes the steps held (an atexit flush); a
    process killed outright loses them (at most ``flush_every`` steps).
    ``step()`` then returns {}. What still reads the host at a step: the routines on their schedule
    (the quotient projection, curvature, attention), a monitor error, a step the optimizer skipped,
    and symmetries followed block by block (a flush first). A non-finite gradient is found at the
    flush, after the optimizer applied it (``raise_on_nonfinite`` raises there).
    """

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer, log_dir: str | Path, *,
                 symmetries: SymmetrySet | None = None, example_input=None, logits: bool = True,
                 class_dim: int = -1, schedule: Schedule | None = None, loss_fn=None, raise_on_nonfinite: bool = False,
                 resume: bool = False, tensorboard: bool = True, sinks: Sequence[Sink] = (),
                 curvature_tol: float = 1e-6, curvature_warm: bool = False, compile: bool = False,
                 warnings: Sequence[Rule] | None = None,
                 on_warning: Callable[[EarlyWarning], object] | None = None, controller=None,
                 deferred: bool | None = None, flush_every: int = 64, start_step: int | None = None) -> None:
        if start_step is not None and (isinstance(start_step, bool) or not isinstance(start_step, int) or start_step < 0):
            raise ValueError(f"start_step must be None or the optimizer steps already taken (an int >= 0), got {start_step!r}")
        _check_types(model, log_dir, symmetries=symmetries, loss_fn=loss_fn, sinks=sinks, curvature_tol=curvature_tol,
                     flags={"logits": logits, "raise_on_nonfinite": raise_on_nonfinite, "resume": resume,
                            "tensorboard": tensorboard, "compile": compile, "curvature_warm": curvature_warm})
        schedule = Schedule() if schedule is None else schedule
        if not isinstance(schedule, Schedule):
            raise TypeError(f"schedule must be a shockwatch.monitor.Schedule, got {type(schedule).__name__}")
        if on_warning is not None and not callable(on_warning):
            raise TypeError(f"on_warning must be a callable taking an EarlyWarning, got {type(on_warning).__name__}")
        if controller is not None and not (callable(controller) and hasattr(controller, "attach")):
            raise TypeError(f"controller must be a shockwatch.control.Controller, got {type(controller).__name__}")
        if controller is not None and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            raise ValueError("controller= runs on one process only for now: under torch.distributed its decisions "
                             "(taken on rank 0, where the warnings are) would have to reach every rank")
        if deferred is not None and not isinstance(deferred, bool):
            raise TypeError(f"deferred must be True, False or None (on a GPU), got {deferred!r}")
        if isinstance(flush_every, bool) or not isinstance(flush_every, int) or flush_every < 1:
            raise ValueError(f"flush_every must be a positive int (steps held on the device between reads), got {flush_every!r}")
        if deferred and controller is not None:
            raise ValueError("controller= acts on each step's warnings as it trains, which deferred=True computes only at "
                             "the next flush: pass deferred=False (or flush_every=1)")
        if isinstance(warnings, Rule):
            raise TypeError(f"warnings must be a sequence of rules: pass [{type(warnings).__name__}(...)], not the rule alone")
        if warnings is not None and not all(isinstance(rule, Rule) for rule in warnings):
            raise TypeError("warnings must be a sequence of shockwatch.monitor.warnings.Rule (Approach, Crossing, "
                            f"SigmaSpike, ...), got {[type(rule).__name__ for rule in warnings]}")
        for needs in ("curvature", "update_curvature"):
            if getattr(schedule, needs) is not None and loss_fn is None:
                raise ValueError(f"schedule.{needs} needs loss_fn=(outputs, targets) -> loss")
        # DDP's and torch.compile's wrappers: the same parameter tensors (DDP averages their
        # gradients), named as the symmetries found on the model inside them are
        model = unwrapped_model(model)
        if not 0 < curvature_tol < 1:
            raise ValueError(f"curvature_tol must be in (0, 1) (Lanczos' relative tolerance), got {curvature_tol}")
        optimizer = _unwrap(optimizer)
        owned = {id(p) for p in model.parameters()}
        if not any(id(p) in owned for group in optimizer.param_groups for p in group["params"]):
            raise ValueError(f"the optimizer ({type(optimizer).__name__}) holds none of the model's parameters: build it "
                             "from this model's parameters (model.parameters())")
        self.model, self.optimizer, self.schedule, self.loss_fn = model, optimizer, schedule, loss_fn
        self.curvature_tol = curvature_tol
        self._curvature_warm = curvature_warm
        self._last_curvature = None  # the last curvature sample, whose eigenvectors start the next (curvature_warm)
        self.raise_on_nonfinite, self.log_dir = raise_on_nonfinite, Path(log_dir)
        self.rank = _rank()
        self._closed = False
        self._compile = compile
        self._early_events: list[tuple[str, str]] = []  # events found before the store is open
        self._pre: dict[str, float] | None = None
        self._settings_at_step: list[dict] | None = None  # the param groups' settings the last step used
        self._nonfinite_at = -1  # the step whose non-finite gradient the pre-step hook recorded
        self._failed = False  # whether a pass of this step raised (the laws then start again)
        self._edited_at = -2  # the last step whose weights were found written outside the optimizer
        self._broken_said = False  # whether the "symmetry-broken" event was written
        self._inputs_finite = True  # whether the pre-step pass's sums (theta, g, momentum buffer) were finite
        self._horizontal = None  # P_H at theta_t on steps the quotient norms are due
        self._unfed: set[str] = set()  # the scheduled routines found due without a batch (an event each, once)
        # the quotient period in use (schedule.quotient, stretched by quotient_budget), the step whose
        # quotient sample is being taken, the seconds it has cost so far, and the run's recent step
        # times (between mon.step calls, the samples' time taken out) it is weighed against
        self._quotient_every = schedule.quotient
        self._quotient_step: int | None = None
        self._quotient_cost = 0.0
        self._unaccounted = 0.0  # sample time inside the current step interval
        self._step_times: deque[float] = deque(maxlen=64)
        self._last_call: float | None = None
        self._measured = None  # the tracker's per-step inputs, from the pre-step pass
        self._pending: list[_Pending] = []  # deferred steps whose sums are still on the device
        self._pre_raw: _PreSums | None = None  # this step's pre-step sums, deferred
        self.flush_every = flush_every
        self._at_exit = None  # deferred: the flush registered with atexit
        self.store, self.sinks, self.tracker, self.symmetries, self._hook = None, [], None, None, None
        self._step = 0
        self._first_step = 1  # the writer's is set again below, after a resume
        self._all_symmetries = None
        # the path norm needs one tensor input's shape; dict / tuple inputs (Hugging Face) have none
        self._input_shape = tuple(example_input.shape[1:]) if isinstance(example_input, Tensor) else None
        self._path_norm = False
        if warnings is None:  # the trend rules look a few samples of the sparsest schedule ahead
            periods = [every for every in (schedule.curvature, schedule.attention, schedule.update_curvature)
                       if every is not None]
            warnings = default_rules(_unwrap(optimizer), horizon=max(50, 4 * max(periods, default=0)))
        # each rule from fresh (a list reused for a second run keeps the first run's history otherwise)
        self.rules, self.on_warning, self.controller = [rule.fresh() for rule in warnings], on_warning, controller
        self._bind_parameters()
        # FSDP2: each rank holds shards only, so every rank computes its part of every sum and the
        # parts are all-reduced (``symmetry.sharded``); rank 0 alone writes
        self._sharded = any(sharded.is_sharded(p) for _, p in self._named)
        if self._sharded:
            _check_sharded(schedule, symmetries, example_input)
            if deferred:
                raise ValueError("deferred=True is not available under FSDP2 (its sums are all-reduced as they are "
                                 "computed): pass deferred=False")
        on_gpu = bool(self._params) and self._params[0].device.type == "cuda"
        self.deferred = (on_gpu and not self._sharded and controller is None) if deferred is None else deferred
        if self.rank != 0 and not self._sharded:  # computed once, on rank 0: other ranks only take part in the loss average
            return
        path = self.log_dir / "run.sqlite"
        writer = self.rank == 0
        if writer:
            RunStore.check_path(path, resume=resume)  # before any work: the refusal costs nothing
        # everything that can fail runs before the first file is written; should the store or a sink
        # still fail, what was created is removed (a corrected call must not find a half-made run)
        created = [d for d in (self.log_dir / "tensorboard", self.log_dir, *self.log_dir.parents) if not d.exists()] \
            if writer else []
        try:
            if symmetries is None and example_input is not None:
                symmetries = find_symmetries(model, example_input, logits=logits, class_dim=class_dim)
            self._all_symmetries = symmetries
            self._bind(start=True)
            why_not = path_norm_unsupported(model) if self._input_shape is not None else "no single-tensor example_input given"
            if self._sharded:
                why_not = "the path norm runs the model on one rank: not under FSDP2"
                if schedule.quotient is not None:
                    self._event(0, "no-quotient", "the quotient norms project onto the orbits with the full parameters "
                                "(a global solve): not computed under FSDP2")
            self._path_norm = why_not is None and schedule.quotient is not None
            if why_not is not None and schedule.quotient is not None:
                self._event(0, "no-path-norm", why_not)
            if controller is not None:  # its hooks first: the step's settings, as captured here, are the ones it used
                controller.attach(model, optimizer, symmetries=symmetries)
            self._hook = optimizer.register_step_pre_hook(self._before_step)
            if not writer:
                self._early_events = []
                return
            self.store = RunStore(path, resume=resume, background=True)  # SQLite off the training thread
            if self.deferred:  # an interpreter that exits without close() still writes the steps held
                self._at_exit = _flush_at_exit(weakref.WeakMethod(self._exit_flush))
                atexit.register(self._at_exit)
            self._step = self._resumed(start_step) if resume else (start_step or 0)
            self._first_step = self._step + 1  # writes before it (DDP's broadcast at wrapping) change no law yet
            self.sinks = [*([TensorBoardSink(self.log_dir / "tensorboard")] if tensorboard else []), *sinks]
            early, self._early_events = self._early_events, []
            for kind, message in early:
                self._event(self._step, kind, message)
            self.store.set_meta({**self._binding_meta(), "model": type(model).__name__, "schedule": str(schedule),
                                 "symmetries": str(symmetries.counts()) if symmetries is not None else "{}",
                                 **({"curvature": CURVATURE_PATH} if schedule.curvature is not None else {})})
        except BaseException:
            self._abandon(created, resume)
            raise

    def _resumed(self, start_step: int | None) -> int:
        """The step a resumed run continues after: the store's last, or ``start_step`` (a checkpoint's
        step), the steps logged after it removed (a branch of training the checkpoint discards); a
        "resumed" event says which."""
        last = self.store.last_step() or 0
        if start_step is None or start_step == last:
            message = f"resumed after step {last}, the store's last"
        elif start_step < last:
            removed = self.store.drop_after(start_step)
            message = (f"resumed after step {start_step} (start_step): the {removed} steps logged after it, up to step "
                       f"{last}, were removed with their events (training discarded them)")
        else:
            message = f"resumed after step {start_step} (start_step): steps {last + 1} to {start_step} were not observed"
        start = last if start_step is None else start_step
        self.store.event(start + 1, "resumed", message)
        return start

    def _abandon(self, created: list[Path], resume: bool) -> None:
        """Undo a constructor that failed: the hook removed, the store closed (and, for a new run, its
        files deleted), the folders this constructor made removed."""
        if self._hook is not None:
            self._hook.remove()
            self._hook = None
        if self.controller is not None:
            self.controller.close()
        self._release_tracker()
        for sink in self.sinks:
            try:
                sink.close()
            except Exception:  # the constructor's own error is the one to report
                pass
        if self.store is not None:
            self.store.close() if resume else self.store.discard()
            self.store = None
        for folder in created:  # deepest first; a folder someone else wrote into stays
            if folder.name == "tensorboard" and folder.parent == self.log_dir:
                shutil.rmtree(folder, ignore_errors=True)
            else:
                try:
                    folder.rmdir()
                except OSError:
                    pass
        self._closed = True

    def _bind_parameters(self) -> None:
        """The parameters observed: the model's that this optimizer trains (requires_grad and in one of
        its param groups; one left out of them has a gradient that nothing clears, and another
        optimizer may step it), in the model's order, and what else the optimizer holds (to see an
        added param group or a parameter frozen or unfrozen mid-run)."""
        held = list({id(p): p for group in self.optimizer.param_groups for p in group["params"]}.values())
        held_ids = {id(p) for p in held}
        self._named = [(name, p) for name, p in self.model.named_parameters() if p.requires_grad and id(p) in held_ids]
        self._names = [name for name, _ in self._named]
        # the parameter objects themselves, listed once (every per-step use is under no_grad: no
        # detach per parameter per step)
        self._params = [p for _, p in self._named]
        self._named_params = dict(self._named)
        self._group_count = len(self.optimizer.param_groups)
        self._frozen_held = [p for p in held if not p.requires_grad]
        # what else the optimizer steps: a frozen parameter it still holds (its momentum buffer or
        # weight decay moves it) and parameters outside the model (a learnable temperature, a loss
        # module's weights); in |g|, |theta| and the update, never in a symmetry. Not under FSDP2,
        # whose norms are all-reduced from every rank's shards (a replicated tensor would count once a rank)
        observed = {id(p) for p in self._params}
        self._outside = [] if any(map(sharded.is_sharded, self._params)) else \
            [p for p in held if id(p) not in observed]
        self._outside_before: list[Tensor] = []  # their theta_t, copied before each step
        self._before: list[Tensor] | None = None  # theta_t, copied in the pre-step pass
        self._copies_layout: tuple | None = None  # the parameters' dtypes, shapes and devices the copies were made for
        self._upcast = False  # whether the passes sum from float64 copies (set with the copies)
        self._before_named: dict[str, Tensor] = {}
        self._have_before = False  # whether _before holds this step's theta_t
        self._quadratic: list[int] = []  # the numbers of scale and rescale groups; [] without any
        self._rest = list(range(len(self._params)))
        self._versions = self._stamps()

    def _stamps(self) -> list[tuple[int, torch.dtype]]:
        """Per parameter this optimizer steps (``_params``): its version counter (bumped by every in-place
        write made with autograd's knowledge: one changed with no step of this optimizer means something
        else wrote it) and its dtype (``model.to(dtype)`` swaps the tensor, no version)."""
        return [(p._version, p.dtype) for p in self._params]

    def _edited(self) -> list[str]:
        """The parameters written since the last step by something else than the optimizer: an in-place
        write, or a dtype that cannot hold every value of the old one (float32 -> bfloat16 rounds;
        float32 -> float64 and a device or storage move keep every value, and the laws with them)."""
        return [name for name, (version, dtype), (was, old) in zip(self._names, self._stamps(), self._versions)
                if version != was or not _holds(dtype, old)]

    def _edited_anywhere(self) -> list[str]:
        """``_edited``; under FSDP2, where each rank sees writes to its own shards only, whether any rank
        saw one (one all-reduce of a flag a step), so that every rank starts the laws again at the same
        step (their charges are sums over the ranks)."""
        edited = self._edited()
        if not self._sharded:
            return edited
        if not sharded.all_reduce(np.array([1.0 if edited else 0.0]))[0]:
            return []
        return edited or ["(shards of another rank)"]

    def _bind(self, *, start: bool = False) -> None:
        """What depends on the optimizer and on which parameters train: the symmetries acting on
        trainable parameters, the conservation tracker (its laws start at the charges now) and the
        per-step pass. At the start and again after ``attach`` or a change of trainable parameters."""
        model, optimizer, symmetries = self.model, self.optimizer, self._all_symmetries
        previous = self.symmetries
        trained = set(self._names)
        left_out = {name for name, _ in model.named_parameters()} - trained
        if symmetries is not None and left_out:
            # a parameter this optimizer does not step moves by no law of its: a symmetry that acts on
            # it is no symmetry of these training dynamics, and its charge obeys no conservation law
            kept = tuple(sym for sym in symmetries if not any(slot.param in left_out for slot in sym.slots))
            if len(kept) < len(symmetries):
                frozen = {name for name, p in model.named_parameters() if not p.requires_grad}
                untrained = left_out - frozen
                named = lambda names: f"{', '.join(sorted(names)[:3])}{', ...' if len(names) > 3 else ''}"  # noqa: E731
                why = " and ".join(part for part in (
                    f"with requires_grad=False ({named(frozen)})" if frozen else "",
                    f"in none of the optimizer's param groups ({named(untrained)})" if untrained else "") if part)
                # stamped with the first step observed so, as the "rebound" of a mid-run change is
                self._event(self._step if start else self._step + 1, "frozen-parameters",
                            f"{len(symmetries) - len(kept)} of {len(symmetries)} symmetries act on parameters "
                            f"{why}: left out, as this optimizer does not step them and their charges obey no law")
                symmetries = replace(symmetries, symmetries=kept)
        same_groups = previous is not None and symmetries is not None and \
            [s.label for s in previous] == [s.label for s in symmetries]
        self.symmetries = symmetries
        self._release_tracker()
        self.tracker = None
        if symmetries is None or len(symmetries) == 0:
            if start:
                why = "no symmetries given (pass symmetries= or example_input=)" if symmetries is None \
                    else "find_symmetries found none in this model"
                self._event(self._step, "no-symmetries", f"raw observables only: {why}")
        else:
            scales, eps = len(symmetries.of_kind(Kind.SCALE)), max(symmetries.epsilons, default=0.0)
            # an eps under float64's round-off against an O(1) mean square breaks nothing measurable
            if start and scales and eps > 1e-15:
                self._event(self._step, "norm-epsilon",
                            f"{scales} scale symmetries hold exactly only with the norms' eps at 0 (as the exact check "
                            f"sets it); this model's norms add eps up to {eps:g}, which breaks them "
                            "by about eps / (the normalised input's mean square): gradient_breaking/scale and "
                            "charge_law_error/scale include that breaking")
            # the store keeps what is logged; the tracker's before_step runs from the monitor's own
            # pre-step hook (one hook, in a known order, and none registered while torch runs its hooks)
            self.tracker = ConservationTracker(model, optimizer, symmetries, record_every=self.schedule.charges,
                                               keep_history=False, hook=False)
            self._no_law_seen = -1
            self._note_no_law()
            # the tracker records at construction: charges and sizes at the start, for the drift
            self._recorded, first = self.tracker.latest_rows()
            slices = self.tracker.kind_slices
            # the kinds that have groups, with their columns in the tracker's rows
            kind_slices = [(kind, columns) for kind, columns in slices.items() if columns.stop > columns.start]
            self._drift_names = [f"charge_drift/{kind}" for kind, _ in kind_slices]
            self._law_error_names = [f"charge_law_error/{kind}" for kind, _ in kind_slices]
            # relative errors over max(size, the tracker's floor): a charge that starts at zero (a
            # zero-initialised bias) has no size of its own to divide by (1e288 before, issue 17)
            self._floors = self.tracker.size_floors
            # the kinds' columns are adjacent (translation, scale, rescale; an empty kind has none): one
            # block of columns, cut into the kinds at these offsets
            self._kind_columns = slice(kind_slices[0][1].start, kind_slices[-1][1].stop) if kind_slices else slice(0, 0)
            self._kind_starts = np.array([columns.start - self._kind_columns.start for _, columns in kind_slices],
                                         dtype=np.intp)
            if not same_groups:  # the drift is from the monitor's start while the groups are those
                columns = self._kind_columns
                self._start_host = (first[0][columns].copy(), np.maximum(first[1][columns], self._floors[columns]))
            self._quadratic = [len(symmetries.of_kind(kind)) for kind in _QUADRATIC]
            # scale then rescale: adjacent in the rows
            self._quadratic_columns = slice(slices[Kind.SCALE.value].start, slices[Kind.RESCALE.value].stop)
            if not any(self._quadratic):
                self._quadratic = []
            else:  # each group's size |xi_k|^2 at the last record, for the gradient breaking
                self._root_sizes = np.sqrt(first[1][self._quadratic_columns])
                ends = np.cumsum(self._quadratic)
                kinds = [(kind, int(end - count))
                         for kind, count, end in zip(_QUADRATIC, self._quadratic, ends) if count]
                self._breaking_names = [f"gradient_breaking/{kind.value}" for kind, _ in kinds]
                self._breaking_starts = np.array([start for _, start in kinds], dtype=np.intp)
                touched = set(symmetries.quadratic_params)
                self._rest = [i for i, name in enumerate(self._names) if name not in touched]

    def _optional(self, name: str, compute) -> dict[str, float]:
        """A scheduled routine that runs the model, with its state preserved; an event, never an
        error, where it fails."""
        try:
            with preserved(self.model):
                return compute()
        except Exception as error:  # inside a training step: the run goes on without these values
            self._event(self._step, f"{name}-failed", f"{type(error).__name__}: {error}"[:500])
            return {}

    def _fail(self, step: int, error: Exception) -> None:
        """An error of the monitor's own inside a training step: a "monitor-error" event, the step's
        symmetry observables dropped, the laws rebuilt at the next step (``_observe_before``)."""
        self._failed, self._measured, self._have_before = True, None, False
        self._event(step, "monitor-error", f"{type(error).__name__}: {error}"[:500])

    def _release_tracker(self) -> None:
        """Let the tracker go: its own optimizer hook, where it has one, removed with it."""
        close = getattr(self.tracker, "close", None)
        if close is not None:
            close()
        self.tracker = None

    def _binding_meta(self) -> dict[str, str]:
        return {"optimizer": type(self.optimizer).__name__, "law": self.tracker.law if self.tracker else "none"}

    def _rebind(self, why: str, *, quiet: bool = False) -> None:
        """``_bind`` again mid-run, with an event (``quiet``: none, where it succeeds); where the laws
        cannot be rebuilt (an error from the tracker) the run goes on with the raw observables, and the
        event says why. Deferred steps are flushed first, under the laws they were measured for."""
        self.flush()
        self._bind_parameters()
        try:
            self._bind()
            if quiet:
                return
            message = f"{why}: the laws start again from the charges after step {self._step}"
        except Exception as error:  # inside a training step: an event, never a crash
            self._release_tracker()
            self.symmetries, self._quadratic = None, []
            self._rest = list(range(len(self._params)))
            message = f"{why}: no law from here ({type(error).__name__}: {error})"[:500]
        self._event(self._step + 1, "rebound", message)  # the first step observed so
        if self.store is not None:
            self.store.set_meta(self._binding_meta())

    def attach(self, optimizer: torch.optim.Optimizer) -> None:
        """Observe ``optimizer`` from its next step on, in place of the one given so far (a new
        optimizer made mid-run: the old one's hook would never fire again). The laws start again from
        the charges now, under the new optimizer's settings; the charge drift stays measured from the
        monitor's start; a "rebound" event marks the step. Wrappers holding ``.optimizer`` are unwrapped."""
        self._check_open("attach")
        optimizer = _unwrap(optimizer)
        self.flush()  # the steps held so far, under the old optimizer's settings
        if self._hook is not None:
            self._hook.remove()
            self._hook = None
        self.optimizer, self._pre, self._settings_at_step = optimizer, None, None
        if self.rank != 0 and not self._sharded:
            self._bind_parameters()
            return
        if self.controller is not None:
            self.controller.attach(self.model, optimizer, symmetries=self._all_symmetries)
        self._hook = optimizer.register_step_pre_hook(self._before_step)
        self._rebind(f"optimizer {type(optimizer).__name__} attached")

    def _check_open(self, method: str) -> None:
        if self._closed:
            raise RuntimeError(f"Monitor.{method}() after close(): this monitor is closed; make a new Monitor "
                               f"(resume=True continues the run in {self.log_dir})")

    def step(self, loss: Tensor | float, batch=None) -> dict[str, float]:
        """Observe the step just taken; returns what was logged. ``batch`` = (inputs, targets) feeds
        the scheduled curvature and attention observables (ignored when none is due).

        Call it once per optimizer step, after ``optimizer.step()``. A call with no optimizer step
        since the last one is a step the optimizer skipped (a GradScaler's, with non-finite gradients:
        a "skipped-step" event, the laws skip it too); with finite gradients and no step it is a
        misuse (per micro-batch under gradient accumulation, or a new optimizer not ``attach``-ed),
        which raises RuntimeError after an event that says which.

        With ``deferred`` (the default on a GPU) the step's sums stay on the device and this returns
        {}: every ``flush_every`` steps (and at ``flush()`` and ``close()``) they are read in one copy
        and each step's values are computed, logged and given to the warning rules then, in order."""
        self._check_open("step")
        # checked before anything moves: a refused call leaves the step count and the pass as they were
        if isinstance(loss, Tensor) and loss.numel() != 1:
            raise ValueError(f"mon.step(loss) takes the step's scalar loss (a one-element tensor or a float), got a "
                             f"tensor of shape {tuple(loss.shape)}: pass the reduced loss (loss.mean())")
        if isinstance(loss, Tensor) and (loss.is_complex() or not (loss.is_floating_point() or loss.dtype == torch.int64)):
            raise TypeError(f"mon.step(loss) takes a real scalar loss, got a tensor of dtype {loss.dtype}")
        if not isinstance(loss, Tensor) and (isinstance(loss, bool) or not isinstance(loss, (int, float, np.floating))):
            raise TypeError(f"mon.step(loss) takes the step's scalar loss (a one-element tensor or a float), got "
                            f"{type(loss).__name__}" + (" (a model output's .loss is None without labels)" if loss is None
                                                        else ""))
        self._step += 1
        called = time.perf_counter()  # the run's step time, for the quotient budget: since the last call,
        if self._last_call is not None:  # less the quotient samples taken in between
            self._step_times.append(called - self._last_call - self._unaccounted)
        self._last_call, self._unaccounted = called, 0.0
        other_rank = self.rank != 0 and not self._sharded
        if self.deferred and not (other_rank and self.raise_on_nonfinite):
            value = self._mean_loss(loss, host=False)
            if other_rank:  # it took part in the loss average; rank 0 computes the rest
                return {}
        else:
            value = self._mean_loss(loss)
        if other_rank:
            if self.raise_on_nonfinite and not (math.isfinite(value) and self._grads_finite()):
                raise FloatingPointError(f"step {self._step}: non-finite loss or gradient on rank {self.rank}")
            return {"loss": value}
        pre, self._pre = self._pre, None
        raw, self._pre_raw = self._pre_raw, None
        settings, self._settings_at_step = self._settings_at_step, None
        if pre is None:  # the optimizer did not step
            self.flush()
            return self._not_stepped(float(value))
        if self.deferred:
            self._defer(value, pre, raw, settings, batch)
            self._versions = self._stamps()
            self._stretch()
            if len(self._pending) >= self.flush_every:
                self.flush()
            return {}
        values = self._finish(value, pre, settings, self._now(batch, settings))
        self._versions = self._stamps()
        self._stretch()
        return values

    def _spent(self, started: float) -> None:
        """Count the time since ``started`` (``perf_counter``) to this step's quotient sample."""
        spent = time.perf_counter() - started
        self._quotient_cost += spent
        self._unaccounted += spent

    def _stretch(self) -> None:
        """After a quotient sample: where it cost more than ``schedule.quotient_budget`` of the run's time
        over one period (cost > budget x period x median step time) and more than 0.1 s (below it a sample
        costs at most 2 ms a step at the default period of 50), the period
        grows to the multiple of ``schedule.quotient`` that keeps the share, with a "quotient-period" event."""
        budget, cost = self.schedule.quotient_budget, self._quotient_cost
        if self._quotient_step != self._step or budget is None or cost <= 0.1 or len(self._step_times) < 3:
            return
        step_time = max(float(np.median(self._step_times)), 1e-9)
        needed = cost / (budget * step_time)
        if needed <= self._quotient_every:
            return
        base, old = self.schedule.quotient, self._quotient_every
        self._quotient_every = base * math.ceil(needed / base)
        self._event(self._step, "quotient-period",
                    f"a quotient sample took {cost:.3g} s, {cost / step_time:.0f} steps of this run ({step_time * 1e3:.3g} ms "
                    f"a step): taken every {self._quotient_every} steps from here, not every {old}, to stay within "
                    f"{budget:.0%} of the run's time (Schedule(quotient_budget=None) keeps every {base})")

    def _now(self, batch, settings) -> _Pending:
        """What this step measures on the device after the optimizer step (the post-step pass) and
        the scheduled routines' values, at the step."""
        measured = _Pending(self._step, None, settings)
        with _settings_restored(self.optimizer, settings):  # the laws read the settings the step used
            if not self._failed:  # after a failed pre-step pass: the raw values only, and no law advances
                try:
                    measured.post = self._post_sums()
                except Exception as error:  # the run goes on; the laws start again at the next step
                    self._fail(self._step, error)
            measured.scheduled = self._scheduled(batch)
        return measured

    def _finish(self, value: float, pre: dict, settings, measured: _Pending) -> dict[str, float]:
        """The step's values from its measurements (host arithmetic: the laws advance, the rules run),
        logged. ``measured.post`` None: the post-step pass failed or did not run."""
        if not math.isfinite(value) or self._nonfinite_at == self._step:
            if self._nonfinite_at != self._step:  # a non-finite loss; the gradient's event is written already
                self._event(self._step, "nonfinite", f"loss {value}, |g| {pre['grad_norm']}")
                if self.raise_on_nonfinite:
                    raise FloatingPointError(f"step {self._step}: non-finite loss {value} (|g| {pre['grad_norm']})")
            # the laws skip the step: what it did to the parameters is not a law's to predict
            values = {"loss": value, "grad_norm": pre["grad_norm"], "lr": self._lr(settings), **self._control_values()}
            self._write(values)
            return values
        values = {"loss": value, **pre, "lr": self._lr(settings), **self._control_values()}
        if measured.post is not None:
            with _settings_restored(self.optimizer, settings):
                try:
                    values.update(self._post_values(measured.post))
                except Exception as error:  # the run goes on; the laws start again at the next step
                    self._fail(self._step, error)
        values.update(measured.scheduled)
        # one conversion for every value still held as a tensor (a single device sync on a GPU)
        held = [name for name, v in values.items() if isinstance(v, Tensor)]
        if held:
            values.update(zip(held, torch.stack([values[name].double() for name in held]).tolist()))
        broken = values.get("gradient_breaking/rescale")
        if broken is not None and broken > _BROKEN and not self._broken_said:
            self._broken_said = True
            self._event(self._step, "symmetry-broken",
                        f"gradient_breaking/rescale {broken:.1e} at step {self._step} (round-off for a symmetry of "
                        "the training loss): the loss breaks rescale symmetries found on the traced model, through a "
                        "term or branch the trace did not see (a head used in training mode only, a penalty added "
                        "to the loss); their charges obey no law (verify_symmetries(train_mode=True) with the "
                        "training loss tells which)")
        self._write(values)
        return values

    def _scheduled(self, batch) -> dict[str, float]:
        """The routines due at this step (quotient path norm, curvature, update curvature, attention),
        computed now, at theta_{t+1} (host values: each is a sync on a GPU, on the steps it is due)."""
        values: dict[str, float] = {}
        if batch is None:  # a routine due that needs the batch: said once, not skipped in silence
            for name in ("curvature", "update_curvature", "attention"):
                if self.schedule.due(name, self._step) and name not in self._unfed:
                    self._unfed.add(name)
                    self._event(self._step, "no-batch", f"schedule.{name} is due at step {self._step} but mon.step() got "
                                "no batch: pass mon.step(loss, batch=(inputs, targets)) (said once)")
        if self._path_norm and self._quotient_step == self._step:
            started = time.perf_counter()
            values.update(self._optional("path_norm", lambda: {"path_norm": path_norm(self.model, self._input_shape)}))
            self._spent(started)
        if self.schedule.due("curvature", self._step) and batch is not None and self.symmetries is not None:
            values.update(self._curvature(batch))
        if (self.schedule.due("update_curvature", self._step) and batch is not None and self.symmetries is not None
                and self._have_before and self._before is not None):
            values.update(self._optional("update_curvature", lambda: self._update_curvature(batch)))
        if self.schedule.due("attention", self._step):
            if batch is not None:
                values.update(self._optional("attention", lambda: attention_observables(self.model, batch[0])))
            if self.symmetries is not None and self.symmetries.of_kind(Kind.GL):  # any model's heads, no batch
                values.update(self._optional("gl-invariants", lambda: gl_invariants(self.symmetries, self._named_params)))
        return values

    def _defer(self, loss, pre: dict, raw: _PreSums | None, settings, batch) -> None:
        """Hold this step's measurements (device tensors) for the next flush."""
        measured = self._now(batch, settings)
        measured.loss, measured.pre, measured.pre_values = loss, raw, pre
        self._pending.append(measured)

    def flush(self) -> dict[int, dict[str, float]]:
        """Read every step held on the device (deferred mode) in one copy to the host, then compute,
        log and give to the warning rules each step's values, in order. Returns them by step ({}
        when nothing was held). Called every ``flush_every`` steps, before the laws are rebuilt, and at
        ``close()``; call it to read the values of the steps so far."""
        self._check_open("flush")
        pending, self._pending = self._pending, []
        if not pending:
            return {}
        _read_to_host(pending)
        out = {}
        now = self._step
        try:
            for measured in pending:
                self._step = measured.step  # the events and rows of a step carry its own number
                out[measured.step] = self._resolve(measured)
        finally:
            self._step = now
        return out

    def _exit_flush(self) -> None:
        """At interpreter exit without ``close()``: the deferred steps held written to the store, and
        the store's pending rows into its database."""
        if self._closed or self.store is None:
            return
        try:
            self.flush()
            self.store.flush()
        except Exception:  # noqa: BLE001, S110 -- at exit, nothing is left to report to
            pass

    def _resolve(self, measured: _Pending) -> dict[str, float]:
        """A deferred step, its sums now on the host: the pre-step pass's values (and its non-finite
        check, which deferred mode makes here, after the optimizer applied the step), then ``_finish``."""
        pre = measured.pre_values
        if measured.pre is not None:
            self._pre_values(measured.pre)
            pre = {**self._pre, **pre}
            self._pre = None
            self._check_finite_before(measured.step, pre["grad_norm"])
        return self._finish(float(measured.loss), pre, measured.settings, measured)

    def _not_stepped(self, value: float) -> dict[str, float]:
        """``step()`` where the optimizer took no step since the last call (see ``step``)."""
        grad_norm = self._held_grad_norm()
        values = {"loss": value, "grad_norm": grad_norm, "lr": self._lr(None)}
        if [version for version, _ in self._stamps()] != [version for version, _ in self._versions]:
            # something else moved the parameters
            message = (f"step {self._step}: the parameters changed but {type(self.optimizer).__name__}, the optimizer "
                       "this monitor observes, did not step: for a new optimizer call mon.attach(optimizer)")
            self._event(self._step, "optimizer-not-observed", message)
            self._step -= 1  # nothing of this step was observed: a retry after attach() logs it again
            raise RuntimeError(message)
        if math.isfinite(value) and math.isfinite(grad_norm):
            message = (f"step {self._step}: mon.step() was called with no optimizer step since the last call: call it "
                       "once per optimizer step, after optimizer.step() (under gradient accumulation, not per micro-batch)")
            self._event(self._step, "no-optimizer-step", message)
            self._step -= 1
            raise RuntimeError(message)
        if not math.isfinite(value):
            self._event(self._step, "nonfinite", f"loss {value}, |g| {grad_norm}")
            if self.raise_on_nonfinite:
                raise FloatingPointError(f"step {self._step}: non-finite loss {value} (|g| {grad_norm})")
        else:  # a GradScaler's skipped step: nothing moved, so the laws do not advance either
            self._event(self._step, "skipped-step", f"the optimizer skipped the step: |g| {grad_norm}")
        self._write(values)
        return values

    def _curvature(self, batch) -> dict[str, float]:
        """The scheduled curvature observables; an event (never an error) where they cannot be computed."""
        try:
            found = curvature(self.model, self.loss_fn, batch, self.symmetries, tol=self.curvature_tol,
                              preconditioner=adam_preconditioner(self.optimizer, self.model),
                              warm=self._last_curvature if self._curvature_warm else None)
            self._last_curvature = found
            lr = float(self.optimizer.param_groups[0]["lr"])
            values = {"curvature/raw_max": found.raw_max, "curvature/raw_min": found.raw_min,
                      "curvature/quotient_max": found.quotient_max, "curvature/quotient_min": found.quotient_min,
                      "shock_steps/quotient": found.shock_steps(lr), "shock_steps/raw": found.shock_steps(lr, quotient=False)}
        except Exception as error:  # inside a training step: the run goes on without this value
            self._event(self._step, "curvature-failed", f"{type(error).__name__}: {error}"[:500])
            return {}
        if found.preconditioned is not None:  # Adam: the forecast above is the preconditioned one
            scaled = found.preconditioned
            values.update({"curvature/preconditioned_raw_max": scaled.raw_max,
                           "curvature/preconditioned_raw_min": scaled.raw_min,
                           "curvature/preconditioned_quotient_max": scaled.quotient_max,
                           "curvature/preconditioned_quotient_min": scaled.quotient_min})
        return values

    def _update_curvature(self, batch) -> dict[str, float]:
        """``update_curvature`` along theta_{t+1} - theta_t (preconditioned under Adam), at theta_{t+1}."""
        update = {name: p.detach() - before for (name, p), before in zip(self._named, self._before)}
        preconditioner = adam_preconditioner(self.optimizer, self.model)
        found = update_curvature(self.model, self.loss_fn, batch, update, self.symmetries, preconditioner=preconditioner)
        kind = "preconditioned_" if found.preconditioned else ""
        return {f"update_curvature/{kind}raw": found.raw, f"update_curvature/{kind}quotient": found.quotient}

    def _mean_loss(self, loss: Tensor | float, *, host: bool = True) -> float | Tensor:
        """The loss averaged over ranks; ``host=False``: as a tensor where it was computed (no sync)."""
        if not (dist.is_available() and dist.is_initialized()):
            if not host and isinstance(loss, Tensor):
                return loss.detach().reshape(()).clone()
            return loss.item() if isinstance(loss, Tensor) else float(loss)
        # every rank must call this in the same step: it is the one collective of the monitor
        total = loss.detach().clone().reshape(()) if isinstance(loss, Tensor) else torch.tensor(float(loss))
        device = sharded.collective_device(str(dist.get_backend()))
        if total.device.type == "cpu" and device.type != "cpu":  # a float or host loss under NCCL alone
            total = total.to(device)
        dist.all_reduce(total)
        return float(total) / dist.get_world_size() if host else total / dist.get_world_size()

    def _held_grad_norm(self) -> float:
        """|g| over every gradient the optimizer holds, without the per-step pass (a step it skipped,
        or the fallback where the pass failed)."""
        grads = [dense(p.grad) for p in self._params + self._outside if p.grad is not None]
        return _total_norm(grads) if grads else 0.0

    def _grads_finite(self) -> bool:
        return all(bool(torch.isfinite(dense(p.grad)).all()) for _, p in self._named if p.grad is not None)

    def _before_step(self, optimizer, args, kwargs):
        """Optimizer step pre-hook: the per-step pass at (theta_t, g_t). Given a closure (Lightning,
        LBFGS), the gradients exist only once it has run inside step(): the closure is wrapped so that
        the pass follows its first call, at theta_t (LBFGS calls it again at the points of its inner
        iterations: a pass after the last call read theta_{t+1} as theta_t, and an update of 0)."""
        if self._pre is not None:  # the last optimizer step's pass was never taken up by mon.step
            self._missed()
        # the settings this step uses, for the laws at mon.step (a scheduler may step in between)
        self._settings_at_step = [{key: value.clone() if isinstance(value, Tensor) else value
                                   for key, value in group.items() if key != "params"}
                                  for group in optimizer.param_groups]
        # args = (optimizer, *positional arguments of step): the closure is args[1] when positional
        closure = kwargs["closure"] if "closure" in kwargs else args[1] if len(args) > 1 else None
        if closure is None:
            self._observe_before()
            return None

        observed = []

        def closure_then_pass():
            loss = closure()
            if not observed:
                observed.append(True)
                self._observe_before()
            return loss

        if "closure" in kwargs:
            return args, {**kwargs, "closure": closure_then_pass}
        return (args[0], closure_then_pass, *args[2:]), kwargs

    def _missed(self) -> None:
        """The optimizer steps again with no ``mon.step`` after its last step: that step keeps its
        number (the store's steps stay the optimizer's), is not logged, and the laws, which cannot
        cross a step they did not see, start again (a "missed-step" event, then "rebound")."""
        self._step += 1
        self._pre = self._pre_raw = None
        self._event(self._step, "missed-step", f"step {self._step}: the optimizer stepped and mon.step() was not called "
                    "after it: the step is not logged; call mon.step(loss) after every optimizer.step()")
        self._have_before, self._measured = False, None
        self._rebind(f"step {self._step + 1}: after the missed step {self._step}")

    def _observe_before(self) -> None:
        """The pre-step pass (``_pass_sums``); a non-finite gradient is recorded here, at the step
        it appears in, and with ``raise_on_nonfinite`` raised here, before the optimizer applies it
        (deferred: at the flush, from the sums read then)."""
        step = self._step + 1
        if (len(self.optimizer.param_groups) != self._group_count or not all(map(_requires_grad, self._params))
                or any(map(_requires_grad, self._frozen_held))):
            self._rebind(f"step {step}: the trainable parameters changed (a param group added, a parameter "
                         "frozen or unfrozen)")
        if self.symmetries is not None and self._params and self._params[0].device != self.symmetries.device:
            # model.to(device) mid-run: the symmetries' index plans follow the parameters
            self._all_symmetries = self._all_symmetries.to(self._params[0].device)
            self._rebind(f"step {step}: the parameters moved to {self._params[0].device}")
        elif edited := self._edited_anywhere():
            # written since the last step outside the optimizer (an in-place edit under no_grad such as a
            # clip to a box, load_state_dict, model.to(dtype)): the laws predicted the charges the
            # optimizer alone would give, so they start again from the charges now; the event is not
            # written again while it recurs at every step, nor for writes before the first step
            self._rebind(f"step {step}: {len(edited)} parameter(s) changed outside optimizer.step() since the last step "
                         f"({', '.join(edited[:3])}{', ...' if len(edited) > 3 else ''}: an in-place edit, "
                         "load_state_dict or a dtype change; not said again while it recurs at every step)",
                         quiet=self._edited_at == step - 1 or step == self._first_step)
            self._edited_at = step
        self._inputs_finite = True
        try:
            if self.tracker is not None:  # the settings this step uses, and the inputs of block-by-block laws
                if self._pending and not self.tracker.can_run_ahead():
                    self.flush()  # the block laws start from every earlier step's prediction
                self.tracker.before_step()
            if self._failed:  # the last step's pass failed: its law missed a step, so start the laws again
                self._failed = False
                self._rebind(f"step {step}: after the monitor's error")
            raw = self._pass_sums()
            if self.deferred:
                self._pre, self._pre_raw = raw.extra, raw
                return
            self._pre_values(raw)
            self._pre.update(raw.extra)
        except Exception as error:  # inside optimizer.step(): our error must not end the user's run
            self._fail(step, error)
            try:
                grad_norm = self._held_grad_norm()
            except Exception:  # noqa: BLE001 -- the event above says what failed; the step goes on
                grad_norm = math.nan
            self._pre, self._pre_raw = {"grad_norm": grad_norm}, None
        self._check_finite_before(step, self._pre["grad_norm"])

    def _check_finite_before(self, step: int, grad_norm: float) -> None:
        """A non-finite gradient (or parameter or momentum buffer) at ``step``: a "nonfinite" event,
        the laws skip the step, and with ``raise_on_nonfinite`` FloatingPointError."""
        if not (math.isfinite(grad_norm) and self._inputs_finite):
            # |g| finite with a non-finite sum: a parameter or a momentum buffer is (a loaded state)
            what = "gradient" if not math.isfinite(grad_norm) else "parameter or momentum buffer"
            self._nonfinite_at, self._have_before, self._measured = step, False, None
            self._event(step, "nonfinite", f"non-finite {what} before the optimizer step (|g| {grad_norm})")
            if self.raise_on_nonfinite:
                self._pre = None
                applied = "the parameters are unchanged" if not self.deferred else \
                    "deferred: seen at the flush, after the optimizer applied it"
                raise FloatingPointError(f"step {step}: non-finite {what} (|g| {grad_norm}) before the optimizer "
                                         f"step: {applied}")

    def _theta_copies(self) -> list[Tensor]:
        """The tensors theta_t is copied into before each step, one per observed parameter, of its
        dtype, shape and device (made again where a parameter changed: ``model.double()``, ``.to``)."""
        before, params = self._before, self._params
        # what the copies (and whether sums need float64 ones) depend on, read in C-level maps:
        # unchanged, the copies still fit
        every = params + self._outside
        layout = (list(map(_dtype, every)), list(map(_shape, every)), list(map(_device, every)),
                  list(map(Tensor.is_contiguous, every)), self._compile)
        if before is not None and layout == self._copies_layout:
            return before
        self._copies_layout = layout
        # half precision (and anything the C kernel does not take) is summed from float64 copies
        self._upcast = any(_needs_upcast(p, self._compile) for p in every)
        self._outside_before = [torch.empty(p.shape, dtype=p.dtype, device=p.device) for p in self._outside]
        dtype_of = (lambda p: torch.float64) if self._upcast else (lambda p: p.dtype)
        if before is None or len(before) != len(params) or not all(
                b.dtype == dtype_of(p) and b.shape == p.shape and b.device == p.device for b, p in zip(before, params)):
            # a DTensor's copy is a DTensor of its placements: the passes read its shard
            self._before = [torch.empty_like(p, dtype=dtype_of(p)) if sharded.is_sharded(p)
                            else torch.empty(p.shape, dtype=dtype_of(p), device=p.device) for p in params]
            self._before_named = dict(zip(self._names, self._before))
            self._have_before = False
        return self._before

    @torch.no_grad()
    def _pass_sums(self) -> _PreSums:
        """The pre-step pass at (theta_t, g_t, b_t): |g|, <theta_A, g_A> (gradient breaking) and the
        tracker's inputs |g_A|^2 and <b_A, g_A>, in one ``SymmetrySet.fused_sums`` pass; and the copy
        of theta_t that the update is measured against after the step. On the device where
        ``deferred``; ``_pre_values`` turns them into values on the host. The quotient gradient norm,
        where due, is computed here (a host solve)."""
        self._horizontal = None
        self._measured = None
        # the parameters themselves, not detached views: every use below is under no_grad, and a
        # detach per parameter is a torch call per parameter per step
        params = self._params
        grads = [dense(p.grad) if p.grad is not None else torch.zeros_like(p) for p in params]
        syms = self.symmetries
        pairs, law = [], self.tracker.law if self.tracker is not None else "none"
        if self._quadratic:
            named_params = self._named_params
            named_grads = dict(zip(self._names, grads))
            # <theta_A, g_A>, then the tracker's |g_A|^2 and <b_A, g_A> (buffer before the step)
            pairs.append((named_params, named_grads))
            if law.startswith("sgd"):
                pairs.append((named_grads, named_grads))
                buffers = self.tracker.momentum_buffers() if law == "sgd-momentum" else None
                if buffers is not None:
                    pairs.append((buffers, named_grads))
        self._theta_copies()
        # theta_t for the update: the grouped parameters copied inside the pass (one read of theta),
        # the others (few, or all without symmetries) here
        rest = self._rest if pairs else range(len(params))
        if rest:
            torch._foreach_copy_([sharded.local(self._before[i]) for i in rest], [sharded.local(params[i]) for i in rest])
        copy_into = self._before_named if pairs else None
        outside = self._outside
        if outside:
            torch._foreach_copy_(self._outside_before, outside)
            outside = [dense(p.grad) for p in outside if p.grad is not None]
        if len(pairs) > 1:  # |g|^2 = the (g, g) pair's whole sum plus the parameters no group touches
            fused = self._sums(pairs, norms=(([grads[i] for i in self._rest] + outside, None),), copy_into=copy_into)
        else:
            fused = self._sums(pairs, norms=((grads + outside, None),), copy_into=copy_into)
        self._have_before = True  # theta_t is copied (its finiteness is read with the sums)
        extra = {}
        if syms is not None and self.schedule.due("quotient", self._step + 1, self._quotient_every) and not self._sharded:
            # one projector at theta_t serves the gradient now and the update after the step
            self._quotient_step, self._quotient_cost = self._step + 1, 0.0
            started = time.perf_counter()
            named_params = self._named_params
            try:
                with threadpool_limits(limits=1, user_api="blas"):  # beside torch's threads (curvature.curvature)
                    self._horizontal = horizontal_projector(syms, {name: p.cpu() for name, p in named_params.items()},
                                                            rtol=1e-7, max_iterations=500)
                extra["grad_norm/quotient"] = self._horizontal_norm(grads)
            except ValueError:  # non-finite parameters (a step that diverged): no projection there; the
                extra["grad_norm/quotient"] = math.nan  # sums' own check says so, at the step it happened
            self._spent(started)
        return _PreSums(fused, len(pairs), law, extra)

    def _pre_values(self, raw: _PreSums) -> None:
        """``_pass_sums``' sums on the host: ``self._pre`` = {grad_norm, gradient_breaking/<kind>},
        the tracker's inputs (``self._measured``) and whether the sums were finite."""
        fused, pairs = raw.fused, raw.pairs
        signed, norms = fused.signed, fused.norms
        if pairs > 1:
            grad_norm = math.sqrt(max(float(fused.whole[1] + norms[0] ** 2), 0.0))
        else:
            grad_norm = float(norms[0])
        self._pre = pre = {"grad_norm": grad_norm}
        self._have_before = math.isfinite(grad_norm)
        # theta, the gradient and the momentum buffer all enter the sums: one check covers the three
        self._inputs_finite = not pairs or bool(np.isfinite(signed).all())
        self._measured = None
        if not self._have_before or not pairs:
            return
        if raw.law.startswith("sgd"):
            self._measured = (signed[1], signed[2] if pairs > 2 else None)
        # |xi_k|^2 = the group's size at the tracker's last record: at most Schedule.charges
        # steps old, which only rescales a ratio that is ~0 (exact symmetry) or O(1) (broken)
        pre.update(zip(self._breaking_names, _max_ratios(signed[0], None, self._root_sizes, self._breaking_starts,
                                                         grad_norm)))

    def _sums(self, pairs, *, unsigned: bool = False, norms=(), copy_into=None, moved_from=None):
        """``SymmetrySet.fused_sums`` (compiled where asked and possible; an empty set without symmetries)."""
        kernel_set = self.symmetries if self.symmetries is not None else _NO_SYMMETRIES
        if self._upcast:  # every sum in float64 whatever the parameters' dtype (bf16 rounds to 3e-3)
            copies: dict[int, dict] = {}  # a mapping in several pairs (the gradients) copied once

            def exact(mapping):
                if id(mapping) not in copies:
                    copies[id(mapping)] = {name: t.double() for name, t in mapping.items()}
                return copies[id(mapping)]

            pairs = [(exact(x), exact(y)) for x, y in pairs]
            norms = tuple(([t.double() for t in a], None if b is None else [t.double() for t in b]) for a, b in norms)
        # host=True: NumPy arrays, no torch call per field (the C kernel's output is on the host already);
        # deferred: tensors where they were summed, read at the flush
        extra = {"copy_into": copy_into, "moved_from": moved_from, "host": not self.deferred}
        if self._compile:
            try:
                return kernel_set.fused_sums(pairs, unsigned=unsigned, norms=norms, compile=True, **extra)
            except Exception as error:  # no C++ compiler, an unsupported backend: eager is exact too
                self._compile = False
                self._event(self._step, "compile-failed", f"eager per-step pass: {type(error).__name__}: {error}"[:500])
        return kernel_set.fused_sums(pairs, unsigned=unsigned, norms=norms, **extra)

    def _horizontal_norm(self, vectors: list[Tensor]) -> float:
        """|P_H v| at theta_t, v given per parameter in ``self._named`` order."""
        flat = torch.cat([v.reshape(-1).double().cpu() for v in vectors]).numpy()
        try:
            with threadpool_limits(limits=1, user_api="blas"):
                return float(np.linalg.norm(self._horizontal(flat)))
        except RuntimeError as error:  # CG did not converge: say so rather than log a wrong norm
            self._event(self._step, "quotient-projection", str(error))
            return math.nan
        except ValueError:  # a non-finite vector (a diverged step): the sums' own check reports it
            return math.nan

    @torch.no_grad()
    def _post_sums(self) -> _PostSums:
        """After the step, at theta_{t+1}: |theta_{t+1}|, |theta_{t+1} - theta_t| and, where the tracker
        records this step (deferred: always, as which step records is known only when the laws have
        caught up), the charges' (theta, theta) sums and the translation charges, in one pass."""
        params = self._params
        record = self.tracker is not None and bool(self._quadratic) and (
            self.deferred or self.tracker.records_next)
        have = self._have_before
        translation = None
        if record:
            # |theta|^2 = the (theta, theta) pair's whole sum plus the untouched parameters; the
            # update's grouped part |theta_{t+1} - theta_t| read in the same pass (``moved``)
            named_params = self._named_params
            rest = [params[i] for i in self._rest] + self._outside
            moved_rest = ((rest, [self._before[i] for i in self._rest] + self._outside_before),) if have else ()
            fused = self._sums([(named_params, named_params)], unsigned=True, norms=((rest, None), *moved_rest),
                               moved_from=self._before_named if have else None)
        else:
            every = params + self._outside
            fused = self._sums([], norms=((every, None), *(((every, self._before + self._outside_before),) if have else ())))
        if self.deferred and self.tracker is not None and self.symmetries.of_kind(Kind.TRANSLATION):
            translation = (self.symmetries.charges(Kind.TRANSLATION, self._named_params),
                           self.symmetries.charges(Kind.TRANSLATION, self._named_params, absolute=True))
        extra = {}
        if have and self._horizontal is not None and self._quotient_step == self._step:
            started = time.perf_counter()
            extra["update_norm/quotient"] = self._horizontal_norm(torch._foreach_sub(params, self._before))
            self._spent(started)
        return _PostSums(fused, record, have, translation, extra)

    def _post_values(self, raw: _PostSums) -> dict[str, float]:
        """``_post_sums``' sums on the host: the norms, and the laws one step on (``_symmetry_observables``)."""
        fused, have = raw.fused, raw.have and self._have_before
        norms = fused.norms
        if raw.record:
            param_norm = math.sqrt(max(float(fused.whole[0] + norms[0] ** 2), 0.0))
            update_norm = math.sqrt(float(fused.moved) ** 2 + float(norms[1]) ** 2) if have else None
        else:
            param_norm = float(norms[0])
            update_norm = float(norms[1]) if have else None
        out = {"param_norm": param_norm}
        if update_norm is not None:
            out.update({"update_norm": update_norm, "update_ratio": update_norm / max(param_norm, 1e-300)})
            out.update(raw.extra)
        if self.tracker is not None:
            charges = (fused.signed[0], fused.unsigned[0]) if raw.record else None
            out.update(self._symmetry_observables(charges, raw.translation))
        return out

    def _note_no_law(self) -> None:
        """A "no-law" event for each new entry of the tracker's ``no_law`` (Adam, a frozen block, ...):
        which laws are missing, for which param groups and symmetries, and why."""
        if self.tracker.no_law_version == self._no_law_seen:
            return
        self._no_law_seen = self.tracker.no_law_version
        for entry in self.tracker.no_law:
            self._event(self._step, "no-law", entry.message)

    def _symmetry_observables(self, charges, translation=None) -> dict[str, float]:
        out = {}
        measured, self._measured = self._measured, None
        self.tracker.update(measured, charges=charges, translation=translation, deferred=self.deferred)
        self._note_no_law()
        step, rows = self.tracker.latest_rows()
        if step == self._recorded:  # the tracker did not record this step
            return out
        self._recorded = step
        empirical_all, size_all = rows[0], rows[1]
        if self._quadratic:
            self._root_sizes = np.sqrt(size_all[self._quadratic_columns])
        if not self._drift_names:  # no kind has groups
            return out
        # every kind's maxima in one NumPy call per quantity (the per-call cost, not the size, is what counts)
        columns, starts = self._kind_columns, self._kind_starts
        empirical = empirical_all[columns]
        start_charge, start_size = self._start_host
        out.update(zip(self._drift_names, _max_ratios(empirical, start_charge, start_size, starts)))
        if len(rows) > 2:  # the discrete law's row
            out.update(zip(self._law_error_names, _max_ratios(empirical, rows[2][columns],
                                                              np.maximum(size_all[columns], self._floors[columns]),
                                                              starts)))
        return out

    def _control_values(self) -> dict[str, float]:
        return {} if self.controller is None else self.controller.values()

    def _lr(self, settings: list[dict] | None) -> float:
        """The first param group's learning rate as the step used it (captured before the step)."""
        group = settings[0] if settings else self.optimizer.param_groups[0]
        return float(group.get("lr", math.nan))

    def _write(self, values: dict[str, float]) -> None:
        """Log the step's values, then run the warning rules on them: each warning an event of kind
        "warning", then ``on_warning`` with each, in this thread (an error of the user's hook is
        raised after everything of the step is written). Rank 0 only."""
        if self.store is None:  # a rank of an FSDP2 run other than 0: it computed its part, rank 0 writes
            return
        self.store.log(self._step, values)
        for sink in self.sinks:
            sink.log(self._step, values)
        fired = []
        for rule in list(self.rules):
            try:
                warning = rule.observe(self._step, values)
            except Exception as error:  # a rule's error must not end the run: the rule is dropped
                self.rules.remove(rule)
                self._event(self._step, "warning-rule-failed",
                            f"{rule.name} {rule.signal} dropped: {type(error).__name__}: {error}"[:500])
                continue
            if warning is not None:
                self._event(self._step, "warning", warning.message)
                fired.append(warning)
        for warning in fired if self.controller is not None else ():
            intervention = self.controller(warning)
            if intervention is not None:
                self._event(self._step, "control", f"{', '.join(intervention.actions)} on {warning.rule} {warning.signal}"
                            + ("; the step was undone" if intervention.reverted else ""))
                if intervention.reverted:  # the parameters moved back outside the optimizer: no law predicts that
                    self._rebind(f"step {self._step}: the controller undid the step")
        if self.on_warning is not None:
            for warning in fired:
                self.on_warning(warning)

    def _event(self, step: int, kind: str, message: str) -> None:
        if self.store is None:  # in the constructor, before the store is open (rank 0), or a rank that does not write
            if self.rank == 0:
                self._early_events.append((kind, message))
            return
        self.store.event(step, kind, message)
        for sink in self.sinks:
            sink.event(step, kind, message)

    def close(self) -> None:
        """Flush the steps still held (deferred), remove the hook and close the store and sinks
        (idempotent). Every other method raises after it."""
        raised = None
        if not self._closed and self.store is not None and self._pending:
            try:
                self.flush()
            except FloatingPointError as error:  # raise_on_nonfinite: raised once everything is closed
                raised = error
            except Exception as error:  # a rule's or the laws' error: the store still closes, with the event
                self._event(self._step, "monitor-error", f"flush at close: {type(error).__name__}: {error}"[:500])
        self._closed = True
        if self._at_exit is not None:
            atexit.unregister(self._at_exit)
            self._at_exit = None
        if self._hook is not None:
            self._hook.remove()
            self._hook = None
        if self.controller is not None:
            self.controller.close()
        close_tracker = getattr(self.tracker, "close", None)  # its own hook, where it has one
        if close_tracker is not None:
            close_tracker()
        if self.store is not None:
            self.store.close()
            self.store = None
            for sink in self.sinks:
                sink.close()
        if raised is not None:
            raise raised

    def __enter__(self) -> Monitor:
        self._check_open("__enter__")
        return self

    def __exit__(self, *exc) -> None:
        self.close()
