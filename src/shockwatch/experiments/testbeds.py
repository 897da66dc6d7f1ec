r"""Built-in training testbeds with abrupt transitions whose outcomes are published, sized for a CPU.

Each testbed is a model, an optimizer, a loss, a full batch of generated data (no downloads) and an
``evaluate`` that gives the curves carrying the transition; ``train`` is the plain loop. Runs are
deterministic given ``seed``: data from a ``torch.Generator``, weights drawn under a forked and
seeded global RNG (the caller's RNG state is left as it was).

1. ``grokking-mlp``: modular addition c = (a + b) mod p. The pair (a, b) is embedded by one shared
   table E (p x e), the two rows concatenated, then logits = W_2 relu(W_1 [E_a; E_b] + b_1) + b_2.
   Cross-entropy on a random fraction of the p^2 pairs, full batch, AdamW with decoupled weight decay
   (theta <- theta - lr (m_hat / (sqrt(v_hat) + eps) + wd theta)). Published: train accuracy reaches
   ~1 early, test accuracy jumps to ~1 much later ("grokking": Power et al. 2022; Liu et al. 2022,
   "Towards understanding grokking" and "Omnigrok"; Gromov 2023). Weight decay is what drives the
   memorising solution towards the generalising one, so it sets the delay.
2. ``grokking-transformer``: the same task as the token sequence [a, b, '='] fed to the project's
   GPT (``shockwatch.models.gpt``, one pre-LN block), the answer read from the logits at the last
   position restricted to the p number tokens. Same published outcome (Power et al. 2022; Nanda et
   al. 2023, "Progress measures for grokking via mechanistic interpretability"). After memorisation
   the train loss spikes every 50-150 steps (LayerNorm + weight decay under full-batch AdamW, the
   "slingshot" of Thilak et al. 2022; see ``LastTokenGPT``); test accuracy climbs through them.
   Seeds 0-3 at "tiny": test acc first >= 0.9 at steps 825, 1500, 900, 1375 (seed 3 ends at 0.80,
   inside a spike); the MLP is the cleaner of the two (seeds 0-3: 950, 725, 825, 825).
3. ``catapult``: a wide two-layer ReLU network in NTK parametrisation,
   f(x) = v^T relu(W x / sqrt(d)) / sqrt(n),  W_ij, v_j ~ N(0, 1),
   MSE L = (1/2m) sum_i (f(x_i) - y_i)^2, full-batch gradient descent with eta = c / lambda0, where
   lambda0 is the top eigenvalue of the loss Hessian at initialisation (Lanczos on Hessian-vector
   products, float64). Linearised dynamics are stable for eta < 2/lambda0; for 2/lambda0 < eta <
   eta_max (~4/lambda0 for this model) the loss first grows exponentially, the curvature then drops
   until it is below 2/eta, and the loss falls ("catapult": Lewkowycz et al. 2020, "The large
   learning rate phase of deep learning: the catapult mechanism"). Inputs have |x| = sqrt(d), labels
   are the signs of a random linear teacher. ``eta_lambda0`` < 2 is the lazy control: no spike.
4. ``edge-of-stability``: full-batch gradient descent with a fixed step eta on a tanh MLP, MSE
   L = (1/2m) sum_i |f(x_i) - onehot(y_i)|^2, labels from a random tanh teacher. Gradient descent on
   a quadratic is stable iff the sharpness (top Hessian eigenvalue) is below 2/eta. Published: the
   sharpness rises during training (progressive sharpening) until it reaches ~2/eta and then hovers
   there, while the loss keeps decreasing, non-monotonically (Cohen et al. 2021, "Gradient descent
   on neural networks typically occurs at the edge of stability").

5. Transformer loss spikes (``SPIKE_TESTBEDS``, each with its control in ``SPIKE_CONTROLS``): the
   project's GPT on generated second-order Markov text under AdamW with the recipes' decay / no-decay
   groups (``decay_groups``), linear warmup and cosine decay (``warmup_cosine``).
   ``attention-spike``: fresh text every step, peak lr 0.3, the z-loss 1e-4 in both arms; attention
   logits grow until attention collapses and the loss leaves its best level for good (Wortsman et al.
   2023). Control ``attention-spike-qknorm``: qk-layernorm.
   ``adam-spike``: one full batch trained to its floor at peak lr 3e-2, beta2 = 0.95; the loss spikes
   and recovers, twice a run. The published mechanism (Bai et al. 2025, arXiv 2506.04805): the squared
   gradients fall below Adam's v, v decays as beta2^t and the preconditioned curvature grows past the
   stability bound. Control ``adam-spike-amsgrad``: AMSGrad, whose v is the running maximum and never
   decays; it has no spike. Measured numbers (the curvature along the update does not grow before these
   spikes) and ground truths: ``experiments.transformer_spikes``.

Scales: "default" shows the transition in roughly 10-60 s of training on a small CPU; "tiny" is a
few-second version for unit tests that still shows it. ``train`` evaluates at step 0 too, so the
curves start from the initialisation. Measured on a shared 2-core CPU, one thread, seed 0 (wall time
of make_testbed + train, which varies 2-3x with the machine's other load; "acc" = accuracy, s1/s2 =
first evaluation with train acc >= 0.99 / test acc >= 0.9):

    grokking-mlp          tiny     p=59, 50% train    ~6-8 s   s1 = 125 (test acc 0.000), s2 = 950
                          default  p=97, 40% train   ~26 s     s1 = 150 (test acc 0.001), s2 = 1625
    grokking-transformer  tiny     p=31, 50% train    ~8 s     s1 = 150 (test acc 0.012), s2 = 825
                          default  p=59, 50% train   ~31-36 s  s1 = 325 (test acc 0.113), s2 = 875
    catapult              tiny     n=512, m=32       ~0.3 s    loss 0.88 -> 25.7 at step 6 -> 7.5e-4;
                                                               sharpness 0.215 (lambda0) -> 0.063 < 2/eta = 0.143
                          default  n=4096, m=128     ~13-28 s  loss 0.74 -> 558 at step 10 -> 3.4e-4;
                                                               sharpness 0.175 (lambda0) -> 0.042 < 2/eta = 0.117
    edge-of-stability     tiny     m=500, 1600 steps ~3.5 s    sharpness 0.41 (2/eta) at step 0, 0.95 (2/eta) at
                                                               step 425, then within [0.96, 1.11] (2/eta)
                          default  m=1000, 4000 steps ~19 s    0.40 -> 0.95 at step 480, then [0.93, 1.07];
                                                               loss 0.078 -> 0.017 after, up on 1/3 of the steps
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from scipy.sparse.linalg import LinearOperator, eigsh
from torch import Tensor, nn

from ..models.gpt import GPT, GPTConfig
from ..monitor.curvature import HessianVectorProducts

__all__ = ["SCALES", "SPIKE_CONTROLS", "SPIKE_TESTBEDS", "TESTBEDS", "Testbed", "make_testbed", "sharpness", "spike_bed",
           "top_hessian_eigenvalue", "train"]

TESTBEDS: tuple[str, ...] = ("grokking-mlp", "grokking-transformer", "catapult", "edge-of-stability")
# Transformer loss spikes, each with its control (the same run with what removes the spikes): issue 18
SPIKE_TESTBEDS: tuple[str, ...] = ("attention-spike", "attention-spike-qknorm", "adam-spike", "adam-spike-amsgrad")
# each control, by the bed it controls
SPIKE_CONTROLS: dict[str, str] = {"attention-spike-qknorm": "attention-spike", "adam-spike-amsgrad": "adam-spike"}


def spike_bed(name: str) -> str:
    """The spike bed that ``name`` (a spike testbed or its control) belongs to."""
    return SPIKE_CONTROLS.get(name, name)
SCALES: tuple[str, ...] = ("default", "tiny")

Batch = tuple[Tensor, Tensor]


@dataclass
class Testbed:
    __test__ = False  # not a pytest class, despite the name (a plain attribute, not a field)

    name: str
    model: nn.Module
    optimizer: torch.optim.Optimizer
    loss_fn: Callable[[Tensor, Tensor], Tensor]  # loss_fn(model(inputs), targets) -> scalar
    train_batch: Callable[[int], Batch]  # step -> (inputs, targets); the full batch every step
    evaluate: Callable[[], dict[str, float]]  # no grad on the live model; restores its train/eval mode
    steps: int
    eval_every: int
    transition: str  # the evaluate() key (or "loss") whose curve carries the published transition
    published: str
    lr: float  # the peak learning rate (the scheduler's multiplier 1)
    notes: dict[str, float] = field(default_factory=dict)
    # stepped once after every optimizer step (and after on_step): warmup and decay, as recipes do
    scheduler: torch.optim.lr_scheduler.LRScheduler | None = None


# ----------------------------------------------------------------------------------- curvature

def top_hessian_eigenvalue(model: nn.Module, loss_fn: Callable[[Tensor, Tensor], Tensor], batch: Batch,
                           *, tol: float = 1e-6) -> float:
    """Largest algebraic eigenvalue of the Hessian of loss_fn(model(inputs), targets) in the
    parameters, by Lanczos (scipy eigsh) on Hessian-vector products of a float64 copy; the caller's
    model, its gradients and the global RNG are not touched."""
    products = HessianVectorProducts(model, loss_fn, batch)  # on a float64 copy
    if products.zero:
        return 0.0  # a loss linear in every parameter has a zero Hessian
    dimension = products.dimension
    # a fixed start vector: the same weights give the same number whenever they are asked
    start = np.random.default_rng(0).standard_normal(dimension)
    operator = LinearOperator((dimension, dimension), matvec=products.hvp, dtype=np.float64)
    value = float(eigsh(operator, k=1, which="LA", tol=tol, v0=start, return_eigenvectors=False)[0])
    if not math.isfinite(value):
        raise FloatingPointError(f"top Hessian eigenvalue is {value}")
    return value


def sharpness(bed: Testbed, batch: Batch) -> float:
    """The top Hessian eigenvalue of ``bed.loss_fn`` on ``batch`` at the testbed's current weights."""
    return top_hessian_eigenvalue(bed.model, bed.loss_fn, batch)


