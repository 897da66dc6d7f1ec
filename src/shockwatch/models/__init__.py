"""Small, configurable, CPU-friendly versions of what users train (no weights downloaded)."""

from . import huggingface
from .gpt import GPT, CausalSelfAttention, GPTConfig
from .zoo import BUILT_IN, Activation, Norm, ResidualBlock, build, mlp, resnet, vgg

__all__ = ["GPT", "BUILT_IN", "CausalSelfAttention", "GPTConfig", "Activation", "Norm", "ResidualBlock", "build", "huggingface", "mlp", "resnet", "vgg"]
