"""A LayerNorm whose gain is 1 + w (Megatron's and Nemotron's LayerNorm1P), written here with its own
class names. Truth: the residual stream's permutation applied by hand in float64. Before: the
parameter w, whose only use is w + 1, was taken for a parameter added to the stream (a class
token), which broke the stream's permutation (Nemotron: 44% of its parameters covered, now 100%).
And a block applied several times in a loop, its weights shared by every application."""

import torch
from torch import nn
from torch.func import functional_call

import shockwatch as sw
from shockwatch.symmetry import Kind

D, VOCAB = 6, 11


class OnePlusNorm(nn.Module):
    def __init__(self, d: int) -> None:
        super().__init__()
        self.w, self.b = nn.Parameter(torch.randn(d) * 0.1), nn.Parameter(torch.randn(d) * 0.1)

    def forward(self, x):
        return nn.functional.layer_norm(x, (x.shape[-1],), self.w + 1.0, self.b, 1e-5)


class Stack(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.table, self.n1, self.up, self.down = nn.Embedding(VOCAB, D), OnePlusNorm(D), nn.Linear(D, 9), nn.Linear(9, D)
        self.n2, self.read = OnePlusNorm(D), nn.Linear(D, VOCAB)

    def forward(self, ids):
        x = self.table(ids)
        x = x + self.down(torch.tanh(self.up(self.n1(x))))
        return self.read(self.n2(x))


def test_a_one_plus_gain_norm_permutes_with_the_stream():
    """Permuting the stream's 6 features (the table's columns, both norms' w and b, down's rows and
    bias, up's and read's columns) leaves the log-probabilities unchanged to round-off; the library
    finds exactly that permutation (w permutes as 1 + w does) and refutes nothing."""
    torch.manual_seed(0)
    model = Stack().double()
    ids = torch.randint(0, VOCAB, (3, 5), generator=torch.Generator().manual_seed(2))
    params = {name: p.detach().clone() for name, p in model.named_parameters()}
    order = torch.tensor([3, 0, 5, 1, 4, 2])
    roles = {"table.weight": (1,), "n1.w": (0,), "n1.b": (0,), "n2.w": (0,), "n2.b": (0,), "up.weight": (1,),
             "down.weight": (0,), "down.bias": (0,), "read.weight": (1,)}
    moved = dict(params)
    for name, dims in roles.items():
        for dim in dims:
            moved[name] = moved[name].index_select(dim, order)
    run = lambda p: functional_call(model, p, (ids,)).log_softmax(-1)
    assert float((run(moved) - run(params)).abs().max()) < 1e-12
    found = sw.find_symmetries(model, ids)
    assert found.rejected == ()
    stream = [sym for sym in found.of_kind(Kind.PERMUTATION) if sym.label == "permutation/residual_stream"]
    assert len(stream) == 1
    assert {(slot.param, slot.dim) for slot in stream[0].slots} == {(n, d) for n, dims in roles.items() for d in dims}


class Looped(nn.Module):
    """One residual block applied three times in a loop (a looped / recurrent-depth network)."""

    def __init__(self) -> None:
        super().__init__()
        self.table, self.norm = nn.Embedding(VOCAB, D), nn.LayerNorm(D)
        self.up, self.down, self.read = nn.Linear(D, 9), nn.Linear(9, D), nn.Linear(D, VOCAB)

    def forward(self, ids):
        x = self.table(ids)
        for _ in range(3):
            x = x + self.down(torch.relu(self.up(self.norm(x))))
        return self.read(x)


def test_a_block_applied_in_a_loop():
    """Hidden unit 4 of the looped block scaled by a (up's row and bias) with down's column over a
    leaves the output unchanged (each of the three applications is), by hand in float64; the library
    finds that rescale for each of the 9 units, with the slots of the one set of weights, and the
    units' permutation, reading the block at all three applications (before: "read by 3 operations",
    nothing proposed)."""
    torch.manual_seed(0)
    model = Looped().double()
    ids = torch.randint(0, VOCAB, (3, 5), generator=torch.Generator().manual_seed(2))
    params = {name: p.detach().clone() for name, p in model.named_parameters()}
    up, bias, down = params["up.weight"].clone(), params["up.bias"].clone(), params["down.weight"].clone()
    up[4], bias[4], down[:, 4] = up[4] * 3.0, bias[4] * 3.0, down[:, 4] / 3.0
    run = lambda p: functional_call(model, p, (ids,)).log_softmax(-1)
    assert float((run({**params, "up.weight": up, "up.bias": bias, "down.weight": down}) - run(params)).abs().max()) < 1e-12
    found = sw.find_symmetries(model, ids)
    assert found.rejected == ()
    rescales = {frozenset((s.param, s.dim, s.start, s.stop) for s in sym.slots) for sym in found.of_kind(Kind.RESCALE)
                if sym.label.startswith("rescale/up/")}
    assert rescales == {frozenset({("up.weight", 0, i, i + 1), ("up.bias", 0, i, i + 1), ("down.weight", 1, i, i + 1)})
                        for i in range(9)}
    assert any(sym.label == "permutation/up" and sym.unit_count == 9 for sym in found.of_kind(Kind.PERMUTATION))
