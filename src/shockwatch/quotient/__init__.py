"""Quotient charts: the canonical representative of an orbit, horizontal projection, push-forward.

Reads parameter groups only from a ``SymmetrySet`` (symmetry layer); knows nothing of training.
"""

from .chart import Canonical, canonical, gl_invariant, push_forward, relu_unit_coordinates
from .projection import Metric, OrbitOperator, horizontal_projection

__all__ = ["Canonical", "Metric", "OrbitOperator", "canonical", "gl_invariant", "horizontal_projection", "push_forward",
           "relu_unit_coordinates"]
