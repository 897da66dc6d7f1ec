"""A Hugging Face GPT2LMHeadModel built from a GPT2Config (random weights, no download)."""

import pytest
import torch
import torch.nn.functional as F

import shockwatch as sw
from shockwatch.symmetry import Kind, Slot, act_gl

transformers = pytest.importorskip("transformers")


def lm_loss(output, targets):
    logits = output.logits
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))


def gpt2(seed=0):
    torch.manual_seed(seed)
    config = transformers.GPT2Config(n_layer=2, n_head=2, n_embd=16, vocab_size=40, n_positions=16,
                                     bos_token_id=0, eos_token_id=0)
    config._attn_implementation = "eager"  # the fused CPU kernel has no double backward (Hessian checks)
    model = transformers.GPT2LMHeadModel(config).double().eval()
    with torch.no_grad():  # GPT-2's init (std 0.02) makes attention nearly uniform: too insensitive to test
        for name, p in model.named_parameters():
            if "ln" not in name:
                p.mul_(8.0)
    return model, torch.randint(0, 40, (3, 12)), torch.randint(0, 40, (3, 12))


def test_gpt2_symmetries_found_and_verified():
    """Truth: by hand, per layer: 2 heads x (GL on qk, GL on vo) = 4 GL, 16 key-bias translations,
    1 head permutation, 1 MLP-unit permutation; the tied lm_head/wte has no translation symmetry
    (shifting an embedding column also moves the inputs), so none is claimed. Norm affine: ln_1 and
    ln_2 of each layer against the columns of c_attn / c_fc: 2 x 2 x 16 = 64 rescales; ln_f feeds the
    tied head, which cannot compensate alone: none. The residual stream's permutation: wte's and wpe's
    columns, every c_proj's rows and bias, every LayerNorm's gamma and beta, c_attn's and c_fc's input
    rows (Conv1D stores W as (in, out)); the tied head reads the very columns of wte the embedding
    permutes, so it needs nothing more: 1 permutation, and every parameter is covered."""
    model, tokens, targets = gpt2()
    syms = sw.find_symmetries(model, tokens)
    assert syms.counts() == {"translation": 32, "scale": 0, "rescale": 64, "permutation": 5, "gl": 8, "rotation": 0}
    assert syms.unanalysed == () and syms.reasons == ()
    stream = next(s for s in syms.of_kind(Kind.PERMUTATION) if s.label == "permutation/residual_stream")
    assert Slot("transformer.wte.weight", 1, 0, 16) in stream.incoming
    assert not any(slot.param == "transformer.wte.weight" for slot in stream.outgoing)
    report = sw.verify_symmetries(model, lm_loss, (tokens, targets), syms, train_mode=False)
    assert report.max_loss_change() < 1e-10, report.worst(3)
    assert report.max_gradient_alignment() < 1e-10, report.worst(3)
    assert report.max_hessian_residual() < 1e-9, report.worst(3)


def test_gpt2_gl_moves_parameters_but_not_logits():
    """Truth: logits under a large GL element vs a half-applied one (queries moved, keys restored;
    both live in the fused c_attn weight), which must differ."""
    model, tokens, _ = gpt2(seed=1)
    params = {k: v.detach() for k, v in model.named_parameters()}
    sym = sw.find_symmetries(model, tokens).of_kind(Kind.GL)[0]
    matrix = torch.linalg.matrix_exp(torch.randn(8, 8, dtype=torch.float64))
    moved = act_gl(sym, params, matrix)
    fused = moved[sym.incoming[0].param].clone()
    keys = sym.outgoing[0]
    fused[:, keys.start:keys.stop] = params[keys.param][:, keys.start:keys.stop]
    half = {**params, sym.incoming[0].param: fused}
    logits = torch.func.functional_call(model, params, (tokens,)).logits
    assert torch.allclose(logits, torch.func.functional_call(model, moved, (tokens,)).logits, atol=1e-10)
    assert (logits - torch.func.functional_call(model, half, (tokens,)).logits).abs().max() > 1e-3
