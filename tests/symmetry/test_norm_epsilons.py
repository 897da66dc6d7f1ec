"""Scale symmetries in front of group, instance and statistics-free batch norms (instance norm: a
channel normalised by its own statistics per sample, as a batch norm in training mode). Truth: the conv's
weight and bias multiplied by 3 by hand, with the norm's eps set to 0, leave the float64 output
unchanged to round-off. The exact check must zero each norm's own eps argument (read from the
operation's schema: group_norm takes it at 4, instance_norm at 7, the batch norm without running
statistics at 5), where a fixed table zeroed ``cudnn_enabled`` or nothing and kept eps = 1e-5, so
that these true symmetries were refuted at ~1e-6."""

import pytest
import torch
from torch import nn

import shockwatch as sw
from shockwatch.symmetry import Kind


def _conv_then(norm: nn.Module) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3), norm, nn.ReLU(), nn.Flatten(), nn.Linear(8 * 6 * 6, 4))


@pytest.mark.parametrize("norm, train, count", [
    (lambda: nn.GroupNorm(2, 8), False, 2),  # one scale per group of 4 channels
    (lambda: nn.InstanceNorm2d(8, affine=True), False, 8),  # one per channel: each is normalised alone
    (lambda: nn.BatchNorm2d(8, track_running_stats=False), True, 8),
])
def test_a_scale_in_front_of_the_norm_is_kept_and_its_eps_recorded(norm, train, count):
    model = _conv_then(norm()).double().train(train)
    x = torch.randn(4, 3, 8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    found = sw.find_symmetries(model, x)
    scales = [sym for sym in found.of_kind(Kind.SCALE) if any(slot.param == "0.weight" for slot in sym.slots)]
    assert len(scales) == count, (found.rejected, found.reasons)
    assert not found.rejected
    assert 1e-5 in found.epsilons
    # each scale by hand with its own factor, the norm's eps at 0 (1e-300 where torch refuses 0)
    model[1].eps = 1e-300
    with torch.no_grad():
        before = model(x)
        params = dict(model.named_parameters())
        for k, sym in enumerate(scales):
            for slot in sym.slots:
                params[slot.param].narrow(slot.dim, slot.start, slot.stop - slot.start).mul_(1.5 + 0.5 * k)
        after = model(x)
    assert float((after - before).abs().max()) < 1e-12 * float(before.abs().max())


def test_a_group_norms_gain_and_bias_rescale_against_the_next_layer():
    """After GroupNorm(2, 8) and a ReLU, channel c's gain and bias times a and the next convolution's
    input channel c over a leave the output unchanged (a > 0 passes the ReLU), as for a batch norm's
    affine map. By hand in float64; before, a group norm's affine parameters were no source."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.GroupNorm(2, 8), nn.ReLU(), nn.Conv2d(8, 4, 3), nn.Flatten(),
                          nn.Linear(4 * 5 * 5, 3)).eval()
    x = torch.randn(4, 3, 9, 9, generator=torch.Generator().manual_seed(1))
    found = sw.find_symmetries(model, x)
    assert not found.rejected
    gains = [sym for sym in found.of_kind(Kind.RESCALE) if sym.incoming[0].param == "1.weight"]
    assert len(gains) == 8
    assert {(s.param, s.dim) for s in gains[5].slots} == {("1.weight", 0), ("1.bias", 0), ("3.weight", 1)}
    model = model.double()
    with torch.no_grad():
        before = model(x.double()).log_softmax(-1)
        model[1].weight[5] *= 2.5
        model[1].bias[5] *= 2.5
        model[3].weight[:, 5] /= 2.5
        assert float((model(x.double()).log_softmax(-1) - before).abs().max()) < 1e-12
