"""Soft-capped attention logits (CapLogits), on models whose code is not changed.

Truth: torch's own scaled_dot_product_attention (a cap far above every logit changes nothing); two
independent code paths of one Hugging Face Llama (eager attention writes softmax(Q K^T + mask), sdpa
calls the fused kernel), which agree to round-off under the cap only if both are capped alike; the
bound a cap c puts on attention, p_max / p_min <= e^{2c} within a row."""

import math

import pytest
import torch
import torch.nn.functional as F

import shockwatch as sw
from shockwatch.control import (
    CapLogits,
    Controller,
    LogitCapMode,
    capped_attention,
    soft_cap,
)
from shockwatch.monitor import EarlyWarning, RunStore


def qkv(heads=4, kv_heads=4, length=7, d=8, seed=0):
    generator = torch.Generator().manual_seed(seed)
    shape = lambda h: (2, h, length, d)
    return (3 * torch.randn(shape(heads), generator=generator, dtype=torch.float64),
            3 * torch.randn(shape(kv_heads), generator=generator, dtype=torch.float64),
            torch.randn(shape(kv_heads), generator=generator, dtype=torch.float64))


@pytest.mark.parametrize("case", ["causal", "bool-mask", "float-mask", "gqa", "scale"])
def test_a_cap_far_above_the_logits_is_torchs_attention(case):
    q, k, v = qkv(kv_heads=2 if case == "gqa" else 4)
    kwargs = {"causal": {"is_causal": True}, "gqa": {"enable_gqa": True, "is_causal": True}, "scale": {"scale": 0.7},
              "bool-mask": {"attn_mask": torch.rand(7, 7, generator=torch.Generator().manual_seed(1)) > 0.3},
              "float-mask": {"attn_mask": torch.randn(7, 7, dtype=torch.float64)}}[case]
    if case == "bool-mask":
        kwargs["attn_mask"][:, 0] = True  # no row fully masked
    reference = F.scaled_dot_product_attention(q, k, v, **kwargs)
    assert capped_attention(q, k, v, **kwargs, cap=1e7) == pytest.approx(reference, abs=1e-10)
    capped = capped_attention(q, k, v, **kwargs, cap=1.0)
    assert (capped - reference).abs().max() > 1e-2  # the logits here reach ~10: a cap of 1 changes the output


def test_soft_cap_keeps_masks_and_is_the_identity_for_small_logits():
    s = torch.tensor([-math.inf, torch.finfo(torch.float64).min, -3.0, 0.01, 50.0], dtype=torch.float64)
    out = soft_cap(s, 5.0)
    assert out[0] == -math.inf and out[1] == torch.finfo(torch.float64).min
    assert out[2:].tolist() == pytest.approx([5 * math.tanh(-0.6), 5 * math.tanh(0.002), 5 * math.tanh(10.0)], rel=1e-15)


def llama(attention):
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    config = transformers.LlamaConfig(vocab_size=32, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=32,
                                      attn_implementation=attention)
    model = transformers.LlamaForCausalLM(config).double().eval()
    with torch.no_grad():  # sharpen the attention, so that a small cap matters
        for layer in model.model.layers:
            layer.self_attn.q_proj.weight.mul_(30.0)
    return model


def test_a_hugging_face_llama_capped_alike_through_eager_and_sdpa_attention():
    ids = torch.randint(0, 32, (2, 12), generator=torch.Generator().manual_seed(2))
    eager, sdpa = llama("eager"), llama("sdpa")
    with torch.no_grad():
        plain = eager(ids, use_cache=False).logits
        # eager attention takes its softmax in float32 (transformers' own code), hence 1e-6, not round-off
        assert sdpa(ids, use_cache=False).logits == pytest.approx(plain, abs=1e-6)
        with LogitCapMode(0.2) as mode:
            capped_eager = eager(ids, use_cache=False).logits
        assert mode.calls == 2  # one softmax per layer
        with LogitCapMode(0.2) as mode:
            capped_sdpa = sdpa(ids, use_cache=False).logits
        assert mode.calls == 2
    assert capped_sdpa == pytest.approx(capped_eager, abs=1e-6)
    assert (capped_eager - plain).abs().max() > 1e-3  # 1000 x the agreement above


def test_a_capped_row_obeys_the_e_to_the_2c_bound_on_our_gpt():
    """Our GPT's attention writes an explicit softmax: under a cap c every causal row's largest
    probability over its smallest is at most e^{2c}; uncapped (with its queries scaled up) it is not."""
    torch.manual_seed(0)
    model = sw.models.GPT(sw.models.GPTConfig(vocab_size=16, block_size=16, n_layer=1, n_head=2, d_model=16)).double()
    with torch.no_grad():
        model.blocks[0].attn.q.weight.mul_(20.0)
    attn = model.blocks[0].attn
    x = torch.randn(3, 16, 16, dtype=torch.float64)
    causal = torch.ones(16, 16, dtype=torch.bool).tril()

    def ratio():
        _, p, _ = attn.attention(x)
        p = p.masked_fill(~causal, math.nan)
        return float((p.nan_to_num(0).amax(-1) / p.nan_to_num(math.inf).amin(-1)).max())

    with torch.no_grad():
        assert ratio() > math.exp(2 * 2.0) * 10
        with LogitCapMode(2.0):
            assert ratio() <= math.exp(2 * 2.0) * (1 + 1e-12)


def test_the_controller_caps_from_the_forward_after_the_warning_for_the_given_steps(tmp_path):
    """A warning at step 4 with CapLogits(cap=0.5, steps=3): steps 5-7 run capped (their logged
    cap 0.5, and their losses those of a model capped by hand), the rest uncapped."""
    torch.manual_seed(0)
    config = sw.models.GPTConfig(vocab_size=16, block_size=8, n_layer=1, n_head=2, d_model=16)
    model = sw.models.GPT(config).double()
    ids = torch.randint(0, 16, (4, 9), generator=torch.Generator().manual_seed(1))
    opt = torch.optim.SGD(model.parameters(), lr=0.0)  # lr 0: every step sees the same model
    controller = Controller([CapLogits(cap=0.5, steps=3)], signals=None, cooldown=0)
    losses = []
    with sw.Monitor(model, opt, tmp_path / "run", tensorboard=False, warnings=[], controller=controller) as monitor:
        for step in range(1, 10):
            opt.zero_grad()
            loss = F.cross_entropy(model(ids[:, :-1]).reshape(-1, 16), ids[:, 1:].reshape(-1))
            loss.backward()
            opt.step()
            monitor.step(loss)
            losses.append(float(loss.detach()))
            if step == 4:
                controller(EarlyWarning("test-rule", "quotient", 4, "loss", 1.0))
    with torch.no_grad():
        plain = float(F.cross_entropy(model(ids[:, :-1]).reshape(-1, 16), ids[:, 1:].reshape(-1)))
        with LogitCapMode(0.5):
            capped = float(F.cross_entropy(model(ids[:, :-1]).reshape(-1, 16), ids[:, 1:].reshape(-1)))
    assert abs(capped - plain) > 1e-4
    on = [5, 6, 7]
    assert losses == pytest.approx([capped if s in on else plain for s in range(1, 10)], rel=1e-12)
    logged = RunStore(tmp_path / "run" / "run.sqlite", read_only=True).series()["control/logit_cap"][1]
    assert logged == [0.5 if s in on else 0.0 for s in range(1, 10)]
