r"""Kunin et al. 2021, Figure 1, on data that needs no download: charges of VGG-style networks under SGD.

Panels (empirical in colour, theory dashed, one line per setting):
1. translation: the column sum of the classifier's first input column (VGG without BatchNorm),
   weight-decay sweep; theory eq. 4, e^{-lambda t};
2. scale: the squared norm of the first conv channel's incoming weights (VGG with BatchNorm),
   weight-decay sweep; theory eq. 5 with the run's gradient norms;
3. rescale: |in|^2 - |out|^2 of the first unit of the second conv layer (VGG without BatchNorm),
   weight-decay sweep; theory eq. 6;
4. momentum: the translation charge for momentum 0, 0.9, 0.99 at one weight decay; theory Appendix
   B's damped oscillator (SGD without momentum: eq. 4).
The JSON gives, per setting and kind, the largest relative error of the exact discrete law (float64
round-off) and of the continuous law, and the continuous law's median error over groups at the last
step. Measured at the default size: discrete <= 3e-12 everywhere; continuous <= 2.6e-3 without
momentum and 4.9e-3 at momentum 0.9; at momentum 0.99 (underdamped, weight decay 0.05) the maximum
reaches 0.8 (translation) and 2.4e2 (rescale) on groups whose size weight decay drove to ~1e-3 and
~1e-5 of their start (dead units: relative errors there are ill-conditioned), while the median
group is at 8e-4.

Data: 3x16x16 Gaussian images labelled by a fixed random linear teacher on their 4x4 average-pooled
version (10 classes): learnable, deterministic, no download. Time t = eta * steps.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from .. import models
from ..mechanics import ConservationTracker
from ..symmetry import find_symmetries
from ._files import write_result

NAME = "neural-mechanics"


@dataclass(frozen=True)
class Config:
    weight_decays: tuple[float, ...] = (0.0, 1e-3, 5e-3, 2e-2)
    momenta: tuple[float, ...] = (0.0, 0.9, 0.99)
    momentum_weight_decay: float = 5e-2  # underdamped for momentum 0.99 (period ~3 time units)
    lr: float = 0.1
    momentum_lr: float = 0.01  # eta * (1 - beta)^-1 stays stable for beta = 0.99
    steps: int = 300
    batch: int = 64
    samples: int = 1024
    width_divisor: int = 2  # channels of the "tiny" layout (16, M, 32, M) divided by this
    hidden: int = 32
    seed: int = 0

    def __post_init__(self) -> None:
        if self.lr <= 0 or self.momentum_lr <= 0 or self.steps < 1 or self.batch < 2:
            raise ValueError(f"need lr > 0, steps >= 1, batch >= 2, got {self.lr=}, {self.steps=}, {self.batch=}")
        if any(w < 0 for w in self.weight_decays) or any(not 0 <= m < 1 for m in self.momenta):
            raise ValueError(f"weight decays must be >= 0 and momenta in [0, 1), got {self.weight_decays}, {self.momenta}")

    @classmethod
    def full(cls) -> Config:
        """A GPU-sized run: wider network, more data and steps."""
        return cls(steps=5000, samples=16384, batch=256, width_divisor=1, hidden=256)


@dataclass(frozen=True)
class Result:
    config: Config
    times: dict[str, list[float]] = field(default_factory=dict)  # setting -> t = eta * step
    curves: dict[str, dict[str, list[float]]] = field(default_factory=dict)  # setting/panel -> empirical & theory
    errors: dict[str, dict[str, dict[str, float]]] = field(default_factory=dict)  # setting -> kind -> law -> err

    def to_json(self) -> dict:
        return asdict(self)

    def save(self, out: Path) -> list[Path]:
        return write_result(out, "neural_mechanics", self.to_json(), plot(self))


def _data(config: Config) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(config.seed)
    images = torch.randn(config.samples, 3, 16, 16, generator=generator, dtype=torch.float64)
    teacher = torch.randn(3 * 4 * 4, 10, generator=generator, dtype=torch.float64)
    labels = (F.avg_pool2d(images, 4).flatten(1) @ teacher).argmax(1)
    return images, labels


def _train(config: Config, batch_norm: bool, lr: float, weight_decay: float, momentum: float):
    torch.manual_seed(config.seed)
    model = models.vgg("tiny", width_divisor=config.width_divisor, batch_norm=batch_norm, image_size=16,
                       hidden=config.hidden).double()
    for module in model.modules():  # exact scale symmetry: BatchNorm's eps would break it slightly
        if isinstance(module, torch.nn.BatchNorm2d):
            module.eps = 1e-30
    images, labels = _data(config)
    symmetries = find_symmetries(model, images[: config.batch])
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay)
    tracker = ConservationTracker(model, optimizer, symmetries)
    generator = torch.Generator().manual_seed(config.seed + 1)
    for _ in range(config.steps):
        index = torch.randint(0, config.samples, (config.batch,), generator=generator)
        optimizer.zero_grad()
        F.cross_entropy(model(images[index]), labels[index]).backward()
        optimizer.step()
        tracker.update()
    return symmetries, tracker.report()


def _panel_index(symmetries, kind: str, prefix: str) -> int:
    """Position (in of_kind order) of the first group of ``kind`` whose label starts with ``prefix``."""
    labels = [s.label for s in symmetries.of_kind(kind)]
    return next(i for i, label in enumerate(labels) if label.startswith(prefix))


def run(config: Config = Config(), progress: bool = False) -> Result:
    """All sweeps; a few seconds per setting on a CPU at the default size."""
    times, curves, errors = {}, {}, {}

    def record(setting: str, symmetries, report, lr: float, panels: dict[str, tuple[str, str]]) -> None:
        times[setting] = [lr * step for step in report.steps]
        errors[setting] = {}
        for kind in ("translation", "scale", "rescale"):
            if not symmetries.of_kind(kind):
                continue
            laws = {"discrete": report.max_rel_error(kind, "discrete")}
            if report.continuous.get(kind) is not None:
                laws["continuous"] = report.max_rel_error(kind, "continuous")
                laws["continuous_median_final"] = float(report.rel_errors(kind, "continuous")[-1].median())
            errors[setting][kind] = laws
        for panel, (kind, prefix) in panels.items():
            i = _panel_index(symmetries, kind, prefix)
            theory = report.continuous[kind]
            curves[f"{setting}/{panel}"] = {"empirical": report.empirical[kind][:, i].tolist(),
                                            "theory": theory[:, i].tolist() if theory is not None else []}

    for weight_decay in config.weight_decays:
        plain, report = _train(config, False, config.lr, weight_decay, 0.0)
        record(f"plain/wd={weight_decay:g}", plain, report, config.lr,
               {"translation": ("translation", f"translation/{_classifier(plain)}/column0"),
                "rescale": ("rescale", f"rescale/{_second_conv(plain)}/unit0")})
        normed, report = _train(config, True, config.lr, weight_decay, 0.0)
        record(f"batchnorm/wd={weight_decay:g}", normed, report, config.lr,
               {"scale": ("scale", "scale/0/unit0")})
    for momentum in config.momenta:
        plain, report = _train(config, False, config.momentum_lr, config.momentum_weight_decay, momentum)
        record(f"momentum={momentum:g}", plain, report, config.momentum_lr,
               {"translation": ("translation", f"translation/{_classifier(plain)}/column0")})
    return Result(config, times, curves, errors)


def _classifier(symmetries) -> str:
    return symmetries.of_kind("translation")[0].label.split("/")[1]


def _second_conv(symmetries) -> str:
    layers = []
    for sym in symmetries.of_kind("rescale"):
        layer = sym.label.split("/")[1]
        if layer not in layers:
            layers.append(layer)
    return layers[1]


def plot(result: Result):
    """Four panels like Kunin et al.'s Figure 1: empirical (colour) and theory (black dashed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 4, figsize=(17, 3.8), layout="constrained")
    panels = [("plain", "translation", "translation: column sum"), ("batchnorm", "scale", "scale: |theta_A|^2"),
              ("plain", "rescale", "rescale: |in|^2 - |out|^2"), ("momentum", "translation", "momentum sweep")]
    for ax, (family, panel, title) in zip(axes, panels):
        keys = [k for k in result.curves if k.startswith(family) and k.endswith("/" + panel)]
        colours = plt.cm.viridis([i / max(1, len(keys) - 1) for i in range(len(keys))])
        for colour, key in zip(colours, keys):
            setting = key.rsplit("/", 1)[0]
            t = result.times[setting]
            ax.plot(t, result.curves[key]["empirical"], color=colour, lw=1.6, label=setting.split("/")[-1])
            if result.curves[key]["theory"]:
                ax.plot(t, result.curves[key]["theory"], "k--", lw=0.8)
        ax.set_title(title)
        ax.set_xlabel("t = eta * step")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle("Noether charges under SGD: empirical (colour) vs theory (dashed), Kunin et al. 2021 Fig. 1",
                 fontsize=10)
    return fig

