r"""One representation of a continuous parameter symmetry, used by every later layer.

Kunin et al. 2021 (§3, Appendix A): a symmetry is a group action on a subset A of the parameters
that leaves the loss unchanged; its generator xi(theta) gives <grad L, xi> = 0 and a Noether charge:

    translation  theta_A -> theta_A + c 1            charge  <theta_A, 1>
    scale        theta_A -> a theta_A                charge  |theta_A|^2
    rescale      (theta_A1, theta_A2) -> (a theta_A1, theta_A2 / a)
                                                     charge  |theta_A1|^2 - |theta_A2|^2

A ``Slot`` names the sub-tensor params[param].narrow(dim, start, stop - start); a ``Symmetry``
is its kind plus the slots it acts on ("incoming" for every kind, "outgoing" for rescale). A
``SymmetrySet`` builds, once, the index plan that evaluates the charges of all symmetries of a
kind in one index_select + index_add_ per (parameter, dim, sign), however many units there are.
"""

from __future__ import annotations

import ctypes
import enum
import functools
import math
import operator
import types
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np
import torch
from torch import Tensor, nn

from . import sharded

__all__ = ["Kind", "Slot", "Symmetry", "SymmetrySet", "act", "slot_fits", "act_gl", "act_rotation", "generator", "generator_entries", "gl_charges",
           "gl_generator_combination", "gl_generator_inner", "permutation_generators", "permute", "random_gl_element",
           "unit_matrix"]


class Kind(enum.StrEnum):
    """A str, so that ``sym.kind == "scale"`` holds for callers."""

    TRANSLATION = "translation"  # theta_A -> theta_A + c 1 (parameters feeding a softmax)
    SCALE = "scale"  # theta_A -> a theta_A (parameters feeding a normalisation)
    RESCALE = "rescale"  # (in, out) -> (a in, out / a) (a positively homogeneous unit)
    PERMUTATION = "permutation"  # discrete: reorder a layer's units (rows in, columns out); no charge
    GL = "gl"  # (in, out) -> (M in, M^-T out) along the unit axis: one attention head's (W_Q, W_K)
    # or (W_V, W_O^T); its charge is the matrix in in^T - out out^T
    ROTATION = "rotation"  # (x, y) -> (x cos a - y sin a, x sin a + y cos a), slot i of incoming (x)
    # with slot i of outgoing (y): the rotation part of a rotary frequency pair's rotation-scaling (query
    # and key rotated together); its generator (-y, x) is antisymmetric, so it has no Noether charge

    @property
    def one_parameter(self) -> bool:
        """theta -> exp(amount * generator) theta with a scalar Noether charge."""
        return self in (Kind.TRANSLATION, Kind.SCALE, Kind.RESCALE)


def slot_fits(slot: Slot, shapes: Mapping[str, Sequence[int]]) -> bool:
    """Whether ``slot`` is a block of a parameter in ``shapes`` (name -> shape): the name known, the
    dimension in range, the block inside it."""
    shape = shapes.get(slot.param)
    return shape is not None and -len(shape) <= slot.dim < len(shape) and slot.stop <= shape[slot.dim]


@dataclass(frozen=True)
class Slot:
    """params[param].narrow(dim, start, stop - start): a contiguous block along one dimension."""

    param: str
    dim: int
    start: int
    stop: int

    def __post_init__(self) -> None:
        if not 0 <= self.start < self.stop:
            raise ValueError(f"Slot {self.param}[dim {self.dim}]: need 0 <= start < stop, got {self.start}, {self.stop}")

    def view(self, params: Mapping[str, Tensor]) -> Tensor:
        return params[self.param].narrow(self.dim, self.start, self.stop - self.start)


@dataclass(frozen=True)
class Symmetry:
    """One symmetry group acting on ``incoming`` (and, for rescale, inversely on ``outgoing``)."""

    kind: Kind
    label: str  # the key in every sink and plot, e.g. "features.0:unit17"
    incoming: tuple[Slot, ...]
    outgoing: tuple[Slot, ...] = ()
    defect: float | None = None  # relative output change under a finite element, where it was measured
    units: int = 0  # PERMUTATION and GL: units along each slot's dim (0: the incoming slots' length)

    def __post_init__(self) -> None:
        if not self.incoming:
            raise ValueError(f"{self.label}: a symmetry must act on some parameters")
        if bool(self.outgoing) != (self.kind in (Kind.RESCALE, Kind.PERMUTATION, Kind.GL, Kind.ROTATION)):
            raise ValueError(f"{self.label}: only RESCALE, PERMUTATION, GL and ROTATION symmetries have outgoing "
                             f"slots (kind {self.kind})")
        if self.kind is Kind.ROTATION and (len(self.incoming) != len(self.outgoing) or any(
                (x.dim, x.stop - x.start) != (y.dim, y.stop - y.start) for x, y in zip(self.incoming, self.outgoing))):
            raise ValueError(f"{self.label}: a rotation pairs incoming slot i with outgoing slot i, along the same "
                             "dim and of equal lengths")
        if self.kind in (Kind.PERMUTATION, Kind.GL):
            count = self.unit_count
            if count < 1 or any((slot.stop - slot.start) % count for slot in self.slots):
                raise ValueError(f"{self.label}: every slot must span a whole number of entries per unit "
                                 f"({count} units)")

    @property
    def unit_count(self) -> int:
        """How many units a PERMUTATION reorders or a GL element mixes."""
        return self.units or self.incoming[0].stop - self.incoming[0].start

    @property
    def slots(self) -> tuple[Slot, ...]:
        return self.incoming + self.outgoing

    def charge(self, model: nn.Module) -> Tensor:
        """This symmetry's Noether charge (float64, shape (1,)); SymmetrySet.charges does many at once."""
        params = dict(model.named_parameters())
        device = next(iter(params.values())).device
        return SymmetrySet((self,), device).charges(self.kind, params)


def _form(kind: Kind, block: Tensor) -> Tensor:
    """The charge density of one slot element: theta for translation, theta^2 otherwise."""
    return block if kind is Kind.TRANSLATION else block.square()


@dataclass(frozen=True)
class _Gather:
    """All slot elements of one (param, dim, sign): which indices along dim, and whose charge."""

    param: str
    dim: int
    sign: float
    index: Tensor  # (m,) indices along dim
    row: Tensor  # (m,) the symmetry (row of the charge vector) each index belongs to
    whole: bool  # index == arange(size along dim): every index, in order


@dataclass(frozen=True)
class _Plan:
    size: int
    gathers: tuple[_Gather, ...]


def _plan(symmetries: tuple[Symmetry, ...], device: torch.device, sizes: Mapping[tuple[str, int], int]) -> _Plan:
    buckets: dict[tuple[str, int, float], tuple[list[int], list[int]]] = {}
    for row, sym in enumerate(symmetries):
        for sign, slots in ((1.0, sym.incoming), (-1.0, sym.outgoing)):
            for slot in slots:
                indices, rows = buckets.setdefault((slot.param, slot.dim, sign), ([], []))
                indices.extend(range(slot.start, slot.stop))
                rows.extend([row] * (slot.stop - slot.start))
    gathers = tuple(
        _Gather(param, dim, sign, torch.tensor(indices, device=device), torch.tensor(rows, device=device),
                indices == list(range(sizes.get((param, dim), -1))))
        for (param, dim, sign), (indices, rows) in buckets.items()
    )
    return _Plan(len(symmetries), gathers)


