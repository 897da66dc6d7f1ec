r"""Acting on a live warning: the third use of the quotient picture (Miyagawa 2026, §6).

Theory the actions follow. Thm 2.2 reduces SGD, theta_{n+1} = theta_n - eta (grad L + M_{n+1}), to a
diffusion on the quotient, dY = b(Y) dt + sqrt(eta) A(Y)^{1/2} dW with t = eta n; §3 identifies the
heat time of the local-entropy smoothing with it, eta n = t = nu tau, so the viscosity of the
quotient Hamilton-Jacobi equation (Thm 3.1)

    d_tau u + |grad u|^2 / 2 = (nu / 2) Delta_M u

is the diffusion's temperature, nu ~ eta s, with s the gradient noise scale (the trace of A per
unit of drift: ~ 1/batch size for minibatch noise). Under the one-dimensional closure the gradient
v = d_s u obeys Burgers, d_tau v + v d_s v = (nu / 2) d_ss v (Thm 4.2): a shock forms at
tau* = -1 / inf U'' (Thm 4.3) with a layer of width ~ nu. So in the paper's picture

    raising nu (more noise, a larger rate)   widens the layer: the transition is smoothed;
    lowering nu                              steepens it, and with tau = eta n / nu = n / s it comes
                                             after n* = s tau* steps: sooner as the noise drops.

The learning rate enters twice, and the second is outside the continuous picture: a cut lowers nu
(steepening the layer) but also moves the discrete step below its stability bound, eta lambda < 2
for gradient descent, eta lambda(P^{-1} H) < 2 (1 + beta_1) / (1 - beta_1) ... for Adam's
preconditioned curvature (Cohen et al.). Loss spikes of Transformers are of the second kind, and the
cut (with a re-warmup, as restarts in production do) is the action for them; the noise actions move
nu alone. Which effect wins on a given run is measured, not assumed (``experiments/control.py``).

Actions (each a frozen dataclass; all triggered together by one accepted warning):
    CutLR(factor, hold, rewarm)   every param group's rate times m(k), k steps after the warning:
                                  m = factor for k < hold, then linear back to 1 over ``rewarm`` steps
    SkipStep()                    undo the update of the step whose values raised the warning
                                  (parameters and optimizer state as they were before it): the
                                  production response to a spike, here on any warning. Costs a copy
                                  of the parameters and the optimizer state every step.
    CapLogits(cap, steps)         attention logits soft-capped, s -> cap tanh(s / cap), for ``steps``
                                  steps (None: for the rest of the run); ``logit_cap.py``
    InjectNoise(scale, steps)     Gaussian noise along horizontal directions only (orbit directions
                                  removed, ``quotient.horizontal_projection``), of norm ``scale`` x
                                  |g|, added to the gradient before each step for ``steps`` steps:
                                  raises nu on the quotient and leaves every Noether charge's
                                  gradient-driven motion as it was
    Accumulate(factor, steps)     ``controller.accumulation`` = factor for ``steps`` steps, for a plain
                                  loop that reads it (micro-batches per step: s / factor, nu / factor);
                                  Lightning and the Trainer fix their accumulation at the start

Bounds: warnings are accepted from ``signals`` (and ``rules``, if given); after an accepted one,
others are ignored for ``cooldown`` steps; at most ``budget`` are acted on in a run. What was done
is in ``interventions``; ``values()`` is logged by the Monitor every step (``control/...``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from ..mechanics.tracker import unwrapped_optimizer
from ..monitor.warnings import SIGNALS, EarlyWarning
from ..quotient import horizontal_projection
from ..symmetry import SymmetrySet
from .logit_cap import ForwardCap

__all__ = ["Accumulate", "Action", "CapLogits", "Controller", "CutLR", "InjectNoise", "Intervention", "SkipStep"]


class Action:
    """One response to an accepted warning (the subclasses); ``name`` is its word in the record."""

    name = "action"


@dataclass(frozen=True)
class CutLR(Action):
    """m(k) = factor for k < hold, factor + (1 - factor)(k - hold + 1)/(rewarm + 1) while ramping, 1 after;
    k = optimizer steps taken since the warning (the first step after it has k = 0)."""

    factor: float = 0.3
    hold: int = 20
    rewarm: int = 50
    name = "cut-lr"

    def __post_init__(self) -> None:
        if any(isinstance(n, bool) or not isinstance(n, int) for n in (self.hold, self.rewarm)):
            raise TypeError(f"CutLR's hold and rewarm count steps: ints, got hold={self.hold!r}, rewarm={self.rewarm!r}")
        if not (0 <= self.factor < 1) or self.hold < 0 or self.rewarm < 0 or (self.hold == 0 and self.rewarm == 0):
            raise ValueError(f"CutLR needs 0 <= factor < 1, hold >= 0, rewarm >= 0, not both 0; got factor={self.factor}, "
                             f"hold={self.hold}, rewarm={self.rewarm}")

    def multiplier(self, k: int) -> float:
        if k < 0:
            return 1.0
        if k < self.hold:
            return self.factor
        ramp = k - self.hold + 1
        return 1.0 if ramp > self.rewarm else self.factor + (1 - self.factor) * ramp / (self.rewarm + 1)


@dataclass(frozen=True)
class SkipStep(Action):
    """Undo the warned step's update (parameters and optimizer state)."""

    name = "skip-step"


