"""Helpers shared by the test modules (importable as ``helpers``: ``pythonpath`` in pyproject.toml)."""


def exact_norms(model):
    """Every norm's eps (any module with a float ``eps``) set to 1e-30: the scale symmetries of
    BatchNorm/LayerNorm become exact, so that their laws hold to round-off."""
    for module in model.modules():
        if isinstance(getattr(module, "eps", None), float):
            module.eps = 1e-30
    return model


def read_scalars(log_dir):
    """Every scalar of a run, straight from SQLite (not through RunStore): {name: {step: value}}."""
    import sqlite3

    db = sqlite3.connect(log_dir / "run.sqlite")
    out = {}
    for step, name, value in db.execute("SELECT step, name, value FROM scalars"):
        out.setdefault(name, {})[step] = value
    db.close()
    return out


def spawn_gloo(worker, directory, world: int = 2) -> list:
    """Run ``worker(rank, world, str(directory))`` in ``world`` gloo processes (skip where torch has no
    gloo) and return what each rank saved to ``directory/rank<r>.pt``."""
    import pytest
    import torch
    import torch.distributed as dist
    import torch.multiprocessing as mp

    if not dist.is_available() or not dist.is_gloo_available():
        pytest.skip("torch.distributed with gloo is not available in this torch build")
    mp.spawn(_run_then_exit, args=(worker, world, str(directory)), nprocs=world, join=True)
    return [torch.load(directory / f"rank{r}.pt") for r in range(world)]


def _run_then_exit(rank: int, worker, world: int, directory: str) -> None:
    """One spawned rank: ``worker`` run, then the process left with ``os._exit(0)`` once it returned.

    Everything a rank reports is saved by then; what is skipped is the interpreter's teardown, where a
    gloo group still held by a DDP wrapper or a reference cycle is destroyed while the peer has
    already closed its connections, and gloo's threads can call ``std::terminate`` (seen once in
    CI as "terminate called without an active exception", SIGABRT, after both ranks had passed the
    final barrier). An exception in ``worker`` still propagates to ``mp.spawn`` as before."""
    import os
    import sys

    worker(rank, world, directory)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def gloo_group(rank: int, world: int, directory: str):
    """A context for one rank of ``spawn_gloo``: the gloo group made (one thread), then, on the way out,
    a barrier (a rank whose peer closed its gloo connections first can abort in gloo's threads:
    "terminate called without an active exception") and the group destroyed."""
    import contextlib
    import gc

    import torch
    import torch.distributed as dist

    @contextlib.contextmanager
    def group():
        torch.set_num_threads(1)
        dist.init_process_group("gloo", init_method=f"file://{directory}/rendezvous", rank=rank, world_size=world)
        try:
            yield
            dist.barrier()
        finally:
            gc.collect()  # a wrapper in a reference cycle lets go of the group while both ranks are here
            dist.destroy_process_group()

    return group()


def train_and_return(monitor, opt, loss_of, steps: int) -> list:
    """``steps`` optimizer steps observed by ``monitor`` (closed after); what each ``mon.step`` returned."""
    returned = []
    for _ in range(steps):
        opt.zero_grad()
        loss = loss_of()
        loss.backward()
        opt.step()
        returned.append(monitor.step(loss))
    monitor.close()
    return returned
