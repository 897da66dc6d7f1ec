"""Assumption 2.1 measured: spreads against analytic truth (one ReLU unit, a scale group, orthogonal
GL), the loss and Phi unchanged across representatives, the lift consistent with the chart."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import shockwatch as sw
from shockwatch.quotient import OrbitOperator, push_forward
from shockwatch.quotient.projectability import (
    Projectability,
    projectability,
    quotient_moments,
)
from shockwatch.symmetry import Kind, SymmetrySet, act, act_gl
from helpers import exact_norms


def flat(tensors, names):
    return torch.cat([tensors[name].reshape(-1) for name in names])


def gradient(model, loss_fn, params, x, y):
    leaves = {k: v.clone().requires_grad_(True) for k, v in params.items()}
    loss = loss_fn(torch.func.functional_call(model, leaves, (x,)), y)
    return dict(zip(leaves, torch.autograd.grad(loss, list(leaves.values()))))


@pytest.fixture(scope="module")
def mlp_case():
    torch.manual_seed(0)
    model = sw.models.mlp((4, 8, 8, 3)).double()
    g = torch.Generator().manual_seed(1)
    x = torch.randn(48, 4, generator=g, dtype=torch.float64)
    y = (x @ torch.randn(4, 3, generator=g, dtype=torch.float64)).argmax(1)
    return model, F.cross_entropy, (x, y), sw.find_symmetries(model, x[:16])


@pytest.fixture(scope="module")
def unit_case():
    """One ReLU unit f(x) = a relu(w x + v): a single rescale symmetry, (u, a) = ((w, v), a)."""
    torch.manual_seed(2)
    model = nn.Sequential(nn.Linear(1, 1), nn.ReLU(), nn.Linear(1, 1, bias=False)).double()
    with torch.no_grad():
        model[0].weight.fill_(1.3)
        model[0].bias.fill_(0.4)
        model[2].weight.fill_(-0.7)
    g = torch.Generator().manual_seed(3)
    x = torch.randn(40, 1, generator=g, dtype=torch.float64)
    y = (torch.rand(40, generator=g, dtype=torch.float64) < torch.sigmoid(2 * x[:, 0])).double()

    def loss_fn(out, target):
        return F.binary_cross_entropy_with_logits(out.squeeze(-1), target)

    syms = sw.find_symmetries(model, x[:8], logits=False)
    assert syms.counts()["rescale"] == 1 and len(syms.of_kind("translation")) == 0
    return model, loss_fn, (x, y), syms


def test_identity_and_gauge_preserving_elements_give_zero_spread(mlp_case):
    """Truth: b and A are functions of theta; the identity element changes nothing (exactly 0), and
    translations (g_* = 1) and permutations (the chart sorts units) keep them to round-off."""
    model, loss_fn, data, syms = mlp_case
    same = projectability(model, loss_fn, data, syms, elements=[{}], batches=4)
    assert same.drift_spread == (0.0,) and same.covariance_spread[0] < 1e-15 and same.trace_spread == (0.0,)
    moved = projectability(model, loss_fn, data, syms, kinds=["translation"], strength=2.0, representatives=3, batches=4)
    assert moved.max_drift_spread < 1e-12 and moved.max_covariance_spread < 1e-12 and moved.projectable()
    assert set(moved.kinds) == {"translation", "permutation"}
    assert "projectable" in moved.summary()


def test_one_relu_unit_matches_the_analytic_dependence(unit_case):
    """Truth: the closed form of the module docstring. At theta_rho = (rho u*, a*/rho),
    b(rho) = (G_u/rho^2 - kappa u*, rho^2 G_a + kappa a*), kappa = k (rho^-2 - rho^2) / (2 n^2), and
    every minibatch noise vector transforms the same way; (G, M_k) are computed here by autograd
    at the balanced point, independently of the library's chart."""
    model, loss_fn, (x, y), syms = unit_case
    label = syms.of_kind(Kind.RESCALE)[0].label
    batches = [torch.arange(0, 10), torch.arange(10, 25), torch.arange(25, 40), torch.arange(5, 30, 2)]
    logs = (0.5, -1.0, 1.5)
    result = projectability(model, loss_fn, (x, y), syms, elements=[{label: r} for r in logs], batches=batches)
    star = sw.quotient.canonical(syms, {k: v.detach() for k, v in model.named_parameters()}).params
    u_star = torch.cat([star["0.weight"].reshape(-1), star["0.bias"]])
    a_star = star["2.weight"].reshape(-1)
    n2 = float(a_star.square().sum())
    assert math.isclose(float(u_star.square().sum()), n2, rel_tol=1e-12)

    def split(grads):
        return torch.cat([grads["0.weight"].reshape(-1), grads["0.bias"]]), grads["2.weight"].reshape(-1)

    def transformed(g_u, g_a, rho):
        k = float(u_star @ g_u)
        kappa = k * (rho**-2 - rho**2) / (2 * n2)
        return torch.cat([g_u / rho**2 - kappa * u_star, rho**2 * g_a + kappa * a_star])

    full = split(gradient(model, loss_fn, star, x, y))
    assert math.isclose(float(u_star @ full[0]), float(a_star @ full[1]), rel_tol=1e-10)  # the symmetry's identity
    noise = []
    for index in batches:
        g = split(gradient(model, loss_fn, star, x[index], y[index]))
        noise.append((g[0] - full[0], g[1] - full[1]))
    b1 = transformed(*full, 1.0)
    a1 = sum(torch.outer(v, v) for v in (transformed(*m, 1.0) for m in noise)) / len(noise)
    for i, log_rho in enumerate(logs):
        rho = math.exp(log_rho)
        expected = float((transformed(*full, rho) - b1).norm() / b1.norm())
        a_rho = sum(torch.outer(v, v) for v in (transformed(*m, rho) for m in noise)) / len(noise)
        assert math.isclose(result.drift_spread[i], expected, rel_tol=1e-9), (rho, result.drift_spread[i], expected)
        assert math.isclose(result.covariance_spread[i], float((a_rho - a1).norm() / a1.norm()), rel_tol=1e-9)
        assert math.isclose(result.trace_spread[i], abs(float(a_rho.trace() - a1.trace())) / float(a1.trace()),
                            rel_tol=1e-9)
    assert result.element_size == pytest.approx([abs(r) for r in logs])
    assert result.dimension == 2  # (gamma, angle of s): 3 parameters, a 1-D orbit


