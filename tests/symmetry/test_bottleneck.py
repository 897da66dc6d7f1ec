"""GL(r) of a linear bottleneck: a LoRA adapter written from scratch (a frozen base layer plus
B A, r = 4) and a factorised projection. Truth: an invertible r x r matrix applied by hand in float64
(A -> M A, B -> B M^-1); a nonlinearity between A and B leaves only the rescales and permutations."""

import torch
from torch import nn

import shockwatch as sw
from shockwatch.symmetry import Kind

RANK = 4


class Adapted(nn.Module):
    def __init__(self, fan_in: int, fan_out: int, between=nn.Identity) -> None:
        super().__init__()
        self.base = nn.Linear(fan_in, fan_out).requires_grad_(False)
        self.down, self.up, self.between = nn.Linear(fan_in, RANK, bias=False), nn.Linear(RANK, fan_out, bias=False), between()

    def forward(self, x):
        return self.base(x) + 2.0 * self.up(self.between(self.down(x)))


class Tuned(nn.Module):
    def __init__(self, between=nn.Identity) -> None:
        super().__init__()
        self.first, self.second = Adapted(6, 16, between), Adapted(16, 3, between)

    def forward(self, x):
        return self.second(torch.relu(self.first(x)))


def test_a_low_rank_adapter_has_its_full_gl():
    torch.manual_seed(0)
    model = Tuned()
    x = torch.randn(8, 6, generator=torch.Generator().manual_seed(1))
    found = sw.find_symmetries(model, x)
    assert not found.rejected
    gl = {sym.label: sym for sym in found.of_kind(Kind.GL)}
    assert set(gl) == {"gl/first.down/bottleneck", "gl/second.down/bottleneck"}
    first = gl["gl/first.down/bottleneck"]
    assert first.unit_count == RANK
    assert {(s.param, s.dim, s.start, s.stop) for s in first.slots} == {("first.down.weight", 0, 0, RANK),
                                                                      ("first.up.weight", 1, 0, RANK)}
    model = model.double()
    x = x.double()
    m = torch.eye(RANK, dtype=torch.float64) + 0.5 * torch.randn(RANK, RANK, dtype=torch.float64,
                                                                generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        before = model(x).log_softmax(-1)
        model.first.down.weight.copy_(m @ model.first.down.weight)
        model.first.up.weight.copy_(model.first.up.weight @ torch.linalg.inv(m))
        assert float((model(x).log_softmax(-1) - before).abs().max()) < 1e-12
        model.first.up.weight.copy_(model.first.up.weight @ m.T)  # a wrong compensation: changed
        assert float((model(x).log_softmax(-1) - before).abs().max()) > 1e-6


def test_a_nonlinearity_in_the_bottleneck_keeps_only_rescales_and_permutations():
    torch.manual_seed(0)
    model = Tuned(between=nn.ReLU)
    found = sw.find_symmetries(model, torch.randn(8, 6, generator=torch.Generator().manual_seed(1)))
    assert not found.of_kind(Kind.GL) and not found.rejected
    assert len([s for s in found.of_kind(Kind.RESCALE) if s.label.startswith("rescale/first.down")]) == RANK


def test_a_depthwise_map_mixes_no_channels():
    """A depthwise convolution's output channel c reads input channel c alone: no M can mix its
    outputs (M W is no depthwise weight), so its channels keep their per-channel rescales against
    the head, and no GL is proposed (one was, refuted by the exact check, and the rescales were lost).
    Truth: a channel's rescale by hand in float64."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.SiLU(), nn.Conv2d(8, 8, 3, groups=8), nn.AdaptiveAvgPool2d(1),
                          nn.Flatten(), nn.Linear(8, 3))
    x = torch.randn(4, 3, 9, 9, generator=torch.Generator().manual_seed(1))
    found = sw.find_symmetries(model, x)
    assert not found.rejected and not found.of_kind(Kind.GL)
    assert len([s for s in found.of_kind(Kind.RESCALE) if s.label.startswith("rescale/2/")]) == 8
    model = model.double()
    with torch.no_grad():
        before = model(x.double()).log_softmax(-1)
        model[2].weight[5] *= 3.0
        model[2].bias[5] *= 3.0
        model[5].weight[:, 5] /= 3.0
        assert float((model(x.double()).log_softmax(-1) - before).abs().max()) < 1e-12
