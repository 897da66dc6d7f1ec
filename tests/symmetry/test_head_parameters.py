"""Parameters laid out by attention head that a head permutation must move too, and the exact check
that catches one left out. Truth: heads exchanged by hand in float64 at random parameter values. Before
(2026-12-07): OLMo 2's and OLMoE's head permutations left their q_norm and k_norm gains (one RMSNorm over
all heads' dimensions) in place, and Swin's left its relative position bias tables (a column per head);
the exact check, run at the model's parameters, accepted them because at initialisation those gains are
all 1 and those tables all 0. The check now runs at a random point near the parameters."""

import dataclasses
import math

import pytest
import torch
from torch import nn
from torch.func import functional_call

import shockwatch as sw
from shockwatch.symmetry import Kind, Slot, detect

transformers = pytest.importorskip("transformers")


def _perturbed(model, scale=0.3, seed=5):
    with torch.no_grad():
        generator = torch.Generator().manual_seed(seed)
        for p in model.parameters():
            p.add_(scale * torch.randn(p.shape, dtype=p.dtype, generator=generator))


def _swap(tensor, dim, width, a, b):
    tensor = tensor.clone()
    first, second = tensor.narrow(dim, a * width, width).clone(), tensor.narrow(dim, b * width, width).clone()
    tensor.narrow(dim, a * width, width).copy_(second)
    tensor.narrow(dim, b * width, width).copy_(first)
    return tensor


def test_olmo2_heads_permute_with_their_query_and_key_norm_gains():
    """OLMo 2 (4 heads of width 4, q_norm and k_norm RMSNorms over all 16 dimensions), its gains
    perturbed from 1: exchanging heads 0 and 1 in q, k, v rows, o columns and both norms' gains leaves
    the logits unchanged (to the float32 round-off of its norm), without the gains it changes them
    by more than 1e-3. The library's head permutation names both
    gains, and nothing is refuted."""
    torch.manual_seed(0)
    config = transformers.Olmo2Config(vocab_size=24, hidden_size=16, intermediate_size=24, num_hidden_layers=1,
                                      num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=16)
    model = transformers.Olmo2ForCausalLM(config).double().eval()
    _perturbed(model)
    ids = torch.randint(0, 24, (2, 6), generator=torch.Generator().manual_seed(1))
    params = {name: p.detach().clone() for name, p in model.named_parameters()}
    prefix = "model.layers.0.self_attn."
    moved = dict(params)
    for name, dim in (("q_proj.weight", 0), ("k_proj.weight", 0), ("v_proj.weight", 0), ("o_proj.weight", 1)):
        moved[prefix + name] = _swap(params[prefix + name], dim, 4, 0, 1)
    run = lambda p: functional_call(model, p, (ids,)).logits.log_softmax(-1)
    change = lambda p: float((run(p) - run(params)).abs().max())
    # Olmo2RMSNorm computes in float32 even in a float64 model: round-off is 1e-7 here, not 1e-16
    assert change(moved) > 1e-3
    gains = {prefix + "q_norm.weight": _swap(params[prefix + "q_norm.weight"], 0, 4, 0, 1),
             prefix + "k_norm.weight": _swap(params[prefix + "k_norm.weight"], 0, 4, 0, 1)}
    assert change({**moved, **gains}) < 1e-5
    found = sw.find_symmetries(model, {"input_ids": ids})
    assert found.rejected == ()
    heads = [sym for sym in found.of_kind(Kind.PERMUTATION) if sym.label.endswith("/heads")]
    assert len(heads) == 1 and heads[0].unit_count == 4
    slots = {(slot.param, slot.dim, slot.start, slot.stop) for slot in heads[0].slots}
    assert {(prefix + "q_norm.weight", 0, 0, 16), (prefix + "k_norm.weight", 0, 0, 16)} <= slots


