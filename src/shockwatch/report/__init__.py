"""Drawing only: turns what the monitor stored into a self-contained HTML report."""

from .html import write_report

__all__ = ["write_report"]
