"""The shockwatch command: help texts, errors, and the demo end to end."""

import json
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from shockwatch.cli import app

runner = CliRunner()


@pytest.mark.parametrize("command", [[], ["demo"], ["reproduce"], ["symmetries"]])
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
    """The README's first command, as a subprocess: the catapult testbed under the monitor. Truth: one
    loss row per step, the width's 512 rescale units found, the exact SGD law to float32 round-off,
    TensorBoard and report files written; a second run goes to a new directory, never over the first."""
    import sqlite3

    out = tmp_path / "demo"
    done = subprocess.run([sys.executable, "-m", "shockwatch", "demo", "--out", str(out)], check=True, timeout=600,
                          capture_output=True, text=True)
    db = sqlite3.connect(out / "run.sqlite")
    assert db.execute("SELECT COUNT(*), MAX(step) FROM scalars WHERE name = 'loss'").fetchone() == (60, 60)
    assert "'rescale': 512" in db.execute("SELECT value FROM meta WHERE key = 'symmetries'").fetchone()[0]
    assert db.execute("SELECT MAX(value) FROM scalars WHERE name = 'charge_law_error/rescale'").fetchone()[0] < 1e-5
    assert any((out / "tensorboard").iterdir()) and (out / "report.html").stat().st_size > 10_000
    # the summary's warnings are those the monitor wrote to the store live, as events of kind "warning"
    raised = db.execute("SELECT COUNT(*) FROM events WHERE kind = 'warning' AND message LIKE 'shock quotient:%'").fetchone()[0]
    assert "transition (loss" in done.stderr and "shock quotient" in done.stderr and raised >= 1
    total = db.execute("SELECT COUNT(*) FROM events WHERE kind = 'warning'").fetchone()[0]
    assert f"live warnings in the run store: {total}" in done.stderr
    again = subprocess.run([sys.executable, "-m", "shockwatch", "demo", "--out", str(out)], check=True, timeout=600,
                           capture_output=True, text=True)
    assert (tmp_path / "demo-2" / "run.sqlite").exists() and "holds a run already" in again.stderr


