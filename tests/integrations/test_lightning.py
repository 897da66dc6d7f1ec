"""ShockwatchCallback in a real Lightning Trainer, against truths the callback does not compute:
the losses and gradient norms the module itself recorded, the exact discrete conservation law
(round-off in float64), Kunin's <grad L, xi> = 0 for the exact ReLU rescale symmetry, and the same
Monitor driven by a plain training loop on the same seed and data."""

import importlib
import math
import sqlite3
import sys

import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

pl = pytest.importorskip("lightning.pytorch")
# lightning 2.6 on torch 2.13: a deprecation inside Lightning's own batch handling, nothing of ours
pytestmark = pytest.mark.filterwarnings("ignore:.*LeafSpec.*")

from helpers import read_scalars

import shockwatch as sw
from shockwatch.integrations.lightning import ShockwatchCallback

_generator = torch.Generator().manual_seed(1)
X = torch.randn(320, 4, dtype=torch.float64, generator=_generator)
Y = (X[:, 0] > 0).long() + (X[:, 1] > 0).long()
BATCH = 8


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny tensors: torch's thread pool only contends for a shared machine's cores (10x slower here)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def loader():
    return DataLoader(TensorDataset(X, Y), batch_size=BATCH, shuffle=False)


class Net(pl.LightningModule):
    """An MLP with ReLU (exact rescale symmetries), SGD with momentum and weight decay. Records, on its
    own, every micro-batch loss and the gradient norm each optimizer step applied."""

    def __init__(self, dtype=torch.float64, scheduled=False, fail_at=None, manual=False, momentum=0.9):
        super().__init__()
        torch.manual_seed(0)
        self.net = sw.models.mlp((4, 16, 16, 3)).to(dtype)
        self.example_input_array = X[:BATCH].to(dtype)
        self.scheduled, self.fail_at, self.momentum = scheduled, fail_at, momentum
        self.automatic_optimization = not manual
        self.losses, self.grad_norms = [], []

    def forward(self, x):
        return self.net(x)

    def training_step(self, batch, batch_idx):
        if batch_idx == self.fail_at:
            raise RuntimeError("boom")
        x, y = batch
        loss = F.cross_entropy(self(x), y)
        self.losses.append(float(loss.detach()))
        return loss

    def on_before_optimizer_step(self, optimizer):
        self.grad_norms.append(math.sqrt(sum(float(p.grad.square().sum()) for p in self.parameters())))

    def configure_optimizers(self):
        opt = torch.optim.SGD(self.parameters(), lr=0.05, momentum=self.momentum, weight_decay=1e-3)
        if not self.scheduled:
            return opt
        schedule = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 1 / (1 + 0.2 * step))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}


def fit(module, callback, steps, ckpt_path=None, **trainer_kwargs):
    trainer = pl.Trainer(accelerator="cpu", devices=1, max_steps=steps, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, callbacks=[callback], **trainer_kwargs)
    trainer.fit(module, loader(), ckpt_path=ckpt_path)
    return trainer


def plain_run(log_dir, steps, accumulate=1, scheduled=False):
    """The same Monitor in a hand-written loop: the reference the callback must reproduce."""
    module = Net(scheduled=scheduled)
    configured = module.configure_optimizers()
    opt = configured if not scheduled else configured["optimizer"]
    schedule = None if not scheduled else configured["lr_scheduler"]["scheduler"]
    monitor = sw.Monitor(module, opt, log_dir, example_input=X[:BATCH])
    batches = iter(loader())
    for _ in range(steps):
        opt.zero_grad()
        total = 0.0
        for _ in range(accumulate):
            batch = next(batches)
            loss = module.training_step(batch, 0) / accumulate
            loss.backward()
            total = total + loss.detach()
        opt.step()
        monitor.step(total, batch=batch)
        if schedule is not None:
            schedule.step()
    monitor.close()
    return read_scalars(log_dir)


def assert_same_run(got, want):
    assert set(got) == set(want)
    for name in want:
        assert got[name].keys() == want[name].keys(), name
        for step, value in want[name].items():
            assert got[name][step] == pytest.approx(value, rel=1e-10, abs=1e-13), (name, step)


def assert_hooks_removed(trainer):
    opt = trainer.optimizers[0]
    assert not opt._optimizer_step_pre_hooks and not opt._optimizer_step_post_hooks


