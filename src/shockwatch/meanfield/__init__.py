"""Mean-field particles of wide two-layer ReLU networks on the rescaling quotient (Miyagawa 2026, §5.5).

Push particles theta_j = (a_j, u_j) to (gamma_j, s_j) = (a_j |u_j|, u_j / |u_j|), carry their
velocities with the exact derivative of that map, and test Thm 5.4's weak transport equation and
Assumption 5.3 (projectability of the pushed velocity) on them. Imports no model or training code.
"""

from .particles import (
    QuotientTestFunction,
    balance,
    charge,
    default_test_functions,
    integrals,
    lift,
    output,
    particle_velocity,
    pushed_velocity,
    pushforward,
    quotient_velocity,
    rebalance,
    transport_residual,
    velocity_factors,
    weak_velocity,
)

__all__ = ["QuotientTestFunction", "balance", "charge", "default_test_functions", "integrals", "lift", "output",
           "particle_velocity", "pushed_velocity", "pushforward", "quotient_velocity", "rebalance",
           "transport_residual", "velocity_factors", "weak_velocity"]
