r"""Soft-capped attention logits for any model, with no change to its code.

    s_ij  ->  c tanh(s_ij / c)          (Gemma 2's attention soft-cap; c > 0 the cap)

applied to every attention softmax the model computes while the cap is on: the explicit form
``softmax(scores, dim=-1)`` on a tensor of four or more dimensions (batch, heads, queries, keys),
as eager attention implementations write it, and ``F.scaled_dot_product_attention``, which is
recomputed in the math form with the cap (scale, causal or given mask, grouped-query heads and
dropout as the call asks). Masked entries (-inf, or the dtype's most negative number that
Hugging Face adds as a mask) stay masked. The cap is a ``TorchFunctionMode`` entered by a forward
pre-hook on the root module and left by its forward hook (``always_call``: also when the forward
raises), so it applies in a plain loop, under Lightning and under the Hugging Face Trainer alike,
and to nothing outside the model's forward.

A capped logit has |c tanh(s / c)| < c, so softmax weights within a row differ by at most a factor
e^{2c}: the attention entropy cannot collapse below what that allows, which is why capping is a fix
for attention-logit growth (Wortsman et al. 2023 compare it with qk-layernorm). For |s| << c it is
the identity to O(s^3 / c^2).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode

__all__ = ["LogitCapMode", "capped_attention", "soft_cap"]


def soft_cap(scores: Tensor, cap: float) -> Tensor:
    """c tanh(s / c) elementwise, with masked entries (-inf, or below half the dtype's lowest value:
    an additive mask) left as they are."""
    masked = scores <= torch.finfo(scores.dtype).min / 2 if scores.is_floating_point() else None
    capped = cap * torch.tanh(scores / cap)
    return capped if masked is None else torch.where(masked, scores, capped)


def capped_attention(query: Tensor, key: Tensor, value: Tensor, attn_mask: Tensor | None = None,
                     dropout_p: float = 0.0, is_causal: bool = False, scale: float | None = None,
                     enable_gqa: bool = False, *, cap: float) -> Tensor:
    """``F.scaled_dot_product_attention``'s result with the logits soft-capped: softmax(c tanh(s / c)
    + mask) V, s = Q K^T scale (scale 1/sqrt(d) by default); the same arguments."""
    d = query.size(-1)
    scale = 1.0 / math.sqrt(d) if scale is None else scale
    if enable_gqa and key.size(-3) != query.size(-3):  # grouped-query: each key/value head serves a group
        repeat = query.size(-3) // key.size(-3)
        key, value = key.repeat_interleave(repeat, dim=-3), value.repeat_interleave(repeat, dim=-3)
    scores = soft_cap(query @ key.transpose(-2, -1) * scale, cap)
    length, keys = query.size(-2), key.size(-2)
    if is_causal:
        causal = torch.ones(length, keys, dtype=torch.bool, device=query.device).tril(diagonal=keys - length)
        scores = scores.masked_fill(~causal, float("-inf"))
    if attn_mask is not None:
        scores = scores.masked_fill(~attn_mask, float("-inf")) if attn_mask.dtype == torch.bool else scores + attn_mask
    weights = torch.softmax(scores, dim=-1)
    if dropout_p > 0:
        weights = F.dropout(weights, p=dropout_p, training=True)
    return weights @ value


_SOFTMAX = {F.softmax, torch.softmax, Tensor.softmax}


class LogitCapMode(TorchFunctionMode):
    """While active: attention softmaxes and ``scaled_dot_product_attention`` with logits capped at
    ``cap`` (module docstring); ``calls`` counts the attention computations it capped."""

    def __init__(self, cap: float) -> None:
        super().__init__()
        if not (math.isfinite(cap) and cap > 0):
            raise ValueError(f"cap must be a positive number, got {cap}")
        self.cap, self.calls = float(cap), 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is F.scaled_dot_product_attention:
            self.calls += 1
            return capped_attention(*args, **kwargs, cap=self.cap)
        if func in _SOFTMAX:
            scores = args[0]
            dim = kwargs.get("dim", args[1] if len(args) > 1 else None)
            if isinstance(scores, Tensor) and scores.dim() >= 4 and dim in (-1, scores.dim() - 1):
                self.calls += 1
                return func(soft_cap(scores, self.cap), *args[1:], **kwargs)
        return func(*args, **kwargs)


class ForwardCap:
    """Holds a ``LogitCapMode`` on ``model``'s forward passes while ``cap`` is not None (set it any
    time; ``remove()`` takes the hooks off)."""

    def __init__(self, model: nn.Module) -> None:
        self.cap: float | None = None
        self._active: list[LogitCapMode] = []
        self._handles = [model.register_forward_pre_hook(self._enter),
                         model.register_forward_hook(self._leave, always_call=True)]

    def _enter(self, module, args) -> None:
        if self.cap is None:
            self._active.append(None)
            return
        mode = LogitCapMode(self.cap)
        mode.__enter__()
        self._active.append(mode)

    def _leave(self, module, args, output) -> None:
        mode = self._active.pop() if self._active else None
        if mode is not None:
            mode.__exit__(None, None, None)

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []
