r"""The monitor's per-step engine: the every-step observables in one C call before the optimizer step
and one after it (``sw_engine_pre`` / ``sw_engine_post`` in ``symmetry/_fused.c``).

It computes exactly what the monitor's Python path computes (``SymmetrySet.fused_sums`` passes, the
``ConservationTracker``'s record and laws, the per-kind maxima), from the same kernels, and
leaves the tracker in the state that path would: either may take any step. What it saves is Python:
on a small model the ~40 Python and NumPy calls a step around the C passes cost several times the
passes themselves, each paid at its cold cost right after a training step (benchmarks/RESULTS.md).

Per step the Python left is: the gradients' addresses (new tensors every step under
``zero_grad(set_to_none=True)``) checked and written into the plan, the momentum buffers' and the
laws' arrays compared by identity with those in the plan, two C calls, and the values' dict.

Where it does not apply it says why (``Engine.build`` returns None with a reason) and the monitor
takes its Python path: not on the CPU, mixed or unsupported dtypes, no scale/rescale groups, charges
recorded less often than every step. Laws: SGD with and without momentum, and none (drift only).
"""

from __future__ import annotations

import ctypes
import math
from operator import attrgetter

import numpy as np
import torch
from torch import Tensor

from ..symmetry import Kind, _native

__all__ = ["Engine"]

_DTYPES = {torch.float32: 0, torch.float64: 1}
_pointer, _i64 = ctypes.c_void_p, ctypes.c_int64
_shape = attrgetter("shape")


class _Plan(ctypes.Structure):
    """``sw_engine`` (``_fused.c``), field for field."""

    _fields_ = [("dtype", _i64), ("n_grouped", _i64), ("n_units", _i64), ("groups", _i64),
                ("shape", _pointer), ("row", _pointer), ("col", _pointer),
                ("n_entries", _i64), ("position", _pointer), ("entry_row", _pointer), ("entry_sign", _pointer),
                ("n_cover", _i64), ("cover", _pointer),
                ("theta", _pointer), ("grad", _pointer), ("buffer", _pointer), ("copy", _pointer),
                ("n_rest", _i64), ("rest_numel", _pointer), ("rest_theta", _pointer), ("rest_grad", _pointer),
                ("rest_copy", _pointer),
                ("n_gathers", _i64), ("gather_tensor", _pointer), ("gather_shape", _pointer),
                ("gather_start", _pointer), ("gather_count", _pointer), ("gather_index", _pointer),
                ("gather_row", _pointer), ("gather_sign", _pointer),
                ("n_translation", _i64), ("n_scale", _i64), ("n_rescale", _i64),
                ("law", _i64), ("nesterov", _i64),
                ("law_arrays", (_pointer * 11) * 2),
                ("pre_units", _pointer), ("pre_scattered", _pointer), ("post_units", _pointer),
                ("post_scattered", _pointer), ("root_size", _pointer), ("start_charge", _pointer),
                ("start_size", _pointer), ("rows", _pointer), ("n_rows", _i64)]


def _int64(values) -> np.ndarray:
    return np.ascontiguousarray(np.asarray(values, dtype=np.int64).reshape(-1))


