r"""``ShockwatchCallback``: a ``shockwatch.Monitor`` inside a Lightning ``Trainer``.

    callback = ShockwatchCallback("runs/a", example_input=x)  # keyword arguments: Monitor's
    pl.Trainer(callbacks=[callback]).fit(module)                 # the run: runs/a/run.sqlite
    callback.monitor                                             # the last fit's Monitor (closed after it)

Keyword arguments go to ``Monitor`` unchanged; without ``example_input`` (or ``symmetries``) the module's
``example_input_array`` is used when it is set. Automatic optimisation with exactly one optimizer only.

What Lightning does in a training batch (lightning 2.6, ``loops/optimization/automatic.py`` and
``plugins/precision``), and how the monitor is kept to ``Monitor``'s contract:

* The closure (training_step, then ``zero_grad`` on the first batch of an accumulation window, then
  backward) runs *inside* ``optimizer.step(closure)`` (every precision but fp16 AMP), so torch's step
  pre-hooks fire before this step's gradients exist; the Monitor's pre-hook wraps the closure and
  takes its per-step pass after it. (With a GradScaler the closure runs before ``optimizer.step``.)
* Gradients are zeroed inside the next closure, so they are still there at ``on_train_batch_end``,
  where ``mon.step`` is called. Step-interval LR schedulers have stepped by then; the optimizer's
  settings as they were at the update are put back for the duration of ``mon.step`` (the conservation
  laws read lr, momentum and weight decay live).
* With ``accumulate_grad_batches = k`` the optimizer steps once per window (and on an epoch's last
  batch). A step post-hook on the optimizer says whether it really stepped; ``trainer.global_step``
  says whether Lightning closed a window (it counts steps a GradScaler skipped). ``mon.step`` is called
  once per closed window, with the window's objective: the sum of Lightning's losses in it, which are
  the training_step losses divided by k (the mean micro-batch loss for a full window), whose gradient
  the step applied. The batch given is the window's last one.
"""

from __future__ import annotations

from collections.abc import Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

try:
    import lightning.pytorch as pl
    from lightning.pytorch.utilities import move_data_to_device
except ImportError:
    raise ImportError("shockwatch.integrations.lightning needs Lightning, which is not installed: pip install lightning") from None

import torch
from torch import Tensor

from ..monitor import Monitor

__all__ = ["ShockwatchCallback"]


class ShockwatchCallback(pl.Callback):
    """Builds a ``Monitor`` on the LightningModule and its optimizer when training starts (after a
    checkpoint's training state is restored), feeds it every optimizer step, and closes it at the end
    of ``fit`` or on an exception.

    ``monitor`` is the Monitor (None before the first fit); its run store is ``log_dir/run.sqlite``.
    """

    def __init__(self, log_dir: str | Path, **monitor_kwargs: Any) -> None:
        super().__init__()
        self.log_dir = log_dir
        self.monitor_kwargs = monitor_kwargs
        self.monitor: Monitor | None = None
        self._hooks: list = []
        self._settings_at_step: list[dict] | None = None  # the param groups' settings at the last update
        self._window_loss: Tensor | None = None
        self._global_step = 0

    # ------------------------------------------------------------------------------------------
    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not pl_module.automatic_optimization or len(trainer.optimizers) != 1:
            raise ValueError(f"ShockwatchCallback supports automatic optimisation with exactly one optimizer; got "
                             f"automatic_optimization={pl_module.automatic_optimization}, {len(trainer.optimizers)} optimizers")

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # not at on_fit_start: a checkpoint's optimizer state, global step and schedulers are restored
        # after it (Trainer._run: on_fit_start, then restore_training_state), and the monitor's laws
        # start from the optimizer as it is when the monitor is built
        self._close()  # a previous fit's monitor, if a fit ended without on_fit_end
        optimizer = trainer.optimizers[0]
        # numbered as Lightning counts (a fit resumed from a checkpoint continues after its step)
        kwargs = {"start_step": trainer.global_step, **self.monitor_kwargs}
        if kwargs.get("example_input") is None and kwargs.get("symmetries") is None \
                and pl_module.example_input_array is not None:
            # as Lightning uses it: cast by the precision plugin (64-true, bf16-true), on the module's device
            example = trainer.precision_plugin.convert_input(pl_module.example_input_array)
            kwargs["example_input"] = move_data_to_device(example, pl_module.device)
        self.monitor = Monitor(pl_module, optimizer, self.log_dir, **kwargs)
        self._hooks = [optimizer.register_step_post_hook(self._after_step)]
        self._settings_at_step, self._window_loss = None, None
        self._global_step = trainer.global_step

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs, batch: Any,
                           batch_idx: int) -> None:
        if self.monitor is None:
            return
        loss = outputs.get("loss") if isinstance(outputs, Mapping) else outputs
        if isinstance(loss, Tensor):
            loss = loss.detach()
            self._window_loss = loss if self._window_loss is None else self._window_loss + loss
        settings, self._settings_at_step = self._settings_at_step, None
        closed = trainer.global_step != self._global_step
        self._global_step = trainer.global_step
        if settings is None and not closed:
            return  # accumulating: no step yet
        window_loss, self._window_loss = self._window_loss, None
        if window_loss is None:
            return  # training_step returned None throughout the window: no gradient, nothing stepped
        # a window Lightning closed without an optimizer step (a GradScaler skipped it): the Monitor
        # records that step from what it sees (non-finite gradients)
        with _settings_restored(trainer.optimizers[0], settings):
            self.monitor.step(window_loss, batch=batch)

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._close()

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        self._close()

    # ------------------------------------------------------------------------------------------
    def _after_step(self, optimizer, args, kwargs) -> None:
        self._settings_at_step = [{key: value for key, value in group.items() if key != "params"}
                                  for group in optimizer.param_groups]

    def _close(self) -> None:
        for hook in self._hooks:
            hook.remove()
        self._hooks = []
        if self.monitor is not None:
            self.monitor.close()  # idempotent; the monitor stays readable as an object


@contextmanager
def _settings_restored(optimizer: torch.optim.Optimizer, settings: list[dict] | None):
    """The param groups' settings as they were at the update, while the monitor reads them."""
    if settings is None or len(settings) != len(optimizer.param_groups):
        yield
        return
    now = [{key: group[key] for key in saved if key in group} for group, saved in zip(optimizer.param_groups, settings)]
    for group, saved in zip(optimizer.param_groups, settings):
        group.update(saved)
    try:
        yield
    finally:
        for group, current in zip(optimizer.param_groups, now):
            group.update(current)
