"""Overhead of Monitor.step() (every-step observables, SQLite store) as a ratio to the plain step.

    .venv/bin/python benchmarks/monitor_overhead.py --model vgg|mlp|mlp-mnist [--tensorboard] [--quotient N]
        [--compile] [--raw] [--charges K] [--pairs N] [--out FILE]
    .venv/bin/python benchmarks/monitor_overhead.py --model gpt2-small|llama-small --device cuda --autocast bf16
        [--layers L] [--tokens T]   # the GPU goal: writes benchmarks/results/monitor_overhead_gpu.json

vgg: models.vgg("vgg11", width_divisor=4, batch_norm=True, image_size=32, hidden=128), batch 64 of
3x32x32; mlp: models.mlp((64, 256, 256, 10)), batch 128 (--batch: another size, for the step
time at which the fixed per-step cost falls under a ratio); mlp-mnist: models.mlp((784, 1024, 1024, 10)),
batch 256; float32, SGD(lr=0.01, momentum=0.9, weight_decay=5e-4). gpt2-small: Hugging Face's
GPT2LMHeadModel from GPT2Config() (124M, random weights, no download); llama-small: LlamaForCausalLM
at a similar size (12 layers, 12 heads, hidden 768, MLP 2048, vocab 32000); batch 8 x --tokens
(1024), --layers to shrink either (a CPU check of the script); AdamW(lr 3e-4, weight decay 0.1 on the
matrices, 0 on biases and norms: the usual decay / no-decay groups; the tracker has no law for
Adam: drift only); --autocast bf16 runs forward and loss under torch.autocast. Symmetries are found
on a 2 x 32 example batch. The monitor: every-step observables with the tracker recording every step, the
SQLite store, TensorBoard files only with --tensorboard, the quotient norms every N steps with
--quotient N (off by default: they are scheduled, not every-step, observables); --raw: the monitor
without symmetries (loss and norms only: the floor of any per-step monitor with a durable store).

Timing: --pairs N pairs of one plain and one monitored step, interleaved step by step (the machine's
speed drifts by tens of percent over minutes on a shared VM; interleaving puts both under the same
drift), each step timed; reported: the ratio of the medians (with ``ratio_ci95``, its bootstrap interval over
the pairs) and the median of the per-pair differences (the monitor's extra time per step, the number
least sensitive to that drift).
Beside them, in the same interleaving, the logging most training loops do instead: the plain step,
then ``loss.item()`` and ``torch.nn.utils.get_total_norm`` of the gradients with ``.item()``
(``itemized_step_s``, ``itemized_ratio``): a host sync a step on a GPU, one more pass over the
gradients on any device; and the floor (``floor_step_s``, ``floor_ratio``): the plain step plus only
the memory traffic the every-step observables need, left on the device (one read of the gradients
and a copy of theta_t before the step, one read of theta_{t+1} against that copy after it:
``torch._foreach_norm`` and ``_foreach_copy_``, no host read). With --sample-costs: one quotient
projection of the gradient and one curvature sample (tol 1e-4, at most 200 products) timed once
each, in plain steps.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from _common import git_commit

import shockwatch as sw
from shockwatch.symmetry import _native


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=("vgg", "mlp", "mlp-mnist", "gpt2-small", "llama-small"), default="vgg")
    parser.add_argument("--layers", type=int, default=12, help="gpt2-small / llama-small: transformer layers")
    parser.add_argument("--vocab", type=int, default=None, help="gpt2-small / llama-small: vocabulary (a CPU check)")
    parser.add_argument("--autocast", choices=("none", "bf16"), default="none")
    parser.add_argument("--sample-costs", action="store_true", help="time one quotient and one curvature sample")
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
    commit = git_commit()
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
    else:  # Hugging Face language models built from configs, next-token loss
        import transformers

        if args.model == "gpt2-small":
            config = transformers.GPT2Config(n_layer=args.layers, n_positions=max(1024, args.tokens),
                                             vocab_size=args.vocab or 50257)
            model = transformers.GPT2LMHeadModel(config)
        else:
            config = transformers.LlamaConfig(hidden_size=768, intermediate_size=2048, num_hidden_layers=args.layers,
                                              num_attention_heads=12, num_key_value_heads=12, vocab_size=args.vocab or 32000,
                                              max_position_embeddings=max(1024, args.tokens))
            model = transformers.LlamaForCausalLM(config)
        tokens = torch.randint(0, config.vocab_size, (8, args.tokens + 1))
        x, y = tokens[:, :-1], tokens[:, 1:].reshape(-1)
    device = torch.device(args.device)
    model, x, y = model.to(device), x.to(device), y.to(device)
    synchronize = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    language = args.model in ("gpt2-small", "llama-small")
    autocast = (lambda: torch.autocast(device.type, dtype=torch.bfloat16)) if args.autocast == "bf16" \
        else contextlib.nullcontext
    if language:
        def make(net):  # the decay / no-decay groups of nanoGPT and the HF Trainer (no law for AdamW: drift only)
            decay = [p for p in net.parameters() if p.ndim >= 2]
            rest = [p for p in net.parameters() if p.ndim < 2]
            return torch.optim.AdamW([{"params": decay, "weight_decay": 0.1}, {"params": rest, "weight_decay": 0.0}],
                                     lr=3e-4)

        def loss_of(net):
            with autocast():
                return F.cross_entropy(net(x).logits.reshape(len(y), -1).float(), y)
    else:
        make = lambda net: torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)

        def loss_of(net):
            with autocast():
                return F.cross_entropy(net(x), y)
    # the other steps train a copy with their own optimizers: the monitor's pre-step hook lives on
    # ``opt`` only, and weights another optimizer wrote between its steps would restart its laws
    twin = copy.deepcopy(model)
    opt, plain_opt, floor_opt = make(model), make(twin), make(twin)
    params = [p for p in twin.parameters() if p.requires_grad]
    copies = [torch.empty_like(p) for p in params]
    floor_norms: list = []  # the floor's values, left on the device (no host read)

    def floor_before(optimizer, args_, kwargs_):
        grads = [p.grad for p in params if p.grad is not None]
        floor_norms.append(torch._foreach_norm(grads))
        torch._foreach_copy_(copies, params)

    floor_opt.register_step_pre_hook(floor_before)
    with tempfile.TemporaryDirectory() as directory:
        example = x[:2, :32] if language else x  # symmetry detection needs a small batch only
        monitor = sw.Monitor(model, opt, Path(directory) / "run", example_input=None if args.raw else example,
                             tensorboard=args.tensorboard,
                             # --quotient N: a sample every N steps, whatever it costs (this measures that cost)
                             schedule=sw.Schedule(charges=args.charges, quotient=args.quotient, quotient_budget=None),
                             compile=args.compile)
        monitoring, itemized, floor = False, False, False
        logged = []  # what the itemized loop logs (kept, as a logger would)

        def step() -> None:
            optimizer = opt if monitoring else floor_opt if floor else plain_opt
            net = model if monitoring else twin
            optimizer.zero_grad()
            loss = loss_of(net)
            loss.backward()
            if itemized:  # the usual hand-written logging: two host reads a step
                grads = [p.grad for p in net.parameters() if p.grad is not None]
                logged.append((loss.item(), torch.nn.utils.get_total_norm(grads).item()))
            optimizer.step()
            if monitoring:
                monitor.step(loss)
            if floor:
                floor_norms.append(torch._foreach_norm(torch._foreach_sub(params, copies)))
                del floor_norms[:-4]

        for _ in range(5):
            monitoring = True
            step()
        plain, watched, items, floors = [], [], [], []
        for _ in range(args.pairs):
            for flag, item, at_floor, bucket in ((False, False, False, plain), (True, False, False, watched),
                                                 (False, True, False, items), (False, False, True, floors)):
                monitoring, itemized, floor = flag, item, at_floor
                synchronize()
                start = time.perf_counter()
                step()
                synchronize()
                bucket.append(time.perf_counter() - start)
        costs = sample_costs(model, x, y, monitor.symmetries, loss_of, step, synchronize) \
            if args.sample_costs and monitor.symmetries is not None else {}
        monitor.close()
    record = {"model": args.model, "compile": args.compile, "tensorboard": args.tensorboard, "quotient_every": args.quotient, "parameters": sum(p.numel() for p in model.parameters()),
              "plain_step_s": statistics.median(plain), "monitored_step_s": statistics.median(watched),
              "ratio": statistics.median(watched) / statistics.median(plain),
              # the ratio's spread on this machine: the 2.5 and 97.5 percentiles of the ratio of the
              # medians over pairs drawn with replacement (a VM's speed moves it by a few percent)
              "ratio_ci95": bootstrap_ratio(plain, watched),
              # the mean counts what the median leaves out: the run store's ring moved into SQLite
              # every ~4096 rows (milliseconds, once per some hundred steps)
              "ratio_of_means": statistics.fmean(watched) / statistics.fmean(plain),
              "extra_mean_s": statistics.fmean(watched) - statistics.fmean(plain),
              "extra_step_s": statistics.median([w - p for p, w in zip(plain, watched)]), "pairs": args.pairs,
              "itemized_step_s": statistics.median(items), "itemized_ratio": statistics.median(items) / statistics.median(plain),
              "floor_step_s": statistics.median(floors), "floor_ratio": statistics.median(floors) / statistics.median(plain),
              "autocast": args.autocast, **costs,
              "raw_only": args.raw, "charges_every": args.charges, "native_kernel": _native.library() is not None,
              "batch": len(y) if args.model == "mlp" else None, "torch": torch.__version__,
              "device": str(device), "commit": commit, "deferred": monitor.deferred,
              "threads": torch.get_num_threads()}
    if device.type == "cuda":  # the record, with its fields
        record.update(device=torch.cuda.get_device_name(device), plain_step_ms=record["plain_step_s"] * 1e3,
                      monitored_step_ms=record["monitored_step_s"] * 1e3, floor_step_ms=record["floor_step_s"] * 1e3,
                      model=f"{args.model} ({record['parameters'] / 1e6:.0f}M, {args.layers} layers, batch 8 x {args.tokens}, "
                            f"AdamW decay/no-decay, autocast {args.autocast})")
    print(json.dumps(record, indent=1))
    suffix = ("" if device.type == "cpu" else f"_{device.type}") + ("_compiled" if args.compile else "") + ("_tb" if args.tensorboard else "") + (f"_q{args.quotient}" if args.quotient else "") + ("_raw" if args.raw else "") + (f"_c{args.charges}" if args.charges != 1 else "") + (f"_b{args.batch}" if args.model == "mlp" and args.batch != 128 else "")
    name = "monitor_overhead_gpu.json" if device.type == "cuda" else f"monitor_overhead_{args.model}{suffix}.json"
    out = args.out or Path(__file__).parent / "results" / name
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(record, indent=1))


def bootstrap_ratio(plain: list[float], watched: list[float], draws: int = 2000) -> list[float]:
    """[2.5, 97.5] percentiles of median(watched) / median(plain) over ``draws`` resamples of the pairs
    (kept together: both steps of a pair ran under the same machine speed), fixed seed."""
    import numpy as np

    rng = np.random.default_rng(0)
    pairs = np.array([plain, watched])
    picks = rng.integers(0, pairs.shape[1], size=(draws, pairs.shape[1]))
    ratios = np.median(pairs[1][picks], axis=1) / np.median(pairs[0][picks], axis=1)
    return [float(v) for v in np.percentile(ratios, [2.5, 97.5])]


def sample_costs(model, x, y, symmetries, loss_of, step, synchronize) -> dict[str, float]:
    """One quotient projection of the gradient (``horizontal_projection``, CG) and one curvature sample
    (``curvature``, tol 1e-4, at most 200 products), each timed once, in plain steps."""
    from shockwatch.monitor.curvature import curvature
    from shockwatch.quotient import horizontal_projection

    plain = []
    for _ in range(5):
        synchronize()
        start = time.perf_counter()
        step()
        synchronize()
        plain.append(time.perf_counter() - start)
    plain_s = statistics.median(plain)
    named = {name: p.detach() for name, p in model.named_parameters()}
    grads = {name: (p.grad if p.grad is not None else torch.zeros_like(p)).detach() for name, p in model.named_parameters()}
    start = time.perf_counter()
    horizontal_projection(symmetries, named, grads, rtol=1e-7, max_iterations=500)
    synchronize()
    quotient_s = time.perf_counter() - start

    def loss_fn(outputs, targets):
        logits = outputs.logits if hasattr(outputs, "logits") else outputs
        return F.cross_entropy(logits.reshape(len(targets), -1), targets)

    start = time.perf_counter()
    found = curvature(model, loss_fn, (x, y), symmetries, tol=1e-4, max_matvecs=200)
    synchronize()
    curvature_s = time.perf_counter() - start
    return {"quotient_sample_plain_steps": quotient_s / plain_s, "curvature_sample_plain_steps": curvature_s / plain_s,
            "curvature_sample_matvecs": found.matvecs}


if __name__ == "__main__":
    main()
