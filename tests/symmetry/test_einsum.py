"""Attention and linear maps written with torch.einsum, as research code often is, and F.glu (class and
parameter names of our own). Truth: group elements applied by hand in float64, the log-probabilities
compared; and torch.einsum itself for the decomposition the analysis reads. Before: einsum was "an
operation the analysis does not know": no head's GL, no hidden unit (31% of the parameters covered)."""

import pytest
import torch
from torch import nn
from torch.func import functional_call

import shockwatch as sw
from shockwatch.symmetry import Kind
from shockwatch.symmetry.trace import _einsum_by_matmul

D, HEADS, VOCAB, WIDE = 8, 2, 13, 12


class Mixer(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.wq, self.wk, self.wv, self.wo = (nn.Linear(D, D) for _ in range(4))

    def forward(self, x):
        b, t, _ = x.shape
        q, k, v = (proj(x).view(b, t, HEADS, -1) for proj in (self.wq, self.wk, self.wv))
        weights = torch.einsum("bqhd,bkhd->bhqk", q, k).softmax(-1)
        return self.wo(torch.einsum("bhqk,bkhd->bqhd", weights, v).reshape(b, t, D))


class Tower(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.table, self.norm, self.mix = nn.Embedding(VOCAB, D), nn.LayerNorm(D), Mixer()
        self.up, self.down = nn.Parameter(torch.randn(D, WIDE) * 0.3), nn.Parameter(torch.randn(WIDE, VOCAB) * 0.3)

    def forward(self, ids):
        x = self.table(ids)
        x = x + self.mix(self.norm(x))
        return torch.einsum("btf,fv->btv", torch.relu(torch.einsum("btd,df->btf", x, self.up)), self.down)


@pytest.mark.parametrize("equation, shapes", [
    ("bqhd,bkhd->bhqk", [(2, 3, 4, 5), (2, 6, 4, 5)]), ("bhqk,bkhd->bqhd", [(2, 4, 3, 6), (2, 6, 4, 5)]),
    ("btd,fd->btf", [(2, 3, 4), (5, 4)]), ("ijk,ikl->jl", [(2, 3, 4), (2, 4, 5)]), ("i,j->ij", [(3,), (4,)]),
    ("abc->ca", [(2, 3, 4)]), ("ab,ab->", [(2, 3), (2, 3)]), ("btd,dhe->bthe", [(2, 3, 4), (4, 2, 5)])])
def test_the_decomposition_is_einsum(equation, shapes):
    generator = torch.Generator().manual_seed(0)
    operands = [torch.randn(*shape, dtype=torch.float64, generator=generator) for shape in shapes]
    want = torch.einsum(equation, *operands)
    assert float((_einsum_by_matmul(equation, operands) - want).abs().max()) < 1e-13 * float(want.abs().max())
    assert _einsum_by_matmul("...ij,...jk->...ik", operands) is NotImplemented
    assert _einsum_by_matmul("ii->i", operands[:1]) is NotImplemented


def test_heads_and_hidden_units_written_with_einsum():
    torch.manual_seed(0)
    model = Tower()
    ids = torch.randint(0, VOCAB, (2, 6), generator=torch.Generator().manual_seed(1))
    found = sw.find_symmetries(model, ids)
    assert not found.rejected
    gl = {frozenset(slot.param for slot in sym.slots) for sym in found.of_kind(Kind.GL)}
    assert len(found.of_kind(Kind.GL)) == 2 * HEADS  # query/key and value/output per head
    assert frozenset({"mix.wq.weight", "mix.wq.bias", "mix.wk.weight", "mix.wk.bias"}) in gl
    hidden = [sym for sym in found.of_kind(Kind.RESCALE) if {slot.param for slot in sym.slots} == {"up", "down"}]
    assert len(hidden) == WIDE
    covered = {slot.param for sym in found for slot in sym.slots}
    assert covered == {name for name, _ in model.named_parameters()}

    model = model.double()
    params = {k: v.detach().clone() for k, v in model.named_parameters()}
    run = lambda p: functional_call(model, p, (ids,)).log_softmax(-1)
    base = run(params)
    generator = torch.Generator().manual_seed(2)
    a = torch.eye(D // HEADS, dtype=torch.float64) + 0.3 * torch.randn(D // HEADS, D // HEADS, dtype=torch.float64,
                                                                       generator=generator)
    moved = {k: v.clone() for k, v in params.items()}
    head = slice(0, D // HEADS)  # head 0: q -> a q, k -> a^-T k keeps q . k
    moved["mix.wq.weight"][head] = a @ params["mix.wq.weight"][head]
    moved["mix.wq.bias"][head] = a @ params["mix.wq.bias"][head]
    moved["mix.wk.weight"][head] = torch.linalg.inv(a).T @ params["mix.wk.weight"][head]
    moved["mix.wk.bias"][head] = torch.linalg.inv(a).T @ params["mix.wk.bias"][head]
    head = slice(D // HEADS, D)  # head 1: v -> a v, the output's columns -> times a^-1
    moved["mix.wv.weight"][head] = a @ params["mix.wv.weight"][head]
    moved["mix.wv.bias"][head] = a @ params["mix.wv.bias"][head]
    moved["mix.wo.weight"][:, head] = params["mix.wo.weight"][:, head] @ torch.linalg.inv(a)
    moved["up"][:, 3] *= 2.5  # a ReLU unit: its input column times 2.5, its output row over 2.5
    moved["down"][3] /= 2.5
    with torch.no_grad():
        assert float((run(moved) - base).abs().max()) < 1e-12 * float(base.abs().max())
        moved["down"][3] *= 2.5
        assert float((run(moved) - base).abs().max()) > 1e-6


def test_glu_written_with_the_functional():
    """F.glu(a(x)) = a_1 * sigmoid(a_2): the value half's units rescale against the next layer's
    columns, and the (value, gate) pairs permute together. By hand in float64; glu was an unknown
    operation before (nothing for ``a``)."""
    class Gated(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b = nn.Linear(6, 2 * WIDE), nn.Linear(WIDE, 3)

        def forward(self, x):
            return self.b(nn.functional.glu(self.a(x), -1))

    torch.manual_seed(0)
    model = Gated()
    x = torch.randn(5, 6, generator=torch.Generator().manual_seed(1))
    found = sw.find_symmetries(model, x)
    assert not found.rejected
    assert len(found.of_kind(Kind.RESCALE)) == WIDE and len(found.of_kind(Kind.PERMUTATION)) == 1
    model = model.double()
    x = x.double()
    order = torch.randperm(WIDE, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        before = model(x).log_softmax(-1)
        model.a.weight[4] *= 3.0  # value unit 4 (the gate half, rows WIDE.., untouched)
        model.a.bias[4] *= 3.0
        model.b.weight[:, 4] /= 3.0
        rows = torch.cat([order, order + WIDE])
        model.a.weight.copy_(model.a.weight[rows])
        model.a.bias.copy_(model.a.bias[rows])
        model.b.weight.copy_(model.b.weight[:, order])
        assert float((model(x).log_softmax(-1) - before).abs().max()) < 1e-13