# ---------------------------------------------------------------------------------------- data

def _modular_addition(p: int, train_fraction: float,
                      generator: torch.Generator) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """All p^2 pairs (a, b) as a (p^2, 2) long tensor, labels (a + b) mod p, and a random split
    into train and test indices."""
    pairs = torch.cartesian_prod(torch.arange(p), torch.arange(p))
    labels = pairs.sum(dim=1) % p
    order = torch.randperm(p * p, generator=generator)
    n_train = round(train_fraction * p * p)
    return pairs, labels, order[:n_train], order[n_train:]


def _sphere_inputs(m: int, d: int, generator: torch.Generator) -> Tensor:
    """m Gaussian inputs rescaled to |x| = sqrt(d), so that W x / sqrt(d) has O(1) entries."""
    x = torch.randn(m, d, generator=generator)
    return x / x.norm(dim=1, keepdim=True) * math.sqrt(d)


# -------------------------------------------------------------------------------------- models

class ModularMLP(nn.Module):
    """(batch, 2) ids -> (batch, p) logits: a shared embedding of a and b, concatenated, one ReLU
    hidden layer."""

    def __init__(self, p: int, embed: int, width: int) -> None:
        super().__init__()
        self.embed = nn.Embedding(p, embed)
        self.hidden = nn.Linear(2 * embed, width)
        self.out = nn.Linear(width, p)

    def forward(self, pairs: Tensor) -> Tensor:
        return self.out(F.relu(self.hidden(self.embed(pairs).flatten(1))))


