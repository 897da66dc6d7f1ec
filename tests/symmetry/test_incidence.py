"""``SymmetrySet.slot_incidence``: which parameters each symmetry reads, as flat arrays, against a loop
over the symmetries' slots."""

import numpy as np
import pytest
import torch

import shockwatch as sw
from shockwatch.symmetry import Kind


@pytest.mark.parametrize("name", ["vgg-bn", "mlp"])
def test_slot_incidence_is_each_symmetrys_distinct_parameters(name):
    torch.manual_seed(0)
    if name == "vgg-bn":
        model = sw.models.vgg("tiny", width_divisor=4, batch_norm=True, image_size=8, hidden=16)
        x = torch.randn(2, 3, 8, 8)
    else:
        model, x = sw.models.mlp((5, 7, 6, 3)), torch.randn(4, 5)
    syms = sw.find_symmetries(model, x)
    for kinds in ((Kind.TRANSLATION,), (Kind.SCALE, Kind.RESCALE), ("rescale",)):
        starts, params = syms.slot_incidence(kinds)
        expected = [sym for kind in kinds for sym in syms.of_kind(kind)]
        assert len(starts) == len(expected) and (not len(starts) or starts[0] == 0)
        bounds = list(starts) + [len(params)]
        for sym, lo, hi in zip(expected, bounds, bounds[1:]):
            got = [syms.param_names[i] for i in params[lo:hi]]
            assert got == list(dict.fromkeys(slot.param for slot in sym.slots)), sym.label
        assert syms.slot_incidence(kinds)[1] is params  # made once
    assert any(len(syms.of_kind(kind)) for kind in (Kind.SCALE, Kind.RESCALE))
    assert set(syms.param_names) == {slot.param for sym in syms for slot in sym.slots}
