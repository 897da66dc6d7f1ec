"""Groups acting on a model's parameters: one ``Symmetry`` type, detection, verification.

Only this layer turns ``named_parameters()`` into parameter groups; every later layer reads them
from a ``SymmetrySet``.
"""

from .detect import ExampleInputError, exact_defects, find_symmetries
from .group import (
    Kind,
    Slot,
    Symmetry,
    SymmetrySet,
    act,
    act_gl,
    act_rotation,
    generator,
    generator_entries,
    gl_charges,
    gl_generator_combination,
    gl_generator_inner,
    permutation_generators,
    permute,
    slot_fits,
    unit_matrix,
)
from .trace import EXACT_TOLERANCE
from .verify import Verification, VerificationRow, verify_symmetries

__all__ = ["EXACT_TOLERANCE", "ExampleInputError", "Kind", "Slot", "Symmetry", "SymmetrySet", "Verification", "VerificationRow", "act", "act_gl", "act_rotation", "gl_charges", "gl_generator_combination", "gl_generator_inner",
           "exact_defects", "find_symmetries", "generator", "generator_entries", "permutation_generators", "permute", "slot_fits", "unit_matrix", "verify_symmetries"]
