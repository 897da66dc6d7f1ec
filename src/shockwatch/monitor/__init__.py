"""The training monitor: symmetry-aware observables every step, written to a SQLite run store."""

from .monitor import Monitor
from .store import RunStore

__all__ = ["Monitor", "RunStore"]
