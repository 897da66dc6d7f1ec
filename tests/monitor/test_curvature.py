"""Raw and quotient curvature by Lanczos against dense float64 Hessians and projections."""

import math

import pytest

import torch
import torch.nn.functional as F
from torch.func import functional_call, hessian

import shockwatch as sw
from shockwatch.monitor.curvature import curvature
from shockwatch.symmetry import generator


def test_lanczos_matches_the_dense_hessian_and_its_horizontal_restriction():
    """Truth: the dense Hessian (torch.func.hessian, float64) and the dense projector onto the
    orthogonal complement of the orbit generators (QR); eigenvalues on that subspace to 1e-7."""
    torch.manual_seed(0)
    model = sw.models.mlp((2, 4, 3)).double()
    x = torch.randn(24, 2, dtype=torch.float64)
    y = torch.randint(0, 3, (24,))
    for _ in range(30):  # away from the initial point, not at a minimum
        model.zero_grad()
        F.cross_entropy(model(x), y).backward()
        with torch.no_grad():
            for p in model.parameters():
                p -= 0.5 * p.grad
    syms = sw.find_symmetries(model, x)
    dense, projector, _ = _dense_truth(model, x, y, syms)
    raw = torch.linalg.eigvalsh(dense)
    # an orthonormal basis of the horizontal space: the projector's range (its rank is its trace)
    basis = torch.linalg.svd(projector)[0][:, : round(float(projector.trace()))]
    restricted = torch.linalg.eigvalsh(basis.T @ dense @ basis)
    result = curvature(model, F.cross_entropy, (x, y), syms)
    assert math.isclose(result.raw_max, float(raw[-1]), rel_tol=1e-7)
    assert math.isclose(result.raw_min, float(raw[0]), rel_tol=1e-6, abs_tol=1e-8)
    assert math.isclose(result.quotient_max, float(restricted[-1]), rel_tol=1e-7)
    # the quotient operator also has zeros on the orbit directions: its smallest eigenvalue is
    # min(restricted, 0)
    assert math.isclose(result.quotient_min, min(float(restricted[0]), 0.0), rel_tol=1e-6, abs_tol=1e-8)
    steps = result.shock_steps(0.1)
    assert steps == math.inf if result.quotient_min >= 0 else math.isclose(steps, -1 / (0.1 * result.quotient_min))


def test_a_warm_start_finds_the_dense_eigenvalues_in_fewer_products():
    """Truth: the dense Hessian (float64) at the second of two samples 5 SGD steps apart. Started from
    the first sample's eigenvectors, Lanczos finds the same extremes (raw and quotient, to its tolerance
    1e-6 of the spectrum's width) with fewer Hessian-vector products than a cold start (measured: 84
    against 104)."""
    torch.manual_seed(0)
    model = sw.models.mlp((3, 12, 12, 3)).double()
    x, y = torch.randn(48, 3, dtype=torch.float64), torch.randint(0, 3, (48,))

    def descend(steps):
        for _ in range(steps):
            model.zero_grad()
            F.cross_entropy(model(x), y).backward()
            with torch.no_grad():
                for p in model.parameters():
                    p -= 0.2 * p.grad

    descend(40)
    syms = sw.find_symmetries(model, x)
    first = curvature(model, F.cross_entropy, (x, y), syms, tol=1e-9)
    descend(5)
    cold = curvature(model, F.cross_entropy, (x, y), syms, tol=1e-6)
    warm = curvature(model, F.cross_entropy, (x, y), syms, tol=1e-6, warm=first)
    dense, projector, _ = _dense_truth(model, x, y, syms)
    raw = torch.linalg.eigvalsh(dense)
    basis = torch.linalg.svd(projector)[0][:, : round(float(projector.trace()))]
    restricted = torch.linalg.eigvalsh(basis.T @ dense @ basis)
    width = float(raw[-1] - raw[0])
    for found in (cold, warm):
        assert math.isclose(found.raw_max, float(raw[-1]), abs_tol=1e-6 * width)
        assert math.isclose(found.raw_min, float(raw[0]), abs_tol=1e-6 * width)
        assert math.isclose(found.quotient_max, float(restricted[-1]), abs_tol=1e-6 * width)
        assert math.isclose(found.quotient_min, min(float(restricted[0]), 0.0), abs_tol=1e-6 * width)
    assert warm.matvecs < cold.matvecs, (warm.matvecs, cold.matvecs)