@dataclass(frozen=True)
class _UnitPlan:
    """Every (param, dim) that a scale or rescale slot reads, laid out as one vector of units.

    ``vectors`` (1-D parameters) are concatenated and multiplied in one pass; every other parameter
    is reduced once per indexed dim. ``position`` / ``row`` / ``sign`` then carry each unit into its
    symmetry's row (scale symmetries first, then rescale).
    """

    vectors: tuple[str, ...]
    tensors: tuple[tuple[str, tuple[int, ...]], ...]  # (param, dims a slot indexes, ascending)
    position: Tensor
    row: Tensor
    sign: Tensor
    cover: Tensor  # unit entries whose sum is sum_p <x_p, y_p> over these parameters: each
    # parameter once (a 1-D one whole, any other by its sums along its first indexed dim)
    native: _NativeLayout | None  # the same units for the C kernel; None where a slot indexes a dim >= 2


@dataclass(frozen=True, eq=False)
class _NativeLayout:
    """``_fused.c``'s view of the unit plan: every parameter (the 1-D ones, then the others) as a
    contiguous (O, I, K) block whose dim-0 sums go to units[row + o] and dim-1 sums to units[col + i]
    (-1: not wanted); and the plan's scatter of units into groups, as NumPy arrays for ``sw_scatter``."""

    names: tuple[str, ...]
    shapes: tuple[torch.Size, ...]
    blocks: ctypes.Array  # (O, I, K) per parameter, flattened (int64)
    row_offset: ctypes.Array
    col_offset: ctypes.Array
    size: int  # units in all
    groups: int  # scale + rescale symmetries
    position: np.ndarray  # the _UnitPlan's entries, for the kernel's scatter (sw_scatter)
    row: np.ndarray
    sign: np.ndarray
    cover: np.ndarray
    @functools.cached_property
    def shape_list(self) -> list[torch.Size]:
        """``shapes`` as a list, to compare a call's shapes with in one operation."""
        return list(self.shapes)

    @functools.cached_property
    def scatter_arguments(self) -> tuple:
        """``sw_scatter``'s plan arguments (the NumPy arrays' addresses, taken once)."""
        return (len(self.row), self.position.ctypes.data, self.row.ctypes.data, self.sign.ctypes.data,
                len(self.cover), self.cover.ctypes.data, self.groups)


def _native_layout(vectors: tuple[str, ...], tensors, offset: Mapping[tuple[str, int], int],
                   shapes: Mapping[str, tuple[int, ...]], size: int, groups: int, position: Tensor, row: Tensor,
                   sign: Tensor, cover: Tensor) -> _NativeLayout | None:
    blocks, rows, cols = [], [], []
    for name in vectors:
        blocks += [1, shapes[name][0], 1]
        rows.append(-1)
        cols.append(offset[(name, 0)])
    for name, used in tensors:
        if any(d > 1 for d in used):
            return None
        shape = shapes[name]
        blocks += [shape[0], shape[1] if len(shape) > 1 else 1, math.prod(shape[2:])]
        rows.append(offset[(name, 0)] if 0 in used else -1)
        cols.append(offset[(name, 1)] if 1 in used else -1)
    array = lambda values: (ctypes.c_int64 * len(values))(*values)
    names = (*vectors, *(name for name, _ in tensors))
    # the scatter's index arrays, kept alive here for the kernel
    position, row, sign, cover = (np.ascontiguousarray(t.cpu().numpy()) for t in (position, row, sign, cover))
    return _NativeLayout(names, tuple(torch.Size(shapes[name]) for name in names), array(blocks), array(rows),
                         array(cols), size, groups, position.astype(np.int64), row.astype(np.int64),
                         sign.astype(np.float64), cover.astype(np.int64))


def _unit_plan(plans: Mapping[Kind, _Plan], shapes: Mapping[str, tuple[int, ...]], device: torch.device) -> _UnitPlan:
    gathers = [(g, 0) for g in plans[Kind.SCALE].gathers] + [(g, plans[Kind.SCALE].size) for g in plans[Kind.RESCALE].gathers]
    dims: dict[str, set[int]] = {}
    for g, _ in gathers:
        dims.setdefault(g.param, set()).add(g.dim)
    vectors = tuple(name for name in dims if len(shapes[name]) == 1)
    tensors = tuple((name, tuple(sorted(dims[name]))) for name in dims if len(shapes[name]) != 1)
    offset, start = {}, 0
    for name in vectors:
        offset[(name, 0)], start = start, start + shapes[name][0]
    for name, used in tensors:
        for d in used:
            offset[(name, d)], start = start, start + shapes[name][d]
    empty = torch.zeros(0, dtype=torch.long, device=device)
    position = torch.cat([empty] + [g.index + offset[(g.param, g.dim)] for g, _ in gathers])
    row = torch.cat([empty] + [g.row + row_offset for g, row_offset in gathers])
    sign = torch.cat([empty.double()] + [torch.full((len(g.index),), g.sign, dtype=torch.float64, device=device)
                                         for g, _ in gathers])
    vector_length = sum(shapes[name][0] for name in vectors)
    cover = torch.cat([torch.arange(vector_length, device=device)]
                      + [torch.arange(offset[(name, used[0])], offset[(name, used[0])] + shapes[name][used[0]], device=device)
                         for name, used in tensors])
    groups = plans[Kind.SCALE].size + plans[Kind.RESCALE].size
    native = _native_layout(vectors, tensors, offset, shapes, start, groups, position, row, sign, cover)
    return _UnitPlan(vectors, tensors, position, row, sign, cover, native)


_NATIVE_DTYPES = {torch.float32: 0, torch.float64: 1}
_QUADRATIC_KINDS = (Kind.SCALE, Kind.RESCALE)


def _any_sharded(names: tuple[str, ...], pairs, norms) -> bool:
    """Whether a ``fused_sums`` call is over DTensors (FSDP2): its first x tensor, or first norm tensor."""
    if pairs and names:
        return sharded.is_sharded(pairs[0][0][names[0]])
    return any(sharded.is_sharded(a[0]) for a, _ in norms if a)


_data_ptr, _shape, _dtype, _is_cpu = Tensor.data_ptr, operator.attrgetter("shape"), operator.attrgetter("dtype"), \
    operator.attrgetter("is_cpu")


def _takes(t: Tensor, dtype: torch.dtype) -> bool:
    """Whether the C kernel can read ``t`` as a flat host array of ``dtype``."""
    return t.dtype == dtype and t.is_cpu and t.is_contiguous()