def assert_exact_laws(run, steps):
    laws = [name for name in run if name.startswith("charge_law_error/")]
    assert laws and all(len(run[name]) == steps and max(run[name].values()) < 1e-10 for name in laws), \
        {name: max(run[name].values()) for name in laws}
    # Kunin et al.: <grad L, xi> = 0 for the exact ReLU rescale symmetry, at the parameters the gradient
    # was taken at (it is O(1) if the gradient is read before this step's backward)
    assert max(run["gradient_breaking/rescale"].values()) < 1e-9


def test_one_row_per_step_matches_the_module_and_a_plain_loop(tmp_path):
    """The module built in float32 and cast by precision="64-true"; example_input_array (float32) cast
    with it. Truth: the module's own losses and gradient norms, the exact law, the plain loop."""
    module = Net(dtype=torch.float32)
    callback = ShockwatchCallback(tmp_path / "lightning")
    trainer = fit(module, callback, 20, precision="64-true")
    run = read_scalars(tmp_path / "lightning")
    assert sorted(run["loss"]) == list(range(1, 21))
    assert [run["loss"][s] for s in range(1, 21)] == pytest.approx(module.losses, rel=1e-15)
    assert [run["grad_norm"][s] for s in range(1, 21)] == pytest.approx(module.grad_norms, rel=1e-12)
    assert_exact_laws(run, 20)
    assert_same_run(run, plain_run(tmp_path / "plain", 20))
    assert_hooks_removed(trainer)
    assert callback.monitor is not None and callback.monitor.model is module


def test_gradient_accumulation_logs_optimizer_steps_only(tmp_path):
    """accumulate_grad_batches=2: 24 batches, 12 optimizer steps, 12 rows; each row's loss is the
    mean of the window's two training_step losses (the objective whose gradient the step applied)."""
    module = Net()
    callback = ShockwatchCallback(tmp_path / "lightning", example_input=X[:BATCH])
    trainer = fit(module, callback, 12, accumulate_grad_batches=2)
    assert len(module.losses) == 24 and len(module.grad_norms) == 12
    run = read_scalars(tmp_path / "lightning")
    assert sorted(run["loss"]) == list(range(1, 13))
    means = [(a + b) / 2 for a, b in zip(module.losses[0::2], module.losses[1::2])]
    assert [run["loss"][s] for s in range(1, 13)] == pytest.approx(means, rel=1e-14)
    assert [run["grad_norm"][s] for s in range(1, 13)] == pytest.approx(module.grad_norms, rel=1e-12)
    assert_exact_laws(run, 12)
    assert_same_run(run, plain_run(tmp_path / "plain", 12, accumulate=2))
    assert_hooks_removed(trainer)


def test_step_interval_lr_schedule(tmp_path):
    """A per-step LR schedule has stepped before on_train_batch_end: the law must still use the lr the
    update used (round-off error, the plain loop's values), not the next one."""
    module = Net(scheduled=True)
    fit(module, ShockwatchCallback(tmp_path / "lightning"), 12)
    run = read_scalars(tmp_path / "lightning")
    assert_exact_laws(run, 12)
    assert_same_run(run, plain_run(tmp_path / "plain", 12, scheduled=True))


@pytest.mark.filterwarnings("ignore:.*checkpoint that ended before the epoch ended")
def test_resuming_from_a_checkpoint(tmp_path):
    """The second fit restores global step and optimizer after on_fit_start: the monitor must start
    after that, or the restored step count reads as a closed accumulation window. Plain SGD: the
    law's state is the parameters alone (a momentum buffer restored mid-run is not modelled)."""
    first = fit(Net(momentum=0.0), ShockwatchCallback(tmp_path / "run"), 6, accumulate_grad_batches=2)
    first.save_checkpoint(tmp_path / "six.ckpt")
    module = Net(momentum=0.0)
    trainer = pl.Trainer(accelerator="cpu", devices=1, max_steps=12, accumulate_grad_batches=2, logger=False,
                         enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                         callbacks=[ShockwatchCallback(tmp_path / "run", resume=True)])
    trainer.fit(module, loader(), ckpt_path=tmp_path / "six.ckpt")
    run = read_scalars(tmp_path / "run")
    assert sorted(run["loss"]) == list(range(1, 13))
    means = [(a + b) / 2 for a, b in zip(module.losses[0::2], module.losses[1::2])]
    assert [run["loss"][s] for s in range(7, 13)] == pytest.approx(means, rel=1e-14)
    assert_exact_laws(run, 12)


