"""Small, configurable, CPU-friendly versions of what users train (no weights downloaded)."""

from .gpt import GPT, CausalSelfAttention, GPTConfig
from .zoo import BUILT_IN, Activation, Norm, build, mlp, vgg

__all__ = ["GPT", "BUILT_IN", "CausalSelfAttention", "GPTConfig", "Activation", "Norm", "build", "mlp", "vgg"]
