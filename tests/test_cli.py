"""The shockwatch command: help texts, errors, and the demo end to end."""

import json
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from shockwatch.cli import app

runner = CliRunner()


@pytest.mark.parametrize("command", [[], ["demo"], ["reproduce"]])
def test_every_command_has_help_with_an_example(command):
    result = runner.invoke(app, [*command, "--help"])
    assert result.exit_code == 0
    if command:
        assert "Example:" in result.output


def test_unknown_experiment_is_one_line_and_exit_2():
    result = runner.invoke(app, ["reproduce", "no-such-thing"])
    assert result.exit_code == 2
    assert "unknown experiment" in result.output


@pytest.mark.slow
def test_demo_end_to_end(tmp_path):
    """The README's first command, as a subprocess: writes the figure and its JSON (tau* = 1)."""
    out = tmp_path / "demo"
    subprocess.run([sys.executable, "-m", "shockwatch", "demo", "--out", str(out)], check=True, timeout=600)
    data = json.loads((out / "burgers_shock.json").read_text())
    assert abs(data["tau_star"] - 1) < 1e-6
    assert (out / "burgers_shock.png").exists()
