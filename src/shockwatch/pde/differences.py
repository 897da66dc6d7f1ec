"""Finite-difference derivatives on uniform grids, of a chosen order of accuracy.

Used where only samples exist (U given on a grid: its curvature for the shock time, residuals of
sampled fields). Quantities with an exact formula (the Hopf-Cole velocity) never come from here.
"""

from __future__ import annotations

import functools

import numpy as np
import torch

from ._interop import as_tensor, check_finite, uniform_step

__all__ = ["finite_difference", "fd_weights"]


@functools.lru_cache(maxsize=256)
def fd_weights(offsets: tuple[int, ...], derivative: int) -> tuple[float, ...]:
    """Weights c_k with sum_k c_k f(x + k h) = h^m f^(m)(x) + O(h^{len(offsets)}) (m = derivative).

    Equation: the moment conditions sum_k c_k k^j = m! [j == m], j = 0..n-1, solved exactly
    in rational-free float64 (n <= 9 points, where the Vandermonde system is well conditioned).
    """
    n = len(offsets)
    if derivative >= n:
        raise ValueError(f"need more than {derivative} stencil points for derivative {derivative}, got {n}")
    k = np.asarray(offsets, dtype=np.float64)
    vander = np.vander(k, n, increasing=True).T  # row j: k**j
    rhs = np.zeros(n)
    rhs[derivative] = float(np.prod(np.arange(1, derivative + 1)))
    return tuple(np.linalg.solve(vander, rhs).tolist())


def finite_difference(f, grid, derivative: int = 1, accuracy: int = 6, periodic: bool = False):
    r"""The ``derivative``-th derivative of samples ``f`` on a uniform ``grid``, along the last axis.

    Equation: f^(m)(x_i) ~ h^-m sum_k c_k f(x_{i+k}), c from ``fd_weights``.
    Scheme: centred stencils of order ``accuracy`` (even) in the interior; near the ends of a
        non-periodic grid one-sided stencils of accuracy + derivative points, so the formal order
        is ``accuracy`` everywhere (the one-sided error constants are larger).
        Periodic grids exclude the endpoint: x_N = x_0 + N h is the same point as x_0.
    Order: ``accuracy`` in h for smooth f (measured in tests/pde/test_differences.py).
    Raises: ValueError for a non-uniform grid, NaN in f, derivative not in {1, 2, 3, 4}, odd or
        non-positive accuracy, or too few points.
    Shapes: f (..., n), grid (n,) -> (..., n).
    """
    f_t, kind = as_tensor(f, "f")
    grid_t, _ = as_tensor(grid, "grid", device=f_t.device)
    if derivative not in (1, 2, 3, 4):
        raise ValueError(f"derivative must be 1, 2, 3 or 4, got {derivative!r}")
    if accuracy < 2 or accuracy % 2:
        raise ValueError(f"accuracy must be an even order >= 2, got {accuracy!r}")
    h = uniform_step(grid_t)
    check_finite(f_t, "f")
    n = f_t.shape[-1]
    if n != grid_t.numel():
        raise ValueError(f"f has {n} points along its last axis but grid has {grid_t.numel()}; they must match")
    half = (accuracy + derivative - 1) // 2  # centred stencil of 2*half+1 points
    width = 2 * half + 1
    if n < width:
        raise ValueError(f"need at least {width} grid points for this stencil, got {n}")
    out = torch.zeros_like(f_t)
    offsets = tuple(range(-half, half + 1))
    weights = fd_weights(offsets, derivative)
    if periodic:
        for k, c in zip(offsets, weights):
            out = out + c * torch.roll(f_t, shifts=-k, dims=-1)
        return kind.back(out / h**derivative)
    for k, c in zip(offsets, weights):
        out[..., half:n - half] += c * f_t[..., half + k:n - half + k]
    # one-sided stencils need accuracy + derivative points for the same order as the centred one
    end_width = accuracy + derivative
    if n < end_width:
        raise ValueError(f"need at least {end_width} grid points for this stencil, got {n}")
    for i in list(range(half)) + list(range(n - half, n)):
        start = min(max(i - end_width // 2, 0), n - end_width)  # shift the stencil inside the grid
        shifted = tuple(j - i for j in range(start, start + end_width))
        for k, c in zip(shifted, fd_weights(shifted, derivative)):
            out[..., i] += c * f_t[..., i + k]
    return kind.back(out / h**derivative)

