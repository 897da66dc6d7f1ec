"""shockwatch: symmetry-reduced SGD, local entropy, Burgers shocks and conservation laws.

Layers, data flowing one way (see DESIGN.md): pde <- symmetry <- quotient <- mechanics/entropy
<- monitor <- cli/report. So far: ``pde``, ``models``, ``symmetry`` (translation, scale, rescale,
permutation and attention GL groups, detected and verified) and ``quotient`` (canonical gauge,
horizontal projection, push-forward).
"""

from . import mechanics, models, pde, quotient, symmetry
from .mechanics import ConservationTracker
from .symmetry import Kind, Symmetry, SymmetrySet, find_symmetries, verify_symmetries

__version__ = "0.1.0"

__all__ = ["ConservationTracker", "Kind", "Symmetry", "SymmetrySet", "__version__", "find_symmetries", "mechanics", "models", "pde", "quotient", "symmetry",
           "verify_symmetries"]