class LastTokenGPT(nn.Module):
    """(batch, 3) token ids [a, b, '='] -> (batch, p) logits of the answer at the last position;
    the '=' token (id p) is not a possible answer, so its logit is dropped.

    The project's pre-LN GPT as it is. Its LayerNorms make everything upstream of ln_f jointly
    scale invariant, and weight decay on scale-invariant weights raises their effective step size,
    so full-batch AdamW training shows periodic loss spikes after memorisation (the "slingshot" of
    Thilak et al. 2022; Li & Arora 2020); test accuracy still jumps through them.
    ``layer_norm=False`` (identities instead, as in Nanda et al.'s model) trains without spikes but,
    measured here at p = 31-59, generalised later or not at all within 3000 steps, depending on seed."""

    def __init__(self, p: int, d_model: int, n_head: int, n_layer: int, layer_norm: bool = True) -> None:
        super().__init__()
        self.p = p
        self.gpt = GPT(GPTConfig(vocab_size=p + 1, block_size=3, n_layer=n_layer, n_head=n_head, d_model=d_model))
        if not layer_norm:
            for block in self.gpt.blocks:
                block.ln_1, block.ln_2 = nn.Identity(), nn.Identity()
            self.gpt.ln_f = nn.Identity()

    def forward(self, idx: Tensor) -> Tensor:
        return self.gpt(idx)[:, -1, : self.p]


class NTKTwoLayer(nn.Module):
    """f(x) = v^T relu(W x / sqrt(d)) / sqrt(n) with W (n x d), v (n) standard normal. Built from
    nn.Linear layers so that find_symmetries sees its n ReLU rescale symmetries (the constant
    factors commute with the rescaling)."""

    def __init__(self, d: int, n: int, generator: torch.Generator) -> None:
        super().__init__()
        self.hidden = nn.Linear(d, n, bias=False)
        self.readout = nn.Linear(n, 1, bias=False)
        with torch.no_grad():
            self.hidden.weight.copy_(torch.randn(n, d, generator=generator))
            self.readout.weight.copy_(torch.randn(1, n, generator=generator))

    def forward(self, x: Tensor) -> Tensor:
        features = F.relu(self.hidden(x) / math.sqrt(self.hidden.in_features))
        return self.readout(features).squeeze(-1) / math.sqrt(self.hidden.out_features)


def _tanh_mlp(d: int, width: int, depth: int, outputs: int) -> nn.Sequential:
    layers: list[nn.Module] = []
    for fan_in in [d] + [width] * (depth - 1):
        layers += [nn.Linear(fan_in, width), nn.Tanh()]
    return nn.Sequential(*layers, nn.Linear(width, outputs))