def test_dense_vertical_basis_and_cg_projection_agree_with_gl_heads():
    """Truth: the matrix-free CG projection (tested on its own in tests/quotient) in place of the dense
    orthonormal basis of the generators, on a GPT whose heads carry GL(d_head) symmetries."""
    torch.manual_seed(0)
    model = sw.models.GPT(sw.models.GPTConfig(n_layer=1, n_head=2, d_model=8, vocab_size=11, block_size=6)).double()
    tokens = torch.randint(0, 11, (4, 6))
    syms = sw.find_symmetries(model, tokens)
    assert syms.counts()["gl"] > 0

    def loss_fn(logits, targets):
        return F.cross_entropy(logits.reshape(-1, 11), targets.reshape(-1))

    batch = (tokens[:, :-1], tokens[:, 1:])
    dense = curvature(model, loss_fn, batch, syms, tol=1e-9)
    matrix_free = curvature(model, loss_fn, batch, syms, tol=1e-9, max_dense_entries=0)
    for name in ("quotient_max", "quotient_min", "raw_max", "raw_min"):
        assert math.isclose(getattr(dense, name), getattr(matrix_free, name), rel_tol=1e-7, abs_tol=1e-9), name
    assert dense.quotient_min >= dense.raw_min - 1e-9  # Cauchy interlacing: a compression's minimum (or 0)


def _dense_truth(model, x, y, syms):
    """The dense float64 Hessian, the orbit projector and the parameter names (for the tests below)."""
    names = [n for n, _ in model.named_parameters()]
    params = {n: p.detach() for n, p in model.named_parameters()}
    flat = torch.cat([params[n].reshape(-1) for n in names])
    sizes = [params[n].numel() for n in names]

    def loss_flat(vector):
        pieces = dict(zip(names, [piece.reshape(params[n].shape) for piece, n in zip(vector.split(sizes), names)]))
        return F.cross_entropy(functional_call(model, pieces, (x,)), y)

    columns = []
    for sym in syms:
        if sym.kind.one_parameter:
            g = generator(sym, params)
            columns.append(torch.cat([g.get(n, torch.zeros_like(params[n])).reshape(-1) for n in names]))
    q, r = torch.linalg.qr(torch.stack(columns, dim=1))
    q = q[:, r.diagonal().abs() > 1e-10]
    return hessian(loss_flat)(flat), torch.eye(len(flat), dtype=torch.float64) - q @ q.T, names


def test_adam_preconditioner_is_the_step_torch_takes_and_the_preconditioned_spectrum_is_dense_truth():
    """Truths: torch's own AdamW step (theta' - theta = -eta lambda theta - eta m_hat D, with D from
    ``adam_preconditioner`` after that step, to 1e-12), and the dense spectra of S H S and S P H P S
    (S = D^{1/2}; P the dense orbit projector) against the Lanczos ones; the forecast uses them."""
    from shockwatch.monitor import adam_preconditioner

    torch.manual_seed(0)
    model = sw.models.mlp((2, 4, 3)).double()
    x = torch.randn(24, 2, dtype=torch.float64)
    y = torch.randint(0, 3, (24,))
    lr, decay = 0.01, 0.1
    opt = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.98), weight_decay=decay)
    assert adam_preconditioner(opt, model) is None  # no state before the first step
    for _ in range(20):
        before = {n: p.detach().clone() for n, p in model.named_parameters()}
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
    diagonal = adam_preconditioner(opt, model)
    for name, p in model.named_parameters():
        state = opt.state[p]
        first = state["exp_avg"] / (1 - 0.9 ** float(state["step"]))
        expected = before[name] * (1 - lr * decay) - lr * first * diagonal[name]
        assert torch.allclose(p.detach(), expected, rtol=0, atol=1e-12)
    syms = sw.find_symmetries(model, x)
    dense, projector, names = _dense_truth(model, x, y, syms)
    scale = torch.cat([diagonal[n].reshape(-1) for n in names]).sqrt()
    assert float(scale.max() / scale.min()) > 3  # a preconditioner that is not a multiple of the identity
    raw = torch.linalg.eigvalsh(scale[:, None] * dense * scale[None, :])
    quotient = torch.linalg.eigvalsh(scale[:, None] * (projector @ dense @ projector) * scale[None, :])
    result = curvature(model, F.cross_entropy, (x, y), syms, preconditioner=diagonal)
    scaled = result.preconditioned
    assert math.isclose(scaled.raw_max, float(raw[-1]), rel_tol=1e-7)
    assert math.isclose(scaled.raw_min, float(raw[0]), rel_tol=1e-6, abs_tol=1e-8 * float(raw[-1]))
    assert math.isclose(scaled.quotient_max, float(quotient[-1]), rel_tol=1e-7)
    assert math.isclose(scaled.quotient_min, float(quotient[0]), rel_tol=1e-6, abs_tol=1e-8 * float(quotient[-1]))
    # the unpreconditioned extremes are unchanged by asking for the preconditioned ones
    plain = curvature(model, F.cross_entropy, (x, y), syms)
    assert (plain.raw_max, plain.quotient_min) == (result.raw_max, result.quotient_min) and plain.preconditioned is None
    if scaled.quotient_min < 0:
        assert math.isclose(result.shock_steps(lr), -1 / (lr * scaled.quotient_min))
    assert scaled.raw_max > 10 * result.raw_max  # Adam's D ~ 1/sqrt(v) >> 1 here: the forecast's scale changes
    bad = {**diagonal, names[0]: -diagonal[names[0]]}
    with pytest.raises(ValueError, match="finite and positive"):
        curvature(model, F.cross_entropy, (x, y), syms, preconditioner=bad)
    with pytest.raises(ValueError, match="no diagonal for"):
        curvature(model, F.cross_entropy, (x, y), syms, preconditioner={names[0]: diagonal[names[0]]})
    assert adam_preconditioner(torch.optim.SGD(model.parameters(), lr=0.1), model) is None