def test_paper_coordinates_scale_like_rho_squared(unit_case):
    """Truth: b_gamma(rho) / b_gamma(1) = (rho^2 + rho^-2) / 2 and b_s(rho) / b_s(1) = rho^-2, the
    same factors for every minibatch noise vector (so A_gammagamma by the square, A_ss by rho^-4)."""
    model, loss_fn, data, syms = unit_case
    sym = syms.of_kind(Kind.RESCALE)[0]
    params = {k: v.detach() for k, v in model.named_parameters()}
    star = sw.quotient.canonical(syms, params).params
    batches = [torch.arange(0, 20), torch.arange(20, 40)]
    base = quotient_moments(model, loss_fn, data, syms, star, batches)
    u = torch.cat([star["0.weight"].reshape(-1), star["0.bias"]])
    a = star["2.weight"].reshape(-1)
    norm, s = u.norm(), u / u.norm()

    def coordinates(vector):  # vector in (0.weight, 0.bias, 2.weight) order: (d gamma, d s along J s)
        v_u, v_a = vector[:2], vector[2:]
        return float(a[0] * (s @ v_u) + norm * v_a.sum()), float(torch.stack([-s[1], s[0]]) @ v_u / norm)

    for log_rho in (0.7, -0.4):
        rho = math.exp(log_rho)
        moments = quotient_moments(model, loss_fn, data, syms, act(sym, star, log_rho), batches)
        assert torch.allclose(moments.point, base.point, atol=1e-12)
        for new, old in zip([moments.drift, *moments.noise], [base.drift, *base.noise]):
            (g1, s1), (g0, s0) = coordinates(new), coordinates(old)
            assert math.isclose(g1, g0 * (rho**2 + rho**-2) / 2, rel_tol=1e-9)
            assert math.isclose(s1, s0 / rho**2, rel_tol=1e-9)


