r"""Noether charges during training next to the laws that predict them (Kunin et al. 2021, §4).

For each one-parameter symmetry group A, with Q its charge (translation <theta_A, 1>, scale
|theta_A|^2, rescale |theta_A1|^2 - |theta_A2|^2), learning rate eta_k and weight decay lambda:

continuous (the paper's eqs. 4-6, gradient flow of the modified loss, t = sum_k eta_k):
    translation  Q(t) = e^{-lambda t} Q(0)
    scale/rescale Q(t) = e^{-2 lambda t} Q(0) + eta int_0^t e^{-2 lambda (t - s)} G(s) ds,
    G = |g_A|^2 (scale) or |g_A1|^2 - |g_A2|^2 (rescale), the integral carried as the recursion
    I <- e^{-2 lambda eta_k} (I + eta_k^2 G_k) (left-point rule; never a raw e^{+2 lambda t}).
discrete (exact for torch.optim.SGD without momentum, theta' = (1 - eta lambda) theta - eta g,
using <g_A, xi_A> = 0):
    translation  Q' = (1 - eta lambda) Q
    scale/rescale Q' = (1 - eta lambda)^2 Q + eta^2 G
Both are propagated open-loop from the initial charge with the gradients the run produced; the
discrete law then agrees with the run to float64 round-off (for a float64 model), the continuous
one to O(eta lambda) relative over a training run. Every law is one call of ``laws.advance`` (the
recursions are written there, once, for every optimizer setting). With momentum the exact discrete
law is carried by scalar recursions and the continuous law is Appendix B's damped oscillator,
derived in ``laws.oscillator_propagator`` for heavy ball with dampening
(h = eta (1 - tau)) and for Nesterov (exactly heavy ball driven by f_k = (1 + mu) d_k - mu d_{k-1},
which adds the measured term -2 mu eta_{k-1} <u_{k-1}, g_{k-1}> to the drive); both tend to the
discrete law at first order in eta (measured in tests/mechanics/test_param_groups.py). A group with
lr 0: Q' = Q, and the oscillator's time stands still. Dampening 1 (with lr > 0): no continuous law
(NaN, with a ``no_law`` entry). Other optimizers (Adam, ...): the charges and their drift only, with
the reason in ``ConservationTracker.no_law``.

Param groups: each symmetry reads the settings of its parameters' optimizer param group, whatever
their number. A symmetry whose parameters straddle groups, or include a frozen parameter, one outside
the optimizer, or one without a gradient at a step (torch's SGD skips it: no decay, no momentum), is
followed block by block (``blocks.BlockLaws``: exact discrete law per block; the continuous law where
one exists, and what is reported where none does).

Hyperparameters are the ones the optimizer held when it stepped: the tracker registers an optimizer
step pre-hook (``before_step``), so that ``scheduler.step()`` called before ``update()`` changes
nothing; a step the optimizer did not take (a GradScaler skip) advances no law.

Relative errors: |predicted - empirical| / max(size_A, floor), size_A the group's own size at the
step (|theta_A|^2, |theta_A1|^2 + |theta_A2|^2, sum |theta_A|) and floor = ``size_floor`` (1e-6 by
default, in parameter units: sum |theta_A| below it counts as 1e-6) for translation, its square for
scale and rescale: a charge that starts at zero (a zero-initialised bias) then gives its absolute
error over the floor, never a division by ~0 (a float32 key bias that the loss cannot move sits at
~1e-9 per entry: its error over the floor is ~1e-3, where over its own size it was ~1).

Precision: every charge, sum and law in float64; tensors the C kernel does not take in float64
(bfloat16, float16, float32 off the CPU) are upcast before they are summed.
"""

from __future__ import annotations

import operator
import weakref
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn

from ..symmetry import Kind, SymmetrySet, sharded
from ..symmetry.trace import unwrapped_model
from . import laws
from .blocks import BlockLaws, NoLaw


__all__ = ["ConservationReport", "ConservationTracker", "NoLaw", "dense", "size_floor_of"]

_KINDS = (Kind.TRANSLATION, Kind.SCALE, Kind.RESCALE)


def dense(t: Tensor) -> Tensor:
    """``t`` as a strided tensor: a sparse gradient (``nn.Embedding(sparse=True)``, SparseAdam's)
    densified for the per-step sums, a copy on the steps it occurs; a dense tensor is returned as it is."""
    return t if t.layout is torch.strided else t.to_dense()


def _takes_hooks(optimizer) -> bool:
    """Whether ``register_step_pre_hook`` works on ``optimizer`` (a wrapper subclassing Optimizer
    without its __init__, such as Accelerate's, has the method but not the hooks' dict)."""
    try:
        optimizer.register_step_pre_hook(lambda *_: None).remove()
    except (AttributeError, TypeError, RuntimeError):
        return False
    return True


def unwrapped_optimizer(optimizer):
    """The optimizer that takes the steps: ``optimizer.optimizer`` for wrappers that hold one
    (Accelerate's AcceleratedOptimizer, Lightning's LightningOptimizer)."""
    inner = getattr(optimizer, "optimizer", None)
    while isinstance(inner, torch.optim.Optimizer) and inner is not optimizer:
        optimizer, inner = inner, getattr(inner, "optimizer", None)
    return optimizer


def size_floor_of(kind: Kind | str, size_floor: float) -> float:
    """The relative errors' floor for ``kind``: ``size_floor`` for translation (sum |theta_A|, parameter
    units), its square for scale and rescale (|theta_A|^2)."""
    return size_floor if Kind(kind) is Kind.TRANSLATION else size_floor**2