@pytest.mark.filterwarnings("ignore:.*checkpoint that ended before the epoch ended")
def test_resuming_from_an_earlier_checkpoint_numbers_steps_as_lightning_does(tmp_path):
    """The store is at step 6, training resumes from the checkpoint of step 3: the steps logged
    after 3 are replaced by the resumed fit's (the store numbered them 7-9 before, beside the
    discarded ones), with a "resumed" event. Truth: trainer.global_step and the module's own losses."""
    first = fit(Net(momentum=0.0), ShockwatchCallback(tmp_path / "run"), 3)
    first.save_checkpoint(tmp_path / "three.ckpt")
    fit(Net(momentum=0.0), ShockwatchCallback(tmp_path / "run", resume=True), 6, ckpt_path=tmp_path / "three.ckpt")
    module = Net(momentum=0.0)
    trainer = fit(module, ShockwatchCallback(tmp_path / "run", resume=True), 6, ckpt_path=tmp_path / "three.ckpt")
    assert trainer.global_step == 6
    run = read_scalars(tmp_path / "run")
    assert sorted(run["loss"]) == list(range(1, 7))
    assert [run["loss"][s] for s in range(4, 7)] == pytest.approx(module.losses, rel=1e-14)
    db = sqlite3.connect(tmp_path / "run" / "run.sqlite")
    resumed = db.execute("SELECT step, message FROM events WHERE kind = 'resumed'").fetchall()
    db.close()
    # the first resume's event went with the steps it began
    assert [step for step, _ in resumed] == [4] and "3 steps logged after it" in resumed[0][1]


class SkipsNonfinite(Net):
    """Steps only on finite gradients (as AMP's GradScaler does), with a NaN loss at batch 3: the
    closure runs before optimizer.step, and Lightning counts the skipped step."""

    def training_step(self, batch, batch_idx):
        loss = super().training_step(batch, batch_idx)
        return loss * float("nan") if batch_idx == 3 else loss

    def optimizer_step(self, epoch, batch_idx, optimizer, optimizer_closure=None):
        optimizer_closure()
        if all(bool(torch.isfinite(p.grad).all()) for p in self.parameters()):
            optimizer.step()


def test_a_skipped_step_is_a_nonfinite_event_and_the_laws_go_on(tmp_path):
    module = SkipsNonfinite()
    callback = ShockwatchCallback(tmp_path / "run")
    fit(module, callback, 8)
    run = read_scalars(tmp_path / "run")
    assert sorted(run["loss"]) == list(range(1, 9)) and run["loss"][4] is None  # SQLite NULL: NaN
    events = sqlite3.connect(tmp_path / "run" / "run.sqlite").execute("SELECT step, kind FROM events").fetchall()
    assert (4, "nonfinite") in events
    laws = [name for name in run if name.startswith("charge_law_error/")]
    assert laws and all(sorted(run[name]) == [1, 2, 3, 5, 6, 7, 8] and max(run[name].values()) < 1e-10 for name in laws)


def test_exception_closes_and_keeps_the_steps_taken(tmp_path):
    module = Net(fail_at=5)
    callback = ShockwatchCallback(tmp_path / "run")
    trainer = pl.Trainer(accelerator="cpu", devices=1, max_steps=20, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, callbacks=[callback])
    with pytest.raises(RuntimeError, match="boom"):
        trainer.fit(module, loader())
    assert sorted(read_scalars(tmp_path / "run")["loss"]) == [1, 2, 3, 4, 5]
    assert_hooks_removed(trainer)


def test_unsupported_setups_and_missing_lightning(tmp_path, monkeypatch):
    with pytest.raises(ValueError, match="automatic optimisation with exactly one optimizer"):
        fit(Net(manual=True), ShockwatchCallback(tmp_path / "run"), 2)
    monkeypatch.setitem(sys.modules, "lightning", None)
    monkeypatch.setitem(sys.modules, "lightning.pytorch", None)
    monkeypatch.delitem(sys.modules, "shockwatch.integrations.lightning")
    with pytest.raises(ImportError, match="pip install lightning") as error:
        importlib.import_module("shockwatch.integrations.lightning")
    assert "\n" not in str(error.value)
