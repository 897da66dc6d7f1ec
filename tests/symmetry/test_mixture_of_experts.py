"""Mixture-of-experts layers and fused gated units, from Hugging Face configs (random weights, no
download). Truth: group elements applied by hand to the weights in float64, the logits compared.
Before: Mixtral's experts and its post-attention norm were "an operation the analysis does not know"
(the tokens gathered per expert), 27% of its parameters covered; a fused gate_up projection
(Phi-3, every expert) had no rescale or permutation of its hidden units."""

import pytest
import torch
from torch.func import functional_call

import shockwatch as sw
from shockwatch.symmetry import Kind

transformers = pytest.importorskip("transformers")

VOCAB, EXPERTS, HIDDEN = 24, 4, 12


def _change(model, params, moved, ids) -> float:
    run = lambda p: functional_call(model, p, (ids,)).logits.log_softmax(-1)
    base = run(params)
    return float((run(moved) - base).abs().max() / base.abs().max())


@pytest.fixture(scope="module")
def mixtral():
    """(the truth: the model in float64 with the experts' own loop, ``experts_implementation="eager"``
    (torch's grouped product takes no float64); the ids; its parameters; the symmetries found on the
    same weights in float32 with the default grouped product, as a user's model runs)."""
    def build(**implementation):
        torch.manual_seed(0)
        config = transformers.MixtralConfig(vocab_size=VOCAB, hidden_size=16, intermediate_size=HIDDEN,
                                            num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1,
                                            num_local_experts=EXPERTS, num_experts_per_tok=2, max_position_embeddings=16,
                                            **implementation)
        return transformers.MixtralForCausalLM(config).eval()

    model, truth = build(), build(experts_implementation="eager").double()
    truth.load_state_dict(model.state_dict())
    ids = torch.randint(1, VOCAB, (2, 8), generator=torch.Generator().manual_seed(4))
    params = {name: p.detach().clone() for name, p in truth.named_parameters()}
    return truth, ids, params, sw.find_symmetries(model, {"input_ids": ids})


PREFIX = "model.layers.0.mlp."
ROUTER, GATE_UP, DOWN = PREFIX + "gate.weight", PREFIX + "experts.gate_up_proj", PREFIX + "experts.down_proj"


def _slots(sym):
    return {(slot.param, slot.dim, slot.start, slot.stop) for slot in sym.slots}


def test_experts_permute_with_their_router_rows(mixtral):
    """Swapping experts 0 and 2 (router rows and both expert weights' slices) leaves the logits
    unchanged; swapping the weights without the router rows does not. The library finds the
    permutation of all four experts with exactly those slots, and the exact check keeps it."""
    model, ids, params, found = mixtral
    order = torch.tensor([2, 1, 0, 3])
    moved = {**params, ROUTER: params[ROUTER][order], GATE_UP: params[GATE_UP][order], DOWN: params[DOWN][order]}
    assert _change(model, params, moved, ids) < 1e-12
    assert _change(model, params, {**moved, ROUTER: params[ROUTER]}, ids) > 1e-6
    experts = [sym for sym in found.of_kind(Kind.PERMUTATION) if sym.label.endswith("/experts")]
    assert len(experts) == 1 and experts[0].unit_count == EXPERTS
    assert _slots(experts[0]) == {(ROUTER, 0, 0, EXPERTS), (GATE_UP, 0, 0, EXPERTS), (DOWN, 0, 0, EXPERTS)}
    assert found.rejected == ()


def test_expert_hidden_units_rescale_and_permute(mixtral):
    """In every expert at once: the up row of hidden unit i times a with down column i over a leaves
    the logits unchanged (the gate row does not: silu is not homogeneous), as does exchanging hidden
    units 1 and 5 (gate rows, up rows, down columns). The library finds one rescale per up unit
    (rows HIDDEN + i of gate_up along dim 1, column i of down along dim 2) and the permutation of the
    HIDDEN units, none refuted; every parameter is covered."""
    model, ids, params, found = mixtral
    a = 1.7

    def rescaled(row: int, column: int):
        gate_up, down = params[GATE_UP].clone(), params[DOWN].clone()
        gate_up[:, row] *= a
        down[:, :, column] /= a
        return {**params, GATE_UP: gate_up, DOWN: down}

    assert _change(model, params, rescaled(HIDDEN + 3, 3), ids) < 1e-12
    assert _change(model, params, rescaled(3, 3), ids) > 1e-6
    order = torch.arange(HIDDEN)
    order[[1, 5]] = order[[5, 1]]
    rows = torch.cat([order, order + HIDDEN])
    swapped = {**params, GATE_UP: params[GATE_UP][:, rows], DOWN: params[DOWN][:, :, order]}
    assert _change(model, params, swapped, ids) < 1e-12
    rescales = {sym.label: _slots(sym) for sym in found.of_kind(Kind.RESCALE) if "experts" in sym.label}
    assert sorted(rescales.values(), key=lambda s: sorted(s)) == [
        {(GATE_UP, 1, HIDDEN + i, HIDDEN + i + 1), (DOWN, 2, i, i + 1)} for i in range(HIDDEN)]
    units = [sym for sym in found.of_kind(Kind.PERMUTATION) if sym.label == "permutation/" + PREFIX + "experts"]
    assert len(units) == 1 and units[0].unit_count == HIDDEN
    assert _slots(units[0]) == {(GATE_UP, 1, 0, HIDDEN), (GATE_UP, 1, HIDDEN, 2 * HIDDEN), (DOWN, 2, 0, HIDDEN)}
    assert found.rejected == () and dict(found.reasons) == {}


