"""The training monitor: symmetry-aware observables, a SQLite run store, curvature, attention
observables, and the warning rules and event detector the §6 prediction is scored with."""

from .attention import attention_observables
from .curvature import Curvature, curvature
from .monitor import Monitor
from .store import RunStore
from .warnings import Score, abrupt_changes, score, threshold_warnings

__all__ = ["Curvature", "Monitor", "RunStore", "Score", "abrupt_changes", "attention_observables", "curvature", "score",
           "threshold_warnings"]