@dataclass(frozen=True)
class ConservationReport:
    """Charges per kind over the recorded steps: (steps, groups) float64 tensors, SymmetrySet order."""

    steps: list[int]
    empirical: dict[str, Tensor]
    discrete: dict[str, Tensor | None]  # None where no law applies (an optimizer not modelled)
    continuous: dict[str, Tensor | None]  # NaN entries: no continuous law for that group then
    size: dict[str, Tensor]  # each group's own size at each step (the relative error's denominator)
    law: str  # "sgd", "sgd-momentum" (continuous: App. B oscillator) or "none (...)"
    size_floor: float = 1e-6  # the denominators' floor: translation, squared for scale and rescale
    no_law: tuple[NoLaw, ...] = ()  # what the tracker could not predict, and why

    def denominator(self, kind: Kind | str) -> Tensor:
        """max(size, floor) per step and group: floor = size_floor (translation), size_floor^2 (scale, rescale)."""
        return self.size[Kind(kind).value].clamp(min=size_floor_of(kind, self.size_floor))

    def rel_errors(self, kind: Kind | str, law: str = "discrete") -> Tensor:
        """|predicted - empirical| / max(size, floor), per recorded step and group (steps, groups):
        size = |theta_A|^2 (scale), |theta_A1|^2 + |theta_A2|^2 (rescale), sum |theta_A| (translation).
        NaN where the group has no such law at that step (see ``no_law``) or the run is non-finite."""
        if law not in ("discrete", "continuous"):
            raise ValueError(f"law must be 'discrete' or 'continuous', got {law!r}")
        kind = Kind(kind).value
        predicted = (self.discrete if law == "discrete" else self.continuous).get(kind)
        if predicted is None:
            raise ValueError(f"no {law} law for this run ({self.law})")
        return (predicted - self.empirical[kind]).abs() / self.denominator(kind)

    def max_rel_error(self, kind: Kind | str, law: str = "discrete") -> float:
        """max over groups and recorded steps of ``rel_errors``, over the entries that have the law (a
        non-finite charge counts: NaN). A group whose size falls to the floor gives its absolute error
        over the floor. Raises ValueError where no group of ``kind`` has the law at any step."""
        errors = self.rel_errors(kind, law)
        if not errors.numel():
            return 0.0
        predicted = (self.discrete if law == "discrete" else self.continuous)[Kind(kind).value]
        counted = predicted.isfinite() | ~self.empirical[Kind(kind).value].isfinite()
        if not bool(counted.any()):
            raise ValueError(f"no {law} law for any {Kind(kind).value} group of this run: "
                             + "; ".join(entry.message for entry in self.no_law if entry.law == law))
        return float(errors[counted].max())

    def drift(self, kind: Kind | str) -> Tensor:
        """|Q(t) - Q(0)| / max(size(0), size(t), floor) per group at the last recorded step: how far the
        run moved each charge (a charge that starts at zero is measured against its size now)."""
        kind = Kind(kind).value
        values, denominator = self.empirical[kind], self.denominator(kind)
        return (values[-1] - values[0]).abs() / torch.maximum(denominator[0], denominator[-1])


_BLOCKS = ("translation", "quadratic")  # internal state: translation groups; scale then rescale groups
_BLOCK_KINDS = {"translation": (Kind.TRANSLATION,), "quadratic": (Kind.SCALE, Kind.RESCALE)}


def _host(values: Tensor | np.ndarray) -> np.ndarray:
    """A float64 NumPy view (copy from a GPU) of per-group sums, for the recursions."""
    if isinstance(values, np.ndarray):
        return values.astype(np.float64, copy=False)
    return values.detach().to("cpu", torch.float64).numpy()


