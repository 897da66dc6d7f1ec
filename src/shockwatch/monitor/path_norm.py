r"""The l2 path norm of a ReLU network (Neyshabur et al. 2015), a rescale-invariant size.

    path_norm(theta)^2 = sum over input-output paths p of prod_{edges e in p} w_e^2,

where a bias is an edge from a unit that always outputs 1. For a ReLU network it is one forward pass
of the network with every parameter squared on an all-ones input: every pre-activation is then
non-negative, so each ReLU passes it unchanged and the pass sums the squared-weight products over
all paths (identity skip connections count as edges of weight 1). A rescale theta_A1 -> a theta_A1,
theta_A2 -> theta_A2 / a multiplies every path through the unit by a^2 a^-2 = 1, so the path norm is
a function on the quotient, unlike its raw counterpart |theta|.

Exact only where every non-linearity is ReLU: the models accepted are built from the modules in
``PATH_NORM_MODULES``; anything else (normalisation layers, attention, smooth activations) is
refused by ``path_norm_unsupported`` with the reason. Only leaf modules are checked: a custom
container's forward that applies a smooth function itself (F.gelu) is not seen, and its path norm
is then not the one defined above.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from torch.func import functional_call

__all__ = ["PATH_NORM_MODULES", "path_norm", "path_norm_unsupported"]

PATH_NORM_MODULES = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ReLU, nn.Flatten, nn.Identity, nn.Dropout)


def path_norm_unsupported(model: nn.Module) -> str | None:
    """None if the path norm of ``model`` is defined here, else a one-line reason."""
    # leaves only: a container's own forward (F.relu, a skip connection) cannot be inspected here
    others = sorted({type(m).__name__ for m in model.modules()
                     if next(m.children(), None) is None and not isinstance(m, PATH_NORM_MODULES)})
    if others:
        return (f"path norm is defined for ReLU networks of {', '.join(t.__name__ for t in PATH_NORM_MODULES)}; "
                f"this model has {', '.join(others)}")
    return None


@torch.no_grad()
def path_norm(model: nn.Module, input_shape: Sequence[int]) -> float:
    """The l2 path norm (module docstring) for inputs of shape ``input_shape`` (one example, no batch axis).

    Computed in float64 on squared copies of the parameters; the model's mode is restored (Dropout is
    switched off for the pass).
    """
    reason = path_norm_unsupported(model)
    if reason is not None:
        raise ValueError(reason)
    squared = {name: p.detach().double().square() for name, p in model.named_parameters()}
    was_training = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        out = functional_call(model, squared, (torch.ones((1, *input_shape), dtype=torch.float64,
                                                          device=next(iter(squared.values())).device),))
    finally:
        for module, mode in was_training:
            module.training = mode
    return float(out.sum().sqrt())
