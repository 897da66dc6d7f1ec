"""torch's own nn.MultiheadAttention in cross-attention (its in_proj_weight split into query rows and
key/value rows, or separate q/k/v weights with a split in_proj_bias when kdim differs) and
nn.TransformerDecoderLayer. Truth: GL elements applied by hand in float64 to the rows of the shared
parameters. Before: a linear map reading a slice of a parameter was no producer, so cross-attention
had no GL at all (a TransformerDecoderLayer model 53% covered, 87% now)."""

import pytest
import torch
from torch import nn

import shockwatch as sw
from shockwatch.symmetry import Kind

E, HEADS = 8, 2
D = E // HEADS


class Cross(nn.Module):
    def __init__(self, kdim=None) -> None:
        super().__init__()
        self.query, self.memory = nn.Linear(5, E), nn.Linear(5, E if kdim is None else kdim)
        self.att = nn.MultiheadAttention(E, HEADS, batch_first=True, kdim=kdim, vdim=kdim)
        self.head = nn.Linear(E, 3)

    def forward(self, x):
        kv = self.memory(x.flip(1))
        return self.head(self.att(self.query(x), kv, kv, need_weights=False)[0])


def _gl(found):
    return {sym.label: {(s.param, s.dim, s.start, s.stop) for s in sym.slots} for sym in found.of_kind(Kind.GL)}


@pytest.mark.parametrize("kdim", [None, 6])
def test_cross_attention_heads_have_their_gl(kdim):
    torch.manual_seed(0)
    model = Cross(kdim)
    x = torch.randn(2, 7, 5, generator=torch.Generator().manual_seed(1))
    found = sw.find_symmetries(model, x)
    assert not found.rejected
    gl = _gl(found)
    q, k, v = (("att.in_proj_weight", 0, 0), ("att.in_proj_weight", 0, E), ("att.in_proj_weight", 0, 2 * E)) \
        if kdim is None else (("att.q_proj_weight", 0, 0), ("att.k_proj_weight", 0, 0), ("att.v_proj_weight", 0, 0))
    head = 1
    rows = lambda where: (where[0], where[1], where[2] + head * D, where[2] + (head + 1) * D)
    bias = lambda start: ("att.in_proj_bias", 0, start + head * D, start + (head + 1) * D)
    assert gl[f"gl/att/head{head}/qk"] == {rows(q), bias(0), rows(k), bias(E)}
    assert gl[f"gl/att/head{head}/vo"] == {rows(v), bias(2 * E), ("att.out_proj.weight", 1, head * D, (head + 1) * D)}

    model = model.double()
    x = x.double()
    generator = torch.Generator().manual_seed(2)
    m = torch.eye(D, dtype=torch.float64) + 0.4 * torch.randn(D, D, dtype=torch.float64, generator=generator)
    params = dict(model.named_parameters())
    with torch.no_grad():
        before = model(x).log_softmax(-1)
        for (name, _, start, stop), factor in ((rows(q), m), (bias(0), m), (rows(k), torch.linalg.inv(m).T),
                                               (bias(E), torch.linalg.inv(m).T), (rows(v), m), (bias(2 * E), m)):
            params[name][start:stop] = factor @ params[name][start:stop]
        params["att.out_proj.weight"][:, head * D:(head + 1) * D] @= torch.linalg.inv(m)
        assert float((model(x).log_softmax(-1) - before).abs().max()) < 1e-12
        params["att.out_proj.weight"][:, head * D:(head + 1) * D] @= m.T  # a wrong compensation
        assert float((model(x).log_softmax(-1) - before).abs().max()) > 1e-6


def test_a_transformer_decoder_layer_is_covered_and_nothing_refuted():
    class Decoder(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.table, self.source = nn.Embedding(20, 16), nn.Linear(5, 16)
            self.layer = nn.TransformerDecoderLayer(16, 2, 32, dropout=0.0, batch_first=True)
            self.head = nn.Linear(16, 20)

        def forward(self, ids, src):
            return self.head(self.layer(self.table(ids), self.source(src)))

    torch.manual_seed(0)
    model = Decoder().eval()
    found = sw.find_symmetries(model, (torch.randint(0, 20, (2, 6)), torch.randn(2, 7, 5)))
    assert not found.rejected
    labels = {sym.label for sym in found.of_kind(Kind.GL)}
    assert {f"gl/layer.multihead_attn/head{h}/{part}" for h in range(2) for part in ("qk", "vo")} <= labels
    params = dict(model.named_parameters())
    covered = {slot.param for sym in found for slot in sym.slots}
    assert sum(params[n].numel() for n in covered) / sum(p.numel() for p in params.values()) > 0.85