def test_scale_group_drift_scales_like_the_inverse_square_norm():
    """Truth: under BatchNorm (training mode, eps -> 0) the loss is invariant under w_A -> r w_A, so
    grad L(r w) = grad L(w) / r on A and D Phi carries it back by 1/r: b_A(r) = b_A(1) / r^2 and
    nothing else moves, i.e. drift spread = |r^-2 - 1| |b_A| / |b|."""
    torch.manual_seed(4)
    model = exact_norms(sw.models.mlp((4, 6, 6, 3), norm="batch").double())
    g = torch.Generator().manual_seed(5)
    x = torch.randn(32, 4, generator=g, dtype=torch.float64)
    y = torch.randint(0, 3, (32,), generator=g)
    syms = sw.find_symmetries(model, x[:16])
    sym = syms.of_kind(Kind.SCALE)[0]
    batches = [torch.arange(0, 16), torch.arange(16, 32)]
    logs = (0.8, -0.5)
    result = projectability(model, F.cross_entropy, (x, y), syms, elements=[{sym.label: r} for r in logs], batches=batches)
    star = sw.quotient.canonical(syms, {k: v.detach() for k, v in model.named_parameters()}).params
    base = quotient_moments(model, F.cross_entropy, (x, y), syms, star, batches)
    mask = {name: torch.zeros_like(p) for name, p in star.items()}
    for slot in sym.incoming:
        slot.view(mask).fill_(1.0)
    on_a = flat(mask, base.names).bool()
    share = float(base.drift[on_a].norm() / base.drift.norm())
    for spread, log_r in zip(result.drift_spread, logs):
        assert math.isclose(spread, abs(math.exp(-2 * log_r) - 1) * share, rel_tol=1e-8)
    assert max(result.loss_change) < 1e-12 and max(result.chart_change) < 1e-12


def test_moments_agree_with_the_charts_push_forward(mlp_case):
    """Truth: ``push_forward`` (checked against finite differences of Phi in test_chart) on a model
    without GL groups, at a far-away representative."""
    model, loss_fn, (x, y), syms = mlp_case
    params = {k: v.detach() for k, v in model.named_parameters()}
    g = torch.Generator().manual_seed(6)
    moved = dict(params)
    for sym in syms:
        if sym.kind.one_parameter:
            moved = act(sym, moved, float(3 * torch.rand((), generator=g) - 1.5))
    batches = [torch.arange(0, 24), torch.arange(24, 48)]
    moments = quotient_moments(model, loss_fn, (x, y), syms, moved, batches)
    grads = gradient(model, loss_fn, moved, x, y)
    expected = flat(push_forward(syms, moved, grads), moments.names)
    assert torch.allclose(moments.drift, expected, rtol=1e-9, atol=1e-11 * float(expected.abs().max()))
    mini = gradient(model, loss_fn, moved, x[batches[1]], y[batches[1]])
    expected_noise = flat(push_forward(syms, moved, {k: mini[k] - grads[k] for k in grads}), moments.names)
    assert torch.allclose(moments.noise[1], expected_noise, rtol=1e-9, atol=1e-11 * float(expected_noise.abs().max()))


@pytest.fixture(scope="module")
def gpt_case():
    torch.manual_seed(7)
    model = exact_norms(sw.models.GPT(sw.models.GPTConfig(vocab_size=12, block_size=6, n_layer=1, n_head=2, d_model=8)).double())
    g = torch.Generator().manual_seed(8)
    tokens = torch.randint(0, 12, (24, 6), generator=g)
    targets = (5 * tokens + 1) % 12

    def loss_fn(out, target):
        return F.cross_entropy(out.reshape(-1, 12), target.reshape(-1))

    return model, loss_fn, (tokens, targets), sw.find_symmetries(model, tokens[:4])


def test_gl_lift_is_the_same_quotient_vector(gpt_case):
    """Truth: for any invariant F (here the log-probabilities), F = F o Phi, so dF(theta')[v] =
    dF(Phi)[lift of v]; and the lift is horizontal at Phi (J w = 0). Checked at a representative
    moved by non-orthogonal GL elements on every head."""
    model, loss_fn, (tokens, targets), syms = gpt_case
    params = {k: v.detach() for k, v in model.named_parameters()}
    g = torch.Generator().manual_seed(9)
    moved = dict(params)
    for sym in syms.of_kind(Kind.GL):
        moved = act_gl(sym, moved, torch.linalg.matrix_exp(0.6 * torch.randn(4, 4, generator=g, dtype=torch.float64)))
    moments = quotient_moments(model, loss_fn, (tokens, targets), syms, moved, [torch.arange(12), torch.arange(12, 24)])
    sizes = [params[n].numel() for n in moments.names]
    phi = {n: t.reshape(params[n].shape) for n, t in zip(moments.names, moments.point.split(sizes))}
    lift = {n: t.reshape(params[n].shape) for n, t in zip(moments.names, moments.drift.split(sizes))}
    grads = gradient(model, loss_fn, moved, tokens, targets)

    def log_probs(p):
        return torch.func.functional_call(model, p, (tokens[:4],)).log_softmax(-1)

    _, there = torch.func.jvp(log_probs, (moved,), (grads,))
    _, here = torch.func.jvp(log_probs, (phi,), (lift,))
    assert float((there - here).abs().max()) < 1e-10 * float(there.abs().max())
    orbit = OrbitOperator(syms, phi)
    assert float(orbit.matvec(lift).abs().max()) < 1e-10 * float(orbit.matvec(grads).abs().max() + 1)


