"""The C kernel of ``SymmetrySet.fused_sums`` (``symmetry/_fused.c``) against float64 references."""

import math

import pytest
import torch

import shockwatch as sw
from shockwatch.symmetry import _native

needs_compiler = pytest.mark.skipif(_native.library() is None, reason=f"no fused kernel: {_native.reason()}")


def _model(name: str):
    torch.manual_seed(11)
    if name == "vgg-bn":
        model = sw.models.vgg("tiny", width_divisor=4, batch_norm=True, image_size=8, hidden=16)
        example = torch.randn(2, 3, 8, 8)
    else:
        model = sw.models.mlp((5, 7, 6, 3))
        example = torch.randn(4, 5)
    return model, example


@pytest.fixture(params=[1, 3], ids=["1-thread", "3-threads"])
def threads(request):
    """torch's intra-op thread count, which the kernel shares its tensors among (OpenMP builds)."""
    before = torch.get_num_threads()
    torch.set_num_threads(request.param)
    yield request.param
    torch.set_num_threads(before)


def _inputs(model, dtype):
    return [{name: torch.randn_like(p, dtype=dtype) for name, p in model.named_parameters()} for _ in range(3)]


@needs_compiler
@pytest.mark.parametrize("model_name", ["vgg-bn", "mlp"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_native_pass_is_the_float64_sum_of_its_inputs(model_name, dtype, threads):
    """Truth: the eager kernel on the same numbers cast to float64. The C kernel multiplies and adds
    in double, so for float32 inputs it is exact to double round-off (1e-12), where the eager
    float32 kernel is off by float32 round-off (its products and sums are float32). On one thread
    and with the tensors shared among three."""
    assert _native.threads() == (threads if _native.library().sw_openmp() else 1)
    model, example = _model(model_name)
    syms = sw.find_symmetries(model.to(dtype), example.to(dtype))
    x, y, z = _inputs(model, dtype)
    pairs = [(x, y), (y, y), (z, y)]
    norms = ((list(y.values()), None), (list(x.values()), list(z.values())), ([], None))
    native = syms.fused_sums(pairs, unsigned=True, norms=norms)
    eager = syms.fused_sums(pairs, unsigned=True, norms=norms, native=False)
    wide = [{name: t.double() for name, t in mapping.items()} for mapping in (x, y, z)]
    reference = syms.fused_sums([(wide[0], wide[1]), (wide[1], wide[1]), (wide[2], wide[1])], unsigned=True,
                                norms=((list(wide[1].values()), None), (list(wide[0].values()), list(wide[2].values())),
                                       ([], None)), native=False)
    assert native.signed.dtype == torch.float64 and native.signed.shape == reference.signed.shape
    for field in ("signed", "unsigned", "whole", "norms"):
        got, want = getattr(native, field), getattr(reference, field)
        scale = float(want.abs().max())
        assert float((got - want).abs().max()) <= 1e-12 * scale, field
        low = float((getattr(eager, field) - want).abs().max())
        assert low <= (1e-5 if dtype == torch.float32 else 1e-12) * scale
    assert float(native.norms[2]) == 0.0  # an empty list has norm 0
    # the per-group sums by their definition, slot by slot, for one group of each kind present
    for kind_offset, kind in ((0, "scale"), (len(syms.of_kind("scale")), "rescale")):
        if syms.of_kind(kind):
            sym = syms.of_kind(kind)[0]
            inc = sum(float((s.view(wide[0]) * s.view(wide[1])).sum()) for s in sym.incoming)
            out = sum(float((s.view(wide[0]) * s.view(wide[1])).sum()) for s in sym.outgoing)
            assert math.isclose(float(native.signed[0, kind_offset]), inc - out, rel_tol=1e-12, abs_tol=1e-12)


@needs_compiler
def test_tensors_the_kernel_does_not_take_fall_back_to_eager():
    """A non-contiguous gradient, a float16 model and mixed dtypes go the eager way, with the same result."""
    model, example = _model("vgg-bn")
    syms = sw.find_symmetries(model.double(), example.double())
    x, y, _ = _inputs(model, torch.float64)
    name = next(n for n, t in y.items() if t.ndim == 4)
    strided = dict(y, **{name: y[name].transpose(0, 1).contiguous().transpose(0, 1)})  # same values, other strides
    assert not strided[name].is_contiguous()
    expected = syms.fused_sums([(x, y)], native=False).signed
    assert torch.allclose(syms.fused_sums([(x, strided)]).signed, expected, rtol=1e-12, atol=1e-12)
    mixed = dict(x, **{name: x[name].float()})
    assert torch.allclose(syms.fused_sums([(mixed, y)]).signed, syms.fused_sums([(mixed, y)], native=False).signed)
    # the same dict, called before and then given another tensor (the kernel remembers the mappings it
    # checked): the new tensor is checked, not trusted
    held = dict(x)
    for swapped in (x[name].float(), x[name].transpose(0, 1).contiguous().transpose(0, 1)):
        held[name] = x[name]
        assert torch.equal(syms.fused_sums([(held, y)]).signed, syms.fused_sums([(x, y)]).signed)
        held[name] = swapped
        assert torch.equal(syms.fused_sums([(held, y)]).signed, syms.fused_sums([(held, y)], native=False).signed)
    half = {n: t.half() for n, t in x.items()}
    assert torch.allclose(syms.fused_sums([(half, half)]).signed.float(),
                          syms.fused_sums([(half, half)], native=False).signed.float())


def test_a_failed_build_is_reported_not_raised(tmp_path):
    """Where the C compiler cannot build, the reason comes back as text (callers then run eagerly)."""
    why = _native._build(b"this is not C", tmp_path / "kernel.so", "cc")
    assert why is not None and "could not build" in why
    assert not (tmp_path / "kernel.so").exists() and list(tmp_path.iterdir()) == []
    missing = _native._build(_native._SOURCE.read_bytes(), tmp_path / "kernel.so", str(tmp_path / "no-such-cc"))
    assert missing is not None and "FileNotFoundError" in missing
    (tmp_path / "a-file").write_text("")
    unwritable = _native._build(_native._SOURCE.read_bytes(), tmp_path / "a-file" / "kernel.so", "cc")
    assert unwritable is not None and "cannot write the kernel cache" in unwritable


@pytest.mark.parametrize("model_name", ["vgg-bn", "mlp", "gpt"])
def test_host_charges_are_the_torch_charges(model_name):
    """Truth: ``SymmetrySet.charges`` (torch) on the same parameters, every one-parameter kind, and
    the translation sizes sum |theta_A| against charges of a copy of |theta|."""
    if model_name == "gpt":
        torch.manual_seed(2)
        model = sw.models.GPT(sw.models.GPTConfig(vocab_size=17, block_size=8, n_layer=1, n_head=2, d_model=8))
        example = torch.randint(0, 17, (2, 8))
    else:
        model, example = _model(model_name)
    model = model.double()
    syms = sw.find_symmetries(model, example if model_name == "gpt" else example.double())
    params = {name: p.detach() for name, p in model.named_parameters()}
    arrays = {name: p.numpy() for name, p in params.items()}
    checked = 0
    for kind in ("translation", "scale", "rescale"):
        if not syms.of_kind(kind):
            continue
        checked += 1
        want = syms.charges(kind, params).numpy()
        assert abs(syms.host_charges(kind, arrays) - want).max() <= 1e-13 * max(abs(want).max(), 1.0)
    assert checked >= (1 if model_name == "gpt" else 2)
    if syms.of_kind("translation"):
        want = syms.charges("translation", {n: t.abs() for n, t in params.items()}).numpy()
        assert abs(syms.host_charges("translation", arrays, absolute=True) - want).max() <= 1e-13 * max(abs(want).max(), 1.0)


@pytest.mark.parametrize("native", [True, False])
def test_the_pass_copies_and_measures_the_move_of_its_first_x(native, threads):
    """Truth: the copy equals its source bit for bit; |x - m| against a float64 sum over the grouped
    parameters; both from the C kernel and from the eager path."""
    if native and _native.library() is None:
        pytest.skip(f"no fused kernel: {_native.reason()}")
    model, example = _model("vgg-bn")
    syms = sw.find_symmetries(model, example)
    x, y, m = _inputs(model, torch.float32)
    into = {name: torch.full_like(t, float("nan")) for name, t in x.items()}
    fused = syms.fused_sums([(x, y)], copy_into=into, moved_from=m, native=native)
    assert all(torch.equal(into[name], x[name]) for name in syms.quadratic_params)
    want = math.sqrt(sum(float((x[n].double() - m[n].double()).square().sum()) for n in syms.quadratic_params))
    assert math.isclose(float(fused.moved), want, rel_tol=1e-12 if native else 1e-6)
    # moved_from may be the very buffer copied into: the move is taken against its old values
    fused = syms.fused_sums([(y, y)], copy_into=into, moved_from=into, native=native)
    want = math.sqrt(sum(float((y[n].double() - x[n].double()).square().sum()) for n in syms.quadratic_params))
    assert math.isclose(float(fused.moved), want, rel_tol=1e-12 if native else 1e-6)
    assert all(torch.equal(into[name], y[name]) for name in syms.quadratic_params)
    with pytest.raises(ValueError, match="at least one pair"):
        syms.fused_sums([], moved_from=m)


def test_max_ratios_are_numpys_including_nan_and_the_floor():
    """The monitor's per-kind maxima (one call per quantity, a segment per kind) against a loop over
    the groups: the floor, NaN propagation within its own segment only."""
    import math

    import numpy as np

    from shockwatch.monitor.monitor import _max_ratios

    rng = np.random.default_rng(0)
    a, b = rng.standard_normal(257), rng.standard_normal(257)
    denominator = np.abs(rng.standard_normal(257))
    denominator[3] = 0.0  # the floor 1e-300 applies: a huge but finite ratio

    def truth(first, other, lo, hi, scale):
        return max(abs(first[k] - (0.0 if other is None else other[k])) / max(denominator[k] * scale, 1e-300)
                   for k in range(lo, hi))

    for other, scale in ((b, 1.0), (None, 2.5)):  # one segment: the maximum over every group
        assert _max_ratios(a, other, denominator, np.array([0]), scale) == [truth(a, other, 0, len(a), scale)]
    poisoned = a.copy()
    poisoned[100] = math.nan
    assert math.isnan(_max_ratios(poisoned, b, denominator, np.array([0]))[0])
    assert math.isnan(_max_ratios(a, b, denominator, np.array([0]), math.nan)[0])
    starts = np.array([0, 1, 40, 200])
    bounds = list(starts) + [len(a)]
    for other, first, scale in ((b, a, 1.0), (None, a, 2.5)):
        got = _max_ratios(first, other, denominator, starts, scale)
        assert got == [truth(first, other, lo, hi, scale) for lo, hi in zip(bounds, bounds[1:])]
    got = _max_ratios(poisoned, b, denominator, starts)  # NaN in its own segment (100 is in [40, 200)) only
    assert math.isnan(got[2]) and got[:2] + got[3:] == [truth(poisoned, b, lo, hi, 1.0)
                                                        for lo, hi in ((0, 1), (1, 40), (200, 257))]


@pytest.mark.parametrize("native", [True, False])
def test_host_sums_are_the_tensor_sums_as_numpy(native):
    """``fused_sums(host=True)``: the same values as float64 NumPy arrays, from either kernel."""
    import numpy as np

    if native and _native.library() is None:
        pytest.skip(f"no fused kernel: {_native.reason()}")
    model, example = _model("vgg-bn")
    syms = sw.find_symmetries(model, example)
    x, y, _ = _inputs(model, torch.float32)
    rest = [t for name, t in x.items() if name not in syms.quadratic_params]
    kwargs = {"unsigned": True, "norms": ((rest, None),), "native": native}
    tensors = syms.fused_sums([(x, y), (y, y)], **kwargs)
    arrays = syms.fused_sums([(x, y), (y, y)], host=True, **kwargs)
    for field, (a, b) in zip(tensors._fields, zip(tensors, arrays)):
        assert (a is None) == (b is None), field
        if a is not None:
            assert isinstance(b, np.ndarray) and b.dtype == np.float64
            assert np.array_equal(a.numpy(), b), field


@needs_compiler
def test_the_pass_gives_the_same_bits_on_any_number_of_threads():
    """Truth: the one-thread pass. Shared among 2 or 3 threads (OpenMP builds) every field, the move
    included, is equal to the bit: a run logs the same values whatever torch's thread count."""
    model, example = _model("vgg-bn")
    syms = sw.find_symmetries(model, example)
    x, y, m = _inputs(model, torch.float32)
    before = torch.get_num_threads()
    results = []
    try:
        for threads in (1, 2, 3):
            torch.set_num_threads(threads)
            into = {name: torch.empty_like(t) for name, t in x.items()}
            results.append(syms.fused_sums([(x, y), (y, y), (m, y)], unsigned=True, norms=((list(y.values()), None),),
                                           copy_into=into, moved_from=m, host=True))
    finally:
        torch.set_num_threads(before)
    for other in results[1:]:
        for field, want in zip(results[0]._fields, results[0]):
            got = getattr(other, field)
            assert (want is None and got is None) or (got.tobytes() == want.tobytes()), field


@needs_compiler
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_the_monitors_two_passes_over_convolutions(dtype, threads):
    """The monitor's two calls, which take the kernel's one-loop paths on every tensor, convolutions
    (K > 1) included: before the step three pairs sharing the gradient, (theta, g), (g, g), (b, g),
    with the copy of theta; after it (theta, theta) with the move from that copy. Truth: the eager
    kernel on float64 casts of the same numbers, and the copy bit for bit."""
    model, example = _model("vgg-bn")
    syms = sw.find_symmetries(model.to(dtype), example.to(dtype))
    assert any(model.get_parameter(name).dim() == 4 for name in syms.quadratic_params)  # K = 9 blocks
    theta, g, b = _inputs(model, dtype)
    into = {name: torch.full_like(t, float("nan")) for name, t in theta.items()}
    wide = [{name: t.double() for name, t in mapping.items()} for mapping in (theta, g, b)]
    before = syms.fused_sums([(theta, g), (g, g), (b, g)], unsigned=True, copy_into=into)
    want = syms.fused_sums([(wide[0], wide[1]), (wide[1], wide[1]), (wide[2], wide[1])], unsigned=True, native=False)
    for field in ("signed", "unsigned", "whole"):
        got, truth = getattr(before, field), getattr(want, field)
        assert float((got - truth).abs().max()) <= 1e-12 * float(truth.abs().max()), field
    assert all(torch.equal(into[name], theta[name]) for name in syms.quadratic_params)
    after = {name: t + 0.01 * g[name] for name, t in theta.items()}
    wide_after = {name: t.double() for name, t in after.items()}
    moved = syms.fused_sums([(after, after)], unsigned=True, moved_from=into)
    want = syms.fused_sums([(wide_after, wide_after)], unsigned=True, native=False)
    for field in ("signed", "unsigned", "whole"):
        got, truth = getattr(moved, field), getattr(want, field)
        assert float((got - truth).abs().max()) <= 1e-12 * float(truth.abs().max()), field
    step = math.sqrt(sum(float((wide_after[n] - wide[0][n]).square().sum()) for n in syms.quadratic_params))
    assert math.isclose(float(moved.moved), step, rel_tol=1e-12)


@needs_compiler
def test_the_pass_holds_no_tensor_after_it_returns():
    """The kernel's checks keep nothing: gradients are new tensors every step (``zero_grad()`` sets
    them to None), and a pass that held them would keep several steps' gradients alive (it kept up to
    8 before: 8 times the model's gradient memory on the CPU). Truth: a weak reference to each tensor
    handed to the pass is dead once the caller drops it."""
    import gc
    import weakref

    model, example = _model("vgg-bn")
    syms = sw.find_symmetries(model, example)
    params = dict(model.named_parameters())
    refs = []
    for _ in range(3):
        grads = {name: torch.randn_like(p) for name, p in params.items()}
        into = {name: torch.empty_like(p) for name, p in params.items()}
        syms.fused_sums([(params, grads), (grads, grads)], norms=((list(grads.values()), None),), copy_into=into,
                        moved_from=into)
        refs += [weakref.ref(t) for t in (*grads.values(), *into.values())]
        del grads, into
    gc.collect()
    assert not [ref for ref in refs if ref() is not None]
