"""The ``shockwatch`` command: parses arguments and calls ``experiments``; nothing else."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.console import Console

from .experiments import EXPERIMENTS

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="Shock-wave theory and conservation laws on real training runs.")
console = Console(stderr=True)


def _run_experiment(name: str, out: Path, as_json: bool) -> None:
    module = EXPERIMENTS[name]
    with console.status(f"running {name} ..."):
        result = module.run(module.Config())
    paths = result.save(out)
    if as_json:
        typer.echo(json.dumps(result.to_json()))
    else:
        for path in paths:
            console.print(f"wrote {path}")


@app.command()
def demo(out: Path = typer.Option(Path("runs/demo"), help="Directory for the JSON and PNG.")) -> None:
    """Run the main job on a built-in example (for now: the paper's Figure 3, burgers-shock).

    Example: shockwatch demo --out runs/demo
    """
    _run_experiment("burgers-shock", out, as_json=False)
    result = json.loads((out / "burgers_shock.json").read_text())
    console.print(f"shock time tau* = {result['tau_star']:.6f} (theory: 1)")
    for nu, slopes in result["max_slope"].items():
        console.print(f"nu = {float(nu):<5g} max|v_s| over tau: {max(slopes):8.3f}; "
                      f"WENO5 vs Hopf-Cole L1 gap <= {max(result['simulation_l1'][nu]):.1e}")


@app.command()
def reproduce(
    name: str = typer.Argument(..., help=f"One of: {', '.join(EXPERIMENTS)}."),
    out: Path = typer.Option(Path("runs"), "--out", help="Directory for the JSON and PNG."),
    as_json: bool = typer.Option(False, "--json", help="Also print the result as JSON on stdout."),
) -> None:
    """Reproduce one of the papers' experiments and save its data (JSON) and figure (PNG).

    Example: shockwatch reproduce burgers-shock --out runs/fig3
    """
    if name not in EXPERIMENTS:
        console.print(f"[red]error:[/red] unknown experiment {name!r}; choose one of: {', '.join(EXPERIMENTS)}")
        raise typer.Exit(code=2)
    _run_experiment(name, out, as_json)


def main() -> None:  # pragma: no cover - console entry point
    app()
