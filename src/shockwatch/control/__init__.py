"""Acting on live warnings (Miyagawa 2026 §6, the third use): ``Controller`` and its actions."""

from .controller import (
           Accumulate,
           Action,
           CapLogits,
           Controller,
           CutLR,
           InjectNoise,
           Intervention,
           SkipStep,
)
from .logit_cap import LogitCapMode, capped_attention, soft_cap

__all__ = ["Accumulate", "Action", "CapLogits", "Controller", "CutLR", "InjectNoise", "Intervention", "LogitCapMode",
           "SkipStep", "capped_attention", "soft_cap"]
