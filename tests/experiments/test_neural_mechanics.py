"""The Neural Mechanics Figure 1 analogue at a tiny size: laws against the run, files written."""

import json

import pytest

from shockwatch.experiments import neural_mechanics


@pytest.fixture(scope="module")
def result():
    config = neural_mechanics.Config(weight_decays=(0.0, 1e-2), momenta=(0.0, 0.9), steps=40, samples=256,
                                     batch=32, width_divisor=4, hidden=16)
    return neural_mechanics.run(config)


def test_discrete_law_is_exact_for_every_setting(result):
    """Truth: the runs (float64 models): the exact discrete laws to round-off in every setting."""
    for setting, kinds in result.errors.items():
        for kind, laws in kinds.items():
            assert laws["discrete"] < 1e-9, (setting, kind)


def test_continuous_law_is_close_and_exact_without_weight_decay(result):
    """Truth: eqs. 4-6. Without weight decay and momentum, translation charges are conserved exactly."""
    assert result.errors["plain/wd=0"]["translation"]["continuous"] < 1e-12
    for setting, kinds in result.errors.items():
        for kind, laws in kinds.items():
            assert laws.get("continuous", 0.0) < 1e-2, (setting, kind)
            assert laws.get("continuous_median_final", 0.0) <= laws.get("continuous", 0.0)


def test_panels_and_files(result, tmp_path):
    assert {"plain/wd=0.01/translation", "batchnorm/wd=0.01/scale", "plain/wd=0.01/rescale",
            "momentum=0.9/translation"} <= set(result.curves)
    paths = result.save(tmp_path)
    assert {p.name for p in paths} == {"neural_mechanics.json", "neural_mechanics.png"}
    assert json.loads((tmp_path / "neural_mechanics.json").read_text())["errors"] == result.errors


def test_config_validation():
    with pytest.raises(ValueError, match="momenta in"):
        neural_mechanics.Config(momenta=(1.0,))
    assert neural_mechanics.Config.full().steps > neural_mechanics.Config().steps
