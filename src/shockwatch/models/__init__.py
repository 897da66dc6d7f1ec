"""Small, configurable, CPU-friendly versions of what users train (no weights downloaded)."""

from .zoo import Activation, Norm, mlp, vgg

__all__ = ["Activation", "Norm", "mlp", "vgg"]