def _seeded_init(seed: int, build: Callable[[], nn.Module]) -> nn.Module:
    """Build with the global RNG seeded (nn.Module initialisers draw from it) and then restored."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build()


# -------------------------------------------------------------------------------------- losses

def _half_mse(output: Tensor, target: Tensor) -> Tensor:
    """(1/2m) sum_i |f(x_i) - y_i|^2: the scaling under which 2/eta is the GD stability threshold
    of the Hessian as computed here."""
    squared = (output - target) ** 2
    return 0.5 * (squared.sum(dim=1) if squared.dim() > 1 else squared).mean()


# ---------------------------------------------------------------------------------- evaluation

def _classification_eval(model: nn.Module, loss_fn: Callable[[Tensor, Tensor], Tensor],
                         splits: Mapping[str, tuple[Tensor, Tensor, Tensor]]) -> Callable[[], dict[str, float]]:
    """{split}_loss and {split}_accuracy for each split (inputs, loss targets, class labels)."""

    def evaluate() -> dict[str, float]:
        was_training = model.training
        model.eval()
        values: dict[str, float] = {}
        with torch.no_grad():
            for split, (inputs, targets, labels) in splits.items():
                output = model(inputs)
                values[f"{split}_loss"] = float(loss_fn(output, targets))
                values[f"{split}_accuracy"] = float((output.argmax(dim=1) == labels).float().mean())
        model.train(was_training)
        return values

    return evaluate


def _with_sharpness(model: nn.Module, loss_fn: Callable[[Tensor, Tensor], Tensor], batch: Batch,
                    base: Callable[[], dict[str, float]]) -> Callable[[], dict[str, float]]:
    def evaluate() -> dict[str, float]:
        values = base()
        was_training = model.training
        model.eval()
        values["sharpness"] = top_hessian_eigenvalue(model, loss_fn, batch)  # on a float64 copy
        model.train(was_training)
        return values

    return evaluate


# ------------------------------------------------------------------------------------ testbeds

# Sizes chosen by measurement on a shared 2-core CPU (seed 0; module docstring has the numbers)
_GROKKING_MLP = {
    "default": {"p": 97, "train_fraction": 0.4, "embed": 64, "width": 128,
                "lr": 3e-3, "weight_decay": 1.0, "steps": 2500, "eval_every": 25},
    "tiny": {"p": 59, "train_fraction": 0.5, "embed": 64, "width": 128,
             "lr": 3e-3, "weight_decay": 2.0, "steps": 1500, "eval_every": 25},
}
_GROKKING_TRANSFORMER = {
    "default": {"p": 59, "train_fraction": 0.5, "d_model": 32, "n_head": 4,
                "n_layer": 1, "lr": 3e-3, "weight_decay": 1.0, "steps": 2000, "eval_every": 25},
    "tiny": {"p": 31, "train_fraction": 0.5, "d_model": 32, "n_head": 4,
             "n_layer": 1, "lr": 5e-3, "weight_decay": 1.0, "steps": 1500, "eval_every": 25},
}
_CATAPULT = {
    # every evaluation runs Lanczos (~0.15-0.5 s here at this size): the per-step loss shows the spike
    "default": {"width": 4096, "samples": 128, "d": 32, "steps": 300, "eval_every": 10},
    "tiny": {"width": 512, "samples": 32, "d": 16, "steps": 60, "eval_every": 2},
}
# Transformer spike beds (issue 18): sizes and rates chosen by measurement (module docstring)
_SPIKES = {
    "attention-spike": {
        # measured (seeds 0-2, one thread, ~30 s a run without the monitor): without qk-layernorm the
        # largest attention logit grows from ~2 to ~80 by step 200 and to 1e4 after, and the loss leaves
        # its best (0.77-0.92) for good, ending at 2.4-2.8; with it the logits stay below 40 and the loss
        # ends at 0.53-0.61, through short spikes that recover
        "default": {"vocab": 32, "block": 64, "batch": 32, "branching": 2, "order": 2, "d_model": 64, "n_layer": 2,
                    "n_head": 4, "lr": 0.3, "weight_decay": 0.1, "warmup": 300, "z_loss": 1e-4, "steps": 600,
                    "eval_every": 50},
        "tiny": {"vocab": 32, "block": 32, "batch": 16, "branching": 2, "order": 2, "d_model": 32, "n_layer": 2,
                 "n_head": 4, "lr": 0.3, "weight_decay": 0.1, "warmup": 150, "z_loss": 1e-4, "steps": 300,
                 "eval_every": 50},
    },
    "adam-spike": {
        # measured (seeds 0-4, ~15 s a run without the monitor): the loss falls to its floor (~0.03, the
        # text's own noise) and spikes twice a run (steps 157-175 and 352-429) to 41-194 x the previous
        # 20 steps' mean, back within 29-57 steps; AMSGrad (v never decays): none in 5 runs. Larger eps
        # (1e-4 to 3e-2, the preconditioner bounded by 1/eps) still spiked in exploratory runs
        "default": {"vocab": 32, "block": 32, "sequences": 64, "branching": 4, "order": 2, "d_model": 32,
                    "n_layer": 2, "n_head": 4, "lr": 3e-2, "beta2": 0.95, "eps": 1e-8,
                    "weight_decay": 0.1, "warmup": 100, "z_loss": 0.0, "steps": 1000, "eval_every": 50},
        "tiny": {"vocab": 32, "block": 32, "sequences": 32, "branching": 4, "order": 2, "d_model": 32,
                 "n_layer": 2, "n_head": 4, "lr": 3e-2, "beta2": 0.95, "eps": 1e-8,
                 "weight_decay": 0.1, "warmup": 50, "z_loss": 0.0, "steps": 500, "eval_every": 50},
    },
}
_EDGE_OF_STABILITY = {
    "default": {"samples": 1000, "d": 10, "classes": 4, "width": 64,
                "depth": 2, "lr": 0.3, "steps": 4000, "eval_every": 20},
    "tiny": {"samples": 500, "d": 10, "classes": 4, "width": 64,
             "depth": 2, "lr": 0.3, "steps": 1600, "eval_every": 25},
}


def _grokking(name: str, seed: int, cfg: dict, lr: float | None, steps: int | None,
              batch: int | None = None) -> Testbed:
    generator = torch.Generator().manual_seed(seed)
    p = cfg["p"]
    pairs, labels, train_idx, test_idx = _modular_addition(p, cfg["train_fraction"], generator)
    if name == "grokking-mlp":
        inputs = pairs
        model = _seeded_init(seed, lambda: ModularMLP(p, cfg["embed"], cfg["width"]))
        published = ("Modular addition with an MLP and AdamW weight decay: train accuracy ~1 early, test accuracy "
                     "jumps to ~1 much later (Power et al. 2022; Liu et al. 2022; Gromov 2023).")
    else:
        inputs = torch.cat([pairs, torch.full((p * p, 1), p)], dim=1)  # [a, b, '=']
        model = _seeded_init(seed, lambda: LastTokenGPT(p, cfg["d_model"], cfg["n_head"], cfg["n_layer"]))
        published = ("Modular addition with a small transformer and AdamW weight decay: train accuracy ~1 early, "
                     "test accuracy jumps to ~1 much later (Power et al. 2022; Nanda et al. 2023).")
    lr = cfg["lr"] if lr is None else lr
    # beta2 = 0.98 as in Power et al. and Nanda et al.; decay on every parameter, embeddings included
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.98), weight_decay=cfg["weight_decay"])
    train_set = (inputs[train_idx], labels[train_idx])
    test_set = (inputs[test_idx], labels[test_idx])
    evaluate = _classification_eval(model, F.cross_entropy, {"train": (*train_set, train_set[1]),
                                                             "test": (*test_set, test_set[1])})
    if batch is not None and not 1 <= batch <= len(train_idx):
        raise ValueError(f"batch must be in [1, {len(train_idx)}] (the training pairs), got {batch}")

    def train_batch(index: int) -> Batch:
        """The full training set, or with ``batch`` the index-th minibatch: ``batch`` pairs drawn
        without replacement by a generator seeded with (seed, index), the same for every run."""
        if batch is None:
            return train_set
        chosen = torch.randperm(len(train_idx), generator=torch.Generator().manual_seed(seed * 1_000_003 + index))[:batch]
        return train_set[0][chosen], train_set[1][chosen]

    return Testbed(name=name, model=model, optimizer=optimizer, loss_fn=F.cross_entropy,
                   train_batch=train_batch, evaluate=evaluate,
                   steps=cfg["steps"] if steps is None else steps, eval_every=cfg["eval_every"],
                   transition="test_accuracy", published=published, lr=lr,
                   notes={"p": float(p), "train_fraction": cfg["train_fraction"], "weight_decay": cfg["weight_decay"],
                          "train_size": float(len(train_idx)), "test_size": float(len(test_idx)),
                          "batch": float(len(train_idx) if batch is None else batch)})


def _catapult(seed: int, cfg: dict, eta_lambda0: float, steps: int | None) -> Testbed:
    generator = torch.Generator().manual_seed(seed)
    x = _sphere_inputs(cfg["samples"], cfg["d"], generator)
    teacher = torch.randn(cfg["d"], generator=generator)
    y = torch.sign(x @ teacher)
    model = NTKTwoLayer(cfg["d"], cfg["width"], generator)
    batch = (x, y)
    lambda0 = top_hessian_eigenvalue(model, _half_mse, batch)
    lr = eta_lambda0 / lambda0
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)  # plain full-batch gradient descent

    def losses() -> dict[str, float]:
        with torch.no_grad():
            return {"train_loss": float(_half_mse(model(x), y))}

    published = ("A wide two-layer ReLU net in NTK parametrisation under full-batch GD with 2 < eta*lambda0 < 4: the "
                 "loss first grows, then falls once the curvature has dropped below 2/eta (Lewkowycz et al. 2020).")
    return Testbed(name="catapult", model=model, optimizer=optimizer, loss_fn=_half_mse,
                   train_batch=lambda step: batch, evaluate=_with_sharpness(model, _half_mse, batch, losses),
                   steps=cfg["steps"] if steps is None else steps, eval_every=cfg["eval_every"],
                   transition="loss", published=published, lr=lr,
                   notes={"lambda0": lambda0, "eta_lambda0": eta_lambda0, "two_over_eta": 2.0 / lr,
                          "width": float(cfg["width"]), "samples": float(cfg["samples"])})


def _edge_of_stability(seed: int, cfg: dict, lr: float | None, steps: int | None) -> Testbed:
    generator = torch.Generator().manual_seed(seed)
    d, classes = cfg["d"], cfg["classes"]
    x = torch.randn(cfg["samples"], d, generator=generator)
    teacher = _seeded_init(seed + 1, lambda: _tanh_mlp(d, 32, 1, classes))
    with torch.no_grad():
        labels = teacher(x).argmax(dim=1)
    y = F.one_hot(labels, classes).float()
    model = _seeded_init(seed, lambda: _tanh_mlp(d, cfg["width"], cfg["depth"], classes))
    batch = (x, y)
    lr = cfg["lr"] if lr is None else lr
    lambda0 = top_hessian_eigenvalue(model, _half_mse, batch)
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    accuracy = _classification_eval(model, _half_mse, {"train": (x, y, labels)})
    evaluate = _with_sharpness(model, _half_mse, batch, accuracy)
    published = ("Full-batch GD on a tanh network: the sharpness rises (progressive sharpening) to ~2/eta and hovers "
                 "there while the loss keeps decreasing non-monotonically (Cohen et al. 2021).")
    return Testbed(name="edge-of-stability", model=model, optimizer=optimizer, loss_fn=_half_mse,
                   train_batch=lambda step: batch, evaluate=evaluate,
                   steps=cfg["steps"] if steps is None else steps, eval_every=cfg["eval_every"],
                   transition="sharpness", published=published, lr=lr,
                   notes={"lambda0": lambda0, "eta_lambda0": lr * lambda0, "two_over_eta": 2.0 / lr})


def _markov_text(vocab: int, length: int, count: int, branching: int, order: int,
                 generator: torch.Generator) -> Tensor:
    """``count`` token sequences of ``length`` from a random sparse Markov chain of ``order`` over
    ``vocab`` tokens: each context (the last ``order`` tokens) has ``branching`` possible next tokens,
    drawn at random, with probabilities u^2 normalised (u uniform)."""
    contexts = vocab ** order
    successors = torch.stack([torch.randperm(vocab, generator=generator)[:branching] for _ in range(contexts)])
    weights = torch.rand(contexts, branching, generator=generator) ** 2 + 1e-3
    weights = weights / weights.sum(dim=1, keepdim=True)
    text = torch.empty(count, length, dtype=torch.long)
    text[:, :order] = torch.randint(vocab, (count, order), generator=generator)
    powers = vocab ** torch.arange(order)
    for t in range(order, length):
        context = (text[:, t - order:t].flip(1) * powers).sum(dim=1)
        choice = torch.multinomial(weights[context], 1, generator=generator).squeeze(1)
        text[:, t] = successors[context, choice]
    return text


def decay_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """The recipes' two AdamW param groups (nanoGPT, the Hugging Face Trainer): decay on every
    matrix but the embeddings, none on biases, norm gains and embeddings."""
    decay, rest = [], []
    for _, module in model.named_modules():
        for name, p in module.named_parameters(recurse=False):
            embedding = isinstance(module, nn.Embedding)
            (decay if p.dim() >= 2 and not embedding else rest).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": rest, "weight_decay": 0.0}]


def warmup_cosine(optimizer: torch.optim.Optimizer, warmup: int, steps: int,
                  floor: float = 0.1) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warmup over ``warmup`` steps to the peak, then cosine decay to ``floor`` x peak at ``steps``."""
    def multiplier(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = min(1.0, (step - warmup) / max(1, steps - warmup))
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))
    return torch.optim.lr_scheduler.LambdaLR(optimizer, multiplier)


