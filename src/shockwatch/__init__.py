"""shockwatch: symmetry-reduced SGD, local entropy, Burgers shocks and conservation laws.

Layers, data flowing one way (see DESIGN.md): pde <- symmetry <- quotient <- mechanics/entropy
<- monitor <- cli/report. So far: ``pde``, ``models`` and ``symmetry`` (translation, scale and
rescale groups of MLPs and CNNs).
"""

from . import models, pde, quotient, symmetry
from .symmetry import Kind, Symmetry, SymmetrySet, find_symmetries, verify_symmetries

__version__ = "0.1.0"

__all__ = ["Kind", "Symmetry", "SymmetrySet", "__version__", "find_symmetries", "models", "pde", "quotient", "symmetry",
           "verify_symmetries"]