def test_orthogonal_gl_elements_keep_the_drift_and_others_do_not(gpt_case):
    """Truth: the Euclidean metric is invariant under orthogonal M (M^-T = M), so b and A are
    unchanged; a non-orthogonal M changes them through M^T M."""
    model, loss_fn, data, syms = gpt_case
    g = torch.Generator().manual_seed(10)
    orthogonal = {s.label: torch.linalg.qr(torch.randn(4, 4, generator=g, dtype=torch.float64))[0]
                  for s in syms.of_kind(Kind.GL)}
    stretched = {s.label: torch.diag(torch.tensor([2.0, 1.0, 0.5, 1.0], dtype=torch.float64))
                 for s in syms.of_kind(Kind.GL)}
    result = projectability(model, loss_fn, data, syms, elements=[orthogonal, stretched], batches=3, batch_size=8)
    assert result.drift_spread[0] < 1e-10 and result.covariance_spread[0] < 1e-10
    assert result.drift_spread[1] > 1e-2 and result.covariance_spread[1] > 1e-2
    assert max(result.loss_change) < 1e-12 and max(result.chart_change) < 1e-10
    assert result.element_size[1] == pytest.approx(math.log(4.0))


@pytest.mark.parametrize("name", ["mlp", "cnn-bn", "gpt"])
def test_loss_and_chart_unchanged_and_drift_not_projectable(name, mlp_case, gpt_case):
    """Truth: the group action keeps the loss and Phi (1e-10, float64) for far-away elements, while
    b moves by O(1) (the Euclidean gradient is not equivariant under rescale, scale and GL)."""
    if name == "mlp":
        model, loss_fn, data, syms = mlp_case
    elif name == "gpt":
        model, loss_fn, data, syms = gpt_case
    else:
        torch.manual_seed(11)
        model = exact_norms(sw.models.vgg("tiny", width_divisor=8, image_size=8, hidden=8).double())
        g = torch.Generator().manual_seed(12)
        x = torch.randn(24, 3, 8, 8, generator=g, dtype=torch.float64)
        data, loss_fn = (x, torch.randint(0, 10, (24,), generator=g)), F.cross_entropy
        syms = sw.find_symmetries(model, x[:12])
    result = projectability(model, loss_fn, data, syms, strength=2.0, representatives=2, batches=3)
    assert isinstance(result, Projectability)
    assert max(result.loss_change) < 1e-10 and max(result.chart_change) < 1e-10
    assert result.max_drift_spread > 0.1 and not result.projectable()


def test_bad_input_raises_clear_errors(mlp_case):
    model, loss_fn, data, syms = mlp_case
    with pytest.raises(ValueError, match="at least one continuous symmetry"):
        projectability(model, loss_fn, data, SymmetrySet(()))
    with pytest.raises(ValueError, match="too few minibatches"):
        projectability(model, loss_fn, data, syms, batches=1)
    with pytest.raises(ValueError, match="too few minibatches"):
        projectability(model, loss_fn, data, syms, batches=[torch.arange(4)])
    with pytest.raises(ValueError, match="batch_size must be in"):
        projectability(model, loss_fn, data, syms, batch_size=0)
    with pytest.raises(ValueError, match="at least 1 representative"):
        projectability(model, loss_fn, data, syms, representatives=0)
    with pytest.raises(ValueError, match="strength must be"):
        projectability(model, loss_fn, data, syms, strength=-1.0)
    with pytest.raises(ValueError, match="reference must be"):
        projectability(model, loss_fn, data, syms, reference="random")
    with pytest.raises(ValueError, match="kinds"):
        projectability(model, loss_fn, data, syms, kinds=["scale"])
    with pytest.raises(ValueError, match="noise vanishes"):
        projectability(model, loss_fn, data, syms, batches=[torch.arange(48), torch.arange(48)])
    with pytest.raises(ValueError, match="not in the set"):
        projectability(model, loss_fn, data, syms, elements=[{"rescale/nowhere/unit0": 1.0}])