@dataclass(frozen=True)
class CapLogits(Action):
    cap: float = 30.0
    steps: int | None = None  # None: for the rest of the run
    name = "cap-logits"

    def __post_init__(self) -> None:
        if not (math.isfinite(self.cap) and self.cap > 0) or (self.steps is not None and self.steps < 1):
            raise ValueError(f"CapLogits needs cap > 0 and steps >= 1 or None; got cap={self.cap}, steps={self.steps}")


@dataclass(frozen=True)
class InjectNoise(Action):
    scale: float = 0.5  # the noise's norm relative to the gradient's
    steps: int = 50
    seed: int = 0
    name = "inject-noise"

    def __post_init__(self) -> None:
        if not (math.isfinite(self.scale) and self.scale > 0) or self.steps < 1:
            raise ValueError(f"InjectNoise needs scale > 0 and steps >= 1; got scale={self.scale}, steps={self.steps}")


@dataclass(frozen=True)
class Accumulate(Action):
    factor: int = 2
    steps: int = 50
    name = "accumulate"

    def __post_init__(self) -> None:
        if any(isinstance(n, bool) or not isinstance(n, int) for n in (self.factor, self.steps)):
            raise TypeError(f"Accumulate's factor and steps are ints (micro-batches, steps), got factor={self.factor!r}, "
                            f"steps={self.steps!r}")
        if self.factor < 1 or self.steps < 1:
            raise ValueError(f"Accumulate needs factor >= 1 and steps >= 1; got factor={self.factor}, steps={self.steps}")


@dataclass(frozen=True)
class Intervention:
    """One accepted warning and what was done: ``step`` the warning's step, ``at`` the optimizer steps
    taken when it arrived (the actions count from there), ``reverted`` whether that step was undone."""

    step: int
    at: int
    warning: EarlyWarning
    actions: tuple[str, ...]
    reverted: bool = False


def _check_actions(actions: Sequence[Action]) -> tuple[Action, ...]:
    actions = tuple(actions)
    if not actions or not all(isinstance(a, Action) for a in actions):
        raise TypeError("actions must be a non-empty sequence of CutLR, SkipStep, CapLogits, InjectNoise, Accumulate; "
                        f"got {[type(a).__name__ for a in actions] or 'none'}")
    kinds = [type(a) for a in actions]
    if len(set(kinds)) != len(kinds):
        raise ValueError(f"each action kind at most once, got {[a.name for a in actions]}")
    return actions


def _copy_state(state: Mapping, into: dict | None) -> dict:
    """A copy of one parameter's optimizer state: tensors copied into ``into``'s tensors of the same
    shape, dtype and device where it has them (no allocation), cloned otherwise; other values as they are."""
    into = {} if into is None else into
    for key in [key for key in into if key not in state]:
        del into[key]
    for key, value in state.items():
        if not isinstance(value, Tensor):
            into[key] = value
            continue
        kept = into.get(key)
        if isinstance(kept, Tensor) and kept is not value and (kept.shape, kept.dtype, kept.device) == (
                value.shape, value.dtype, value.device):
            kept.copy_(value)
        else:
            into[key] = value.clone()
    return into


