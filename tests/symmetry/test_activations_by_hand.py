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


class LayerScaled(nn.Module):
    """x + ls * down(relu(up(x))) then a head: a learned per-unit layer scale (CaiT, ConvNeXt, DINOv2)."""

    def __init__(self) -> None:
        super().__init__()
        self.up, self.down, self.head = nn.Linear(5, 7), nn.Linear(7, 5), nn.Linear(5, 3)
        self.ls = nn.Parameter(torch.linspace(0.5, 1.5, 5))

    def forward(self, x):
        return self.head(x + self.ls * self.down(torch.relu(self.up(x))))


class Gained(nn.Module):
    """l2(g * relu(l1 x)): a per-unit multiplier between two linear maps."""

    def __init__(self) -> None:
        super().__init__()
        self.l1, self.l2 = nn.Linear(4, 6), nn.Linear(6, 3)
        self.g = nn.Parameter(torch.linspace(0.5, 1.5, 6))

    def forward(self, x):
        return self.l2(self.g * torch.relu(self.l1(x)))


def _slots_of(sym):
    return {(slot.param, slot.start) for slot in sym.slots}


def test_a_learned_per_unit_multiplier_compensates_a_rescale(x):
    """Truth, by hand in float64: down's row 2 (and bias) times 1.7 with ls[2] over 1.7 leaves the
    output unchanged; so do l1's row 2 times 1.7 with g[2] over 1.7, and g[2] times 1.7 with l2's
    column 2 over 1.7. The library finds each as a rescale (before: the layer scale was in none, the
    multiplier only against l2)."""
    torch.manual_seed(0)
    model = LayerScaled().double()
    inputs = torch.randn(8, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    params = _params(model)
    moved = {k: v.clone() for k, v in params.items()}
    moved["down.weight"][2] *= 1.7
    moved["down.bias"][2] *= 1.7
    moved["ls"][2] /= 1.7
    assert _change(model, moved, inputs) < 1e-13
    found = sw.find_symmetries(model, inputs)
    assert any({("down.weight", 2), ("ls", 2)} <= _slots_of(sym) for sym in found.of_kind(Kind.RESCALE))

    torch.manual_seed(0)
    model = Gained().double()
    params = _params(model)
    for first, second in ((("l1.weight", 0), ("g", 0)), (("g", 0), ("l2.weight", 1))):
        moved = {k: v.clone() for k, v in params.items()}
        moved[first[0]].select(first[1], 2).mul_(1.7)
        if first[0] == "l1.weight":
            moved["l1.bias"][2] *= 1.7
        moved[second[0]].select(second[1], 2).div_(1.7)
        assert _change(model, moved, x) < 1e-13
    found = sw.find_symmetries(model, x, logits=False)
    rescales = [_slots_of(sym) for sym in found.of_kind(Kind.RESCALE)]
    assert any({("l1.weight", 2), ("g", 2)} <= slots for slots in rescales)
    assert any({("g", 2), ("l2.weight", 2)} <= slots for slots in rescales)
    assert found.rejected == ()


def test_dinov2_layer_scales_are_in_rescales_that_hold():
    """Hugging Face DINOv2 from a config: every layer scale (lambda1) is in a rescale with the rows of
    the projection before it; truth, by hand in float64: the attention output's row 0 (and bias)
    times 1.7 with its layer scale's entry 0 over 1.7 leaves the output unchanged."""
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    config = transformers.Dinov2Config(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
                                       image_size=16, patch_size=8, layerscale_value=0.5)
    model = transformers.Dinov2Model(config).double().eval()
    pixels = torch.randn(2, 3, 16, 16, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    found = sw.find_symmetries(model, {"pixel_values": pixels}, logits=False)
    scales = [name for name, _ in model.named_parameters() if name.endswith("lambda1")]
    covered = {slot.param for sym in found.of_kind(Kind.RESCALE) for slot in sym.slots}
    assert len(scales) == 2 and set(scales) <= covered
    params = _params(model)
    (projection,) = [name for name in params if name.startswith("encoder.layer.0.attention.") and name.endswith("weight")
                     and any({(name, 0), ("encoder.layer.0.layer_scale1.lambda1", 0)} <= _slots_of(sym)
                             for sym in found.of_kind(Kind.RESCALE))]
    moved = {k: v.clone() for k, v in params.items()}
    moved[projection][0] *= 1.7
    moved[projection.removesuffix("weight") + "bias"][0] *= 1.7
    moved["encoder.layer.0.layer_scale1.lambda1"][0] /= 1.7
    run = lambda p: torch.func.functional_call(model, p, (pixels,)).last_hidden_state
    base = run(params)
    assert float((run(moved) - base).abs().max() / base.abs().max()) < 1e-13


@pytest.mark.parametrize("multiplier", [1, 2])
def test_a_depthwise_convolution_compensates_a_rescale_of_its_input_channel(multiplier):
    """conv -> BatchNorm -> ReLU -> depthwise conv (each input channel read by its own filters:
    ``multiplier`` of them) -> BatchNorm -> pool -> head. Truth, by hand in float64 (batch norms in
    training mode): BN1's gain and bias of channel 2 times 1.7 with the depthwise filters of
    channel 2 over 1.7 leave the output unchanged; the library finds that rescale (before: none, a
    grouped convolution stopped the walk). The rescale is exact at any eps: the depthwise filter
    undoes the factor before the second norm."""
    class Separable(nn.Module):
        def __init__(self):
            super().__init__()
            self.stem, self.n1 = nn.Conv2d(3, 4, 3, padding=1, bias=False), nn.BatchNorm2d(4)
            self.dw = nn.Conv2d(4, 4 * multiplier, 3, padding=1, groups=4, bias=False)
            self.n2 = nn.BatchNorm2d(4 * multiplier)
            self.fc = nn.Linear(4 * multiplier, 3)

        def forward(self, x):
            x = torch.relu(self.n1(self.stem(x)))
            return self.fc(torch.relu(self.n2(self.dw(x))).mean((2, 3)))

    torch.manual_seed(0)
    model = Separable().double()
    images = torch.randn(4, 3, 6, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    params = _params(model)
    moved = {k: v.clone() for k, v in params.items()}
    moved["n1.weight"][2] *= 1.7
    moved["n1.bias"][2] *= 1.7
    moved["dw.weight"][2 * multiplier:3 * multiplier] /= 1.7
    assert _change(model, moved, images) < 1e-13
    found = sw.find_symmetries(model, images)
    assert any({("n1.weight", 2), ("dw.weight", 2 * multiplier)} <= _slots_of(sym) for sym in found.of_kind(Kind.RESCALE))
    assert found.rejected == ()
