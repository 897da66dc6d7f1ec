"""Noether charges of a training run and the laws that predict them (Kunin et al. 2021)."""

from .tracker import ConservationReport, ConservationTracker

__all__ = ["ConservationReport", "ConservationTracker"]
