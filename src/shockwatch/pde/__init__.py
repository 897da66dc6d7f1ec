"""Numerics of Miyagawa 2026 §3-§4 on grids and manifolds; knows nothing of models.

Heat semigroups and local entropy in the log domain, Hopf-Cole and Hopf-Lax solutions,
Hamilton-Jacobi residuals, conservative Burgers solvers and shock geometry. NumPy arrays or
torch tensors in, the same kind out.
"""

from .burgers import (
    WENO5,
    Boundary,
    Godunov,
    Scheme,
    Stepper,
    godunov_flux,
    solve_burgers,
    solve_burgers_at,
    ssp_step,
)
from .differences import fd_weights, finite_difference
from .hamilton_jacobi import hj_residual, hj_residual_2d
from .heat import Domain, HopfCole, burgers_slope, burgers_velocity, hopf_cole, hopf_lax, hopf_lax_velocity, local_entropy
from .sphere import log_heat_kernel_sphere, sphere_grid, sphere_local_entropy
from .shocks import Crossing, Shock, ShockPath, characteristics, first_crossing, rankine_hugoniot_speed, shock_path, shock_time, shocks_at

__all__ = [
    "WENO5",
    "Crossing",
    "Shock",
    "ShockPath",
    "shock_path",
    "characteristics",
    "first_crossing",
    "hj_residual",
    "hj_residual_2d",
    "rankine_hugoniot_speed",
    "shock_time",
    "shocks_at",
    "log_heat_kernel_sphere",
    "sphere_grid",
    "sphere_local_entropy",
    "Boundary",
    "Godunov",
    "Scheme",
    "Stepper",
    "ssp_step",
    "godunov_flux",
    "solve_burgers",
    "solve_burgers_at",
    "Domain",
    "burgers_slope",
    "burgers_velocity",
    "fd_weights",
    "finite_difference",
    "HopfCole",
    "hopf_cole",
    "hopf_lax",
    "hopf_lax_velocity",
    "local_entropy",
]
