"""Deferred mode (``Monitor(deferred=True)``, the default on a GPU): the step's sums stay where they
were computed and are read at each flush. Truth: the same run observed step by step (the default on
the CPU) logs the same values at every step; and no Python-level host read of a tensor happens inside
a deferred step (checked here on the CPU through the eager torch path a GPU takes)."""

import math

import pytest
import torch
from torch import nn

import shockwatch as sw
from shockwatch.monitor import Schedule
from shockwatch.monitor.store import RunStore
from shockwatch.symmetry import _native


class Net(nn.Module):
    """Scale (the LayerNorm'd layer), rescale (ReLU units) and translation (the logits) symmetries."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.norm, self.b, self.c = nn.Linear(6, 12), nn.LayerNorm(12, elementwise_affine=False), \
            nn.Linear(12, 10), nn.Linear(10, 4)

    def forward(self, x):
        return self.c(torch.relu(self.b(self.norm(self.a(x)))))


def _run(tmp_path, name: str, *, optimizer: str, steps: int = 23, nonfinite_at: int | None = None, **options):
    """Train ``Net`` (float64) ``steps`` steps under a monitor; the store's series and events."""
    torch.manual_seed(0)
    model = Net().double()
    x, y = torch.randn(32, 6, dtype=torch.float64), torch.randint(0, 4, (32,))
    if optimizer == "sgd":
        opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-3)
    else:
        opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=1e-2)
    scheduler = torch.optim.lr_scheduler.LambdaLR(opt, lambda k: 1.0 / (1 + 0.1 * k))
    monitor = sw.Monitor(model, opt, tmp_path / name, example_input=x, tensorboard=False,
                         schedule=Schedule(charges=1, quotient=5, quotient_budget=None), warnings=(), **options)
    for step in range(1, steps + 1):
        loss = nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        if step == nonfinite_at:
            model.a.weight.grad[0, 0] = math.inf
        opt.step()
        scheduler.step()  # before mon.step: the laws must read the rate the step used
        monitor.step(loss)
    monitor.close()
    with RunStore(tmp_path / name / "run.sqlite", read_only=True) as store:
        return store.series(), store.events()


@pytest.mark.parametrize("optimizer", ["sgd", "adamw"])
def test_deferred_logs_what_step_by_step_logs(tmp_path, optimizer):
    """Every value at every step, deferred with flushes every 7 steps against step by step: equal to
    1e-12 relative (the translation charges are summed by torch there, by NumPy here), including
    the exact discrete law's error under SGD with momentum (a law that reads each step's rate and
    momentum buffer: a mix-up of steps would show at once), and the same events."""
    now, now_events = _run(tmp_path, "now", optimizer=optimizer, deferred=False)
    later, later_events = _run(tmp_path, "later", optimizer=optimizer, deferred=True, flush_every=7)
    assert set(now) == set(later)
    if optimizer == "sgd":
        assert max(now["charge_law_error/rescale"][1]) < 1e-10  # the law holds: the comparison is sharp
    for name, (steps, values) in now.items():
        assert later[name][0] == steps, name
        for a, b in zip(values, later[name][1]):
            assert a == pytest.approx(b, rel=1e-12, abs=1e-300), name
    assert [(s, k) for s, k, _ in now_events] == [(s, k) for s, k, _ in later_events]


def test_a_non_finite_gradient_is_found_at_its_step(tmp_path):
    """An infinite gradient at step 9 of 12, deferred: the first "nonfinite" event carries step 9
    (the optimizer applied it, so every later step is NaN too) and the laws skip those steps as step
    by step they do (the same events, the same steps logged); with raise_on_nonfinite the flush raises
    FloatingPointError naming step 9, at a step (flush_every 4) and at close() (flush_every 64), after
    the store is closed."""
    now, now_events = _run(tmp_path, "now", optimizer="sgd", steps=12, nonfinite_at=9, deferred=False)
    later, later_events = _run(tmp_path, "later", optimizer="sgd", steps=12, nonfinite_at=9, deferred=True)
    assert [s for s, k, _ in later_events if k == "nonfinite"] == [9, 10, 11, 12]
    assert [(s, k) for s, k, _ in now_events] == [(s, k) for s, k, _ in later_events]
    assert now["grad_norm"][0] == later["grad_norm"][0] and now["param_norm"][0] == later["param_norm"][0]
    for every in (4, 64):
        with pytest.raises(FloatingPointError, match="step 9"):
            _run(tmp_path, f"raises{every}", optimizer="sgd", steps=12, nonfinite_at=9, deferred=True,
                 raise_on_nonfinite=True, flush_every=every)