def test_symmetries_of_a_built_in_model_as_json():
    """Truth: hand counts for mlp (16, 64, 64, 10) with ReLU: 128 rescale units, 64 + 1 translations."""
    result = runner.invoke(app, ["symmetries", "mlp", "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["counts"] == {"translation": 65, "scale": 0, "rescale": 128, "permutation": 2, "gl": 0, "rotation": 0}
    assert data["verification"]["rescale"]["max_loss_change"] < 1e-5


def test_symmetries_of_a_factory_path_and_errors():
    result = runner.invoke(app, ["symmetries", "shockwatch.models:mlp", "--input-shape", "2", "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["counts"]["rescale"] == 64
    for args, words in [(["symmetries", "no-such-model"], "unknown model"),
                        (["symmetries", "shockwatch.models:mlp"], "--input-shape is needed"),
                        (["symmetries", "torch.nn:ReLU", "--input-shape", "3"], "no parameters")]:
        result = runner.invoke(app, args)
        assert result.exit_code == 2 and words in result.output, result.output


def test_symmetries_of_the_built_in_gpt():
    """Truth: by hand for 2 layers, 4 heads, d_model 32, vocabulary 32: GL 2 x 4 x 2 = 16;
    translations 32 + 1 (logits) + 2 x 32 (key biases); permutations 2 x (heads + MLP units);
    norm-affine rescales (pre-LN: ln_1, ln_2 of each layer and ln_f against their consumers' columns)
    5 x 32 = 160; the residual stream's scale (1) and permutation (1): every parameter is in a symmetry."""
    result = runner.invoke(app, ["symmetries", "gpt", "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["counts"] == {"translation": 97, "scale": 1, "rescale": 160, "permutation": 5, "gl": 16, "rotation": 0}
    assert data["unanalysed"] == [] and data["refuted"] == []


def test_symmetries_of_a_hugging_face_llama():
    """Truth: by hand for Llama with 1 layer, hidden 16, 2 query heads sharing 1 key-value head (d 8),
    intermediate 32, vocabulary 128: SwiGLU up/down rescales 32 and one joint permutation; two RMSNorm
    gains against their consumers' columns 2 x 16; one rescale and one rotation per rotary frequency
    pair 4 + 4; value/
    output GL 1; final norm against lm_head 16 and lm_head's 16 column translations; the residual
    stream's scale and permutation; the two query heads of the one key-value head permute (rotary
    turns both alike): 1."""
    pytest.importorskip("transformers")
    result = runner.invoke(app, ["symmetries", "hf:llama", "--layers", "1", "--hidden", "16", "--heads", "2",
                                 "--kv-heads", "1", "--tokens", "8", "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["counts"] == {"translation": 16, "scale": 1, "rescale": 32 + 32 + 4 + 16, "permutation": 3, "gl": 1, "rotation": 4}
    assert data["unanalysed"] == [] and data["refuted"] == []


def test_hugging_face_build_rejects_a_depth_it_cannot_give():
    from shockwatch.models.huggingface import build

    with pytest.raises(ValueError, match="size='published' only"):
        build("llama", depth=1)
    with pytest.raises(ValueError, match=r"depth must be in \[1, 32\] for mistral"):
        build("mistral", size="published", depth=40)


def test_bad_sizes_paths_and_stores_are_one_line_and_exit_2(tmp_path):
    """Each of these ended in a traceback (exit 1), or was taken (--batch 0 reported 0% covered)."""
    (tmp_path / "corrupt").mkdir()
    (tmp_path / "corrupt" / "run.sqlite").write_text("hello")
    (tmp_path / "afile").write_text("x")
    for arguments in (["symmetries", "mlp", "--batch", "0"], ["symmetries", "hf:llama", "--hidden", "0"],
                      ["symmetries", "hf:gpt2", "--layers", "-1"], ["symmetries", "mlp", "--input-shape", "-1"],
                      ["report", str(tmp_path / "corrupt")], ["report", str(tmp_path / "afile")],
                      ["demo", "--out", str(tmp_path / "afile")]):
        result = runner.invoke(app, arguments)
        assert result.exit_code == 2, (arguments, result.output)
        assert "Traceback" not in result.output, arguments


def _interrupt(*args, **kwargs):
    raise KeyboardInterrupt


def test_ctrl_c_says_what_was_kept_and_exits_130(tmp_path, monkeypatch):
    """Typer alone exits 130 on Ctrl-C without a word; each command now names what it kept."""
    from shockwatch import experiments, report
    from shockwatch.experiments import falsifiable_prediction

    monkeypatch.setattr(falsifiable_prediction, "run_testbed", _interrupt)
    result = runner.invoke(app, ["demo", "--out", str(tmp_path / "demo")])
    assert result.exit_code == 130 and "interrupted: the steps logged so far are in" in result.output, result.output
    monkeypatch.setattr(experiments.EXPERIMENTS["burgers-shock"], "run", _interrupt)
    result = runner.invoke(app, ["reproduce", "burgers-shock", "--out", str(tmp_path / "fig")])
    assert result.exit_code == 130 and "interrupted: nothing was written" in result.output, result.output
    assert not (tmp_path / "fig").exists()
    monkeypatch.setattr(report, "write_report", _interrupt)
    result = runner.invoke(app, ["report", str(tmp_path)])
    assert result.exit_code == 130 and "interrupted: no report was written" in result.output, result.output


def test_symmetries_of_channel_first_logits(tmp_path, monkeypatch):
    """A segmentation head (batch, 5 classes, H, W) from a factory: with --class-dim 1 its bias and its 8 input
    columns are translations (a shift common to a pixel's class scores; by hand in
    tests/symmetry/test_unseen_models.py), verified with the classes moved last for the loss."""
    (tmp_path / "segnet.py").write_text("from torch import nn\n\ndef make():\n    return nn.Sequential("
                                        "nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 5, 1))\n")
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, ["symmetries", "segnet:make", "--input-shape", "3,6,6", "--class-dim", "1", "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["counts"]["translation"] == 9 and data["verification"]["translation"]["max_loss_change"] < 1e-5
    result = runner.invoke(app, ["symmetries", "segnet:make", "--input-shape", "3,6,6", "--class-dim", "4"])
    assert result.exit_code == 2 and "class_dim 4 is not an axis" in result.output
