"""Symmetries found on Hugging Face architectures built from configs (random weights, no download).

For each architecture, a small config and (with --published) its smallest published size: symmetries
per kind, parameters in at least one symmetry (%), weight matrices in at least one symmetry, the
unanalysed modules, the time of find_symmetries and of verify_symmetries (float32 checks on 16
symmetries per kind, 4 Hessian identities per kind, and the exact float64 check of every symmetry),
and how many the exact check refutes.

    .venv/bin/python benchmarks/symmetry_coverage.py                 # small configs
    .venv/bin/python benchmarks/symmetry_coverage.py --published gpt2 bert t5 vit qwen2
    .venv/bin/python benchmarks/symmetry_coverage.py --published --depth 2 llama mistral   # published widths

writes benchmarks/results/symmetry_coverage.json (merged with earlier rows of other models).
"""

from __future__ import annotations

import argparse
import gc
import json
import platform
import time
from pathlib import Path

import torch
import torch.nn.functional as F

import shockwatch as sw
from shockwatch.models import huggingface
from shockwatch.symmetry.trace import call_arguments, model_output

OUT = Path(__file__).parent / "results" / "symmetry_coverage.json"


def measure(architecture: str, size: str, verify: bool, depth: int | None = None) -> dict:
    built = huggingface.build(architecture, size=size, tokens=16 if size == "small" else 8,
                              batch=2 if size == "small" else 1, kv_heads=2 if architecture in ("llama", "qwen2", "mistral") else None,
                              depth=depth)
    model, inputs = built.model, built.example_input
    params = dict(model.named_parameters())
    start = time.perf_counter()
    syms = sw.find_symmetries(model, inputs)
    find_s = time.perf_counter() - start
    covered = {slot.param for sym in syms for slot in sym.slots}
    total = sum(p.numel() for p in params.values())
    matrices = [n for n, p in params.items() if p.ndim >= 2]
    row = {
        "architecture": architecture, "size": size if depth is None else f"published/{depth} layers",
        "description": built.description,
        "parameters": total, "counts": syms.counts(),
        "covered_fraction": sum(p.numel() for n, p in params.items() if n in covered) / total,
        "weight_matrices": len(matrices), "weight_matrices_covered": sum(n in covered for n in matrices),
        "unanalysed": list(syms.unanalysed), "reasons": dict(syms.reasons), "rejected": len(syms.rejected),
        "find_symmetries_s": find_s,
    }
    if verify:
        args, kwargs = call_arguments(model, inputs)
        with torch.no_grad():
            logits = model_output(model(*args, **kwargs))
        targets = torch.randint(0, logits.shape[-1], tuple(logits.shape[:-1]))

        def loss(outputs, labels):
            outputs = model_output(outputs)
            return F.cross_entropy(outputs.reshape(-1, outputs.shape[-1]), labels.reshape(-1))

        start = time.perf_counter()
        report = sw.verify_symmetries(model, loss, (inputs, targets), syms, train_mode=False, hessian_samples=4,
                                      element_samples=16)
        row["verify_symmetries_s"] = time.perf_counter() - start
        row["refuted_exact"] = len(report.refuted())
        row["max_exact_defect"] = max(report.exact.values(), default=0.0)
        row["max_gradient_alignment"] = report.max_gradient_alignment()
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("architectures", nargs="*", default=list(huggingface.ARCHITECTURES))
    parser.add_argument("--published", action="store_true", help="the smallest published size instead of a small config")
    parser.add_argument("--no-verify", action="store_true", help="time find_symmetries only")
    parser.add_argument("--depth", type=int, default=None,
                        help="with --published: that many of the published layers (a model too big for this machine)")
    args = parser.parse_args()
    size = "published" if args.published else "small"
    torch.set_num_threads(2)
    results = json.loads(OUT.read_text()) if OUT.exists() else {"rows": []}
    results["machine"] = f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}"
    for architecture in args.architectures:
        row = measure(architecture, size, not args.no_verify, args.depth)
        results["rows"] = [r for r in results["rows"] if (r["architecture"], r["size"]) != (architecture, row["size"])] + [row]
        print(json.dumps({k: v for k, v in row.items() if k != "reasons"}))
        OUT.parent.mkdir(parents=True, exist_ok=True)
        OUT.write_text(json.dumps(results, indent=1))
        gc.collect()


if __name__ == "__main__":
    main()
