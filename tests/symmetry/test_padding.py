"""Zeros padded along axes the units do not vary on (a convolution's "same" padding written out with
F.pad, Swin's window padding). Truth: a channel rescale applied by hand in float64. Before: F.pad was an
operation the analysis did not know, and the channels before it got nothing."""

import torch
from torch import nn
from torch.func import functional_call

import shockwatch as sw
from shockwatch.symmetry import Kind


class PaddedNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.first, self.second = nn.Conv2d(3, 6, 3), nn.Conv2d(6, 4, 3)
        self.read = nn.Linear(4, 5)

    def forward(self, x):
        x = nn.functional.pad(torch.relu(self.first(x)), (1, 1, 1, 1))  # "same" padding, written out
        return self.read(torch.relu(self.second(x)).mean((2, 3)))


def test_channels_rescale_through_zero_padding():
    """Channel 2 of the first convolution times a (its filter and bias), the second convolution's input
    channel 2 over a: the output is unchanged by hand; the library finds that rescale for each of the
    6 channels (through the padding), none refuted."""
    torch.manual_seed(0)
    model = PaddedNet().double()
    x = torch.randn(2, 3, 9, 9, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    params = {name: p.detach().clone() for name, p in model.named_parameters()}
    moved = dict(params)
    moved["first.weight"], moved["first.bias"], moved["second.weight"] = (
        params["first.weight"].clone(), params["first.bias"].clone(), params["second.weight"].clone())
    moved["first.weight"][2] *= 2.5
    moved["first.bias"][2] *= 2.5
    moved["second.weight"][:, 2] /= 2.5
    run = lambda p: functional_call(model, p, (x,))
    assert float((run(moved) - run(params)).abs().max() / run(params).abs().max()) < 1e-12
    found = sw.find_symmetries(model, x, logits=False)
    assert found.rejected == ()
    rescales = {frozenset((s.param, s.dim, s.start, s.stop) for s in sym.slots) for sym in found.of_kind(Kind.RESCALE)
                if sym.label.startswith("rescale/first/")}
    assert rescales == {frozenset({("first.weight", 0, c, c + 1), ("first.bias", 0, c, c + 1), ("second.weight", 1, c, c + 1)})
                        for c in range(6)}
