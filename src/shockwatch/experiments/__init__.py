"""Reproductions of the papers' experiments: one module each, ``run(Config) -> Result``, ``plot``."""

from types import ModuleType

from . import burgers_shock, neural_mechanics

EXPERIMENTS: dict[str, ModuleType] = {burgers_shock.NAME: burgers_shock, neural_mechanics.NAME: neural_mechanics}

__all__ = ["EXPERIMENTS", "burgers_shock", "neural_mechanics"]
