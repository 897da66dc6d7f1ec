"""A model torch.export cannot trace whole (a branch on a tensor's value), around an attention module
called with two tensors. Before: its children were analysed only where called with one tensor, so the
attention got nothing ("never called with a single tensor input"); now each child is traced with the
arguments it received in the example forward pass. Truth: the attention's value/output GL applied by
hand in float64."""

import math

import pytest
import torch
from torch import nn
from torch.func import functional_call

import shockwatch as sw
from shockwatch.symmetry import Kind

D, HEADS, VOCAB = 8, 2, 11


class MaskedAttention(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.q, self.k, self.v, self.o = (nn.Linear(D, D) for _ in range(4))

    def forward(self, x, mask):
        b, t, _ = x.shape
        q, k, v = (f(x).view(b, t, HEADS, D // HEADS).transpose(1, 2) for f in (self.q, self.k, self.v))
        weights = (q @ k.transpose(-1, -2) / math.sqrt(D // HEADS) + mask).softmax(-1)
        return self.o((weights @ v).transpose(1, 2).reshape(b, t, D))


class Branching(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.table, self.attention, self.read = nn.Embedding(VOCAB, D), MaskedAttention(), nn.Linear(D, VOCAB)

    def forward(self, ids):
        x = self.table(ids)
        mask = torch.full((ids.shape[1], ids.shape[1]), -1e9).triu(1)
        x = x + self.attention(x, mask)
        if x.sum() > 0:  # a branch on a value: torch.export cannot trace the model whole
            x = 2 * x
        return self.read(x)


def test_a_child_called_with_several_tensors_is_traced_alone():
    """The value/output GL of head 0 (A on v's rows 0-4 and bias, A^-1 on o's columns 0-4) leaves the
    output unchanged by hand; the library, tracing the attention with the (x, mask) it received, finds
    GL for both heads' query/key and value/output, none refuted, and names the model as partial."""
    torch.manual_seed(0)
    model = Branching().double()
    ids = torch.randint(0, VOCAB, (2, 5), generator=torch.Generator().manual_seed(1))
    params = {name: p.detach().clone() for name, p in model.named_parameters()}
    a = torch.eye(4, dtype=torch.float64) + 0.4 * torch.randn(4, 4, dtype=torch.float64,
                                                              generator=torch.Generator().manual_seed(2))
    v, vb, o = params["attention.v.weight"].clone(), params["attention.v.bias"].clone(), params["attention.o.weight"].clone()
    v[:4], vb[:4], o[:, :4] = a @ v[:4], a @ vb[:4], o[:, :4] @ torch.linalg.inv(a)
    run = lambda p: functional_call(model, p, (ids,)).log_softmax(-1)
    moved = {**params, "attention.v.weight": v, "attention.v.bias": vb, "attention.o.weight": o}
    assert float((run(moved) - run(params)).abs().max()) < 1e-12
    found = sw.find_symmetries(model, ids)
    assert "<model>" in found.partial and found.rejected == ()
    labels = {sym.label for sym in found.of_kind(Kind.GL)}
    assert {f"gl/attention.q/head{h}/qk" for h in range(HEADS)} | {f"gl/attention.v/head{h}/vo" for h in range(HEADS)} <= labels
    head0 = next(sym for sym in found.of_kind(Kind.GL) if sym.label == "gl/attention.v/head0/vo")
    assert {(s.param, s.dim, s.start, s.stop) for s in head0.slots} == {
        ("attention.v.weight", 0, 0, 4), ("attention.v.bias", 0, 0, 4), ("attention.o.weight", 1, 0, 4)}


class WithSpare(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.used, self.spare = nn.Linear(4, 3), nn.Linear(4, 3)

    def forward(self, x, extra=None):
        return self.used(x) if extra is None else self.spare(extra)


def test_a_parameter_the_example_does_not_use_is_named_so():
    """The branch the example input did not take: its layer's reason says it was not used (before:
    "no symmetry found for it", as if it had been analysed), and the used layer gets its symmetries."""
    found = sw.find_symmetries(WithSpare(), torch.randn(5, 4))
    reasons = dict(found.reasons)
    assert reasons["spare.weight"].startswith("not used by the example forward pass")
    assert reasons["spare.bias"].startswith("not used by the example forward pass")
    assert {slot.param for sym in found for slot in sym.slots} >= {"used.weight", "used.bias"}


class TwoOutputs(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.first, self.second = nn.Linear(D, 16), nn.Linear(16, D)

    def forward(self, x):
        pre = self.first(x)
        return self.second(torch.relu(pre)), pre


class Pair(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.left, self.right = nn.Sequential(nn.Linear(D, 12), nn.ReLU()), nn.Sequential(nn.Linear(D, 12), nn.ReLU())
        self.right[0] = self.left[0]  # one layer in two children

    def forward(self, x):
        return self.left(x), self.right(x)


class Untraceable(nn.Module):
    """Its branch on a tensor's value stops torch.export: its children are analysed one by one."""

    def __init__(self) -> None:
        super().__init__()
        self.block, self.pair, self.head = TwoOutputs(), Pair(), nn.Linear(D + 16 + 24, 3)

    def forward(self, x):
        y, pre = self.block(x)
        if float(y.abs().sum()) > -1.0:
            y = y * 1.0
        a, b = self.pair(x)
        return self.head(torch.cat([y, pre, a, 2.0 * b], -1))


def test_a_child_analysed_alone_keeps_every_output_and_no_shared_layer():
    """The block returns (out, pre) and its caller reads both: a rescale of ``first``'s units with
    ``second``'s columns changes ``pre`` (by hand in float64: it changes the model's output), and was
    accepted when only the first output was traced. A layer in two children (``pair.left.0`` is
    ``pair.right.0``) has uses neither child sees; its rescales were accepted for each child apart (and
    named ``pair.right.0.weight``, which ``named_parameters`` does not list). Neither is proposed now,
    and every accepted symmetry names a parameter of the model."""
    torch.manual_seed(0)
    model = Untraceable()
    x = torch.randn(6, D, generator=torch.Generator().manual_seed(1))
    found = sw.find_symmetries(model, x)
    assert "<model>" in found.partial
    names = {name for name, _ in model.named_parameters()}
    assert all(slot.param in names for sym in found for slot in sym.slots)
    touched = {slot.param for sym in found for slot in sym.slots}
    assert not touched & {"block.first.weight", "pair.left.0.weight", "pair.left.0.bias"}
    model = model.double()
    params = {k: v.detach().clone() for k, v in model.named_parameters()}
    moved = {k: v.clone() for k, v in params.items()}
    moved["block.first.weight"][3] *= 2.0
    moved["block.first.bias"][3] *= 2.0
    moved["block.second.weight"][:, 3] /= 2.0
    run = lambda p: functional_call(model, p, (x.double(),))  # noqa: E731
    with torch.no_grad():
        assert float((run(moved) - run(params)).abs().max()) > 1e-3


def test_a_model_returning_several_tensors_is_told_which_one_counts():
    """(logits, aux): the symmetries are the first tensor's; scaling the aux head changes aux, which a
    loss reading aux would see, so find_symmetries says so (a UserWarning) rather than nothing."""
    class WithAux(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.body, self.head, self.aux = nn.Linear(D, 12), nn.Linear(12, 3), nn.Linear(12, 1)

        def forward(self, x):
            h = torch.relu(self.body(x))
            return self.head(h), self.aux(h)

    with pytest.warns(UserWarning, match="returns several tensors"):
        sw.find_symmetries(WithAux(), torch.randn(4, D))
