"""Local entropy on the quotient: slices exact, Monte Carlo and Langevin against them, HJ residual."""

import math

import pytest
import torch
import torch.nn.functional as F

import shockwatch as sw
from shockwatch.quotient import (
    Direction,
    QuotientChart,
    batched_loss,
    langevin_gradient,
    monte_carlo_entropy,
    slice_entropy,
    sphere_walk,
)
from shockwatch.symmetry import act


def bce(out, target):
    return F.binary_cross_entropy_with_logits(out[:, 0], target)


def step_task(width, seed=0, train_steps=0):
    """The §3.1 data (96 points on [-2, 2], labels 1{x > 0}) and a width-``width`` ReLU net."""
    torch.manual_seed(seed)
    model = sw.models.mlp((1, width, 1)).double()
    x = torch.linspace(-2, 2, 96, dtype=torch.float64)[:, None]
    y = (x[:, 0] > 0).double()
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    for _ in range(train_steps):
        opt.zero_grad()
        bce(model(x), y).backward()
        opt.step()
    syms = sw.find_symmetries(model, x, logits=False)
    chart = QuotientChart.at(dict(model.named_parameters()), syms)
    return model, syms, chart, batched_loss(model, bce, (x, y)), (x, y)


def test_chart_is_a_balanced_invariant_coordinate_system():
    """Truth: the model's own loss; |a_j| = |u_j| at the chart's base; (gamma, s) unchanged by rescaling."""
    model, syms, chart, loss, (x, y) = step_task(5, train_steps=50)
    assert chart.dims == (5, 2, 1) and chart.free.numel() == 1  # the output bias c is the only free entry
    base = {k: v[None] for k, v in chart.base.items()}
    assert abs(float(loss(base)[0]) - float(bce(model(x), y).detach())) < 1e-12
    for sym in chart.units:
        inc = torch.cat([s.view(chart.base).reshape(-1) for s in sym.incoming])
        out = torch.cat([s.view(chart.base).reshape(-1) for s in sym.outgoing])
        assert abs(float(inc.norm() - out.norm())) < 1e-12
    moved = {k: v.detach() for k, v in model.named_parameters()}
    for i, sym in enumerate(syms.of_kind("rescale")):
        moved = act(sym, moved, 0.7 * (i - 2))
    other = QuotientChart.at(moved, syms)
    assert torch.allclose(other.gamma, chart.gamma, atol=1e-12) and torch.allclose(other.s, chart.s, atol=1e-12)


def test_rotation_slice_quotient_metric_is_the_product_one_at_rescaled_time():
    """Truth: the arc length of a rotation is sqrt|gamma| theta, so the heat time in theta-units is
    nu tau / |gamma|: u_quotient(tau) = u_product(tau / |gamma|) on the same theta grid."""
    *_, chart, loss, _ = step_task(3, train_steps=100)
    magnitude = float(chart.gamma[1].norm())
    quotient = slice_entropy(loss, chart, [Direction("rotate", 1)], 0.05, [0.2], points=256)
    product = slice_entropy(loss, chart, [Direction("rotate", 1)], 0.05, [0.2 / magnitude], points=256,
                            metric="product")
    assert torch.allclose(quotient.potential, product.potential, atol=1e-14)
    assert float((quotient.entropy - product.entropy).abs().max()) < 1e-10
    assert math.isclose(float(quotient.grids[0][1] - quotient.grids[0][0]) * 256, 2 * math.pi * math.sqrt(magnitude))


def test_monte_carlo_on_one_sphere_matches_the_exact_slice():
    """Truth: the exact (log-domain quadrature) slice on the circle of the only unit: Brownian motion
    on its sphere alone (lines held) must give the same u at the base point within 4 standard errors."""
    *_, chart, loss, _ = step_task(1, seed=2, train_steps=200)
    nu, tau = 0.05, 0.4
    exact = slice_entropy(loss, chart, [Direction("rotate", 0)], nu, [tau], points=512, metric="product")
    at_base = float(exact.entropy[0, 256])  # grid = -pi + 2 pi i / 512: i = 256 is theta = 0
    mc = monte_carlo_entropy(loss, chart, nu, tau, samples=40000, substeps=32, factors="spheres", seed=1)
    # the walk is weak order 1: h = nu tau / 32 adds a bias far below the statistical error here
    assert abs(mc.value - at_base) < 4 * mc.standard_error + 1e-4, (mc.value, at_base, mc.standard_error)
    assert abs(at_base - float(exact.potential[256])) > 10 * mc.standard_error  # not vacuous: u moved off U