class TableAttention(nn.Module):
    """Attention with a learned relative position bias per head, read from a table (R x heads) by an
    index of relative positions, added to the scores (T5 and Swin write it so)."""

    def __init__(self, d=8, heads=2, length=5, vocab=13) -> None:
        super().__init__()
        self.heads = heads
        self.table = nn.Embedding(vocab, d)
        self.q, self.k, self.v, self.o = (nn.Linear(d, d) for _ in range(4))
        self.bias = nn.Parameter(torch.zeros(2 * length - 1, heads))
        positions = torch.arange(length)
        self.register_buffer("relative", positions[None, :] - positions[:, None] + length - 1)
        self.read = nn.Linear(d, vocab)

    def forward(self, ids):
        x = self.table(ids)
        b, t, d = x.shape
        q, k, v = (f(x).view(b, t, self.heads, d // self.heads).transpose(1, 2) for f in (self.q, self.k, self.v))
        scores = q @ k.transpose(-1, -2) / math.sqrt(d // self.heads) + self.bias[self.relative].permute(2, 0, 1)
        return self.read(x + self.o((scores.softmax(-1) @ v).transpose(1, 2).reshape(b, t, d)))


def test_heads_permute_with_their_relative_position_bias_columns():
    """With the table perturbed from its zero initialisation: exchanging the two heads (q, k, v rows
    and biases, o columns) and the table's two columns leaves the output unchanged, and without the
    columns it does not; the library's head permutation names the table's columns (dim 1)."""
    torch.manual_seed(0)
    model = TableAttention().double()
    _perturbed(model)
    ids = torch.randint(0, 13, (2, 5), generator=torch.Generator().manual_seed(3))
    params = {name: p.detach().clone() for name, p in model.named_parameters()}
    moved = dict(params)
    for name in ("q", "k", "v"):
        moved[f"{name}.weight"] = _swap(params[f"{name}.weight"], 0, 4, 0, 1)
        moved[f"{name}.bias"] = _swap(params[f"{name}.bias"], 0, 4, 0, 1)
    moved["o.weight"] = _swap(params["o.weight"], 1, 4, 0, 1)
    run = lambda p: functional_call(model, p, (ids,)).log_softmax(-1)
    change = lambda p: float((run(p) - run(params)).abs().max())
    assert change(moved) > 1e-6
    assert change({**moved, "bias": params["bias"].flip(1)}) < 1e-12
    found = sw.find_symmetries(model, ids)
    assert found.rejected == ()
    heads = [sym for sym in found.of_kind(Kind.PERMUTATION) if sym.label.endswith("/heads")]
    assert len(heads) == 1 and ("bias", 1, 0, 2) in {(s.param, s.dim, s.start, s.stop) for s in heads[0].slots}


def test_the_exact_check_refutes_an_action_invisible_at_initialisation():
    """A head permutation that also exchanges the halves of the preceding LayerNorm's gain and bias
    (1 and 0 at initialisation, where the exchange changes nothing) is refuted by the detection's
    exact check (defect ~3e-3 at the random point it uses); the true head permutation is kept."""
    torch.manual_seed(9)
    model = sw.models.GPT(sw.models.GPTConfig(n_head=2, d_model=8, vocab_size=20)).double()
    x = torch.randint(0, 20, (3, 8))
    found = sw.find_symmetries(model, x)
    heads = next(sym for sym in found.of_kind(Kind.PERMUTATION) if sym.label == "permutation/blocks.0.attn.q/heads")
    wrong = dataclasses.replace(heads, label="wrong", incoming=heads.incoming + (
        Slot("blocks.0.ln_1.weight", 0, 0, 8), Slot("blocks.0.ln_1.bias", 0, 0, 8)))
    at_init = detect.exact_defects(model, x, [wrong])["wrong"]
    assert at_init < 1e-12  # invisible at the parameters themselves
    kept, rejected = detect._checked(model, detect._traced(model, x), [heads, wrong], -1, None)
    assert [sym.label for sym in kept] == [heads.label]
    assert [sym.label for sym in rejected] == ["wrong"] and rejected[0].defect > 1e-6


def test_verification_refutes_an_action_invisible_at_initialisation():
    """verify_symmetries on the model at initialisation, given the true head permutation and the wrong
    one of the test above: the wrong one is not accepted (its exact change is measured at a random
    point near the parameters too), the true one is."""
    torch.manual_seed(9)
    model = sw.models.GPT(sw.models.GPTConfig(n_head=2, d_model=8, vocab_size=20)).double()
    x, y = torch.randint(0, 20, (3, 8)), torch.randint(0, 20, (3, 8))
    heads = next(sym for sym in sw.find_symmetries(model, x).of_kind(Kind.PERMUTATION)
                 if sym.label == "permutation/blocks.0.attn.q/heads")
    wrong = dataclasses.replace(heads, label="wrong", incoming=heads.incoming + (
        Slot("blocks.0.ln_1.weight", 0, 0, 8), Slot("blocks.0.ln_1.bias", 0, 0, 8)))
    loss = lambda logits, targets: nn.functional.cross_entropy(logits.reshape(-1, 20), targets.reshape(-1))
    result = sw.verify_symmetries(model, loss, (x, y), [heads, wrong], hessian_samples=0)
    assert result.exact[heads.label] < 1e-12 and result.exact["wrong"] > 1e-6
    assert result.accepted(heads.label) and not result.accepted("wrong")
    assert "wrong" in result.refuted() and heads.label not in result.refuted()


class LogScaled(nn.Module):
    """A ReLU layer whose output is scaled by sum(log p), p small and positive: a random point near the
    parameters makes some p negative, so the output is NaN there."""

    def __init__(self) -> None:
        super().__init__()
        self.up, self.down = nn.Linear(4, 6), nn.Linear(6, 3)
        self.p = nn.Parameter(torch.full((8,), 1e-3))

    def forward(self, x):
        return self.down(torch.relu(self.up(x))) * self.p.log().sum()


def test_a_random_point_where_the_output_is_not_finite_is_not_used():
    """Where the exact check's random point gives a non-finite output (found by the block-stack
    property test: a lone ReLU unit dead on every sample before a norm at eps 0), the check measures
    at the model's own parameters instead: the hidden units' 6 rescales are kept, not all refuted."""
    torch.manual_seed(0)
    model = LogScaled().double()
    x = torch.randn(5, 4, dtype=torch.float64)
    found = sw.find_symmetries(model, x, logits=False)
    assert found.rejected == ()
    assert len([sym for sym in found.of_kind(Kind.RESCALE) if sym.label.startswith("rescale/up/")]) == 6
