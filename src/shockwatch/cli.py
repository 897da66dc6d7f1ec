"""The ``shockwatch`` command: parses arguments and calls the library; nothing else."""

from __future__ import annotations

import contextlib
import json
import math
from pathlib import Path
from typing import NoReturn

import typer
from rich.console import Console

from .experiments import EXPERIMENTS

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="Shock-wave theory and conservation laws on real training runs.")
console = Console(stderr=True, soft_wrap=True)


def _interrupted(kept: str) -> NoReturn:
    """After Ctrl-C: one line saying what was kept (``kept``), and exit status 130 (typer alone exits
    130 without a word)."""
    console.print(f"interrupted: {kept}")
    raise typer.Exit(code=130) from None


@contextlib.contextmanager
def _interruptible(kept: str):
    """Ctrl-C inside: ``_interrupted(kept)``."""
    try:
        yield
    except KeyboardInterrupt:
        _interrupted(kept)


def _run_experiment(name: str, out: Path, as_json: bool, full: bool = False) -> None:
    module = EXPERIMENTS[name]
    if full and not hasattr(module.Config, "full"):
        console.print(f"[red]error:[/red] {name} has no --full size; run it without --full")
        raise typer.Exit(code=2)
    config = module.Config.full() if full else module.Config()
    console.print(f"running {name} ...")
    with _interruptible(f"nothing was written to {out}"):
        result = module.run(config, progress=True)
    paths = result.save(out)
    if as_json:
        typer.echo(json.dumps(result.to_json()))
    else:
        for path in paths:
            console.print(f"wrote {path}")


def _free_directory(out: Path) -> Path:
    """``out`` if it holds no run yet, else the first free ``out-2``, ``out-3``, ... (never overwrite a run)."""
    candidate, number = out, 1
    while (candidate / "run.sqlite").exists():
        number += 1
        candidate = out.with_name(f"{out.name}-{number}")
    return candidate


@app.command()
def demo(
    out: Path = typer.Option(Path("runs/demo"), help="Run directory (a new one next to it if it holds a run)."),
    testbed: str = typer.Option("catapult", help="Built-in testbed: catapult (about 15 s), edge-of-stability "
                                                 "(about 20 s), grokking-mlp, grokking-transformer (minutes)."),
) -> None:
    """The main job: train a built-in testbed under the monitor on the CPU, then write the run store,
    TensorBoard files and report.html, and print a summary (symmetries, charges vs theory, warnings,
    when the transition came).

    Example: shockwatch demo --out runs/demo
    Example: tensorboard --logdir runs/demo/tensorboard
    """
    from rich.progress import Progress

    from .experiments import falsifiable_prediction as fp
    from .monitor import RunStore, score
    from .monitor.warnings import warnings_in
    from .report import write_report

    try:
        # the tiny scale: the transition within the 3-minute budget of the README's main job
        config = fp.Config(testbeds=(testbed,), scale="tiny", curvature_samples=20)
    except ValueError as error:
        console.print(f"[red]error:[/red] {error}")
        raise typer.Exit(code=2) from None
    if out.exists() and not out.is_dir():
        console.print(f"[red]error:[/red] --out {out} is a file: give a folder for the run")
        raise typer.Exit(code=2)
    target = _free_directory(out)
    if target != out:
        console.print(f"{out} holds a run already: writing {target}")
    console.print(f"training {testbed} under the monitor ({config.curvature_samples} curvature samples) ...")
    with _interruptible(f"the steps logged so far are in {target / 'run.sqlite'} "
                        f"(shockwatch report {target} draws them)"):
        with Progress(console=console, transient=True) as bar:
            outcome = fp.run_testbed(testbed, config, target, bar=bar, tensorboard=True)
    with _interruptible(f"the run is complete in {target / 'run.sqlite'}; its report was not written "
                        f"(shockwatch report {target} writes it)"):
        report = write_report(target)
    with RunStore(target / "run.sqlite", read_only=True) as store:
        meta, names = store.meta(), store.names()
        law = {n.split("/")[1]: max(store.scalars(n)[1]) for n in names if n.startswith("charge_law_error/")}
        drift = {n.split("/")[1]: store.scalars(n)[1][-1] for n in names if n.startswith("charge_drift/")}
        raised = warnings_in(store.events())  # what the monitor warned of live, as it trained
    console.print(f"[bold]{testbed}[/bold] ({outcome.steps} steps, lr {outcome.lr:g}, {outcome.runtime_s:.0f} s): "
                  f"{outcome.published}")
    console.print(f"symmetries found: {meta['symmetries']}; optimizer law: {meta['law']}")
    for kind in drift:
        against = (f"; exact-law error max {law[kind]:.1e} (theory: round-off)" if kind in law
                   else "; no exact law for this optimizer")
        console.print(f"  {kind:<12} charge drift {drift[kind]:.2e} (relative to the start){against}")
    console.print(f"transition ({outcome.transition_curve}, abrupt changes): steps {outcome.events or 'none detected'}")
    console.print(f"live warnings in the run store: {len(raised)}")
    for key in sorted({(w.rule, w.signal) for w in raised}):
        found = [w for w in raised if (w.rule, w.signal) == key]
        forecasts = [w.forecast for w in found if w.forecast is not None]
        scored = score([w.step for w in found], outcome.events, horizon=outcome.horizon)
        leads = ", ".join("-" if math.isnan(t) else f"{t:.0f}" for t in scored.lead_times)
        console.print(f"  {key[0] + ' ' + key[1]:<20} at steps {[w.step for w in found][:8]}{' ...' if len(found) > 8 else ''}"
                      f"{f', forecast steps {forecasts[:8]}' if forecasts else ''}; "
                      f"lead times per event [{leads}] (horizon {outcome.horizon}); false alarms {scored.false_alarms}")
    console.print(f"wrote {target / 'run.sqlite'}, {target / 'tensorboard'}, {report}")


