r"""``ShockwatchCallback``: a ``shockwatch.Monitor`` inside the Hugging Face ``Trainer``.

    from shockwatch.integrations.transformers import ShockwatchCallback
    trainer = Trainer(model, args, train_dataset=data, callbacks=[ShockwatchCallback("runs/a")])
    trainer.train()                          # the run: runs/a/run.sqlite
    trainer.callback_handler.callbacks[-1].monitor   # the Monitor (closed after train)

Keyword arguments go to ``Monitor`` unchanged. Without ``example_input`` or ``symmetries`` the first
training batch (its tensors but ``labels``) is the example from which the symmetries are found, on
the model the Trainer trains (unwrapped: the callback receives ``model`` as the Trainer holds it).

What the Trainer does in a training step (transformers 5, ``Trainer._inner_training_loop``), and
how the monitor is kept to ``Monitor``'s contract:

* Each micro-batch runs ``training_step``: ``compute_loss`` (the model's forward with ``labels``,
  returning ``.loss``), divided by the number of micro-batches in the window unless the loss was
  already normalised over the window (the model received ``num_items_in_batch``), then backward.
  A forward hook on the model reads each micro-batch's ``.loss`` (training mode, gradients on) and
  whether ``num_items_in_batch`` was passed; the window's objective, whose gradient the step
  applies, is their sum in the second case and their mean in the first. A ``compute_loss_func`` or
  a ``compute_loss`` override that does not return the forward's ``.loss`` is not seen: pass
  ``loss_from=`` a function of the model's outputs instead (see ``__init__``).
* Gradient clipping, then ``on_pre_optimizer_step`` (the Monitor is built here at the first step,
  so its optimizer pre-step hook sees the update), ``optimizer.step()`` (Accelerate's
  ``AcceleratedOptimizer``; the Monitor unwraps it), ``on_optimizer_step`` (gradients still there,
  the scheduler not yet stepped: ``mon.step`` is called here), then the scheduler and ``zero_grad``.
* Steps Accelerate skipped (fp16 overflow) are recorded by the Monitor from what it sees.
* The store is closed at ``on_train_end``; a later ``train()`` call builds a new Monitor, which
  refuses to overwrite ``log_dir`` unless ``resume=True`` is passed (an existing run is refused when
  the callback is made, too). Steps are numbered as the Trainer counts them (``state.global_step``,
  unless ``start_step`` is given): ``train(resume_from_checkpoint=...)`` with ``resume=True``
  continues after the checkpoint's step, and the steps logged after it are removed.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

try:
    from transformers import TrainerCallback
except ImportError:
    raise ImportError("shockwatch.integrations.transformers needs transformers, which is not installed: "
                      "pip install 'shockwatch[hf]'") from None

import torch
from torch import Tensor, nn

from ..monitor import Monitor, RunStore, Schedule
from ..monitor.monitor import check_log_dir
from ..symmetry import ExampleInputError

__all__ = ["ShockwatchCallback"]


class ShockwatchCallback(TrainerCallback):
    """Builds a ``Monitor`` on the Trainer's model and optimizer at the first optimizer step, feeds
    it every optimizer step with the loss the step minimised, and closes it when training ends.

    ``loss_from``: a function of the model's forward output returning the micro-batch loss (default:
    ``output.loss``, or ``output["loss"]``); use it with a custom ``compute_loss``.
    ``monitor`` is the Monitor (None before the first step); its run store is ``log_dir/run.sqlite``.
    """

    def __init__(self, log_dir: str | Path, *, loss_from: Callable[[Any], Tensor] | None = None,
                 **monitor_kwargs: Any) -> None:
        super().__init__()
        if loss_from is not None and not callable(loss_from):
            raise TypeError(f"loss_from must be a function of the model's output, got {type(loss_from).__name__}")
        _check_options(log_dir, monitor_kwargs)
        self.log_dir = log_dir
        self.monitor_kwargs = monitor_kwargs
        self.loss_from = loss_from or _output_loss
        self.monitor: Monitor | None = None
        self._model: nn.Module | None = None
        self._hook = None
        self._losses: list[Tensor] = []  # the window's micro-batch losses, detached
        self._normalised = False  # the model received num_items_in_batch: losses already over the window
        self._first_batch: dict | None = None  # the first training batch's tensors, labels included

    # ------------------------------------------------------------------------------------------
    def on_train_begin(self, args, state, control, model: nn.Module | None = None, **kwargs) -> None:
        self._close()
        if model is None:
            raise ValueError("ShockwatchCallback needs the Trainer's model (the Trainer passes it to callbacks)")
        self._model = model
        self._losses, self._first_batch = [], None
        self._hook = model.register_forward_hook(self._record, with_kwargs=True)

    def on_pre_optimizer_step(self, args, state, control, optimizer=None, **kwargs) -> None:
        if self.monitor is not None or self._model is None:
            return
        if optimizer is None:
            raise ValueError("ShockwatchCallback needs the Trainer's optimizer (the Trainer passes it to callbacks)")
        # numbered as the Trainer counts (a run resumed from a checkpoint continues after its step)
        options = {"start_step": state.global_step, **self.monitor_kwargs}
        unlabelled = {key: value for key, value in (self._first_batch or {}).items() if key != "labels"}
        if options.get("example_input") is not None or options.get("symmetries") is not None or not unlabelled:
            self.monitor = Monitor(self._model, optimizer, self.log_dir, **options)
            return
        # the batch without labels first (the model's own inputs); a model that cannot run without
        # them (an encoder-decoder building its decoder inputs from the labels) gets them too
        try:
            self.monitor = Monitor(self._model, optimizer, self.log_dir, **options, example_input=unlabelled)
        except ExampleInputError as without:
            try:
                self.monitor = Monitor(self._model, optimizer, self.log_dir, **options, example_input=self._first_batch)
            except ExampleInputError:
                raise ExampleInputError(f"{without} (with the labels too); pass example_input= (the model's inputs) or "
                                        "symmetries= to ShockwatchCallback") from None

    def on_optimizer_step(self, args, state, control, **kwargs) -> None:
        if self.monitor is None:
            return
        losses, self._losses = self._losses, []
        if not losses:
            raise ValueError("ShockwatchCallback saw no loss in this step's forward passes: the model's output has "
                             "no .loss (train with labels) or a custom compute_loss hides it; pass loss_from=")
        total = torch.stack([loss.to(torch.float64) for loss in losses]).sum()
        self.monitor.step(total if self._normalised else total / len(losses))

    def on_train_end(self, args, state, control, **kwargs) -> None:
        self._close()

    # ------------------------------------------------------------------------------------------
    def _record(self, module: nn.Module, args: tuple, kwargs: dict, output: Any) -> None:
        if not (module.training and torch.is_grad_enabled()):
            return  # evaluation and generation passes
        loss = self.loss_from(output)
        if not isinstance(loss, Tensor):
            return
        self._losses.append(loss.detach())
        self._normalised = kwargs.get("num_items_in_batch") is not None
        if self._first_batch is None:
            self._first_batch = {key: value.detach() for key, value in kwargs.items() if isinstance(value, Tensor)}

    def _close(self) -> None:
        if self._hook is not None:
            self._hook.remove()
            self._hook = None
        if self.monitor is not None:
            self.monitor.close()  # idempotent; the monitor stays readable as an object


def _check_options(log_dir, options: dict) -> None:
    """What the Monitor would refuse at the first optimizer step, refused when the callback is made:
    a keyword it does not take, a log_dir that is not a path (or is a file), the schedules that need
    a batch (the Trainer gives callbacks none: run those in a plain loop with ``mon.step(loss, batch)``)."""
    accepted = [name for name, p in inspect.signature(Monitor).parameters.items() if p.kind is p.KEYWORD_ONLY]
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise TypeError(f"ShockwatchCallback got {unknown[0]!r}, which Monitor does not take; its options: {', '.join(accepted)}")
    check_log_dir(log_dir)
    RunStore.check_path(Path(log_dir) / "run.sqlite", resume=options.get("resume", False) is True)
    schedule = options.get("schedule")
    if schedule is not None and not isinstance(schedule, Schedule):
        raise TypeError(f"schedule must be a shockwatch.monitor.Schedule, got {type(schedule).__name__}")
    needs = [name for name in ("curvature", "update_curvature") if schedule is not None and getattr(schedule, name)]
    if needs:
        raise ValueError(f"schedule.{needs[0]} needs each step's batch, which the Trainer does not give callbacks: "
                         "leave it out here, or sample it in a plain loop with mon.step(loss, batch=(inputs, targets))")


def _output_loss(output: Any) -> Tensor | None:
    """The micro-batch loss in a model's output: ``.loss`` (a ``ModelOutput``) or ``["loss"]``."""
    loss = getattr(output, "loss", None)
    if loss is None and isinstance(output, Mapping):
        loss = output.get("loss")
    return loss