def language_loss(z_loss: float = 0.0) -> Callable[[Tensor, Tensor], Tensor]:
    """Next-token cross-entropy over every position, plus ``z_loss`` mean(log Z^2), log Z =
    logsumexp of a position's logits (PaLM's auxiliary loss, Wortsman et al.'s fix for output-logit
    divergence); computed in float32 at least."""
    def loss(logits: Tensor, targets: Tensor) -> Tensor:
        logits = logits.float() if logits.dtype in (torch.float16, torch.bfloat16) else logits
        value = F.cross_entropy(logits.reshape(-1, logits.size(-1)), targets.reshape(-1))
        if z_loss:
            value = value + z_loss * torch.logsumexp(logits, dim=-1).square().mean()
        return value
    return loss


def _language_model(name: str, seed: int, cfg: dict, lr: float | None, steps: int | None,
                    warmup: int | None = None, z_loss: float | None = None) -> Testbed:
    generator = torch.Generator().manual_seed(seed)
    cfg = {**cfg, **({} if warmup is None else {"warmup": warmup}), **({} if z_loss is None else {"z_loss": z_loss})}
    steps = cfg["steps"] if steps is None else steps
    block = cfg["block"]
    # the attention bed: fresh text every step (no epochs: its spikes are not a memorisation effect);
    # the Adam bed: one full batch of ``sequences``, trained to its floor; a held-out sample for both
    full_batch = "sequences" in cfg
    batch = cfg["sequences"] if full_batch else cfg["batch"]
    count = batch if full_batch else steps * batch
    text = _markov_text(cfg["vocab"], block + 1, count + 4 * batch, cfg["branching"], cfg["order"], generator)
    text, held_out = text[:count], text[count:]
    qk_norm = name.endswith("-qknorm")
    config = GPTConfig(vocab_size=cfg["vocab"], block_size=block, n_layer=cfg["n_layer"], n_head=cfg["n_head"],
                       d_model=cfg["d_model"], qk_norm=qk_norm)
    model = _seeded_init(seed, lambda: GPT(config))
    lr = cfg["lr"] if lr is None else lr
    # the Adam bed's control: AMSGrad, whose v never decays (the running maximum of v_t), so the
    # preconditioner cannot grow while the gradients are small
    amsgrad = name.endswith("-amsgrad")
    optimizer = torch.optim.AdamW(decay_groups(model, cfg["weight_decay"]), lr=lr, betas=(0.9, cfg.get("beta2", 0.95)),
                                  eps=cfg.get("eps", 1e-8), amsgrad=amsgrad)
    scheduler = warmup_cosine(optimizer, cfg["warmup"], steps)
    # the attention bed keeps the z-loss in both arms, as Wortsman et al. did to isolate its instability
    loss_fn = language_loss(cfg["z_loss"])

    def train_batch(step: int) -> Batch:
        chunk = text if full_batch else text[(step - 1) * batch:step * batch]
        return chunk[:, :-1], chunk[:, 1:]

    def evaluate() -> dict[str, float]:
        was_training = model.training
        model.eval()
        with torch.no_grad():
            value = float(F.cross_entropy(model(held_out[:, :-1]).reshape(-1, cfg["vocab"]), held_out[:, 1:].reshape(-1)))
        model.train(was_training)
        return {"held_out_loss": value}

    if name.startswith("adam-spike"):
        published = ("A small decoder under full-batch AdamW at its loss floor: the squared gradients fall far below "
                     "Adam's second-moment estimate v, which then decays as beta2^t, so the preconditioned curvature "
                     "grows past the stability bound and the loss spikes, then recovers (Bai et al. 2025, 'Adaptive "
                     "preconditioners trigger loss spikes in Adam', arXiv 2506.04805). The control bounds the "
                     "preconditioner 1/(sqrt(v) + eps) by a large eps.")
    else:
        published = ("A small decoder under AdamW at a high learning rate: attention logits grow until attention "
                     "collapses and the loss leaves its best level; qk-layernorm prevents it (Wortsman et al. 2023; "
                     "Dehghani et al. 2023).")
    notes = {key: float(cfg[key]) for key in ("vocab", "block", "branching", "order", "d_model", "n_layer",
                                              "n_head", "warmup", "weight_decay", "z_loss")}
    notes.update(batch=float(batch), beta2=float(cfg.get("beta2", 0.95)), eps=float(cfg.get("eps", 1e-8)),
                 amsgrad=float(amsgrad), full_batch=float(full_batch), control=float(name in SPIKE_CONTROLS))
    return Testbed(name=name, model=model, optimizer=optimizer, loss_fn=loss_fn, train_batch=train_batch,
                   evaluate=evaluate, steps=steps, eval_every=cfg["eval_every"], transition="loss",
                   published=published, lr=lr, notes=notes, scheduler=scheduler)


