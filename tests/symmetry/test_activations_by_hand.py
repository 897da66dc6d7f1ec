"""ReLU-like activations written with other operations: their rescale and permutation symmetries
found, and none where the activation is not positively homogeneous; every claim checked against a
group element applied by hand to the weights in float64."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import shockwatch as sw
from shockwatch.symmetry import Kind

HOMOGENEOUS = {
    "clamp_min_0": lambda z, m: z.clamp(min=0),
    "maximum_zeros_like": lambda z, m: torch.maximum(z, torch.zeros_like(z)),
    "maximum_zero_constant": lambda z, m: torch.maximum(z, torch.tensor(0.0, dtype=z.dtype)),
    "where_leaky": lambda z, m: torch.where(z > 0, z, 0.2 * z),
    "mask_product": lambda z, m: z * (z > 0),
    "prelu_per_unit": lambda z, m: F.prelu(z, m.slopes),
}
NOT_HOMOGENEOUS = {  # elementwise (a permutation still holds), but a positive scale changes them
    "clamp_min_0.1": lambda z, m: z.clamp(min=0.1),
    "where_threshold": lambda z, m: torch.where(z > 0.5, z, 0.2 * z),
    "mask_threshold": lambda z, m: z * (z > 0.3),
}


class Net(nn.Module):
    """4 -> 6 -> 3 with the activation given (names no library uses)."""

    def __init__(self, activation) -> None:
        super().__init__()
        self.first, self.second = nn.Linear(4, 6), nn.Linear(6, 3)
        self.slopes = nn.Parameter(torch.linspace(0.1, 0.6, 6))
        self.activation = activation

    def forward(self, x):
        return self.second(self.activation(self.first(x), self))


def _params(model):
    return {name: p.detach().clone() for name, p in model.named_parameters()}


def _change(model, moved, x):
    base = torch.func.functional_call(model, _params(model), (x,))
    return float((torch.func.functional_call(model, moved, (x,)) - base).abs().max() / base.abs().max())


def _rescaled(params, unit, a):
    """Hidden unit ``unit``'s incoming weights and bias times a, its outgoing column over a."""
    out = {k: v.clone() for k, v in params.items()}
    out["first.weight"][unit] *= a
    out["first.bias"][unit] *= a
    out["second.weight"][:, unit] /= a
    return out


def _permuted(params, order):
    out = {k: v.clone() for k, v in params.items()}
    out["first.weight"], out["first.bias"] = params["first.weight"][order], params["first.bias"][order]
    out["second.weight"] = params["second.weight"][:, order]
    out["slopes"] = params["slopes"][order]
    return out


@pytest.fixture
def x():
    return torch.randn(16, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("name", sorted(HOMOGENEOUS))
def test_a_positively_homogeneous_activation_has_the_rescale_and_permutation_of_relu(name, x):
    """Truth: the output under a rescale of hidden unit 2 by 1.7 and under a cyclic permutation of the
    hidden units (PReLU's slopes with them), applied by hand: unchanged to round-off; and the library
    finds one rescale per hidden unit and the permutation of the six (before: none, the operation
    unknown to the analysis)."""
    torch.manual_seed(0)
    model = Net(HOMOGENEOUS[name]).double()
    params = _params(model)
    assert _change(model, _rescaled(params, 2, 1.7), x) < 1e-13
    assert _change(model, _permuted(params, torch.arange(6).roll(1)), x) < 1e-13
    symmetries = sw.find_symmetries(model, x, logits=False)
    rescales = [sym for sym in symmetries.of_kind(Kind.RESCALE) if sym.incoming[0].param == "first.weight"]
    assert len(rescales) == 6
    permutations = [sym for sym in symmetries.of_kind(Kind.PERMUTATION) if sym.unit_count == 6]
    assert len(permutations) == 1
    if name == "prelu_per_unit":
        assert "slopes" in {slot.param for slot in permutations[0].slots}


@pytest.mark.parametrize("name", sorted(NOT_HOMOGENEOUS))
def test_an_activation_with_a_nonzero_threshold_has_no_rescale(name, x):
    """Truth: a rescale applied by hand changes the output (the threshold does not scale); the
    library proposes none, and still finds the permutation, which holds."""
    torch.manual_seed(0)
    model = Net(NOT_HOMOGENEOUS[name]).double()
    params = _params(model)
    assert _change(model, _rescaled(params, 2, 1.7), x) > 1e-6
    assert _change(model, _permuted(params, torch.arange(6).roll(1)), x) < 1e-13
    symmetries = sw.find_symmetries(model, x, logits=False)
    assert not [sym for sym in symmetries.of_kind(Kind.RESCALE) if sym.incoming[0].param == "first.weight"]
    assert len([sym for sym in symmetries.of_kind(Kind.PERMUTATION) if sym.unit_count == 6]) == 1
    assert symmetries.rejected == ()
