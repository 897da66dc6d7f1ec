"""Fused query-key-value projections of Hugging Face models built from configs (random weights, no
download): Phi-3 (rows [Q | K | V], rotary), Falcon (multi-query, rotary) and BLOOM (per head
[q_h, k_h, v_h], ALiBi added to the scores by ``baddbmm``). Truth: group elements applied by hand to
the weights in float64, the logits compared. Before: none of the three had a value/output GL found
(the rotary query and key blocked the walk from the fused rows; BLOOM's ``baddbmm`` was unknown)."""

import pytest
import torch
from torch.func import functional_call

import shockwatch as sw
from shockwatch.symmetry import Kind

transformers = pytest.importorskip("transformers")

VOCAB = 24


def _ids(seed: int) -> torch.Tensor:
    return torch.randint(1, VOCAB, (2, 6), generator=torch.Generator().manual_seed(seed))


def _change(model, params, moved, ids) -> float:
    """The logits' relative change (log-probabilities, max over positions) from ``params`` to ``moved``."""
    run = lambda p: functional_call(model, p, (ids,)).logits.log_softmax(-1)
    base = run(params)
    return float((run(moved) - base).abs().max() / base.abs().max())


def _built(family: str, **fields):
    """A Hugging Face causal LM of ``family`` ("Phi3", "Falcon", "Bloom") from its config, seed 0,
    float64, eval mode."""
    torch.manual_seed(0)
    config = getattr(transformers, f"{family}Config")(vocab_size=VOCAB, **fields)
    return getattr(transformers, f"{family}ForCausalLM")(config).double().eval()


def _params(model) -> dict[str, torch.Tensor]:
    return {name: p.detach().clone() for name, p in model.named_parameters()}


def _value_gl(params, fused: str, out: str, rows: range, column_blocks: list[range], seed: int):
    """A random invertible A on the value head's ``rows`` of ``fused`` (v -> A v) and A^-1 on each of
    ``out``'s column blocks that read that head (W_o[:, block] -> W_o[:, block] A^-1)."""
    d = len(rows)
    generator = torch.Generator().manual_seed(seed)
    a = torch.eye(d, dtype=torch.float64) + 0.5 * torch.randn(d, d, dtype=torch.float64, generator=generator)
    moved = dict(params)
    weight = params[fused].clone()
    weight[rows.start:rows.stop] = a @ weight[rows.start:rows.stop]
    moved[fused] = weight
    bias = fused.replace("weight", "bias")
    if bias in params:
        b = params[bias].clone()
        b[rows.start:rows.stop] = a @ b[rows.start:rows.stop]
        moved[bias] = b
    columns = params[out].clone()
    for block in column_blocks:
        columns[:, block.start:block.stop] = columns[:, block.start:block.stop] @ torch.linalg.inv(a)
    moved[out] = columns
    return moved


def _swapped(params, swaps):
    """``swaps``: {parameter: (dim, [(start, stop, start', stop'), ...])}, each pair of row or column
    blocks exchanged."""
    moved = dict(params)
    for name, (dim, pairs) in swaps.items():
        tensor = params[name].clone()
        for a0, a1, b0, b1 in pairs:
            first, second = tensor.narrow(dim, a0, a1 - a0).clone(), tensor.narrow(dim, b0, b1 - b0).clone()
            tensor.narrow(dim, a0, a1 - a0).copy_(second)
            tensor.narrow(dim, b0, b1 - b0).copy_(first)
        moved[name] = tensor
    return moved


def _found(model, ids):
    """(the symmetries, {label's last part ("head0/vo" for GL): {(module.param, dim, start, stop)}})
    for the attention's GL and permutations."""
    found = sw.find_symmetries(model, {"input_ids": ids})
    slots = lambda sym: {(".".join(slot.param.split(".")[-2:]), slot.dim, slot.start, slot.stop) for slot in sym.slots}
    key = lambda sym: "/".join(sym.label.split("/")[-(2 if sym.kind is Kind.GL else 1):])
    return found, {key(sym): slots(sym) for sym in found.of_kind(Kind.GL) + found.of_kind(Kind.PERMUTATION)
                   if "attn" in sym.label or "attention" in sym.label}


