"""torch's recurrent layers (nn.LSTM, nn.GRU, nn.RNN: one ATen operation holding every layer's
weights). Truth: hidden units permuted by hand in float64. Before: nothing but the output head's
translations was found (the operation was unknown), and every weight's reason read "no symmetry found"."""

import pytest
import torch
from torch import nn
from torch.func import functional_call

import shockwatch as sw
from shockwatch.symmetry import Kind

VOCAB, WIDTH, HIDDEN = 11, 6, 5
GATES = {nn.LSTM: 4, nn.GRU: 3, nn.RNN: 1}


class Recurrent(nn.Module):
    def __init__(self, cell) -> None:
        super().__init__()
        self.table = nn.Embedding(VOCAB, WIDTH)
        self.cell = cell(WIDTH, HIDDEN, num_layers=2, batch_first=True)
        self.read = nn.Linear(HIDDEN, VOCAB)

    def forward(self, ids):
        return self.read(self.cell(self.table(ids))[0])


def _gate_rows(order: torch.Tensor, gates: int) -> torch.Tensor:
    """The row order that permutes the units inside each of ``gates`` blocks of HIDDEN rows."""
    return torch.cat([g * HIDDEN + order for g in range(gates)])


@pytest.mark.parametrize("cell", [nn.LSTM, nn.GRU, nn.RNN])
def test_hidden_units_of_each_layer_permute(cell):
    """Layer 0's units permuted by hand (the rows of each gate block of weight_ih_l0, weight_hh_l0
    and both biases, weight_hh_l0's columns, weight_ih_l1's columns) leave the log-probabilities
    unchanged, as do layer 1's (its rows and weight_hh_l1's columns, the head's columns) and the
    embedding's features (the table's and weight_ih_l0's columns); without weight_hh_l0's columns
    the first does not. The library finds exactly these three permutations, none refuted, every
    parameter covered."""
    torch.manual_seed(0)
    model = Recurrent(cell).double()
    ids = torch.randint(0, VOCAB, (3, 7), generator=torch.Generator().manual_seed(1))
    params = {name: p.detach().clone() for name, p in model.named_parameters()}
    run = lambda p: functional_call(model, p, (ids,)).log_softmax(-1)
    change = lambda moved: float((run({**params, **moved}) - run(params)).abs().max())
    gates, order = GATES[cell], torch.tensor([2, 0, 4, 1, 3])
    rows = _gate_rows(order, gates)
    layer0 = {f"cell.{n}_l0": params[f"cell.{n}_l0"][rows] for n in ("weight_ih", "bias_ih", "bias_hh")}
    layer0["cell.weight_hh_l0"] = params["cell.weight_hh_l0"][rows][:, order]
    layer0["cell.weight_ih_l1"] = params["cell.weight_ih_l1"][:, order]
    assert change(layer0) < 1e-12
    assert change({**layer0, "cell.weight_hh_l0": params["cell.weight_hh_l0"][rows]}) > 1e-6
    layer1 = {f"cell.{n}_l1": params[f"cell.{n}_l1"][rows] for n in ("weight_ih", "bias_ih", "bias_hh")}
    layer1["cell.weight_hh_l1"] = params["cell.weight_hh_l1"][rows][:, order]
    layer1["read.weight"] = params["read.weight"][:, order]
    assert change(layer1) < 1e-12
    features = torch.tensor([5, 3, 0, 1, 4, 2])
    assert change({"table.weight": params["table.weight"][:, features],
                   "cell.weight_ih_l0": params["cell.weight_ih_l0"][:, features]}) < 1e-12

    found = sw.find_symmetries(model, ids)
    assert found.rejected == () and dict(found.reasons) == {}
    perms = {sym.label: {(s.param, s.dim, s.start, s.stop) for s in sym.slots} for sym in found.of_kind(Kind.PERMUTATION)}
    blocks = lambda name: {(name, 0, g * HIDDEN, (g + 1) * HIDDEN) for g in range(gates)}
    assert perms["permutation/cell/layer0"] == (
        blocks("cell.weight_ih_l0") | blocks("cell.weight_hh_l0") | blocks("cell.bias_ih_l0") | blocks("cell.bias_hh_l0")
        | {("cell.weight_hh_l0", 1, 0, HIDDEN), ("cell.weight_ih_l1", 1, 0, HIDDEN)})
    assert perms["permutation/cell/layer1"] == (
        blocks("cell.weight_ih_l1") | blocks("cell.weight_hh_l1") | blocks("cell.bias_ih_l1") | blocks("cell.bias_hh_l1")
        | {("cell.weight_hh_l1", 1, 0, HIDDEN), ("read.weight", 1, 0, HIDDEN)})
    assert any({("table.weight", 1, 0, WIDTH), ("cell.weight_ih_l0", 1, 0, WIDTH)} <= slots for slots in perms.values())


