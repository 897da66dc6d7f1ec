"""What a user's loop gets wrong, met with an event or a one-line error and never with wrong numbers.
Truth: the optimizer's own step count, and the exact discrete laws of SGD with momentum (which hold to
round-off in float64 wherever the monitor saw every step it predicts across)."""

import pytest
import torch
import torch.nn.functional as F

import shockwatch as sw
from shockwatch.monitor import RunStore


def _setup(tmp_path, **options):
    torch.manual_seed(0)
    model = sw.models.mlp((4, 12, 3)).double()
    x = torch.randn(32, 4, dtype=torch.float64)
    y = torch.randint(0, 3, (32,))
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-3)
    mon = sw.Monitor(model, opt, tmp_path / "run", example_input=x, tensorboard=False, **options)
    return model, opt, mon, x, y


def test_optimizer_steps_without_mon_step_keep_their_numbers_and_restart_the_laws(tmp_path):
    """mon.step skipped for optimizer steps 8-12 (a loop logging every k steps): the store's steps are
    the optimizer's (1-7, 13-20), each missed step has a "missed-step" event, and the law error stays
    at round-off (it was 0.13 from step 13 on, for the rest of the run, when the laws ran across the
    gap as if it were one step)."""
    model, opt, mon, x, y = _setup(tmp_path)
    for step in range(1, 21):
        opt.zero_grad()
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        if not 8 <= step <= 12:
            mon.step(loss)
    mon.close()
    store = RunStore(tmp_path / "run" / "run.sqlite", read_only=True)
    steps, errors = store.scalars("charge_law_error/rescale")
    assert steps == [*range(1, 8), *range(13, 21)]
    assert max(errors) < 1e-10
    assert store.scalars("loss")[0] == steps
    missed = [step for step, kind, _ in store.events() if kind == "missed-step"]
    assert missed == [8, 9, 10, 11, 12]


@pytest.mark.parametrize("bad", [None, "0.3", torch.tensor(1 + 2j), True])
def test_a_refused_loss_leaves_the_step_count_as_it_was(tmp_path, bad):
    """A call refused for its argument (None: an output's .loss without labels; a string; a complex
    tensor; a bool) raises TypeError and takes no step number: the right call after it logs step 1
    with the law's error at round-off. It used to consume a number each, then blame the optimizer."""
    model, opt, mon, x, y = _setup(tmp_path)
    opt.zero_grad()
    loss = F.cross_entropy(model(x), y)
    loss.backward()
    opt.step()
    with pytest.raises(TypeError, match="mon.step"):
        mon.step(bad)
    mon.step(loss)
    mon.close()
    store = RunStore(tmp_path / "run" / "run.sqlite", read_only=True)
    assert store.scalars("loss")[0] == [1]
    assert abs(store.scalars("loss")[1][0] - float(loss)) < 1e-15


def test_an_optimizer_of_another_model_and_foreign_symmetries_are_refused(tmp_path):
    """Nothing is written: one-line errors naming what was wrong."""
    model, *_ = _setup(tmp_path / "a")
    other = sw.models.mlp((4, 12, 3)).double()
    with pytest.raises(ValueError, match="holds none of the model's parameters"):
        sw.Monitor(model, torch.optim.SGD(other.parameters(), lr=0.1), tmp_path / "b", example_input=torch.randn(2, 4))
    wide = sw.models.mlp((4, 20, 3)).double()
    foreign = sw.find_symmetries(wide, torch.randn(8, 4, dtype=torch.float64))
    with pytest.raises(ValueError, match="another model"):
        sw.Monitor(model, torch.optim.SGD(model.parameters(), lr=0.1), tmp_path / "c", symmetries=foreign)
    for options, match in (({"sinks": ["tensorboard"]}, "sinks"), ({"loss_fn": 3}, "loss_fn"),
                           ({"raise_on_nonfinite": "no"}, "raise_on_nonfinite"), ({"curvature_tol": "1e-4"}, "curvature_tol")):
        with pytest.raises(TypeError, match=match):
            sw.Monitor(model, torch.optim.SGD(model.parameters(), lr=0.1), tmp_path / "d", **options)
    with pytest.raises(TypeError, match="torch.nn.Module"):
        sw.Monitor("gpt2", torch.optim.SGD(model.parameters(), lr=0.1), tmp_path / "e")
    (tmp_path / "file").write_text("x")
    with pytest.raises(NotADirectoryError, match="is a file"):
        sw.Monitor(model, torch.optim.SGD(model.parameters(), lr=0.1), tmp_path / "file")
    assert not any((tmp_path / name).exists() for name in "bcde")