def _native_units(layout: _NativeLayout, pairs, norms, copy_into=None, moved_from=None
                  ) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None] | None:
    """``_units`` by the C kernel (``_fused.c``), scattered to (signed, unsigned, whole) rows per pair
    (float64 NumPy: the kernel's output is already on the host), and the norms. None where it does
    not apply (not CPU, mixed or other dtypes, non-contiguous or resized tensors, no compiler): the
    caller then runs the eager kernel."""
    from . import _native

    def address(array: np.ndarray | None) -> int | None:
        return None if array is None else _native.address(array)

    lib = _native.library()
    if lib is None:
        return None
    dtype = pairs[0][0][layout.names[0]].dtype
    code = _NATIVE_DTYPES.get(dtype)
    if code is None:
        return None
    seen: dict[int, list[int] | None] = {}  # id(mapping) -> its tensors' addresses: a mapping in several pairs once

    def addresses(mapping) -> list[int] | None:
        """The addresses of ``mapping``'s tensors in ``layout.names`` order, None where the kernel cannot
        read one (it trusts every shape and layout): checked at every call (no tensor is held past it),
        each test one C-level ``map`` over the tensors rather than Python per tensor."""
        key = id(mapping)
        if key not in seen:
            tensors = list(map(mapping.__getitem__, layout.names))
            ok = (list(map(_shape, tensors)) == layout.shape_list and set(map(_dtype, tensors)) == {dtype}
                  and all(map(_is_cpu, tensors)) and all(map(Tensor.is_contiguous, tensors)))
            seen[key] = list(map(_data_ptr, tensors)) if ok else None
        return seen[key]

    xs, ys = [], []
    for x, y in pairs:
        x_at, y_at = addresses(x), addresses(y)
        if x_at is None or y_at is None:
            return None
        xs += x_at
        ys += y_at
    copy_at, moved_at = (None if mapping is None else addresses(mapping) for mapping in (copy_into, moved_from))
    if (copy_into is not None and copy_at is None) or (moved_from is not None and moved_at is None):
        return None
    squares = []
    for a, b in norms:
        if b is not None and len(a) != len(b):
            return None
        numel, a_at, b_at = [], [], []
        for i, t in enumerate(a):
            u = b[i] if b is not None else t
            if u.shape != t.shape or not (_takes(t, dtype) and _takes(u, dtype)):
                return None
            numel.append(t.numel())
            a_at.append(t.data_ptr())
            b_at.append(u.data_ptr())
        squares.append((numel, a_at, b_at if b is not None else None))

    def pointer_array(values, kind=np.uintp):
        """``values`` as a C array (a NumPy array: one conversion, no cache to keep), or None."""
        return None if values is None else np.array(values, dtype=kind)

    # the norms first (few, small tensors, read before the copy), and every array made, so that after the
    # pass, which leaves the caches cold, only the scatter runs (measured: Python after it ran several
    # times slower than before it)
    totals = None
    if squares:
        totals = np.empty(len(squares))
        for i, (numel, a_at, b_at) in enumerate(squares):
            if not numel:
                totals[i] = 0.0
                continue
            numel, a_at, b_at = pointer_array(numel, np.int64), pointer_array(a_at), pointer_array(b_at)
            totals[i] = lib.sw_sumsq(code, len(numel), address(numel), address(a_at), address(b_at))
        np.sqrt(totals, out=totals)
    units = np.zeros((len(pairs), layout.size))
    scattered = np.zeros((len(pairs), 2 * layout.groups + 1))
    moved = np.zeros(()) if moved_from is not None else None
    # the arrays are held in locals until the call returns: the addresses stay valid
    xs, ys, copy_at, moved_at = (pointer_array(v) for v in (xs, ys, copy_at, moved_at))
    if lib.sw_units(code, len(pairs), len(layout.names), layout.blocks, layout.row_offset, layout.col_offset,
                    address(xs), address(ys), address(units), layout.size, address(copy_at), address(moved_at),
                    address(moved), _native.threads()):
        return None  # its scratch memory could not be allocated
    lib.sw_scatter(len(pairs), layout.size, address(units), *layout.scatter_arguments, address(scattered))
    return scattered, totals, np.sqrt(moved, out=moved) if moved is not None else None


def _units(dims: tuple[tuple[int, ...], ...], vectors: list[tuple[Tensor, Tensor]],
           tensors: list[tuple[list[Tensor], list[Tensor]]],
           norms: tuple[tuple[list[Tensor], list[Tensor] | None], ...] = (),
           scratch: list[Tensor] | None = None) -> tuple[Tensor | None, Tensor | None]:
    """The per-unit sums of x * y that ``quadratic_sums`` scatters into symmetries, one row per
    pair (float64): the 1-D parameters (concatenated), then one vector per other parameter and dim;
    and, in the same pass, the Euclidean norms |a| (b None) or |a - b| of each ``norms`` entry (float64).
    All in one call, so that a compiled kernel reads a tensor shared by pairs and norms once.
    ``scratch`` (eager only): one preallocated tensor per non-1-D parameter for its products, so that a
    per-step caller does not allocate (and fault in) parameter-sized memory at every call."""
    rows = []
    for pair, (xs, ys) in enumerate(tensors):
        pieces = [vectors[pair][0] * vectors[pair][1]] if vectors else []
        for index, (used, x, y) in enumerate(zip(dims, xs, ys)):
            buffer = scratch[index] if scratch is not None else None
            reuse = buffer is not None and x.dtype == y.dtype == buffer.dtype and x.shape == buffer.shape
            product = torch.mul(x, y, out=buffer) if reuse else x * y
            for d in used:
                # leading dims summed first, trailing ones as rows: both contiguous reductions,
                # several times faster (eager) than one sum over scattered dims
                lead = product.sum(dim=tuple(range(d))) if d > 0 else product
                pieces.append(lead.reshape(lead.shape[0], -1).sum(1) if lead.ndim > 1 else lead)
        rows.append(torch.cat(pieces))
    if not norms:
        return (torch.stack(rows).double() if rows else None), None
    device = next((a[0].device for a, _ in norms if a), torch.device("cpu"))
    totals = []
    for a, b in norms:
        if not a:  # an empty list of tensors has norm 0
            totals.append(torch.zeros((), dtype=torch.float64, device=device))
            continue
        totals.append(_norm(a, b))
    return (torch.stack(rows).double() if rows else None), torch.stack(totals)


@functools.cache
def _compiled_units(structure: tuple):
    """torch.compile of a copy of ``_units`` per call structure (the lengths of every list it takes).
    Dynamo keeps its graphs per code object, and re-checking one code object's guards against calls
    with lists of other lengths fails inside dynamo (IndexError, torch 2.13) instead of recompiling:
    each structure gets a code object of its own."""
    copy = types.FunctionType(_units.__code__.replace(), _units.__globals__, _units.__name__, _units.__defaults__)
    return torch.compile(copy, dynamic=False, fullgraph=True)


class FusedSums(NamedTuple):
    """What ``SymmetrySet.fused_sums`` returns (float64 tensors)."""

    signed: Tensor  # (pairs, scale + rescale groups): sum_slots sign <x_A, y_A>
    unsigned: Tensor | None  # the same with +1 on every slot, where asked
    whole: Tensor  # (pairs,): sum_p <x_p, y_p> over the parameters the groups touch
    norms: Tensor | None  # (entries,): |a| or |a - b|
    moved: Tensor | None = None  # |x_0 - moved_from| over ``quadratic_params``, where asked


def _on_host(sums: FusedSums) -> FusedSums:
    """Every field of ``sums`` as a float64 NumPy array (``fused_sums(host=True)`` off the C kernel)."""
    return FusedSums(*(None if t is None else t.detach().to("cpu", torch.float64).numpy() for t in sums))


def _norm(a: list[Tensor], b: list[Tensor] | None = None) -> Tensor:
    """sqrt(sum_i |a_i - b_i|^2) (|a| without ``b``), float64 whatever the tensors' dtype: a difference
    (theta_t+1 - theta_t) in float32 rounds to ~1e-10 of |theta|, and a float32 sum is off by ~1e-8."""
    terms = a if b is None else torch._foreach_sub([t.double() for t in a], [t.double() for t in b])
    return torch.stack(torch._foreach_norm(terms, 2, dtype=torch.float64)).square().sum().sqrt()


def _from_host(sums: FusedSums) -> FusedSums:
    """``_on_host``'s inverse: every field as a float64 CPU tensor (``fused_sums(host=False)``)."""
    return FusedSums(*(None if a is None else torch.from_numpy(np.asarray(a, dtype=np.float64)) for a in sums))


# what wrappers put before a model's parameter names (torch.compile, DistributedDataParallel):
# symmetries are named on the model inside (``trace.unwrapped_model``)
_WRAPPER_PREFIXES = ("_orig_mod.", "module.")