def make_testbed(name: str, *, seed: int = 0, scale: str = "default", lr: float | None = None,
                 eta_lambda0: float | None = None, steps: int | None = None, warmup: int | None = None,
                 batch: int | None = None, z_loss: float | None = None) -> Testbed:
    """A fresh testbed. ``lr`` overrides the learning rate (not for catapult, whose rate is
    ``eta_lambda0 / lambda0``; default eta_lambda0 = 3); ``steps`` overrides the run length;
    ``warmup`` and ``z_loss`` the warmup steps and the z-loss weight of a spike bed (the static
    fixes: a longer warmup; its 1e-4 z-loss, 0 to remove it); ``batch`` makes a
    grokking bed train on minibatches of that many pairs (gradient noise) instead of the full set."""
    if name not in TESTBEDS + SPIKE_TESTBEDS:
        raise ValueError(f"unknown testbed {name!r}; accepted: {', '.join(TESTBEDS + SPIKE_TESTBEDS)}")
    if scale not in SCALES:
        raise ValueError(f"unknown scale {scale!r}; accepted: {', '.join(SCALES)}")
    for what, value in (("seed", seed), ("steps", steps), ("warmup", warmup), ("batch", batch)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
            raise TypeError(f"{what} must be an int, got {value!r}")
    if not 0 <= seed < 2**63:
        raise ValueError(f"seed must be in [0, 2^63), got {seed}")
    for what, value in (("lr", lr), ("eta_lambda0", eta_lambda0), ("z_loss", z_loss)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))):
            raise TypeError(f"{what} must be a number, got {value!r}")
    if lr is not None and not (math.isfinite(lr) and lr > 0):
        raise ValueError(f"lr must be a positive number, got {lr}")
    if steps is not None and steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    if batch is not None and not name.startswith("grokking"):
        raise ValueError(f"batch applies to the grokking beds only, not {name!r}")
    if warmup is not None and (name not in SPIKE_TESTBEDS or warmup < 1):
        raise ValueError(f"warmup applies to the spike beds ({', '.join(SPIKE_TESTBEDS)}) and must be >= 1; "
                         f"got {warmup} for {name!r}")
    if z_loss is not None and (name not in SPIKE_TESTBEDS or not (math.isfinite(z_loss) and z_loss >= 0)):
        raise ValueError(f"z_loss applies to the spike beds ({', '.join(SPIKE_TESTBEDS)}) and must be >= 0; "
                         f"got {z_loss} for {name!r}")
    if name == "catapult":
        if lr is not None:
            raise ValueError("catapult sets its learning rate as eta_lambda0 / lambda0: pass eta_lambda0, not lr")
        c = 3.0 if eta_lambda0 is None else eta_lambda0
        if not (math.isfinite(c) and c > 0):
            raise ValueError(f"eta_lambda0 must be a positive number, got {c}")
        return _catapult(seed, _CATAPULT[scale], c, steps)
    if eta_lambda0 is not None:
        raise ValueError(f"eta_lambda0 applies to catapult only, not {name!r}; pass lr")
    if name in SPIKE_TESTBEDS:
        return _language_model(name, seed, _SPIKES[spike_bed(name)][scale], lr, steps, warmup, z_loss)
    if name == "edge-of-stability":
        return _edge_of_stability(seed, _EDGE_OF_STABILITY[scale], lr, steps)
    table = _GROKKING_MLP if name == "grokking-mlp" else _GROKKING_TRANSFORMER
    return _grokking(name, seed, table[scale], lr, steps, batch)