def test_monte_carlo_and_langevin_gradients_match_the_exact_2d_slice():
    """Truth: the exact 2-D slice (gamma_1 x c, product metric = the flat line factors): its value and its
    gradient (4th-order differences) against Monte Carlo (value, weighted score) and against Langevin
    sampling (Entropy-SGD), each within 4 of its standard errors."""
    *_, chart, loss, _ = step_task(1, seed=0)
    nu, tau = 0.1, 0.1
    exact = slice_entropy(loss, chart, [Direction("radial", 0), Direction("free", 0)], nu, [tau], points=(81, 81),
                          metric="product", half_width=(0.8 * float(chart.gamma.norm()), 1.5))
    u = exact.entropy[0]
    steps = [float(g[1] - g[0]) for g in exact.grids]
    d_gamma = float(-u[42, 40] + 8 * u[41, 40] - 8 * u[39, 40] + u[38, 40]) / (12 * steps[0])
    d_free = float(-u[40, 42] + 8 * u[40, 41] - 8 * u[40, 39] + u[40, 38]) / (12 * steps[1])
    exact_gradient = torch.tensor([float(torch.sign(chart.gamma[0, 0])) * d_gamma, d_free], dtype=torch.float64)
    assert float(exact_gradient.abs().min()) > 0.2  # not vacuous: the untrained loss is steep in both
    mc = monte_carlo_entropy(loss, chart, nu, tau, samples=60000, factors="lines", seed=4)
    assert abs(mc.value - float(u[40, 40])) < 4 * mc.standard_error + 1e-5
    # the weighted score's own spread: sqrt(nu / tau) / sqrt(effective samples) per component
    score_error = math.sqrt(nu / tau) / math.sqrt(mc.effective_samples)
    assert float((mc.gradient_lines - exact_gradient).abs().max()) < 4 * score_error + 1e-3, \
        (mc.gradient_lines, exact_gradient)
    langevin = langevin_gradient(loss, chart, nu, tau, chains=128, steps=600, burn_in=100, seed=5)
    # Langevin's step h = nu tau / 50 biases the stationary law by O(h): allowed 0.02 on top of the noise
    assert bool(((langevin.gradient - exact_gradient).abs() < 4 * langevin.standard_error + 0.02).all()), \
        (langevin.gradient, exact_gradient, langevin.standard_error)


@pytest.mark.parametrize("dim", [2, 3])
def test_sphere_walk_has_the_heat_kernel_mean(dim):
    """Truth: for (1/2) Delta on S^{d-1}, E<X_t, x0> = exp(-(d - 1) t / 2) (first spherical harmonic)."""
    start = torch.zeros(40000, dim, dtype=torch.float64)
    start[:, 0] = 1.0
    t = 0.6
    end = sphere_walk(start, t, 64, torch.Generator().manual_seed(0))
    assert torch.allclose(end.norm(dim=1), torch.ones(len(end), dtype=torch.float64), atol=1e-12)
    mean = float(end[:, 0].mean())
    assert abs(mean - math.exp(-(dim - 1) * t / 2)) < 4 * float(end[:, 0].std()) / 200 + 0.01


