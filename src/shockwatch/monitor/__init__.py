"""The training monitor: symmetry-aware observables, a SQLite run store, curvature, attention
observables, and the warning rules and event detector the §6 prediction is scored with."""

from .attention import attention_observables
from .curvature import Curvature, adam_preconditioner, curvature
from .monitor import Monitor, Schedule
from .path_norm import path_norm, path_norm_unsupported
from .sinks import MLflowSink, Sink, TensorBoardSink
from .store import RunStore
from .warnings import (
    Approach,
    Crossing,
    EarlyWarning,
    Rule,
    Score,
    abrupt_changes,
    default_rules,
    midpoint_crossing,
    score,
    threshold_warnings,
    warnings_in,
)

__all__ = ["Approach", "Crossing", "Curvature", "EarlyWarning", "MLflowSink", "Monitor", "Rule", "RunStore", "Schedule",
           "Score", "Sink", "TensorBoardSink", "abrupt_changes", "adam_preconditioner", "attention_observables", "curvature",
           "default_rules", "midpoint_crossing", "path_norm", "path_norm_unsupported", "score", "threshold_warnings",
           "warnings_in"]
