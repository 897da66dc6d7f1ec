"""Attention with a learned sink logit per head (GPT-OSS's: a column of one logit per head joins the
scores before the softmax and is dropped after), written here with its own class names. Truth: heads
exchanged by hand in float64. Before: the head permutation left the sinks in place and the exact check
refuted it (GPT-OSS's query-head permutations, both layers)."""

import math

import torch
from torch import nn
from torch.func import functional_call

import shockwatch as sw
from shockwatch.symmetry import Kind

D, HEADS, VOCAB = 8, 2, 13


class SinkAttention(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.table = nn.Embedding(VOCAB, D)
        self.q, self.k, self.v, self.o = (nn.Linear(D, D, bias=False) for _ in range(4))
        self.sink = nn.Parameter(torch.randn(HEADS))
        self.read = nn.Linear(D, VOCAB)

    def forward(self, ids):
        x = self.table(ids)
        b, t, _ = x.shape
        q, k, v = (f(x).view(b, t, HEADS, D // HEADS).transpose(1, 2) for f in (self.q, self.k, self.v))
        scores = q @ k.transpose(-1, -2) / math.sqrt(D // HEADS)
        sinks = self.sink.reshape(1, -1, 1, 1).expand(b, -1, t, 1)
        weights = torch.cat([scores, sinks], dim=-1).softmax(-1)[..., :-1]
        return self.read(x + self.o((weights @ v).transpose(1, 2).reshape(b, t, D)))


def test_heads_permute_with_their_sinks():
    """Exchanging the two heads (q, k, v rows, o columns) and their sink logits leaves the output
    unchanged; leaving the sinks in place does not. The library's head permutation names the sinks,
    and nothing is refuted."""
    torch.manual_seed(0)
    model = SinkAttention().double()
    with torch.no_grad():
        model.sink.copy_(torch.tensor([-1.0, 2.0]))
    ids = torch.randint(0, VOCAB, (2, 6), generator=torch.Generator().manual_seed(1))
    params = {name: p.detach().clone() for name, p in model.named_parameters()}
    half = D // HEADS
    order = torch.cat([torch.arange(half, D), torch.arange(half)])
    swapped = {**params, **{f"{n}.weight": params[f"{n}.weight"][order] for n in ("q", "k", "v")},
               "o.weight": params["o.weight"][:, order]}
    run = lambda p: functional_call(model, p, (ids,)).log_softmax(-1)
    change = lambda moved: float((run(moved) - run(params)).abs().max())
    assert change({**swapped, "sink": params["sink"].flip(0)}) < 1e-12
    assert change(swapped) > 1e-6
    found = sw.find_symmetries(model, ids)
    assert found.rejected == ()
    heads = [sym for sym in found.of_kind(Kind.PERMUTATION) if sym.label.endswith("/heads")]
    assert len(heads) == 1 and heads[0].unit_count == HEADS
    assert ("sink", 0, 0, HEADS) in {(slot.param, slot.dim, slot.start, slot.stop) for slot in heads[0].slots}
