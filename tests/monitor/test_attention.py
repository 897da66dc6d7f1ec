"""Attention observables: GL invariance, entropy bounds, uniform attention, branch balance."""

import math

import torch

import shockwatch as sw
from shockwatch.monitor.attention import attention_observables
from shockwatch.symmetry import Kind, act_gl


def gpt(seed=0):
    torch.manual_seed(seed)
    model = sw.models.GPT(sw.models.GPTConfig(n_head=2, d_model=8, vocab_size=20)).double().eval()
    return model, torch.randint(0, 20, (3, 8))


def test_invariant_observables_do_not_move_under_gl_while_the_raw_norm_does():
    """Truth: the GL action keeps every score q.k and every head output (Kunin/§5.4); the raw product
    of weight norms is not invariant."""
    model, tokens = gpt()
    before = attention_observables(model, tokens)
    syms = sw.find_symmetries(model, tokens)
    params = {k: v.detach() for k, v in model.named_parameters()}
    g = torch.Generator().manual_seed(1)
    for sym in syms.of_kind(Kind.GL):
        params = act_gl(sym, params, torch.linalg.matrix_exp(0.4 * torch.randn(4, 4, generator=g, dtype=torch.float64)))
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.copy_(params[name])
    after = attention_observables(model, tokens)
    assert set(before) == set(after) and any(k.startswith("branch_balance/") for k in before)
    for key, value in before.items():
        if key.startswith("qk_weight_norm/"):
            assert abs(after[key] - value) > 1e-3 * value, key
        else:
            assert math.isclose(after[key], value, rel_tol=1e-9, abs_tol=1e-12), key


def test_entropies_are_bounded_and_uniform_attention_attains_the_bound():
    """Truth: a causal row at position t has entropy <= log(t + 1); with W_Q = 0 and b_Q = 0 every score
    is 0, attention is uniform and the mean entropy is mean_t log(t + 1) exactly."""
    model, tokens = gpt(2)
    seen = attention_observables(model, tokens)
    layer = next(k.split("/", 1)[1] for k in seen if k.startswith("entropy_mean/"))
    assert 0 <= seen[f"entropy_mean/{layer}"] <= math.log(8)
    assert 0 <= seen[f"entropy_min/{layer}"] <= sum(math.log(t + 1) for t in range(1, 8)) / 7
    with torch.no_grad():
        for block in model.blocks:
            block.attn.q.weight.zero_()
            block.attn.q.bias.zero_()
    uniform = attention_observables(model, tokens)
    expected = sum(math.log(t + 1) for t in range(8)) / 8
    assert math.isclose(uniform[f"entropy_mean/{layer}"], expected, rel_tol=1e-12)
    # the collapse signal skips the first row (one key, entropy 0 whatever the weights)
    assert math.isclose(uniform[f"entropy_min/{layer}"], sum(math.log(t + 1) for t in range(1, 8)) / 7, rel_tol=1e-12)
    assert uniform[f"logit_max/{layer}"] == 0.0
    assert all(0 < v < 1 for k, v in uniform.items() if k.startswith("branch_balance/"))


def test_models_without_our_attention_give_nothing():
    assert attention_observables(sw.models.mlp((4, 5, 3)), torch.randn(2, 4)) == {}


def test_gl_invariants_of_a_hugging_face_llama_are_invariant_and_match_the_dense_product():
    """Truth: |W_Q^h^T W_K^h|_2 by a dense SVD of the product of the head's rows (Llama: no biases),
    and its invariance under a random GL element per head in float64 (the raw |W_Q^h||W_K^h| moves)."""
    import pytest

    from shockwatch.monitor.attention import gl_invariants

    transformers = pytest.importorskip("transformers")
    config = transformers.LlamaConfig(vocab_size=40, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                                      num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=32)
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(config).double().eval()
    ids = torch.randint(0, 40, (2, 8))
    syms = sw.find_symmetries(model, ids)
    params = {k: v.detach().clone() for k, v in model.named_parameters()}
    before = gl_invariants(syms, params)
    assert set(before) >= {"attention/vo_product_max", "attention/vo_weight_max"}
    # the value-output pair: W_O^h W_V^h, head h's rows of v_proj and columns of o_proj, by dense SVD
    d = 8
    dense = max(float(torch.linalg.matrix_norm(params[f"model.layers.{layer}.self_attn.o_proj.weight"][:, h * d:(h + 1) * d]
                                               @ params[f"model.layers.{layer}.self_attn.v_proj.weight"][h * d:(h + 1) * d],
                                               ord=2)) for layer in range(2) for h in range(2))
    assert math.isclose(before["attention/vo_product_max"], dense, rel_tol=1e-12)
    g = torch.Generator().manual_seed(3)
    for sym in syms.of_kind(Kind.GL):
        units = sym.unit_count
        params = act_gl(sym, params, torch.linalg.matrix_exp(0.5 * torch.randn(units, units, generator=g, dtype=torch.float64)))
    after = gl_invariants(syms, params)
    for key, value in before.items():
        if "_product_" in key:
            assert math.isclose(after[key], value, rel_tol=1e-10), key
        else:
            assert abs(after[key] - value) > 1e-3 * value, key


def test_entropies_are_finite_in_float32():
    """A float32 model: the causal mask's exact zeros give 0 log 0 = 0, not NaN (a clamp at 1e-300
    underflowed to 0 in float32 and made every entropy NaN). Truth: the float64 entropies."""
    model, tokens = gpt(3)
    exact = attention_observables(model, tokens)
    single = attention_observables(model.float(), tokens)
    for key, value in exact.items():
        if key.startswith("entropy_"):
            assert math.isfinite(single[key]) and math.isclose(single[key], value, rel_tol=1e-5), key