@dataclass(frozen=True, eq=False)
class SymmetrySet:
    """The symmetries found on one model, with a precomputed charge plan per kind."""

    symmetries: tuple[Symmetry, ...]
    device: torch.device = torch.device("cpu")
    unanalysed: tuple[str, ...] = ()  # modules detection could not analyse, by qualified name
    sizes: tuple[tuple[tuple[str, int], int], ...] = ()  # ((param, dim), size): lets whole-tensor
    # gathers skip index_select; filled by find_symmetries, optional otherwise
    partial: tuple[str, ...] = ()  # modules torch.fx could not trace whole, analysed child by child
    rejected: tuple[str, ...] = ()  # candidates detection proposed but the numerical check refuted
    reasons: tuple[tuple[str, str], ...] = ()  # (parameter, why no symmetry covers it) for unanalysed ones
    # the norms' epsilons the exact check set to 0 (scale symmetries hold exactly only there)
    epsilons: tuple[float, ...] = ()
    # the output's class axis the translations were found along (find_symmetries' class_dim); None
    # where the output was not taken for logits
    class_dim: int | None = None
    _plans: dict = field(init=False, repr=False)
    _by_kind: dict = field(init=False, repr=False)
    _unit_plans: dict = field(init=False, repr=False)  # parameter shapes -> _UnitPlan, built on first use
    _scratch: dict = field(init=False, repr=False)  # (shape, dtype, device)s -> product buffers of fused_sums
    _host_plans: dict = field(init=False, repr=False)  # kind -> gathers with NumPy indices (host_charges)
    _localized: dict = field(init=False, repr=False)  # shard layouts -> sharded.Localized (FSDP2)
    _quadratic_params: tuple = field(init=False, repr=False)
    _param_names: tuple = field(init=False, repr=False)  # every parameter a slot names, in first-seen order
    _fitted: set = field(init=False, repr=False)  # the (name, shape)s check_params has found every slot to fit
    _incidence: dict = field(init=False, repr=False)  # kinds -> slot_incidence's arrays

    def __post_init__(self) -> None:
        labels = [s.label for s in self.symmetries]
        if len(labels) != len(set(labels)):
            duplicates = sorted({label for label in labels if labels.count(label) > 1})
            raise ValueError(f"SymmetrySet: duplicate labels {duplicates[:5]}")
        by_kind = {kind: tuple(s for s in self.symmetries if s.kind is kind) for kind in Kind}
        object.__setattr__(self, "_by_kind", by_kind)  # of_kind is called every training step
        plans = {kind: _plan(by_kind[kind], torch.device(self.device), dict(self.sizes))
                 for kind in Kind if kind.one_parameter}
        object.__setattr__(self, "_plans", plans)
        object.__setattr__(self, "_unit_plans", {})
        object.__setattr__(self, "_scratch", {})
        object.__setattr__(self, "_host_plans", {})
        object.__setattr__(self, "_localized", {})
        object.__setattr__(self, "_quadratic_params", tuple(dict.fromkeys(
            g.param for kind in (Kind.SCALE, Kind.RESCALE) for g in plans[kind].gathers)))
        object.__setattr__(self, "_param_names", tuple(dict.fromkeys(slot.param for sym in self.symmetries
                                                                     for slot in sym.slots)))
        object.__setattr__(self, "_fitted", set())
        object.__setattr__(self, "_incidence", {})

    def __iter__(self) -> Iterator[Symmetry]:
        return iter(self.symmetries)

    def __len__(self) -> int:
        return len(self.symmetries)

    @property
    def param_names(self) -> tuple[str, ...]:
        """Every parameter some slot names, in first-seen order."""
        return self._param_names

    def slot_incidence(self, kinds: Sequence[Kind | str]) -> tuple[np.ndarray, np.ndarray]:
        """Which parameters each symmetry of ``kinds`` reads (``of_kind`` order, the kinds in turn), as
        (starts, params): symmetry i reads ``param_names[params[starts[i]:starts[i + 1]]]`` (the last to
        the end), each parameter once. For a caller that needs a per-symmetry fact over its parameters
        (their param group, whether one is frozen) as one array operation (``np.minimum.reduceat``)
        instead of a Python loop over thousands of symmetries; made once per set and kinds."""
        key = tuple(Kind(kind) for kind in kinds)
        found = self._incidence.get(key)
        if found is None:
            position = {name: i for i, name in enumerate(self._param_names)}
            starts, params = [], []
            for kind in key:
                for sym in self._by_kind[kind]:
                    starts.append(len(params))
                    params.extend(dict.fromkeys(position[slot.param] for slot in sym.slots))
            found = self._incidence[key] = (np.array(starts, dtype=np.intp), np.array(params, dtype=np.intp))
        return found

    def of_kind(self, kind: Kind | str) -> tuple[Symmetry, ...]:
        return self._by_kind[Kind(kind)]

    def check_params(self, params: Mapping[str, Tensor], what: str = "params", *, finite: bool = True) -> None:
        """Raise, in one line, where ``params`` (name -> tensor) cannot carry this set: a parameter a
        symmetry names is missing or of a shape its slots do not fit, or whose acted-on axis has another
        size than where the set was found (symmetries found on another model: ValueError), is no real
        floating-point tensor with values (complex, integer, meta: TypeError), or (``finite``) is not
        finite (ValueError, with the parameter's name)."""
        names = self._param_names
        missing = [name for name in names if name not in params]
        if missing:
            wrapped = next((prefix for prefix in _WRAPPER_PREFIXES
                            if all(prefix + name in params for name in missing)), None)
            hint = (f"the names given start with {wrapped!r}, a wrapper's (torch.compile: '_orig_mod.', DDP: "
                    "'module.'): give the wrapped model's named_parameters()" if wrapped is not None
                    else "give every parameter of the model they were found on (symmetries found on another model?)")
            raise ValueError(f"{what} lacks {len(missing)} parameter(s) these symmetries act on ({', '.join(missing[:3])}"
                             f"{', ...' if len(missing) > 3 else ''}): {hint}")
        shapes = {name: tuple(params[name].shape) for name in names}
        key = tuple(shapes.items())
        if key not in self._fitted:  # the slots' fit depends on the shapes alone: checked once per shapes
            for sym in self.symmetries:
                for slot in sym.slots:
                    if not slot_fits(slot, shapes):
                        raise ValueError(f"{what}[{slot.param!r}] has shape {shapes[slot.param]}, which symmetry "
                                         f"{sym.label} does not fit (dim {slot.dim}, {slot.start}:{slot.stop}): found on "
                                         "another model?")
            for (name, dim), size in self.sizes:
                if name in shapes and -len(shapes[name]) <= dim < len(shapes[name]) and shapes[name][dim] != size:
                    raise ValueError(f"{what}[{name!r}] has size {shapes[name][dim]} along dim {dim}, where these "
                                     f"symmetries were found it had {size}: they belong to another model; find them on this one")
            self._fitted.add(key)
        for name in names:
            tensor = params[name]
            if not isinstance(tensor, Tensor) or not tensor.is_floating_point() or tensor.is_meta:
                got = type(tensor).__name__ if not isinstance(tensor, Tensor) else \
                    ("a meta tensor" if tensor.is_meta else f"dtype {tensor.dtype}")
                raise TypeError(f"{what}[{name!r}] must be a real floating-point tensor with values, got {got}")
            if finite and not bool(torch.isfinite(tensor).all()):
                raise ValueError(f"{what}[{name!r}] is not finite (NaN or inf): no group element or projection is "
                                 "defined there")

    def counts(self) -> dict[str, int]:
        return {kind.value: len(self.of_kind(kind)) for kind in Kind}

    def to(self, device: torch.device | str) -> SymmetrySet:
        return SymmetrySet(self.symmetries, torch.device(device), self.unanalysed, self.sizes, self.partial,
                           self.rejected, self.reasons, self.epsilons, self.class_dim)

    def charges(self, kind: Kind | str, params: Mapping[str, Tensor], *, absolute: bool = False) -> Tensor:
        """Charges of every symmetry of ``kind``, float64, in ``of_kind`` order.

        One index_select and one index_add_ per (parameter, dim, sign), whatever the number of
        units: translation <theta_A, 1>, scale |theta_A|^2, rescale |theta_A1|^2 - |theta_A2|^2.
        ``absolute=True`` (translation only): sum |theta_A|, the charge's scale.
        """
        kind = Kind(kind)
        if not kind.one_parameter:
            raise ValueError(f"{kind.value} symmetries have no scalar Noether charge "
                             "(permutations none, GL a matrix: see gl_charges)")
        if absolute and kind is not Kind.TRANSLATION:
            raise ValueError(f"absolute=True is for translation charges (sum |theta_A|), not {kind.value}")
        try:
            return self._charges(kind, params, absolute)
        except (KeyError, IndexError, RuntimeError, TypeError):
            self.check_params(params)  # a one-line error where the parameters are what failed (no cost otherwise)
            raise

    def _charges(self, kind: Kind, params: Mapping[str, Tensor], absolute: bool) -> Tensor:
        plan = self._plans[kind]
        if plan.gathers and sharded.is_sharded(params[plan.gathers[0].param]):
            return self._sharded_charges(kind, params, absolute)
        out = torch.zeros(plan.size, dtype=torch.float64, device=self.device)
        for g in plan.gathers:
            tensor = params[g.param].detach()
            # a gather over every index in order reads the tensor as it is (no copy)
            block = tensor if g.whole else tensor.index_select(g.dim, g.index)
            others = [d for d in range(block.ndim) if d != g.dim]
            if kind is Kind.TRANSLATION and absolute:
                # abs then sum: several times faster than vector_norm(ord=1) on these small blocks
                per_index = block.abs().sum(dim=others, dtype=torch.float64) if others else block.double().abs()
            elif kind is Kind.TRANSLATION:
                per_index = block.sum(dim=others, dtype=torch.float64) if others else block.double()
            else:
                # float64 accumulation without a float64 copy of the block
                per_index = torch.linalg.vector_norm(block, 2, dim=others, dtype=torch.float64).square() \
                    if others else block.double().square()
            out.index_add_(0, g.row, g.sign * per_index)
        return out


    def host_charges(self, kind: Kind | str, arrays: Mapping[str, np.ndarray], *, absolute: bool = False) -> np.ndarray:
        """``charges`` on NumPy arrays (float64 result): for a per-step caller that holds NumPy views
        of CPU parameters, where a few NumPy operations cost less than the same torch calls."""
        kind = self._one_parameter(kind)
        if absolute and kind is not Kind.TRANSLATION:
            raise ValueError(f"absolute=True is for translation charges (sum |theta_A|), not {kind.value}")
        plan = self._plans[kind]
        if kind not in self._host_plans:  # the gathers' index vectors as NumPy arrays, once
            self._host_plans[kind] = [(g, None if g.whole else g.index.cpu().numpy(), g.row.cpu().numpy())
                                      for g in plan.gathers]
        out = np.zeros(plan.size)
        for g, index, row in self._host_plans[kind]:
            block = arrays[g.param] if index is None else np.take(arrays[g.param], index, axis=g.dim)
            if absolute:
                block = np.abs(block)
            elif kind is not Kind.TRANSLATION:
                block = np.square(block, dtype=np.float64)
            others = tuple(d for d in range(block.ndim) if d != g.dim)
            per_index = block.sum(axis=others, dtype=np.float64) if others else block.astype(np.float64)
            np.add.at(out, row, g.sign * per_index)
        return out

    def generator_inner(self, kind: Kind | str, params: Mapping[str, Tensor], vectors: Mapping[str, Tensor]) -> Tensor:
        """<xi_k(theta), v> for every symmetry k of ``kind`` (float64, ``of_kind`` order): J v.

        xi is 1_A (translation), theta_A (scale), (theta_A1, -theta_A2) (rescale); one gather per
        (parameter, dim, sign) as in ``charges``.
        """
        kind = self._one_parameter(kind)
        plan = self._plans[kind]
        out = torch.zeros(plan.size, dtype=torch.float64, device=self.device)
        for g in plan.gathers:
            v = vectors[g.param].detach()
            v = v if g.whole else v.index_select(g.dim, g.index)
            if kind is not Kind.TRANSLATION:
                theta = params[g.param].detach()
                v = (theta if g.whole else theta.index_select(g.dim, g.index)).double() * v.double()
            others = [d for d in range(v.ndim) if d != g.dim]
            per_index = v.sum(dim=others, dtype=torch.float64) if others else v.double()
            out.index_add_(0, g.row, g.sign * per_index)
        return out

    def generator_combination(self, kind: Kind | str, params: Mapping[str, Tensor],
                              coefficients: Tensor) -> dict[str, Tensor]:
        """sum_k c_k xi_k(theta) as one dense float64 tensor per touched parameter: J^T c."""
        kind = self._one_parameter(kind)
        plan = self._plans[kind]
        out: dict[str, Tensor] = {}
        for g in plan.gathers:
            theta = params[g.param].detach()
            dense = out.setdefault(g.param, torch.zeros(theta.shape, dtype=torch.float64, device=theta.device))
            weight = (g.sign * coefficients.to(torch.float64)[g.row]).reshape(
                [-1 if d == g.dim else 1 for d in range(theta.ndim)])
            if kind is Kind.TRANSLATION:
                block = weight.expand([len(g.index) if d == g.dim else n for d, n in enumerate(theta.shape)])
            else:
                block = weight * theta.index_select(g.dim, g.index).double()
            dense.index_add_(g.dim, g.index, block)
        return out

    @property
    def quadratic_params(self) -> tuple[str, ...]:
        """The parameters some scale or rescale slot reads: all that ``quadratic_sums`` touches."""
        return self._quadratic_params

    def native_layout(self, shapes: Mapping[str, tuple[int, ...]]) -> _NativeLayout | None:
        """The C kernel's view of the unit plan for parameters of these ``shapes`` (``quadratic_params``
        -> shape): the plan ``fused_sums`` uses, for a caller that drives ``_fused.c`` itself (the
        benchmarks/monitor_floor.py). None where the kernel cannot take it (a group indexes a dim > 1)."""
        key = tuple(torch.Size(shapes[name]) for name in self.quadratic_params)
        plan = self._unit_plans.get(key)
        if plan is None:
            plan = self._unit_plans.setdefault(key, _unit_plan(self._plans, dict(zip(self.quadratic_params, key)),
                                                               torch.device(self.device)))
        return plan.native

    @torch.no_grad()
    def quadratic_sums(self, pairs: list[tuple[Mapping[str, Tensor], Mapping[str, Tensor]]], *,
                       unsigned: bool = False, compile: bool = False) -> Tensor:
        r"""sum_slots sign <x_A, y_A> for every scale and rescale symmetry and every pair (x, y).

        Returns (len(pairs), n_scale + n_rescale) float64: the scale symmetries in ``of_kind``
        order, then the rescale ones; sign is -1 on rescale outgoing slots. (theta, theta) gives
        the charges, (g, g) the signed |g_A|^2, (b, g) ``generator_inner`` with b for theta.
        ``unsigned=True`` returns (2, len(pairs), groups): the signed sums and the sums with +1
        everywhere (|theta_A1|^2 + |theta_A2|^2), from the same pass.

        One product and one reduction per parameter and pair serve both kinds: this is the
        per-step kernel of the conservation tracker. Products and sums are taken in the tensors'
        own dtype (torch's pairwise summation: relative error ~ eps log n; float64 for a float64
        model), then accumulated per symmetry in float64; on the CPU the C kernel of ``fused_sums``
        takes them in float64 throughout. ``compile=True`` fuses each product with its reductions
        (torch.compile, one compile of a few seconds per model), for devices the C kernel does not
        serve: the eager kernel is bound by writing and re-reading the products.
        """
        if not pairs:
            raise ValueError("quadratic_sums needs at least one (x, y) pair")
        fused = self.fused_sums(pairs, unsigned=unsigned, compile=compile)
        signed, unsigned_sums = fused.signed, fused.unsigned
        return torch.stack([signed, unsigned_sums]) if unsigned else signed

    @torch.no_grad()
    def fused_sums(self, pairs: list[tuple[Mapping[str, Tensor], Mapping[str, Tensor]]], *, unsigned: bool = False,
                   norms: tuple[tuple[list[Tensor], list[Tensor] | None], ...] = (),
                   compile: bool = False, native: bool = True, copy_into: Mapping[str, Tensor] | None = None,
                   moved_from: Mapping[str, Tensor] | None = None, host: bool = False) -> FusedSums:
        r"""``quadratic_sums`` of ``pairs`` and whole-vector norms, from one pass over the tensors.

        Returns ``FusedSums(signed, unsigned, whole, norms)``: signed (len(pairs), groups) as
        ``quadratic_sums``; unsigned the same with +1 on every slot (None unless asked); whole
        (len(pairs),) = sum_p <x_p, y_p> over ``quadratic_params``, summed from the unit sums (each
        parameter's sums along one of its dims add up to its inner product), so |g|^2 over these
        parameters costs no pass of its own; norms (len(norms),) float64 with |a| = sqrt(sum_i
        |a_i|^2) for an entry (a, None) and |a - b| for (a, b), a and b lists of tensors (any
        parameters). This is the training monitor's per-step kernel: with ``compile=True`` one fused
        graph reads each tensor once.

        In the same pass over pair 0's x, restricted to ``quadratic_params`` (tensors of the same shape
        and dtype): ``copy_into`` receives a copy of each x tensor, and ``moved_from`` gives ``moved`` =
        |x - moved_from|, so that a caller keeping theta_t to measure the update by does not read theta
        once more for it.

        ``host=True``: every field as a float64 NumPy array instead (the C kernel's output as it is; a
        copy off a GPU), for a per-step caller whose arithmetic is on the host anyway.

        On the CPU (``native=True``, ``compile=False``) the pass runs in the C kernel ``_fused.c``: one
        read of each tensor, products and sums in float64. It is built with the system's C compiler at
        first use; where that fails, or for tensors it does not take (GPU, float16, non-contiguous),
        the eager torch kernel computes the same sums (products and per-tensor sums in the tensors'
        dtype, so to float32 rounding for a float32 model).
        """
        size = self._plans[Kind.SCALE].size + self._plans[Kind.RESCALE].size

        def kernel_for(tensors: int, vectors: bool):
            if not compile:
                return _units
            # every list length the call has: a code object per structure (see _compiled_units)
            return _compiled_units((len(pairs), tensors, vectors, tuple((len(a), b is None) for a, b in norms)))
        if (copy_into is not None or moved_from is not None) and not pairs:
            raise ValueError("copy_into and moved_from act on pair 0's x: give at least one pair")
        if _any_sharded(self.quadratic_params, pairs, norms):
            return self._sharded_fused_sums(pairs, unsigned=unsigned, norms=norms, compile=compile, native=native,
                                            copy_into=copy_into, moved_from=moved_from, host=host)
        if size == 0 or not pairs:
            empty = torch.zeros(len(pairs), 0, dtype=torch.float64, device=self.device)
            totals = kernel_for(0, False)((), [], [], tuple(norms), None)[1] if norms else None
            moved = empty.new_zeros(()) if moved_from is not None else None  # no quadratic parameters
            sums = FusedSums(empty, empty if unsigned else None, empty.new_zeros(len(pairs)), totals, moved)
            return _on_host(sums) if host else sums
        first = pairs[0][0]
        key = tuple(first[name].shape for name in self.quadratic_params)
        plan = self._unit_plans.get(key)
        if plan is None:
            shapes = dict(zip(self.quadratic_params, key))
            plan = self._unit_plans.setdefault(key, _unit_plan(self._plans, shapes, torch.device(self.device)))
        if native and not compile and plan.native is not None and self.device.type == "cpu":
            found = _native_units(plan.native, pairs, norms, copy_into, moved_from)
            if found is not None:
                scattered, totals, moved = found if host else (None if a is None else torch.from_numpy(a) for a in found)
                return FusedSums(scattered[:, :size], scattered[:, size:2 * size] if unsigned else None,
                                 scattered[:, 2 * size], totals, moved)
        dims = tuple(used for _, used in plan.tensors)
        flat: dict[int, Tensor | None] = {}  # id(mapping) -> its 1-D parameters concatenated, once

        def vectors(mapping: Mapping[str, Tensor]) -> Tensor | None:
            if id(mapping) not in flat:
                flat[id(mapping)] = torch.cat([mapping[name] for name in plan.vectors]) if plan.vectors else None
            return flat[id(mapping)]

        tensors = [([x[name] for name, _ in plan.tensors], [y[name] for name, _ in plan.tensors]) for x, y in pairs]
        scratch = None
        if not compile:
            first_pair = tensors[0][0]
            scratch_key = tuple((t.shape, t.dtype, t.device) for t in first_pair)
            scratch = self._scratch.get(scratch_key)
            if scratch is None:
                if len(self._scratch) > 4:  # callers alternating dtypes or devices: keep it small
                    self._scratch.clear()
                scratch = self._scratch[scratch_key] = [torch.empty_like(t) for t in first_pair]
        kernel = kernel_for(len(plan.tensors), bool(plan.vectors))
        units, totals = kernel(dims, [(vectors(x), vectors(y)) for x, y in pairs] if plan.vectors else [],
                               tensors, tuple(norms), scratch)
        sums = self._scatter(plan, units, totals, len(pairs), size, unsigned)
        sources = [pairs[0][0][name] for name in self.quadratic_params]
        if moved_from is not None:  # before any copy: copy_into may be moved_from
            sums = sums._replace(moved=_norm(sources, [moved_from[name] for name in self.quadratic_params]))
        if copy_into is not None:
            torch._foreach_copy_([copy_into[name] for name in self.quadratic_params], sources)
        return _on_host(sums) if host else sums

    def _local(self, params: Mapping[str, Tensor], quadratic: bool) -> sharded.Localized:
        """This set cut to the shards of ``params`` on this rank (cached per layout)."""
        kinds = _QUADRATIC_KINDS if quadratic else (Kind.TRANSLATION,)
        names = dict.fromkeys(slot.param for kind in kinds for sym in self.of_kind(kind) for slot in sym.slots)
        layouts = {name: sharded.layout_of(params[name]) for name in names}
        key = (quadratic, tuple(layouts.items()))
        found = self._localized.get(key)
        if found is None:
            found = self._localized[key] = sharded.localized(self, layouts, quadratic)
        return found

    def _sharded_charges(self, kind: Kind, params: Mapping[str, Tensor], absolute: bool) -> Tensor:
        """``charges`` of DTensor parameters: each rank's shards summed, then all-reduced (``sharded``)."""
        cut = self._local(params, kind is not Kind.TRANSLATION)
        mapping = {name: sharded.local(params[name]) for name in cut.parts.quadratic_params} \
            if kind is not Kind.TRANSLATION else {name: sharded.local(t) for name, t in params.items()}
        size = len(self.of_kind(kind))
        if kind is Kind.TRANSLATION:
            partial = cut.parts.charges(Kind.TRANSLATION, mapping, absolute=absolute).cpu().numpy() \
                if len(cut.parts) else np.zeros(0)
            total = np.bincount(cut.translation_column, weights=partial, minlength=size)
        else:
            partial = cut.parts.charges(Kind.SCALE, mapping).cpu().numpy() if len(cut.parts) else np.zeros(0)
            offset = 0 if kind is Kind.SCALE else len(self.of_kind(Kind.SCALE))
            columns = cut.quadratic_column - offset
            mine = (columns >= 0) & (columns < size)
            total = np.bincount(columns[mine], weights=(cut.quadratic_sign * partial)[mine], minlength=size)
        return torch.from_numpy(sharded.all_reduce(total)).to(self.device)

    def _sharded_fused_sums(self, pairs, *, unsigned: bool, norms, compile: bool, native: bool, copy_into,
                            moved_from, host: bool) -> FusedSums:
        """``fused_sums`` of DTensors: the same pass over each rank's shards (the set cut to them,
        ``sharded.localized``), the per-group partial sums placed in their global columns, and one
        all-reduce of every field (norms as sums of squares)."""
        size, n = self._plans[Kind.SCALE].size + self._plans[Kind.RESCALE].size, len(pairs)
        if not size or not n:  # norms only
            squares = np.array([sharded.local_squares(a, b) for a, b in norms], dtype=np.float64)
            totals = np.sqrt(np.maximum(sharded.all_reduce(squares), 0.0)) if norms else None
            empty = np.zeros((n, 0))
            sums = FusedSums(empty, empty if unsigned else None, np.zeros(n), totals,
                             np.zeros(()) if moved_from is not None else None)
            return sums if host else _from_host(sums)
        cut = self._local(pairs[0][0], quadratic=True)
        locals_: dict[int, dict] = {}

        def localize(mapping):
            if mapping is None:
                return None
            if id(mapping) not in locals_:
                locals_[id(mapping)] = {name: sharded.local(t) for name, t in mapping.items()}
            return locals_[id(mapping)]

        local_pairs = [(localize(x), localize(y)) for x, y in pairs]
        local_norms = tuple(([sharded.local(t) for t in a], None if b is None else [sharded.local(t) for t in b])
                            for a, b in norms)
        into, start = localize(copy_into), localize(moved_from)
        found = cut.parts.fused_sums(local_pairs, norms=local_norms, compile=compile, native=native, copy_into=into,
                                     moved_from=start, host=True)
        signed = np.stack([np.bincount(cut.quadratic_column, weights=cut.quadratic_sign * row, minlength=size)
                           for row in found.signed])
        plain = np.stack([np.bincount(cut.quadratic_column, weights=row, minlength=size) for row in found.signed])
        whole = np.array(found.whole, dtype=np.float64)
        moved_sq = float(found.moved) ** 2 if found.moved is not None else 0.0
        for name in cut.missing:  # parameters none of whose groups reach this rank's shard
            for i, (x, y) in enumerate(local_pairs):
                whole[i] += float(torch.sum(x[name].double() * y[name].double()))
            if start is not None:
                moved_sq += float(torch.linalg.vector_norm(local_pairs[0][0][name].double() - start[name].double())) ** 2
            if into is not None:
                into[name].copy_(local_pairs[0][0][name])
        norms_sq = np.square(np.asarray(found.norms, dtype=np.float64)) if found.norms is not None else np.zeros(0)
        reduced = sharded.all_reduce(np.concatenate([signed.ravel(), plain.ravel(), whole, norms_sq, [moved_sq]]))
        cuts = np.cumsum([signed.size, plain.size, n, len(norms_sq)])
        signed, plain, whole, norms_sq, moved_sq = np.split(reduced, cuts)
        sums = FusedSums(signed.reshape(n, size), plain.reshape(n, size) if unsigned else None, whole,
                         np.sqrt(np.maximum(norms_sq, 0.0)) if found.norms is not None else None,
                         np.sqrt(max(float(moved_sq[0]), 0.0)) if moved_from is not None else None)
        return sums if host else _from_host(sums)

    @staticmethod
    def _scatter(plan: _UnitPlan, units: Tensor, totals: Tensor | None, n_pairs: int, size: int,
                 unsigned: bool) -> FusedSums:
        """Unit sums -> per-symmetry sums (signed, and unsigned where asked) and whole inner products."""
        # index_select: advanced indexing's multithreaded gather stalls on a busy 2-core CPU
        whole = units.index_select(1, plan.cover).sum(1)
        units = units.index_select(1, plan.position)
        signed = units.new_zeros(n_pairs, size).index_add_(1, plan.row, units * plan.sign)
        plain = units.new_zeros(n_pairs, size).index_add_(1, plan.row, units) if unsigned else None
        return FusedSums(signed, plain, whole, totals)

    def _one_parameter(self, kind: Kind | str) -> Kind:
        kind = Kind(kind)
        if not kind.one_parameter:
            raise ValueError(f"{kind.value} is not a one-parameter group: it has no single generator per symmetry")
        return kind

