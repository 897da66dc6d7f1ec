"""Quotient charts: the canonical representative of an orbit, horizontal projection, push-forward.

Reads parameter groups only from a ``SymmetrySet`` (symmetry layer); knows nothing of training.
"""

from .chart import Canonical, canonical, gl_invariant, push_forward, relu_unit_coordinates
from .closure import ClosureReport, closure_test
from .entropy import (
    Direction,
    LangevinGradient,
    MonteCarloEntropy,
    QuotientChart,
    SliceEntropy,
    batched_loss,
    langevin_gradient,
    monte_carlo_entropy,
    slice_entropy,
    sphere_walk,
)
from .projectability import Projectability, QuotientMoments, projectability, quotient_moments
from .projection import HorizontalProjector, Metric, OrbitOperator, horizontal_projection, horizontal_projector

__all__ = ["Canonical", "ClosureReport", "closure_test", "Direction", "HorizontalProjector", "LangevinGradient", "Metric", "MonteCarloEntropy", "OrbitOperator", "Projectability", "QuotientMoments", "projectability", "quotient_moments", "QuotientChart",
           "SliceEntropy", "batched_loss", "canonical", "gl_invariant", "horizontal_projection", "horizontal_projector", "langevin_gradient",
           "monte_carlo_entropy", "push_forward", "relu_unit_coordinates", "slice_entropy", "sphere_walk"]
