"""NumPy/torch interop and the input checks shared by every routine of ``shockwatch.pde``.

Each public routine computes in torch (any device, float32 or float64) and hands back the kind
of array it was given: NumPy in -> NumPy out with the input dtype, torch in -> torch out on the
input's device. Every ``ValueError`` of the package's numerics is raised from here, so that the
messages read the same everywhere.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor


@dataclass(frozen=True)
class Kind:
    """How to hand a result back: as NumPy (with ``numpy_dtype``) or as a torch tensor."""

    numpy: bool
    numpy_dtype: Any = None

    def back(self, x: Tensor) -> Tensor | np.ndarray:
        if self.numpy:
            return x.detach().cpu().numpy().astype(self.numpy_dtype, copy=False)
        return x


def as_tensor(x: Any, name: str, *, dtype: torch.dtype | None = None,
              device: torch.device | None = None) -> tuple[Tensor, Kind]:
    """``x`` as a floating torch tensor and the ``Kind`` to convert results back with."""
    if isinstance(x, Tensor):
        kind = Kind(numpy=False)
        t = x
    elif isinstance(x, (np.ndarray, list, tuple, float, int, np.floating)):
        arr = np.asarray(x)
        if arr.dtype.kind not in "fiu":
            raise ValueError(f"{name}: expected real numbers, got dtype {arr.dtype}")
        out_dtype = arr.dtype if arr.dtype.kind == "f" else np.float64
        kind = Kind(numpy=True, numpy_dtype=out_dtype)
        t = torch.from_numpy(np.ascontiguousarray(arr, dtype=out_dtype))
    else:
        raise ValueError(f"{name}: expected a NumPy array or a torch tensor, got {type(x).__name__}")
    if t.is_complex():
        raise ValueError(f"{name}: expected real numbers, got a complex {t.dtype}")
    if not t.is_floating_point():
        t = t.to(torch.float64)
    if dtype is not None or device is not None:
        t = t.to(dtype=dtype or t.dtype, device=device or t.device)
    return t, kind


def check_finite(x: Tensor, name: str) -> None:
    """Raise if ``x`` holds NaN or inf (one host sync: these are entry checks, not step code)."""
    if not bool(torch.isfinite(x).all()):
        bad = int((~torch.isfinite(x)).sum())
        raise ValueError(f"{name}: {bad} non-finite value(s) (NaN or inf); all values must be finite")


def check_positive(value: float, name: str, *, allow_zero: bool = False) -> float:
    """``value`` as a float, raising unless it is > 0 (or >= 0 with ``allow_zero``) and finite."""
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a real number, got {value!r}") from None
    ok = (v >= 0 if allow_zero else v > 0) and math.isfinite(v)
    if not ok:
        bound = ">= 0" if allow_zero else "> 0"
        raise ValueError(f"{name} must be finite and {bound}, got {value!r}")
    return v


def uniform_step(grid: Tensor, name: str = "grid", *, min_points: int = 3) -> float:
    """The step h of a uniform increasing 1-D grid; raises for anything else.

    Uniform means every step equals the mean step up to 1e-6 h or the rounding of the grid's
    coordinates (8 ulps of the largest |x|: float32's where every coordinate is a float32 number,
    float64's otherwise), whichever is larger: a float32 ``linspace`` over [-8, 8] already has steps
    that differ by ~1e-6 absolute. (At float32's ulps a float64 grid offset by 1e6 passed with a node
    moved half a step.)
    """
    if grid.ndim != 1:
        raise ValueError(f"{name}: expected a 1-D grid, got shape {tuple(grid.shape)}")
    if grid.numel() < min_points:
        raise ValueError(f"{name}: expected at least {min_points} points, got {grid.numel()}")
    check_finite(grid, name)
    g = grid.detach().to(torch.float64)
    steps = torch.diff(g)
    h = float((g[-1] - g[0]) / (g.numel() - 1))
    if h <= 0 or not bool((steps > 0).all()):
        raise ValueError(f"{name}: must be strictly increasing")
    single = bool((g.to(torch.float32).to(torch.float64) == g).all())  # float32 coordinates, whatever the dtype now
    unit = torch.finfo(torch.float32 if single else torch.float64).eps
    tol = max(1e-6 * h, 8 * float(unit) * float(g.abs().max()))
    worst = float((steps - h).abs().max())
    if worst > tol:
        raise ValueError(
            f"{name}: must be uniform (equal steps); steps differ by up to {worst / h:.2e} of the "
            f"step, accepted up to {tol / h:.1e}"
        )
    return h


def check_same_shape(a: Tensor, b: Tensor, a_name: str, b_name: str) -> None:
    if a.shape[-1] != b.shape[-1]:
        raise ValueError(
            f"{a_name} has {a.shape[-1]} points along its last axis but {b_name} has "
            f"{b.shape[-1]}; they must match"
        )


def check_choice(value: Any, enum_type: type, name: str):
    """``value`` converted to ``enum_type`` (a StrEnum), or a ValueError listing the choices."""
    try:
        return enum_type(value)
    except ValueError:
        choices = ", ".join(repr(m.value) for m in enum_type)
        raise ValueError(f"{name} must be one of {choices}; got {value!r}") from None