@dataclass
class _Stash:
    """The parameters and optimizer state before the last step (for SkipStep)."""

    params: list[Tensor] = field(default_factory=list)
    state: list[dict | None] = field(default_factory=list)
    at: int = -1


class Controller:
    """Acts on live warnings within bounds (module docstring for the theory and the actions).

        controller = Controller([CutLR(0.3, hold=20, rewarm=50)], signals=("quotient",), cooldown=100, budget=3)
        monitor = Monitor(model, optimizer, "runs/a", controller=controller, ...)

    The Monitor attaches it (its optimizer hooks then run before the Monitor's, so the laws see the
    rate the step used) and passes it every warning; under Lightning or the Hugging Face Trainer pass
    ``controller=`` to the callback like any Monitor option. Without a Monitor: ``attach(model,
    optimizer)`` once, ``controller(warning)`` with each warning, ``close()`` at the end.

    The learning rate is scaled in an optimizer pre-step hook and put back in a post-step hook, so a
    scheduler (chainable or not) never sees the scaled value. ``state_dict()`` / ``load_state_dict()``
    carry the interventions in progress across a checkpoint, as a scheduler's do.
    """

    def __init__(self, actions: Sequence[Action], *, signals: Sequence[str] | None = ("quotient",),
                 rules: Sequence[str] | None = None, cooldown: int = 50, budget: int | None = 5,
                 symmetries: SymmetrySet | None = None) -> None:
        self.actions = _check_actions(actions)
        if isinstance(signals, str):
            signals = (signals,)  # signals="raw": the one signal, not its letters
        if signals is not None:
            signals = tuple(signals)
            if not signals or any(s not in SIGNALS for s in signals):
                raise ValueError(f"signals must be a non-empty subset of {SIGNALS} or None (any), got {signals}")
        if cooldown < 0 or (budget is not None and budget < 0):
            raise ValueError(f"cooldown must be >= 0 and budget >= 0 or None, got cooldown={cooldown}, budget={budget}")
        self.signals, self.rules = signals, None if rules is None else tuple(rules)
        self.cooldown, self.budget = int(cooldown), budget
        self.symmetries = symmetries
        self.interventions: list[Intervention] = []
        self.ignored = 0  # warnings that passed the filters but fell in a cooldown or beyond the budget
        self.steps = 0  # optimizer steps taken since attach (the actions' clock)
        self.skipped = 0
        self._by_kind = {type(a): a for a in self.actions}
        self._model: nn.Module | None = None
        self._optimizer: torch.optim.Optimizer | None = None
        self._handles: list = []
        self._cap: ForwardCap | None = None
        self._saved_lr: list[float] | None = None
        self._applied: dict[str, float] = {}
        self._stash = _Stash()
        self._generator: torch.Generator | None = None
        self._host_symmetries: SymmetrySet | None = None

    # ------------------------------------------------------------------------------------- wiring

    def attach(self, model: nn.Module, optimizer, *, symmetries: SymmetrySet | None = None) -> None:
        """Hook onto ``optimizer`` (unwrapped from Accelerate / Lightning wrappers) and ``model``;
        ``symmetries`` (InjectNoise's orbit directions) if not given at construction. Attaching again
        moves the hooks (a new optimizer)."""
        self.close()
        self._model = model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model
        self._optimizer = unwrapped_optimizer(optimizer)
        if not isinstance(self._optimizer, torch.optim.Optimizer):
            raise TypeError(f"optimizer must be a torch.optim.Optimizer or a wrapper holding one as .optimizer, "
                            f"got {type(optimizer).__name__}")
        if symmetries is not None and self.symmetries is None:
            self.symmetries = symmetries
        if InjectNoise in self._by_kind and self.symmetries is None:
            raise ValueError("InjectNoise needs the model's symmetries (its orbit directions): pass symmetries= to the "
                             "Controller, or give the Monitor symmetries or example_input")
        self._handles = [self._optimizer.register_step_pre_hook(self._before_step),
                         self._optimizer.register_step_post_hook(self._after_step)]
        if CapLogits in self._by_kind:
            self._cap = ForwardCap(self._model)
        if InjectNoise in self._by_kind:
            self._generator = torch.Generator().manual_seed(self._by_kind[InjectNoise].seed)
            cpu = torch.device("cpu")
            self._host_symmetries = self.symmetries if self.symmetries.device == cpu else self.symmetries.to(cpu)

    def close(self) -> None:
        """Remove every hook (idempotent); a rate scaled for a step in progress is put back."""
        self._restore_lr()
        for handle in self._handles:
            handle.remove()
        self._handles = []
        if self._cap is not None:
            self._cap.remove()
            self._cap = None

    # ------------------------------------------------------------------------------ the decisions

    def __call__(self, warning: EarlyWarning) -> Intervention | None:
        """Act on ``warning`` if it passes the filters, the cooldown and the budget; the intervention, or None."""
        if self._optimizer is None:
            raise RuntimeError("Controller: attach(model, optimizer) first (the Monitor does it when given controller=)")
        if (self.signals is not None and warning.signal not in self.signals) or (
                self.rules is not None and warning.rule not in self.rules):
            return None
        last = self.interventions[-1].at if self.interventions else None
        if (last is not None and self.steps - last < self.cooldown) or (
                self.budget is not None and len(self.interventions) >= self.budget):
            self.ignored += 1
            return None
        reverted = False
        if SkipStep in self._by_kind and self._stash.at == self.steps:
            self._revert()
            reverted = True
        intervention = Intervention(warning.step, self.steps, warning, tuple(a.name for a in self.actions), reverted)
        self.interventions.append(intervention)
        self._set_cap()  # from the next forward on
        return intervention

    def _next_k(self) -> int | None:
        """k of the next optimizer step: the steps taken between the last intervention and it (0: the
        first after it); None before any intervention. Read between steps (the pre-step hook reads it
        before counting the step)."""
        return None if not self.interventions else self.steps - self.interventions[-1].at

    def _within(self, steps: int | None) -> bool:
        """Whether the next step is among the first ``steps`` after the last intervention (None: any after it)."""
        k = self._next_k()
        return k is not None and (steps is None or k < steps)

    def lr_multiplier(self) -> float:
        """The factor on every param group's rate for the next optimizer step."""
        cut = self._by_kind.get(CutLR)
        k = self._next_k()
        return 1.0 if cut is None or k is None else cut.multiplier(k)

    @property
    def accumulation(self) -> int:
        """Micro-batches per optimizer step the loop should take now (``Accumulate``; 1 otherwise)."""
        action = self._by_kind.get(Accumulate)
        return action.factor if action is not None and self._within(action.steps) else 1

    def values(self) -> dict[str, float]:
        """What the last step ran under: ``control/lr_multiplier``, ``control/logit_cap`` (0: off),
        ``control/noise`` (the injected noise's norm over the gradient's), for the actions configured.
        An undone step (SkipStep) is decided after its values are logged: the Monitor's "control" event
        records it."""
        return dict(self._applied)

    # --------------------------------------------------------------------------------- the hooks

    def _before_step(self, optimizer, args, kwargs):
        applied = {}
        if CutLR in self._by_kind:
            m = self.lr_multiplier()
            self._saved_lr = [group["lr"] for group in optimizer.param_groups]
            if m != 1.0:
                for group in optimizer.param_groups:
                    group["lr"] = group["lr"] * m  # a tensor rate stays a tensor
            applied["control/lr_multiplier"] = m
        if CapLogits in self._by_kind:  # the cap this step's forward ran under (set after the last step)
            applied["control/logit_cap"] = self._cap.cap or 0.0
        if InjectNoise in self._by_kind:
            action = self._by_kind[InjectNoise]
            applied["control/noise"] = self._inject(action.scale) if self._within(action.steps) else 0.0
        self.steps += 1  # this step counted (the actions above read its k before)
        if SkipStep in self._by_kind:  # an undo happens after the step's values are logged: its record is the event
            self._take_stash(optimizer)
        self._applied = applied

    def _after_step(self, optimizer, args, kwargs) -> None:
        self._restore_lr()
        self._set_cap()

    def _set_cap(self) -> None:
        """The cap for the next forward: on while fewer than ``steps`` steps have followed the warning."""
        if self._cap is None:
            return
        action = self._by_kind[CapLogits]
        self._cap.cap = action.cap if self._within(action.steps) else None

    def _restore_lr(self) -> None:
        if self._saved_lr is not None and self._optimizer is not None:
            for group, lr in zip(self._optimizer.param_groups, self._saved_lr):
                group["lr"] = lr
        self._saved_lr = None

    # ------------------------------------------------------------------------------- skip a step

    def _params(self, optimizer) -> list[Tensor]:
        return [p for group in optimizer.param_groups for p in group["params"]]

    @torch.no_grad()
    def _take_stash(self, optimizer) -> None:
        stash = self._stash
        params = self._params(optimizer)
        if len(stash.params) != len(params) or any(s.shape != p.shape or s.dtype != p.dtype or s.device != p.device
                                                   for s, p in zip(stash.params, params)):
            stash.params = [torch.empty_like(p) for p in params]
        for s, p in zip(stash.params, params):
            s.copy_(p)
        old = stash.state if len(stash.state) == len(params) else [None] * len(params)
        stash.state = [None if p not in optimizer.state else _copy_state(optimizer.state[p], kept)
                       for p, kept in zip(params, old)]
        stash.at = self.steps

    @torch.no_grad()
    def _revert(self) -> None:
        optimizer, stash = self._optimizer, self._stash
        for p, saved, state in zip(self._params(optimizer), stash.params, stash.state):
            p.copy_(saved)
            if state is None:
                optimizer.state.pop(p, None)
            else:  # into the live state's own tensors (the stash's are reused at the next step)
                live = optimizer.state[p]
                optimizer.state[p] = _copy_state(state, live if isinstance(live, dict) else None)
        stash.at = -1
        self.skipped += 1

    # ------------------------------------------------------------------------------ inject noise

    @torch.no_grad()
    def _inject(self, scale: float) -> float:
        """Add xi = scale |g| P_H z / |P_H z|, z ~ N(0, I), to the gradients; returns |xi| / |g|."""
        named = {name: p for name, p in self._model.named_parameters() if p.grad is not None}
        if not named:
            return 0.0
        grad_norm = math.sqrt(sum(float(p.grad.double().square().sum()) for p in named.values()))
        if not (grad_norm > 0 and math.isfinite(grad_norm)):
            return 0.0
        draw = {name: torch.randn(p.shape, generator=self._generator, dtype=torch.float64) for name, p in named.items()}
        # on the host in float64, whatever the parameters' device (the symmetries' index plan follows)
        params = {name: p.detach().to("cpu", torch.float64) for name, p in self._model.named_parameters()}
        horizontal = horizontal_projection(self._host_symmetries, params, draw, rtol=1e-10)
        norm = math.sqrt(sum(float(v.square().sum()) for v in horizontal.values()))
        if norm == 0:
            return 0.0
        for name, p in named.items():
            p.grad.add_((horizontal[name] * (scale * grad_norm / norm)).to(p.grad.device, p.grad.dtype))
        return scale

    # ------------------------------------------------------------------------------- checkpoints

    def state_dict(self) -> dict:
        """The clock and the interventions so far (what a resumed run needs to continue them)."""
        return {"steps": self.steps, "ignored": self.ignored, "skipped": self.skipped,
                "interventions": [(i.step, i.at, i.warning, i.actions, i.reverted) for i in self.interventions]}

    def load_state_dict(self, state: Mapping) -> None:
        self.steps, self.ignored, self.skipped = int(state["steps"]), int(state["ignored"]), int(state["skipped"])
        self.interventions = [Intervention(*row) for row in state["interventions"]]
        self._set_cap()