class Bidirectional(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.table = nn.Embedding(VOCAB, WIDTH)
        self.cell = nn.LSTM(WIDTH, HIDDEN, num_layers=2, batch_first=True, bidirectional=True)
        self.read = nn.Linear(2 * HIDDEN, VOCAB)

    def forward(self, ids):
        return self.read(self.cell(self.table(ids))[0])


def test_each_direction_of_a_bidirectional_layer_permutes():
    """A bidirectional 2-layer LSTM: layer 0's backward units permuted by hand (the rows of each gate
    block of its *_reverse weights and biases, weight_hh_l0_reverse's columns, and columns H..2H of
    both directions' weight_ih_l1) leave the output unchanged; the library finds that permutation
    (label .../layer0/backward) with exactly those slots, one per direction and layer, and the
    embedding's with both directions' weight_ih_l0 columns; nothing refuted, everything covered."""
    torch.manual_seed(0)
    model = Bidirectional().double()
    ids = torch.randint(0, VOCAB, (3, 7), generator=torch.Generator().manual_seed(1))
    params = {name: p.detach().clone() for name, p in model.named_parameters()}
    run = lambda p: functional_call(model, p, (ids,)).log_softmax(-1)
    order = torch.tensor([2, 0, 4, 1, 3])
    rows = _gate_rows(order, 4)
    moved = {f"cell.{n}_l0_reverse": params[f"cell.{n}_l0_reverse"][rows] for n in ("weight_ih", "bias_ih", "bias_hh")}
    moved["cell.weight_hh_l0_reverse"] = params["cell.weight_hh_l0_reverse"][rows][:, order]
    columns = torch.cat([torch.arange(HIDDEN), HIDDEN + order])
    for name in ("cell.weight_ih_l1", "cell.weight_ih_l1_reverse"):
        moved[name] = params[name][:, columns]
    assert float((run({**params, **moved}) - run(params)).abs().max()) < 1e-12
    found = sw.find_symmetries(model, ids)
    assert found.rejected == () and dict(found.reasons) == {}
    perms = {sym.label: {(s.param, s.dim, s.start, s.stop) for s in sym.slots} for sym in found.of_kind(Kind.PERMUTATION)}
    assert {f"permutation/cell/layer{layer}/{d}" for layer in (0, 1) for d in ("forward", "backward")} <= set(perms)
    blocks = lambda name: {(name, 0, g * HIDDEN, (g + 1) * HIDDEN) for g in range(4)}
    assert perms["permutation/cell/layer0/backward"] == (
        blocks("cell.weight_ih_l0_reverse") | blocks("cell.weight_hh_l0_reverse") | blocks("cell.bias_ih_l0_reverse")
        | blocks("cell.bias_hh_l0_reverse") | {("cell.weight_hh_l0_reverse", 1, 0, HIDDEN),
                                               ("cell.weight_ih_l1", 1, HIDDEN, 2 * HIDDEN),
                                               ("cell.weight_ih_l1_reverse", 1, HIDDEN, 2 * HIDDEN)})
    assert ("read.weight", 1, HIDDEN, 2 * HIDDEN) in perms["permutation/cell/layer1/backward"]
    assert any({("cell.weight_ih_l0", 1, 0, WIDTH), ("cell.weight_ih_l0_reverse", 1, 0, WIDTH)} <= slots
               for slots in perms.values())