def test_a_routine_due_without_its_batch_is_said_once(tmp_path):
    """schedule.curvature every 2 steps, mon.step(loss) without batch= for 6 steps: no curvature
    value, and one "no-batch" event (the curvature was skipped in silence before)."""
    model, opt, mon, x, y = _setup(tmp_path, schedule=sw.Schedule(curvature=2), loss_fn=F.cross_entropy)
    for _ in range(6):
        opt.zero_grad()
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        mon.step(loss)
    mon.close()
    store = RunStore(tmp_path / "run" / "run.sqlite", read_only=True)
    assert not any(name.startswith("curvature/") for name in store.names())
    said = [(step, message) for step, kind, message in store.events() if kind == "no-batch"]
    assert len(said) == 1 and "schedule.curvature" in said[0][1]


def test_lbfgs_update_is_the_whole_step(tmp_path):
    """LBFGS with max_iter=3 evaluates its closure at several points inside one step. Truth: the
    parameters read before and after opt.step(closure); the logged update norm is their distance (it
    was 0: the pre-step pass followed the closure's last call, after the inner iterations had moved)."""
    torch.manual_seed(0)
    model = sw.models.mlp((4, 12, 3)).double()
    x, y = torch.randn(32, 4, dtype=torch.float64), torch.randint(0, 3, (32,))
    opt = torch.optim.LBFGS(model.parameters(), lr=0.5, max_iter=3)
    mon = sw.Monitor(model, opt, tmp_path / "run", example_input=x, tensorboard=False)

    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        return loss

    for _ in range(4):
        before = torch.cat([p.detach().reshape(-1).clone() for p in model.parameters()])
        loss = opt.step(closure)
        moved = float((torch.cat([p.detach().reshape(-1) for p in model.parameters()]) - before).norm())
        values = mon.step(loss)
        assert moved > 1e-3
        assert abs(values["update_norm"] - moved) < 1e-10 * moved
    mon.close()


def test_a_second_writer_on_an_open_run_is_refused(tmp_path):
    """A Monitor re-made with resume=True while the first still has the run open (a notebook cell
    interrupted and run again): refused in one line; the first one's steps stay its own, and once
    it is closed the run resumes. Truth: the store's rows (a stray step of the old Monitor used to
    overwrite the new one's step 11 with a law error of 0.09)."""
    model, opt, mon, x, y = _setup(tmp_path)

    def one_step(monitor):
        opt.zero_grad()
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        return monitor.step(loss)

    for _ in range(3):
        one_step(mon)
    with pytest.raises(RuntimeError, match="open for writing by another"):
        sw.Monitor(model, opt, tmp_path / "run", example_input=x, tensorboard=False, resume=True)
    one_step(mon)  # the first monitor is untouched by the refused one
    mon.close()
    again = sw.Monitor(model, opt, tmp_path / "run", example_input=x, tensorboard=False, resume=True)
    one_step(again)
    again.close()
    store = RunStore(tmp_path / "run" / "run.sqlite", read_only=True)
    assert store.scalars("loss")[0] == [1, 2, 3, 4, 5]
    assert max(store.scalars("charge_law_error/rescale")[1]) < 1e-10
    assert not (tmp_path / "run" / "run.sqlite-lock").exists()