def test_fused_gate_up_projection():
    """Phi-3's MLP: gate_up_proj (rows [gate (24) | up (24)]) split by chunk, silu(gate) * up, then
    down_proj. By hand: up row i times a with down column i over a leaves the logits unchanged, and so
    does exchanging hidden units 2 and 7 (both rows, the column). The library finds 24 rescales and
    the permutation, and proposes nothing on the gate rows (before: 24 false scale candidates there,
    each refuted)."""
    torch.manual_seed(0)
    config = transformers.Phi3Config(vocab_size=VOCAB, hidden_size=16, intermediate_size=24, num_hidden_layers=1,
                                     num_attention_heads=2, num_key_value_heads=2, pad_token_id=0, max_position_embeddings=16)
    model = transformers.Phi3ForCausalLM(config).double().eval()
    ids = torch.randint(1, VOCAB, (2, 6), generator=torch.Generator().manual_seed(5))
    params = {name: p.detach().clone() for name, p in model.named_parameters()}
    fused, down = "model.layers.0.mlp.gate_up_proj.weight", "model.layers.0.mlp.down_proj.weight"
    w, d = params[fused].clone(), params[down].clone()
    w[24 + 4] *= 0.6
    d[:, 4] /= 0.6
    assert _change(model, params, {**params, fused: w, down: d}, ids) < 1e-12
    order = torch.arange(24)
    order[[2, 7]] = order[[7, 2]]
    assert _change(model, params, {**params, fused: params[fused][torch.cat([order, order + 24])],
                                   down: params[down][:, order]}, ids) < 1e-12
    found = sw.find_symmetries(model, {"input_ids": ids})
    assert found.rejected == ()
    mlp = [sym for sym in found if "mlp.gate_up_proj" in sym.label]
    assert sorted(_slots(sym) for sym in mlp if sym.kind is Kind.RESCALE) == sorted(
        {(fused, 0, 24 + i, 25 + i), (down, 1, i, i + 1)} for i in range(24))
    permutations = [sym for sym in mlp if sym.kind is Kind.PERMUTATION]
    assert len(permutations) == 1 and _slots(permutations[0]) == {(fused, 0, 0, 24), (fused, 0, 24, 48), (down, 1, 0, 24)}
    assert not [sym for sym in mlp if sym.kind is Kind.SCALE]


class Expert(torch.nn.Module):
    def __init__(self, d: int, h: int) -> None:
        super().__init__()
        self.inner, self.outer = torch.nn.Linear(d, h), torch.nn.Linear(h, d)

    def forward(self, x):
        return self.outer(torch.relu(self.inner(x)))


class DenseTopK(torch.nn.Module):
    """A mixture of experts written from scratch: every expert runs on every token, the router's
    top 2 logits are softmaxed and scattered into gates, the experts' outputs summed by them."""

    def __init__(self, d: int = 8, h: int = 6, experts: int = 3) -> None:
        super().__init__()
        self.table, self.norm = torch.nn.Embedding(11, d), torch.nn.LayerNorm(d)
        self.router = torch.nn.Linear(d, experts, bias=False)
        self.pool = torch.nn.ModuleList(Expert(d, h) for _ in range(experts))
        self.read = torch.nn.Linear(d, 11)

    def forward(self, ids):
        x = self.table(ids)
        y = self.norm(x)
        scores = self.router(y)
        top, chosen = scores.topk(2, dim=-1)
        gates = torch.zeros_like(scores).scatter(-1, chosen, top.softmax(-1))
        outputs = torch.stack([expert(y) for expert in self.pool], dim=-2)
        return self.read(x + (gates.unsqueeze(-1) * outputs).sum(-2))


