"""shockwatch: symmetry-reduced SGD, local entropy, Burgers shocks and conservation laws.

Layers, data flowing one way (see DESIGN.md): pde <- symmetry <- quotient <- mechanics/entropy
<- monitor <- cli/report: ``pde``, ``models``, ``symmetry`` (translation, scale, rescale,
permutation and attention GL groups, detected and verified), ``quotient`` (canonical gauge,
horizontal projection, push-forward, local entropy, projectability, closure), ``mechanics``
(conservation laws), ``meanfield`` and the first step of ``monitor``.
"""

from . import control, meanfield, mechanics, models, monitor, pde, quotient, symmetry
from .mechanics import ConservationTracker
from .monitor import Monitor, Schedule
from .symmetry import Kind, Symmetry, SymmetrySet, find_symmetries, verify_symmetries

__version__ = "0.1.0"

__all__ = ["ConservationTracker", "Kind", "Monitor", "Schedule", "Symmetry", "SymmetrySet", "__version__", "control", "find_symmetries", "meanfield",
           "mechanics", "models", "monitor", "pde", "quotient", "symmetry", "verify_symmetries"]
