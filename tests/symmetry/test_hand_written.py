"""Symmetries of layers written by hand (``x @ W.T + b``, a softmax from amax, exp and sum), checked
against the same layers written with torch's modules and by group elements applied by hand in float64."""

import math

import pytest
import torch
from torch import nn
from torch.func import functional_call

import shockwatch as sw
from shockwatch.symmetry import Kind

D, HEADS, VOCAB = 8, 2, 13


def hand_softmax(scores):
    shifted = (scores - scores.amax(-1, keepdim=True)).exp()
    return shifted / shifted.sum(-1, keepdim=True)


class Mixer(nn.Module):
    """One attention block with its own parameter names; ``style`` picks how the fused q, k, v map
    and the softmax are written."""

    def __init__(self, style: str) -> None:
        super().__init__()
        self.style = style
        self.table = nn.Parameter(torch.randn(VOCAB, D))
        self.w1 = nn.Parameter(torch.randn(3 * D, D) / math.sqrt(D))
        self.b1 = nn.Parameter(torch.randn(3 * D) * 0.3)
        self.back = nn.Parameter(torch.randn(D, D) / math.sqrt(D))
        self.read = nn.Linear(D, VOCAB)

    def forward(self, ids):
        x = self.table[ids] if self.style != "modules" else nn.functional.embedding(ids, self.table)
        b, t, _ = x.shape
        qkv = x @ self.w1.T + self.b1 if self.style != "modules" else nn.functional.linear(x, self.w1, self.b1)
        q, k, v = (part.view(b, t, HEADS, D // HEADS).transpose(1, 2) for part in qkv.split(D, -1))
        scores = q @ k.transpose(-1, -2) / math.sqrt(D // HEADS)
        weights = hand_softmax(scores) if self.style != "modules" else torch.softmax(scores, -1)
        mixed = (weights @ v).transpose(1, 2).reshape(b, t, D)
        return self.read(x + mixed @ self.back.T)


def _output(model, params, ids):
    return functional_call(model, params, (ids,)).log_softmax(-1)


def _change(model, params, moved, ids):
    base = _output(model, params, ids)
    return float((_output(model, moved, ids) - base).abs().max() / base.abs().max())


@pytest.fixture(scope="module")
def found():
    ids = torch.randint(0, VOCAB, (3, 5), generator=torch.Generator().manual_seed(0))
    out = {}
    for style in ("hand", "modules"):
        torch.manual_seed(0)
        model = Mixer(style).double()
        out[style] = (model, sw.find_symmetries(model, ids), ids)
    return out


def test_a_hand_written_layer_has_the_symmetries_of_the_module_written_one(found):
    """Truth: the same block through F.linear and torch.softmax (whose symmetries the library's other
    tests check): x @ W.T + b carries its bias like F.linear's (before: none found past the add), and
    the softmax written as exp(s - amax s) / sum absorbs a key bias as torch.softmax does."""
    hand, modules = found["hand"][1], found["modules"][1]
    for kind in (Kind.GL, Kind.PERMUTATION, Kind.TRANSLATION):
        assert len(hand.of_kind(kind)) == len(modules.of_kind(kind)), kind
    assert len(hand.of_kind(Kind.GL)) == 2 * HEADS  # (W_Q, W_K) and (W_V, W_O) per head
    keys = [sym for sym in hand.of_kind(Kind.TRANSLATION) if "key_bias" in sym.label]
    assert len(keys) == D  # one per key unit
    assert {slot.param for sym in hand.of_kind(Kind.GL) for slot in sym.slots} >= {"w1", "b1", "back"}


def test_the_symmetries_found_hold_under_group_elements_applied_by_hand(found):
    """Truth: the float64 output under group elements applied by hand, not by the library: every key
    bias shifted by its own amount; the two heads swapped (rows of w1 and b1 in each of q, k, v, columns
    of back); head 0's query and key rows mixed by M and M^{-T}."""
    model, symmetries, ids = found["hand"]
    params = {name: p.detach().clone() for name, p in model.named_parameters()}
    width = D // HEADS
    shifted = dict(params, b1=params["b1"].clone())
    shifted["b1"][D:2 * D] += torch.linspace(-1.0, 2.0, D, dtype=torch.float64)
    assert _change(model, params, shifted, ids) < 1e-13
    order = torch.cat([torch.arange(width, 2 * width), torch.arange(width)])  # head 1's units, then head 0's
    rows = torch.cat([order + part * D for part in range(3)])
    swapped = dict(params, w1=params["w1"][rows], b1=params["b1"][rows], back=params["back"][:, order])
    assert _change(model, params, swapped, ids) < 1e-13
    assert any(sym.kind is Kind.PERMUTATION and sym.unit_count == HEADS for sym in symmetries)
    generator = torch.Generator().manual_seed(3)
    m = torch.eye(width, dtype=torch.float64) + 0.3 * torch.randn(width, width, dtype=torch.float64, generator=generator)
    mixed = dict(params, w1=params["w1"].clone(), b1=params["b1"].clone())
    for start, matrix in ((0, m), (D, torch.linalg.inv(m).T)):  # head 0's queries by M, its keys by M^{-T}
        mixed["w1"][start:start + width] = matrix @ params["w1"][start:start + width]
        mixed["b1"][start:start + width] = matrix @ params["b1"][start:start + width]
    assert _change(model, params, mixed, ids) < 1e-12
    # and a shift the key bias does not have: the query bias, which the softmax does not absorb
    wrong = dict(params, b1=params["b1"].clone())
    wrong["b1"][:D] += 0.5
    assert _change(model, params, wrong, ids) > 1e-4
    assert not any("b1" in {slot.param for slot in sym.slots} and sym.slots[0].start < D
                   for sym in symmetries.of_kind(Kind.TRANSLATION))


def test_an_input_the_model_does_not_take_is_one_line_and_changes_nothing(capfd):
    """A token id past the vocabulary (which the trace's fake tensors do not check) and a wrong width:
    one ValueError naming the model and the input, nothing printed, every module's mode kept."""
    torch.manual_seed(0)
    model = Mixer("hand").double()
    model.read.eval()  # a mixed mode, to be kept as it is
    with pytest.raises(ValueError, match=r"Mixer does not accept the example input \(shape \(2, 5\)\): IndexError"):
        sw.find_symmetries(model, torch.full((2, 5), VOCAB + 3))
    regression = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 2))
    with pytest.raises(ValueError, match=r"Sequential does not accept the example input \(shape \(4, 7\)\): RuntimeError"):
        sw.find_symmetries(regression, torch.randn(4, 7), logits=False)
    assert capfd.readouterr().err == ""
    assert model.training and not model.read.training


class Grouped(nn.Module):
    """Grouped-query attention without rotary: 4 query heads of width 2 over ``kv`` key/value heads."""

    def __init__(self, kv: int) -> None:
        super().__init__()
        self.kv = kv
        self.table = nn.Embedding(VOCAB, D)
        self.q, self.k, self.v = nn.Linear(D, D), nn.Linear(D, 2 * kv), nn.Linear(D, 2 * kv)
        self.o, self.head = nn.Linear(D, D), nn.Linear(D, VOCAB)

    def forward(self, ids):
        x = self.table(ids)
        b, t, _ = x.shape
        q = self.q(x).view(b, t, 4, 2).transpose(1, 2)
        k, v = (f(x).view(b, t, self.kv, 2).transpose(1, 2).repeat_interleave(4 // self.kv, 1) for f in (self.k, self.v))
        mixed = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.head(x + self.o(mixed.transpose(1, 2).reshape(b, t, D)))


def _swap_query_heads(params, first: int, second: int):
    """Query heads ``first`` and ``second`` exchanged: their rows of q (weight and bias), their
    columns of o."""
    order = torch.arange(4)
    order[first], order[second] = second, first
    rows = (order.unsqueeze(1) * 2 + torch.arange(2)).reshape(-1)
    return dict(params, **{"q.weight": params["q.weight"][rows], "q.bias": params["q.bias"][rows],
                           "o.weight": params["o.weight"][:, rows]})


@pytest.mark.parametrize("kv", [1, 2])
def test_query_heads_sharing_a_key_and_value_permute(kv):
    """Truth, by hand in float64: exchanging two query heads that read the same key and value head
    leaves the output unchanged; exchanging two that read different ones (kv = 2) changes it. The
    library finds one permutation per key/value head of its query heads (before: none, head
    permutations needed one key per query head), and none across the groups."""
    torch.manual_seed(0)
    model = Grouped(kv).double()
    ids = torch.randint(0, VOCAB, (3, 5), generator=torch.Generator().manual_seed(6))
    params = {name: p.detach().clone() for name, p in model.named_parameters()}
    assert _change(model, params, _swap_query_heads(params, 0, 1), ids) < 1e-13
    if kv == 2:
        assert _change(model, params, _swap_query_heads(params, 1, 2), ids) > 1e-4
    found = [sym for sym in sw.find_symmetries(model, ids).of_kind(Kind.PERMUTATION) if "query_heads" in sym.label]
    assert len(found) == kv and all(sym.unit_count == 4 // kv for sym in found)
    for index, sym in enumerate(sorted(found, key=lambda s: s.label)):
        spans = {(slot.param, slot.start, slot.stop) for slot in sym.slots}
        width = 8 // kv  # the group's query rows and output columns
        assert ("q.weight", index * width, (index + 1) * width) in spans
        assert ("o.weight", index * width, (index + 1) * width) in spans


def _llama(kv: int):
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    config = transformers.LlamaConfig(vocab_size=24, hidden_size=16, intermediate_size=24, num_hidden_layers=1,
                                      num_attention_heads=4, num_key_value_heads=kv, max_position_embeddings=16)
    return transformers.LlamaForCausalLM(config).double().eval()


def _heads_swapped(params, swaps):
    """``swaps``: {parameter prefix: (dim, block width, first block, second block)} applied by hand."""
    out = dict(params)
    for name, (dim, width, a, b) in swaps.items():
        tensor = params[name].clone()
        first, second = tensor.narrow(dim, a * width, width).clone(), tensor.narrow(dim, b * width, width).clone()
        tensor.narrow(dim, a * width, width).copy_(second)
        tensor.narrow(dim, b * width, width).copy_(first)
        out[name] = tensor
    return out


@pytest.mark.parametrize("kv", [1, 2, 4])
def test_rotary_attention_heads_permute(kv):
    """Hugging Face Llama (rotary, grouped-query for kv < 4) from a config. Truth, by hand in float64:
    exchanging two query heads of one key/value head (their q rows and o columns) leaves the logits
    unchanged; with kv = 2, exchanging the two groups (k and v rows, the groups' q rows and o columns)
    does too, and exchanging query heads of different groups does not; with kv = 4 (multi-head)
    exchanging two whole heads does. The library finds exactly these (before: no head permutation in
    any rotary model)."""
    model = _llama(kv)
    ids = torch.randint(0, 24, (2, 6), generator=torch.Generator().manual_seed(7))
    params = {name: p.detach().clone() for name, p in model.named_parameters()}
    prefix = "model.layers.0.self_attn."
    run = lambda p: torch.func.functional_call(model, p, (ids,)).logits.log_softmax(-1)
    base = run(params)

    def change(swaps):
        return float((run(_heads_swapped(params, swaps)) - base).abs().max() / base.abs().max())

    found = {sym.label.split("/")[-1]: sym for sym in sw.find_symmetries(model, {"input_ids": ids}).of_kind(Kind.PERMUTATION)
             if "self_attn" in sym.label}
    if kv == 4:
        assert change({prefix + "q_proj.weight": (0, 4, 0, 1), prefix + "k_proj.weight": (0, 4, 0, 1),
                       prefix + "v_proj.weight": (0, 4, 0, 1), prefix + "o_proj.weight": (1, 4, 0, 1)}) < 1e-12
        assert set(found) == {"heads"} and found["heads"].unit_count == 4
        return
    group = 4 // kv
    assert change({prefix + "q_proj.weight": (0, 4, 0, 1), prefix + "o_proj.weight": (1, 4, 0, 1)}) < 1e-12
    assert {f"group{j}" for j in range(kv)} <= set(found) and all(found[f"group{j}"].unit_count == group for j in range(kv))
    if kv == 2:
        assert change({prefix + "q_proj.weight": (0, 4, 1, 2), prefix + "o_proj.weight": (1, 4, 1, 2)}) > 1e-6
        assert change({prefix + "q_proj.weight": (0, 8, 0, 1), prefix + "o_proj.weight": (1, 8, 0, 1),
                       prefix + "k_proj.weight": (0, 4, 0, 1), prefix + "v_proj.weight": (0, 4, 0, 1)}) < 1e-12
        assert found["kv_groups"].unit_count == 2
    assert sw.find_symmetries(model, {"input_ids": ids}).rejected == ()


def test_partial_rotary_heads_permute_whole():
    """Hugging Face GPT-J (rotary on 4 of each head's 8 dimensions, the rest free) from a config. The
    query/key GL acts on the free dimensions only, so heads are not whole blocks of it; the head
    permutation comes from the projections. Truth, by hand in float64: swapping heads 0 and 1 (q, k
    and v rows, out_proj columns) leaves the logits unchanged."""
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    config = transformers.GPTJConfig(vocab_size=24, n_embd=16, n_layer=1, n_head=2, rotary_dim=4, n_positions=16)
    model = transformers.GPTJForCausalLM(config).double().eval()
    ids = torch.randint(0, 24, (2, 6), generator=torch.Generator().manual_seed(8))
    prefix = "transformer.h.0.attn."
    change, heads, rejected = _head_swap_and_head_permutations(
        model, ids, {prefix + "q_proj.weight": (0, 8, 0, 1), prefix + "k_proj.weight": (0, 8, 0, 1),
                     prefix + "v_proj.weight": (0, 8, 0, 1), prefix + "out_proj.weight": (1, 8, 0, 1)})
    assert change < 1e-12
    assert rejected == () and [units for units, _ in heads] == [2]
    assert heads[0][1] >= {(prefix + "q_proj.weight", 0, 16), (prefix + "k_proj.weight", 0, 16),
                           (prefix + "out_proj.weight", 0, 16)}


def _head_swap_and_head_permutations(model, ids, swaps):
    """(the logits' relative change under ``swaps`` applied by hand, float64; the head permutations
    found, as (units, {(param, start, stop)}); the refuted candidates)."""
    params = {name: p.detach().clone() for name, p in model.named_parameters()}
    run = lambda p: torch.func.functional_call(model, p, (ids,)).logits.log_softmax(-1)
    base = run(params)
    change = float((run(_heads_swapped(params, swaps)) - base).abs().max() / base.abs().max())
    found = sw.find_symmetries(model, {"input_ids": ids})
    heads = [(sym.unit_count, {(slot.param, slot.start, slot.stop) for slot in sym.slots})
             for sym in found.of_kind(Kind.PERMUTATION) if sym.label.endswith("/heads")]
    return change, heads, found.rejected


def test_fused_head_by_head_projection_heads_permute():
    """Hugging Face GPT-NeoX (one fused query-key-value projection laid out head by head, partial
    rotary) from a config. Truth, by hand in float64: swapping heads 0 and 1 (their 3 d fused rows and
    biases, their d dense columns) leaves the logits unchanged; the library finds that permutation."""
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    config = transformers.GPTNeoXConfig(vocab_size=24, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                        intermediate_size=32, rotary_pct=0.5, max_position_embeddings=16)
    model = transformers.GPTNeoXForCausalLM(config).double().eval()
    ids = torch.randint(0, 24, (2, 6), generator=torch.Generator().manual_seed(9))
    prefix = "gpt_neox.layers.0.attention."
    change, heads, rejected = _head_swap_and_head_permutations(
        model, ids, {prefix + "query_key_value.weight": (0, 24, 0, 1), prefix + "query_key_value.bias": (0, 24, 0, 1),
                     prefix + "dense.weight": (1, 8, 0, 1)})
    assert change < 1e-12
    assert rejected == () and [units for units, _ in heads] == [2]
    assert heads[0][1] >= {(prefix + "query_key_value.weight", 0, 48), (prefix + "dense.weight", 0, 16)}


class EagerRotary(nn.Module):
    """Attention written out (q @ k^T, a causal mask, softmax, @ v) with a rotary embedding of its own
    (rotate-half), 2 heads of width 4: what a from-scratch decoder looks like."""

    def __init__(self) -> None:
        super().__init__()
        self.table = nn.Embedding(VOCAB, D)
        self.wq, self.wk, self.wv, self.wo = (nn.Linear(D, D, bias=False) for _ in range(4))
        self.head = nn.Linear(D, VOCAB)

    @staticmethod
    def rotate(x):
        t, half = x.shape[-2], x.shape[-1] // 2
        angle = torch.arange(t, dtype=x.dtype)[:, None] / 10.0 ** (torch.arange(half, dtype=x.dtype) / half)
        cos, sin = torch.cat([angle.cos()] * 2, -1), torch.cat([angle.sin()] * 2, -1)
        return x * cos + torch.cat([-x[..., half:], x[..., :half]], -1) * sin

    def forward(self, ids):
        x = self.table(ids)
        b, t, _ = x.shape
        q, k, v = (f(x).view(b, t, HEADS, D // HEADS).transpose(1, 2) for f in (self.wq, self.wk, self.wv))
        q, k = self.rotate(q), self.rotate(k)
        scores = (q @ k.transpose(-1, -2)) / math.sqrt(D // HEADS)
        scores = scores.masked_fill(torch.ones(t, t, dtype=torch.bool).triu(1), float("-inf"))
        mixed = (torch.softmax(scores, -1) @ v).transpose(1, 2).reshape(b, t, D)
        return self.head(x + self.wo(mixed))


def test_written_out_rotary_attention_heads_permute():
    """Truth, by hand in float64: swapping the two heads (wq, wk, wv rows; wo columns) of attention
    written out with its own rotary embedding leaves the logits unchanged; the library finds that
    permutation (before: none for rotary attention not behind scaled_dot_product_attention)."""
    torch.manual_seed(0)
    model = EagerRotary().double()
    ids = torch.randint(0, VOCAB, (2, 6), generator=torch.Generator().manual_seed(10))
    params = {name: p.detach().clone() for name, p in model.named_parameters()}
    swapped = _heads_swapped(params, {"wq.weight": (0, 4, 0, 1), "wk.weight": (0, 4, 0, 1), "wv.weight": (0, 4, 0, 1),
                                      "wo.weight": (1, 4, 0, 1)})
    assert _change(model, params, swapped, ids) < 1e-13
    found = sw.find_symmetries(model, ids)
    heads = [sym for sym in found.of_kind(Kind.PERMUTATION) if sym.label.endswith("/heads")]
    assert len(heads) == 1 and heads[0].unit_count == HEADS and found.rejected == ()
    assert {(slot.param, slot.start, slot.stop) for slot in heads[0].slots} >= {("wq.weight", 0, D), ("wo.weight", 0, D)}
