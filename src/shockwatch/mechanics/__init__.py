"""Noether charges of a training run and the laws that predict them (Kunin et al. 2021)."""

from .blocks import NoLaw
from .tracker import ConservationReport, ConservationTracker, size_floor_of, unwrapped_optimizer

__all__ = ["ConservationReport", "ConservationTracker", "NoLaw", "size_floor_of", "unwrapped_optimizer"]
