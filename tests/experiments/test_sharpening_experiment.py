"""Minibatch grokking beds, micro-batch accumulation in ``testbeds.train``, and the sharpening
experiment's wiring.

Truth: the gradient of the mean of two equal-sized minibatch losses is the gradient over their
union (so one accumulated AdamW step equals one step on the concatenated batch); the controller's
``Accumulate`` read by the loop from the step after the warning; a hand-made accuracy curve."""

import pytest
import torch

from shockwatch.control import Accumulate, Controller
from shockwatch.experiments import sharpening
from shockwatch.experiments import testbeds as tb
from shockwatch.monitor import Monitor
from shockwatch.monitor.warnings import Crossing


def test_minibatches_are_fixed_subsets_of_the_training_pairs():
    bed = tb.make_testbed("grokking-mlp", seed=3, scale="tiny", batch=100, steps=2)
    full = tb.make_testbed("grokking-mlp", seed=3, scale="tiny", steps=2).train_batch(1)
    x, y = bed.train_batch(7)
    assert x.shape[0] == 100 and torch.equal(bed.train_batch(7)[0], x)
    rows = {tuple(r.tolist()) for r in full[0]}
    assert all(tuple(r.tolist()) in rows for r in x)
    assert torch.equal(y, (x[:, 0] + x[:, 1]) % int(bed.notes["p"]))  # c = (a + b) mod p
    assert not torch.equal(bed.train_batch(8)[0], x)
    with pytest.raises(ValueError, match="batch must be in"):
        tb.make_testbed("grokking-mlp", scale="tiny", batch=10**6)
    with pytest.raises(ValueError, match="batch applies to the grokking beds"):
        tb.make_testbed("catapult", scale="tiny", batch=8)


def test_an_accumulated_step_is_a_step_on_the_concatenated_batch():
    accumulated = tb.make_testbed("grokking-mlp", seed=0, scale="tiny", batch=64, steps=1)
    curves = tb.train(accumulated, accumulation=lambda: 2)
    assert curves["micro_batches"] == [2]
    reference = tb.make_testbed("grokking-mlp", seed=0, scale="tiny", batch=64, steps=1)
    (x1, y1), (x2, y2) = reference.train_batch(1), reference.train_batch(2)
    reference.optimizer.zero_grad()
    loss = reference.loss_fn(reference.model(torch.cat([x1, x2])), torch.cat([y1, y2]))
    loss.backward()
    reference.optimizer.step()
    assert curves["loss"][0] == pytest.approx(float(loss.detach()), rel=1e-5)
    for p, q in zip(accumulated.model.parameters(), reference.model.parameters()):
        assert torch.allclose(p, q, rtol=1e-5, atol=1e-7)


def test_accumulate_reaches_the_loop_from_the_step_after_the_warning(tmp_path):
    bed = tb.make_testbed("grokking-mlp", seed=0, scale="tiny", batch=64, steps=40)
    controller = Controller([Accumulate(3, steps=10)], signals=None, budget=1)
    trigger = Crossing("early", "loss", "raw", level=100.0, hysteresis=True)  # fires at step 1
    with Monitor(bed.model, bed.optimizer, tmp_path / "run", tensorboard=False, warnings=[trigger],
                 controller=controller) as monitor:
        curves = tb.train(bed, on_step=lambda step, loss, batch: monitor.step(loss),
                          accumulation=lambda: controller.accumulation)
    assert [i.step for i in controller.interventions] == [1]
    assert curves["micro_batches"] == [1] + [3] * 10 + [1] * 29


def test_first_at_least_and_config_checks():
    assert tb.first_at_least([0, 25, 50, 75], [0.0, 0.5, 0.95, 1.0], 0.9) == 50
    assert tb.first_at_least([0, 25], [0.0, 0.5], 0.9) is None
    with pytest.raises(ValueError, match="arms must be"):
        sharpening.Config(arms=("bigger",))
    with pytest.raises(ValueError, match="grokking bed"):
        sharpening.Config(bed="catapult")