class Engine:
    """The plan and its arrays for one monitor (see the module docstring). ``pre()`` in the optimizer's
    pre-step hook, ``post()`` after the step; each returns None where this step cannot be taken here
    (the monitor then takes its Python path for the whole step)."""

    def __init__(self, monitor, lib, dtype: torch.dtype, layout, copies: list[Tensor]) -> None:
        self.monitor, self.lib = monitor, lib
        tracker, symmetries = monitor.tracker, monitor.symmetries
        self.tracker = tracker
        self._keep = []  # every array whose address the plan holds
        plan = self.plan = _Plan()
        plan.dtype = _DTYPES[dtype]
        params = monitor._named_params
        self._grouped = [params[name] for name in layout.names]
        self._rest = [monitor._params[i] for i in monitor._rest]
        counts = [len(symmetries.of_kind(kind)) for kind in (Kind.TRANSLATION, Kind.SCALE, Kind.RESCALE)]
        plan.n_translation, plan.n_scale, plan.n_rescale = counts
        plan.groups = groups = counts[1] + counts[2]
        plan.n_grouped, plan.n_units = len(layout.names), layout.size
        plan.shape = ctypes.addressof(layout.blocks)
        plan.row, plan.col = ctypes.addressof(layout.row_offset), ctypes.addressof(layout.col_offset)
        self._keep.append(layout)
        plan.n_entries, plan.position, plan.entry_row, plan.entry_sign, plan.n_cover, plan.cover, _ = layout.scatter_arguments
        # the address slots the plan points to; theta and the copies are fixed, the rest per step
        self._theta = self._slots([p.data_ptr() for p in self._grouped])
        self._grad = self._slots([0] * len(self._grouped))
        self._buffer = self._slots([0] * len(self._grouped))
        copy_of = dict(zip(monitor._names, copies))
        grouped_copies = [copy_of[name] for name in layout.names]
        self._copy = self._slots([c.data_ptr() for c in grouped_copies])
        plan.theta, plan.grad = ctypes.addressof(self._theta), ctypes.addressof(self._grad)
        plan.buffer, plan.copy = ctypes.addressof(self._buffer), ctypes.addressof(self._copy)
        plan.n_rest = len(self._rest)
        self._rest_numel = self._array(_int64([p.numel() for p in self._rest] or [0]))
        plan.rest_numel = _native.address(self._rest_numel)
        self._rest_theta = self._slots([p.data_ptr() for p in self._rest])
        self._rest_grad = self._slots([0] * len(self._rest))
        rest_copies = [copies[i] for i in monitor._rest]
        self._rest_copy = self._slots([c.data_ptr() for c in rest_copies])
        plan.rest_theta, plan.rest_grad = ctypes.addressof(self._rest_theta), ctypes.addressof(self._rest_grad)
        plan.rest_copy = ctypes.addressof(self._rest_copy)
        self._translation(symmetries, params)
        plan.law = {"sgd-momentum": 1, "sgd": 2}.get(tracker.law, 0)
        plan.nesterov = int(tracker._nesterov)
        self._law_held: list = []  # the settings and state objects the law slots were bound for
        self._law_alive: list = [None, None]  # the arrays the plan's law slots point to
        total = counts[0] + groups
        self._pre_units = self._array(np.zeros((3, max(layout.size, 1))))
        self._pre_scattered = self._array(np.zeros((3, 2 * groups + 1)))
        self._post_units = self._array(np.zeros((1, max(layout.size, 1))))
        self._post_scattered = self._array(np.zeros((1, 2 * groups + 1)))
        plan.pre_units, plan.pre_scattered = _native.address(self._pre_units), _native.address(self._pre_scattered)
        plan.post_units, plan.post_scattered = _native.address(self._post_units), _native.address(self._post_scattered)
        self._root_size = self._array(np.zeros(max(groups, 1)))
        plan.root_size = _native.address(self._root_size)
        # the charges at the monitor's start (an engine rebuilt later must not take its own start)
        self._start_charge = self._array(np.zeros(total))
        self._start_size = self._array(np.full(total, 1e-300))
        for kind, columns in monitor._kind_slices:
            self._start_charge[columns], self._start_size[columns] = monitor._start_host[kind]
        plan.start_charge, plan.start_size = _native.address(self._start_charge), _native.address(self._start_size)
        plan.n_rows = 2 if plan.law == 0 else 4  # the oscillator's row for Nesterov too (the tracker's mass)
        self._total = total
        self._pre_out, self._post_out = np.zeros(3), np.zeros(9)
        self._pre_out_at, self._post_out_at = _native.address(self._pre_out), _native.address(self._post_out)
        self._plan_at = ctypes.addressof(plan)
        self._dtype = dtype
        self._params = self._grouped + self._rest  # the order of the gradient slots
        self._n_grouped = len(self._grouped)
        # every tensor whose address the plan holds, and what the C passes assume of it: checked before
        # each call (a parameter moved by model.double() or .to, p.data = ..., or copies made again),
        # so that a pass never reads or writes past a tensor's end (issue 17: model.double() mid-run
        # had the pass write numel*8 bytes into float32 copies of numel*4)
        self._copies = copies  # the monitor's list: a new list there means new copies
        self._checked = [*self._params, *grouped_copies, *rest_copies]
        self._addresses = list(map(Tensor.data_ptr, self._checked))
        self._shapes = [t.shape for t in self._checked]
        self._param_shapes = self._shapes[: len(self._params)]
        self._buffers: list = []  # the momentum buffers the plan points to
        self._buffer_addresses: list = []
        self.stale = False  # whether the parameters left the addresses this plan holds
        self.inputs_finite = True  # whether the last pre-step pass's sums were all finite
        self.steps = 0  # steps taken here (the others took the monitor's Python path)
        self._zeros: dict = {}  # parameter -> the zero gradient it is read with while its grad is None
        # the names each output slot is logged under (a kind without groups, or a run without a law: none)
        kinds = (Kind.TRANSLATION, Kind.SCALE, Kind.RESCALE)
        self._pre_names = [(1 + i, f"gradient_breaking/{kind.value}") for i, kind in enumerate(kinds[1:]) if counts[1 + i]]
        self._post_names = [(3 + i, f"charge_drift/{kind.value}") for i, kind in enumerate(kinds) if counts[i]]
        if plan.n_rows > 2:
            self._post_names += [(6 + i, f"charge_law_error/{kind.value}") for i, kind in enumerate(kinds) if counts[i]]

    # ------------------------------------------------------------------------------------------
    @classmethod
    def build(cls, monitor) -> tuple[Engine | None, str | None]:
        """The engine for ``monitor``, or (None, why not)."""
        lib = _native.library()
        if lib is None:
            return None, f"no C kernel: {_native.reason()}"
        tracker, symmetries = monitor.tracker, monitor.symmetries
        if tracker is None or not monitor._quadratic:
            return None, "no scale or rescale groups"
        if monitor._compile:
            return None, "compile=True asks for the torch.compile path"
        if tracker.record_every != 1:
            return None, "charges recorded every step only"
        if not tracker.native:
            return None, "the tracker's NumPy law was asked for"
        if not tracker.native_law:
            return None, "the tracker's law runs in NumPy here (Nesterov, or symmetries followed block by block)"
        if tracker.law not in ("sgd", "sgd-momentum") and not tracker.law.startswith("none"):
            return None, f"law {tracker.law!r} (the engine runs SGD's laws or drift only)"
        params = monitor._params
        dtypes = {p.dtype for p in params}
        if len(dtypes) != 1 or next(iter(dtypes)) not in _DTYPES:
            return None, f"parameter dtypes {sorted(map(str, dtypes))}: one of float32, float64 for all"
        if not all(p.device.type == "cpu" and p.is_contiguous() for p in params):
            return None, "parameters not all contiguous on the CPU"
        if monitor.symmetries.of_kind("translation"):
            # the C pass divides the law error by the size alone (floor 1e-300), not by max(size, the
            # tracker's floor): a translation charge that starts at zero needs the Python path
            sizes = monitor.tracker.latest_rows()[1][1][monitor.tracker.kind_slices["translation"]]
            if bool((sizes < monitor.tracker.size_floors[monitor.tracker.kind_slices["translation"]]).any()):
                return None, "a translation charge below its size floor (a zero-initialised bias)"
        named = monitor._named_params
        translation = {slot.param for sym in symmetries.of_kind(Kind.TRANSLATION) for slot in sym.slots}
        missing = sorted((set(symmetries.quadratic_params) | translation) - set(named))
        if missing:
            return None, f"groups read parameters without requires_grad ({', '.join(missing[:3])})"
        layout = symmetries.native_layout({name: tuple(named[name].shape) for name in symmetries.quadratic_params})
        if layout is None:
            return None, "a group indexes a dim beyond 1 (the C kernel's (O, I, K) view)"
        copies = monitor._theta_copies()  # of each parameter's dtype and shape, made again where not
        if not all(c.is_contiguous() and c.device.type == "cpu" for c in copies):
            return None, "theta_t's copies not contiguous on the CPU"
        return cls(monitor, lib, next(iter(dtypes)), layout, copies), None

    def _array(self, array: np.ndarray) -> np.ndarray:
        self._keep.append(array)
        return array

    def _slots(self, addresses: list[int]) -> ctypes.Array:
        slots = (_pointer * max(len(addresses), 1))(*addresses)
        self._keep.append(slots)
        return slots

    def _translation(self, symmetries, params) -> None:
        """host_charges' gathers for translation, as (A, D, B) views and index lists."""
        plan = self.plan
        gathers = symmetries._plans[Kind.TRANSLATION].gathers
        tensors, shapes, starts, counts, indices, rows, signs = [], [], [], [], [], [], []
        whole_everywhere = all(g.whole for g in gathers)
        start = 0
        for g in gathers:
            p = params[g.param]
            shape = tuple(p.shape)
            tensors.append(p.data_ptr())
            shapes += [math.prod(shape[: g.dim]), shape[g.dim], math.prod(shape[g.dim + 1:])]
            index = np.arange(shape[g.dim]) if g.whole else g.index.cpu().numpy()
            starts.append(start)
            counts.append(len(index))
            indices.append(index)
            rows.append(g.row.cpu().numpy())
            signs.append(g.sign)
            start += len(index)
        self._gather_tensor = self._slots(tensors)
        plan.n_gathers = len(gathers)
        plan.gather_tensor = ctypes.addressof(self._gather_tensor)
        concatenate = lambda parts: _int64(np.concatenate(parts) if parts else [0])
        arrays = [self._array(a) for a in (_int64(shapes or [0]), _int64(starts or [0]), _int64(counts or [0]),
                                           concatenate(indices), concatenate(rows))]
        plan.gather_shape, plan.gather_start, plan.gather_count = (_native.address(a) for a in arrays[:3])
        plan.gather_index = None if whole_everywhere else _native.address(arrays[3])
        plan.gather_row = _native.address(arrays[4])
        self._gather_sign = self._array(np.asarray(signs or [0.0], dtype=np.float64))
        plan.gather_sign = _native.address(self._gather_sign)

    # ------------------------------------------------------------------------------------------
    def pre(self) -> dict[str, float] | None:
        """The pre-step pass at (theta_t, g_t, b_t); None where it cannot run here (a gradient the
        kernel does not take, a missing momentum buffer, parameters moved to new storage)."""
        # autograd and the .grad setter keep a gradient's shape, dtype and device those of its
        # parameter; its layout they do not (a .grad assigned by hand may be a strided view)
        if not self._fits():
            self.stale = True  # the monitor builds a new plan (and copies that fit)
            return None
        if not self.tracker.native_law:  # blocks of several param groups, Nesterov: the tracker's NumPy law
            return None
        grads = [p.grad for p in self._params]
        if any(g is None for g in grads):  # a parameter the loss did not reach: zero, as the Python path reads it
            grads = [self._zero(p) if g is None else g for p, g in zip(self._params, grads)]
        # autograd and the .grad setter keep a gradient's dtype and shape those of its parameter at the
        # time; a parameter's dtype changed since (or a .grad assigned by hand) may leave them apart
        if not (all(map(Tensor.is_contiguous, grads)) and all(g.dtype is self._dtype for g in grads)
                and list(map(_shape, grads)) == self._param_shapes):
            return None
        addresses = list(map(Tensor.data_ptr, grads))
        self._grad[:] = addresses[: self._n_grouped]
        self._rest_grad[: len(self._rest)] = addresses[self._n_grouped:]
        tracker = self.tracker
        with_buffer = int(self.plan.law == 1 and tracker._buffers_started)
        if with_buffer:
            state = tracker.optimizer.state
            buffers = [state[p].get("momentum_buffer") if p in state else None for p in self._grouped]
            # by identity (== on tensors compares elements): new objects at the first steps or when
            # an optimizer state is loaded
            if len(buffers) != len(self._buffers) or any(a is not b for a, b in zip(buffers, self._buffers)) \
                    or list(map(Tensor.data_ptr, buffers)) != self._buffer_addresses:
                if any(b is None or b.dtype is not self._dtype or b.shape != p.shape or not b.is_contiguous()
                       or b.device.type != "cpu" for b, p in zip(buffers, self._grouped)):
                    return None
                self._buffer_addresses = list(map(Tensor.data_ptr, buffers))
                self._buffer[:] = self._buffer_addresses
                self._buffers = buffers
        monitor = self.monitor
        if monitor._root_sizes is not self._root_size:  # the Python path recorded last: take its sizes
            self._root_size[: len(monitor._root_sizes)] = monitor._root_sizes
            monitor._root_sizes = self._root_size
        if self.lib.sw_engine_pre(self._plan_at, with_buffer, self._pre_out_at):
            return None
        out = self._pre_out.tolist()
        # theta, g and the momentum buffer all enter these sums: non-finite ones say one of them is
        self.inputs_finite = bool(np.isfinite(self._pre_scattered).all())
        values = {"grad_norm": out[0]}
        for slot, name in self._pre_names:
            values[name] = out[slot]
        self._grads = grads  # alive until the post-step call reads the gradients' sums
        return values

    def _fits(self) -> bool:
        """Whether every parameter and copy is still where the plan points, of its dtype, shape and
        contiguity (the kernels index by them), and the copies still the monitor's."""
        checked = self._checked
        return (self.monitor._before is self._copies and list(map(Tensor.data_ptr, checked)) == self._addresses
                and all(t.dtype is self._dtype for t in checked) and list(map(_shape, checked)) == self._shapes
                and all(map(Tensor.is_contiguous, checked)))

    def _zero(self, p: Tensor) -> Tensor:
        found = self._zeros.get(p)
        if found is None:
            found = self._zeros[p] = torch.zeros_like(p)
        return found

    def post(self) -> dict[str, float] | None:
        """After the step: |theta|, the update, the charges recorded, the law advanced (as
        ``ConservationTracker.update`` does), drift and law error per kind; None (nothing advanced)
        where a tensor of the plan changed since ``pre()``."""
        tracker, plan = self.tracker, self.plan
        if not self._fits():  # moved between the two passes: the monitor's Python path takes the rest
            self.stale = True
            return None
        first = int(plan.law == 1 and not tracker._buffers_started)
        tracker._step += 1  # first: the tracker reads the optimizer's settings once per step number
        if plan.law:
            self._bind_law()
        tracker._buffers_started = tracker._buffers_started or plan.law == 1
        rows = np.empty((plan.n_rows, self._total))
        plan.rows = _native.address(rows)
        if self.lib.sw_engine_post(self._plan_at, first, self._post_out_at):
            raise MemoryError("the per-step engine could not allocate its scratch memory")
        if not tracker.keep_history:
            tracker._history.clear()
        tracker._history.append((tracker._step, rows))
        self._grads = None
        out = self._post_out.tolist()
        values = {"param_norm": out[0], "update_norm": out[1], "update_ratio": out[2]}
        for slot, name in self._post_names:
            values[name] = out[slot]
        monitor = self.monitor
        monitor._recorded = tracker._step
        self.steps += 1
        return values

    def _bind_law(self) -> None:
        """Point the plan at the law's settings, propagators and state (the tracker's own arrays,
        which the C law updates in place); re-pointed only where one of them is a new object."""
        tracker = self.tracker
        momentum = self.plan.law == 1
        # the settings' values object is the same while the optimizer's settings are; the state arrays
        # are the same unless a state was loaded or SGD's NumPy law ran (on a Python-path step: it
        # replaces its arrays with new ones)
        states = (tracker._discrete, tracker._theta_buffer, tracker._buffer_sq, tracker._oscillator) if momentum \
            else (tracker._discrete, tracker._integral, tracker._decay_time, tracker._initial)
        held = [tracker._settings()]
        for state in states:
            held += state.values()
        if len(held) == len(self._law_held) and all(a is b for a, b in zip(held, self._law_held)):
            return
        self._law_held = held
        for block, name in enumerate(("translation", "quadratic")):
            if momentum:  # sw_momentum_law's settings, then its state in its order
                inputs = [*tracker._hyperparameters(name, *tracker._SETTINGS), *tracker._momentum_state(name)]
                updated = [5, 6, 7, 10]
            else:
                settings = tracker._hyperparameters(name, "lr", "weight_decay")
                inputs = [*settings, tracker._discrete[name], tracker._integral[name], tracker._decay_time[name],
                          tracker._initial[name]]
                updated = [2, 3, 4]
            arrays = [np.ascontiguousarray(a, dtype=np.float64) for a in inputs]
            if any(arrays[i] is not inputs[i] or not arrays[i].flags.writeable for i in updated):
                raise AssertionError("the tracker's law state must be writable float64 C-contiguous arrays")
            self._law_alive[block] = arrays
            for slot, a in enumerate(arrays):
                self.plan.law_arrays[block][slot] = _native.address(a)