def test_a_mixture_written_from_scratch():
    """By hand in float64: adding c to one input column of the router (every expert's logit shifts by
    the same c x_j) keeps the top 2 and their softmax, so the logits are unchanged; so does expert 1's
    hidden unit 2 scaled by a (its inner row and bias) with its outer column over a. The library finds
    a router translation per input column (topk: before, an operation the analysis did not know) and
    each expert's rescales, none refuted."""
    torch.manual_seed(0)
    model = DenseTopK().double()
    ids = torch.randint(0, 11, (2, 5), generator=torch.Generator().manual_seed(6))
    params = {name: p.detach().clone() for name, p in model.named_parameters()}
    run = lambda p: functional_call(model, p, (ids,)).log_softmax(-1)
    change = lambda moved: float((run(moved) - run(params)).abs().max() / run(params).abs().max())
    router = params["router.weight"].clone()
    router[:, 3] += 0.8
    assert change({**params, "router.weight": router}) < 1e-12
    inner, bias, outer = (params[f"pool.1.{n}"].clone() for n in ("inner.weight", "inner.bias", "outer.weight"))
    inner[2], bias[2], outer[:, 2] = inner[2] * 2.5, bias[2] * 2.5, outer[:, 2] / 2.5
    assert change({**params, "pool.1.inner.weight": inner, "pool.1.inner.bias": bias, "pool.1.outer.weight": outer}) < 1e-12
    found = sw.find_symmetries(model, ids)
    assert found.rejected == ()
    translations = {_slots(sym).pop() for sym in found.of_kind(Kind.TRANSLATION) if "router" in sym.label}
    assert translations == {("router.weight", 1, j, j + 1) for j in range(8)}
    rescales = [_slots(sym) for sym in found.of_kind(Kind.RESCALE) if sym.label.startswith("rescale/pool.1.inner")]
    assert {("pool.1.inner.weight", 0, 2, 3), ("pool.1.inner.bias", 0, 2, 3), ("pool.1.outer.weight", 1, 2, 3)} in rescales
    assert len(rescales) == 6


def test_expert_charges_follow_the_discrete_law(tmp_path):
    """The charges of symmetries acting on the experts' 3-d weights (slots along dims 1 and 2, the
    experts axis whole) are summed and carried by the Monitor like any other: under SGD with momentum
    and weight decay, 10 steps of Mixtral in float32, every law's relative error stays at float32
    round-off (the exact discrete law of SGD is the truth; measured 4e-7 for the rescales)."""
    torch.manual_seed(0)
    config = transformers.MixtralConfig(vocab_size=VOCAB, hidden_size=16, intermediate_size=HIDDEN, num_hidden_layers=1,
                                        num_attention_heads=2, num_key_value_heads=1, num_local_experts=EXPERTS,
                                        num_experts_per_tok=2, max_position_embeddings=16, rms_norm_eps=1e-12)
    model = transformers.MixtralForCausalLM(config)
    ids = torch.randint(1, VOCAB, (4, 8), generator=torch.Generator().manual_seed(1))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-3)
    with sw.Monitor(model, optimizer, tmp_path, example_input={"input_ids": ids}) as monitor:
        assert any("experts" in sym.label for sym in monitor.symmetries.of_kind(Kind.RESCALE))
        for _ in range(10):
            loss = model(input_ids=ids, labels=ids).loss
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            values = monitor.step(loss)
    for kind in ("translation", "scale", "rescale"):
        assert values[f"charge_law_error/{kind}"] < 1e-5
    assert values["charge_drift/rescale"] > 1e-2  # the charges moved: the law was put to the test