# -------------------------------------------------------------------------------------- training

def _check_finite(bed: Testbed, step: int, values: Mapping[str, float]) -> None:
    bad = {key: value for key, value in values.items() if not math.isfinite(value)}
    if bad:
        raise FloatingPointError(f"{bed.name}: non-finite {bad} at step {step}")


def first_at_least(steps: list[int], values: list[float], level: float) -> int | None:
    """The first step whose value is >= ``level`` (the grokking step: test accuracy >= 0.9), or None."""
    return next((int(step) for step, value in zip(steps, values) if value >= level), None)


def train(bed: Testbed, *, on_step: Callable[[int, Tensor, Batch], None] | None = None,
          progress: Callable[[int], None] | None = None,
          accumulation: Callable[[], int] | None = None) -> dict[str, list[float]]:
    """Run ``bed.steps`` optimizer steps. ``on_step(step, loss, batch)`` runs after the optimizer
    step and before the next zero_grad, so the step's gradients are still in ``.grad``. evaluate()
    runs at step 0 and every ``eval_every`` steps (and at the last step). A non-finite loss or
    evaluation raises FloatingPointError. With ``accumulation`` (e.g. a ``control.Controller``'s,
    read before each step) a step takes that many micro-batches, ``bed.train_batch`` called with a
    running micro-batch count, and applies the gradient of their mean loss (``loss`` is that mean,
    ``batch`` the last micro-batch). Returns {"step", "loss", "eval_step", "micro_batches",
    *evaluate keys}."""
    model, optimizer = bed.model, bed.optimizer
    curves: dict[str, list[float]] = {"step": [], "loss": [], "eval_step": [], "micro_batches": []}
    drawn = 0

    def record_eval(step: int) -> None:
        values = bed.evaluate()
        _check_finite(bed, step, values)
        curves["eval_step"].append(step)
        for key, value in values.items():
            curves.setdefault(key, []).append(value)

    model.train()
    record_eval(0)
    for step in range(1, bed.steps + 1):
        count = 1 if accumulation is None else int(accumulation())
        if count < 1:
            raise ValueError(f"accumulation() must be >= 1, got {count} at step {step}")
        optimizer.zero_grad(set_to_none=True)
        total = 0.0
        for _ in range(count):
            drawn += 1
            batch = bed.train_batch(step if accumulation is None else drawn)
            inputs, targets = batch
            loss = bed.loss_fn(model(inputs), targets)
            total += float(loss.detach())
            _check_finite(bed, step, {"loss": total})  # before stepping on a diverged loss
            (loss / count if count > 1 else loss).backward()
        value = total / count
        loss = torch.tensor(value) if count > 1 else loss
        optimizer.step()
        curves["step"].append(step)
        curves["loss"].append(value)
        curves["micro_batches"].append(count)
        if on_step is not None:
            on_step(step, loss.detach(), batch)
        if bed.scheduler is not None:
            bed.scheduler.step()
        if step % bed.eval_every == 0 or step == bed.steps:
            record_eval(step)
        if progress is not None:
            progress(step)
    return curves