@app.command()
def reproduce(
    name: str = typer.Argument(..., help=f"One of: {', '.join(EXPERIMENTS)}."),
    out: Path = typer.Option(Path("runs"), "--out", help="Directory for the JSON and PNG."),
    as_json: bool = typer.Option(False, "--json", help="Also print the result as JSON on stdout."),
    full: bool = typer.Option(False, "--full", help="The paper-sized run (for a GPU) where the experiment has one."),
) -> None:
    """Reproduce one of the papers' experiments and save its data (JSON) and figure (PNG).

    Example: shockwatch reproduce burgers-shock --out runs/fig3
    Example: shockwatch reproduce neural-mechanics --out runs/kunin-fig1
    Example: shockwatch reproduce hopf-cole-relu --out runs/table1
    Example: shockwatch reproduce quotient-sde --out runs/quotient-sde
    Example: shockwatch reproduce closure --out runs/closure
    Example: shockwatch reproduce mean-field --out runs/mean-field
    Example: shockwatch reproduce falsifiable-prediction --out runs/prediction
    Example: shockwatch reproduce transformer-spikes --out runs/spikes
    Example: shockwatch reproduce control --out runs/control
    Example: shockwatch reproduce sharpening --out runs/sharpening
    """
    if name not in EXPERIMENTS:
        console.print(f"[red]error:[/red] unknown experiment {name!r}; choose one of: {', '.join(EXPERIMENTS)}")
        raise typer.Exit(code=2)
    _run_experiment(name, out, as_json, full)


@app.command()
def report(run_dir: Path = typer.Argument(..., help="A Monitor's log_dir (holds run.sqlite).")) -> None:
    """Write RUN_DIR/report.html: every observable plotted, raw beside symmetry-aware, events marked.

    Example: shockwatch report runs/my-run
    """
    from .report import write_report

    import sqlite3

    if run_dir.is_file() and run_dir.name != "run.sqlite":
        console.print(f"[red]error:[/red] {run_dir} is a file: give the run's folder (a Monitor's log_dir) or its run.sqlite")
        raise typer.Exit(code=2)
    try:
        with _interruptible(f"no report was written (an earlier report.html in {run_dir} is as it was)"):
            path = write_report(run_dir)
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError) as error:
        console.print(f"[red]error:[/red] {error}")
        raise typer.Exit(code=2) from None
    except sqlite3.DatabaseError as error:
        console.print(f"[red]error:[/red] {run_dir} holds no readable run store ({error})")
        raise typer.Exit(code=2) from None
    console.print(f"wrote {path}")


