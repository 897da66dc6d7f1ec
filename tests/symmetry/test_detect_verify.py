"""find_symmetries + verify_symmetries on real MLPs and CNNs: counts derived by hand, invariances."""

import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

import shockwatch as sw
from shockwatch.symmetry import Kind, act

HOMOGENEOUS = {"relu", "leaky_relu", "identity"}


def exact_norms(model: nn.Module) -> nn.Module:
    """eps -> 1e-30 in every norm, so that scale symmetries become exact (the eps breaking is its own test)."""
    for module in model.modules():
        if isinstance(module, (nn.BatchNorm1d, nn.BatchNorm2d, nn.LayerNorm, nn.RMSNorm)):
            module.eps = 1e-30
    return model


def expected_mlp_counts(widths, activation, bias, norm):
    """Truth: Kunin et al. 2021 §3 applied by hand to Linear -> [norm] -> act stacks."""
    hidden = widths[1:-1]
    translation = widths[-2] + (1 if bias else 0)
    scale = {"none": 0, "batch": sum(hidden), "layer": len(hidden), "rms": len(hidden)}[norm]
    rescale = sum(hidden) if activation in HOMOGENEOUS else 0
    permutation = sum(1 for width in hidden if width >= 2)  # any elementwise activation commutes
    return {"translation": translation, "scale": scale, "rescale": rescale, "permutation": permutation, "gl": 0, "rotation": 0}


def data(in_features, classes, n=24, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, in_features, generator=g, dtype=torch.float64), torch.randint(0, classes, (n,), generator=g)


