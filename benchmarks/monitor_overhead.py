"""Overhead of Monitor.step() (every-step observables, SQLite store) as a ratio to the plain step.

    .venv/bin/python benchmarks/monitor_overhead.py --model vgg|mlp|mlp-mnist [--tensorboard] [--quotient N]
        [--compile] [--raw] [--charges K] [--pairs N] [--out FILE]
    .venv/bin/python benchmarks/monitor_overhead.py --model gpt2-small --device cuda   # the issue's GPU goal

vgg: models.vgg("vgg11", width_divisor=4, batch_norm=True, image_size=32, hidden=128), batch 64 of
3x32x32; mlp: models.mlp((64, 256, 256, 10)), batch 128 (--batch: another size, for the step
time at which the fixed per-step cost falls under a ratio); mlp-mnist: models.mlp((784, 1024, 1024, 10)),
batch 256; float32, SGD(lr=0.01, momentum=0.9, weight_decay=5e-4). gpt2-small: models.GPT at GPT-2
small's shape (12 layers, 12 heads, d_model 768, vocab 50257, 1024 positions), batch 8 x --tokens,
AdamW (the conservation tracker has no law for it: drift only). The monitor: every-step observables with the tracker recording every step, the
SQLite store, TensorBoard files only with --tensorboard, the quotient norms every N steps with
--quotient N (off by default: they are scheduled, not every-step, observables); --raw: the monitor
without symmetries (loss and norms only: the floor of any per-step monitor with a durable store).

Timing: --pairs N pairs of one plain and one monitored step, interleaved step by step (the machine's
speed drifts by tens of percent over minutes on a shared VM; interleaving puts both under the same
drift), each step timed; reported: the ratio of the medians and the median of the per-pair
differences (the monitor's extra time per step, the number least sensitive to that drift).
Beside them, in the same interleaving, the logging most training loops do instead: the plain step,
then ``loss.item()`` and ``torch.nn.utils.get_total_norm`` of the gradients with ``.item()``
(``itemized_step_s``, ``itemized_ratio``): a host sync a step on a GPU, one more pass over the
gradients on any device.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

import shockwatch as sw
from shockwatch.symmetry import _native


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=("vgg", "mlp", "mlp-mnist", "gpt2-small"), default="vgg")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (steps are then timed between synchronizations)")
    parser.add_argument("--tokens", type=int, default=1024, help="gpt2-small: sequence length (batch 8)")
    parser.add_argument("--batch", type=int, default=128, help="mlp: the batch size")
    parser.add_argument("--pairs", type=int, default=300, help="interleaved (plain, monitored) step pairs")
    parser.add_argument("--raw", action="store_true", help="the monitor without symmetries (raw observables only)")
    parser.add_argument("--charges", type=int, default=1, help="Schedule.charges: record the charges every K steps")
    parser.add_argument("--tensorboard", action="store_true")
    parser.add_argument("--quotient", type=int, default=None)
    parser.add_argument("--compile", action="store_true", help="Monitor(compile=True): the fused per-step pass compiled")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                            cwd=Path(__file__).parent).stdout.strip() or "unknown"
    torch.manual_seed(0)
    if args.model == "vgg":
        model = sw.models.vgg("vgg11", width_divisor=4, batch_norm=True, image_size=32, hidden=128)
        x, y = torch.randn(64, 3, 32, 32), torch.randint(0, 10, (64,))
    elif args.model == "mlp":
        model = sw.models.mlp((64, 256, 256, 10))
        x, y = torch.randn(args.batch, 64), torch.randint(0, 10, (args.batch,))
    elif args.model == "mlp-mnist":  # an MNIST-size MLP at a usual batch: where a fixed per-step cost stops mattering
        model = sw.models.mlp((784, 1024, 1024, 10))
        x, y = torch.randn(256, 784), torch.randint(0, 10, (256,))
    else:  # GPT-2 small's shape (124M parameters with its tied head; ours is untied), next-token loss
        config = sw.models.GPTConfig(vocab_size=50257, block_size=args.tokens, n_layer=12, n_head=12, d_model=768)
        model = sw.models.GPT(config)
        tokens = torch.randint(0, config.vocab_size, (8, args.tokens + 1))
        x, y = tokens[:, :-1], tokens[:, 1:].reshape(-1)
    device = torch.device(args.device)
    model, x, y = model.to(device), x.to(device), y.to(device)
    synchronize = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    if args.model == "gpt2-small":
        make = lambda: torch.optim.AdamW(model.parameters(), lr=3e-4, weight_decay=0.1)  # no law: drift only
        loss_of = lambda: F.cross_entropy(model(x).reshape(len(y), -1), y)
    else:
        make = lambda: torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
        loss_of = lambda: F.cross_entropy(model(x), y)
    # plain steps use their own optimizer: the monitor's pre-step hook lives on ``opt`` only
    opt, plain_opt = make(), make()
    with tempfile.TemporaryDirectory() as directory:
        example = x[:2, :32] if args.model == "gpt2-small" else x  # symmetry detection needs a small batch only
        monitor = sw.Monitor(model, opt, Path(directory) / "run", example_input=None if args.raw else example,
                             tensorboard=args.tensorboard,
                             schedule=sw.Schedule(charges=args.charges, quotient=args.quotient), compile=args.compile)
        monitoring, itemized = False, False
        logged = []  # what the itemized loop logs (kept, as a logger would)

        def step() -> None:
            optimizer = opt if monitoring else plain_opt
            optimizer.zero_grad()
            loss = loss_of()
            loss.backward()
            if itemized:  # the usual hand-written logging: two host reads a step
                grads = [p.grad for p in model.parameters() if p.grad is not None]
                logged.append((loss.item(), torch.nn.utils.get_total_norm(grads).item()))
            optimizer.step()
            if monitoring:
                monitor.step(loss)

        for _ in range(5):
            monitoring = True
            step()
        plain, watched, items = [], [], []
        for _ in range(args.pairs):
            for flag, item, bucket in ((False, False, plain), (True, False, watched), (False, True, items)):
                monitoring, itemized = flag, item
                synchronize()
                start = time.perf_counter()
                step()
                synchronize()
                bucket.append(time.perf_counter() - start)
        monitor.close()
    record = {"model": args.model, "compile": args.compile, "tensorboard": args.tensorboard, "quotient_every": args.quotient, "parameters": sum(p.numel() for p in model.parameters()),
              "plain_step_s": statistics.median(plain), "monitored_step_s": statistics.median(watched),
              "ratio": statistics.median(watched) / statistics.median(plain),
              # the mean counts what the median leaves out: the run store's ring moved into SQLite
              # every ~4096 rows (milliseconds, once per some hundred steps)
              "ratio_of_means": statistics.fmean(watched) / statistics.fmean(plain),
              "extra_mean_s": statistics.fmean(watched) - statistics.fmean(plain),
              "extra_step_s": statistics.median([w - p for p, w in zip(plain, watched)]), "pairs": args.pairs,
              "itemized_step_s": statistics.median(items), "itemized_ratio": statistics.median(items) / statistics.median(plain),
              "raw_only": args.raw, "charges_every": args.charges, "native_kernel": _native.library() is not None,
              "batch": len(y) if args.model == "mlp" else None, "torch": torch.__version__,
              "device": str(device), "commit": commit,
              "threads": torch.get_num_threads()}
    print(json.dumps(record, indent=1))
    suffix = ("" if device.type == "cpu" else f"_{device.type}") + ("_compiled" if args.compile else "") + ("_tb" if args.tensorboard else "") + (f"_q{args.quotient}" if args.quotient else "") + ("_raw" if args.raw else "") + (f"_c{args.charges}" if args.charges != 1 else "") + (f"_b{args.batch}" if args.model == "mlp" and args.batch != 128 else "")
    out = args.out or Path(__file__).parent / "results" / f"monitor_overhead_{args.model}{suffix}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(record, indent=1))


if __name__ == "__main__":
    main()
