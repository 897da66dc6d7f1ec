"""Live warnings: the Monitor runs its rules on each step's values as it trains (issue 18).

Truth: the step a hand-injected spike sits at; the warnings a rule gives when replayed over the
stored curves (``replay``: the offline definition) against those the Monitor raised live; the
scheduler's learning rate at each step."""

import threading

import pytest
import torch
import torch.nn.functional as F

import shockwatch as sw
from shockwatch.monitor import Approach, Crossing, RunStore, warnings_in
from shockwatch.monitor.warnings import SigmaSpike, replay
from shockwatch.report import write_report


def _setup(tmp_path, **kwargs):
    torch.manual_seed(0)
    model = sw.models.mlp((4, 16, 3))
    x = torch.randn(64, 4)
    y = (x[:, 0] > 0).long() + (x[:, 1] > 0).long()
    opt = torch.optim.SGD(model.parameters(), lr=0.2)
    monitor = sw.Monitor(model, opt, tmp_path / "run", example_input=x, tensorboard=False, **kwargs)
    return model, opt, x, y, monitor


def _train(monitor, model, opt, x, y, steps, spike_at=None, scheduler=None):
    for step in range(1, steps + 1):
        opt.zero_grad()
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        # a spike in the loss the monitor is told of (the model itself unchanged)
        monitor.step(loss.item() * (50.0 if step == spike_at else 1.0))
        if scheduler is not None:
            scheduler.step()


def test_default_rules_raise_a_spike_live_as_an_event_and_through_the_hook(tmp_path):
    """The loss is 50x larger at step 30 only: the default 6-sigma detector fires there, once; the
    hook runs in the training thread with the same warning the store holds."""
    seen = []
    model, opt, x, y, monitor = _setup(tmp_path, on_warning=lambda w: seen.append((w, threading.get_ident())))
    with monitor:
        _train(monitor, model, opt, x, y, 60, spike_at=30)
    events = RunStore(tmp_path / "run" / "run.sqlite", read_only=True).events()
    stored = warnings_in(events)
    assert [(w.rule, w.signal, w.step) for w in stored] == [("spike-sigma", "raw", 30)]
    assert [w.message for w, _ in seen] == [w.message for w in stored]
    assert all(thread == threading.get_ident() for _, thread in seen)
    assert any(kind == "warning" and message.startswith("spike-sigma raw: loss = ") for _, kind, message in events)


def test_live_warnings_are_those_the_rule_gives_replayed_over_the_stored_curves(tmp_path):
    """A forecast rule on |g| and the update ratio, with the learning rate decayed by a scheduler:
    what the monitor raised live equals the rule replayed over the store; the logged lr is the one
    each step used (0.2 * 0.9^(step - 1)), though the scheduler steps after mon.step's pre-step capture."""
    rules = [Approach("grad-approach", "grad_norm", bound=0.05, rising=False, margin=None, horizon=30, log=True),
             Crossing("update-small", "update_ratio", level=0.01, refractory=5)]
    model, opt, x, y, monitor = _setup(tmp_path, warnings=rules)
    scheduler = torch.optim.lr_scheduler.ExponentialLR(opt, gamma=0.9)
    with monitor:
        _train(monitor, model, opt, x, y, 50, scheduler=scheduler)
    store = RunStore(tmp_path / "run" / "run.sqlite", read_only=True)
    series, live = store.series(), warnings_in(store.events())
    steps, lr = series["lr"]
    assert lr == pytest.approx([0.2 * 0.9 ** (s - 1) for s in steps], rel=1e-12)
    offline = [w for rule in rules for w in replay(rule, series)]
    assert sorted((w.step, w.rule) for w in live) == sorted((w.step, w.rule) for w in offline)
    # both rules fired (the update ratio every 6 steps once below 0.01: refractory 5)
    assert {w.rule for w in live} == {"grad-approach", "update-small"} and len(live) >= 3


