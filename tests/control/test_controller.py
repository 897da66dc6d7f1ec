"""The controller acts on live warnings (issue 19).

Truth: the learning rate a plain SGD step used, read back from the update itself (theta_t -
theta_{t+1} = eta g_t) and compared with CutLR's formula times the scheduler's rate; a run in
which the undone step was never taken (parameters and optimizer state equal bit for bit); the
Noether charges' first-order change along the injected noise, by central differences in float64;
the exact discrete conservation laws, which hold only if the monitor saw the rate the step used."""

import math
from dataclasses import dataclass

import pytest
import torch
import torch.nn.functional as F

import shockwatch as sw
from shockwatch.control import (
    Accumulate,
    CapLogits,
    Controller,
    CutLR,
    InjectNoise,
    SkipStep,
)
from shockwatch.monitor import EarlyWarning, RunStore
from shockwatch.monitor.warnings import Rule


@dataclass
class At(Rule):
    """Fires at the given steps (a warning of a known time, in place of a real rule)."""

    steps: tuple[int, ...] = ()

    def observe(self, step, values):
        return self._warn(step, float(values["loss"])) if step in self.steps else None


def at(*steps, signal="quotient"):
    return At("test-rule", "loss", signal, steps=steps)


def data(seed=0):
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(64, 4, generator=generator, dtype=torch.float64)
    y = (x[:, 0] > 0).long() + (x[:, 1] > 0).long()
    return x, y


def model_of(seed=0):
    torch.manual_seed(seed)
    return sw.models.mlp((4, 16, 3)).double()


def warning(step, signal="quotient", rule="test-rule"):
    return EarlyWarning(rule, signal, step, "loss", 1.0)


def test_cut_lr_scales_the_step_by_the_formula_and_the_scheduler_never_sees_it(tmp_path):
    """Plain SGD with a chainable ExponentialLR (which would compound a rate left scaled): a warning
    at step 10 cuts the rate to 0.25 for 5 steps, then re-warms over 4. The rate each step used,
    measured from its update, is 0.1 * 0.97^(t-1) * m(t - 11); the scheduler's own rate is unscaled;
    the monitor logs the rate used, and the exact discrete laws hold at every step."""
    model, (x, y) = model_of(), data()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    scheduler = torch.optim.lr_scheduler.ExponentialLR(opt, gamma=0.97)
    cut = CutLR(factor=0.25, hold=5, rewarm=4)
    controller = Controller([cut], cooldown=0)
    used = []
    with sw.Monitor(model, opt, tmp_path / "run", example_input=x, tensorboard=False, warnings=[at(10)],
                    controller=controller) as monitor:
        for step in range(1, 31):
            opt.zero_grad()
            loss = F.cross_entropy(model(x), y)
            loss.backward()
            before = [p.detach().clone() for p in model.parameters()]
            grads = [p.grad.clone() for p in model.parameters()]
            opt.step()
            delta = torch.cat([(b - p.detach()).ravel() for b, p in zip(before, model.parameters())])
            g = torch.cat([t.ravel() for t in grads])
            used.append(float(delta @ g / (g @ g)))
            monitor.step(loss)
            scheduler.step()
            assert scheduler.get_last_lr()[0] == pytest.approx(0.1 * 0.97**step, rel=1e-12)
    expected = [0.1 * 0.97 ** (t - 1) * cut.multiplier(t - 11) for t in range(1, 31)]
    assert used == pytest.approx(expected, rel=1e-10)
    assert [cut.multiplier(k) for k in range(10)] == pytest.approx([0.25] * 5 + [0.4, 0.55, 0.7, 0.85, 1.0])
    store = RunStore(tmp_path / "run" / "run.sqlite", read_only=True)
    series = store.series()
    assert series["lr"][1] == pytest.approx(expected, rel=1e-12)
    assert series["control/lr_multiplier"][1] == pytest.approx([cut.multiplier(t - 11) for t in range(1, 31)])
    laws = [name for name in series if name.startswith("charge_law_error/")]
    assert laws and all(max(series[name][1]) < 1e-10 for name in laws), {n: max(series[n][1]) for n in laws}
    assert [(s, k) for s, k, _ in store.events() if k in ("warning", "control")] == [(10, "warning"), (10, "control")]
    assert len(controller.interventions) == 1 and controller.interventions[0].step == 10
    assert not opt._optimizer_step_pre_hooks and not opt._optimizer_step_post_hooks  # close() removed them


