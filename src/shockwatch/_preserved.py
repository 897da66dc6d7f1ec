"""``preserved(model)``: what a routine that runs the model may disturb, put back as it was found.

A routine that runs the model (an attention pass, a Hessian's forward) would otherwise leave the
global random state advanced (Dropout draws), BatchNorm's running statistics and counters updated
(a forward in train mode), and modules switched between train and eval: each changes the training
run the monitor is only meant to watch.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch
from torch import nn

__all__ = ["preserved"]


@contextmanager
def preserved(model: nn.Module):
    """On exit, however it is left: every module's train/eval flag, every buffer's values and the
    global torch RNG (the CPU generator, and the CUDA generators of the devices the model is on) as
    they were on entry. Parameters are not copied: the routines it wraps never write them."""
    modes = [(module, module.training) for module in model.modules()]
    buffers = [(b, b.detach().clone()) for b in model.buffers()]
    devices = sorted({t.device.index or 0 for t in (*model.parameters(), *model.buffers()) if t.device.type == "cuda"})
    with torch.random.fork_rng(devices=devices):
        try:
            yield
        finally:
            for module, mode in modes:
                module.training = mode
            with torch.no_grad():
                for buffer, saved in buffers:
                    if buffer.shape == saved.shape and buffer.dtype == saved.dtype:
                        buffer.copy_(saved)
