r"""The training-loop monitor: cheap symmetry-aware observables every step, written to a run store.

Every step (one pass over parameters and gradients, plus the conservation tracker's own pass):
    loss, grad_norm = |g|,
    gradient_breaking/<kind> = max_k |<xi_k, g>| / (|xi_k| |g|) over scale/rescale groups, at the
        parameters the gradient was taken at (an optimizer pre-step hook): 0 for an exact symmetry
        (Kunin et al. 2021: <grad L, xi> = 0), so it measures how broken each kind is,
    charge_drift/<kind> = max_k |Q_k(t) - Q_k(0)| / size_k(0) and, under SGD,
    charge_law_error/<kind> = max_k |Q_k - Q_k^discrete| / size_k (the exact update-rule law: any
        value above round-off is symmetry breaking the law does not model).
On a schedule (``curvature_every``, with ``loss_fn`` and the step's batch): the extreme raw and
quotient Hessian eigenvalues and the shock-step forecasts -1/(eta lambda_min) (``curvature``).
Every ``attention_every`` steps (attention models): GL-invariant logit, entropy, head-energy and
branch-balance observables beside the raw |W_Q||W_K| (``attention_observables``).
A non-finite loss or gradient is recorded as an event and the step is skipped for the laws; with
``raise_on_nonfinite=True`` it raises FloatingPointError instead. This is the first step of the
monitor (issue 6): sinks other than SQLite, Lightning/DDP and the warnings come next.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
from torch import Tensor, nn

from ..mechanics import ConservationTracker
from ..symmetry import Kind, SymmetrySet, find_symmetries
from .attention import attention_observables
from .curvature import curvature
from .store import RunStore

__all__ = ["Monitor"]

_QUADRATIC = (Kind.SCALE, Kind.RESCALE)


class Monitor:
    """``mon.step(loss)`` after each ``optimizer.step()`` (before ``zero_grad``).

    ``log_dir`` gets ``run.sqlite``; an existing run is refused unless ``resume=True``.
    ``symmetries`` or ``example_input`` (to find them) are optional: without either the monitor
    logs the raw observables only and records why.
    """

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer, log_dir: str | Path, *,
                 symmetries: SymmetrySet | None = None, example_input: Tensor | None = None,
                 charges_every: int = 1, raise_on_nonfinite: bool = False, resume: bool = False,
                 loss_fn=None, curvature_every: int | None = None, attention_every: int | None = None) -> None:
        if charges_every < 1:
            raise ValueError(f"charges_every must be >= 1, got {charges_every}")
        if curvature_every is not None and (curvature_every < 1 or loss_fn is None):
            raise ValueError(f"curvature_every must be >= 1 and needs loss_fn; got {curvature_every}, loss_fn={loss_fn}")
        if attention_every is not None and attention_every < 1:
            raise ValueError(f"attention_every must be >= 1, got {attention_every}")
        self.loss_fn, self.curvature_every, self.attention_every = loss_fn, curvature_every, attention_every
        self.model, self.optimizer = model, optimizer
        self.log_dir = Path(log_dir)
        self.store = RunStore(self.log_dir / "run.sqlite", resume=resume)
        self.raise_on_nonfinite = raise_on_nonfinite
        self._step = (self.store.last_step() or 0) if resume else 0
        self._named = list(model.named_parameters())
        if symmetries is None and example_input is not None:
            symmetries = find_symmetries(model, example_input)
        self.symmetries = symmetries
        self.tracker = None
        if symmetries is None or len(symmetries) == 0:
            why = "no symmetries given (pass symmetries= or example_input=)" if symmetries is None \
                else "find_symmetries found none in this model"
            self.store.event(self._step, "no-symmetries", f"raw observables only: {why}")
        else:
            self.tracker = ConservationTracker(model, optimizer, symmetries, record_every=charges_every)
            # the tracker records at construction: charges and sizes at the start, for the drift
            self._start = self.tracker.latest()[1]
        # <xi_k, g> needs the parameters the gradient was taken at: read them just before the step
        self._pending: dict[str, float] = {}
        self._hook = optimizer.register_step_pre_hook(self._before_step)
        self.store.set_meta({"model": type(model).__name__, "optimizer": type(optimizer).__name__,
                             "law": self.tracker.law if self.tracker else "none",
                             "symmetries": str(symmetries.counts()) if symmetries is not None else "{}"})

    def step(self, loss: Tensor | float, batch=None) -> dict[str, float]:
        """Observe the step just taken; returns what was logged. ``batch`` = (inputs, targets) feeds
        the scheduled curvature (every ``curvature_every`` steps; ignored otherwise)."""
        values = self._cheap(loss)
        due = self.curvature_every is not None and self._step % self.curvature_every == 0
        if due and batch is not None and self.symmetries is not None and "grad_norm" in values:
            found = curvature(self.model, self.loss_fn, batch, self.symmetries)
            lr = float(self.optimizer.param_groups[0]["lr"])
            scheduled = {"curvature/raw_max": found.raw_max, "curvature/raw_min": found.raw_min,
                         "curvature/quotient_max": found.quotient_max, "curvature/quotient_min": found.quotient_min,
                         "shock_steps/quotient": found.shock_steps(lr), "shock_steps/raw": found.shock_steps(lr, quotient=False)}
            self.store.log(self._step, scheduled)
            values.update(scheduled)
        if self.attention_every is not None and batch is not None and self._step % self.attention_every == 0:
            observed = attention_observables(self.model, batch[0])
            self.store.log(self._step, observed)
            values.update(observed)
        return values

    @torch.no_grad()
    def _cheap(self, loss: Tensor | float) -> dict[str, float]:
        self._step += 1
        value = float(loss.detach()) if isinstance(loss, Tensor) else float(loss)
        grads = {name: p.grad for name, p in self._named if p.grad is not None}
        grad_sq = sum(float(g.double().square().sum()) for g in grads.values())
        if not (math.isfinite(value) and math.isfinite(grad_sq)):
            message = f"loss {value}, |g|^2 {grad_sq}"
            self.store.event(self._step, "nonfinite", message)
            if self.raise_on_nonfinite:
                raise FloatingPointError(f"step {self._step}: non-finite {message}")
            self.store.log(self._step, {"loss": value})
            return {"loss": value}
        values = {"loss": value, "grad_norm": math.sqrt(grad_sq)}
        if self.tracker is not None:
            values.update(self._symmetry_observables())
        self.store.log(self._step, values)
        return values

    @torch.no_grad()
    def _before_step(self, optimizer, args, kwargs) -> None:
        self._pending = {}
        syms = self.symmetries
        if syms is None or not any(syms.of_kind(kind) for kind in _QUADRATIC):
            return
        params = {name: p.detach() for name, p in self._named}
        grads = {name: (p.grad if p.grad is not None else torch.zeros_like(p)) for name, p in self._named}
        grad_norm = math.sqrt(sum(float(g.double().square().sum()) for g in grads.values()))
        if not math.isfinite(grad_norm) or grad_norm == 0:
            return
        # |xi_k|^2 = the group's size (|theta_A|^2, |theta_A1|^2 + |theta_A2|^2) as the tracker last
        # recorded it: one step old at most, which only rescales a ratio that is ~0 or O(1)
        _, latest = self.tracker.latest()
        sizes = torch.cat([latest[kind.value]["size"] for kind in _QUADRATIC]).to(params[self._named[0][0]].device)
        inner = syms.quadratic_sums([(params, grads)])[0].abs()
        breaking = inner / (sizes.sqrt() * grad_norm).clamp(min=1e-300)
        start = 0
        for kind in _QUADRATIC:
            count = len(syms.of_kind(kind))
            if count:
                self._pending[f"gradient_breaking/{kind.value}"] = float(breaking[start:start + count].max())
            start += count

    def _symmetry_observables(self) -> dict[str, float]:
        out, self._pending = dict(self._pending), {}
        recorded_before = self.tracker.latest()[0]
        self.tracker.update()
        step, latest = self.tracker.latest()
        if step != recorded_before:  # the tracker recorded this step
            for kind, rows in latest.items():
                if rows["empirical"].numel() == 0:
                    continue
                start = self._start[kind]
                drift = (rows["empirical"] - start["empirical"]).abs() / start["size"].clamp(min=1e-300)
                out[f"charge_drift/{kind}"] = float(drift.max())
                if "discrete" in rows:
                    size = rows["size"].clamp(min=1e-300)
                    out[f"charge_law_error/{kind}"] = float(((rows["empirical"] - rows["discrete"]).abs() / size).max())
        return out

    def close(self) -> None:
        self._hook.remove()
        self.store.close()