@app.command()
def symmetries(
    model: str = typer.Argument(..., help="A built-in model (mlp, mlp-gelu, mlp-batchnorm, mlp-layernorm, vgg11, resnet, "
                                          "vgg11-bn, vgg16-bn, gpt), hf:ARCH (a Hugging Face architecture built from "
                                          "its config: gpt2, llama, qwen2, mistral, bert, vit, t5) or module:factory "
                                          "returning an nn.Module (imported from the working directory)."),
    input_shape: str = typer.Option("", help="Shape of one example without the batch axis, e.g. 3,32,32 "
                                             "(needed for module:factory)."),
    batch: int = typer.Option(8, min=1, help="Random examples used to trace and verify."),
    layers: int = typer.Option(2, min=1, help="hf: number of layers (small size)."),
    hidden: int = typer.Option(64, min=1, help="hf: hidden width (small size)."),
    heads: int = typer.Option(4, min=1, help="hf: attention heads (small size)."),
    kv_heads: int = typer.Option(0, min=0, help="hf: key-value heads for llama/qwen2/mistral (0: as many as heads)."),
    tokens: int = typer.Option(16, min=1, help="hf: tokens per example."),
    size: str = typer.Option("small", help="hf: 'small' (the options above) or 'published' (the family's "
                                           "smallest published size, e.g. GPT-2 124M)."),
    depth: int = typer.Option(0, min=0, help="hf with --size published: keep this many of the published layers "
                                      "(0: all), e.g. Mistral 7B's width at 1 layer."),
    class_dim: int = typer.Option(-1, "--class-dim", help="The output's class axis: -1 for (..., classes) logits, "
                                                         "1 for channel-first ones such as a segmentation head's "
                                                         "(batch, classes, H, W)."),
    as_json: bool = typer.Option(False, "--json", help="Print the result as JSON instead of tables."),
) -> None:
    """Find and verify the symmetries of a model: counts per kind and layer, errors, unanalysed modules.

    Example: shockwatch symmetries vgg11-bn
    Example: shockwatch symmetries hf:llama --layers 2 --hidden 64
    Example: shockwatch symmetries hf:mistral --size published --depth 1
    Example: shockwatch symmetries mypackage.nets:make_net --input-shape 3,32,32
    """
    import importlib
    import sys
    import time

    import torch
    import torch.nn.functional as F
    from rich.table import Table

    from . import models as zoo
    from .symmetry import Kind, find_symmetries, verify_symmetries
    from .symmetry.trace import call_arguments, model_output

    timings = {}
    try:
        if model.startswith("hf:"):
            built = zoo.huggingface.build(model[3:], size=size, layers=layers, hidden=hidden, heads=heads,
                                          kv_heads=kv_heads or None, tokens=tokens, batch=min(batch, 2),
                                          depth=depth or None)
            network, inputs = built.model, built.example_input
            generator = torch.Generator().manual_seed(0)
        elif ":" in model:
            if "" not in sys.path and "." not in sys.path:
                sys.path.insert(0, "")  # module:factory imports from the working directory
            module_name, factory_name = model.split(":", 1)
            network = getattr(importlib.import_module(module_name), factory_name)()
            vocabulary = None
            if not input_shape:
                raise ValueError("--input-shape is needed for a module:factory model, e.g. --input-shape 3,32,32")
        else:
            network, shape, vocabulary = zoo.build(model)
            input_shape = input_shape or ",".join(map(str, shape))
        if not model.startswith("hf:"):
            try:
                shape = tuple(int(part) for part in input_shape.split(","))
            except ValueError:
                shape = ()
            if not shape or min(shape) < 1:
                raise ValueError(f"--input-shape must be positive integers separated by commas (e.g. 3,32,32), "
                                 f"got {input_shape!r}")
            generator = torch.Generator().manual_seed(0)
            inputs = (torch.randint(0, vocabulary, (batch, *shape), generator=generator) if vocabulary
                      else torch.randn((batch, *shape), generator=generator))
        start = time.perf_counter()
        found = find_symmetries(network, inputs, class_dim=class_dim)
        timings["find_symmetries_s"] = time.perf_counter() - start
        args, kwargs = call_arguments(network, inputs)
        with torch.no_grad():
            output_shape = model_output(network.eval()(*args, **kwargs)).movedim(class_dim, -1).shape
        targets = torch.randint(0, output_shape[-1], tuple(output_shape[:-1]), generator=generator)

        def loss(outputs, labels):  # the classes moved last: classifiers, language models, segmentation heads
            outputs = model_output(outputs).movedim(class_dim, -1)
            return F.cross_entropy(outputs.reshape(-1, outputs.shape[-1]), labels.reshape(-1))

        start = time.perf_counter()
        report = verify_symmetries(network, loss, (inputs, targets), found, train_mode=False, hessian_samples=4,
                                   element_samples=16)
        timings["verify_symmetries_s"] = time.perf_counter() - start
    except (ValueError, ImportError, AttributeError) as error:
        console.print(f"[red]error:[/red] {error}")
        raise typer.Exit(code=2) from None
    except KeyboardInterrupt:
        _interrupted("nothing was written")
    per_layer: dict[str, dict[str, int]] = {}
    for sym in found:
        layer = sym.label.split("/")[1]
        per_layer.setdefault(layer, dict.fromkeys((k.value for k in Kind), 0))[sym.kind.value] += 1
    parameters = dict(network.named_parameters())
    covered = {slot.param for sym in found for slot in sym.slots}
    total = sum(p.numel() for p in parameters.values())
    summary = {
        "model": model, "counts": found.counts(), "per_layer": per_layer, "unanalysed": list(found.unanalysed),
        "reasons": dict(found.reasons), "rejected": list(found.rejected), **timings,
        "parameters_covered": sum(p.numel() for n, p in parameters.items() if n in covered) / max(total, 1),
        "refuted": report.refuted(),
        "verification": {k.value: {"max_loss_change": report.max_loss_change(k),
                                   "max_gradient_alignment": report.max_gradient_alignment(k),
                                   "max_hessian_residual": report.max_hessian_residual(k)} for k in Kind},
    }
    if as_json:
        typer.echo(json.dumps(summary))
        return
    table = Table(title=f"symmetries of {model}")
    table.add_column("layer")
    for kind in Kind:
        table.add_column(kind.value, justify="right")
    for layer, counts in per_layer.items():
        table.add_row(layer, *(str(counts[k.value]) for k in Kind))
    table.add_row("[bold]total", *(f"[bold]{found.counts()[k.value]}" for k in Kind))
    errors = Table(title="verification (relative; float32 round-off ~1e-7)")
    for column in ("kind", "max loss change", "max |<grad L, xi>|", "max Hessian residual"):
        errors.add_column(column, justify="right")
    for kind, row in summary["verification"].items():
        errors.add_row(kind, *("–" if kind == Kind.PERMUTATION and name != "max_loss_change" else f"{value:.1e}"
                               for name, value in row.items()))
    out = Console()
    out.print(table)
    out.print(errors)
    out.print(f"unanalysed modules: {', '.join(found.unanalysed) or 'none'}")
    out.print(f"parameters in a symmetry: {summary['parameters_covered']:.1%}; find_symmetries "
              f"{timings['find_symmetries_s']:.2f} s, verify_symmetries {timings['verify_symmetries_s']:.2f} s; "
              f"exact float64 check (eps 0): {len(report.refuted())} refuted")


def main() -> None:  # pragma: no cover - console entry point
    app()