def test_phi3_fused_grouped_projection():
    """Phi-3, 4 query heads of width 4 over 2 key/value heads, one qkv_proj with rows [Q (16) | K (8) |
    V (8)], full rotary. By hand: A on value head 0 (rows 24-28) with A^-1 on the output columns of
    query heads 0 and 1 leaves the logits unchanged; so do swapping query heads 0 and 1 (rows 0-4 and
    4-8, output columns 0-4 and 4-8) and swapping the two groups (query rows 0-8 and 8-16, key rows
    16-20 and 20-24, value rows 24-28 and 28-32, output columns 0-8 and 8-16); swapping query heads
    1 and 2 (two groups) does not. The library finds exactly these, and no query/key GL (the rotary
    embedding leaves only rotations there)."""
    model = _built("Phi3", hidden_size=16, intermediate_size=24, num_hidden_layers=1, num_attention_heads=4,
                   num_key_value_heads=2, pad_token_id=0, max_position_embeddings=16)
    ids, params = _ids(1), _params(model)
    fused, out = "model.layers.0.self_attn.qkv_proj.weight", "model.layers.0.self_attn.o_proj.weight"
    assert _change(model, params, _value_gl(params, fused, out, range(24, 28), [range(4), range(4, 8)], 0), ids) < 1e-12
    assert _change(model, params, _swapped(params, {fused: (0, [(0, 4, 4, 8)]), out: (1, [(0, 4, 4, 8)])}), ids) < 1e-12
    groups = {fused: (0, [(0, 8, 8, 16), (16, 20, 20, 24), (24, 28, 28, 32)]), out: (1, [(0, 8, 8, 16)])}
    assert _change(model, params, _swapped(params, groups), ids) < 1e-12
    assert _change(model, params, _swapped(params, {fused: (0, [(4, 8, 8, 12)]), out: (1, [(4, 8, 8, 12)])}), ids) > 1e-6
    found, syms = _found(model, ids)
    assert found.rejected == ()
    assert syms["head0/vo"] == {("qkv_proj.weight", 0, 24, 28), ("o_proj.weight", 1, 0, 4), ("o_proj.weight", 1, 4, 8)}
    assert syms["head1/vo"] == {("qkv_proj.weight", 0, 28, 32), ("o_proj.weight", 1, 8, 12), ("o_proj.weight", 1, 12, 16)}
    assert syms["group0"] == {("qkv_proj.weight", 0, 0, 8), ("o_proj.weight", 1, 0, 8)}
    assert syms["group1"] == {("qkv_proj.weight", 0, 8, 16), ("o_proj.weight", 1, 8, 16)}
    assert syms["kv_groups"] == {("qkv_proj.weight", 0, 0, 16), ("qkv_proj.weight", 0, 16, 24), ("qkv_proj.weight", 0, 24, 32),
                                 ("o_proj.weight", 1, 0, 16)}
    assert not [label for label in syms if label.endswith("/qk")]


def test_falcon_multi_query_projection():
    """Falcon (multi-query: 2 query heads of width 8 share one key and value head; rows [Q (16) | K (8)
    | V (8)], rotary). By hand: A on the value rows 24-32 with A^-1 on every output column block
    leaves the logits unchanged, as does swapping the two query heads (rows 0-8 and 8-16, output
    columns 0-8 and 8-16). The library finds both."""
    model = _built("Falcon", hidden_size=16, num_hidden_layers=1, num_attention_heads=2)
    ids, params = _ids(2), _params(model)
    prefix = "transformer.h.0.self_attention."
    fused, out = prefix + "query_key_value.weight", prefix + "dense.weight"
    assert params[fused].shape[0] == 32
    assert _change(model, params, _value_gl(params, fused, out, range(24, 32), [range(8), range(8, 16)], 1), ids) < 1e-12
    assert _change(model, params, _swapped(params, {fused: (0, [(0, 8, 8, 16)]), out: (1, [(0, 8, 8, 16)])}), ids) < 1e-12
    found, syms = _found(model, ids)
    assert found.rejected == ()
    assert syms["head0/vo"] == {("query_key_value.weight", 0, 24, 32), ("dense.weight", 1, 0, 8), ("dense.weight", 1, 8, 16)}
    assert syms["group0"] == {("query_key_value.weight", 0, 0, 16), ("dense.weight", 1, 0, 16)}


def test_bloom_alibi_projection():
    """BLOOM (2 heads of width 8, rows per head [q_h, k_h, v_h], ALiBi added to the scores by
    ``baddbmm``). By hand: A on head 0's value rows (16-24, weight and bias) with A^-1 on output columns
    0-8 leaves the logits unchanged; swapping the two heads changes them (each head has its own ALiBi
    slope). The library finds the value/output GL of both heads and the query/key GL (q k^T inside
    ``baddbmm``), and claims no head permutation."""
    model = _built("Bloom", hidden_size=16, n_layer=1, n_head=2)
    ids, params = _ids(3), _params(model)
    prefix = "transformer.h.0.self_attention."
    fused, out = prefix + "query_key_value.weight", prefix + "dense.weight"
    assert _change(model, params, _value_gl(params, fused, out, range(16, 24), [range(8)], 2), ids) < 1e-12
    heads = {fused: (0, [(0, 24, 24, 48)]), fused.replace("weight", "bias"): (0, [(0, 24, 24, 48)]),
             out: (1, [(0, 8, 8, 16)])}
    assert _change(model, params, _swapped(params, heads), ids) > 1e-6
    _, syms = _found(model, ids)
    assert syms["head0/vo"] == {("query_key_value.weight", 0, 16, 24), ("query_key_value.bias", 0, 16, 24),
                                ("dense.weight", 1, 0, 8)}
    assert {"head0/qk", "head1/qk", "head1/vo"} <= set(syms)
    assert "heads" not in syms
