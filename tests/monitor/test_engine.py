"""The monitor's per-step C engine against the monitor's Python path (``Monitor(engine=False)``)."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import shockwatch as sw
from shockwatch.symmetry import _native
from helpers import exact_norms

pytestmark = pytest.mark.skipif(_native.library() is None, reason="no C compiler for the kernel")


class WithUnused(nn.Module):
    """An MLP with a parameter the loss never reaches: its gradient stays None."""

    def __init__(self):
        super().__init__()
        self.net = sw.models.mlp((4, 12, 12, 3))
        self.unused = nn.Parameter(torch.ones(5))

    def forward(self, x):
        return self.net(x)


def run(directory, *, engine, model="mlp", dtype=torch.float64, optimizer="momentum", steps=24, quotient=None,
        poison_at=None, reload_at=None, freeze=False):
    torch.manual_seed(0)
    if model == "mlp":
        net = sw.models.mlp((4, 12, 12, 3), norm="batch")
        x = torch.randn(32, 4)
    elif model == "unused":
        net = WithUnused()
        x = torch.randn(32, 4)
    else:  # a small VGG: convolutions (K > 1 in the kernel's (O, I, K) view) and BatchNorm
        net = sw.models.vgg("vgg11", width_divisor=16, batch_norm=True, image_size=32, hidden=16)
        x = torch.randn(4, 3, 32, 32)
    net, x = exact_norms(net.to(dtype)), x.to(dtype)
    y = torch.randint(0, 3, (len(x),))
    if freeze:  # the first layer frozen: the symmetries acting on it are left out (an event says so)
        next(net.parameters()).requires_grad_(False)
    if optimizer == "adamw":  # no law: drift only
        opt = torch.optim.AdamW(net.parameters(), lr=1e-3, weight_decay=1e-2)
    elif optimizer == "plain":  # SGD without momentum: its own law
        opt = torch.optim.SGD(net.parameters(), lr=0.05, weight_decay=1e-3)
    else:
        opt = torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-3,
                              nesterov=optimizer == "nesterov", dampening=0.3 if optimizer == "dampening" else 0.0)
    schedule = torch.optim.lr_scheduler.StepLR(opt, step_size=7, gamma=0.5)  # the law's settings change
    monitor = sw.Monitor(net, opt, directory, example_input=x, tensorboard=False, engine=engine,
                         schedule=sw.Schedule(quotient=quotient))
    logged = []
    with monitor:
        for step in range(steps):
            opt.zero_grad()
            loss = F.cross_entropy(net(x), y)
            if step == poison_at:
                loss = loss * float("nan")
            loss.backward()
            if step != poison_at:  # as a GradScaler does: a non-finite step is not taken
                opt.step()
            logged.append(monitor.step(loss))
            schedule.step()
            if step == reload_at:  # new momentum buffer objects, and every parameter in new storage
                opt.load_state_dict(opt.state_dict())
                with torch.no_grad():
                    for p in net.parameters():
                        p.data = p.data.clone()
        taken = monitor._engine.steps if monitor._engine is not None else 0
        if freeze:
            assert [kind for _, kind, _ in monitor.store.events()] == ["frozen-parameters"]
            assert all(slot.param != next(iter(dict(net.named_parameters()))) for sym in monitor.symmetries
                       for slot in sym.slots)
        return logged, monitor.store.meta()["engine"], monitor.tracker.state_dict(), taken


CASES = {
    "momentum, float64": {},
    "nesterov": {"optimizer": "nesterov"},
    "sgd without momentum": {"optimizer": "plain"},
    "sgd without momentum, quotient steps between": {"optimizer": "plain", "quotient": 3},
    "dampening": {"optimizer": "dampening"},
    "float32": {"dtype": torch.float32},
    "adamw, drift only": {"optimizer": "adamw"},
    "convolutions": {"model": "vgg", "steps": 10},
    "quotient steps on the Python path": {"quotient": 3},
    "a gradient that is None": {"model": "unused"},
    "a frozen layer": {"freeze": True},
    "a non-finite step": {"poison_at": 5, "steps": 12},
    "optimizer state and parameters reloaded": {"reload_at": 9, "steps": 16},
}


@pytest.mark.parametrize("case", CASES)
def test_the_engine_logs_what_the_python_path_logs(tmp_path, case):
    """Truth: the monitor's Python path (fused_sums passes, the ConservationTracker's record and law,
    NumPy maxima), which the rest of the suite tests against definitions. Every value of every step
    agrees to float64 round-off and the tracker ends in the same state, with the law's settings
    changed by a scheduler, Nesterov, dampening, SGD without momentum, a float32 model, a law-less optimizer, convolutions,
    steps the Python path takes between engine steps, and a gradient or a step the engine refuses."""
    options = CASES[case]
    ours, switch, our_state, taken = run(tmp_path / "engine", engine=True, **options)
    theirs, off, their_state, _ = run(tmp_path / "python", engine=False, **options)
    assert off == "off: engine=False"
    if options.get("optimizer") == "nesterov":  # the tracker's Nesterov law runs in NumPy only
        assert switch.startswith("off: the tracker's law runs in NumPy") and taken == 0
    else:
        assert switch == "on"
        # every step but the quotient's (every 3rd) and the one not taken
        skipped = len(ours) // 3 if "quotient" in options else int("poison_at" in options)
        assert taken == len(ours) - skipped
    assert [set(step) for step in ours] == [set(step) for step in theirs]
    assert "charge_drift/rescale" in ours[-1] and "gradient_breaking/rescale" in ours[-1]
    for step, (mine, reference) in enumerate(zip(ours, theirs)):
        for name, value in mine.items():
            if math.isnan(reference[name]):
                assert math.isnan(value), (step, name)
            else:
                # the breaking, drift and law error are ratios to the charges' sizes: where exact they are
                # round-off (1e-16), which C (with fused multiply-adds) and NumPy round differently
                ratio = name.split("/")[0] in ("gradient_breaking", "charge_drift", "charge_law_error")
                assert math.isclose(value, reference[name], rel_tol=1e-12, abs_tol=1e-14 if ratio else 1e-300), \
                    (step, name, value, reference[name])
    assert our_state["step"] == their_state["step"] and our_state["buffers_started"] == their_state["buffers_started"]
    for key in ("discrete", "theta_buffer", "buffer_sq", "oscillator", "integral", "decay_time"):
        for block, values in our_state[key].items():
            torch.testing.assert_close(values, their_state[key][block], rtol=1e-12, atol=1e-300)
    if options.get("optimizer", "momentum") != "adamw" and options.get("dtype") is not torch.float32:
        # and against the physics: float64 with exact norms keeps the exact discrete law to round-off
        errors = [value for name, value in ours[-1].items() if name.startswith("charge_law_error/")]
        assert len(errors) >= 2 and max(errors) < 1e-9


@pytest.mark.parametrize("why,options", [
    ("no scale or rescale groups", {"linear": True}),
    ("charges recorded every step only", {"charges": 2}),
    ("engine=False", {"engine": False}),
])
def test_the_engine_says_why_it_is_off(tmp_path, why, options):
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(4, 3)) if options.get("linear") else sw.models.mlp((4, 8, 3))
    x = torch.randn(16, 4)
    opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=options.get("momentum", 0.9))
    monitor = sw.Monitor(net, opt, tmp_path / "run", example_input=x, tensorboard=False,
                         schedule=sw.Schedule(charges=options.get("charges", 1)), engine=options.get("engine", True))
    with monitor:
        assert monitor.store.meta()["engine"].startswith("off: ") and why in monitor.store.meta()["engine"]