def test_hj_residual_falls_with_refinement_on_1d_and_2d_slices():
    """Truth: Thm 3.1 holds exactly for u = -nu log w, so the measured residual is discretisation error.
    1-D: order 4 differences, halving (h, dtau) cuts it > 6x. 2-D: measured 0.17 -> 0.046 -> 0.010 on
    32^2 -> 64^2 -> 128^2 (order ~2: between grid points the kinked ReLU loss is interpolated by
    cubics inside each 1-D quadrature, an O(h^2) error at the kinks), so > 3x per halving."""
    *_, chart, loss, _ = step_task(2, seed=1, train_steps=100)
    nu = 0.1

    def residual_1d(points, taus):
        s = slice_entropy(loss, chart, [Direction("rotate", 0)], nu, taus, points=points)
        return float(s.hj_residual().abs()[1:-1].max())

    coarse = residual_1d(48, torch.linspace(0.05, 0.15, 7))
    fine = residual_1d(96, torch.linspace(0.05, 0.15, 13))
    assert fine < coarse / 6, (coarse, fine)

    def residual_2d(points, taus):
        s = slice_entropy(loss, chart, [Direction("rotate", 0), Direction("rotate", 1)], nu, taus, points=points)
        return float(s.hj_residual().abs()[1:-1].max())

    residuals = [residual_2d((n, n), torch.linspace(0.05, 0.15, taus)) for n, taus in ((32, 7), (64, 13))]
    assert residuals[1] < residuals[0] / 3, residuals


def test_small_viscosity_stays_finite_in_the_log_domain():
    """Truth: u <= U pointwise bound u(tau) <= max U and u -> U as tau -> 0; at nu = 1e-3 e^{-U/nu}
    underflows float64 for U > 0.75, yet u stays finite."""
    *_, chart, loss, _ = step_task(2, seed=1)
    s = slice_entropy(loss, chart, [Direction("rotate", 0)], 1e-3, [0.0, 1e-4, 0.05], points=256)
    assert bool(torch.isfinite(s.entropy).all())
    assert float(s.potential.max()) > 0.75
    assert float((s.entropy[2] - s.potential.max()).max()) <= 1e-12
    assert float((s.entropy[1] - s.potential).abs().max()) < 2e-2


def test_bad_input():
    model, syms, chart, loss, (x, _) = step_task(2)
    no_units = sw.symmetry.SymmetrySet(tuple(s for s in syms if s.kind != "rescale"))
    with pytest.raises(ValueError, match="needs a ReLU rescale symmetry"):
        QuotientChart.at(dict(model.named_parameters()), no_units)
    with pytest.raises(ValueError, match="cone"):
        slice_entropy(loss, chart, [Direction("rotate", 0), Direction("radial", 0)], 0.1, [0.1])
    with pytest.raises(ValueError, match="half_width"):
        slice_entropy(loss, chart, [Direction("radial", 0)], 0.1, [0.1], half_width=10.0)
    with pytest.raises(ValueError, match="metric must be"):
        slice_entropy(loss, chart, [Direction("rotate", 0)], 0.1, [0.1], metric="flat")
    with pytest.raises(ValueError, match="unit must be in"):
        slice_entropy(loss, chart, [Direction("rotate", 7)], 0.1, [0.1])
    with pytest.raises(ValueError, match="kind must be"):
        Direction("spin")
    with pytest.raises(ValueError, match="taus must be"):
        slice_entropy(loss, chart, [Direction("rotate", 0)], 0.1, [-1.0])
    with pytest.raises(ValueError, match="nu and tau"):
        monte_carlo_entropy(loss, chart, 0.0, 0.1)


def test_chart_and_slices_on_a_cnn_with_batchnorm():
    """Truth: the model's own loss at the chart's base; the chart takes the first layer of rescale units
    (BatchNorm's affine pair against the next conv's input channel: d = 2, k = out channels x 3 x 3)."""
    torch.manual_seed(0)
    model = sw.models.vgg("tiny", width_divisor=4, batch_norm=True, image_size=8, hidden=16).double().eval()
    x, y = torch.randn(16, 3, 8, 8, dtype=torch.float64), torch.randint(0, 10, (16,))
    syms = sw.find_symmetries(model, x)
    chart = QuotientChart.at(dict(model.named_parameters()), syms)
    J, d, k = chart.dims
    assert d == 2 and k % 9 == 0 and J >= 2
    loss = batched_loss(model, F.cross_entropy, (x, y))
    base = {key: value[None] for key, value in chart.base.items()}
    assert abs(float(loss(base)[0]) - float(F.cross_entropy(model(x), y).detach())) < 1e-12
    s = slice_entropy(loss, chart, [Direction("rotate", 0), Direction("radial", 1)], 0.1, [0.0, 0.1], points=(32, 17))
    assert bool(torch.isfinite(s.entropy).all()) and torch.allclose(s.entropy[0], s.potential)
