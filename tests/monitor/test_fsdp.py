"""The monitor under FSDP2 (``fully_shard``): two gloo processes on the CPU, every parameter sharded.

Truth: each rank trains the same batch, so FSDP2's averaged gradient is the one-process gradient and
the sharded run takes the one-process run's steps (to round-off). Its per-group sums, computed on each
rank's shards and all-reduced, must then log what one process logs on the unsharded model: the same
norms, gradient breaking, charge drift and exact-law errors (float64: the law holds to round-off). The
sizes are odd (7 rows over 2 ranks: 4 and 3), so rescale units sit on one rank with their incoming row
and on both with their outgoing column, and a 1-row layer leaves one rank an empty shard.
"""

import functools
import math
import os

import pytest
import torch
import torch.nn.functional as F
from helpers import gloo_group, spawn_gloo, train_and_return
from torch import nn

import shockwatch as sw
from shockwatch.monitor import RunStore

STEPS = 6


class Net(nn.Module):
    """ReLU units (rescale), a LayerNorm'd hidden layer (scale on its input weights) and softmax logits
    (translation), at sizes that do not split evenly over two ranks."""

    def __init__(self) -> None:
        super().__init__()
        self.first = nn.Linear(5, 7)
        self.second = nn.Linear(7, 6)
        self.norm = nn.LayerNorm(6, eps=1e-12)  # eps breaks the scale symmetry at eps / |h|^2
        self.head = nn.Linear(6, 3)
        self.gate = nn.Linear(5, 1)  # one row: rank 1's shard is empty

    def forward(self, x):
        h = self.norm(self.second(torch.relu(self.first(x))))
        logits = self.head(torch.relu(h))
        return logits + self.gate(x)  # the same shift for every class: no effect on the softmax


def data():
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(24, 5, generator=generator, dtype=torch.float64)
    return x, torch.randint(0, 3, (24,), generator=generator)


def setup(linear=False):
    """The net, or (``linear``) a softmax regression: translations only, so every step's sums are the
    norms alone (the sharded norms-only pass)."""
    torch.manual_seed(0)
    model = (nn.Sequential(nn.Linear(5, 3)) if linear else Net()).double()
    x, _ = data()
    return model, sw.find_symmetries(model, x)


def optimizer(model):
    decay = [p for p in model.parameters() if p.ndim > 1]
    rest = [p for p in model.parameters() if p.ndim <= 1]
    return torch.optim.SGD([{"params": decay, "weight_decay": 1e-2}, {"params": rest, "weight_decay": 0.0}],
                           lr=0.1, momentum=0.9)


def worker(rank, world, directory, charges=1, linear=False):
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    with gloo_group(rank, world, directory):
        model, symmetries = setup(linear)  # found before sharding: fully_shard keeps the names
        mesh = init_device_mesh("cpu", (world,))
        for module in () if linear else (model.first, model.second, model.head, model.gate):
            fully_shard(module, mesh=mesh)
        fully_shard(model, mesh=mesh)
        opt = optimizer(model)
        x, y = data()
        monitor = sw.Monitor(model, opt, os.path.join(directory, "run"), symmetries=symmetries,
                             schedule=sw.Schedule(quotient=None, charges=charges))
        returned = train_and_return(monitor, opt, lambda: F.cross_entropy(model(x), y), STEPS)
        torch.save(returned, os.path.join(directory, f"rank{rank}.pt"))


