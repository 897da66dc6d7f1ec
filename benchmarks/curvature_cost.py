"""What a curvature sample costs, in plain training steps, beside PyHessian on the same model.

    .venv/bin/python benchmarks/curvature_cost.py [--samples 4] [--every 20] [--tol 1e-4] [--out FILE]

Model: models.mlp((64, 256, 256, 10)) (85k parameters), batch 512, cross-entropy, float32,
SGD(lr=0.05, momentum=0.9), CPU. In one process:
- plain step: forward, backward, optimizer step (median of 60);
- one Hessian-vector product: shockwatch's ``HessianVectorProducts`` (a float64 copy,
  reverse-over-reverse on the gradient's graph built once; and a float32 copy) and PyHessian 0.1's
  ``hessian_vector_product`` on its own ``gradsH`` (the model's float32), each the median of 40
  products after 5 warm-up ones, alternating; the graph's set-up once each;
- the quotient probe: one product of P_H H P_H (two horizontal projections around an HVP, the
  projector built once per sample and shared by every product) against one raw product, alone; and
  per product over whole Lanczos runs to the top eigenvalue (ARPACK's work included), alternating,
  as ``curvature`` runs it (the input projected by ``HorizontalProjector.krylov``) and with both
  projections in full;
- Lanczos over a run: ``--samples`` curvature samples (raw and quotient extremes, ``curvature``)
  ``--every`` SGD steps apart at tolerance ``--tol``, each started cold (a fixed random vector)
  and warm (the previous sample's eigenvectors), on the same weights: products and seconds per
  sample.
Everything runs with NumPy's BLAS on one thread (threadpoolctl), as ``curvature`` runs it: beside
torch's threads a multithreaded BLAS call was ~90x slower. PyHessian is not a dependency of shockwatch (``pip install pyhessian`` in the venv to compare; its
numbers are left out where it is not installed).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from _common import git_commit
from scipy.sparse.linalg import LinearOperator, eigsh

import shockwatch as sw
from shockwatch.monitor.curvature import HessianVectorProducts, curvature
from shockwatch.quotient import horizontal_projector


def timed(function, repeats: int) -> float:
    """Median seconds of ``repeats`` calls."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=int, default=4)
    parser.add_argument("--every", type=int, default=20)
    parser.add_argument("--tol", type=float, default=1e-4)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "curvature_cost.json")
    args = parser.parse_args()
    commit = git_commit()
    torch.manual_seed(0)
    model = sw.models.mlp((64, 256, 256, 10))
    x, y = torch.randn(512, 64), torch.randint(0, 10, (512,))
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)

    def step() -> None:
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()

    for _ in range(10):
        step()
    plain = timed(step, 60)
    symmetries = sw.find_symmetries(model, x)
    record: dict = {"model": "mlp 64-256-256-10, batch 512, float32", "parameters": sum(p.numel() for p in model.parameters()),
                    "plain_step_ms": plain * 1e3, "commit": commit, "torch": torch.__version__,
                    "threads": torch.get_num_threads()}

    start = time.perf_counter()
    ours = HessianVectorProducts(model, F.cross_entropy, (x, y))
    record["ours_setup_ms"] = (time.perf_counter() - start) * 1e3
    vector = np.random.default_rng(0).standard_normal(ours.dimension)
    theirs = None
    try:
        from pyhessian import hessian
        from pyhessian.utils import hessian_vector_product

        start = time.perf_counter()
        theirs = hessian(model, torch.nn.CrossEntropyLoss(), data=(x, y), cuda=False)
        record["pyhessian_setup_ms"] = (time.perf_counter() - start) * 1e3
        direction = [torch.from_numpy(piece).reshape(p.shape).float() for piece, p in
                     zip(np.split(vector, np.cumsum([p.numel() for p in theirs.params])[:-1]), theirs.params)]
        theirs_hvp = lambda: hessian_vector_product(theirs.gradsH, theirs.params, direction)
        # the same product: float32 against float64, relative difference
        got = torch.cat([h.reshape(-1) for h in theirs_hvp()]).double().numpy()
        record["pyhessian_vs_ours_relative"] = float(np.linalg.norm(got - ours.hvp(vector)) / np.linalg.norm(got))
    except ImportError:
        record["pyhessian"] = "not installed"
    for _ in range(5):
        ours.hvp(vector)
        if theirs is not None:
            theirs_hvp()
    ours_times, theirs_times = [], []
    for _ in range(40):  # alternating: both under the same machine drift
        ours_times.append(timed(lambda: ours.hvp(vector), 1))
        if theirs is not None:
            theirs_times.append(timed(theirs_hvp, 1))
    single = HessianVectorProducts(model, F.cross_entropy, (x, y), dtype=torch.float32)
    record["ours_float32_hvp_ms"] = timed(lambda: single.hvp(vector), 40) * 1e3
    record["ours_float32_hvp_plain_steps"] = record["ours_float32_hvp_ms"] / 1e3 / plain
    record["ours_float32_vs_float64_relative"] = float(np.linalg.norm(single.hvp(vector) - ours.hvp(vector))
                                                       / np.linalg.norm(ours.hvp(vector)))
    record["ours_hvp_ms"] = statistics.median(ours_times) * 1e3
    record["ours_hvp_plain_steps"] = statistics.median(ours_times) / plain
    if theirs is not None:
        record["pyhessian_hvp_ms"] = statistics.median(theirs_times) * 1e3
        record["pyhessian_hvp_plain_steps"] = statistics.median(theirs_times) / plain

    start = time.perf_counter()
    project = horizontal_projector(symmetries, ours.params, rtol=min(1e-8, 1e-3 * args.tol))
    record["projector_setup_ms"] = (time.perf_counter() - start) * 1e3
    times = {"both": [], "raw": []}
    for _ in range(60):  # alternating, as above
        times["both"].append(timed(lambda: project(ours.hvp(project(vector))), 1))
        times["raw"].append(timed(lambda: ours.hvp(vector), 1))
    projected, raw = (statistics.median(times[name]) for name in ("both", "raw"))
    record["quotient_product_ms"], record["raw_product_ms"] = projected * 1e3, raw * 1e3
    record["quotient_over_raw_product"] = projected / raw
    # the same inside Lanczos, as ``curvature`` runs it: whole runs to the top eigenvalue, per product
    # (ARPACK's own work included), alternating
    operator = lambda matvec: LinearOperator((ours.dimension,) * 2, matvec=matvec, dtype=np.float64)
    # "quotient": as ``curvature`` runs it (the input's projection by ``krylov``: a few dot products on
    # the vectors of the run's form); "quotient_two_projections": both projections in full every product
    per_product = {"raw": [], "quotient": [], "quotient_two_projections": []}
    for _ in range(15):
        krylov = project.krylov(vector)
        for name, matvec in (("raw", ours.hvp), ("quotient", lambda v, krylov=krylov: project(ours.hvp(krylov(v)))),
                             ("quotient_two_projections", lambda v: project(ours.hvp(project(v))))):
            before, start = ours.count, time.perf_counter()
            eigsh(operator(matvec), k=1, which="LA", tol=args.tol, v0=vector)
            per_product[name].append((time.perf_counter() - start) / (ours.count - before))
    for name, times in per_product.items():
        record[f"lanczos_{name}_product_ms"] = statistics.median(times) * 1e3
    record["lanczos_quotient_over_raw"] = record["lanczos_quotient_product_ms"] / record["lanczos_raw_product_ms"]
    record["lanczos_quotient_two_projections_over_raw"] = (record["lanczos_quotient_two_projections_product_ms"]
                                                           / record["lanczos_raw_product_ms"])

    samples = []
    previous = None
    for _ in range(args.samples):
        for _ in range(args.every):
            step()
        entry = {}
        for mode in ("cold", "warm"):
            start = time.perf_counter()
            found = curvature(model, F.cross_entropy, (x, y), symmetries, tol=args.tol,
                              warm=previous if mode == "warm" else None)
            entry[f"{mode}_s"] = time.perf_counter() - start
            entry[f"{mode}_matvecs"] = found.matvecs
            entry[f"{mode}_raw_max"] = found.raw_max
            entry[f"{mode}_quotient_min"] = found.quotient_min
            entry[f"{mode}_raw_min"] = found.raw_min
            if mode == "warm":
                previous = found
        samples.append(entry)
    record["lanczos"] = {"tol": args.tol, "every": args.every, "samples": samples}
    later = samples[1:]  # the first warm sample has nothing to start from
    for mode in ("cold", "warm"):
        record[f"{mode}_matvecs_per_sample"] = statistics.median(s[f"{mode}_matvecs"] for s in later)
        record[f"{mode}_sample_plain_steps"] = statistics.median(s[f"{mode}_s"] for s in later) / plain
    for name in ("raw_max", "raw_min", "quotient_min"):  # relative to the spectrum's width
        record[f"warm_cold_{name}_difference"] = max(abs(s[f"warm_{name}"] - s[f"cold_{name}"])
                                                     / (s["cold_raw_max"] - s["cold_raw_min"]) for s in samples)
    print(json.dumps({k: v for k, v in record.items() if k != "lanczos"}, indent=1))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(record, indent=1))


if __name__ == "__main__":
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=1, user_api="blas"):
        main()