def test_curvature_along_the_update_is_the_dense_rayleigh_quotient_raw_and_horizontal():
    """Truth: u^T H u / u^T D^-1 u with the dense float64 Hessian, for u the last AdamW update (with
    weight decay: a vertical part) and u_H = P u with the dense orbit projector; along an orbit
    direction alone the horizontal part is zero (NaN), the raw one is not."""
    from shockwatch.monitor import adam_preconditioner
    from shockwatch.monitor.curvature import update_curvature

    torch.manual_seed(1)
    model = sw.models.mlp((3, 5, 3)).double()
    x = torch.randn(32, 3, dtype=torch.float64)
    y = torch.randint(0, 3, (32,))
    opt = torch.optim.AdamW(model.parameters(), lr=0.05, weight_decay=0.1)
    for _ in range(15):
        before = [p.detach().clone() for p in model.parameters()]
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
    names = [n for n, _ in model.named_parameters()]
    update = {n: p.detach() - b for (n, p), b in zip(model.named_parameters(), before)}
    syms = sw.find_symmetries(model, x)
    dense, projector, _ = _dense_truth(model, x, y, syms)
    u = torch.cat([update[n].reshape(-1) for n in names])
    d = adam_preconditioner(opt, model)
    inverse = 1 / torch.cat([d[n].reshape(-1) for n in names])
    u_h = projector @ u
    found = update_curvature(model, F.cross_entropy, (x, y), update, syms, preconditioner=d)
    assert math.isclose(found.raw, float(u @ dense @ u / (u @ (inverse * u))), rel_tol=1e-9)
    assert math.isclose(found.quotient, float(u_h @ dense @ u_h / (u_h @ (inverse * u_h))), rel_tol=1e-6)
    assert found.preconditioned and abs(found.quotient - found.raw) > 1e-3 * abs(found.raw)
    plain = update_curvature(model, F.cross_entropy, (x, y), update, syms)
    assert math.isclose(plain.raw, float(u @ dense @ u / (u @ u)), rel_tol=1e-9)
    params = {n: p.detach() for n, p in model.named_parameters()}
    along = generator(next(s for s in syms if s.kind == "rescale"), params)
    orbit = update_curvature(model, F.cross_entropy, (x, y), {n: along.get(n, torch.zeros_like(p)) for n, p in params.items()},
                             syms)
    assert math.isnan(orbit.quotient) and math.isfinite(orbit.raw)


def test_float32_products_agree_with_float64_to_single_precision():
    """Truth: the float64 product. The float32 copy's H v agrees to single precision (1e-5 relative),
    and the caller's model keeps its dtype and values."""
    import numpy as np

    from shockwatch.monitor.curvature import HessianVectorProducts

    torch.manual_seed(0)
    model = sw.models.mlp((5, 16, 4))
    before = [p.detach().clone() for p in model.parameters()]
    batch = (torch.randn(32, 5), torch.randint(0, 4, (32,)))
    exact = HessianVectorProducts(model, F.cross_entropy, batch)
    single = HessianVectorProducts(model, F.cross_entropy, batch, dtype=torch.float32)
    vector = np.random.default_rng(1).standard_normal(exact.dimension)
    want, got = exact.hvp(vector), single.hvp(vector)
    assert got.dtype == np.float64 and np.linalg.norm(got - want) <= 1e-5 * np.linalg.norm(want)
    assert all(p.dtype == torch.float32 and torch.equal(p, b) for p, b in zip(model.parameters(), before))
    with pytest.raises(ValueError, match="floating dtype"):
        HessianVectorProducts(model, F.cross_entropy, batch, dtype=torch.int64)
