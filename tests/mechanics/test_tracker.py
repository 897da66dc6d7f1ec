"""ConservationTracker: Kunin et al.'s laws against real SGD runs (float64), resumption, bad input."""

import pytest
import torch
import torch.nn.functional as F

import shockwatch as sw
from helpers import exact_norms


def train(model, opt, tracker, x, y, generator, steps, batch=16):
    """Minibatch SGD steps with the tracker updated after each (the loop every test shares)."""
    for _ in range(steps):
        idx = torch.randint(0, x.shape[0], (batch,), generator=generator)
        opt.zero_grad()
        F.cross_entropy(model(x[idx]), y[idx]).backward()
        opt.step()
        tracker.update()
    return tracker.report()


def run(norm="batch", lr=0.05, weight_decay=5e-4, steps=200, seed=0, schedule=None, optimizer="sgd",
        tracker_state=None, stop_at=None):
    torch.manual_seed(seed)
    model = exact_norms(sw.models.mlp((4, 12, 12, 3), norm=norm).double())
    g = torch.Generator().manual_seed(1)
    x = torch.randn(64, 4, generator=g, dtype=torch.float64)
    y = (x[:, 0] > 0).long() + (x[:, 1] > 0).long()
    syms = sw.find_symmetries(model, x)
    opt = (torch.optim.SGD(model.parameters(), lr=lr, weight_decay=weight_decay) if optimizer == "sgd"
           else torch.optim.Adam(model.parameters(), lr=1e-3))
    tracker = sw.ConservationTracker(model, opt, syms)
    for step in range(steps):
        if schedule is not None:
            for group in opt.param_groups:
                group["lr"] = schedule(step)
        idx = torch.randint(0, 64, (16,), generator=g)
        opt.zero_grad()
        F.cross_entropy(model(x[idx]), y[idx]).backward()
        opt.step()
        tracker.update()
        if stop_at is not None and step + 1 == stop_at:
            return model, opt, tracker, syms
    return model, opt, tracker, syms


@pytest.mark.parametrize("norm", ["batch", "none"])
def test_discrete_law_is_exact_and_continuous_law_is_close(norm):
    """Truth: the run itself. The exact discrete law (1 - eta lambda)^2 Q + eta^2 |g_A|^2 follows the
    empirical charges to float64 round-off; eqs. 4-6 to O(eta lambda) (here eta lambda = 2.5e-5)."""
    *_, tracker, syms = run(norm=norm)
    report = tracker.report()
    kinds = [k for k in ("translation", "scale", "rescale") if syms.of_kind(k)]
    assert ("scale" in kinds) == (norm == "batch")
    for kind in kinds:
        assert report.max_rel_error(kind, "discrete") < 1e-9, kind
        assert report.max_rel_error(kind, "continuous") < 1e-3, kind


def test_translation_charges_decay_exactly_geometrically():
    """Truth: <theta_A, 1>_k = (1 - eta lambda)^k <theta_A, 1>_0, read off the run (not the tracker's
    prediction): the gradient has no component along 1_A."""
    lr, wd = 0.05, 1e-2
    *_, tracker, _ = run(lr=lr, weight_decay=wd, steps=150)
    empirical = tracker.report().empirical["translation"]
    expected = empirical[0] * (1 - lr * wd) ** torch.arange(len(empirical), dtype=torch.float64).unsqueeze(1)
    assert float(((empirical - expected).abs() / empirical[0].abs().clamp(min=1e-12)).max()) < 1e-10


def test_learning_rate_schedule():
    """Truth: the run; eta_k changes every step (cosine) and the discrete law still holds exactly."""
    import math
    *_, tracker, _ = run(schedule=lambda k: 0.01 + 0.04 * (1 + math.cos(math.pi * k / 200)) / 2)
    report = tracker.report()
    for kind in ("translation", "scale", "rescale"):
        assert report.max_rel_error(kind) < 1e-9
        assert report.max_rel_error(kind, "continuous") < 1e-3


def resumed_and_uninterrupted(state, model, opt, syms):
    """Load ``state`` (taken at step 80 of ``run(steps=160)``) into a new tracker and continue the run
    with the uninterrupted run's data stream: (the resumed report, the uninterrupted run's report)."""
    fresh = sw.ConservationTracker(model, opt, syms)
    fresh.load_state_dict(state)
    *_, whole, _ = run(steps=160)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(64, 4, generator=g, dtype=torch.float64)
    y = (x[:, 0] > 0).long() + (x[:, 1] > 0).long()
    for _ in range(80):
        torch.randint(0, 64, (16,), generator=g)
    return train(model, opt, fresh, x, y, g, 80), whole.report()


def largest_law_difference(resumed, uninterrupted) -> float:
    """max over kinds, laws, steps and groups of |resumed - uninterrupted| / max(|uninterrupted|, 1e-2)."""
    worst = 0.0
    for kind in ("translation", "scale", "rescale"):
        for law in ("discrete", "continuous"):
            a, b = getattr(resumed, law)[kind], getattr(uninterrupted, law)[kind]
            if b.numel():
                worst = max(worst, float(((a - b).abs() / b.abs().clamp(min=1e-2)).max()))
    return worst


