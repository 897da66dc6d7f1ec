"""Zeros padded along axes the units do not vary on (a convolution's "same" padding written out with
F.pad, Swin's window padding), and a decoder's transposed convolution and interpolation. Truth:
channel rescales applied by hand in float64. Before: all three were operations the analysis did not
know, and the channels before them got nothing."""

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


class UNet(nn.Module):
    """A small U-Net: a strided convolution down, a transposed convolution up, the skip concatenated
    on channels, an interpolation before the read-out."""

    def __init__(self) -> None:
        super().__init__()
        self.down1, self.down2 = nn.Conv2d(3, 4, 3, padding=1), nn.Conv2d(4, 6, 3, padding=1, stride=2)
        self.up = nn.ConvTranspose2d(6, 4, 2, stride=2)
        self.merge, self.out = nn.Conv2d(8, 4, 3, padding=1), nn.Conv2d(4, 2, 1)

    def forward(self, x):
        a = torch.relu(self.down1(x))
        u = torch.relu(self.up(torch.relu(self.down2(a))))
        m = torch.relu(self.merge(torch.cat([a, u], 1)))
        return self.out(nn.functional.interpolate(m, scale_factor=2.0, mode="bilinear"))


def test_a_decoder_with_transposed_convolution_and_interpolation():
    """By hand in float64, each a rescale by a of one channel and 1/a on what reads it: down2's channel
    1 against the transposed convolution's input channel 1 (its weight's dim 0); the transposed
    convolution's output channel 3 (weight dim 1, bias) against merge's input channel 4 + 3 (through the
    concatenation); merge's channel 2 against out's input channel 2 (through the interpolation). The
    library finds all three among its rescales, none refuted (before: the transposed convolution and
    the interpolation were unknown operations, 82% of such a model covered)."""
    torch.manual_seed(0)
    model = UNet().double()
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    params = {name: p.detach().clone() for name, p in model.named_parameters()}
    run = lambda p: functional_call(model, p, (x,))
    base = run(params)

    def rescaled(rows, columns):
        moved = {name: t.clone() for name, t in params.items()}
        for name, dim, index in rows:
            moved[name].narrow(dim, index, 1).mul_(1.7)
        for name, dim, index in columns:
            moved[name].narrow(dim, index, 1).div_(1.7)
        return float((run(moved) - base).abs().max() / base.abs().max())

    cases = [([("down2.weight", 0, 1), ("down2.bias", 0, 1)], [("up.weight", 0, 1)]),
             ([("up.weight", 1, 3), ("up.bias", 0, 3)], [("merge.weight", 1, 7)]),
             ([("merge.weight", 0, 2), ("merge.bias", 0, 2)], [("out.weight", 1, 2)])]
    for rows, columns in cases:
        assert rescaled(rows, columns) < 1e-12
    assert rescaled(cases[1][0], [("merge.weight", 1, 3)]) > 1e-6  # the concatenation's offset matters
    found = sw.find_symmetries(model, x, logits=False)
    assert found.rejected == ()
    rescales = {frozenset((s.param, s.dim, s.start) for s in sym.slots) for sym in found.of_kind(Kind.RESCALE)}
    for rows, columns in cases:
        assert frozenset(rows + columns) in rescales