@pytest.mark.parametrize("optimizer", ["sgd-momentum", "adamw"])
def test_skip_step_undoes_the_warned_updates_exactly(tmp_path, optimizer):
    """Warnings at steps 1, 5 and 9 undo those steps (the first: no optimizer state before it). Truth:
    the same run in which those batches were drawn but no step taken; after 12 steps the parameters
    and the optimizer state (momentum buffers; Adam's moments and step count) are equal bit for bit.
    With SGD the monitor's exact laws start again after each undo and hold."""
    x, y = data()
    undone = (1, 5, 9)

    def run(skip_by_hand, log_dir):
        model = model_of()
        opt = (torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-3) if optimizer == "sgd-momentum"
               else torch.optim.AdamW(model.parameters(), lr=0.01, weight_decay=0.1))
        controller = None if skip_by_hand else Controller([SkipStep()], cooldown=0, budget=None)
        monitor = sw.Monitor(model, opt, log_dir, example_input=x, tensorboard=False,
                             warnings=[] if skip_by_hand else [at(*undone)], controller=controller)
        for step in range(1, 13):
            batch = slice(0, 32) if step % 2 else slice(32, 64)
            opt.zero_grad()
            loss = F.cross_entropy(model(x[batch]), y[batch])
            loss.backward()
            if skip_by_hand and step in undone:
                continue
            opt.step()
            monitor.step(loss)
        monitor.close()
        return model, opt, controller

    skipped, skipped_opt, controller = run(False, tmp_path / "a")
    reference, reference_opt, _ = run(True, tmp_path / "b")
    for p, q in zip(skipped.parameters(), reference.parameters()):
        assert torch.equal(p, q)
        mine, theirs = skipped_opt.state[p], reference_opt.state[q]
        assert mine.keys() == theirs.keys()
        assert all(torch.equal(mine[key], theirs[key]) for key in mine)
    assert controller.skipped == 3 and all(i.reverted for i in controller.interventions)
    store = RunStore(tmp_path / "a" / "run.sqlite", read_only=True)
    events = [(s, k, m) for s, k, m in store.events() if k in ("control", "rebound")]
    assert [(s, k) for s, k, _ in events] == [(1, "control"), (2, "rebound"), (5, "control"), (6, "rebound"),
                                             (9, "control"), (10, "rebound")]
    assert events[0][2] == "skip-step on test-rule quotient; the step was undone"
    if optimizer == "sgd-momentum":
        series = store.series()
        laws = [name for name in series if name.startswith("charge_law_error/")]
        assert laws and all(max(series[name][1]) < 1e-10 for name in laws)


def test_inject_noise_moves_no_charge_to_first_order_and_has_the_asked_size():
    """The injected noise xi (the gradient after the controller's pre-step hook minus before) has
    |xi| = 0.5 |g|, and every Noether charge Q (rescale, translation) is stationary along it: the
    central difference (Q(theta + h xi) - Q(theta - h xi)) / 2h is ~0, where along a random
    direction of the same size it is not."""
    model, (x, y) = model_of(), data()
    symmetries = sw.find_symmetries(model, x)
    opt = torch.optim.SGD(model.parameters(), lr=0.0)  # lr 0: the parameters stay where xi was drawn
    controller = Controller([InjectNoise(scale=0.5, steps=3, seed=1)], cooldown=0, symmetries=symmetries)
    controller.attach(model, opt)
    controller(warning(0))
    seen = {}
    opt.register_step_pre_hook(lambda o, a, k: seen.update({n: p.grad.clone() for n, p in model.named_parameters()}))
    opt.zero_grad()
    F.cross_entropy(model(x), y).backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    opt.step()
    controller.close()
    noise = {n: seen[n] - grads[n] for n in grads}
    size = math.sqrt(sum(float(v.square().sum()) for v in noise.values()))
    g = math.sqrt(sum(float(v.square().sum()) for v in grads.values()))
    assert size == pytest.approx(0.5 * g, rel=1e-10)
    assert controller.values()["control/noise"] == 0.5
    params = {n: p.detach() for n, p in model.named_parameters()}
    torch.manual_seed(3)
    random = {n: torch.randn_like(v) for n, v in noise.items()}
    scale = size / math.sqrt(sum(float(v.square().sum()) for v in random.values()))

    def rate(direction, h=1e-4):
        plus = {n: params[n] + h * direction[n] for n in params}
        minus = {n: params[n] - h * direction[n] for n in params}
        return {kind: (symmetries.charges(kind, plus) - symmetries.charges(kind, minus)) / (2 * h)
                for kind in ("rescale", "translation")}

    along, across = rate(noise), rate({n: scale * v for n, v in random.items()})
    for kind in along:
        assert along[kind].abs().max() < 1e-8 * max(1.0, across[kind].abs().max()), kind
        assert across[kind].abs().max() > 1e-3, kind


