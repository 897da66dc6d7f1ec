"""The sparse generator matrix against the dense generators it stands for (``symmetry.generator``)."""

import numpy as np
import torch

import shockwatch as sw
from shockwatch.quotient.projection import generator_matrix
from shockwatch.symmetry import Kind, Slot, Symmetry, SymmetrySet, generator, gl_generator_combination


def dense_columns(symmetries, params):
    """Column k: xi_k(theta) flattened over ``params``' order, from the dense definitions."""
    names = list(params)

    def flat(dense):
        return torch.cat([dense.get(name, torch.zeros_like(params[name])).reshape(-1) for name in names])

    columns = [flat(generator(sym, params)) for kind in (Kind.TRANSLATION, Kind.SCALE, Kind.RESCALE, Kind.ROTATION)
               for sym in symmetries.of_kind(kind)]
    for sym in symmetries.of_kind(Kind.GL):
        for k in range(sym.unit_count ** 2):
            unit = torch.zeros(sym.unit_count ** 2, dtype=torch.float64)
            unit[k] = 1.0
            columns.append(flat(gl_generator_combination(sym, params, unit)))
    return torch.stack(columns, dim=1).numpy()


def test_every_kind_of_generator_equals_its_dense_column():
    """Hand-made groups of every one-parameter kind and a rotation, overlapping slots (a slot shared by
    two groups, a rescale whose outgoing slot sits in the same tensor as its incoming one), float64."""
    generator_ = torch.Generator().manual_seed(0)
    params = {"a": torch.randn(4, 5, generator=generator_, dtype=torch.float64),
              "b": torch.randn(5, dtype=torch.float64, generator=generator_),
              "c": torch.randn(3, 4, 2, generator=generator_, dtype=torch.float64)}
    symmetries = SymmetrySet((
        Symmetry(Kind.TRANSLATION, "t", (Slot("b", 0, 1, 4),)),
        Symmetry(Kind.SCALE, "s", (Slot("a", 0, 0, 2), Slot("b", 0, 0, 2))),
        Symmetry(Kind.RESCALE, "r", (Slot("a", 0, 2, 3),), (Slot("a", 1, 3, 4), Slot("c", 1, 0, 2))),
        Symmetry(Kind.ROTATION, "q", (Slot("c", 0, 0, 1),), (Slot("c", 0, 2, 3),)),
    ))
    sparse = generator_matrix(symmetries, params).toarray()
    assert np.array_equal(sparse, dense_columns(symmetries, params))


def test_the_gl_heads_of_a_transformer():
    """GL(d_head) generators of a GPT's heads (found by detection), with its other groups."""
    torch.manual_seed(0)
    model = sw.models.GPT(sw.models.GPTConfig(n_layer=1, n_head=2, d_model=8, vocab_size=11, block_size=6)).double()
    symmetries = sw.find_symmetries(model, torch.randint(0, 11, (2, 6)))
    assert symmetries.counts()["gl"] > 0
    params = {name: p.detach() for name, p in model.named_parameters()}
    sparse = generator_matrix(symmetries, params).toarray()
    assert np.allclose(sparse, dense_columns(symmetries, params), rtol=0, atol=1e-15)


def test_a_second_point_of_the_same_set_reads_its_own_theta():
    """The columns' pattern is built once per set and shapes: a call at another theta (and in
    float32, read in float64) must give that theta's generators, not the first call's."""
    generator_ = torch.Generator().manual_seed(1)
    shapes = {"a": (4, 5), "b": (5,)}
    symmetries = SymmetrySet((Symmetry(Kind.SCALE, "s", (Slot("a", 0, 0, 2), Slot("b", 0, 0, 2))),
                              Symmetry(Kind.RESCALE, "r", (Slot("a", 0, 2, 3),), (Slot("a", 1, 3, 4),)),
                              Symmetry(Kind.TRANSLATION, "t", (Slot("b", 0, 1, 4),))))
    for dtype in (torch.float64, torch.float64, torch.float32):
        params = {name: torch.randn(shape, generator=generator_, dtype=dtype) for name, shape in shapes.items()}
        sparse = generator_matrix(symmetries, params).toarray()
        assert sparse.dtype == np.float64
        truth = dense_columns(symmetries, {name: p.double() for name, p in params.items()})
        assert np.array_equal(sparse, truth)


def test_a_set_checked_once_still_refuses_parameters_of_another_shape():
    """check_params remembers the shapes it found every slot to fit: a later call with other shapes
    (a model of another width under the same names) must still be refused, and one of the same
    shapes but a wrong size along an acted-on axis too."""
    import pytest

    symmetries = SymmetrySet((Symmetry(Kind.RESCALE, "r", (Slot("a", 0, 2, 3),), (Slot("b", 0, 3, 4),)),),
                             sizes=((("a", 0), 4),))
    fits = {"a": torch.zeros(4, 5), "b": torch.zeros(5)}
    symmetries.check_params(fits)
    symmetries.check_params(fits)
    with pytest.raises(ValueError, match="does not fit"):
        symmetries.check_params({"a": torch.zeros(4, 5), "b": torch.zeros(3)})
    with pytest.raises(ValueError, match="where these symmetries were found it had 4"):
        symmetries.check_params({"a": torch.zeros(6, 5), "b": torch.zeros(5)})
    with pytest.raises(TypeError, match="real floating-point"):
        symmetries.check_params({"a": torch.zeros(4, 5, dtype=torch.int64), "b": torch.zeros(5)})
