"""Weight normalisation, W = g v / |v| row by row (torch.nn.utils' weight_norm, parametrised and old):
each row of v scales freely. Truth: a row of v multiplied by hand in float64 leaves the output
unchanged; before, only the last bias's translation was found (17% of the parameters covered)."""

import warnings

import pytest
import torch
from torch import nn
from torch.nn.utils import weight_norm as hooked_weight_norm
from torch.nn.utils.parametrizations import weight_norm

import shockwatch as sw
from shockwatch.symmetry import Kind


@pytest.mark.parametrize("normalised", [weight_norm, hooked_weight_norm])
def test_each_row_of_v_scales(normalised):
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # the hooked form is deprecated in torch
        model = nn.Sequential(normalised(nn.Linear(4, 6)), nn.ReLU(), normalised(nn.Linear(6, 3)))
    found = sw.find_symmetries(model, torch.randn(5, 4, generator=torch.Generator().manual_seed(1)))
    assert not found.rejected
    v = {name for name, _ in model.named_parameters() if name.endswith(("original1", "weight_v"))}
    scales = [sym for sym in found.of_kind(Kind.SCALE) if {s.param for s in sym.slots} <= v]
    assert len(scales) == 6 + 3 and all(s.slots[0].stop - s.slots[0].start == 1 for s in scales)
    model = model.double()
    x = torch.randn(9, 4, dtype=torch.float64)
    first = dict(model.named_parameters())[min(v)]
    with torch.no_grad():
        before = model(x)
        first[2] *= 3.7
        assert float((model(x) - before).abs().max()) < 1e-13 * float(before.abs().max())


def test_the_gains_rescale_against_a_plain_next_layer():
    """W = g v / |v|: unit i's gain g_i and bias times a, the next (plain) layer's column i over a, through
    a ReLU, leave the output unchanged (by hand in float64). No permutation of those units is proposed:
    it would move v's rows with g's, which a slot of g cannot name."""
    torch.manual_seed(0)
    model = nn.Sequential(weight_norm(nn.Linear(4, 6)), nn.ReLU(), nn.Linear(6, 3))
    found = sw.find_symmetries(model, torch.randn(5, 4, generator=torch.Generator().manual_seed(1)))
    assert not found.rejected
    gain = "0.parametrizations.weight.original0"
    rescales = [sym for sym in found.of_kind(Kind.RESCALE) if sym.incoming[0].param == gain]
    assert len(rescales) == 6
    assert {(s.param, s.dim) for s in rescales[4].slots} == {(gain, 0), ("0.bias", 0), ("2.weight", 1)}
    assert not any(slot.param == gain for sym in found.of_kind(Kind.PERMUTATION) for slot in sym.slots)
    model = model.double()
    x = torch.randn(9, 4, dtype=torch.float64)
    params = dict(model.named_parameters())
    with torch.no_grad():
        before = model(x)
        params[gain][4] *= 2.5
        params["0.bias"][4] *= 2.5
        params["2.weight"][:, 4] /= 2.5
        assert float((model(x) - before).abs().max()) < 1e-13 * float(before.abs().max())
