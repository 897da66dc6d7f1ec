"""Integrations with training frameworks: ``ShockwatchCallback`` runs a ``Monitor`` inside a Lightning
``Trainer`` (``shockwatch.integrations.lightning``; needs ``pip install lightning``).

Imported lazily, so ``import shockwatch.integrations`` works without the framework installed; asking for
``ShockwatchCallback`` without Lightning raises ImportError saying what to install.
"""

from __future__ import annotations

__all__ = ["ShockwatchCallback"]


def __getattr__(name: str):
    if name == "ShockwatchCallback":
        from .lightning import ShockwatchCallback

        return ShockwatchCallback
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
