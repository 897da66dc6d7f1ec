r"""Per-group sums over parameters sharded by FSDP2 (``torch.distributed.fsdp.fully_shard``).

Under FSDP2 every parameter, gradient and optimizer buffer is a DTensor of which each rank holds a
shard (``to_local()``: a slice of the global tensor at a known offset, every element on exactly one
rank). A symmetry's sums are sums over its slots' elements, so each is the sum over ranks of the same
sum over the elements a rank holds:

    sum_A <x_A, y_A> = sum_r sum_{i in A, i on rank r} x_i y_i,

computed on every rank from its local shard alone (no parameter is gathered) and added up by one
all-reduce of a float64 vector of the per-group partial sums. Here each symmetry's slots are cut to
the local shard (``localized``): every part of it (incoming, outgoing) a part of its own, placed back
in its global column with its sign, so that a symmetry with no element on this rank, or only its
outgoing slots, contributes exactly what it holds. Norms are all-reduced as sums of squares.

Supported: placements that are all ``Shard`` (FSDP2's 1-D mesh). A mesh that replicates
(``Replicate``: HSDP) would count replicated elements once per replica: refused, with the reason.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor

__all__ = ["is_sharded", "local", "local_squares", "sharded_norm"]


def _dtensor_type():
    try:
        from torch.distributed.tensor import DTensor
    except ImportError:  # a torch built without distributed
        return None
    return DTensor


_DTENSOR = _dtensor_type()


def is_sharded(t) -> bool:
    """Whether ``t`` is a DTensor (a parameter, gradient or buffer of an FSDP2 model)."""
    return _DTENSOR is not None and isinstance(t, _DTENSOR)


def local(t: Tensor) -> Tensor:
    """The shard this rank holds (``to_local()``) of a DTensor; any other tensor as it is."""
    return t.to_local() if is_sharded(t) else t


@functools.cache
def _offset(shape: tuple[int, ...], placements: tuple, mesh) -> tuple[tuple[int, ...], tuple[int, ...]]:
    from torch.distributed.tensor import Shard
    from torch.distributed.tensor._utils import compute_local_shape_and_global_offset

    if not all(isinstance(p, Shard) for p in placements):
        raise ValueError(f"sharded sums need every placement to be Shard (FSDP2), got {placements}: a replicated "
                         "mesh dimension (HSDP) would count its elements once per replica")
    local_shape, offset = compute_local_shape_and_global_offset(torch.Size(shape), mesh, placements)
    return tuple(local_shape), tuple(offset)


def layout_of(t: Tensor) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """(local shape, global offset) of a DTensor's shard on this rank."""
    return _offset(tuple(t.shape), tuple(t.placements), t.device_mesh)


@dataclass(frozen=True)
class Localized:
    """A symmetry set cut to this rank's shards: ``parts`` (a SymmetrySet of SCALE parts for the
    quadratic groups, TRANSLATION parts for translation), and per part its global column and sign."""

    parts: object  # SymmetrySet
    quadratic_column: np.ndarray
    quadratic_sign: np.ndarray
    translation_column: np.ndarray
    missing: tuple[str, ...]  # quadratic params with no part here (their whole sums taken apart)


def localized(symmetries, layouts: Mapping[str, tuple[tuple[int, ...], tuple[int, ...]]], quadratic: bool) -> Localized:
    """``symmetries`` cut to the shards described by ``layouts`` (param -> (local shape, offset)): the
    scale and rescale groups (``quadratic``) or the translation ones."""
    from .group import Kind, Slot, Symmetry, SymmetrySet

    parts, q_column, q_sign, t_column = [], [], [], []

    def cut(slots) -> tuple[Slot, ...]:
        kept = []
        for slot in slots:
            shape, offset = layouts[slot.param]
            start, stop = max(slot.start, offset[slot.dim]), min(slot.stop, offset[slot.dim] + shape[slot.dim])
            if start < stop:
                kept.append(Slot(slot.param, slot.dim, start - offset[slot.dim], stop - offset[slot.dim]))
        return tuple(kept)

    columns = {kind: {sym.label: i for i, sym in enumerate(symmetries.of_kind(kind))} for kind in Kind}
    n_scale = len(symmetries.of_kind(Kind.SCALE))
    for sym in symmetries:
        if sym.kind is Kind.TRANSLATION and not quadratic:
            slots = cut(sym.incoming)
            if slots:
                parts.append(Symmetry(Kind.TRANSLATION, f"t{len(parts)}", slots))
                t_column.append(columns[Kind.TRANSLATION][sym.label])
        elif sym.kind in (Kind.SCALE, Kind.RESCALE) and quadratic:
            column = columns[sym.kind][sym.label] + (n_scale if sym.kind is Kind.RESCALE else 0)
            for sign, side in ((1.0, sym.incoming), (-1.0, sym.outgoing)):
                slots = cut(side)
                if slots:
                    parts.append(Symmetry(Kind.SCALE, f"q{len(parts)}", slots))
                    q_column.append(column)
                    q_sign.append(sign)
    local_set = SymmetrySet(tuple(parts), symmetries.device)
    here = set(local_set.quadratic_params)
    missing = tuple(name for name in symmetries.quadratic_params if name not in here) if quadratic else ()
    return Localized(local_set, np.array(q_column, dtype=np.int64), np.array(q_sign), np.array(t_column, dtype=np.int64),
                     missing)


def all_reduce(values: np.ndarray) -> np.ndarray:
    """The sum over ranks of a float64 vector (one collective; every rank must call it), on the device
    the process group reduces on (``collective_device``)."""
    tensor = torch.from_numpy(np.ascontiguousarray(values, dtype=np.float64))
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        device = collective_device(str(dist.get_backend()))
        if device.type == "cpu":
            dist.all_reduce(tensor)
        else:
            moved = tensor.to(device)
            dist.all_reduce(moved)
            tensor = moved.cpu()
    return tensor.numpy()


def collective_device(backend: str) -> torch.device:
    """Where a process group with ``backend`` (``dist.get_backend()``) reduces: the CPU for gloo and
    MPI, or a group with a CPU backend beside its accelerator's ("cpu:gloo,cuda:nccl", what
    ``init_process_group()`` makes by default); otherwise (``init_process_group("nccl")``, which takes
    CUDA tensors only) the current accelerator."""
    if backend in ("gloo", "mpi") or "cpu:" in backend:
        return torch.device("cpu")
    accelerator = torch.accelerator.current_accelerator() if hasattr(torch, "accelerator") else None
    if accelerator is None:
        return torch.device("cpu")
    return torch.device(accelerator.type, torch.accelerator.current_device_index())


def local_squares(tensors: list[Tensor], minus: list[Tensor] | None = None) -> float:
    """sum |t|^2 (or |t - m|^2) over this rank's shards of ``tensors`` (and ``minus``), float64."""
    total = 0.0
    for i, t in enumerate(tensors):
        t = local(t) if minus is None else local(t) - local(minus[i])
        if t.numel():
            total += float(torch.linalg.vector_norm(t, dtype=torch.float64)) ** 2
    return total


def sharded_norm(tensors: list[Tensor]) -> float:
    """sqrt(sum |t|^2) over DTensors (or plain tensors), from each rank's shards, float64."""
    return math.sqrt(max(float(all_reduce(np.array([local_squares(tensors)]))[0]), 0.0))
