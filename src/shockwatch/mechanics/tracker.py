r"""Noether charges during training next to the laws that predict them (Kunin et al. 2021, §4).

For each one-parameter symmetry group A, with Q its charge (translation <theta_A, 1>, scale
|theta_A|^2, rescale |theta_A1|^2 - |theta_A2|^2), learning rate eta_k and weight decay lambda:

continuous (the paper's eqs. 4-6, gradient flow of the modified loss, t = sum_k eta_k):
    translation  Q(t) = e^{-lambda t} Q(0)
    scale/rescale Q(t) = e^{-2 lambda t} Q(0) + eta int_0^t e^{-2 lambda (t - s)} G(s) ds,
    G = |g_A|^2 (scale) or |g_A1|^2 - |g_A2|^2 (rescale), the integral carried as the recursion
    I <- e^{-2 lambda eta_k} (I + eta_k^2 G_k) (left-point rule; never a raw e^{+2 lambda t}).
discrete (exact for torch.optim.SGD without momentum, theta' = (1 - eta lambda) theta - eta g,
using <g_A, xi_A> = 0):
    translation  Q' = (1 - eta lambda) Q
    scale/rescale Q' = (1 - eta lambda)^2 Q + eta^2 G
Both are propagated open-loop from the initial charge with the gradients the run produced; the
discrete law then agrees with the run to float64 round-off (for a float64 model), the continuous
one to O(eta lambda) relative over a training run. With momentum the exact discrete law is carried
by scalar recursions (``_momentum_step``) and the continuous law is Appendix B's damped oscillator
(``_advance_oscillator``; heavy ball only, not Nesterov). Other optimizers (Adam, ...): the
charges and their drift only.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn

from ..symmetry import Kind, SymmetrySet, _native

__all__ = ["ConservationReport", "ConservationTracker"]

_KINDS = (Kind.TRANSLATION, Kind.SCALE, Kind.RESCALE)


@dataclass(frozen=True)
class ConservationReport:
    """Charges per kind over the recorded steps: (steps, groups) float64 tensors, SymmetrySet order."""

    steps: list[int]
    empirical: dict[str, Tensor]
    discrete: dict[str, Tensor | None]  # None where no law applies (an optimizer not modelled)
    continuous: dict[str, Tensor | None]
    size: dict[str, Tensor]  # each group's own size at each step (the relative error's denominator)
    law: str  # "sgd", "sgd-momentum" (continuous: App. B oscillator, not for Nesterov) or "none (...)"

    def rel_errors(self, kind: Kind | str, law: str = "discrete") -> Tensor:
        """|predicted - empirical| / the group's size, per recorded step and group (steps, groups):
        size = |theta_A|^2 (scale), |theta_A1|^2 + |theta_A2|^2 (rescale), sum |theta_A| (translation)."""
        if law not in ("discrete", "continuous"):
            raise ValueError(f"law must be 'discrete' or 'continuous', got {law!r}")
        kind = Kind(kind).value
        predicted = (self.discrete if law == "discrete" else self.continuous).get(kind)
        if predicted is None:
            raise ValueError(f"no {law} law for this run ({self.law})")
        return (predicted - self.empirical[kind]).abs() / self.size[kind].clamp(min=torch.finfo(torch.float64).tiny)

    def max_rel_error(self, kind: Kind | str, law: str = "discrete") -> float:
        """max over groups and recorded steps of ``rel_errors``. A group whose size collapses (a unit
        killed by weight decay) makes this ill-conditioned: see ``rel_errors`` for the distribution."""
        errors = self.rel_errors(kind, law)
        return float(errors.max()) if errors.numel() else 0.0

    def drift(self, kind: Kind | str) -> Tensor:
        """|Q(t) - Q(0)| / size(0) per group at the last recorded step: how far the run moved each charge."""
        kind = Kind(kind).value
        values = self.empirical[kind]
        return (values[-1] - values[0]).abs() / self.size[kind][0].clamp(min=torch.finfo(torch.float64).tiny)


_BLOCKS = ("translation", "quadratic")  # internal state: translation groups; scale then rescale groups


def _host(values: Tensor | np.ndarray) -> np.ndarray:
    """A float64 NumPy view (copy from a GPU) of per-group sums, for the recursions."""
    if isinstance(values, np.ndarray):
        return values.astype(np.float64, copy=False)
    return values.detach().to("cpu", torch.float64).numpy()


class ConservationTracker:
    """Call ``update()`` after every ``optimizer.step()`` (before ``zero_grad``: it reads the
    gradients the step used). Predictions are carried in float64, one value per group.

    Scale and rescale groups obey the same recursions, so they are carried as one "quadratic"
    block (scale groups, then rescale groups) and split by kind only in ``report()``; their
    per-step inputs come from one ``SymmetrySet.quadratic_sums`` pass over gradients and buffers
    (on the CPU the C kernel of ``fused_sums``; ``compile=True`` runs it through torch.compile, for
    other devices). The laws' state is a set of float64 NumPy vectors on the host.
    ``keep_history=False`` keeps only the last record (``latest()``; ``report()`` then refuses).
    ``native=False`` runs the momentum law in NumPy (by default its recursions run in the C kernel of
    ``symmetry._native`` where it builds: the same operations, tested equal to round-off).
    """

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer, symmetries: SymmetrySet,
                 *, record_every: int = 1, compile: bool = False, keep_history: bool = True,
                 native: bool = True) -> None:
        self._named = list(model.named_parameters())  # read every step: named_parameters() is slow
        names = {id(p): name for name, p in self._named}
        known = set(names.values())
        for sym in symmetries:
            for slot in sym.slots:
                if slot.param not in known:
                    raise ValueError(f"symmetry {sym.label} names parameter {slot.param!r}, which {type(model).__name__} "
                                     "does not have: were the symmetries found on another model?")
        if record_every < 1:
            raise ValueError(f"record_every must be >= 1, got {record_every}")
        self.model, self.optimizer, self.symmetries, self.record_every = model, optimizer, symmetries, record_every
        self._compile = compile
        # the momentum law's per-step recursions in the C kernel where it loads (the NumPy code below
        # is the reference it is tested against, and the fallback)
        self.native = native
        self._address_cache: dict = {}
        hyper = {}  # param name -> its optimizer param group (read live: schedulers change lr)
        for group in optimizer.param_groups:
            for p in group["params"]:
                if id(p) in names:
                    hyper[names[id(p)]] = group
        position = {id(group): i for i, group in enumerate(optimizer.param_groups)}

        def group_index(*kinds: Kind) -> Tensor:
            return torch.tensor([position[id(self._group_of(sym, hyper))] for kind in kinds
                                 for sym in symmetries.of_kind(kind)], dtype=torch.long)

        self._group_index = {"translation": group_index(Kind.TRANSLATION),
                             "quadratic": group_index(Kind.SCALE, Kind.RESCALE)}
        self._scale_count = len(symmetries.of_kind(Kind.SCALE))
        self._translation_params = sorted({slot.param for sym in symmetries.of_kind(Kind.TRANSLATION)
                                           for slot in sym.slots})
        # only the parameters some charge reads are gathered each step
        parameters = self._parameters = dict(self._named)
        self._quadratic = [(name, parameters[name]) for name in symmetries.quadratic_params]
        self._charged = [(name, parameters[name]) for name in dict.fromkeys(
            [*symmetries.quadratic_params, *self._translation_params])]
        self.law = self._law()
        # Nesterov's modified equation differs from heavy ball's: no continuous law is claimed for it
        self._nesterov = any(group.get("nesterov", False) for group in optimizer.param_groups)
        self._settings_key: tuple | None = None  # the optimizer settings _settings last converted
        self._settings_step = -1  # the step _settings last read them at
        self._per_group: dict = {}  # (block, setting names) -> per symmetry group values, for that key
        self._propagators: dict = {}  # (block, settings) -> oscillator propagator per symmetry group
        params = self._params()
        self._views: dict[str, tuple[int, np.ndarray]] = {}  # translation params' NumPy views (CPU)
        # the laws' state lives on the host as float64 NumPy vectors, whatever the model's device:
        # the per-step recursions are NumPy operations on them, with no torch call between
        self._initial = {k: _host(v).copy() for k, v in self._charges_and_sizes(params)[0].items()}
        self._discrete = {k: v.copy() for k, v in self._initial.items()}
        self._integral = {k: np.zeros_like(v) for k, v in self._initial.items()}
        self._decay_time = {k: np.zeros_like(v) for k, v in self._initial.items()}  # sum of lambda eta per group
        # momentum: signed <theta_A, b_A> and |b_A|^2 (translation: <b_A, 1>), b the momentum buffer
        self._theta_buffer = {k: np.zeros_like(v) for k, v in self._initial.items()}
        self._buffer_sq = {k: np.zeros_like(v) for k, v in self._initial.items()}
        self._buffers_started = False
        # Appendix B's damped oscillator, per group: (Q, dQ/dt) of the continuous model with momentum
        self._oscillator = {k: np.stack([v, np.zeros_like(v)], axis=-1) for k, v in self._initial.items()}
        self._step = 0
        # every record (report() needs them), or only the last (a monitor: memory stays flat, where
        # the history of a long run grows by 4 x groups x 8 bytes a record)
        self.keep_history = keep_history
        self._history: list[tuple[int, np.ndarray]] = []  # NumPy: a per-step torch call costs more
        self._counts = [len(symmetries.of_kind(kind)) for kind in _KINDS]
        self._cuts = np.cumsum(self._counts)[:-1]
        self._record(params)

    # ---------------------------------------------------------------------------------------
    def _law(self) -> str:
        if type(self.optimizer) is not torch.optim.SGD:
            return f"none (drift only: {type(self.optimizer).__name__} is not modelled)"
        if any(group.get("maximize", False) for group in self.optimizer.param_groups):
            return "none (drift only: maximize=True)"
        if any(group.get("momentum", 0) for group in self.optimizer.param_groups):
            return "sgd-momentum"
        return "sgd"

    def _params(self) -> dict[str, Tensor]:
        """The parameters that carry a charge, detached."""
        return {name: p.detach() for name, p in self._charged}

    def _gradients(self) -> dict[str, Tensor]:
        return {name: (p.grad if p.grad is not None else torch.zeros_like(p)) for name, p in self._quadratic}

    @staticmethod
    def _group_of(sym, hyper: Mapping[str, dict]) -> dict:
        groups = {id(hyper[s.param]): hyper[s.param] for s in sym.slots if s.param in hyper}
        if len(groups) != 1:
            raise ValueError(f"{sym.label}: its parameters must all be in one optimizer param group "
                             f"(found {len(groups)}): no single law applies")
        return next(iter(groups.values()))

    _SETTINGS = ("lr", "weight_decay", "momentum", "dampening", "nesterov")

    def _settings(self) -> dict[str, Tensor]:
        """Per optimizer param group: each SGD setting as the optimizer holds it now (float64).
        Converted to tensors only when a scheduler has changed one."""
        if self._settings_step == self._step:  # read once a step (the laws and the propagators ask four times)
            return self._settings_values
        self._settings_step = self._step
        key = tuple(float(g.get(name) or 0.0) for g in self.optimizer.param_groups for name in self._SETTINGS)
        if key != self._settings_key:
            values = torch.tensor(key, dtype=torch.float64).reshape(-1, len(self._SETTINGS)).T
            self._settings_key, self._settings_values = key, dict(zip(self._SETTINGS, values))
            self._per_group = {}
        return self._settings_values

    def _hyperparameters(self, block: str, *names: str) -> tuple[np.ndarray, ...]:
        """Per symmetry group of ``block``: each named optimizer setting of its param group (float64).

        The recursions run in NumPy on the state's CPU float64 storage: they are ~50 elementwise
        operations on vectors of a few thousand groups per step, where NumPy's dispatch (~1 us an
        operation) is several times cheaper than torch's (benchmarks/RESULTS.md, monitor overhead)."""
        settings = self._settings()
        cached = self._per_group.get((block, names))
        if cached is None:
            cached = self._per_group[(block, names)] = tuple(settings[name][self._group_index[block]].numpy()
                                                             for name in names)
        return cached

    @property
    def records_next(self) -> bool:
        """Whether the next ``update()`` records the charges (every ``record_every``-th step)."""
        return (self._step + 1) % self.record_every == 0

    @torch.no_grad()
    def update(self, measured: tuple[Tensor, Tensor | None] | None = None,
               charges: tuple[Tensor, Tensor] | None = None) -> None:
        """Advance the predictions by the step just taken and record the charges (every record_every).

        For a caller that already makes its own passes over the tensors (the Monitor), in place of
        reading them here: ``measured``, the step's inputs taken before it, as
        ``SymmetrySet.quadratic_sums`` rows (signed |g_A|^2, signed <b_A, g_A> with b the momentum
        buffer before the step; the second None without momentum); ``charges``, the signed and
        unsigned (theta, theta) rows at the parameters after the step (used when this step records).
        """
        if self.law.startswith("sgd") and all(p.grad is None for _, p in self._named):
            raise RuntimeError("update() found no gradients: call it after optimizer.step() and before zero_grad()")
        self._step += 1
        if self.law == "sgd-momentum":
            self._momentum_step(measured)
        if self.law == "sgd":
            if measured is not None:
                gradient_sq = _host(measured[0])
            else:
                grads = self._gradients()
                gradient_sq = _host(self.symmetries.quadratic_sums([(grads, grads)], compile=self._compile)[0])  # signed |g_A|^2
            for block in _BLOCKS:
                rate, decay = self._hyperparameters(block, "lr", "weight_decay")
                discrete = self._discrete[block]
                if block == "translation":
                    self._discrete[block] = (1 - rate * decay) * discrete
                else:
                    self._discrete[block] = (1 - rate * decay) ** 2 * discrete + rate**2 * gradient_sq
                    self._integral[block] = np.exp(-2 * decay * rate) * (self._integral[block] + rate**2 * gradient_sq)
                self._decay_time[block] = self._decay_time[block] + decay * rate
        if self._step % self.record_every == 0:
            self._record(None, charges)

    def momentum_buffers(self) -> dict[str, Tensor] | None:
        """The optimizer's momentum buffers of the scale/rescale parameters (None before the first
        step), for a caller that measures <b_A, g_A> itself before the step (``update(measured=)``)."""
        return self._read_buffers() if self._buffers_started else None

    def _read_buffers(self) -> dict[str, Tensor]:
        """The scale/rescale parameters' momentum buffers as the optimizer holds them (zeros where none)."""
        state = self.optimizer.state
        buffers = {name: state[p].get("momentum_buffer") if p in state else None for name, p in self._quadratic}
        return {name: torch.zeros_like(p) if buffers[name] is None else buffers[name] for name, p in self._quadratic}

    def _momentum_step(self, measured: tuple[Tensor, Tensor] | None = None) -> None:
        r"""The exact discrete law of torch.optim.SGD with momentum mu, dampening tau, Nesterov.

        d = g + lambda theta, b' = mu b + (1 - tau) d (b' = d at the first step), u = b' or
        d + mu b' (Nesterov), theta' = theta - eta u. With <theta_A, g_A> = 0 (signed for rescale)
        the charge Q, P = <theta_A, b_A> and B = |b_A|^2 close under recursions whose only inputs
        from the run are G = |g_A|^2 and <b'_A, g_A> (translation: none, <g_A, 1> = 0).
        """
        first = not self._buffers_started
        self._buffers_started = True
        settings = {block: self._hyperparameters(block, *self._SETTINGS) for block in _BLOCKS}
        if measured is not None:  # |g_A|^2 and <b_A, g_A> with the buffer before the step
            g_sq = _host(measured[0])
            old_b_g = None if first else _host(measured[1])
        else:
            # scale and rescale: one pass over gradients and buffers gives |g_A|^2 and <b'_A, g_A>
            grads = self._gradients()
            pairs = [(grads, grads)] if first else [(grads, grads), (self._read_buffers(), grads)]
            sums = _host(self.symmetries.quadratic_sums(pairs, compile=self._compile))
            g_sq = sums[0]  # signed |g_A|^2
            old_b_g = None
            if not first:  # <b, g> from <b', g> = mu <b, g> + (1 - tau) |g|^2, since <d, g> = |g|^2
                _, _, mu, tau, _ = settings["quadratic"]
                old_b_g = (sums[1] - (1 - tau) * g_sq) / mu
        lib = _native.library() if self.native else None
        if lib is not None:
            self._momentum_step_native(lib, settings, first, g_sq, old_b_g)
            return
        # translation: linear, <theta, 1> = q, <b, 1> = p, <d, 1> = lambda q
        eta, lam, mu, tau, nesterov = settings["translation"]
        q, p = self._discrete["translation"], self._theta_buffer["translation"]
        d_sum = lam * q
        b_sum = d_sum if first else mu * p + (1 - tau) * d_sum
        u_sum = np.where(nesterov > 0, d_sum + mu * b_sum, b_sum)
        self._discrete["translation"] = q - eta * u_sum
        self._theta_buffer["translation"] = np.array(b_sum)
        self._advance_oscillator("translation", np.zeros_like(q))
        eta, lam, mu, tau, nesterov = settings["quadratic"]
        q = self._discrete["quadratic"]
        p, b = self._theta_buffer["quadratic"], self._buffer_sq["quadratic"]
        d_sq = g_sq + lam**2 * q  # |d|^2, the cross term 2 lambda <theta, g> vanishing by symmetry
        if first:
            theta_b, b_sq, d_b = lam * q, d_sq, d_sq
        else:
            d_old_b = old_b_g + lam * p
            theta_b = mu * p + (1 - tau) * lam * q
            b_sq = mu**2 * b + 2 * mu * (1 - tau) * d_old_b + (1 - tau) ** 2 * d_sq
            d_b = mu * d_old_b + (1 - tau) * d_sq
        if self._nesterov:
            theta_u = np.where(nesterov > 0, lam * q + mu * theta_b, theta_b)
            u_sq = np.where(nesterov > 0, d_sq + 2 * mu * d_b + mu**2 * b_sq, b_sq)
            u_b = np.where(nesterov > 0, d_b + mu * b_sq, b_sq)
        else:
            theta_u, u_sq, u_b = theta_b, b_sq, b_sq
        self._discrete["quadratic"] = q - 2 * eta * theta_u + eta**2 * u_sq
        self._theta_buffer["quadratic"] = theta_b - eta * u_b
        self._buffer_sq["quadratic"] = np.array(b_sq)
        # drive F = 2 m |dtheta_A/dt|^2 with the run's velocity dtheta/dt = -u / (1 - tau) (signed)
        self._advance_oscillator("quadratic", 2 * u_sq / (1 - tau) ** 2)

    def _momentum_step_native(self, lib, settings, first: bool, g_sq: np.ndarray, old_b_g: np.ndarray | None) -> None:
        """``_momentum_step``'s recursions and both oscillators in the C kernel (``sw_momentum_law``):
        the same operations in the same order, on the state vectors in place."""
        for block in _BLOCKS:
            quadratic = block == "quadratic"
            q = self._discrete[block]
            if len(q) == 0:
                continue
            inputs = (np.ascontiguousarray(g_sq, dtype=np.float64),
                      np.ascontiguousarray(old_b_g if old_b_g is not None else g_sq, dtype=np.float64)) \
                if quadratic else (q, q)  # unread for translation
            lib.sw_momentum_law(len(q), int(quadratic), int(first), int(self._nesterov),
                                *self._addresses(*settings[block]), *self._addresses(*inputs, cache=False),
                                *self._addresses(*self._momentum_state(block)))

    def _momentum_state(self, block: str) -> tuple[np.ndarray, ...]:
        """What ``sw_momentum_law`` updates or reads after its inputs, in its order: the state q, p, b,
        the oscillator's propagator E and drive r, and the oscillator (q, p, b and the oscillator in
        place). The monitor's engine points its plan at the same arrays."""
        matrix, drive = self._propagator(block)
        return (self._discrete[block], self._theta_buffer[block], self._buffer_sq[block], matrix, drive,
                self._oscillator[block])

    def _addresses(self, *arrays: np.ndarray, cache: bool = True) -> tuple[int, ...]:
        """The data addresses of float64 C-contiguous arrays, remembered per set of array objects (each
        ``ndarray.ctypes`` costs a microsecond or two; the state, settings and propagators are
        long-lived, updated in place). The cache holds the arrays, so that an id is never reused."""
        if not cache:
            return tuple(map(_native.address, arrays))
        key = tuple(map(id, arrays))
        found = self._address_cache.get(key)
        if found is None:
            if len(self._address_cache) > 256:  # settings changed often: drop the stale ones
                self._address_cache.clear()
            for a in arrays:
                if a.dtype != np.float64 or not a.flags.c_contiguous or not a.flags.writeable:
                    raise AssertionError("the C law takes writable float64 C-contiguous arrays")
            found = self._address_cache[key] = (arrays, tuple(map(_native.address, arrays)))
        return found[1]

    def _advance_oscillator(self, block: str, drive_per_mass: np.ndarray) -> None:
        r"""One step of m Q'' + (1 - mu) Q' + k Q = F over dt = eta (1 - tau), F held constant, exactly.

        The modified equation of heavy-ball momentum, (1 - mu) dtheta/dt + (h/2)(1 + mu) d2theta/dt2 =
        -(g + lambda theta) with h = eta (1 - tau), projected on theta_A (Kunin et al. 2021, App. B):
        m = h (1 + mu)/2; k = lambda (translation, F = 0) or 2 lambda (scale, rescale, F = 2 m
        |dtheta_A/dt|^2). Propagated with the matrix exponential of the augmented system
        [Q, Q', 1]' = [[0, 1, 0], [-k/m, -(1 - mu)/m, F/m], [0, 0, 0]] [Q, Q', 1]: exact for every
        damping regime (over-, critically and under-damped) and for k = 0.
        Measured (tests/mechanics): the closed forms to 1e-15; against the run, first order in eta
        (gap 9.9e-4 at eta = 0.02, 5.0e-4 at 0.01, mu = 0.9, lambda = 1e-2); in the underdamped regime
        at eta lambda = 0.026 the oscillator's phase drifts from the discrete map's and the gap
        reaches O(1) of the (decaying) charge after 200 steps: trust the exact discrete law there.
        """
        matrix, drive = self._propagator(block)
        state = self._oscillator[block]
        # x' = E x + (F/m) r per group, the 2x2 product written out (a batched matmul of 2x2
        # matrices costs NumPy a loop per group)
        advanced = np.empty_like(state)
        advanced[:, 0] = matrix[:, 0, 0] * state[:, 0] + matrix[:, 0, 1] * state[:, 1] + drive_per_mass * drive[:, 0]
        advanced[:, 1] = matrix[:, 1, 0] * state[:, 0] + matrix[:, 1, 1] * state[:, 1] + drive_per_mass * drive[:, 1]
        self._oscillator[block] = advanced

    def _propagator(self, block: str) -> tuple[np.ndarray, np.ndarray]:
        """Per group of ``block``: the oscillator's 2x2 propagator E (groups, 2, 2) and drive column r
        (groups, 2) over one step at the optimizer's settings now, contiguous float64 (see
        ``_advance_oscillator``)."""
        # The propagator depends on (dt, m, k, friction) only, i.e. on the optimizer's settings:
        # exponentiated once per param group and setting, applied linearly: x' = E x + (F/m) r.
        settings = self._settings()
        propagator = self._propagators.get((block, self._settings_key))
        if propagator is None:
            g_eta, g_lam, g_mu = settings["lr"], settings["weight_decay"], settings["momentum"]
            g_dt = g_eta * (1 - settings["dampening"])
            g_mass = 0.5 * g_dt * (1 + g_mu)
            g_spring = g_lam if block == "translation" else 2 * g_lam
            system = torch.zeros(len(g_eta), 3, 3, dtype=torch.float64)
            system[:, 0, 1] = 1.0
            system[:, 1, 0] = -g_spring / g_mass
            system[:, 1, 1] = -(1 - g_mu) / g_mass
            system[:, 1, 2] = 1.0
            exponential = torch.linalg.matrix_exp(system * g_dt.reshape(-1, 1, 1))[self._group_index[block]]
            propagator = (np.ascontiguousarray(exponential[:, :2, :2].numpy()),
                          np.ascontiguousarray(exponential[:, :2, 2].numpy()))
            if len(self._propagators) > 64:  # a schedule changing lr every step: keep the cache small
                self._propagators.clear()
            self._propagators[(block, self._settings_key)] = propagator
        return propagator

    def _translation_views(self) -> dict[str, np.ndarray] | None:
        """NumPy views of the translation parameters (None off the CPU), made once and again only
        where a parameter's storage moved: the per-step translation charges then take no torch call."""
        views = {}
        for name in self._translation_params:
            p = self._parameters[name]
            if p.device.type != "cpu":
                return None
            address = p.data_ptr()
            cached = self._views.get(name)
            if cached is None or cached[0] != address:
                cached = self._views[name] = (address, p.detach().numpy())
            views[name] = cached[1]
        return views

    def _charges_and_sizes(self, params: Mapping[str, Tensor] | None,
                           quadratic: tuple[Tensor | np.ndarray, Tensor | np.ndarray] | None = None
                           ) -> tuple[dict[str, Tensor | np.ndarray], dict[str, Tensor | np.ndarray]]:
        """Per block, each group's charge and size (|theta_A|^2, |theta_A1|^2 + |theta_A2|^2, sum |theta_A|);
        ``quadratic``: the signed and unsigned (theta, theta) sums where the caller has them (then
        ``params`` may be None)."""
        if quadratic is None:
            params = self._params() if params is None else params
            quadratic = self.symmetries.quadratic_sums([(params, params)], unsigned=True, compile=self._compile)[:, 0]
        signed, unsigned = quadratic
        views = self._translation_views()
        if views is not None:
            charge = self.symmetries.host_charges(Kind.TRANSLATION, views)
            size = self.symmetries.host_charges(Kind.TRANSLATION, views, absolute=True)
        else:
            params = self._params() if params is None else params
            charge = self.symmetries.charges(Kind.TRANSLATION, params)
            size = self.symmetries.charges(Kind.TRANSLATION, params, absolute=True)
        return {"translation": charge, "quadratic": signed}, {"translation": size, "quadratic": unsigned}

    def _record(self, params: Mapping[str, Tensor] | None, quadratic: tuple[Tensor, Tensor] | None = None) -> None:
        """Append (step, rows) with rows = charge, size[, discrete[, continuous]] over all groups
        (translation, scale, rescale): one small tensor per recorded step, split in report()."""
        rows = list(self._charges_and_sizes(params, quadratic))
        if self.law.startswith("sgd"):
            rows.append(self._discrete)
        if self.law == "sgd-momentum" and not self._nesterov:
            rows.append({k: v[..., 0] for k, v in self._oscillator.items()})
        if self.law == "sgd":
            rows.append({"translation": np.exp(-self._decay_time["translation"]) * self._initial["translation"],
                         "quadratic": np.exp(-2 * self._decay_time["quadratic"]) * self._initial["quadratic"]
                         + self._integral["quadratic"]})
        stacked = np.stack([np.concatenate([_host(row[block]) for block in _BLOCKS]) for row in rows])
        if not self.keep_history:
            self._history.clear()
        self._history.append((self._step, stacked))

    def latest(self) -> tuple[int, dict[str, dict[str, Tensor]]]:
        """The last recorded step and, per kind, its "empirical", "size" and (where a law applies)
        "discrete"/"continuous" charges: what a monitor logs without building the whole report."""
        step, rows = self.latest_rows()
        # rows as _record stacks them: a run without a continuous law (Nesterov) stops at "discrete"
        labels = ["empirical", "size", "discrete", "continuous"][: rows.shape[0]]
        out = {kind.value: {} for kind in _KINDS}
        for label, row in zip(labels, rows):
            for kind, part in self.kind_slices.items():
                out[kind][label] = torch.from_numpy(row[part])
        return step, out

    def latest_rows(self) -> tuple[int, np.ndarray]:
        """``latest()`` as one float64 array (rows: empirical, size[, discrete[, continuous]]; columns:
        every group, translation then scale then rescale; ``kind_slices`` cuts them), for a per-step
        caller to which a dict of tensors per step is a cost."""
        return self._history[-1]

    @property
    def kind_slices(self) -> dict[str, slice]:
        """The columns of each kind in ``latest_rows()`` (SymmetrySet order within a kind)."""
        ends = np.cumsum(self._counts)
        return {kind.value: slice(int(end - count), int(end)) for kind, count, end in zip(_KINDS, self._counts, ends)}

    def report(self) -> ConservationReport:
        if not self.keep_history:
            raise ValueError("report() needs every record: this tracker was made with keep_history=False")
        steps = [step for step, _ in self._history]
        history = torch.from_numpy(np.stack([rows for _, rows in self._history]))  # (steps, rows, groups)

        def by_kind(row: int) -> dict:
            if row >= history.shape[1]:  # no law of this type for this run
                return {kind.value: None for kind in _KINDS}
            return {kind.value: part for kind, part in zip(_KINDS, history[:, row].split(self._counts, dim=1))}

        return ConservationReport(steps, by_kind(0), by_kind(2), by_kind(3), by_kind(1), self.law)

    def state_dict(self) -> dict:
        """Everything a resumed run needs to continue its predictions (and its recorded history)."""
        tensors = {key: {k: torch.from_numpy(v.copy()) for k, v in getattr(self, f"_{key}").items()}
                   for key in ("initial", "discrete", "integral", "decay_time", "theta_buffer", "buffer_sq", "oscillator")}
        return {"step": self._step, **tensors, "buffers_started": self._buffers_started,
                "history": [(step, torch.from_numpy(rows.copy())) for step, rows in self._history],
                "law": self.law}

    def load_state_dict(self, state: Mapping) -> None:
        if state["law"] != self.law:
            raise ValueError(f"state was recorded under law {state['law']!r}, this tracker has {self.law!r}")
        for key in ("initial", "discrete", "integral", "decay_time", "theta_buffer", "buffer_sq"):
            shapes = {k: tuple(v.shape) for k, v in state[key].items()}
            mine = {k: tuple(v.shape) for k, v in getattr(self, f"_{key}").items()}
            if shapes != mine:
                raise ValueError(f"state has groups {shapes}, this tracker {mine}: a different model or symmetry set")
        self._step = int(state["step"])
        for key in ("initial", "discrete", "integral", "decay_time", "theta_buffer", "buffer_sq", "oscillator"):
            setattr(self, f"_{key}", {k: _host(torch.as_tensor(v)).copy() for k, v in state[key].items()})
        self._buffers_started = bool(state["buffers_started"])
        self._history = [(int(step), _host(torch.as_tensor(rows)).copy()) for step, rows in state["history"]]
