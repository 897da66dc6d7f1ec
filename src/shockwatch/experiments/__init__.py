"""Reproductions of the papers' experiments: one module each, ``run(Config) -> Result``, ``plot``."""

from types import ModuleType

from . import (
    burgers_shock,
    control,
    closure,
    falsifiable_prediction,
    hopf_cole_relu,
    mean_field,
    neural_mechanics,
    quotient_sde,
    sharpening,
    testbeds,
    transformer_spikes,
)

EXPERIMENTS: dict[str, ModuleType] = {module.NAME: module for module in (burgers_shock, neural_mechanics, hopf_cole_relu, quotient_sde, closure, mean_field, falsifiable_prediction,
                                                                     transformer_spikes, control, sharpening)}

__all__ = ["EXPERIMENTS", "burgers_shock", "closure", "control", "falsifiable_prediction", "hopf_cole_relu", "mean_field", "neural_mechanics",
           "quotient_sde", "sharpening", "testbeds", "transformer_spikes"]
