"""The monitor under torch.distributed: two gloo processes on the CPU, DDP-wrapped model.

Truth: with equal shards and a mean loss, DDP's averaged gradient is the full-batch gradient, so the
two-process run must log what one process logs on the full batch (loss = mean of the ranks' losses,
the same charges, the same laws); and only rank 0 writes.
"""

import math
import os

import pytest
import torch
import torch.nn.functional as F
from helpers import gloo_group, spawn_gloo, train_and_return

import shockwatch as sw
from shockwatch.monitor import RunStore

STEPS = 5


def data():
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(32, 4, generator=generator, dtype=torch.float64)
    y = (x[:, 0] + x[:, 1] > 0).long() + (x[:, 2] > 0.5).long()
    return x, y


def model_and_optimizer():
    torch.manual_seed(0)
    model = sw.models.mlp((4, 10, 3)).double()
    return model, torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-3)


def worker(rank, world, directory):
    with gloo_group(rank, world, directory):
        model, opt = model_and_optimizer()
        ddp = torch.nn.parallel.DistributedDataParallel(model)
        x, y = data()
        shard = slice(rank * 16, (rank + 1) * 16)
        monitor = sw.Monitor(ddp, opt, os.path.join(directory, "run"), example_input=x[shard],
                             schedule=sw.Schedule(quotient=2, quotient_budget=None))
        local = []

        def loss_of():
            loss = F.cross_entropy(ddp(x[shard]), y[shard])
            local.append(float(loss))
            return loss

        returned = train_and_return(monitor, opt, loss_of, STEPS)
        torch.save({"local": local, "returned": returned}, os.path.join(directory, f"rank{rank}.pt"))


@pytest.mark.slow
def test_two_gloo_ranks_log_once_what_one_process_logs_on_the_full_batch(tmp_path):
    ranks = spawn_gloo(worker, tmp_path)
    store = RunStore(tmp_path / "run" / "run.sqlite", resume=True)
    steps, losses = store.scalars("loss")
    assert steps == list(range(1, STEPS + 1))
    for step in range(STEPS):
        mean = (ranks[0]["local"][step] + ranks[1]["local"][step]) / 2
        assert math.isclose(losses[step], mean, rel_tol=1e-12)
        assert ranks[1]["returned"][step] == {"loss": ranks[0]["returned"][step]["loss"]}  # rank 1: the average only
    # both ranks asked for TensorBoard files in the same log_dir: rank 0 alone wrote
    assert len(list((tmp_path / "run" / "tensorboard").iterdir())) == 1

    model, opt = model_and_optimizer()
    x, y = data()
    monitor = sw.Monitor(model, opt, tmp_path / "single", example_input=x[:16], schedule=sw.Schedule(quotient=2, quotient_budget=None),
                         tensorboard=False)
    train_and_return(monitor, opt, lambda: F.cross_entropy(model(x), y), STEPS)
    single = RunStore(tmp_path / "single" / "run.sqlite", read_only=True)
    assert set(single.names()) == set(store.names())
    for name in store.names():
        got, want = store.scalars(name)[1], single.scalars(name)[1]
        assert all(math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-13) for a, b in zip(got, want)), name
    assert max(store.scalars("charge_law_error/rescale")[1]) < 1e-10
