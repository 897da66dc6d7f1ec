"""shockwatch: symmetry-reduced SGD, local entropy, Burgers shocks and conservation laws.

Layers, data flowing one way (see DESIGN.md): pde <- symmetry <- quotient <- mechanics/entropy
<- monitor <- cli/report. Only ``pde`` exists so far.
"""

from . import pde

__version__ = "0.1.0"

__all__ = ["pde", "__version__"]
