"""MLPs and VGG-style CNNs as plain ``nn.Sequential`` stacks, sized for a CPU."""

from __future__ import annotations

import enum
from collections.abc import Sequence

import torch
from torch import nn

__all__ = ["Activation", "BUILT_IN", "Norm", "ResidualBlock", "build", "mlp", "resnet", "vgg", "VGG_LAYOUTS"]


class Activation(enum.StrEnum):
    RELU = "relu"
    LEAKY_RELU = "leaky_relu"
    GELU = "gelu"
    TANH = "tanh"
    IDENTITY = "identity"


class Norm(enum.StrEnum):
    NONE = "none"
    BATCH = "batch"
    LAYER = "layer"
    RMS = "rms"


_ACTIVATIONS = {
    Activation.RELU: nn.ReLU,
    Activation.LEAKY_RELU: lambda: nn.LeakyReLU(0.1),
    Activation.GELU: nn.GELU,
    Activation.TANH: nn.Tanh,
    Activation.IDENTITY: nn.Identity,
}


def _norm_1d(norm: Norm, width: int) -> nn.Module | None:
    if norm is Norm.BATCH:
        return nn.BatchNorm1d(width)
    if norm is Norm.LAYER:
        return nn.LayerNorm(width)
    if norm is Norm.RMS:
        return nn.RMSNorm(width)
    return None


def mlp(widths: Sequence[int] = (2, 32, 32, 3), activation: str = "relu", bias: bool = True,
        norm: str = "none") -> nn.Sequential:
    """Linear -> [norm] -> activation, repeated; the last Linear gives the logits.

    ``widths`` = (input, hidden..., output), at least two entries, all positive.
    """
    widths = tuple(int(w) for w in widths)
    if len(widths) < 2 or min(widths) < 1:
        raise ValueError(f"widths must have >= 2 positive entries (input, ..., output), got {widths}")
    activation, norm = Activation(activation), Norm(norm)
    layers: list[nn.Module] = []
    for i, (fan_in, fan_out) in enumerate(zip(widths[:-1], widths[1:])):
        layers.append(nn.Linear(fan_in, fan_out, bias=bias))
        if i < len(widths) - 2:
            if (module := _norm_1d(norm, fan_out)) is not None:
                layers.append(module)
            layers.append(_ACTIVATIONS[activation]())
    return nn.Sequential(*layers)


VGG_LAYOUTS = {
    "vgg11": (64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"),
    "vgg16": (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"),
    "tiny": (16, "M", 32, "M"),
}


def vgg(layout: str | Sequence = "vgg11", width_divisor: int = 8, batch_norm: bool = True,
        num_classes: int = 10, in_channels: int = 3, image_size: int = 32, hidden: int = 64) -> nn.Sequential:
    """A VGG-style CNN: 3x3 conv -> [BatchNorm] -> ReLU blocks, 2x2 max-pools at "M", then
    flatten -> Linear -> ReLU -> Linear (logits). Channel counts are the layout's divided by
    ``width_divisor`` (>= 1 channel); ``image_size`` must survive the pools."""
    spec = VGG_LAYOUTS[layout] if isinstance(layout, str) else tuple(layout)
    pools = sum(1 for item in spec if item == "M")
    if image_size % (2**pools):
        raise ValueError(f"image_size {image_size} is not divisible by 2^{pools} (the layout's max-pools)")
    layers: list[nn.Module] = []
    channels = in_channels
    for item in spec:
        if item == "M":
            layers.append(nn.MaxPool2d(2))
            continue
        out = max(1, int(item) // width_divisor)
        layers.append(nn.Conv2d(channels, out, 3, padding=1))
        if batch_norm:
            layers.append(nn.BatchNorm2d(out))
        layers.append(nn.ReLU())
        channels = out
    side = image_size // 2**pools
    layers += [nn.Flatten(), nn.Linear(channels * side * side, hidden), nn.ReLU(), nn.Linear(hidden, num_classes)]
    return nn.Sequential(*layers)


class ResidualBlock(nn.Module):
    """conv -> BatchNorm -> ReLU -> conv -> BatchNorm, added to the input, then ReLU."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)

    def forward(self, x):
        return torch.relu(x + self.bn2(self.conv2(torch.relu(self.bn1(self.conv1(x))))))


def resnet(channels: int = 8, blocks: int = 2, num_classes: int = 10, in_channels: int = 3) -> nn.Sequential:
    """A small residual CNN: stem conv -> BN -> ReLU, residual blocks, global average pool, Linear."""
    return nn.Sequential(
        nn.Conv2d(in_channels, channels, 3, padding=1, bias=False), nn.BatchNorm2d(channels), nn.ReLU(),
        *(ResidualBlock(channels) for _ in range(blocks)),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(channels, num_classes),
    )


# name -> (model factory, example input shape without the batch axis, vocabulary size for token
# inputs or None for real-valued ones); CPU-sized defaults
BUILT_IN = {
    "mlp": (lambda: mlp((16, 64, 64, 10)), (16,), None),
    "mlp-gelu": (lambda: mlp((16, 64, 64, 10), activation="gelu"), (16,), None),
    "mlp-batchnorm": (lambda: mlp((16, 64, 64, 10), norm="batch"), (16,), None),
    "mlp-layernorm": (lambda: mlp((16, 64, 64, 10), norm="layer"), (16,), None),
    "vgg11": (lambda: vgg("vgg11", batch_norm=False), (3, 32, 32), None),
    "vgg11-bn": (lambda: vgg("vgg11", batch_norm=True), (3, 32, 32), None),
    "vgg16-bn": (lambda: vgg("vgg16", batch_norm=True), (3, 32, 32), None),
    "resnet": (lambda: resnet(), (3, 16, 16), None),
    "gpt": (lambda: _gpt(), (16,), 32),
}


def _gpt() -> nn.Module:
    from .gpt import GPT, GPTConfig  # a sibling module; imported here to keep zoo's import light

    return GPT(GPTConfig(vocab_size=32, block_size=16, n_layer=2, n_head=4, d_model=32))


def build(name: str) -> tuple[nn.Module, tuple[int, ...], int | None]:
    """A built-in model by name, the shape of one example (no batch axis) and its vocabulary (tokens) or None."""
    if name not in BUILT_IN:
        raise ValueError(f"unknown model {name!r}; built-in models: {', '.join(BUILT_IN)}")
    factory, shape, vocabulary = BUILT_IN[name]
    return factory(), shape, vocabulary