def test_resume_from_state_dict_continues_the_predictions():
    """Truth: an uninterrupted run. Stop at step 80, rebuild the tracker, load its state, continue."""
    model, opt, tracker, syms = run(steps=160, stop_at=80)
    resumed, uninterrupted = resumed_and_uninterrupted(tracker.state_dict(), model, opt, syms)
    assert resumed.steps == uninterrupted.steps == list(range(161))
    assert largest_law_difference(resumed, uninterrupted) < 1e-12


def test_a_state_dict_of_the_earlier_format_still_resumes():
    """A checkpoint written before the laws' state was one ``LawState`` per block (separate discrete,
    integral, decay-time, buffer and oscillator entries) continues the predictions of an uninterrupted
    run to round-off (truth: that run)."""
    model, opt, tracker, syms = run(steps=160, stop_at=80)
    state = tracker.state_dict()
    laws = state.pop("laws")
    field = lambda name: {block: values[name] for block, values in laws.items()}
    zeros = {block: torch.zeros_like(values["q"]) for block, values in laws.items()}
    state.update(initial=zeros, decay_time=zeros, integral=field("flow"), discrete=field("q"),
                 theta_buffer=field("p"), buffer_sq=field("b"), oscillator=field("oscillator"),
                 nesterov_carry=field("carry"), continuous_lost={b: ~v for b, v in field("applies").items()})
    resumed, uninterrupted = resumed_and_uninterrupted(state, model, opt, syms)
    assert resumed.steps == uninterrupted.steps == list(range(161))
    assert largest_law_difference(resumed, uninterrupted) < 1e-12


def test_optimizers_without_a_law_report_drift_only():
    """Adam has no conservation law here: the tracker says so, refuses a law, reports drift."""
    *_, tracker, _ = run(optimizer="adam", steps=50)
    report = tracker.report()
    assert report.law.startswith("none") and "Adam" in report.law
    with pytest.raises(ValueError, match="no discrete law"):
        report.max_rel_error("scale")
    assert float(report.drift("scale").max()) > 1e-4  # Adam moves the scale charges


def test_bad_input():
    model = sw.models.mlp((3, 5, 2)).double()
    other = sw.models.vgg("tiny", width_divisor=4, image_size=8, hidden=8)
    syms_other = sw.find_symmetries(other, torch.randn(2, 3, 8, 8))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(ValueError, match="another model"):
        sw.ConservationTracker(model, opt, syms_other)
    tracker = sw.ConservationTracker(model, opt, sw.find_symmetries(model, torch.randn(4, 3, dtype=torch.float64)))
    with pytest.raises(RuntimeError, match="after optimizer.step"):
        tracker.update()
    with pytest.raises(ValueError, match="law must be"):
        tracker.report().max_rel_error("scale", law="exact")


def momentum_run(lr, weight_decay, momentum=0.9, steps=200, dampening=0.0, nesterov=False, compile=False):
    torch.manual_seed(0)
    model = exact_norms(sw.models.mlp((4, 12, 12, 3), norm="batch").double())
    g = torch.Generator().manual_seed(1)
    x = torch.randn(64, 4, generator=g, dtype=torch.float64)
    y = (x[:, 0] > 0).long()
    syms = sw.find_symmetries(model, x)
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum, dampening=dampening, nesterov=nesterov,
                          weight_decay=weight_decay)
    tracker = sw.ConservationTracker(model, opt, syms, compile=compile)
    return train(model, opt, tracker, x, y, g, steps)


@pytest.mark.parametrize("momentum,dampening,nesterov", [(0.9, 0.0, False), (0.9, 0.3, False), (0.9, 0.0, True),
                                                         (0.5, 0.0, False)])
def test_exact_discrete_law_with_momentum(momentum, dampening, nesterov):
    """Truth: the run. torch.optim.SGD with momentum, dampening, Nesterov and weight decay: the scalar
    recursions for (Q, <theta_A, b_A>, |b_A|^2), fed only |g_A|^2 and <b_A, g_A>, follow the empirical
    charges to float64 round-off; translation charges follow a gradient-free damped recursion."""
    report = momentum_run(0.02, 1e-3, momentum, steps=150, dampening=dampening, nesterov=nesterov)
    assert report.law == "sgd-momentum"
    for kind in ("translation", "scale", "rescale"):
        assert report.max_rel_error(kind) < 1e-9, kind
    # the oscillator (Nesterov: its own mass, laws.oscillator_propagator) to first order in eta
    assert report.max_rel_error("translation", "continuous") < 5e-2


