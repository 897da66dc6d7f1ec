"""``KrylovProjection`` against the full projection it stands in for, on the vectors Lanczos feeds it."""

import numpy as np
import pytest
import torch
from scipy.sparse.linalg import LinearOperator, eigsh

import shockwatch as sw
from shockwatch.quotient import KrylovProjection, horizontal_projector


def _projector(seed: int = 0):
    """P_H of a ReLU MLP (scale and rescale groups, the output translation) at random float64 weights."""
    torch.manual_seed(seed)
    model = sw.models.mlp((5, 9, 7, 4)).double()
    x = torch.randn(16, 5, dtype=torch.float64)
    params = {name: p.detach() for name, p in model.named_parameters()}
    return horizontal_projector(sw.find_symmetries(model, x), params), sum(p.numel() for p in params.values())


@pytest.mark.parametrize("shift,vertical,rtol", [(0.0, 1.0, 1e-10), (2.5, 1.0, 1e-10), (0.0, 1e-13, 1e-14)])
def test_every_lanczos_vector_is_projected_as_the_full_projection_projects_it(shift, vertical, rtol):
    """Truth: the full projection P_H v of every vector ARPACK applies the operator to (a random
    symmetric H, so any symmetric Hessian; shifted as ``curvature`` shifts it for the bottom of the
    spectrum), to 1e-9 relative; and most inputs are recognised as horizontal (the saving). The start
    is random, or horizontal but for a vertical part of 1e-13 of it (a warm start: the last sample's
    eigenvector), where a vertical direction taken as r - P_H r would be mostly round-off (that error
    put the top eigenvalue 0.21 off here, in a spectrum from -31 to 32)."""
    project, dimension = _projector()
    krylov = KrylovProjection(project, rtol=rtol)
    rng = np.random.default_rng(1)
    start = rng.standard_normal(dimension)
    start = project(start) + vertical * (start - project(start))
    half = rng.standard_normal((dimension, dimension))
    hessian = half + half.T
    errors = []

    def matvec(vector):
        ours, full = krylov(vector), project(vector)
        errors.append(np.linalg.norm(ours - full) / np.linalg.norm(vector))
        return project(hessian @ ours) - shift * vector

    op = LinearOperator((dimension, dimension), matvec=matvec, dtype=np.float64)
    found = eigsh(op, k=1, which="LA", tol=1e-10, v0=start)[0][0]
    compressed = project(project(hessian).T)  # P H P, dense (P symmetric)
    assert abs(found - (np.linalg.eigvalsh(compressed)[-1] - shift)) < 1e-8 * np.abs(hessian).max()
    assert max(errors) < 1e-9, max(errors)
    assert krylov.finished >= 1, krylov.finished
    if vertical == 1.0:  # the saving (at rtol 1e-14, round-off of 3e-15 leaves some horizontal vectors unrecognised)
        assert krylov.skipped >= len(errors) - 5, (krylov.skipped, krylov.finished, len(errors))


def test_vectors_outside_one_krylov_space_get_the_full_projection():
    """Truth: P_H v for independent random vectors, none of which shares its vertical part with an
    earlier one beyond the ``keep`` directions remembered: each is finished, none skipped."""
    project, dimension = _projector(seed=2)
    krylov = KrylovProjection(project, rtol=1e-10, keep=2)
    rng = np.random.default_rng(3)
    for _ in range(6):
        vector = rng.standard_normal(dimension)
        assert np.linalg.norm(krylov(vector) - project(vector)) < 1e-10 * np.linalg.norm(vector)
    assert (krylov.skipped, krylov.finished) == (0, 6)
    assert len(krylov.basis) == 2


def test_a_horizontal_vector_is_returned_as_it_is_and_bad_arguments_are_refused():
    project, dimension = _projector(seed=4)
    krylov = KrylovProjection(project)
    horizontal = project(np.random.default_rng(5).standard_normal(dimension))
    assert np.array_equal(krylov(horizontal), horizontal) and krylov.skipped == 1
    with pytest.raises(ValueError, match="rtol"):
        KrylovProjection(project, rtol=0.0)
    with pytest.raises(ValueError, match="keep"):
        KrylovProjection(project, keep=0)
    with pytest.raises(TypeError, match="horizontal_projector"):
        KrylovProjection("P")
