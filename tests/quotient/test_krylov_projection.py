"""The horizontal projection of a Krylov run's vectors (``HorizontalProjector.krylov``) against the
dense projector P = I - J^T (J J^T)^+ J (NumPy's pseudo-inverse, float64), and the curvature it serves
against dense eigenvalues where the eigensolver restarts from random vectors."""

import math

import numpy as np
import torch
import torch.nn.functional as F
from scipy.sparse.linalg import LinearOperator, eigsh
from torch import nn

import shockwatch as sw
from shockwatch.monitor.curvature import HessianVectorProducts, curvature
from shockwatch.quotient import HorizontalProjector, horizontal_projector
from shockwatch.quotient.projection import generator_matrix


def _trained_mlp():
    torch.manual_seed(0)
    model = sw.models.mlp((3, 12, 12, 3)).double()
    x, y = torch.randn(48, 3, dtype=torch.float64), torch.randint(0, 3, (48,))
    for _ in range(40):
        model.zero_grad()
        F.cross_entropy(model(x), y).backward()
        with torch.no_grad():
            for p in model.parameters():
                p -= 0.2 * p.grad
    return model, x, y


def _dense_projector(syms, params):
    generators = generator_matrix(syms, params).toarray()  # D x K
    return np.eye(generators.shape[0]) - generators @ np.linalg.pinv(generators.T @ generators) @ generators.T, generators


def test_every_vector_of_both_lanczos_runs_is_projected_as_the_dense_projector_does_mostly_without_projecting():
    """Truth: the dense projector, on every vector ARPACK passes in a top run of P H P and a bottom run
    of P H P - s I from one random (not horizontal) start: the Krylov form r = h + alpha u_0 is read
    and P r returned to 1e-12, with the full projection called for at most 1 vector in 10."""
    model, x, y = _trained_mlp()
    syms = sw.find_symmetries(model, x)
    hessian = HessianVectorProducts(model, F.cross_entropy, (x, y))
    params = hessian.params
    dense, generators = _dense_projector(syms, params)
    full = horizontal_projector(syms, params)
    calls = [0]

    def counted(vector):
        calls[0] += 1
        return full(vector)

    projector = HorizontalProjector(counted, lambda z: generators @ z, generators.shape[1])
    start = np.random.default_rng(3).standard_normal(hessian.dimension)
    assert np.linalg.norm(start - dense @ start) > 0.1 * np.linalg.norm(start)  # a real vertical part
    for shift, which in ((0.0, "LA"), (2.0, "LM")):
        krylov = projector.krylov(start)
        calls[0] = 0
        seen = []

        def matvec(vector, krylov=krylov, shift=shift, seen=seen):
            projected = krylov(vector)
            seen.append((vector.copy(), projected))
            return full(hessian.hvp(projected)) - shift * vector

        eigsh(LinearOperator((hessian.dimension,) * 2, matvec=matvec, dtype=np.float64), k=1, which=which,
              tol=1e-9, v0=start)
        assert len(seen) > 20
        for vector, projected in seen:
            assert np.linalg.norm(projected - dense @ vector) <= 1e-12 * np.linalg.norm(vector)
        # one for the start's vertical part, then (nearly) none
        assert calls[0] <= 1 + len(seen) // 10, (calls[0], len(seen))


def test_a_vertical_part_other_than_the_starts_gets_the_full_projection():
    """Truth: the dense projector. A vector with a vertical part off the start's direction (a random
    generator combination, as an eigensolver's random restart has) is not of the run's form: P v, not
    v - alpha u_0; a horizontal start's run passes horizontal vectors as they are."""
    model, x, _ = _trained_mlp()
    syms = sw.find_symmetries(model, x)
    params = {k: p.detach() for k, p in model.named_parameters()}
    dense, generators = _dense_projector(syms, params)
    projector = horizontal_projector(syms, params)
    rng = np.random.default_rng(5)
    start = rng.standard_normal(len(dense))
    krylov = projector.krylov(start)
    off = dense @ rng.standard_normal(len(dense)) + 0.3 * (start - dense @ start) + generators @ rng.standard_normal(
        generators.shape[1]) * 1e-6
    assert np.linalg.norm(krylov(off) - dense @ off) <= 1e-12 * np.linalg.norm(off)
    on = dense @ rng.standard_normal(len(dense)) - 0.7 * (start - dense @ start)
    assert np.linalg.norm(krylov(on) - dense @ on) <= 1e-12 * np.linalg.norm(on)
    horizontal_start = dense @ start
    level = projector.krylov(horizontal_start)
    h = dense @ rng.standard_normal(len(dense))
    assert np.linalg.norm(level(h) - dense @ h) <= 1e-12 * np.linalg.norm(h)
    assert np.linalg.norm(level(start) - dense @ start) <= 1e-12 * np.linalg.norm(start)


def test_softmax_regression_where_arpack_restarts_has_the_dense_quotient_spectrum_zeros_included():
    """Truth: eigh of the dense P H P (float64). Softmax regression on 3 features, 4 classes (16
    parameters; the softmax's translation takes 4 of them): the Krylov space of P H P runs out before
    ARPACK's 16 vectors, ARPACK restarts from random vectors, and the operator must still be P H P
    on them, so its extremes are the dense ones with the orbit's zeros (where a one-sided projection
    found 0.10 for the bottom in place of 0)."""
    torch.manual_seed(2)
    model = nn.Sequential(nn.Linear(3, 4)).double()
    x, y = torch.randn(40, 3, dtype=torch.float64), torch.randint(0, 4, (40,))
    syms = sw.find_symmetries(model, x)
    assert syms.counts()
    params = {k: p.detach() for k, p in model.named_parameters()}
    dense_projector, _ = _dense_projector(syms, params)
    hessian = HessianVectorProducts(model, F.cross_entropy, (x, y))
    matrix = np.stack([hessian.hvp(e) for e in np.eye(hessian.dimension)], axis=1)
    quotient = np.linalg.eigvalsh(dense_projector @ (0.5 * (matrix + matrix.T)) @ dense_projector)
    assert quotient[-1] > 0.05 and abs(quotient[0]) < 1e-12  # positive curvature, the orbit's zeros at the bottom
    found = curvature(model, F.cross_entropy, (x, y), syms, tol=1e-10)
    assert math.isclose(found.quotient_max, quotient[-1], rel_tol=1e-8)
    assert abs(found.quotient_min - quotient[0]) < 1e-8 * quotient[-1]