def test_a_failing_rule_is_dropped_and_a_failing_hook_raises_after_the_step_is_written(tmp_path):
    class Broken(Crossing):
        def observe(self, step, values):
            raise KeyError("nothing here")

    def hook(warning):
        raise RuntimeError("the user's hook stops the run")

    rules = [Broken("broken", "loss"), SigmaSpike()]
    model, opt, x, y, monitor = _setup(tmp_path, warnings=rules, on_warning=hook)
    with monitor:
        with pytest.raises(RuntimeError, match="the user's hook"):
            _train(monitor, model, opt, x, y, 40, spike_at=25)
        assert [type(rule) for rule in monitor.rules] == [SigmaSpike]  # the broken rule left, the detector kept (a fresh copy)
    store = RunStore(tmp_path / "run" / "run.sqlite", read_only=True)
    kinds = [(step, kind) for step, kind, _ in store.events()]
    assert (1, "warning-rule-failed") in kinds and (25, "warning") in kinds
    assert store.last_step() == 25  # the step whose warning stopped the run is logged whole


def test_no_rules_and_bad_rules(tmp_path):
    model, opt, x, y, monitor = _setup(tmp_path, warnings=())
    with monitor:
        _train(monitor, model, opt, x, y, 40, spike_at=20)
    assert warnings_in(RunStore(tmp_path / "run" / "run.sqlite", read_only=True).events()) == []
    with pytest.raises(TypeError, match="warnings must be a sequence"):
        _setup(tmp_path / "b", warnings=[lambda step, values: None])
    with pytest.raises(TypeError, match="on_warning must be a callable"):
        _setup(tmp_path / "c", on_warning="print")


def test_report_lists_the_warnings(tmp_path):
    model, opt, x, y, monitor = _setup(tmp_path)
    with monitor:
        _train(monitor, model, opt, x, y, 40, spike_at=20)
    page = write_report(tmp_path / "run").read_text()
    assert "warnings (1)" in page and "<td>20</td><td>spike-sigma</td><td>raw</td><td>loss</td>" in page


def test_tensorboard_gets_the_warning_as_text(tmp_path):
    """Truth: TensorBoard's own reader on the files the sink wrote, against the store's event."""
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    torch.manual_seed(0)
    model = sw.models.mlp((4, 16, 3))
    x = torch.randn(64, 4)
    y = (x[:, 0] > 0).long()
    opt = torch.optim.SGD(model.parameters(), lr=0.2)
    with sw.Monitor(model, opt, tmp_path / "run", example_input=x) as monitor:
        _train(monitor, model, opt, x, y, 40, spike_at=25)
    stored = warnings_in(RunStore(tmp_path / "run" / "run.sqlite", read_only=True).events())
    accumulator = EventAccumulator(str(tmp_path / "run" / "tensorboard"))
    accumulator.Reload()
    texts = accumulator.Tensors("events/warning/text_summary")
    assert [(t.step, t.tensor_proto.string_val[0].decode()) for t in texts] == [(w.step, w.message) for w in stored]
    assert [w.step for w in stored] == [25]


def test_default_rules_look_four_samples_of_the_sparsest_schedule_ahead(tmp_path):
    """The trend rules' horizon is 4 periods of the sparsest forecasting schedule (50 at least): the
    update curvature's period counts like the curvature's and the attention's."""
    model = sw.models.mlp((4, 8, 3))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    for schedule, horizon in ((sw.Schedule(update_curvature=30), 120), (sw.Schedule(attention=5), 50),
                              (sw.Schedule(curvature=20, update_curvature=40), 160)):
        with sw.Monitor(model, opt, tmp_path / f"run{horizon}", tensorboard=False, schedule=schedule,
                        loss_fn=F.cross_entropy) as monitor:
            horizons = {rule.horizon for rule in monitor.rules if isinstance(rule, Approach)}
        assert horizons == {horizon}