@pytest.mark.slow
@pytest.mark.parametrize(("charges", "linear"), [(1, False), (2, False), (1, True)])
def test_fsdp2_shards_log_what_one_process_logs(tmp_path, charges, linear):
    """charges=2: the tracker records every other step; linear: a model with translations only, whose
    sums are the norms alone (the sharded norms-only pass)."""
    ranks = spawn_gloo(functools.partial(worker, charges=charges, linear=linear), tmp_path)
    store = RunStore(tmp_path / "run" / "run.sqlite", read_only=True)
    assert store.meta()["law"] == "sgd-momentum"
    # every rank computed every value (its part of each sum, then the all-reduce): rank 1 returns them too
    for a, b in zip(*ranks):
        assert a.keys() == b.keys() and all(math.isclose(a[k], b[k], rel_tol=1e-12, abs_tol=1e-15) for k in a)

    model, symmetries = setup(linear)
    opt = optimizer(model)
    x, y = data()
    monitor = sw.Monitor(model, opt, tmp_path / "single", symmetries=symmetries,
                         schedule=sw.Schedule(quotient=None, charges=charges), tensorboard=False)
    train_and_return(monitor, opt, lambda: F.cross_entropy(model(x), y), STEPS)
    single = RunStore(tmp_path / "single" / "run.sqlite", read_only=True)
    names = set(store.names())
    assert names == set(single.names())
    kinds = ("translation",) if linear else ("translation", "scale", "rescale")
    assert {f"charge_law_error/{kind}" for kind in kinds} <= names
    for name in names:
        got, want = store.scalars(name)[1], single.scalars(name)[1]
        assert len(got) == len(want) and all(math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12) for a, b in zip(got, want)), \
            (name, got, want)
    assert len(store.scalars("loss")[1]) == STEPS
    assert len(store.scalars("charge_law_error/translation")[1]) == (STEPS if charges == 1 else STEPS // 2)
    for kind in kinds:  # the exact discrete law, from the shards' sums
        assert max(store.scalars(f"charge_law_error/{kind}")[1]) < 1e-10, kind


def test_fsdp2_refuses_what_needs_the_full_parameters(tmp_path):
    """Detection runs the model, curvature and attention run it on one rank: each refused with the reason,
    before anything is written (truth: the message and the empty folder)."""
    from shockwatch.monitor.monitor import _check_sharded

    x, _ = data()
    with pytest.raises(ValueError, match="before fully_shard"):
        _check_sharded(sw.Schedule(), None, x)
    with pytest.raises(ValueError, match="schedule.curvature"):
        _check_sharded(sw.Schedule(curvature=10), object(), None)
    _check_sharded(sw.Schedule(), object(), None)  # the every-step observables are allowed


def llama():
    """A Hugging Face Llama from a config (random weights, no download): GQA heads, RMSNorm, rotary
    pairs, a SwiGLU MLP; each decoder layer sharded on its own."""
    import transformers

    torch.manual_seed(0)
    config = transformers.LlamaConfig(hidden_size=16, intermediate_size=24, num_hidden_layers=2, num_attention_heads=2,
                                      num_key_value_heads=1, vocab_size=37, max_position_embeddings=16)
    model = transformers.LlamaForCausalLM(config).double()
    tokens = torch.randint(0, 37, (4, 9), generator=torch.Generator().manual_seed(1))
    return model, tokens[:, :-1], tokens[:, 1:]


def llama_loss(model, x, y):
    return F.cross_entropy(model(x).logits.reshape(-1, 37), y.reshape(-1))


def llama_worker(rank, world, directory):
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    with gloo_group(rank, world, directory):
        model, x, y = llama()
        symmetries = sw.find_symmetries(model, (x,))
        mesh = init_device_mesh("cpu", (world,))
        for layer in model.model.layers:
            fully_shard(layer, mesh=mesh)
        fully_shard(model, mesh=mesh)
        opt = optimizer(model)
        monitor = sw.Monitor(model, opt, os.path.join(directory, "run"), symmetries=symmetries, tensorboard=False)
        torch.save(train_and_return(monitor, opt, lambda: llama_loss(model, x, y), 4),
                   os.path.join(directory, f"rank{rank}.pt"))


@pytest.mark.slow
def test_a_hugging_face_llama_sharded_layer_by_layer(tmp_path):
    """Truth: the same Llama trained unsharded in one process. Every value agrees (norms and drifts to
    1e-9; the gradient breaking and the exact-law errors, which are round-off for exact symmetries, to
    1e-13 absolute), and the exact laws of the rescale and translation groups hold to round-off."""
    pytest.importorskip("transformers")
    sharded = spawn_gloo(llama_worker, tmp_path)[0]
    model, x, y = llama()
    symmetries = sw.find_symmetries(model, (x,))
    assert symmetries.counts()["gl"] > 0 and symmetries.counts()["rotation"] > 0
    opt = optimizer(model)
    single = sw.Monitor(model, opt, tmp_path / "single", symmetries=symmetries, tensorboard=False,
                        schedule=sw.Schedule(quotient=None))
    for step, got in enumerate(train_and_return(single, opt, lambda: llama_loss(model, x, y), 4)):
        want = sharded[step]
        assert got.keys() == want.keys()
        for name, value in got.items():
            assert math.isclose(value, want[name], rel_tol=1e-9, abs_tol=1e-13), (step, name, value, want[name])
        assert want["charge_law_error/rescale"] < 1e-12 and want["charge_law_error/translation"] < 1e-12


def edit_worker(rank, world, directory, edit_on=(0, 1)):
    """The net sharded, SGD at lr 0 (the laws predict no change at all), its weights clipped in place
    under no_grad after step 4 on the ranks in ``edit_on`` (each rank clips its own shards)."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    with gloo_group(rank, world, directory):
        model, symmetries = setup()
        mesh = init_device_mesh("cpu", (world,))
        for module in (model.first, model.second, model.head, model.gate):
            fully_shard(module, mesh=mesh)
        fully_shard(model, mesh=mesh)
        opt = torch.optim.SGD(model.parameters(), lr=0.0, momentum=0.9)
        x, y = data()
        monitor = sw.Monitor(model, opt, os.path.join(directory, "run"), symmetries=symmetries,
                             schedule=sw.Schedule(quotient=None), tensorboard=False)
        for step in range(1, 8):
            if step == 5 and rank in edit_on:
                with torch.no_grad():
                    for p in model.parameters():
                        p.clamp_(-0.05, 0.05)
            opt.zero_grad()
            loss = F.cross_entropy(model(x), y)
            loss.backward()
            opt.step()
            monitor.step(loss)
        monitor.close()
        torch.save(None, os.path.join(directory, f"rank{rank}.pt"))


@pytest.mark.slow
@pytest.mark.parametrize("edit_on", [(0, 1), (1,)])
def test_a_write_between_steps_restarts_the_laws_on_every_rank(tmp_path, edit_on):
    """Truth: at lr 0 the charges do not move but for the clip, so the exact laws hold to round-off once
    they start again from the clipped charges (unsharded, the same clip leaves them off by O(1) for good
    without the restart). Also a clip on rank 1's shards alone: rank 0 restarts too (one flag all-reduced)."""
    spawn_gloo(functools.partial(edit_worker, edit_on=edit_on), tmp_path)
    store = RunStore(tmp_path / "run" / "run.sqlite", read_only=True)
    assert [(step, kind) for step, kind, _ in store.events() if kind == "rebound"] == [(5, "rebound")]
    for kind in ("translation", "scale", "rescale"):
        errors = store.scalars(f"charge_law_error/{kind}")[1]
        assert len(errors) == 7 and max(errors) < 1e-12, (kind, errors)
    drift = store.scalars("charge_drift/rescale")[1]
    assert max(drift[:4]) < 1e-12 < max(drift[4:])  # the clip moved the charges: there was something to see


def test_the_collective_device_follows_the_backend(monkeypatch):
    """Truth: torch.distributed's backends (NCCL reduces CUDA tensors only; gloo and MPI host ones; the
    default group pairs a CPU backend with the accelerator's). The accelerator is patched in: no GPU here."""
    from shockwatch.symmetry.sharded import collective_device

    monkeypatch.setattr(torch.accelerator, "current_accelerator", lambda *a, **k: torch.device("cuda"))
    monkeypatch.setattr(torch.accelerator, "current_device_index", lambda: 3)
    assert collective_device("nccl") == torch.device("cuda", 3)
    for backend in ("gloo", "mpi", "cpu:gloo,cuda:nccl"):
        assert collective_device(backend) == torch.device("cpu")
    monkeypatch.setattr(torch.accelerator, "current_accelerator", lambda *a, **k: None)
    assert collective_device("nccl") == torch.device("cpu")