def test_a_deferred_step_reads_nothing_on_the_host(tmp_path, monkeypatch):
    """Through the eager torch path (the C kernel off, as on a GPU), a deferred step that does not
    flush calls none of item, float, int, bool, tolist, numpy or cpu on a tensor (each a device sync
    on a GPU): patched to raise for steps 2-5 of a run flushing every 6 (the quotient solve, a host
    routine, off). The flush at step 6 then logs all six steps."""
    monkeypatch.setattr(_native, "library", lambda: None)
    torch.manual_seed(0)
    model = Net()
    x, y = torch.randn(16, 6), torch.randint(0, 4, (16,))
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    monitor = sw.Monitor(model, opt, tmp_path / "run", example_input=x, tensorboard=False, warnings=(),
                         schedule=Schedule(quotient=None), deferred=True, flush_every=6)

    def refuse(*args, **kwargs):
        raise AssertionError("a host read inside a deferred step")

    for step in range(1, 7):
        loss = nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        with monkeypatch.context() as patch:
            if 2 <= step <= 5:
                for method in ("item", "__float__", "__int__", "__bool__", "tolist", "numpy", "cpu"):
                    patch.setattr(torch.Tensor, method, refuse)
            opt.step()
            assert monitor.step(loss) == {}
    assert monitor.flush() == {}  # the sixth step flushed them
    with RunStore(tmp_path / "run" / "run.sqlite", read_only=True) as store:
        assert store.scalars("charge_law_error/rescale")[0] == [1, 2, 3, 4, 5, 6]
        assert max(store.scalars("charge_law_error/rescale")[1]) < 1e-4
    monitor.close()


def test_deferred_options_are_checked(tmp_path):
    model = Net()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(ValueError, match="flush_every"):
        sw.Monitor(model, opt, tmp_path / "a", flush_every=0)
    with pytest.raises(TypeError, match="deferred"):
        sw.Monitor(model, opt, tmp_path / "b", deferred="yes")
    assert sw.Monitor(model, opt, tmp_path / "c", tensorboard=False).deferred is False  # the CPU default


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_a_deferred_step_does_not_synchronise_on_a_gpu(tmp_path):
    """On a GPU deferred is the default, and torch's synchronisation check (set_sync_debug_mode
    "error": any op that waits for the device raises) passes steps 2-3 of a run flushing every 4;
    the values then equal those logged step by step on the same GPU (float64, 1e-10)."""
    def run(name, **options):
        torch.manual_seed(0)
        model = Net().double().cuda()
        x, y = torch.randn(32, 6, dtype=torch.float64).cuda(), torch.randint(0, 4, (32,)).cuda()
        opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-3)
        monitor = sw.Monitor(model, opt, tmp_path / name, example_input=x, tensorboard=False, warnings=(),
                             schedule=Schedule(quotient=None), flush_every=4, **options)
        for step in range(1, 9):
            loss = nn.functional.cross_entropy(model(x), y)
            opt.zero_grad()
            loss.backward()
            checked = monitor.deferred and step in (2, 3, 6, 7)
            torch.cuda.set_sync_debug_mode("error" if checked else 0)
            try:
                opt.step()
                monitor.step(loss)
            finally:
                torch.cuda.set_sync_debug_mode(0)
        deferred = monitor.deferred
        monitor.close()
        with RunStore(tmp_path / name / "run.sqlite", read_only=True) as store:
            return deferred, store.series()

    deferred, later = run("later")
    assert deferred
    _, now = run("now", deferred=False)
    for name, (steps, values) in now.items():
        assert later[name][0] == steps
        assert later[name][1] == pytest.approx(values, rel=1e-10, abs=1e-300), name


def test_steps_held_are_written_when_the_interpreter_exits_without_close(tmp_path):
    """A script that trains 5 deferred steps (flush_every 64) and exits without close(): the 5 steps
    are in its run store (an atexit flush), read back by a new process."""
    import subprocess
    import sys
    import textwrap

    script = textwrap.dedent(f"""
        import torch
        from torch import nn
        import shockwatch as sw
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
        x, y = torch.randn(16, 4), torch.randint(0, 3, (16,))
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        mon = sw.Monitor(model, opt, {str(tmp_path / 'run')!r}, example_input=x, tensorboard=False, deferred=True)
        for _ in range(5):
            loss = nn.functional.cross_entropy(model(x), y)
            opt.zero_grad(); loss.backward(); opt.step()
            mon.step(loss)
        """)
    subprocess.run([sys.executable, "-c", script], check=True, timeout=300)
    with RunStore(tmp_path / "run" / "run.sqlite", read_only=True) as store:
        assert store.scalars("loss")[0] == [1, 2, 3, 4, 5]
        assert store.scalars("charge_law_error/rescale")[0] == [1, 2, 3, 4, 5]
