"""Progress bars for experiments that train step by step: one context, one bar per run."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import nullcontext


def progress_bars(enabled: bool):
    """A transient rich ``Progress`` (entered with ``with``) when ``enabled``, else a context yielding None."""
    if not enabled:
        return nullcontext()
    from rich.progress import Progress

    return Progress(transient=True)


def step_bar(bar, label: str, total: int) -> Callable[[int], None] | None:
    """A new bar of ``total`` steps on ``bar`` (a ``Progress`` or None) and the ``progress(step)`` callback
    that ``testbeds.train`` takes; None without a ``Progress``."""
    if bar is None:
        return None
    task = bar.add_task(label, total=total)
    return lambda step: bar.update(task, completed=step)
