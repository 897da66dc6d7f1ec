r"""Exact laws for symmetries whose blocks are updated by different rules (per-block bookkeeping).

A symmetry's parameters may sit in several optimizer param groups (the decay / no-decay split of
nanoGPT's ``configure_optimizers``: a ReLU unit's incoming weight row decays, its bias does not), be
frozen (``requires_grad=False``), be outside the optimizer, or get no gradient at a step (torch's SGD
then skips the tensor: no weight decay, no momentum update). Each *block* B (the slots of one
parameter, with the charge's sign s_B = +1, or -1 on a rescale symmetry's outgoing slots) is then
updated by its own rule, and the charge Q = sum_B Q_B is followed block by block.

Each block is a part of ``laws.advance`` (the recursions are written there, once): its discrete law
is exact for torch.optim.SGD with the settings of its own param group, and a block that does not move
keeps its state. For SGD without momentum that is Q_B' = |(1 - eta_B lambda_B) theta_B - eta_B g_B|^2
summed with signs. The symmetry enters through sum_B X_B = 0 (<grad L, xi> = 0): where every block's gradient is known
(computed, or None with requires_grad=True: zero) the first block's X is replaced by minus the sum of
the others, so that blocks sharing their settings recover the single-group law exactly (X drops out)
and what is measured from the run is only the exchange sum_B (c_B - c_1) X_B between blocks with
different settings. Where a block is frozen (its gradient is not computed) the constraint cannot be
used: the row is then each block's bookkeeping with the measured X_B, and the charge is not conserved
(``NoLaw(law="symmetry")``).

Continuous law: per block, ``laws.advance``'s flow or oscillator on the block's own clock eta_B,
driven by the block's measured X_B. With one setting for every block the exchange terms cancel (sum_B X_B = 0) and this is the
single-group law. With different settings **no closed continuous law in Q exists**: the blocks
exchange charge at the rate sum_B (eta_B / eta) X_B, which depends on the gradients' direction and not
on Q; what is reported is the block-wise flow driven by the run's measured exchange
(``NoLaw(law="continuous")`` names the groups).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..symmetry import Kind, Symmetry, SymmetrySet
from .laws import LawState, Steps, advance

__all__ = ["BlockLaws", "NoLaw"]


@dataclass(frozen=True)
class NoLaw:
    """A law the tracker cannot give, for which symmetries, and why.

    law: "discrete" (no exact update-rule law: the optimizer is not modelled), "continuous" (no closed
    continuous law: what the continuous row holds instead is in ``reason``; NaN where none at all) or
    "symmetry" (the discrete row is each block's bookkeeping, without the symmetry's constraint: the
    charge is not conserved). groups: optimizer param-group indices concerned (() where none).
    labels: the symmetries concerned (every one for a run without a law)."""

    law: str
    reason: str
    groups: tuple[int, ...]
    labels: tuple[str, ...]

    @property
    def message(self) -> str:
        """One line for an event: the law, the reason, the groups and the first labels."""
        shown = ", ".join(self.labels[:3]) + (f", ... ({len(self.labels)} in all)" if len(self.labels) > 3 else "")
        groups = f" (param groups {', '.join(map(str, self.groups))})" if self.groups else ""
        return f"no {self.law} law{groups}: {self.reason}; symmetries {shown}"


class BlockLaws:
    """The per-block state of the symmetries the tracker follows block by block (module docstring).

    Built from (block name, column, symmetry) triples; the tracker measures the blocks' inputs before
    each optimizer step (``measure``), advances them after it (``advance``) and reads each column's
    discrete and continuous prediction (``predictions``)."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.parts: dict[str, list[tuple[int, str, float]]] = {"translation": [], "quadratic": []}
        self._symmetries: dict[str, list[Symmetry]] = {"translation": [], "quadratic": []}
        self.labels: dict[str, list[str]] = {"translation": [], "quadratic": []}
        self.state = {b: LawState.empty() for b in self.parts}  # per part: the laws' state (``laws``)
        self._steps = Steps()
        self._index()

    def add(self, entries: list[tuple[str, int, Symmetry]]) -> dict[str, np.ndarray]:
        """Follow these (block, column, symmetry) block by block from now on; returns, per block, the
        mask of the parts just added (their state zero until ``reset``)."""
        before = {b: len(p) for b, p in self.parts.items()}
        for block, column, sym in entries:
            signed = [(slot, 1.0) for slot in sym.incoming] + [(slot, -1.0) for slot in sym.outgoing]
            for param in dict.fromkeys(slot.param for slot, _ in signed):
                for sign in (1.0, -1.0):
                    slots = tuple(slot for slot, s in signed if slot.param == param and s == sign)
                    if not slots:
                        continue
                    kind = Kind.TRANSLATION if block == "translation" else Kind.SCALE
                    self._symmetries[block].append(Symmetry(kind, f"{len(self.parts[block])}", slots))
                    self.parts[block].append((column, param, sign))
                    self.labels[block].append(sym.label)
        for b in self.parts:
            self.state[b].grow(len(self.parts[b]) - before[b])
        self._index()
        return {b: np.arange(len(p)) >= before[b] for b, p in self.parts.items()}

    def _index(self) -> None:
        self.sets = {b: SymmetrySet(tuple(s), self.device) for b, s in self._symmetries.items()}
        self.column = {b: np.array([c for c, _, _ in parts], dtype=np.int64) for b, parts in self.parts.items()}
        self.sign = {b: np.array([s for _, _, s in parts], dtype=np.float64) for b, parts in self.parts.items()}
        self.param = {b: [p for _, p, _ in parts] for b, parts in self.parts.items()}
        self.first = {}  # each column's first part: where a carried-over prediction's difference goes
        for b in self.parts:
            first = np.zeros(len(self.parts[b]), dtype=bool)
            if len(first):
                first[np.unique(self.column[b], return_index=True)[1]] = True
            self.first[b] = first

    def __len__(self) -> int:
        return sum(len(p) for p in self.parts.values())

    def columns(self, block: str) -> np.ndarray:
        """The columns (symmetries of ``block``, tracker order) followed here."""
        return np.unique(self.column[block])

    # ------------------------------------------------------------------------------------------
    def sums(self, block: str, pairs: list[tuple[dict, dict]]) -> np.ndarray:
        """Per pair (x, y) and part: s_B <x_B, y_B> (quadratic) or <y_B, 1> (translation, x unread), float64."""
        if not self.parts[block]:
            return np.zeros((len(pairs), 0))
        if block == "quadratic":
            rows = self.sets[block].quadratic_sums(pairs).detach().to("cpu", torch.float64).numpy()
        else:
            rows = np.stack([self.sets[block].charges(Kind.TRANSLATION, y).detach().to("cpu", torch.float64).numpy()
                             for _, y in pairs])
        return rows * self.sign[block]

    def reset(self, block: str, mask: np.ndarray, q: np.ndarray, p: np.ndarray, b: np.ndarray,
              target_q: np.ndarray | None = None, target_p: np.ndarray | None = None,
              target_b: np.ndarray | None = None, target_continuous: np.ndarray | None = None,
              target_velocity: np.ndarray | None = None) -> None:
        """Set the parts in ``mask`` to measured values, with each column's first part carrying the
        difference to the column's ``target`` (a prediction carried so far by another law), so that
        the sum over a column's parts continues that prediction exactly."""
        state = self.state[block]
        first = mask & self.first[block]

        def fill(values: np.ndarray, measured: np.ndarray, target: np.ndarray | None) -> None:
            values[mask] = measured[mask]
            if target is not None:
                total = np.bincount(self.column[block][mask], weights=measured[mask], minlength=len(target))
                values[first] += (target - total)[self.column[block][first]]
        fill(state.q, q, target_q)
        fill(state.p, p, target_p)
        fill(state.b, b, target_b)
        fill(state.flow, q, target_continuous)
        state.oscillator[mask, 0] = state.flow[mask]
        state.oscillator[mask, 1] = 0.0
        if target_velocity is not None:
            state.oscillator[first, 1] = target_velocity[self.column[block][first]]
        state.applies[mask] = True

    def continuous_lost(self, block: str, lost: np.ndarray, parts: np.ndarray) -> None:
        """No continuous law from now on for the ``parts`` (a part mask) of the columns in ``lost`` (a column mask)."""
        self.state[block].applies[parts & lost[self.column[block]]] = False

    def advance(self, block: str, settings: tuple[np.ndarray, ...], key, inputs: dict, momentum_law: bool) -> None:
        """One optimizer step of every part (``laws.advance``): ``settings`` per optimizer param group
        (eta, lambda, mu, tau, nesterov), ``key`` a hashable that changes when they do (the oscillator's
        propagators are exponentiated once per group and key); ``inputs``: group (each part's param
        group, -1: none), x (X_B), g (G_B), c (C_B), moves, known, has_buffer per part."""
        if not self.parts[block]:
            return
        group = np.maximum(inputs["group"], 0)
        x = inputs["x"].copy()
        # the symmetry: sum_B X_B = 0 over a column whose every gradient is known, applied to the
        # column's first moving part (the X of a part that does not move is never read)
        column = self.column[block]
        n_columns = int(column.max()) + 1
        unknown = np.bincount(column, weights=(~inputs["known"]).astype(np.float64), minlength=n_columns) > 0
        total = np.bincount(column, weights=x, minlength=n_columns)
        moving = np.flatnonzero(inputs["moves"])
        _, at = np.unique(column[moving], return_index=True)
        first = moving[at]
        first = first[~unknown[column[first]]]
        x[first] -= total[column[first]]
        spring = 1.0 if block == "translation" else 2.0
        step = self._steps(key, settings, spring, group, momentum_law)
        advance(self.state[block], spring, step, x, inputs.get("g"), inputs.get("c"), inputs["moves"],
                ~inputs["has_buffer"], momentum_law)

    def predictions(self, block: str, width: int, momentum_law: bool) -> tuple[np.ndarray, np.ndarray]:
        """Per column (``width`` of them; columns without parts 0): the summed discrete and continuous
        predictions (continuous NaN where a part has none)."""
        column, state = self.column[block], self.state[block]
        discrete = np.bincount(column, weights=state.q, minlength=width)
        values = state.oscillator[:, 0] if momentum_law else state.flow
        continuous = np.bincount(column, weights=values, minlength=width)
        broken = np.bincount(column, weights=(~state.applies).astype(np.float64), minlength=width)
        continuous[broken > 0] = np.nan
        return discrete, continuous

    def state_dict(self) -> dict:
        return {b: state.state_dict() for b, state in self.state.items()}

    def load_state_dict(self, state: dict) -> None:
        if "q" in state:  # the format before laws.LawState: {field: {block: values}}
            renamed = {"continuous_applies": "applies"}
            state = {b: {renamed.get(name, name): values[b] for name, values in state.items()} for b in self.parts}
        for b, values in state.items():
            self.state[b].load_state_dict(values)