class ConservationTracker:
    """Call ``update()`` after every ``optimizer.step()`` (before ``zero_grad``: it reads the
    gradients the step used). Predictions are carried in float64, one value per group.

    Scale and rescale groups obey the same recursions, so they are carried as one "quadratic"
    block (scale groups, then rescale groups) and split by kind only in ``report()``; their
    per-step inputs come from one ``SymmetrySet.quadratic_sums`` pass over gradients and buffers
    (on the CPU the C kernel of ``fused_sums``; ``compile=True`` runs it through torch.compile, for
    other devices). The laws' state is a set of float64 NumPy vectors on the host (``laws.LawState``).
    ``keep_history=False`` keeps only the last record (``latest()``; ``report()`` then refuses).
    ``size_floor``: the relative errors' floor (module docstring). ``hook=True`` registers
    ``before_step`` as an optimizer step pre-hook (where the optimizer takes one); with ``hook=False``
    the caller calls ``before_step()`` right before each ``optimizer.step()`` (a monitor that has its
    own hook), or the settings are read when ``update()`` runs.

    Public state for a monitor: ``law`` (the run's law), ``no_law`` (``NoLaw`` entries: which laws are
    missing for which symmetries and param groups, and why; it changes only when ``no_law_version``
    does), ``uniform`` (False once some symmetry is followed block by block) and ``size_floor``.
    """

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer, symmetries: SymmetrySet,
                 *, record_every: int = 1, compile: bool = False, keep_history: bool = True,
                 size_floor: float = 1e-6, hook: bool = True) -> None:
        model = unwrapped_model(model)  # torch.compile's and DDP's wrappers: the parameters as the symmetries name them
        self._named = list(model.named_parameters())  # read every step: named_parameters() is slow
        # one-line errors for symmetries found on another model (names, shapes or sizes that differ)
        symmetries.check_params(dict(model.named_parameters(remove_duplicate=False)),
                                f"{type(model).__name__}'s parameters", finite=False)
        if record_every < 1:
            raise ValueError(f"record_every must be >= 1, got {record_every}")
        if not (isinstance(size_floor, (int, float)) and 0 < size_floor < float("inf")):
            raise ValueError(f"size_floor must be a positive finite number (parameter units), got {size_floor!r}")
        optimizer = unwrapped_optimizer(optimizer)
        self.model, self.optimizer, self.symmetries, self.record_every = model, optimizer, symmetries, record_every
        self.size_floor = float(size_floor)
        self._map_groups()
        self._compile = compile
        self._columns = {"translation": symmetries.of_kind(Kind.TRANSLATION),
                         "quadratic": symmetries.of_kind(Kind.SCALE) + symmetries.of_kind(Kind.RESCALE)}
        # the uniform law reads one param group per symmetry; those straddling groups (or reading a
        # frozen parameter, or one outside the optimizer) are followed block by block
        parameters = self._parameters = dict(self._named)
        # per parameter of the set: its param group (-1: none) and whether it is frozen; then per symmetry,
        # over the parameters it reads, as array reductions (thousands of symmetries: no loop over them)
        names = symmetries.param_names
        group_of = np.array([self._group_of_param[name] for name in names], dtype=np.int64)
        frozen_of = np.array([not parameters[name].requires_grad for name in names], dtype=bool)
        static_split = {}
        group_index = {}
        for block, kinds in _BLOCK_KINDS.items():
            starts, read = symmetries.slot_incidence(kinds)
            if not len(starts):
                group_index[block], static_split[block] = np.zeros(0, dtype=np.int64), np.zeros(0, dtype=bool)
                continue
            low, high = np.minimum.reduceat(group_of[read], starts), np.maximum.reduceat(group_of[read], starts)
            frozen = np.logical_or.reduceat(frozen_of[read], starts)
            # split: the symmetry reads several param groups, a parameter outside the optimizer, or a frozen one
            static_split[block] = (low != high) | (low < 0) | frozen
            group_index[block] = np.maximum(low, 0)
        self._group_index = group_index
        self._translation_params = sorted({slot.param for sym in symmetries.of_kind(Kind.TRANSLATION)
                                           for slot in sym.slots})
        # only the parameters some charge reads are gathered each step
        self._quadratic = [(name, parameters[name]) for name in symmetries.quadratic_params]
        self._charged = [(name, parameters[name]) for name in dict.fromkeys(
            [*symmetries.quadratic_params, *self._translation_params])]
        self.law = self._law()
        self._settings_key: tuple | None = None  # the optimizer settings _settings last converted
        self._settings_step = -1  # the step _settings last read them at
        # (settings, the blocks' inputs) taken by before_step, one per optimizer step not yet update()d:
        # several where the caller defers its updates (``update(deferred=True)``), else at most one
        self._pending: deque[tuple[tuple, dict | None]] = deque()
        self._seen = False  # whether before_step ever ran (then an update() without one is a skipped step)
        self._current: tuple[int, tuple] | None = None  # (step, settings) the update in progress reads
        self._current_blocks: dict | None = None  # the blocks' inputs of the update in progress
        self._steps = laws.Steps()  # the laws' coefficients, per param group and setting
        params = self._params()
        self._views: dict[str, tuple[int, np.ndarray]] = {}  # translation params' NumPy views (CPU)
        # the laws' state per block (``laws.LawState``: one part per symmetry), float64 NumPy vectors on
        # the host whatever the model's device: the per-step recursions are NumPy operations on them
        self._laws = {k: laws.LawState.start(_host(v)) for k, v in self._charges_and_sizes(params)[0].items()}
        self._buffers_started = False
        self._buffer_dict: tuple | None = None  # (buffer objects, the dict momentum_buffers gave for them)
        self._step = 0
        # every record (report() needs them), or only the last (a monitor: memory stays flat, where
        # the history of a long run grows by 4 x groups x 8 bytes a record)
        self.keep_history = keep_history
        self._history: list[tuple[int, np.ndarray]] = []  # NumPy: a per-step torch call costs more
        self._counts = [len(symmetries.of_kind(kind)) for kind in _KINDS]
        # the symmetries followed block by block, and the order they were added in (for state_dict)
        self._blocks = BlockLaws(symmetries.device)
        self._split = {block: np.zeros(len(v), dtype=bool) for block, v in self._laws.items()}
        self._split_order: list[tuple[str, int]] = []
        self._split_continuous: dict[str, np.ndarray] = {}
        self._no_law_notes: dict[tuple[str, str], tuple[set, set]] = {}  # (law, reason) -> (groups, labels)
        self._noted: dict[str, tuple] = {}  # block -> the settings and flags _note_blocks last read
        self.no_law_version = 0
        if self.law.startswith("none"):
            maximizing = [i for i, group in enumerate(optimizer.param_groups) if group.get("maximize", False)]
            self._note("discrete", self.law[len("none ("):-1],
                       maximizing if "maximize" in self.law else range(len(optimizer.param_groups)),
                       [sym.label for syms in self._columns.values() for sym in syms])
        if self.law == "sgd-momentum":
            self._start_from_buffers(static_split)
        if self.law.startswith("sgd"):
            for block, split in static_split.items():
                if split.any():
                    self._promote(block, np.flatnonzero(split), carry=False)
        self._refresh_watch()
        self._hook = None
        if hook and _takes_hooks(optimizer):
            # the hook holds the tracker weakly: a tracker dropped without close() (a monitor that
            # rebuilds its tracker) is collected, and its hook does nothing from then on (removing it
            # there would mutate the hooks torch is iterating over)
            tracker = weakref.ref(self)

            def before_step_hook(optimizer, args, kwargs):
                alive = tracker()
                return None if alive is None else alive._before_step_hook(optimizer, args, kwargs)

            self._hook = optimizer.register_step_pre_hook(before_step_hook)
        self._record(params)

    # ---------------------------------------------------------------------------------------
    def _start_from_buffers(self, split: dict[str, np.ndarray]) -> None:
        """A tracker made mid-run (or after an optimizer state was loaded) finds momentum buffers:
        the law starts from <theta_A, b_A> and |b_A|^2 measured now, not from b = 0; symmetries reading
        a parameter that has no buffer yet while others have one go to the block law (``split``)."""
        state, groups = self.optimizer.state, self.optimizer.param_groups

        def buffer(p: Tensor) -> Tensor | None:
            return state[p].get("momentum_buffer") if p in state else None

        if all(buffer(p) is None for _, p in self._charged):
            return
        lacking = {name for name, p in self._charged if buffer(p) is None and self._group_of_param[name] >= 0
                   and groups[self._group_of_param[name]].get("momentum", 0)}
        if lacking:
            lacks = np.array([name in lacking for name in self.symmetries.param_names], dtype=bool)
            for block, kinds in _BLOCK_KINDS.items():
                starts, read = self.symmetries.slot_incidence(kinds)
                if len(starts):
                    split[block] |= np.logical_or.reduceat(lacks[read], starts)
        params, buffers = self._params(), self._read_buffers()
        rows = _host(self.symmetries.quadratic_sums([(params, buffers), (buffers, buffers)], compile=self._compile))
        self._laws["quadratic"].p, self._laws["quadratic"].b = rows[0].copy(), rows[1].copy()
        translation = self._read_buffers([(name, self._parameters[name]) for name in self._translation_params])
        self._laws["translation"].p = _host(self.symmetries.charges(Kind.TRANSLATION, translation)).copy()
        self._buffers_started = True

    def _map_groups(self) -> None:
        """param name -> index of its optimizer param group (-1: not in the optimizer); again after
        ``add_param_group`` (a parameter unfrozen into a new group starts moving)."""
        names = {id(p): name for name, p in self._named}
        self._group_of_param = {name: -1 for name in names.values()}
        for index, group in enumerate(self.optimizer.param_groups):
            for p in group["params"]:
                if id(p) in names:
                    self._group_of_param[names[id(p)]] = index
        self._n_groups = len(self.optimizer.param_groups)

    def _law(self) -> str:
        if type(self.optimizer) is not torch.optim.SGD:
            return f"none (drift only: {type(self.optimizer).__name__} is not modelled)"
        if any(group.get("maximize", False) for group in self.optimizer.param_groups):
            return "none (drift only: maximize=True)"
        if any(group.get("momentum", 0) for group in self.optimizer.param_groups):
            return "sgd-momentum"
        return "sgd"

    @property
    def uniform(self) -> bool:
        """Whether every symmetry is still followed by one param group's law (none block by block)."""
        return len(self._blocks) == 0

    @property
    def no_law(self) -> tuple[NoLaw, ...]:
        """What the tracker cannot predict, and why: one ``NoLaw`` per (law, reason), naming the
        param groups and symmetries concerned (see ``NoLaw``). A monitor turns new entries into events
        (compare ``no_law_version`` with the one it last saw)."""
        return tuple(NoLaw(law, reason, tuple(sorted(groups)), tuple(labels))
                     for (law, reason), (groups, labels) in self._no_law_notes.items())

    def _note(self, law: str, reason: str, groups, labels) -> None:
        entry = self._no_law_notes.setdefault((law, reason), (set(), []))
        new_groups = set(groups) - entry[0]
        seen = set(entry[1])
        new_labels = [label for label in dict.fromkeys(labels) if label not in seen]  # a label once, however many slots
        if new_groups or new_labels:
            entry[0].update(new_groups)
            entry[1].extend(new_labels)
            self.no_law_version += 1

    def close(self) -> None:
        """Remove the optimizer hook (idempotent); the tracker then reads the settings at ``update()``."""
        if self._hook is not None:
            self._hook.remove()
            self._hook = None
        self._pending.clear()  # no step is seen from now on: every update() advances the laws
        self._seen = False

    def _needs_upcast(self, t: Tensor) -> bool:
        # the C kernel sums float32 and float64 CPU tensors in float64; anything else the eager
        # kernel would sum in its own dtype (bf16: 3e-3 relative): upcast first
        return t.dtype != torch.float64 and not (t.dtype == torch.float32 and t.device.type == "cpu")

    def _exact(self, t: Tensor) -> Tensor:
        return t.double() if self._needs_upcast(t) else t

    def _params(self) -> dict[str, Tensor]:
        """The parameters that carry a charge, detached (float64 copies where the kernel needs them)."""
        return {name: self._exact(p.detach()) for name, p in self._charged}

    def _gradients(self) -> dict[str, Tensor]:
        return {name: self._exact(dense(p.grad)) if p.grad is not None else torch.zeros_like(p, dtype=self._exact(p).dtype)
                for name, p in self._quadratic}

    _SETTINGS = ("lr", "weight_decay", "momentum", "dampening", "nesterov")

    def _live_settings(self) -> tuple[float, ...]:
        """The optimizer's settings now, per param group in _SETTINGS order; dampening read as 0 where
        momentum is 0 (torch ignores it there: no buffer, the step is d)."""
        key = []
        for g in self.optimizer.param_groups:
            lr, decay, momentum, dampening, nesterov = (float(g.get(name) or 0.0) for name in self._SETTINGS)
            key += [lr, decay, momentum, dampening if momentum else 0.0, nesterov]
        return tuple(key)

    def before_step(self) -> None:
        """Take, as the optimizer steps, what the laws of this step need: the settings (so that a
        scheduler stepped before ``update()`` changes nothing) and, for the symmetries followed block
        by block, their inputs at theta_t. Registered as the optimizer's step pre-hook (``hook=True``);
        call it yourself right before ``optimizer.step()`` otherwise. Cheap where every symmetry reads
        one param group: one read of the settings and of which gradients are None. A caller that
        defers its ``update()`` calls (``update(deferred=True)``) may call this for several steps ahead
        of them while ``can_run_ahead()`` holds."""
        settings = self._live_settings()
        self._seen = True
        if not self.law.startswith("sgd"):
            self._pending.append((settings, None))
            return
        if len(self.optimizer.param_groups) != self._n_groups:
            self._map_groups()
        missing = [name for name, p in self._watch if p.grad is None]
        if missing:  # torch's SGD skips a parameter without gradient: no decay, no momentum
            # the block laws start from the prediction now: a deferring caller updates every pending step
            # first (can_run_ahead() is False here); entries still pending are a step the optimizer took
            # twice before one update(), which takes the latest anyway
            self._pending.clear()
            for block, columns in self._reading(set(missing)).items():
                self._promote(block, columns, carry=True)
            self._refresh_watch()
        self._pending.append((settings, self._measure_blocks(settings) if not self.uniform else None))

    def can_run_ahead(self) -> bool:
        """Whether ``before_step()`` may run now with earlier steps' updates still pending: every
        symmetry under one param group's law and every gradient it reads present (else the block laws
        must start from the prediction of every step before, and the caller updates first)."""
        if not self.law.startswith("sgd"):
            return True
        return self.uniform and len(self.optimizer.param_groups) == self._n_groups and \
            all(p.grad is not None for _, p in self._watch)

    def _before_step_hook(self, optimizer, args, kwargs):
        """The optimizer's step pre-hook. Given a closure (LBFGS, Lightning) the gradients exist only
        once it has run inside step(): the closure is wrapped so that ``before_step`` follows it."""
        closure = kwargs["closure"] if "closure" in kwargs else args[1] if len(args) > 1 else None
        if closure is None:
            self.before_step()
            return None

        def closure_then_before_step():
            loss = closure()
            self.before_step()
            return loss

        if "closure" in kwargs:
            return args, {**kwargs, "closure": closure_then_before_step}
        return (args[0], closure_then_before_step, *args[2:]), kwargs

    def _settings(self) -> tuple[np.ndarray, ...]:
        """Per optimizer param group, the SGD settings in _SETTINGS order (one float64 array each) as
        the optimizer held them when it stepped (``before_step``), else now; converted only when one
        has changed (``_settings_key`` changes with them). NumPy: the laws' recursions are ~50
        elementwise operations on vectors of a few thousand groups a step, where NumPy's dispatch is
        several times cheaper than torch's (benchmarks/RESULTS.md, monitor overhead)."""
        if self._settings_step == self._step:  # read once a step
            return self._settings_values
        self._settings_step = self._step
        captured = self._current
        key = captured[1] if captured is not None and captured[0] == self._step else self._live_settings()
        if key != self._settings_key:
            values = np.array(key, dtype=np.float64).reshape(-1, len(self._SETTINGS)).T
            self._settings_key, self._settings_values = key, tuple(np.ascontiguousarray(v) for v in values)
        return self._settings_values

    @property
    def records_next(self) -> bool:
        """Whether the next ``update()`` records the charges (every ``record_every``-th step)."""
        return self.records_after(1)

    def records_after(self, updates: int) -> bool:
        """Whether the ``updates``-th ``update()`` from now records the charges (a caller deferring its
        updates asks for the step it measures, that many updates ahead)."""
        return (self._step + updates) % self.record_every == 0

    @torch.no_grad()
    def update(self, measured: tuple[Tensor, Tensor | None] | None = None,
               charges: tuple[Tensor, Tensor] | None = None, *, translation: tuple[Tensor, Tensor] | None = None,
               deferred: bool = False) -> None:
        """Advance the predictions by the step just taken and record the charges (every record_every).

        For a caller that already makes its own passes over the tensors (the Monitor), in place of
        reading them here: ``measured``, the step's inputs taken before it, as
        ``SymmetrySet.quadratic_sums`` rows (signed |g_A|^2, signed <b_A, g_A> with b the momentum
        buffer before the step; the second None without momentum); ``charges``, the signed and
        unsigned (theta, theta) rows at the parameters after the step (used when this step records).

        With the step pre-hook (``hook=True``, or ``before_step`` called by the caller), an ``update()``
        after a step the optimizer did not take (no ``before_step`` since the last update: a GradScaler
        skip) advances no law: it only records. Symmetries followed block by block read the inputs ``before_step`` measured, not
        ``measured``.

        ``translation``: the translation groups' charges and sizes at the parameters after the step,
        where the caller measured them (with ``charges``: nothing is read here).
        ``deferred=True``: this update is for the oldest step ``before_step`` took and no update has
        consumed yet (a caller that reads its sums off a GPU later, and updates step by step then);
        by default, for the latest, any older ones dropped.
        """
        if self.law.startswith("sgd") and all(p.grad is None for _, p in self._named):
            raise RuntimeError("update() found no gradients: call it after optimizer.step() and before zero_grad()")
        if (self._hook is not None or self._seen) and not self._pending:
            # the optimizer did not step since the last update (a GradScaler skip): nothing moved
            self._step += 1
            if self._step % self.record_every == 0:
                self._record(None, charges, translation)
            return
        if self._pending:
            settings, self._current_blocks = self._pending.popleft() if deferred else self._pending.pop()
            if not deferred:
                self._pending.clear()
            self._current = (self._step + 1, settings)
        self._step += 1
        if self.law.startswith("sgd"):
            self._law_step(measured)
        if not self.uniform:
            self._advance_blocks()
        if self._step % self.record_every == 0:
            self._record(None, charges, translation)

    def momentum_buffers(self) -> dict[str, Tensor] | None:
        """The optimizer's momentum buffers of the scale/rescale parameters (None before the first
        step), for a caller that measures <b_A, g_A> itself before the step (``update(measured=)``).
        The same dict while the optimizer holds the same buffer objects (updated in place) and none
        needed a float64 copy. Read from the optimizer's state, not from the updates done: a caller
        deferring its updates gets the buffers the step it measures uses."""
        state = self.optimizer.state
        found = [state[p].get("momentum_buffer") if p in state else None for _, p in self._quadratic]
        if all(buffer is None for buffer in found):
            return None
        cached = self._buffer_dict
        if cached is not None and len(found) == len(cached[0]) and all(map(operator.is_, found, cached[0])):
            return cached[1]
        buffers = self._read_buffers()
        # kept only where every entry is the buffer itself (a float64 copy or a zero tensor would go stale)
        same = all(map(operator.is_, found, buffers.values()))
        self._buffer_dict = (found, buffers) if same else None
        return buffers

    def _read_buffers(self, named: list[tuple[str, Tensor]] | None = None) -> dict[str, Tensor]:
        """The momentum buffers of ``named`` (default: the scale/rescale parameters) as the optimizer
        holds them (zeros where none; float64 where the kernel needs it)."""
        state = self.optimizer.state
        named = self._quadratic if named is None else named
        buffers = {name: state[p].get("momentum_buffer") if p in state else None for name, p in named}
        return {name: torch.zeros_like(p, dtype=self._exact(p).dtype) if buffers[name] is None
                else self._exact(buffers[name]) for name, p in named}

    # --- symmetries followed block by block (blocks.BlockLaws) ---------------------------------
    def _refresh_watch(self) -> None:
        """The parameters read by symmetries still under the one-group law (their gradients are
        checked for None before each step), and which columns read each parameter."""
        names = self.symmetries.param_names
        by_param: dict[int, dict[str, np.ndarray]] = {}
        for block, kinds in _BLOCK_KINDS.items():
            starts, read = self.symmetries.slot_incidence(kinds)
            if not len(starts):
                continue
            column = np.repeat(np.arange(len(starts)), np.diff(np.append(starts, len(read))))
            kept = ~self._split[block][column]
            column, param = column[kept], read[kept]
            order = np.lexsort((column, param))  # by parameter, then column
            column, param = column[order], param[order]
            cuts = np.flatnonzero(np.diff(param)) + 1
            for at, columns in zip(param[np.append(0, cuts)] if len(param) else (), np.split(column, cuts)):
                by_param.setdefault(int(at), {})[block] = columns
        # the parameters in the set's first-seen order, each with the columns reading it per block
        self._readers = {names[i]: by_param[i] for i in sorted(by_param)}
        self._watch = [(name, self._parameters[name]) for name in self._readers]
        names = dict.fromkeys(param for block in _BLOCKS for param in self._blocks.param[block])
        self._block_params = [(name, self._parameters[name]) for name in names]

    def _reading(self, names: set[str]) -> dict[str, np.ndarray]:
        found: dict[str, set[int]] = {}
        for name in names:
            for block, columns in self._readers.get(name, {}).items():
                found.setdefault(block, set()).update(columns)
        return {block: np.array(sorted(columns), dtype=np.int64) for block, columns in found.items()}

    def _promote(self, block: str, columns: np.ndarray, *, carry: bool) -> None:
        """Follow ``columns`` of ``block`` block by block from now on (before a step, at theta_t):
        each block's state measured, each column's first block carrying the difference to the
        prediction so far (``carry``), so that the column's law continues without a jump."""
        columns = np.array([c for c in columns if not self._split[block][c]], dtype=np.int64)
        if not len(columns):
            return
        added = self._blocks.add([(block, int(c), self._columns[block][c]) for c in columns])[block]
        self._split[block][columns] = True
        self._split_order += [(block, int(c)) for c in columns]
        self._refresh_watch()
        names = dict.fromkeys(self._blocks.param[block])
        named = [(name, self._parameters[name]) for name in names]
        params = {name: self._exact(p.detach()) for name, p in named}
        buffers = self._read_buffers(named)
        if block == "quadratic":
            q, p, b = self._blocks.sums(block, [(params, params), (params, buffers), (buffers, buffers)])
        else:
            q, p = self._blocks.sums(block, [(None, params), (None, buffers)])
            b = np.zeros_like(q)
        targets = {}
        if carry:
            momentum = self.law == "sgd-momentum"
            state = self._laws[block]
            continuous, velocity = (state.oscillator[:, 0], state.oscillator[:, 1]) if momentum else (state.flow, None)
            buffers = momentum and self._buffers_started
            targets = {"target_q": state.q, "target_continuous": continuous, "target_velocity": velocity,
                       "target_p": state.p if buffers else None,
                       "target_b": state.b if buffers and block == "quadratic" else None}
        self._blocks.reset(block, added, q, p, b, **targets)
        lost = ~self._laws[block].applies
        if lost.any():
            self._blocks.continuous_lost(block, lost, added)  # the parts just added: the others keep their own
        self._sync_blocks()

    def _measure_blocks(self, settings: tuple) -> dict[str, dict[str, np.ndarray]]:
        """Before the step, per block and part: X_B, G_B, C_B and the flags (moves, known, has_buffer)
        and param group of each part (see ``blocks``)."""
        blocks, state = self._blocks, self.optimizer.state
        params = {name: self._exact(p.detach()) for name, p in self._block_params}
        grads = {name: self._exact(dense(p.grad)) if p.grad is not None else torch.zeros_like(params[name])
                 for name, p in self._block_params}
        momentum = self.law == "sgd-momentum"
        buffers = self._read_buffers(self._block_params) if momentum else None
        flags = {}
        for name, p in self._block_params:
            buffer = state[p].get("momentum_buffer") if p in state else None
            flags[name] = (self._group_of_param[name], p.grad is not None, p.grad is not None or p.requires_grad,
                           buffer is not None)
        settings = np.array(settings).reshape(-1, len(self._SETTINGS))
        inputs = {}
        for block in _BLOCKS:
            names = blocks.param[block]
            if not names:
                continue
            group, has_grad, known, has_buffer = (np.array(v) for v in zip(*(flags[name] for name in names)))
            entry = {"group": group.astype(np.int64), "moves": (group >= 0) & has_grad, "known": known,
                     "has_buffer": has_buffer}
            if block == "quadratic":
                pairs = [(params, grads), (grads, grads)] + ([(buffers, grads)] if momentum else [])
                rows = blocks.sums(block, pairs)
                entry.update(x=rows[0], g=rows[1], c=rows[2] if momentum else np.zeros_like(rows[0]))
            else:
                entry["x"] = blocks.sums(block, [(None, grads)])[0]
            entry["known"] = self._zero_where_none(block, entry, ~has_grad & known)
            inputs[block] = entry
            self._note_blocks(block, entry, settings)
        return inputs

    def _zero_where_none(self, block: str, entry: dict, none: np.ndarray) -> np.ndarray:
        """Which parts' gradients are known: computed, or None with requires_grad where that means zero
        (a parameter the forward pass did not use). A gradient set to None by hand after backward (a
        layer skipped for a step) was not zero: there sum_B X_B = 0, which the law uses, fails over
        the others (|sum| above 1e-4 of sum |X_B|, float32's rounding far below), and the part is unknown."""
        known = entry["known"]
        if not none.any():
            return known
        column, x = self._blocks.column[block], entry["x"]
        width = int(column.max()) + 1
        total = np.bincount(column, weights=x, minlength=width)
        size = np.bincount(column, weights=np.abs(x), minlength=width)
        broken = np.abs(total) > 1e-4 * size
        return known & ~(none & broken[column])

    def _note_blocks(self, block: str, entry: dict, settings: np.ndarray) -> None:
        """``no_law`` entries for the columns followed block by block: frozen blocks (no constraint)
        and blocks under different settings (no closed continuous law)."""
        key = (settings.tobytes(), entry["moves"].tobytes(), entry["known"].tobytes(), len(entry["moves"]))
        if self._noted.get(block) == key:  # nothing new to say while the settings and flags stay
            return
        self._noted[block] = key
        column, labels = self._blocks.column[block], self._blocks.labels[block]
        unknown = ~entry["known"]
        if unknown.any():
            self._note("symmetry", "a block is frozen (requires_grad=False) or its gradient was set to None though "
                       "not zero: its gradient is unknown, so <grad L, xi> = 0 cannot be used and the charge is not "
                       "conserved; the discrete row is each block's exact bookkeeping with the measured <theta_B, g_B>",
                       {int(g) for g in entry["group"][unknown] if g >= 0}, [labels[i] for i in np.flatnonzero(unknown)])
        moving = entry["moves"]
        rows = settings[np.maximum(entry["group"], 0)]
        rows[~moving] = np.nan  # a block that does not move has no settings of its own this step
        width = int(column.max()) + 1
        differs = np.zeros(width, dtype=bool)
        for j in range(rows.shape[1]):
            low = np.full(width, np.inf)
            high = np.full(width, -np.inf)
            live = moving
            np.minimum.at(low, column[live], rows[live, j])
            np.maximum.at(high, column[live], rows[live, j])
            differs |= (high > low)
        still = np.bincount(column, weights=(~moving).astype(np.float64), minlength=width) > 0
        still &= np.bincount(column, weights=moving.astype(np.float64), minlength=width) > 0
        differs |= still
        if differs.any():
            parts = differs[column]
            self._note("continuous", "blocks under different settings (or some not moving) exchange charge at the "
                       "rate sum_B (eta_B / eta) <theta_B, g_B>, which no closed law in Q gives: the continuous row is "
                       "each block's flow driven by the run's measured exchange",
                       {int(g) for g in entry["group"][parts] if g >= 0}, [labels[i] for i in np.flatnonzero(parts)])

    def _advance_blocks(self) -> None:
        inputs, self._current_blocks = self._current_blocks, None
        if inputs is None:
            raise RuntimeError("some symmetries are followed block by block (param groups, frozen parameters): "
                               "call tracker.before_step() right before optimizer.step() (this optimizer has no "
                               "step pre-hook, or hook=False)")
        settings = self._settings()
        momentum = self.law == "sgd-momentum"
        for block, entry in inputs.items():
            self._blocks.advance(block, settings, self._settings_key, entry, momentum)
        self._sync_blocks()

    def _sync_blocks(self) -> None:
        """The columns followed block by block: their discrete prediction into the law's state, their
        continuous one kept for the record."""
        momentum = self.law == "sgd-momentum"
        self._split_continuous = {}
        for block in _BLOCKS:
            split = self._split[block]
            if not split.any():
                continue
            discrete, continuous = self._blocks.predictions(block, len(split), momentum)
            self._laws[block].q[split] = discrete[split]
            self._split_continuous[block] = continuous

    def _law_inputs(self, measured: tuple[Tensor, Tensor | None] | None, first: bool, quadratic: laws.Coefficients
                    ) -> tuple[np.ndarray, np.ndarray | None]:
        """G = signed |g_A|^2 and C = <b_A, g_A> with the buffer before the step (None at the first
        step, or without momentum): from ``measured`` where the caller gave them, else read here
        (``quadratic``: the scale and rescale groups' coefficients, for their mu and tau)."""
        if measured is not None:
            return _host(measured[0]), None if first or measured[1] is None else _host(measured[1])
        grads = self._gradients()
        with_buffers = self.law == "sgd-momentum" and not first
        pairs = [(grads, grads)] + ([(self._read_buffers(), grads)] if with_buffers else [])
        sums = _host(self.symmetries.quadratic_sums(pairs, compile=self._compile))
        if not with_buffers:
            return sums[0], None
        # <b, g> from <b', g> = mu <b, g> + (1 - tau) |g|^2, since <d, g> = |g|^2 (<theta_A, g_A> = 0);
        # a group without momentum has no buffer (read as zeros) and no use for <b, g>
        mu, tau = quadratic.mu, quadratic.tau
        return sums[0], np.divide(sums[1] - (1 - tau) * sums[0], mu, out=np.zeros_like(sums[0]), where=mu > 0)

    def _law_step(self, measured: tuple[Tensor, Tensor | None] | None) -> None:
        """Every symmetry's laws one step on (``laws.advance``, one part per symmetry: X = 0 by the
        symmetry, so the run's only inputs are G and C); a "no continuous law" note where dampening 1
        stops time."""
        momentum = self.law == "sgd-momentum"
        first = momentum and not self._buffers_started
        self._buffers_started = self._buffers_started or momentum
        settings = self._settings()
        steps = {block: self._steps(self._settings_key, settings, 1.0 if block == "translation" else 2.0,
                                    self._group_index[block], momentum) for block in _BLOCKS}
        g_sq, old_b_g = self._law_inputs(measured, first, steps["quadratic"])
        for block in _BLOCKS:
            state = self._laws[block]
            if not len(state):
                continue
            spring, step, index = 1.0 if block == "translation" else 2.0, steps[block], self._group_index[block]
            applied = state.applies
            laws.advance(state, spring, step, None, g_sq if spring == 2.0 else None, old_b_g if spring == 2.0 else None,
                         True, first, momentum)
            if state.applies is applied:  # nothing lost (advance keeps the array where every part still applies)
                continue
            lost = applied & ~state.applies
            if lost.any():
                groups = sorted({int(i) for i in index[lost]})
                self._note("continuous", "dampening = 1 with lr > 0 (the step moves theta while the modified "
                           "equation's time h = lr (1 - dampening) stands still): NaN from then on",
                           groups, [sym.label for sym, gone in zip(self._columns[block], lost) if gone])

    def _translation_views(self) -> dict[str, np.ndarray] | None:
        """NumPy views of the translation parameters (None off the CPU), made once and again only
        where a parameter's storage moved: the per-step translation charges then take no torch call."""
        views = {}
        for name in self._translation_params:
            p = self._parameters[name]
            if p.device.type != "cpu" or p.dtype not in (torch.float32, torch.float64) or sharded.is_sharded(p):
                return None  # NumPy has no bfloat16 (nor shards); torch's sums below take float64 accumulators
            address = p.data_ptr()
            cached = self._views.get(name)
            if cached is None or cached[0] != address:
                cached = self._views[name] = (address, p.detach().numpy())
            views[name] = cached[1]
        return views

    def _charges_and_sizes(self, params: Mapping[str, Tensor] | None,
                           quadratic: tuple[Tensor | np.ndarray, Tensor | np.ndarray] | None = None,
                           translation: tuple[Tensor | np.ndarray, Tensor | np.ndarray] | None = None
                           ) -> tuple[dict[str, Tensor | np.ndarray], dict[str, Tensor | np.ndarray]]:
        """Per block, each group's charge and size (|theta_A|^2, |theta_A1|^2 + |theta_A2|^2, sum |theta_A|);
        ``quadratic``: the signed and unsigned (theta, theta) sums, ``translation`` the translation
        charges and sizes, where the caller has them (with both, ``params`` may be None)."""
        if quadratic is None:
            params = self._params() if params is None else params
            quadratic = self.symmetries.quadratic_sums([(params, params)], unsigned=True, compile=self._compile)[:, 0]
        signed, unsigned = quadratic
        if translation is not None:
            charge, size = translation
        elif (views := self._translation_views()) is not None:
            charge = self.symmetries.host_charges(Kind.TRANSLATION, views)
            size = self.symmetries.host_charges(Kind.TRANSLATION, views, absolute=True)
        else:
            params = self._params() if params is None else params
            charge = self.symmetries.charges(Kind.TRANSLATION, params)
            size = self.symmetries.charges(Kind.TRANSLATION, params, absolute=True)
        return {"translation": charge, "quadratic": signed}, {"translation": size, "quadratic": unsigned}

    def _record(self, params: Mapping[str, Tensor] | None, quadratic: tuple[Tensor, Tensor] | None = None,
                translation: tuple[Tensor, Tensor] | None = None) -> None:
        """Append (step, rows) with rows = charge, size[, discrete[, continuous]] over all groups
        (translation, scale, rescale): one small tensor per recorded step, split in report()."""
        rows = list(self._charges_and_sizes(params, quadratic, translation))
        if self.law.startswith("sgd"):
            momentum = self.law == "sgd-momentum"
            rows.append({block: state.q for block, state in self._laws.items()})
            continuous = {block: state.continuous(momentum) for block, state in self._laws.items()}
            for block, values in self._split_continuous.items():
                split = self._split[block]
                continuous[block][split] = values[split]
            rows.append(continuous)
        stacked = np.stack([np.concatenate([_host(row[block]) for block in _BLOCKS]) for row in rows])
        if not self.keep_history:
            self._history.clear()
        self._history.append((self._step, stacked))

    def latest(self) -> tuple[int, dict[str, dict[str, Tensor]]]:
        """The last recorded step and, per kind, its "empirical", "size" and (where a law applies)
        "discrete"/"continuous" charges: what a monitor logs without building the whole report."""
        step, rows = self.latest_rows()
        # rows as _record stacks them: a run without a law stops at "size"
        labels = ["empirical", "size", "discrete", "continuous"][: rows.shape[0]]
        out = {kind.value: {} for kind in _KINDS}
        for label, row in zip(labels, rows):
            for kind, part in self.kind_slices.items():
                out[kind][label] = torch.from_numpy(row[part])
        return step, out

    def latest_rows(self) -> tuple[int, np.ndarray]:
        """``latest()`` as one float64 array (rows: empirical, size[, discrete[, continuous]]; columns:
        every group, translation then scale then rescale; ``kind_slices`` cuts them), for a per-step
        caller to which a dict of tensors per step is a cost."""
        return self._history[-1]

    @property
    def size_floors(self) -> np.ndarray:
        """Per column of ``latest_rows()``: the floor of the relative errors' denominator, so that a
        caller's error is |predicted - empirical| / max(size, floor) (``size_floor_of``)."""
        return np.concatenate([np.full(count, size_floor_of(kind, self.size_floor))
                               for kind, count in zip(_KINDS, self._counts)])

    @property
    def kind_slices(self) -> dict[str, slice]:
        """The columns of each kind in ``latest_rows()`` (SymmetrySet order within a kind)."""
        ends = np.cumsum(self._counts)
        return {kind.value: slice(int(end - count), int(end)) for kind, count, end in zip(_KINDS, self._counts, ends)}

    def report(self) -> ConservationReport:
        if not self.keep_history:
            raise ValueError("report() needs every record: this tracker was made with keep_history=False")
        steps = [step for step, _ in self._history]
        history = torch.from_numpy(np.stack([rows for _, rows in self._history]))  # (steps, rows, groups)

        def by_kind(row: int) -> dict:
            if row >= history.shape[1]:  # no law of this type for this run
                return {kind.value: None for kind in _KINDS}
            return {kind.value: part for kind, part in zip(_KINDS, history[:, row].split(self._counts, dim=1))}

        return ConservationReport(steps, by_kind(0), by_kind(2), by_kind(3), by_kind(1), self.law, self.size_floor,
                                  self.no_law)

    def state_dict(self) -> dict:
        """Everything a resumed run needs to continue its predictions (and its recorded history)."""
        return {"step": self._step, "laws": {block: state.state_dict() for block, state in self._laws.items()},
                "buffers_started": self._buffers_started, "law": self.law,
                "history": [(step, torch.from_numpy(rows.copy())) for step, rows in self._history],
                "blocks": {"order": list(self._split_order), "state": self._blocks.state_dict()}}

    def load_state_dict(self, state: Mapping) -> None:
        if state["law"] != self.law:
            raise ValueError(f"state was recorded under law {state['law']!r}, this tracker has {self.law!r}")
        law_states = state["laws"] if "laws" in state else _laws_of_format_1(state)
        for block, values in law_states.items():
            self._laws[block].load_state_dict(values)
        self._step = int(state["step"])
        self._buffers_started = bool(state["buffers_started"])
        self._history = [(int(step), _host(torch.as_tensor(rows)).copy()) for step, rows in state["history"]]
        blocks = state.get("blocks")
        if blocks is not None:
            # the symmetries followed block by block, in the order they were added, then their state
            self._blocks = BlockLaws(self.symmetries.device)
            self._split = {block: np.zeros(len(v), dtype=bool) for block, v in self._laws.items()}
            self._split_order = [(block, int(column)) for block, column in blocks["order"]]
            self._blocks.add([(block, column, self._columns[block][column]) for block, column in self._split_order])
            for block, column in self._split_order:
                self._split[block][column] = True
            self._blocks.load_state_dict(blocks["state"])
            self._refresh_watch()
            self._sync_blocks()


def _laws_of_format_1(state: Mapping) -> dict[str, dict]:
    """A state_dict written before ``laws.LawState`` (separate discrete, integral, oscillator, ...
    entries) as LawState fields per block."""
    def get(key: str, block: str) -> np.ndarray:
        return _host(torch.as_tensor(state[key][block])).copy()

    out = {}
    for block in _BLOCKS:
        initial, decay_time = get("initial", block), get("decay_time", block)
        spring = 1.0 if block == "translation" else 2.0
        lost = state.get("continuous_lost", {}).get(block)
        out[block] = {"q": get("discrete", block), "p": get("theta_buffer", block), "b": get("buffer_sq", block),
                      "flow": np.exp(-spring * decay_time) * initial + get("integral", block),
                      "oscillator": get("oscillator", block),
                      "applies": np.ones(len(initial), dtype=bool) if lost is None else ~np.asarray(lost, dtype=bool),
                      "x_prev": np.zeros_like(initial),
                      "carry": get("nesterov_carry", block) if "nesterov_carry" in state else np.zeros_like(initial)}
    return out