@settings(max_examples=25, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(
    widths=st.lists(st.integers(1, 6), min_size=3, max_size=5),
    activation=st.sampled_from(["relu", "leaky_relu", "identity", "gelu", "tanh"]),
    bias=st.booleans(),
    norm=st.sampled_from(["none", "batch", "layer", "rms"]),
)
def test_random_mlps_counts_and_invariance(widths, activation, bias, norm):
    """Truth: hand-derived counts; the definition of a symmetry (loss unchanged under finite group
    elements a in 1e-2..1e2, c in +-3) and <grad L, xi> = 0, in float64."""
    widths = [widths[0], *[max(w, 2) for w in widths[1:-1]], max(widths[-1], 2)]
    torch.manual_seed(0)
    model = exact_norms(sw.models.mlp(widths, activation, bias, norm).double())
    x, y = data(widths[0], widths[-1])
    syms = sw.find_symmetries(model, x)
    assert syms.counts() == expected_mlp_counts(widths, activation, bias, norm)
    report = sw.verify_symmetries(model, F.cross_entropy, (x, y), syms)
    assert report.max_loss_change() < 1e-9, report.worst(3)
    assert report.max_gradient_alignment() < 1e-9, report.worst(3)
    assert report.max_hessian_residual() < 1e-9, report.worst(3)


@pytest.mark.parametrize("batch_norm", [True, False])
def test_vgg_counts_and_invariance(batch_norm):
    """Truth: by hand for layout (4 ch, M, 8 ch, M) on 8x8 inputs, hidden 16, 10 classes:
    rescale = 4 + 8 (conv channels) + 16 (hidden) units; scale = 4 + 8 with BatchNorm;
    translation = 16 columns + 1 bias. The conv-8 -> flatten -> Linear units own 2x2 column blocks."""
    torch.manual_seed(1)
    model = exact_norms(sw.models.vgg("tiny", width_divisor=4, batch_norm=batch_norm, image_size=8, hidden=16).double())
    x = torch.randn(6, 3, 8, 8, dtype=torch.float64)
    y = torch.randint(0, 10, (6,))
    syms = sw.find_symmetries(model, x)
    assert syms.counts() == {"translation": 17, "scale": 12 if batch_norm else 0, "rescale": 28, "permutation": 3, "gl": 0, "rotation": 0}
    flatten_units = [s for s in syms.of_kind("rescale") if s.outgoing[0].param.startswith(f"{len(model) - 3}.")]
    assert len(flatten_units) == 8 and all(s.outgoing[0].stop - s.outgoing[0].start == 4 for s in flatten_units)
    report = sw.verify_symmetries(model, F.cross_entropy, (x, y), syms)
    assert report.max_loss_change() < 1e-9 and report.max_gradient_alignment() < 1e-9, report.worst(3)
    assert report.max_hessian_residual() < 1e-9, report.worst(3)


def test_batchnorm_eps_breaking_is_reported_not_hidden():
    """Truth: BN's eps breaks scale invariance by ~eps (a^-2 - 1) / (2 sigma^2): visible at a = 1e-2
    with the default eps = 1e-5, gone when eps -> 0."""
    torch.manual_seed(2)
    model = sw.models.mlp((4, 8, 3), norm="batch").double()
    x, y = data(4, 3)
    syms = sw.find_symmetries(model, x)
    broken = sw.verify_symmetries(model, F.cross_entropy, (x, y), syms)
    exact = sw.verify_symmetries(exact_norms(model), F.cross_entropy, (x, y), syms)
    assert 1e-6 < broken.max_loss_change("scale") < 0.5 and exact.max_loss_change("scale") < 1e-10
    assert broken.max_hessian_residual("scale") > 1e-8 and exact.max_hessian_residual("scale") < 1e-12


def test_a_false_symmetry_fails_every_check():
    """Truth: a plain ReLU MLP's first layer is not scale invariant (no norm follows it): the loss
    moves, the gradient has a component along theta_A, and H theta_A != -grad_A L."""
    torch.manual_seed(5)
    model = sw.models.mlp((4, 6, 3)).double()
    x, y = data(4, 3)
    fake = sw.Symmetry(Kind.SCALE, "fake", (sw.symmetry.Slot("0.weight", 0, 0, 6), sw.symmetry.Slot("0.bias", 0, 0, 6)))
    row = sw.verify_symmetries(model, F.cross_entropy, (x, y), [fake]).rows[0]
    assert row.loss_change > 1e-3 and row.gradient_alignment > 1e-3 and row.hessian_residual > 1e-3


def test_sampled_verification_and_the_joint_action():
    """Truth: the definition again, now with every symmetry of a kind acting at once (independent
    random elements) in one evaluation; rows outside the sample carry no finite-element number."""
    torch.manual_seed(6)
    model = exact_norms(sw.models.mlp((4, 9, 9, 3), norm="batch").double())
    x, y = data(4, 3)
    syms = sw.find_symmetries(model, x)
    report = sw.verify_symmetries(model, F.cross_entropy, (x, y), syms, element_samples=2, hessian_samples=1)
    assert sum(r.loss_change is not None for r in report.rows) == 8  # 2 per continuous kind + 2 permutations
    assert sum(r.hessian_residual is not None for r in report.rows) == 3
    assert set(report.joint_loss_change) == {"translation", "scale", "rescale"}  # permutations: per layer
    assert max(report.joint_loss_change.values()) < 1e-9
    assert report.max_gradient_alignment() < 1e-9


def test_vectorised_charges_match_a_slow_loop():
    """Truth: each charge from its definition, slot by slot (sum, sum of squares, difference)."""
    torch.manual_seed(3)
    model = sw.models.vgg("tiny", width_divisor=4, image_size=8, hidden=16).double()
    syms = sw.find_symmetries(model, torch.randn(2, 3, 8, 8, dtype=torch.float64))
    params = {name: p.detach() for name, p in model.named_parameters()}
    for kind in (k for k in Kind if k.one_parameter):
        fast = syms.charges(kind, params)
        for value, sym in zip(fast, syms.of_kind(kind)):
            inc = sum(float(s.view(params).sum() if kind is Kind.TRANSLATION else s.view(params).square().sum())
                      for s in sym.incoming)
            out = sum(float(s.view(params).square().sum()) for s in sym.outgoing)
            assert math.isclose(float(value), inc - out, rel_tol=1e-12, abs_tol=1e-12)
        assert torch.allclose(fast[:1], syms.of_kind(kind)[0].charge(model), rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("model_name", ["vgg-bn", "mlp"])
def test_quadratic_sums_match_the_slot_by_slot_definition(model_name):
    """Truth: sum over slots of sign <x_A, y_A>, slot by slot in float64, for x != y; and the float32
    path (products and sums in float32) agrees to float32 round-off."""
    torch.manual_seed(5)
    if model_name == "vgg-bn":
        model = sw.models.vgg("tiny", width_divisor=4, batch_norm=True, image_size=8, hidden=16).double()
        syms = sw.find_symmetries(model, torch.randn(2, 3, 8, 8, dtype=torch.float64))
    else:
        model = sw.models.mlp((4, 6, 5, 3)).double()
        syms = sw.find_symmetries(model, torch.randn(5, 4, dtype=torch.float64))
    x = {name: torch.randn_like(p) for name, p in model.named_parameters()}
    y = {name: torch.randn_like(p) for name, p in model.named_parameters()}
    signed, unsigned = syms.quadratic_sums([(x, y), (y, y)], unsigned=True)
    syms_in_order = syms.of_kind(Kind.SCALE) + syms.of_kind(Kind.RESCALE)
    assert signed.shape == (2, len(syms_in_order)) and len(syms_in_order) > 0
    for column, sym in enumerate(syms_in_order):
        inc = sum(float((s.view(x) * s.view(y)).sum()) for s in sym.incoming)
        out = sum(float((s.view(x) * s.view(y)).sum()) for s in sym.outgoing)
        assert math.isclose(float(signed[0, column]), inc - out, rel_tol=1e-12, abs_tol=1e-12)
        assert math.isclose(float(unsigned[0, column]), inc + out, rel_tol=1e-12, abs_tol=1e-12)
    reference = torch.cat([syms.charges(kind, y) for kind in (Kind.SCALE, Kind.RESCALE)])
    assert torch.allclose(signed[1], reference, rtol=1e-12, atol=1e-12)
    single = {name: t.float() for name, t in y.items()}
    low = syms.quadratic_sums([(single, single)])[0]
    assert torch.allclose(low, reference, rtol=1e-5, atol=1e-5)
    # the fused pass: whole inner products over the touched parameters, and norms of any tensor lists
    fused = syms.fused_sums([(x, y), (y, y)], norms=((list(x.values()), None), (list(x.values()), list(y.values()))))
    assert torch.equal(fused.signed, signed)
    for row, (a, b) in enumerate([(x, y), (y, y)]):
        direct = sum(float((a[name] * b[name]).sum()) for name in syms.quadratic_params)
        assert math.isclose(float(fused.whole[row]), direct, rel_tol=1e-12)
    assert math.isclose(float(fused.norms[0]), math.sqrt(sum(float(t.square().sum()) for t in x.values())), rel_tol=1e-12)
    assert math.isclose(float(fused.norms[1]), math.sqrt(sum(float((x[n] - y[n]).square().sum()) for n in x)), rel_tol=1e-12)


def test_rescale_action_moves_the_charge_as_the_group_law_says():
    """Truth: the rescale action with e^c multiplies |in|^2 by e^{2c} and |out|^2 by e^{-2c}."""
    torch.manual_seed(4)
    model = sw.models.mlp((3, 5, 2)).double()
    syms = sw.find_symmetries(model, torch.randn(4, 3, dtype=torch.float64))
    sym = syms.of_kind("rescale")[0]
    params = {name: p.detach() for name, p in model.named_parameters()}
    inc = sum(float(s.view(params).square().sum()) for s in sym.incoming)
    out = sum(float(s.view(params).square().sum()) for s in sym.outgoing)
    moved = act(sym, params, 0.7)
    charge = float(sw.SymmetrySet((sym,)).charges("rescale", moved)[0])
    assert math.isclose(charge, inc * math.exp(1.4) - out * math.exp(-1.4), rel_tol=1e-12)


def test_no_rescale_through_non_homogeneous_activations():
    for activation in ("gelu", "tanh"):
        syms = sw.find_symmetries(sw.models.mlp((3, 4, 4, 2), activation), torch.randn(2, 3))
        assert syms.counts()["rescale"] == 0


def test_residual_branches_are_not_guessed():
    """h = relu(a x) read by b and by the skip h + b(h): a per-unit rescale of a's rows alone moves the
    output, so none is proposed alone; with b's rows and columns and head's columns it is the
    conjugation a -> D a, b -> D b D^-1, head -> head D^-1, which holds (by hand below), and is
    found since the walk follows both addends (2026-12-07)."""
    class Residual(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b, self.head = nn.Linear(4, 4), nn.Linear(4, 4), nn.Linear(4, 2)

        def forward(self, x):
            h = torch.relu(self.a(x))
            return self.head(h + self.b(h))

    torch.manual_seed(0)
    model = Residual()
    syms = sw.find_symmetries(model, torch.randn(2, 4))
    assert syms.counts() == {"translation": 5, "scale": 0, "rescale": 4, "permutation": 1, "gl": 0, "rotation": 0}
    d = torch.tensor([1.7, 0.6, 1.0, 2.3], dtype=torch.float64)
    x = torch.randn(3, 4, dtype=torch.float64)
    model.double()
    before = model(x)
    with torch.no_grad():
        model.a.weight.mul_(d[:, None]), model.a.bias.mul_(d)
        model.b.weight.mul_(d[:, None] / d[None, :]), model.b.bias.mul_(d)
        model.head.weight.div_(d[None, :])
    assert float((model(x) - before).abs().max()) < 1e-12
    with torch.no_grad():
        model.a.weight.mul_(2.0)  # a's rows alone
    assert float((model(x) - before).abs().max()) > 1e-3
    for sym in syms.of_kind(Kind.RESCALE):
        assert {(s.param, s.dim) for s in sym.slots} == {("a.weight", 0), ("a.bias", 0), ("b.weight", 0), ("b.bias", 0),
                                                        ("b.weight", 1), ("head.weight", 1)}
    # the one permutation: h's units, so a's rows, b's rows and columns (b reads h too) and head's columns
    (perm,) = syms.of_kind(Kind.PERMUTATION)
    assert {(s.param, s.dim) for s in perm.slots} == {("a.weight", 0), ("a.bias", 0), ("b.weight", 0), ("b.bias", 0),
                                                     ("b.weight", 1), ("head.weight", 1)}
    model = model.double()
    x = torch.randn(7, 4, dtype=torch.float64)
    order = torch.tensor([2, 0, 3, 1])
    with torch.no_grad():
        before = model(x)
        model.a.weight.copy_(model.a.weight[order])
        model.a.bias.copy_(model.a.bias[order])
        model.b.weight.copy_(model.b.weight[order][:, order])
        model.b.bias.copy_(model.b.bias[order])
        model.head.weight.copy_(model.head.weight[:, order])
        assert float((model(x) - before).abs().max()) < 1e-14


def test_unanalysed_modules_are_named():
    model = nn.Sequential(nn.Embedding(10, 4), nn.Flatten(), nn.Linear(8, 3))
    syms = sw.find_symmetries(model, torch.randint(0, 10, (2, 2)))
    assert syms.unanalysed == ("0",)


def test_bad_input():
    with pytest.raises(ValueError, match="no parameters"):
        sw.find_symmetries(nn.ReLU(), torch.randn(2, 3))
    with pytest.raises(ValueError, match="does not accept the example input"):
        sw.find_symmetries(sw.models.mlp((3, 4, 2)), torch.randn(2, 5))

    class Unused(nn.Module):  # a child never called in forward: named, not guessed
        def __init__(self):
            super().__init__()
            self.f, self.spare = nn.Linear(2, 2), nn.Linear(2, 2)

        def forward(self, x):
            return self.f(x) if x.sum() > 0 else -self.f(x)

    syms = sw.find_symmetries(Unused(), torch.randn(2, 2))
    assert "spare" in syms.unanalysed and syms.partial == ("<model>",)
    assert dict(syms.reasons)["spare.weight"].startswith("never called")
    assert dict(syms.reasons)["f.weight"]  # analysed alone, its output is the child's: a reason, not a guess


def test_permutations_reorder_units_and_a_partial_one_is_caught():
    """Truth: permuting a hidden layer's units (rows, biases, norm parameters, the consumer's column
    blocks) leaves the function unchanged; permuting the rows alone does not."""
    torch.manual_seed(7)
    model = exact_norms(sw.models.vgg("tiny", width_divisor=4, batch_norm=True, image_size=8, hidden=16).double())
    x = torch.randn(5, 3, 8, 8, dtype=torch.float64)
    params = {name: p.detach() for name, p in model.named_parameters()}
    syms = sw.find_symmetries(model, x)
    before = torch.func.functional_call(model.eval(), params, (x,))
    for sym in syms.of_kind("permutation"):
        order = torch.randperm(sym.unit_count)
        after = torch.func.functional_call(model, sw.symmetry.permute(sym, params, order), (x,))
        assert torch.allclose(before, after, rtol=1e-12, atol=1e-12), sym.label
    conv = syms.of_kind("permutation")[0]
    rows_only = sw.Symmetry(Kind.PERMUTATION, "rows-only", conv.incoming[:1], conv.outgoing)
    broken = torch.func.functional_call(model, sw.symmetry.permute(rows_only, params, torch.arange(4).flip(0)), (x,))
    assert (before - broken).abs().max() > 1e-3
    with pytest.raises(ValueError, match="no scalar Noether charge"):
        syms.charges("permutation", params)


def test_resnet_counts_by_hand():
    """Truth: stem conv+BN (8 scale; its ReLU output also feeds the skip: no rescale); each block
    conv1-BN-ReLU-conv2 (8 scale, 8 rescale via BN's affine, 1 permutation) and conv2-BN-add (8
    scale); head 8 columns + bias. All verify exactly with eps -> 0."""
    torch.manual_seed(8)
    model = exact_norms(sw.models.resnet(channels=8, blocks=2).double())
    x, y = torch.randn(4, 3, 8, 8, dtype=torch.float64), torch.randint(0, 10, (4,))
    syms = sw.find_symmetries(model, x)
    assert syms.counts() == {"translation": 9, "scale": 40, "rescale": 16, "permutation": 2, "gl": 0, "rotation": 0}
    report = sw.verify_symmetries(model, F.cross_entropy, (x, y), syms)
    assert report.max_loss_change() < 1e-10 and report.max_gradient_alignment() < 1e-10
    assert report.max_hessian_residual() < 1e-10


def test_untraceable_model_is_analysed_child_by_child():
    """A data-dependent branch at the top: the children are traced with the inputs they receive;
    symmetries inside them are found and verified, none across the untraced top is claimed. The head,
    whose output is the model's, keeps its logits' translations (6 columns and the bias)."""
    class Branchy(nn.Module):
        def __init__(self):
            super().__init__()
            self.body = sw.models.mlp((4, 8, 8, 6))
            self.head = nn.Linear(6, 3)

        def forward(self, x):
            h = self.body(x)
            return self.head(h) if h.sum() > -1e9 else -self.head(h)

    torch.manual_seed(9)
    model = Branchy().double()
    x, y = data(4, 3)
    syms = sw.find_symmetries(model, x)
    assert syms.partial == ("<model>",)
    assert syms.counts() == {"translation": 7, "scale": 0, "rescale": 16, "permutation": 2, "gl": 0, "rotation": 0}
    assert all({slot.param.split(".")[0] for slot in s.slots} in ({"body"}, {"head"}) for s in syms)
    assert {s.label for s in syms.of_kind(Kind.TRANSLATION)} >= {"translation/head/bias", "translation/head/column5"}
    report = sw.verify_symmetries(model, F.cross_entropy, (x, y), syms)
    assert report.max_loss_change() < 1e-10 and report.max_gradient_alignment() < 1e-10


@settings(max_examples=15, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(
    channels=st.lists(st.integers(1, 5), min_size=1, max_size=3),
    pools=st.lists(st.booleans(), min_size=3, max_size=3),
    batch_norm=st.booleans(),
    hidden=st.integers(1, 6),
)
def test_random_cnns_counts_and_invariance(channels, pools, batch_norm, hidden):
    """Truth: hand counts for conv3x3 -> [BN] -> ReLU -> [maxpool] stacks, flatten, Linear-ReLU-Linear:
    rescale = every conv channel + hidden unit; scale = every conv channel with BatchNorm;
    permutation = every layer of >= 2 units; translation = hidden + 1; all verify in float64."""
    layout = []
    for width, pool in zip(channels, pools):
        layout.append(width * 4)  # vgg() divides by width_divisor=4
        if pool:
            layout.append("M")
    pooled = sum(1 for item in layout if item == "M")
    torch.manual_seed(0)
    model = exact_norms(sw.models.vgg(layout, width_divisor=4, batch_norm=batch_norm, image_size=4 * 2**pooled,
                                      hidden=hidden, num_classes=3).double())
    x = torch.randn(5, 3, 4 * 2**pooled, 4 * 2**pooled, dtype=torch.float64)
    y = torch.randint(0, 3, (5,))
    syms = sw.find_symmetries(model, x)
    units = [*channels, hidden]
    assert syms.counts() == {"translation": hidden + 1, "scale": sum(channels) if batch_norm else 0,
                             "rescale": sum(units), "permutation": sum(1 for u in units if u >= 2), "gl": 0, "rotation": 0}
    report = sw.verify_symmetries(model, F.cross_entropy, (x, y), syms, hessian_samples=4)
    assert report.max_loss_change() < 1e-9 and report.max_gradient_alignment() < 1e-9, report.worst(3)
    assert report.max_hessian_residual() < 1e-9, report.worst(3)


def test_a_structural_candidate_that_fails_the_check_is_rejected():
    """A module that looks like Hugging Face's GPT2MLP but adds a fixed per-unit offset after its
    activation: permuting its units changes the output. The graph analysis does not propose it (the
    offset varies across the units), and the reason names the operation."""
    class Conv1D(nn.Module):  # the name and layout of transformers' Conv1D: y = x W + b, W (in, out)
        def __init__(self, n_in, n_out):
            super().__init__()
            self.weight = nn.Parameter(torch.randn(n_in, n_out))
            self.bias = nn.Parameter(torch.randn(n_out))

        def forward(self, x):
            return x @ self.weight + self.bias

    class GPT2MLP(nn.Module):
        def __init__(self):
            super().__init__()
            self.c_fc, self.c_proj = Conv1D(4, 6), Conv1D(6, 4)
            self.register_buffer("offset", torch.arange(6.0))

        def forward(self, x):
            return self.c_proj(torch.tanh(self.c_fc(x)) + self.offset)

    torch.manual_seed(10)
    syms = sw.find_symmetries(nn.Sequential(GPT2MLP(), nn.Linear(4, 3)), torch.randn(5, 4))
    assert syms.rejected == ()
    assert not any(slot.param.startswith("0.c_fc") for s in syms.of_kind("permutation") for slot in s.slots)
    assert syms.counts()["translation"] == 5
    assert "adds an untransformed tensor" in dict(syms.reasons)["0.c_fc.weight"]
    # c_proj's outputs (x W + b, the bias added as a parameter) feed only the last linear map, with
    # nothing between: any invertible 4 x 4 matrix on them (W, b -> M W, M b) with its inverse on the
    # last map's columns, a GL(4) bottleneck found from the graph (checked exactly), which holds the
    # permutation of those units
    assert not syms.of_kind("permutation")
    (output,) = syms.of_kind("gl")
    assert {(slot.param, slot.dim) for slot in output.slots} == {("0.c_proj.weight", 1), ("0.c_proj.bias", 0),
                                                                ("1.weight", 1)}
    assert output.unit_count == 4 and output.defect is not None and output.defect < 1e-12


def test_weight_decay_inside_the_loss_breaking_is_reported():
    """Truth: with (lambda/2)|theta|^2 added to the loss, a scale or rescale element moves the loss by
    exactly (lambda/2)(|g theta|^2 - |theta|^2) and <grad, xi> = lambda |theta_A|^2 (scale): the
    report shows that size, not zero. Translations move it by (lambda/2)(|theta_A + c|^2 - |theta_A|^2)."""
    torch.manual_seed(11)
    model = exact_norms(sw.models.mlp((4, 6, 3), norm="batch").double())
    x, y = data(4, 3)
    syms = sw.find_symmetries(model, x)
    exact = sw.verify_symmetries(model, F.cross_entropy, (x, y), syms)
    broken = sw.verify_symmetries(model, F.cross_entropy, (x, y), syms, weight_decay=1e-3)
    for kind in ("scale", "rescale", "translation"):
        assert exact.max_loss_change(kind) < 1e-10
        assert broken.max_loss_change(kind) > 1e-6, kind
    assert broken.max_gradient_alignment("scale") > 1e-4
    params = {k: v.detach() for k, v in model.named_parameters()}
    sym = syms.of_kind("scale")[0]
    norm_sq = sum(float(s.view(params).square().sum()) for s in sym.incoming)
    expected = max(abs(0.5e-3 * (math.exp(2 * a) - 1) * norm_sq) for a in (-4.6, -1.0, 1.0, 4.6)) / broken.loss
    row = next(r for r in broken.rows if r.label == sym.label)
    assert math.isclose(row.loss_change, expected, rel_tol=1e-9)


def test_rescale_is_found_through_constant_scalings_and_not_through_data_dependent_ones():
    """Truth: relu(c x) = c relu(x) for a fixed c > 0 (the NTK parametrisation's 1/sqrt(width));
    dividing by a norm of the activations is not a per-unit linear map, so nothing may be reported."""
    class NTK(torch.nn.Module):
        def __init__(self, data_dependent=False):
            super().__init__()
            self.hidden, self.readout = torch.nn.Linear(3, 6, bias=False), torch.nn.Linear(6, 1, bias=False)
            self.data_dependent = data_dependent

        def forward(self, x):
            h = torch.relu(self.hidden(x) / math.sqrt(3))
            h = h / h.norm() if self.data_dependent else 0.5 * h
            return self.readout(h) / math.sqrt(6)

    torch.manual_seed(0)
    x = torch.randn(10, 3)
    assert sw.find_symmetries(NTK(), x, logits=False).counts()["rescale"] == 6
    assert sw.find_symmetries(NTK(data_dependent=True), x, logits=False).counts()["rescale"] == 0


def test_a_layer_applied_to_its_own_output_is_a_consumer_of_its_units():
    """h = relu(twice(relu(twice(relu(inp(x)))))): twice's second application reads the units its first
    wrote, with twice's own columns. Scaling twice's row i with head's column i only (what was proposed,
    and passed the check where unit i was dead after the first application on the example batch) is not
    a symmetry: by hand in float64 on another batch it changes the output. Nothing is proposed for
    twice's units now, and nothing accepted fails by hand."""
    class Twice(nn.Module):
        def __init__(self):
            super().__init__()
            self.inp, self.twice, self.head = nn.Linear(16, 24), nn.Linear(24, 24), nn.Linear(24, 5)

        def forward(self, x):
            h = F.relu(self.inp(x))
            return self.head(F.relu(self.twice(F.relu(self.twice(h)))))

    torch.manual_seed(0)
    model = Twice()
    found = sw.find_symmetries(model, torch.randn(5, 16, generator=torch.Generator().manual_seed(0)))
    assert not any(slot.param.startswith("twice") for sym in found.of_kind(Kind.RESCALE) for slot in sym.slots)
    model = model.double()
    other = torch.randn(64, 16, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        before = model(other)
        model.twice.weight[13] *= 2.0
        model.twice.bias[13] *= 2.0
        model.head.weight[:, 13] /= 2.0
        assert float((model(other) - before).abs().max()) > 1e-4 * float(before.abs().max())


def test_a_forward_taking_one_dict_gets_the_dict():
    """forward(self, batch) reading batch["feats"]: the example dict is its one argument (its keys name
    no parameter), where it was passed as keywords and refused. Truth: the hidden units' rescale by
    hand in float64."""
    class DictIn(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(4, 8), nn.Linear(8, 3)

        def forward(self, batch):
            return self.b(torch.relu(self.a(batch["feats"])))

    torch.manual_seed(0)
    model = DictIn()
    found = sw.find_symmetries(model, {"feats": torch.randn(5, 4)})
    assert len(found.of_kind(Kind.RESCALE)) == 8 and not found.rejected
    model = model.double()
    feats = torch.randn(9, 4, dtype=torch.float64)
    with torch.no_grad():
        before = model({"feats": feats})
        model.a.weight[2] *= 3.0
        model.a.bias[2] *= 3.0
        model.b.weight[:, 2] /= 3.0
        assert float((model({"feats": feats}) - before).abs().max()) < 1e-13


def test_verify_says_when_the_model_does_not_run_on_the_batch_in_its_dtype():
    """A model whose kernel takes no float64 (as torch's grouped product behind Hugging Face's mixtures
    of experts), verified after .double(): one ExampleInputError naming the model's error and the way
    out, where the model's own RuntimeError came from deep inside the verification."""
    class NoDouble(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(4, 6), nn.Linear(6, 3)

        def forward(self, x):
            if x.dtype == torch.float64:
                raise RuntimeError("Expected mat_a to be Float32, BFloat16 or Float16 matrix, got Double")
            return self.b(torch.relu(self.a(x)))

    torch.manual_seed(0)
    model = NoDouble()
    x, y = torch.randn(8, 4), torch.randint(0, 3, (8,))
    syms = sw.find_symmetries(model, x)
    model = model.double()
    with pytest.raises(sw.symmetry.ExampleInputError, match="verify in float32"):
        sw.verify_symmetries(model, F.cross_entropy, (x.double(), y), syms)


def test_the_hessian_check_runs_through_fused_attention_and_a_skip_never_reads_as_a_pass(monkeypatch):
    """A float32 Hugging Face Llama on its default (sdpa) attention: PyTorch's fused CPU attention has
    no double backward, and the Hessian checks were skipped in silence (0 rows checked, residual
    read as 0.0). They now run on the math attention kernel: rows checked, with the float32
    round-off of a true symmetry. Where the second derivative fails (the error the fused kernel
    raised, injected), ``hessian_error`` says so and the residual is NaN, not 0."""
    from shockwatch.symmetry import verify

    hf = sw.models.huggingface.build("llama")
    model, inputs = hf.model, hf.example_input
    assert getattr(model.config, "_attn_implementation", "sdpa") == "sdpa"
    ids = inputs["input_ids"]

    def lm_loss(out, targets):
        return F.cross_entropy(out.logits.reshape(-1, out.logits.shape[-1]), targets.reshape(-1))

    syms = sw.find_symmetries(model, inputs)
    report = sw.verify_symmetries(model, lm_loss, (inputs, ids), syms, train_mode=False, exact=False)
    assert sum(row.hessian_residual is not None for row in report.rows) >= 16 and report.hessian_error == ""
    assert report.max_hessian_residual() < 1e-2, report.worst(3)

    def no_double_backward(*args, **kwargs):
        raise RuntimeError("derivative for aten::_scaled_dot_product_flash_attention_for_cpu_backward is not implemented")

    monkeypatch.setattr(verify, "_curvature_scale", no_double_backward)
    mlp = sw.models.mlp((5, 7, 3)).double()
    x, y = torch.randn(6, 5, dtype=torch.float64), torch.randint(0, 3, (6,))
    skipped = sw.verify_symmetries(mlp, F.cross_entropy, (x, y), sw.find_symmetries(mlp, x), exact=False)
    assert "no second derivative" in skipped.hessian_error and "not implemented" in skipped.hessian_error
    assert math.isnan(skipped.max_hessian_residual()) and all(row.hessian_residual is None for row in skipped.rows)
    assert skipped.max_loss_change() < 1e-10  # the other checks still ran