@pytest.mark.parametrize("regime", ["overdamped", "critical", "underdamped"])
def test_momentum_oscillator_matches_its_closed_form_in_every_damping_regime(regime):
    """Truth: the closed-form solutions of m T'' + (1 - mu) T' + lambda T = 0, T'(0) = 0 (Kunin et al.
    App. B for translation charges, m = eta (1 + mu)/2): two real roots, a double root, or a damped
    cosine; the tracker's continuous prediction (matrix exponentials, step by step) must follow it."""
    import math
    eta, mu = 0.02, 0.9
    mass, friction = eta * (1 + mu) / 2, 1 - mu
    critical = friction**2 / (4 * mass)
    lam = {"overdamped": 0.1 * critical, "critical": critical, "underdamped": 10 * critical}[regime]
    report = momentum_run(eta, lam)
    t = torch.arange(len(report.steps), dtype=torch.float64) * eta
    decay = friction / (2 * mass)
    if regime == "overdamped":
        root = math.sqrt(friction**2 - 4 * mass * lam) / (2 * mass)
        r1, r2 = -decay + root, -decay - root
        shape = (r2 * torch.exp(r1 * t) - r1 * torch.exp(r2 * t)) / (r2 - r1)
    elif regime == "critical":
        shape = torch.exp(-decay * t) * (1 + decay * t)
    else:
        omega = math.sqrt(4 * mass * lam - friction**2) / (2 * mass)
        shape = torch.exp(-decay * t) * (torch.cos(omega * t) + decay / omega * torch.sin(omega * t))
    initial = report.empirical["translation"][0]
    closed_form = shape.unsqueeze(1) * initial
    assert float((report.continuous["translation"] - closed_form).abs().max() / initial.abs().max()) < 1e-10


def test_momentum_continuous_law_is_first_order_in_eta():
    """Truth: the run. The modified equation is a first-order model: halving eta (same time span)
    halves the gap between the oscillator law and the run (overdamped, lambda = 1e-2)."""
    gaps = [momentum_run(lr, 1e-2, steps=int(round(2.0 / lr))).max_rel_error("translation", "continuous")
            for lr in (0.02, 0.01)]
    assert gaps[0] < 2e-3 and 1.6 < gaps[0] / gaps[1] < 2.4, gaps


def test_vgg_with_batchnorm_small_eta_lambda():
    """Truth: the run of a VGG-style CNN (float64, BatchNorm eps -> 0), SGD with eta lambda = 5e-5:
    discrete law to round-off, continuous law (eqs. 4-6) within 1e-3 for every group."""
    torch.manual_seed(3)
    model = exact_norms(sw.models.vgg("tiny", width_divisor=4, batch_norm=True, image_size=8, hidden=16).double())
    g = torch.Generator().manual_seed(4)
    x = torch.randn(128, 3, 8, 8, generator=g, dtype=torch.float64)
    y = torch.randint(0, 10, (128,), generator=g)
    syms = sw.find_symmetries(model, x[:16])
    opt = torch.optim.SGD(model.parameters(), lr=0.05, weight_decay=1e-3)
    tracker = sw.ConservationTracker(model, opt, syms)
    report = train(model, opt, tracker, x, y, g, 100, batch=32)
    for kind in ("translation", "scale", "rescale"):
        assert report.max_rel_error(kind) < 1e-9, kind
        assert report.max_rel_error(kind, "continuous") < 1e-3, kind


@pytest.mark.slow
def test_compiled_tracker_agrees_with_eager():
    """Truth: the eager tracker (the same sums, fused by torch.compile): equal to float64 round-off."""
    eager, fused = (momentum_run(0.02, 1e-2, steps=30, compile=flag) for flag in (False, True))
    for kind in ("translation", "scale", "rescale"):
        assert torch.allclose(eager.discrete[kind], fused.discrete[kind], rtol=1e-12, atol=1e-14)
        assert torch.allclose(eager.empirical[kind], fused.empirical[kind], rtol=1e-12, atol=1e-14)


def test_a_tracker_without_history_keeps_only_the_last_record():
    """Truth: a tracker with its whole history, fed the same run; the translation sizes against
    sum |theta_A| taken from a copy of |theta|."""
    torch.manual_seed(3)
    model = sw.models.mlp((4, 9, 3), norm="batch").double()
    x = torch.randn(32, 4, dtype=torch.float64)
    y = (x[:, 0] > 0).long()
    syms = sw.find_symmetries(model, x)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-3)
    full, last = sw.ConservationTracker(model, opt, syms), sw.ConservationTracker(model, opt, syms, keep_history=False)
    for _ in range(6):
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
        full.update()
        last.update()
    assert len(last._history) == 1 and len(full._history) == 7
    (step, want), (got_step, got) = full.latest(), last.latest()
    assert step == got_step == 6
    for kind, rows in want.items():
        assert set(rows) == set(got[kind]) and all(torch.equal(rows[label], got[kind][label]) for label in rows)
    with pytest.raises(ValueError, match="keep_history"):
        last.report()
    params = dict(model.named_parameters())
    absolute = {name: p.detach().abs() for name, p in params.items()}
    assert torch.allclose(syms.charges("translation", params, absolute=True), syms.charges("translation", absolute),
                          rtol=1e-14, atol=0)
    assert len(syms.of_kind("translation")) > 0
    with pytest.raises(ValueError, match="absolute=True is for translation"):
        syms.charges("scale", params, absolute=True)