def test_filters_cooldown_and_budget_count_steps():
    model = model_of()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    controller = Controller([CutLR(0.5, hold=2, rewarm=0)], signals=("quotient",), rules=("test-rule",),
                            cooldown=10, budget=2)
    controller.attach(model, opt)
    x, y = data()

    def step():
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()

    assert controller(warning(0, signal="raw")) is None  # another signal: not even counted
    assert controller(warning(0, rule="other")) is None
    assert controller(warning(0)) is not None
    for _ in range(9):
        step()
    assert controller(warning(9)) is None and controller.ignored == 1  # 9 steps after: in the cooldown
    step()
    assert controller(warning(10)) is not None  # 10 steps after
    for _ in range(20):
        step()
    assert controller(warning(30)) is None and controller.ignored == 2  # the budget of 2 is spent
    assert [i.at for i in controller.interventions] == [0, 10]
    state = controller.state_dict()
    again = Controller([CutLR(0.5, hold=2, rewarm=0)], cooldown=10, budget=2)
    again.load_state_dict(state)
    assert again.state_dict() == state
    controller.close()


def test_accumulation_is_read_by_the_loop_for_the_given_steps():
    model = model_of()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    controller = Controller([Accumulate(factor=4, steps=3)], signals=None, cooldown=0)
    controller.attach(model, opt)
    x, y = data()
    seen = [controller.accumulation]
    controller(warning(0))
    for _ in range(5):
        seen.append(controller.accumulation)
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
    assert seen == [1, 4, 4, 4, 1, 1]
    controller.close()


def test_bad_settings_are_refused_in_one_line(tmp_path):
    with pytest.raises(TypeError, match="actions must be"):
        Controller([])
    with pytest.raises(ValueError, match="each action kind at most once"):
        Controller([CutLR(), CutLR(0.5)])
    with pytest.raises(ValueError, match="0 <= factor < 1"):
        CutLR(factor=1.5)
    with pytest.raises(ValueError, match="signals must be"):
        Controller([SkipStep()], signals=("curvature",))
    with pytest.raises(ValueError, match="cap > 0"):
        CapLogits(cap=0)
    model = model_of()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(ValueError, match="InjectNoise needs the model's symmetries"):
        Controller([InjectNoise()]).attach(model, opt)
    with pytest.raises(RuntimeError, match="attach"):
        Controller([SkipStep()])(warning(1))
    with pytest.raises(TypeError, match="controller must be"):
        sw.Monitor(model, opt, tmp_path / "run", controller=object())


def test_one_signal_by_name_and_whole_steps():
    """signals="raw" was taken letter by letter ("got ('r', 'a', 'w')"); fractional hold, rewarm,
    factor or steps were accepted."""
    assert Controller([CutLR()], signals="raw").signals == ("raw",)
    for bad in (lambda: CutLR(0.3, hold=2.5), lambda: CutLR(0.3, rewarm=True), lambda: Accumulate(2.5),
                lambda: Accumulate(2, steps=1.5)):
        with pytest.raises(TypeError, match="int"):
            bad()