def test_interleaved_gated_experts_with_biases():
    """GPT-OSS's experts: gate and up interleaved in one (experts, hidden, 2 I) weight ([a_0, b_0, a_1,
    ...]), a bias row per expert gathered per token, a clamped, shifted gate. By hand in float64 (the
    experts' own loop, at perturbed parameters): exchanging hidden units 1 and 4 in every expert (columns
    2, 3 with 8, 9 of gate_up and its bias, rows 1 and 4 of down) leaves the logits unchanged; the
    library finds that permutation (one slot of 2 columns a unit, the bias along its dim 1), the
    experts' permutation with the router's rows and bias and both expert biases, and the residual
    stream's with the down bias; nothing refuted."""
    def build(**implementation):
        torch.manual_seed(0)
        config = transformers.GptOssConfig(vocab_size=VOCAB, hidden_size=16, intermediate_size=HIDDEN, num_hidden_layers=1,
                                           num_attention_heads=2, num_key_value_heads=1, num_local_experts=EXPERTS,
                                           num_experts_per_tok=2, head_dim=8, **implementation)
        return transformers.GptOssForCausalLM(config).eval()

    model, truth = build(), build(experts_implementation="eager").double()
    with torch.no_grad():
        generator = torch.Generator().manual_seed(3)
        for p in model.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=generator))
    truth.load_state_dict(model.state_dict())
    ids = torch.randint(1, VOCAB, (2, 8), generator=torch.Generator().manual_seed(4))
    params = {name: p.detach().clone() for name, p in truth.named_parameters()}
    prefix = "model.layers.0.mlp.experts."
    order = torch.arange(HIDDEN)
    order[[1, 4]] = order[[4, 1]]
    pairs = torch.stack([2 * order, 2 * order + 1], 1).reshape(-1)
    moved = {**params, prefix + "gate_up_proj": params[prefix + "gate_up_proj"][:, :, pairs],
             prefix + "gate_up_proj_bias": params[prefix + "gate_up_proj_bias"][:, pairs],
             prefix + "down_proj": params[prefix + "down_proj"][:, order]}
    assert _change(truth, params, moved, ids) < 1e-12
    assert _change(truth, params, {**moved, prefix + "down_proj": params[prefix + "down_proj"]}, ids) > 1e-6
    found = sw.find_symmetries(model, {"input_ids": ids})
    assert found.rejected == ()
    labels = {sym.label: _slots(sym) for sym in found.of_kind(Kind.PERMUTATION)}
    assert labels["permutation/" + prefix[:-1]] == {
        (prefix + "gate_up_proj", 2, 0, 2 * HIDDEN), (prefix + "gate_up_proj_bias", 1, 0, 2 * HIDDEN),
        (prefix + "down_proj", 1, 0, HIDDEN)}
    assert {(prefix + "gate_up_proj_bias", 0, 0, EXPERTS), (prefix + "down_proj_bias", 0, 0, EXPERTS),
            ("model.layers.0.mlp.router.weight", 0, 0, EXPERTS)} <= labels[f"permutation/{prefix[:-1]}/experts"]
    assert (prefix + "down_proj_bias", 1, 0, 16) in labels["permutation/residual_stream"]


def test_experts_stored_input_first_rescale_along_their_input_axis():
    """Llama 4's experts keep gate_up_proj as (experts, hidden, 2 x intermediate) and multiply x @ W
    (bmm): a hidden unit is W's dim 1, not dim 0 (the expert axis, where the unit index ran past the
    2 experts: find_symmetries crashed). Truth by hand in float64: the post-attention norm's gain
    unit 5 times 3, the router's, shared expert's and experts' input weights of unit 5 divided by 3."""
    torch.manual_seed(0)
    config = transformers.Llama4TextConfig(vocab_size=VOCAB, hidden_size=16, intermediate_size=16,
                                           intermediate_size_mlp=32, num_hidden_layers=2, num_attention_heads=2,
                                           num_key_value_heads=1, head_dim=8, num_local_experts=2, num_experts_per_tok=1,
                                           interleave_moe_layer_step=2)
    model = transformers.Llama4ForCausalLM(config).eval()
    ids = torch.randint(3, VOCAB, (2, 8), generator=torch.Generator().manual_seed(1))
    found = sw.find_symmetries(model, {"input_ids": ids})
    assert not found.rejected
    prefix = "model.layers.1."
    expected = {(prefix + "post_attention_layernorm.weight", 0), (prefix + "feed_forward.router.weight", 1),
                (prefix + "feed_forward.experts.gate_up_proj", 1), (prefix + "feed_forward.shared_expert.gate_proj.weight", 1),
                (prefix + "feed_forward.shared_expert.up_proj.weight", 1)}
    unit = [sym for sym in found.of_kind(Kind.RESCALE) if sym.label.endswith(prefix + "post_attention_layernorm/unit5")]
    assert len(unit) == 1 and {(s.param, s.dim) for s in unit[0].slots} == expected
    model = model.double()
    params = {k: v.detach().clone() for k, v in model.named_parameters()}
    moved = {k: v.clone() for k, v in params.items()}
    moved[prefix + "post_attention_layernorm.weight"][5] *= 3.0
    moved[prefix + "feed_forward.router.weight"][:, 5] /= 3.0
    moved[prefix + "feed_forward.experts.gate_up_proj"][:, 5, :] /= 3.0
    moved[prefix + "feed_forward.shared_expert.gate_proj.weight"][:, 5] /= 3.0
    moved[prefix + "feed_forward.shared_expert.up_proj.weight"][:, 5] /= 3.0
    with torch.no_grad():
        assert _change(model, params, moved, ids) < 1e-12
        moved[prefix + "feed_forward.experts.gate_up_proj"][:, 5, :] *= 3.0  # the experts' part left out: changed
        assert _change(model, params, moved, ids) > 1e-6
