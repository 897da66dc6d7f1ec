"""Faults a third sweep over models we had not written found (56 models: Hugging Face architectures
from configs and scratch ones). Truth: group elements applied by hand in float64 with every norm's
eps at 0, the output (log-softmax of the logits) compared before and after."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

import shockwatch as sw
from shockwatch.symmetry import Kind


def moved_by_hand(model, x, scaled: dict[str, slice] | None = None, shifted: dict[str, float] | None = None,
                  factor: float = 1.7) -> float:
    """max |log_softmax(model(x)) moved - before| in float64 after multiplying the given rows (dim 0) by
    ``factor`` and adding the given constants: the relative change of the output."""
    params = {name: p.detach().double().clone() for name, p in model.named_parameters()}
    buffers = {name: b.detach().double().clone() if b.is_floating_point() else b.clone()
               for name, b in model.named_buffers()}
    state = {**params, **buffers}
    before = functional_call(model, state, (x.double(),)).log_softmax(-1)
    moved = dict(state)
    for name, rows in (scaled or {}).items():
        moved[name] = moved[name].clone()
        moved[name][rows] *= factor
    for name, shift in (shifted or {}).items():
        moved[name] = moved[name] + shift
    after = functional_call(model, moved, (x.double(),)).log_softmax(-1)
    return float((after - before).abs().max() / before.abs().max())


def scaled_rows(sym) -> dict[str, slice]:
    assert all(slot.dim == 0 for slot in sym.slots)
    return {slot.param: slice(slot.start, slot.stop) for slot in sym.incoming}


class Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(16, 16)
        self.norm = nn.LayerNorm(16, elementwise_affine=False, eps=0.0)

    def forward(self, x, normalise: bool = True):
        h = self.lin(x)
        return self.norm(h) if normalise else h


class CalledTwice(nn.Module):
    """One block called twice, normalising the second time or not; a branch on a value, so that
    torch.export cannot trace the model whole and the block is analysed alone."""

    def __init__(self, second: bool):
        super().__init__()
        self.block, self.head, self.second = Block(), nn.Linear(16, 5), second

    def forward(self, x):
        h = self.block(x, normalise=True)
        if h.sum() > -1e9:
            h = torch.relu(h)
        return self.head(self.block(h, normalise=self.second))


@pytest.mark.parametrize("second", [False, True])
def test_a_child_is_checked_at_every_call(second):
    """Its first call normalises (a scale of lin's rows is a symmetry there); where the second does
    not, that scale moves the output by hand, and it was accepted (the flag was dropped from the
    recorded call, and only the first call was checked). Where both normalise it holds and is kept."""
    torch.manual_seed(0)
    model = CalledTwice(second).eval()
    x = torch.randn(4, 16)
    found = sw.find_symmetries(model, x)
    assert found.partial == ("<model>",)
    rows = {"block.lin.weight": slice(0, 16), "block.lin.bias": slice(0, 16)}
    change = moved_by_hand(model, x, scaled=rows)
    scales = [sym for sym in found if sym.kind is Kind.SCALE and sym.slots[0].param.startswith("block.")]
    if second:
        assert change < 1e-12 and scales
        for sym in scales:
            assert moved_by_hand(model, x, scaled=scaled_rows(sym)) < 1e-12
    else:
        assert change > 0.05 and not scales


class GatedBatchNorm(nn.Module):
    """F.glu (written out before analysis, which made the graph functional) before a BatchNorm in
    training mode; the second variant gates the same halves by hand."""

    def __init__(self, glu: bool, reshape_as: bool = False):
        super().__init__()
        self.glu, self.reshape_as = glu, reshape_as
        # eps: torch refuses 0 in training mode; the exact check and the hand check are at 1e-300
        self.a, self.norm, self.head = nn.Linear(6, 16), nn.BatchNorm1d(8, eps=1e-300), nn.Linear(8, 5)

    def forward(self, x):  # x (B, T, 6)
        h = self.a(x)
        h = F.glu(h, dim=-1) if self.glu else h[..., :8] * torch.sigmoid(h[..., 8:])
        y = self.norm(h.flatten(0, 1))
        h = y.reshape_as(h) if self.reshape_as else y.reshape(h.shape)
        return self.head(torch.relu(h))


@pytest.mark.parametrize(("glu", "reshape_as"), [(True, False), (False, True), (True, True)])
def test_glu_and_reshape_as_before_a_training_batch_norm(glu, reshape_as):
    """Every symmetry of the hand-gated, reshape-written model, found for the others too. Before:
    with F.glu the functional graph also returned BatchNorm's running statistics, which the exact
    check read as output (every candidate refuted), and its batch norm operation was unknown;
    ``reshape_as`` was an unknown operation (nothing past it found)."""
    torch.manual_seed(0)
    x = torch.randn(4, 5, 6)
    reference = sw.find_symmetries(GatedBatchNorm(False), x)
    model = GatedBatchNorm(glu, reshape_as)
    found = sw.find_symmetries(model, x)
    assert found.counts() == reference.counts()
    assert found.counts()[Kind.SCALE.value] == 8 and found.rejected == ()
    for sym in found.of_kind(Kind.SCALE):
        assert moved_by_hand(model.train(), x, scaled=scaled_rows(sym)) < 1e-12
    assert moved_by_hand(model, x, shifted={"head.bias": 0.7}) < 1e-12
    report = sw.verify_symmetries(model, lambda out, y: F.cross_entropy(out.flatten(0, 1), y.flatten()),
                                  (x, torch.randint(0, 5, (4, 5))), found, hessian_samples=0)
    assert report.refuted() == []


class InPlaceBias(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Linear(6, 8)
        self.w = nn.Parameter(torch.randn(5, 8))
        self.b = nn.Parameter(torch.randn(5))

    def forward(self, x):
        h = torch.relu(self.body(x)) @ self.w.t()
        h += self.b  # as Hugging Face's MobileBERT head adds its bias
        return h


def test_a_bias_added_in_place_to_the_logits_is_a_translation():
    torch.manual_seed(0)
    model, x = InPlaceBias(), torch.randn(4, 6)
    found = sw.find_symmetries(model, x)
    on_b = [sym for sym in found if any(slot.param == "b" for slot in sym.slots)]
    assert [sym.kind for sym in on_b] == [Kind.TRANSLATION]
    assert moved_by_hand(model, x, shifted={"b": 0.7}) < 1e-12
    assert "b" not in dict(found.reasons)


class SoftNorm(nn.Module):
    """x rsqrt(mean x^2 + c) after a linear layer: a norm (its scale a symmetry at eps 0) for a small
    c, a part of the function for c = 1."""

    def __init__(self, constant: float):
        super().__init__()
        self.a, self.head, self.constant = nn.Linear(6, 8), nn.Linear(8, 5), constant

    def forward(self, x):
        h = self.a(x)
        return self.head(h * torch.rsqrt(h.square().mean(-1, keepdim=True) + self.constant))


@pytest.mark.parametrize("constant", [1e-6, 1.0])
def test_a_large_constant_under_a_square_root_is_no_norm_epsilon(constant):
    """Any positive constant was zeroed as an epsilon: at c = 1 the scale of a's rows was accepted,
    and moves the output 27-36% by hand. Now only c <= 1e-2 is an epsilon (and the scale holds by
    hand with it at 0). A norm operation's own eps stays an epsilon whatever its size (the model
    declares it one; verification names its size among the breakers)."""
    torch.manual_seed(0)
    x = torch.randn(4, 6)
    found = sw.find_symmetries(SoftNorm(constant), x)
    scales = found.of_kind(Kind.SCALE)
    rows = {"a.weight": slice(0, 8), "a.bias": slice(0, 8)}
    if constant > 1e-2:
        assert scales == () and moved_by_hand(SoftNorm(constant), x, scaled=rows) > 0.01
    else:
        assert [scaled_rows(sym) for sym in scales] == [rows]
        assert moved_by_hand(SoftNorm(0.0), x, scaled=rows) < 1e-12
    norm = nn.Sequential(nn.Linear(6, 8), nn.LayerNorm(8, eps=0.5), nn.Linear(8, 5))
    assert len(sw.find_symmetries(norm, x).of_kind(Kind.SCALE)) == 1


def test_verify_measures_where_the_exact_check_can_resolve_it():
    """LeViT on a batch of 2: at eps 0 a batch norm over 2 samples leaves a later channel constant up
    to round-off, which the next batch norm divides by ~0, so at the model's own parameters the exact
    check amplifies round-off past any tolerance (defects 0.1 to 1e116) and verify refuted the true
    scale symmetries it also measures at a nearby point. Truth: the same symmetries on a batch of 8,
    at the model's own parameters, are round-off."""
    transformers = pytest.importorskip("transformers")
    from shockwatch.symmetry import exact_defects

    torch.manual_seed(0)
    config = transformers.LevitConfig(image_size=64, patch_size=16, stride=2, hidden_sizes=[32, 48, 64],
                                      num_attention_heads=[2, 3, 4], depths=[1, 1, 1], key_dim=[8, 8, 8], num_labels=3)
    model = transformers.LevitForImageClassification(config).eval()
    images = torch.randn(8, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    found = sw.find_symmetries(model, {"pixel_values": images[:2]})
    scales = list(found.of_kind(Kind.SCALE))[:4]
    assert len(scales) == 4
    assert max(exact_defects(model, {"pixel_values": images[:2]}, scales).values()) > 1e-3
    assert max(exact_defects(model, {"pixel_values": images}, scales).values()) < 1e-12
    report = sw.verify_symmetries(model, lambda out, y: F.cross_entropy(out.logits, y),
                                  ({"pixel_values": images[:2]}, torch.tensor([0, 1])), scales, hessian_samples=0)
    assert report.refuted() == []


class TimeBlock(nn.Module):
    """A U-Net block: norm(conv(x) + time_mlp(t)) (GroupNorm of 2 groups, or none)."""

    def __init__(self, norm: bool):
        super().__init__()
        self.conv, self.time = nn.Conv2d(3, 8, 3, padding=1), nn.Linear(4, 8)
        self.norm = nn.GroupNorm(2, 8, eps=0.0) if norm else nn.Identity()
        self.out = nn.Conv2d(8, 2, 1)

    def forward(self, x, t):
        return self.out(torch.relu(self.norm(self.conv(x) + self.time(t)[:, :, None, None])))


@pytest.mark.parametrize("norm", [True, False])
def test_a_norm_fed_by_the_sum_of_two_layers(norm):
    """Both producers' rows of one group scaled together leave the output unchanged by hand (the
    walk from one producer failed at the add of the other's output, so none was proposed); without
    the norm no scale is one, and none is proposed."""
    torch.manual_seed(0)
    model = TimeBlock(norm)
    x, t = torch.randn(2, 3, 6, 6), torch.randn(2, 4)
    found = sw.find_symmetries(model, (x, t), logits=False)
    scales = found.of_kind(Kind.SCALE)
    params = dict(model.named_parameters())

    def moved(rows):
        state = {name: p.detach().double().clone() for name, p in params.items()}
        before = functional_call(model.double(), state, (x.double(), t.double()))
        for name, where in rows.items():
            state[name][where] *= 1.7
        after = functional_call(model, state, (x.double(), t.double()))
        model.float()
        return float((after - before).abs().max() / before.abs().max())

    if not norm:
        assert scales == ()
        return
    expected = [{f"{layer}.{kind}": slice(start, start + 4) for layer in ("conv", "time") for kind in ("weight", "bias")}
                for start in (0, 4)]
    assert sorted((scaled_rows(sym) for sym in scales), key=lambda r: r["conv.weight"].start) == expected
    for rows in expected:
        assert moved(rows) < 1e-12
    assert moved({"conv.weight": slice(0, 4), "conv.bias": slice(0, 4)}) > 1e-3  # one producer alone: none


class SquaredReLU(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(6, 8), nn.Linear(8, 5)

    def forward(self, x):
        return self.b(torch.relu(self.a(x)).square())


def test_squared_relu_units_permute():
    """``square`` was an operation the permutation walk did not know (``** 2`` and ``h * h`` were)."""
    torch.manual_seed(0)
    model, x = SquaredReLU(), torch.randn(4, 6)
    (perm,) = sw.find_symmetries(model, x).of_kind(Kind.PERMUTATION)
    assert {slot.param for slot in perm.slots} == {"a.weight", "a.bias", "b.weight"}
    order = torch.randperm(8, generator=torch.Generator().manual_seed(1))
    state = {name: p.detach().double() for name, p in model.named_parameters()}
    moved = {"a.weight": state["a.weight"][order], "a.bias": state["a.bias"][order], "b.weight": state["b.weight"][:, order],
             "b.bias": state["b.bias"]}
    before = functional_call(model.double(), state, (x.double(),))
    assert float((functional_call(model, moved, (x.double(),)) - before).abs().max()) < 1e-12


def test_a_norm_configured_with_eps_zero_keeps_its_scale():
    """Hugging Face's RMSNorm adds eps to the mean square by hand; at rms_norm_eps=0 the add of 0.0 was
    no epsilon, and the residual stream's scale (exact there, by hand below) was not found."""
    transformers = pytest.importorskip("transformers")
    counts = []
    for eps in (0.0, 1e-6):
        torch.manual_seed(0)
        config = transformers.LlamaConfig(vocab_size=32, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                          num_attention_heads=2, num_key_value_heads=1, rms_norm_eps=eps)
        model = transformers.LlamaForCausalLM(config).double()
        ids = torch.randint(0, 32, (2, 5), generator=torch.Generator().manual_seed(1))
        found = sw.find_symmetries(model, {"input_ids": ids})
        counts.append(found.counts())
        if eps == 0.0:
            (scale,) = found.of_kind(Kind.SCALE)
            state = {name: p.detach() for name, p in model.named_parameters()}
            moved = {**state, **{slot.param: state[slot.param] * 1.7 for slot in scale.incoming}}
            run = lambda p: functional_call(model, p, (), {"input_ids": ids}).logits.log_softmax(-1)  # noqa: E731
            # Hugging Face's RMSNorm computes in float32 whatever the model's dtype: float32 round-off
            assert float((run(moved) - run(state)).abs().max()) < 1e-6
    assert counts[0] == counts[1] and counts[0][Kind.SCALE.value] == 1


class Segmenter(nn.Module):
    """A segmentation head: per-pixel class scores laid out (batch, classes, H, W), as F.cross_entropy reads them."""

    def __init__(self):
        super().__init__()
        self.stem, self.classify = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 5, 1)

    def forward(self, x):
        return self.classify(torch.relu(self.stem(x)))


class ConvLanguageModel(nn.Module):
    """Token scores laid out (batch, vocabulary, time) by a 1x1 Conv1d over the embedded sequence."""

    def __init__(self):
        super().__init__()
        self.embed, self.mix, self.vocab = nn.Embedding(11, 6), nn.Conv1d(6, 6, 3, padding=1), nn.Conv1d(6, 11, 1)

    def forward(self, tokens):
        return self.vocab(torch.tanh(self.mix(self.embed(tokens).transpose(1, 2))))


def _change_over(model, x, name, shift, axis):
    """Relative change of log_softmax(model(x), axis) in float64 when ``shift`` is added to parameter ``name``."""
    state = {n: p.detach().double().clone() for n, p in model.named_parameters()}
    before = functional_call(model, state, (x,)).log_softmax(axis)
    moved = {**state, name: state[name] + shift}
    return float((functional_call(model, moved, (x,)).log_softmax(axis) - before).abs().max() / before.abs().max())


@pytest.mark.parametrize("make, x, head", [
    (Segmenter, torch.randn(2, 3, 6, 6, dtype=torch.float64), "classify"),
    (ConvLanguageModel, torch.randint(0, 11, (2, 7)), "vocab"),
])
def test_channel_first_logits_are_translated_along_their_class_axis(make, x, head):
    torch.manual_seed(0)
    model = make().double()
    syms = sw.find_symmetries(model, x, class_dim=1)
    assert syms.class_dim == 1
    translations = syms.of_kind(Kind.TRANSLATION)
    in_channels = getattr(model, head).in_channels
    # the head's bias and each of its input columns: b + c 1 shifts every class score of a pixel by c
    assert {s.label for s in translations} == {f"translation/{head}/bias"} | {f"translation/{head}/column{j}"
                                                                             for j in range(in_channels)}
    assert _change_over(model, x, f"{head}.bias", 0.7, 1) < 1e-14           # by hand, over the class axis
    column = torch.zeros_like(getattr(model, head).weight)
    column[:, 2] = 0.9
    assert _change_over(model, x, f"{head}.weight", column, 1) < 1e-14
    assert _change_over(model, x, f"{head}.weight", column, -1) > 1e-3      # the last axis is not the classes
    # so the default (classes last) claims none, and verify measures the found set over its own axis
    assert not sw.find_symmetries(model, x).of_kind(Kind.TRANSLATION)
    loss_target = torch.zeros(sw.symmetry.trace.model_output(model(x)).shape, dtype=torch.long)[:, 0]
    report = sw.verify_symmetries(model, F.cross_entropy, (x, loss_target), syms)
    assert not report.refuted() and not report.exact_error and all(map(report.accepted, report.exact))


def test_class_dim_errors_are_one_line():
    model = Segmenter()
    x = torch.randn(1, 3, 4, 4)
    with pytest.raises(ValueError, match="class_dim 4 is not an axis of the model's output of shape"):
        sw.find_symmetries(model, x, class_dim=4)
    with pytest.raises(TypeError, match="class_dim must be an int"):
        sw.find_symmetries(model, x, class_dim=True)


def test_two_wrong_moves_that_undo_each_other_are_each_refuted():
    """LiLT adds its text and layout attention scores head by head: permuting one stream's heads alone
    re-pairs them, yet both moved by the same element are exact, and a joint check that moved every
    permutation of a kind by the same generator accepted three such one-stream permutations (2e-7 to
    1e-4 by hand). Truth: each accepted permutation applied by hand in float64, at the model's point and
    at one with query and key weights x10 (a symmetry holds at every point)."""
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    config = transformers.LiltConfig(vocab_size=96, max_position_embeddings=64, hidden_size=48, intermediate_size=96,
                                     num_hidden_layers=2, num_attention_heads=4, pad_token_id=0, channel_shrink_ratio=4,
                                     num_labels=3, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    model = transformers.LiltForSequenceClassification(config).eval()
    generator = torch.Generator().manual_seed(1)
    ids = torch.randint(3, 96, (2, 10), generator=generator)
    box = torch.sort(torch.randint(0, 1000, (2, 10, 2, 2), generator=generator), dim=2)[0].reshape(2, 10, 4)
    inputs = {"input_ids": ids, "bbox": box}
    syms = sw.find_symmetries(model, inputs)
    double = model.double()
    for module in double.modules():
        if isinstance(getattr(module, "eps", None), float):
            module.eps = 0.0
    params = {n: p.detach() for n, p in double.named_parameters()}
    larger = {n: p * 10 if n.endswith(("query.weight", "key.weight")) else p for n, p in params.items()}
    for point in (params, larger):
        before = functional_call(double, point, kwargs=inputs).logits.log_softmax(-1)
        for sym in syms.of_kind(Kind.PERMUTATION):
            for order in sw.symmetry.permutation_generators(sym.unit_count):
                after = functional_call(double, sw.symmetry.permute(sym, point, order), kwargs=inputs).logits.log_softmax(-1)
                assert float((after - before).abs().max() / before.abs().max()) < 1e-10, sym.label
    assert sum(label.endswith("query/heads") for label in syms.rejected) == 4  # one per stream and layer


class DroppedInPlace(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv, self.bn = nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8)
        self.drop, self.head = nn.Dropout(0.5, inplace=True), nn.Linear(8, 5)

    def forward(self, x):
        return self.head(self.drop(torch.relu(self.bn(self.conv(x))).mean((2, 3))))


def test_in_place_dropout_is_off_in_the_exact_check():
    """A batch norm makes the trace run in training mode, where nn.Dropout(inplace=True) is aten.dropout_;
    only the out-of-place form was removed, the check's forward was random and every candidate refuted
    (Hugging Face MobileNetV2: 0 accepted, 6700 refuted). Truth by hand: 8 per-channel scales of the batch
    norm's input, the head's 8 columns and bias, each exact."""
    torch.manual_seed(0)
    model = DroppedInPlace()
    x = torch.randn(4, 3, 8, 8)
    syms = sw.find_symmetries(model, x)
    assert not syms.rejected
    assert syms.counts()["scale"] == 8 and syms.counts()["translation"] == 9
    model.drop.p, model.bn.eps = 0.0, 1e-300  # by hand: dropout off, the norm's eps ~0, batch statistics
    assert moved_by_hand(model, x, shifted={"head.bias": 0.7}) < 1e-14
    assert moved_by_hand(model, x, scaled={"conv.weight": slice(0, 1)}) < 1e-12


class ShuffledPatches(nn.Module):
    """Draws a random order of its tokens in the forward pass and keeps half (ViTMAE's patch masking)."""

    def __init__(self):
        super().__init__()
        self.embed, self.hidden, self.head = nn.Linear(4, 8), nn.Linear(8, 8), nn.Linear(8, 3)

    def forward(self, x):
        order = torch.rand(x.shape[:2]).argsort(1)[:, : x.shape[1] // 2]
        kept = x.gather(1, order.unsqueeze(-1).expand(-1, -1, x.shape[-1]))
        return self.head(torch.relu(self.hidden(torch.relu(self.embed(kept)))).mean(1))


def test_random_draws_in_the_forward_are_the_same_at_every_exact_evaluation():
    """The exact check compared outputs drawn with different random orders: every candidate refuted
    (ViTMAE: 0 accepted, 404 refuted). Truth by hand, the same seed before both forward passes: each
    unit's rescale (16), the head's translations (8 columns and the bias) exact."""
    torch.manual_seed(0)
    model = ShuffledPatches().double()
    x = torch.randn(2, 6, 4, dtype=torch.float64)
    before = torch.get_rng_state()
    syms = sw.find_symmetries(model, x)
    assert torch.equal(torch.get_rng_state(), before)
    assert not syms.rejected and syms.counts()["rescale"] == 16 and syms.counts()["translation"] == 9
    params = {n: p.detach() for n, p in model.named_parameters()}
    torch.manual_seed(3)
    reference = functional_call(model, params, (x,)).log_softmax(-1)
    for sym in syms.of_kind(Kind.RESCALE)[:3]:
        torch.manual_seed(3)
        moved = functional_call(model, sw.symmetry.act(sym, params, 0.6), (x,)).log_softmax(-1)
        assert float((moved - reference).abs().max()) < 1e-14


class RoutedByValue(nn.Module):
    """Rows routed to an adapter by a boolean mask: a size that depends on the data (X-MOD's languages)."""

    def __init__(self):
        super().__init__()
        self.inp, self.adapter, self.head = nn.Linear(6, 8), nn.Linear(8, 8), nn.Linear(8, 4)

    def forward(self, x, lang):
        h = torch.relu(self.inp(x))
        out = torch.zeros_like(h)
        out[lang == 1] = self.adapter(h[lang == 1])
        return self.head(h + out)


def test_a_size_that_depends_on_the_data_is_a_reason_not_a_crash():
    """X-MOD's h[lang == i] raised inside the analysis. Now the model is analysed child by child, and the
    head, whose output is the model's, keeps its 8 column and bias translations (analysed alone it had
    none): a shift common to the logits, by hand in float64."""
    torch.manual_seed(0)
    model = RoutedByValue().double()
    inputs = (torch.randn(4, 6, dtype=torch.float64), torch.tensor([0, 1, 0, 1]))
    syms = sw.find_symmetries(model, inputs)
    assert "<model>" in syms.partial
    assert "a size that depends on the data" in dict(syms.reasons)["inp.weight"]
    assert {s.label for s in syms.of_kind(Kind.TRANSLATION)} == {"translation/head/bias"} | {
        f"translation/head/column{j}" for j in range(8)}
    params = {n: p.detach() for n, p in model.named_parameters()}
    before = functional_call(model, params, inputs).log_softmax(-1)
    column = torch.zeros_like(params["head.weight"])
    column[:, 3] = 0.8
    after = functional_call(model, {**params, "head.weight": params["head.weight"] + column}, inputs).log_softmax(-1)
    assert float((after - before).abs().max() / before.abs().max()) < 1e-14


class Checkpointed(nn.Module):
    """A residual MLP block under torch.utils.checkpoint(use_reentrant=True), which runs it under no_grad."""

    def __init__(self, reentrant):
        super().__init__()
        self.inp, self.up, self.down, self.head = nn.Linear(8, 16), nn.Linear(16, 32), nn.Linear(32, 16), nn.Linear(16, 4)
        self.reentrant = reentrant

    def forward(self, x):
        h = self.inp(x)
        block = lambda t: self.down(torch.relu(self.up(t)))  # noqa: E731
        if self.reentrant is None:
            return self.head(h + block(h))
        return self.head(h + torch.utils.checkpoint.checkpoint(block, h, use_reentrant=self.reentrant))


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_a_reentrant_activation_checkpoint_hides_nothing():
    """The reentrant checkpoint's no_grad region was one opaque higher-order op to torch.export: no
    symmetry at all, the head's translations included. Truth: the plain block's symmetries (the 32 hidden
    units' rescales and the 16 residual-stream features', the head's 16 columns and bias), and by hand in
    float64 the head's shift and every rescale (a factor e^0.6 on each unit's incoming weights)."""
    x = torch.randn(6, 8)
    found = {}
    for reentrant in (None, True, False):
        torch.manual_seed(0)
        found[reentrant] = sw.find_symmetries(Checkpointed(reentrant), x)
    assert [s.label for s in found[True]] == [s.label for s in found[None]] == [s.label for s in found[False]]
    assert found[True].counts()["rescale"] == 48 and found[True].counts()["translation"] == 17
    torch.manual_seed(0)
    model = Checkpointed(True).double()
    assert moved_by_hand(model, x.double(), shifted={"head.bias": 0.7}) < 1e-14
    params = {n: p.detach() for n, p in model.named_parameters()}
    before = functional_call(model, params, (x.double(),))
    for sym in found[True].of_kind(Kind.RESCALE):
        after = functional_call(model, sw.symmetry.act(sym, params, 0.6), (x.double(),))
        assert float((after - before).abs().max() / before.abs().max()) < 1e-13, sym.label


class InvertedResidual(nn.Module):
    """MobileNetV2's block: expand (1x1), depthwise 3x3, project (1x1), batch norms and ReLU6."""

    def __init__(self):
        super().__init__()
        self.expand, self.expand_bn = nn.Conv2d(4, 12, 1, bias=False), nn.BatchNorm2d(12)
        self.depthwise, self.depthwise_bn = nn.Conv2d(12, 12, 3, padding=1, groups=12, bias=False), nn.BatchNorm2d(12)
        self.project, self.project_bn = nn.Conv2d(12, 4, 1, bias=False), nn.BatchNorm2d(4)
        self.head = nn.Linear(4, 3)

    def forward(self, x):
        h = F.relu6(self.expand_bn(self.expand(x)))
        h = F.relu6(self.depthwise_bn(self.depthwise(h)))
        return self.head((x + self.project_bn(self.project(h))).mean((2, 3)))


def test_channels_permute_through_a_depthwise_convolution():
    """A depthwise convolution gives each channel its own filter: permuting the expanded channels
    permutes the filters along (MobileNet, EfficientNet, ConvNeXt; none was proposed). Truth: the
    permutation applied by hand in float64, every tensor along the 12 channels moved with one order."""
    torch.manual_seed(0)
    model = InvertedResidual()
    x = torch.randn(4, 4, 6, 6)
    syms = sw.find_symmetries(model, x)
    found = [s for s in syms.of_kind(Kind.PERMUTATION) if any(slot.param == "depthwise.weight" for slot in s.slots)]
    assert len(found) == 1 and not syms.rejected
    touched = {slot.param for slot in found[0].slots}
    assert touched == {"expand.weight", "expand_bn.weight", "expand_bn.bias", "depthwise.weight",
                       "depthwise_bn.weight", "depthwise_bn.bias", "project.weight"}
    double = model.double()
    for module in double.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.eps = 1e-300
    params = {n: p.detach() for n, p in double.named_parameters()}
    order = torch.randperm(12, generator=torch.Generator().manual_seed(3))
    moved = {n: (p[:, order] if n == "project.weight" else p[order]) if n in touched else p for n, p in params.items()}
    before = functional_call(double, params, (x.double(),)).log_softmax(-1)
    after = functional_call(double, moved, (x.double(),)).log_softmax(-1)
    assert float((after - before).abs().max() / before.abs().max()) < 1e-13


class TokenMixer(nn.Module):
    """Features into a linear map along the tokens (an MLP-Mixer's token mixing), with or without its bias."""

    def __init__(self, bias):
        super().__init__()
        self.features, self.tokens, self.head = nn.Linear(4, 8), nn.Linear(6, 6, bias=bias), nn.Linear(8, 3)

    def forward(self, x):  # x: (batch, 6 tokens, 4)
        h = torch.relu(self.features(x))
        return self.head(self.tokens(h.transpose(1, 2)).transpose(1, 2).mean(1))


@pytest.mark.parametrize("bias", [False, True])
def test_units_pass_a_linear_map_along_another_axis(bias):
    """A map along the tokens acts on every feature's slice alike: the features' units permute through it,
    and rescale through it where it adds no bias (a bias b: a (W h) + b is not a (W h + b)). Truth: a
    unit's rescale by hand in float64 (exact without the bias, 1e-2 with it)."""
    torch.manual_seed(0)
    model = TokenMixer(bias).double()
    x = torch.randn(2, 6, 4, dtype=torch.float64)
    syms = sw.find_symmetries(model, x)
    assert syms.counts()["rescale"] == (0 if bias else 8) and not syms.rejected
    assert any(slot.param == "features.weight" for s in syms.of_kind(Kind.PERMUTATION) for slot in s.slots)
    params = {n: p.detach() for n, p in model.named_parameters()}
    moved = dict(params)
    moved["features.weight"], moved["features.bias"] = params["features.weight"].clone(), params["features.bias"].clone()
    moved["head.weight"] = params["head.weight"].clone()
    moved["features.weight"][2] *= 2.0
    moved["features.bias"][2] *= 2.0
    moved["head.weight"][:, 2] /= 2.0
    before = functional_call(model, params, (x,))
    change = float((functional_call(model, moved, (x,)) - before).abs().max() / before.abs().max())
    assert (change > 1e-3) if bias else (change < 1e-14)


class Difference(nn.Module):
    def __init__(self):
        super().__init__()
        self.plus, self.minus = nn.Linear(4, 3), nn.Linear(4, 3)

    def forward(self, x):
        return self.plus(x) - self.minus(x)


def test_wrong_moves_by_an_amount_that_cancel_are_each_measured():
    """z = P x - Q x: adding c to P's bias and to Q's bias on two of three classes each shifts part of
    the logits (wrong alone), yet both by the same amount cancel. The joint check moved every member of
    a kind by one amount, read round-off, and measured only a sample alone: Q's was never measured.
    Each member now moves by its own amount, so the joint change shows, and every member is measured."""
    torch.manual_seed(0)
    model = Difference().double()
    x = torch.randn(5, 4, dtype=torch.float64)
    wrong = [sw.Symmetry(Kind.TRANSLATION, f"translation/wrong/{name}", (sw.symmetry.Slot(f"{name}.bias", 0, 0, 2),))
             for name in ("plus", "minus")]
    defects = sw.symmetry.exact_defects(model, x, wrong, samples=1)
    assert defects["joint/translation"] > 1e-3
    assert defects["translation/wrong/plus"] > 1e-2 and defects["translation/wrong/minus"] > 1e-2
