"""Permutation symmetries are accepted only if both generators of S_n leave the output unchanged."""

import itertools
import math

import pytest
import torch
from torch import nn

import shockwatch as sw
from shockwatch.symmetry import Kind, permutation_generators, permute


@pytest.mark.parametrize("units", [2, 3, 4, 5])
def test_the_two_generators_generate_the_whole_symmetric_group(units):
    """Truth: |S_n| = n!. The closure of the two permutations under composition has n! elements."""
    generators = [tuple(g.tolist()) for g in permutation_generators(units)]
    seen, frontier = {tuple(range(units))}, [tuple(range(units))]
    while frontier:
        current = frontier.pop()
        for g in generators:
            composed = tuple(current[i] for i in g)
            if composed not in seen:
                seen.add(composed)
                frontier.append(composed)
    assert len(seen) == math.factorial(units)
    assert permutation_generators(1) == [] and permutation_generators(0) == []


class Heads(nn.Module):
    """Fused-QKV attention written by hand (names no library uses), with an optional learned per-head
    temperature: with it the heads are distinguishable and no permutation of them is a symmetry."""

    def __init__(self, heads: int, temperature: bool, d: int = 8, vocab: int = 11) -> None:
        super().__init__()
        self.table, self.mix, self.back = nn.Embedding(vocab, d), nn.Linear(d, 3 * d), nn.Linear(d, d)
        self.read = nn.Linear(d, vocab)
        self.heads = heads
        self.temp = nn.Parameter(torch.linspace(0.5, 2.0, heads).view(1, heads, 1, 1)) if temperature else None

    def forward(self, ids):
        x = self.table(ids)
        b, t, d = x.shape
        q, k, v = (part.view(b, t, self.heads, d // self.heads).transpose(1, 2) for part in self.mix(x).split(d, -1))
        scores = q @ k.transpose(-1, -2) / math.sqrt(d // self.heads)
        if self.temp is not None:
            scores = scores * self.temp
        mixed = (torch.softmax(scores, -1) @ v).transpose(1, 2).reshape(b, t, d)
        return self.read(x + self.back(mixed))


@pytest.mark.parametrize("heads", [2, 4])
def test_a_per_head_temperature_refutes_the_head_permutation(heads):
    """Truth: the output under every permutation of the heads, in float64. Without a per-head
    temperature the head permutation is found and every permutation leaves the output unchanged;
    with one, the same permutation of the same weights changes it, so it must not be found (with two
    heads a random permutation was the identity and passed: found by a new-user sweep)."""
    ids = torch.randint(0, 11, (3, 5), generator=torch.Generator().manual_seed(0))

    def heads_permutation(model):
        return [sym for sym in sw.find_symmetries(model, ids).of_kind(Kind.PERMUTATION)
                if sym.unit_count == heads and any(slot.param == "mix.weight" for slot in sym.slots)]

    def largest_change(model, sym):
        params = {name: p.detach().clone() for name, p in model.named_parameters()}
        base = torch.func.functional_call(model, params, (ids,))
        return max(float((torch.func.functional_call(model, permute(sym, params, torch.tensor(order)), (ids,)) - base)
                         .abs().max()) / float(base.abs().max()) for order in itertools.permutations(range(heads)))

    torch.manual_seed(0)
    plain = Heads(heads, temperature=False).double()
    found = heads_permutation(plain)
    assert len(found) == 1 and largest_change(plain, found[0]) <= 1e-12
    torch.manual_seed(0)
    tempered = Heads(heads, temperature=True).double()
    assert heads_permutation(tempered) == []
    assert largest_change(tempered, found[0]) > 1e-4  # the slots are the same parameters' rows and columns