def generator_entries(sym: Symmetry, params: Mapping[str, Tensor]) -> list[tuple[Slot, Tensor]]:
    """The Lie-algebra generator xi(theta) of ``sym`` as (slot, its values there) pairs, entries of
    overlapping slots adding up: 1 on the slots (translation), theta_A (scale), (theta_A1, -theta_A2)
    (rescale), (-y, x) on the paired slots (rotation). ``generator`` makes dense tensors of them,
    ``quotient.generator_matrix`` sparse columns."""
    if sym.kind is Kind.ROTATION:
        return [(target, sign * source.view(params).detach())
                for sign, targets, sources in ((-1.0, sym.incoming, sym.outgoing), (1.0, sym.outgoing, sym.incoming))
                for target, source in zip(targets, sources)]
    if not sym.kind.one_parameter:
        raise ValueError(f"{sym.label}: {sym.kind.value} is not a one-parameter group; see act_gl / permute")
    entries = []
    for sign, slots in ((1.0, sym.incoming), (-1.0, sym.outgoing)):
        for slot in slots:
            values = slot.view(params).detach()
            entries.append((slot, torch.ones_like(values) if sym.kind is Kind.TRANSLATION else sign * values))
    return entries


def generator(sym: Symmetry, params: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """The Lie-algebra generator xi(theta) of ``sym`` as one dense tensor per touched parameter.

    d/dc (action at c)|_{c=0} (``generator_entries``). <grad L, xi> = 0 is the infinitesimal statement
    of the symmetry.
    """
    out: dict[str, Tensor] = {}
    for slot, values in generator_entries(sym, params):
        dense = out.setdefault(slot.param, torch.zeros_like(params[slot.param]))
        dense.narrow(slot.dim, slot.start, slot.stop - slot.start).add_(values)
    return out


def act(sym: Symmetry, params: Mapping[str, Tensor], amount: float, *, copy: bool = True) -> dict[str, Tensor]:
    """Parameters moved by the finite group element exp(amount * generator).

    translation: + amount on the slots; scale: x e^amount; rescale: incoming x e^amount and
    outgoing x e^-amount. With ``copy`` the touched tensors are cloned first and the rest returned
    as they are; without it the tensors of ``params`` are modified in place (for composing many
    actions cheaply).
    """
    if not sym.kind.one_parameter:
        raise ValueError(f"{sym.label}: {sym.kind.value} is not a one-parameter group; use permute or act_gl")
    moved = dict(params)
    factor = math.exp(amount)
    for sign, slots in ((1.0, sym.incoming), (-1.0, sym.outgoing)):
        for slot in slots:
            tensor = _writable(moved, params, slot.param) if copy else moved[slot.param]
            block = tensor.narrow(slot.dim, slot.start, slot.stop - slot.start)
            if sym.kind is Kind.TRANSLATION:
                block.add_(amount)
            else:
                block.mul_(factor if sign > 0 else 1.0 / factor)
    return moved


def act_rotation(sym: Symmetry, params: Mapping[str, Tensor], angle: float, *, copy: bool = True) -> dict[str, Tensor]:
    """Parameters moved by the rotation exp(angle J): x -> x cos a - y sin a, y -> x sin a + y cos a
    for every (incoming x, outgoing y) slot pair. New tensors (without ``copy``: in place, as ``act``)."""
    if sym.kind is not Kind.ROTATION:
        raise ValueError(f"{sym.label}: act_rotation needs a ROTATION symmetry, got {sym.kind}")
    moved = dict(params)
    c, s = math.cos(angle), math.sin(angle)
    for x_slot, y_slot in zip(sym.incoming, sym.outgoing):
        for slot in (x_slot, y_slot):
            if copy:
                _writable(moved, params, slot.param)
        x, y = x_slot.view(moved), y_slot.view(moved)
        x0, y0 = x.clone(), y.clone()
        x.copy_(c * x0 - s * y0)
        y.copy_(s * x0 + c * y0)
    return moved


def random_gl_element(count: int, strength: float, generator: torch.Generator) -> Tensor:
    """expm(strength R), R Gaussian / sqrt(count): a well-conditioned random element of GL(count), float64."""
    generator_matrix = torch.randn(count, count, generator=generator, dtype=torch.float64) / count**0.5
    return torch.linalg.matrix_exp(strength * generator_matrix)


def _writable(moved: dict[str, Tensor], params: Mapping[str, Tensor], name: str) -> Tensor:
    """``moved[name]``, cloned first if it is still the caller's tensor (copy on first write)."""
    if moved[name] is params[name]:
        moved[name] = params[name].detach().clone()
    return moved[name]


def permute(sym: Symmetry, params: Mapping[str, Tensor], order: Tensor, *, copy: bool = True) -> dict[str, Tensor]:
    """Parameters with the units of a PERMUTATION symmetry reordered by ``order`` (new tensors;
    without ``copy``, in place, as ``act``): unit order[i] moves to position i in every incoming
    slot, and its block of columns with it in every outgoing slot (blocks of outgoing length /
    units columns, e.g. a channel's pixels)."""
    if sym.kind is not Kind.PERMUTATION:
        raise ValueError(f"{sym.label}: permute needs a PERMUTATION symmetry, got {sym.kind}")
    order = torch.as_tensor(order, dtype=torch.long)
    if sorted(order.tolist()) != list(range(sym.unit_count)):
        raise ValueError(f"{sym.label}: order must be a permutation of range({sym.unit_count})")
    moved = dict(params)
    for slot in sym.slots:
        block = (slot.stop - slot.start) // sym.unit_count
        index = (order.unsqueeze(1) * block + torch.arange(block)).reshape(-1) + slot.start
        tensor = _writable(moved, params, slot.param) if copy else moved[slot.param]
        source = tensor.index_select(slot.dim, index.to(tensor.device))
        tensor.narrow(slot.dim, slot.start, slot.stop - slot.start).copy_(source)
    return moved


def permutation_generators(units: int) -> list[Tensor]:
    """Two permutations that generate the whole symmetric group S_units: the cycle (0 1 ... n-1) and
    the transposition (0 1) (one for n = 2, none for n < 2). A model left unchanged by both is left
    unchanged by every permutation of its units; one random permutation proves less (for n = 2 it is
    the identity half the time, and it can miss a permutation that only some units allow)."""
    if units < 2:
        return []
    cycle = torch.arange(units).roll(-1)
    if units == 2:
        return [cycle]
    swap = torch.arange(units)
    swap[0], swap[1] = 1, 0
    return [cycle, swap]


def unit_matrix(sym: Symmetry, slots: tuple[Slot, ...], params: Mapping[str, Tensor]) -> Tensor:
    """The slots as one (units, rest) matrix: unit axis first (a unit's entries are contiguous)."""
    return torch.cat([slot.view(params).movedim(slot.dim, 0).reshape(sym.unit_count, -1) for slot in slots], dim=1)


def gl_charges(sym: Symmetry, params: Mapping[str, Tensor]) -> Tensor:
    """The matrix charge A_in A_in^T - A_out A_out^T (units x units, float64) of a GL symmetry.

    Gradient flow conserves it: for every E in gl(d), <grad L, (E A_in, -E^T A_out)> = 0 (the
    matrix version of the rescale charge |in|^2 - |out|^2, its trace).
    """
    if sym.kind is not Kind.GL:
        raise ValueError(f"{sym.label}: gl_charges needs a GL symmetry, got {sym.kind}")
    a_in = unit_matrix(sym, sym.incoming, params).detach().double()
    a_out = unit_matrix(sym, sym.outgoing, params).detach().double()
    return a_in @ a_in.T - a_out @ a_out.T


def gl_generator_inner(sym: Symmetry, params: Mapping[str, Tensor], vectors: Mapping[str, Tensor]) -> Tensor:
    """(<xi_E(theta), v>)_E for the basis E = e_a e_b^T of gl(d), as a d x d matrix (float64).

    xi_E = (E A_in, -E^T A_out) along the unit axis, so <xi_E, v> = (V_in A_in^T - A_out V_out^T)_ab.
    """
    a_in, a_out = (unit_matrix(sym, slots, params).detach().double() for slots in (sym.incoming, sym.outgoing))
    v_in, v_out = (unit_matrix(sym, slots, vectors).detach().double() for slots in (sym.incoming, sym.outgoing))
    return v_in @ a_in.T - a_out @ v_out.T


def gl_generator_combination(sym: Symmetry, params: Mapping[str, Tensor], coefficients: Tensor, *,
                             into: dict[str, Tensor] | None = None) -> dict[str, Tensor]:
    """sum_ab C_ab xi_{E_ab} = (C A_in, -C^T A_out) scattered back into dense float64 tensors (added
    into ``into``'s where given: a sum over many groups without a dense tensor per group)."""
    out: dict[str, Tensor] = {} if into is None else into
    count = sym.unit_count
    c = coefficients.to(torch.float64).reshape(count, count)
    for transform, slots in ((c, sym.incoming), (-c.T, sym.outgoing)):
        for slot in slots:
            theta = params[slot.param].detach()
            dense = out.get(slot.param)
            if dense is None:
                dense = out[slot.param] = torch.zeros(theta.shape, dtype=torch.float64, device=theta.device)
            block = theta.narrow(slot.dim, slot.start, slot.stop - slot.start).movedim(slot.dim, 0)
            moved = (transform @ block.reshape(count, -1).double()).reshape(block.shape)
            dense.narrow(slot.dim, slot.start, slot.stop - slot.start).add_(moved.movedim(0, slot.dim))
    return out


def act_gl(sym: Symmetry, params: Mapping[str, Tensor], matrix: Tensor, *, copy: bool = True) -> dict[str, Tensor]:
    """Parameters moved by M in GL(units): incoming -> M incoming, outgoing -> M^-T outgoing, along
    the unit axis (so (W_Q, W_K) -> (M W_Q, M^-T W_K) keeps every score q.k, and (W_V, W_O) ->
    (M W_V, W_O M^-1) keeps every head output). New tensors (without ``copy``: in place, as ``act``);
    the rest returned as they are."""
    if sym.kind is not Kind.GL:
        raise ValueError(f"{sym.label}: act_gl needs a GL symmetry, got {sym.kind}")
    count = sym.unit_count
    matrix = torch.as_tensor(matrix)
    if tuple(matrix.shape) != (count, count):
        raise ValueError(f"{sym.label}: M must be {count}x{count}, got {tuple(matrix.shape)}")
    inverse_transpose = torch.linalg.inv(matrix).T
    moved = dict(params)
    for transform, slots in ((matrix, sym.incoming), (inverse_transpose, sym.outgoing)):
        for slot in slots:
            tensor = _writable(moved, params, slot.param) if copy else moved[slot.param]
            target = tensor.narrow(slot.dim, slot.start, slot.stop - slot.start).movedim(slot.dim, 0)
            flat = target.reshape(count, -1)
            target.copy_((transform.to(flat.dtype) @ flat).reshape(target.shape))
    return moved
