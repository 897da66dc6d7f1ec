"""Noether charges of a training run and the laws that predict them (Kunin et al. 2021)."""

from .blocks import NoLaw
from .tracker import ConservationReport, ConservationTracker

__all__ = ["ConservationReport", "ConservationTracker", "NoLaw"]
