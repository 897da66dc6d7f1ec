"""Small, configurable, CPU-friendly versions of what users train (no weights downloaded)."""

from .zoo import BUILT_IN, Activation, Norm, build, mlp, vgg

__all__ = ["BUILT_IN", "Activation", "Norm", "build", "mlp", "vgg"]
