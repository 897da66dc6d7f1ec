"""Setups a new user's loop has that the Monitor first got wrong (a second new-user trial).

Truth: what the optimizer step read and did, measured by hand in float64 around ``optimizer.step()``
(|g| over every gradient the optimizer holds, |theta_{t+1} - theta_t| over every parameter it holds),
the steps a checkpoint's training counts, and the model's own buffers."""

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import shockwatch as sw
from shockwatch.monitor import RunStore


def held(optimizer):
    return [p for group in optimizer.param_groups for p in group["params"]]


def by_hand_step(model_fn, optimizer, loss_of):
    """One optimizer step; returns (loss, |g|, |theta_{t+1} - theta_t|) over everything the optimizer holds."""
    optimizer.zero_grad(set_to_none=False)
    loss = loss_of()
    loss.backward()
    params = held(optimizer)
    grad = math.sqrt(sum(float(p.grad.to_dense().double().square().sum()) for p in params if p.grad is not None))
    before = [p.detach().double().clone() for p in params]
    optimizer.step()
    update = math.sqrt(sum(float((p.detach().double() - b).square().sum()) for p, b in zip(params, before)))
    return loss, grad, update


class SparseBag(nn.Module):
    """Token embeddings with sparse gradients (``nn.Embedding(sparse=True)``) into a ReLU MLP."""

    def __init__(self):
        super().__init__()
        self.table = nn.Embedding(20, 8, sparse=True)
        self.hidden = nn.Linear(32, 16)
        self.head = nn.Linear(16, 5)

    def forward(self, ids):
        return self.head(torch.relu(self.hidden(self.table(ids).flatten(1))))


@pytest.mark.parametrize("optimizer", ["sgd", "sgd-momentum", "adagrad"])
def test_sparse_gradients_are_observed_not_a_crash(tmp_path, optimizer):
    """torch's SGD and Adagrad step sparse gradients; the Monitor's pass once raised inside
    optimizer.step() (a norm of a sparse tensor) and ended the run. Now |g| and the update are
    those of the densified gradient, and under SGD the rescale law still holds."""
    torch.manual_seed(0)
    model = SparseBag()
    ids, y = torch.randint(0, 20, (6, 4)), torch.randint(0, 5, (6,))
    make = {"sgd": lambda p: torch.optim.SGD(p, lr=0.1), "sgd-momentum": lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9),
            "adagrad": lambda p: torch.optim.Adagrad(p, lr=0.1)}[optimizer]
    opt = make(model.parameters())
    with sw.Monitor(model, opt, tmp_path / "run", example_input=ids, tensorboard=False) as mon:
        for _ in range(4):
            loss, grad, update = by_hand_step(model, opt, lambda: F.cross_entropy(model(ids), y))
            assert model.table.weight.grad.is_sparse
            values = mon.step(loss)
            assert values["grad_norm"] == pytest.approx(grad, rel=1e-6)
            assert values["update_norm"] == pytest.approx(update, rel=1e-5)
        if optimizer.startswith("sgd"):
            assert values["charge_law_error/rescale"] < 1e-5
    assert not [kind for _, kind, _ in RunStore(tmp_path / "run" / "run.sqlite", read_only=True).events()
                if kind == "monitor-error"]


def test_a_frozen_parameter_the_optimizer_still_moves_is_in_the_update(tmp_path):
    """A layer frozen mid-run stays in an SGD-momentum optimizer; with zero_grad(set_to_none=False)
    its zero gradient lets the momentum buffer move it on. The update counted only trainable
    parameters (0.104 against a true 0.122 in the trial); the event said training cannot move it,
    and was stamped a step before the "rebound" of the same change."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 4))
    x, y = torch.randn(32, 8), torch.randint(0, 4, (32,))
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    with sw.Monitor(model, opt, tmp_path / "run", example_input=x, tensorboard=False) as mon:
        for step in range(1, 9):
            if step == 5:
                model[2].requires_grad_(False)
            before = model[2].weight.detach().clone()
            loss, grad, update = by_hand_step(model, opt, lambda: F.cross_entropy(model(x), y))
            values = mon.step(loss)
            assert values["grad_norm"] == pytest.approx(grad, rel=1e-6)
            assert values["update_norm"] == pytest.approx(update, rel=1e-5)
            if step >= 5:
                assert not torch.equal(model[2].weight, before)  # the frozen layer did move
    events = RunStore(tmp_path / "run" / "run.sqlite", read_only=True).events()
    frozen = [step for step, kind, _ in events if kind == "frozen-parameters"]
    rebound = [step for step, kind, _ in events if kind == "rebound"]
    assert frozen == rebound == [5]


def test_parameters_outside_the_model_count_in_the_step(tmp_path):
    """A learnable temperature outside the model, in the same optimizer: |g| and the update are
    those of the step the optimizer took (they left it out: 0.36348 against 0.36752)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))
    x, y = torch.randn(32, 8), torch.randint(0, 4, (32,))
    temperature = nn.Parameter(torch.tensor(1.0))
    opt = torch.optim.SGD([*model.parameters(), temperature], lr=0.5)
    with sw.Monitor(model, opt, tmp_path / "run", example_input=x, tensorboard=False) as mon:
        for _ in range(3):
            loss, grad, update = by_hand_step(model, opt, lambda: F.cross_entropy(model(x) * temperature, y))
            assert float(temperature.grad) != 0.0
            values = mon.step(loss)
            assert values["grad_norm"] == pytest.approx(grad, rel=1e-6)
            assert values["update_norm"] == pytest.approx(update, rel=1e-5)
            everything = math.sqrt(sum(float(p.detach().double().square().sum()) for p in held(opt)))
            assert values["param_norm"] == pytest.approx(everything, rel=1e-6)
            assert values["charge_law_error/rescale"] < 1e-5  # the temperature is in no symmetry


def _train(model, opt, x, y, mon, steps):
    losses = []
    for _ in range(steps):
        opt.zero_grad()
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        mon.step(loss)
        losses.append(loss.item())
    return losses


def test_resuming_from_an_earlier_checkpoint_numbers_steps_as_training_does(tmp_path):
    """Steps 1-5 logged, training resumed from the checkpoint of step 3: with start_step=3 the
    store holds steps 1-5 once, 4 and 5 those of the resumed run, and a "resumed" event; the
    events of the discarded steps go with them. Without start_step the run continues after the
    store's last step (as before), with the event."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))
    x, y = torch.randn(32, 8), torch.randint(0, 4, (32,))
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    path = tmp_path / "run"
    mon = sw.Monitor(model, opt, path, tensorboard=False)
    _train(model, opt, x, y, mon, 3)
    checkpoint = copy.deepcopy((model.state_dict(), opt.state_dict()))
    _train(model, opt, x, y, mon, 2)
    mon._event(5, "note", "an event of a discarded step")
    mon.close()
    model.load_state_dict(checkpoint[0])
    opt.load_state_dict(checkpoint[1])
    mon = sw.Monitor(model, opt, path, tensorboard=False, resume=True, start_step=3)
    replayed = _train(model, opt, x, y, mon, 2)
    mon.close()
    store = RunStore(path / "run.sqlite", read_only=True)
    steps, losses = store.scalars("loss")
    assert steps == [1, 2, 3, 4, 5]
    assert losses[3:] == pytest.approx(replayed, rel=1e-12)
    events = store.events()
    assert not [e for e in events if e[1] == "note"]
    (resumed,) = [e for e in events if e[1] == "resumed"]
    assert resumed[0] == 4 and "2 steps logged after it" in resumed[2]
    store.close()
    with sw.Monitor(model, opt, path, tensorboard=False, resume=True) as mon:
        _train(model, opt, x, y, mon, 1)
    store = RunStore(path / "run.sqlite", read_only=True)
    assert store.scalars("loss")[0] == [1, 2, 3, 4, 5, 6]
    assert [e[0] for e in store.events() if e[1] == "resumed"] == [4, 6]


def test_start_step_numbers_a_new_run_and_is_checked(tmp_path):
    torch.manual_seed(0)
    model = nn.Linear(4, 3)
    x, y = torch.randn(8, 4), torch.randint(0, 3, (8,))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with sw.Monitor(model, opt, tmp_path / "run", tensorboard=False, start_step=10) as mon:
        _train(model, opt, x, y, mon, 2)
    assert RunStore(tmp_path / "run" / "run.sqlite", read_only=True).scalars("loss")[0] == [11, 12]
    for bad in (-1, 2.0, True, "3"):
        with pytest.raises(ValueError, match="start_step"):
            sw.Monitor(model, opt, tmp_path / "other", tensorboard=False, start_step=bad)
    assert not (tmp_path / "other").exists()


class Counting(nn.Module):
    """A forward that writes a buffer of its own (a call counter), beside BatchNorm's statistics."""

    def __init__(self):
        super().__init__()
        self.fc, self.norm, self.out = nn.Linear(8, 8), nn.BatchNorm1d(8), nn.Linear(8, 4)
        self.register_buffer("calls", torch.zeros(()))

    def forward(self, x):
        self.calls += 1
        return self.out(torch.relu(self.norm(self.fc(x))))


def test_finding_symmetries_leaves_every_buffer_as_it_was(tmp_path):
    torch.manual_seed(0)
    model = Counting()
    x = torch.randn(16, 8) * 3 + 2
    state = {name: value.clone() for name, value in model.state_dict().items()}
    sw.find_symmetries(model, x)
    sw.Monitor(model, torch.optim.SGD(model.parameters(), lr=0.1), tmp_path / "run", example_input=x,
               tensorboard=False).close()
    for name, value in model.state_dict().items():
        assert torch.equal(value, state[name]), name
    assert model.training


def test_a_path_sqlite_cannot_open_is_one_clear_error(tmp_path):
    """Every component under the OS's 255 bytes, the whole over SQLite's 512: sqlite3 said only
    "unable to open database file"."""
    log_dir = tmp_path / ("x" * 240) / ("y" * 240)
    model = nn.Linear(4, 2)
    with pytest.raises(OSError, match="at most 512 bytes"):
        sw.Monitor(model, torch.optim.SGD(model.parameters(), lr=0.1), log_dir, tensorboard=False)
    assert list(tmp_path.iterdir()) == []


def test_a_step_at_learning_rate_zero_with_a_curvature_sample(tmp_path):
    """A linear warmup from 0 (the first step at lr 0) with a curvature sample every step: the shock
    forecast -1/(eta lambda_min) divided by zero and ended the run. At eta = 0 nothing moves: no
    crossing is forecast (inf)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 16), nn.Tanh(), nn.Linear(16, 3))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    warmup = torch.optim.lr_scheduler.LambdaLR(opt, lambda k: min(1.0, k / 10))
    x, y = torch.randn(32, 4), torch.randint(0, 3, (32,))
    with sw.Monitor(model, opt, tmp_path / "run", example_input=x, loss_fn=F.cross_entropy, tensorboard=False,
                    schedule=sw.Schedule(curvature=1)) as mon:
        logged = []
        for _ in range(3):
            opt.zero_grad()
            loss = F.cross_entropy(model(x), y)
            loss.backward()
            opt.step()
            logged.append(mon.step(loss, batch=(x, y)))
            warmup.step()
    assert logged[0]["lr"] == 0.0 and logged[0]["shock_steps/raw"] == math.inf
    assert all("curvature/raw_min" in values for values in logged)


@pytest.mark.parametrize("name", ["exp#1", "what?x", "pct%41b"])
def test_a_run_folder_named_with_url_characters_reads_back(tmp_path, name):
    """The read-only store opened SQLite's URI "file:<path>?mode=ro" unquoted: a folder named exp#1
    could not be reported (and an empty file appeared at runs/exp)."""
    model = nn.Linear(4, 3)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x, y = torch.randn(8, 4), torch.randint(0, 3, (8,))
    with sw.Monitor(model, opt, tmp_path / name, tensorboard=False) as mon:
        _train(model, opt, x, y, mon, 3)
    store = RunStore(tmp_path / name / "run.sqlite", read_only=True)
    assert store.scalars("loss")[0] == [1, 2, 3]
    store.close()
    assert sorted(p.name for p in tmp_path.iterdir()) == [name]


def test_a_list_of_rules_reused_for_a_second_run_starts_fresh(tmp_path):
    """The Monitor ran the rule objects it was given: a second run with the same list kept the first
    run's history (run 1 warned, an identical run 2 did not). Truth: the spike rule's definition on
    a constant loss then a jump, the same in both runs."""
    from shockwatch.monitor.warnings import SigmaSpike

    rules = [SigmaSpike(refractory=100)]
    model = nn.Linear(4, 3)
    x, y = torch.randn(8, 4), torch.randint(0, 3, (8,))
    warned = []
    for run in ("one", "two"):
        opt = torch.optim.SGD(model.parameters(), lr=0.0)
        seen = []
        with sw.Monitor(model, opt, tmp_path / run, tensorboard=False, warnings=rules, on_warning=seen.append) as mon:
            for step in range(1, 26):
                opt.zero_grad()
                F.cross_entropy(model(x), y).backward()
                opt.step()
                mon.step(1.0 if step <= 20 else 5.0)
        warned.append([w.step for w in seen])
    assert warned == [[21], [21]]
    with pytest.raises(TypeError, match="sequence of rules"):
        sw.Monitor(model, opt, tmp_path / "three", tensorboard=False, warnings=rules[0])


def test_parameters_the_optimizer_does_not_hold_are_not_observed(tmp_path):
    """An optimizer over the head only, the body left trainable: zero_grad never clears the body's
    gradients, which pile up, and |g| and |theta| counted them (0.660 against 0.073 and 5.01 against
    1.31 by step 5 in the trial). Truth: |g| and |theta| over what the optimizer holds, by hand."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 4))
    x, y = torch.randn(64, 8), torch.randint(0, 4, (64,))
    opt = torch.optim.AdamW(model[4].parameters(), lr=1e-2)
    with sw.Monitor(model, opt, tmp_path / "run", example_input=x, tensorboard=False) as mon:
        for _ in range(5):
            loss, grad, update = by_hand_step(model, opt, lambda: F.cross_entropy(model(x), y))
            values = mon.step(loss)
            assert values["grad_norm"] == pytest.approx(grad, rel=1e-6)
            assert values["update_norm"] == pytest.approx(update, rel=1e-5)
            head = math.sqrt(sum(float(p.detach().double().square().sum()) for p in held(opt)))
            assert values["param_norm"] == pytest.approx(head, rel=1e-6)
    assert float(model[0].weight.grad.norm()) > 0  # the body's gradients were there all along
    events = RunStore(tmp_path / "run" / "run.sqlite", read_only=True).events()
    assert any(kind == "frozen-parameters" and "in none of the optimizer's param groups" in message
               for _, kind, message in events)


class GeneratorAndCritic(nn.Module):
    """A generator and a critic in one module, each trained by its own optimizer (a GAN's usual loop)."""

    def __init__(self):
        super().__init__()
        self.generator = nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 6))
        self.critic = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 1))

    def forward(self, z):
        return self.critic(self.generator(z))


def test_two_optimizers_over_one_module_each_observe_their_own(tmp_path):
    """Two monitors, one per optimizer, on one module: each counted the other's parameters in |g| (1.036
    against 0.167) and kept symmetries acting on them, whose charges the other optimizer moves: the
    critic's SGD law read 4.5e-2. Truth: |g| by hand over each optimizer's parameters; the exact SGD law
    (round-off) for the symmetries of the parameters each optimizer steps."""
    torch.manual_seed(0)
    model = GeneratorAndCritic()
    z, real = torch.randn(32, 4), torch.randn(32, 6)
    generator_opt = torch.optim.SGD(model.generator.parameters(), lr=0.05)
    critic_opt = torch.optim.SGD(model.critic.parameters(), lr=0.05)
    syms = sw.find_symmetries(model, z, logits=False)
    with sw.Monitor(model, generator_opt, tmp_path / "g", symmetries=syms, tensorboard=False) as watch_generator, \
            sw.Monitor(model, critic_opt, tmp_path / "c", symmetries=syms, tensorboard=False) as watch_critic:
        for _ in range(4):
            loss, grad, _ = by_hand_step(model, critic_opt,
                                         lambda: model.critic(model.generator(z).detach()).mean() - model.critic(real).mean())
            values = watch_critic.step(loss)
            assert values["grad_norm"] == pytest.approx(grad, rel=1e-6)
            assert values["charge_law_error/rescale"] < 1e-5
            loss, grad, _ = by_hand_step(model, generator_opt, lambda: -model(z).mean())
            values = watch_generator.step(loss)
            assert values["grad_norm"] == pytest.approx(grad, rel=1e-6)
            assert values["charge_law_error/rescale"] < 1e-5


def test_an_infinity_is_stored_as_itself(tmp_path):
    """A step GradScaler skips has |g| = inf: mon.step returned inf, the store read back NaN (every
    non-finite value went to NULL). SQLite stores +-inf as REAL; only NaN needs NULL."""
    with RunStore(tmp_path / "run.sqlite") as store:
        store.log(1, {"grad_norm": math.inf, "loss": math.nan, "low": -math.inf, "fine": 0.25})
    with RunStore(tmp_path / "run.sqlite", read_only=True) as store:
        assert store.scalars("grad_norm")[1] == [math.inf] and store.scalars("low")[1] == [-math.inf]
        assert math.isnan(store.scalars("loss")[1][0]) and store.scalars("fine")[1] == [0.25]


def test_symmetries_name_the_parameters_inside_torch_compile(tmp_path):
    """torch.compile(model) holds the same parameter tensors under '_orig_mod.' names: symmetries found on
    one were refused for the other ("found on another model?"). Both now name them as the model inside
    does (the compiled model is never run here: no compiler needed)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 4))
    compiled = torch.compile(model)
    x, y = torch.randn(16, 8), torch.randint(0, 4, (16,))
    on_compiled, on_eager = sw.find_symmetries(compiled, x), sw.find_symmetries(model, x)
    assert [s.label for s in on_compiled] == [s.label for s in on_eager] and on_eager.counts()["rescale"] == 32
    assert {slot.param for s in on_compiled for slot in s.slots} == {"0.weight", "0.bias", "2.weight", "2.bias"}
    for watched, syms, name in ((model, on_compiled, "a"), (compiled, on_eager, "b")):
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        with sw.Monitor(watched, opt, tmp_path / name, symmetries=syms, tensorboard=False) as mon:
            opt.zero_grad()
            loss = F.cross_entropy(model(x), y)
            loss.backward()
            opt.step()
            assert mon.step(loss)["charge_law_error/rescale"] < 1e-5
    with pytest.raises(ValueError, match="start with '_orig_mod.', a wrapper's"):
        sw.quotient.canonical(on_eager, {k: v.detach() for k, v in compiled.named_parameters()})


def test_norms_are_float64_without_scale_or_rescale_symmetries(tmp_path):
    """A tanh MLP has no scale or rescale group, so the C kernel (float64) never ran and |g|, |theta| and
    the update were summed in float32: 1.6e-8 to 4.4e-8 off. Truth: the same sums by hand in float64."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 64), nn.Tanh(), nn.Linear(64, 10))
    x, y = torch.randn(64, 16), torch.randint(0, 10, (64,))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with sw.Monitor(model, opt, tmp_path / "run", example_input=x, tensorboard=False) as mon:
        assert mon.symmetries.counts()["rescale"] == 0
        for _ in range(2):
            loss, grad, update = by_hand_step(model, opt, lambda: F.cross_entropy(model(x), y))
            values = mon.step(loss)
            norm = math.sqrt(sum(float(p.detach().double().square().sum()) for p in model.parameters()))
            assert values["grad_norm"] == pytest.approx(grad, rel=1e-14)
            assert values["update_norm"] == pytest.approx(update, rel=1e-14)
            assert values["param_norm"] == pytest.approx(norm, rel=1e-14)


def test_weights_edited_between_steps_restart_the_laws(tmp_path):
    """At lr 0 nothing the optimizer does moves a charge, so the exact law's error is 0 at every step.
    model.to(bfloat16) and a clip to a box under no_grad (a WGAN critic) between steps moved the charges
    outside the law, whose error then read 1.8e-3 and 7.6 for the rest of the run. Now the laws start
    again from the charges after the edit, with a "rebound" event naming it."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 64), nn.ReLU(), nn.Linear(64, 10))
    x, y = torch.randn(128, 16), torch.randint(0, 10, (128,))
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    with sw.Monitor(model, opt, tmp_path / "run", example_input=x, tensorboard=False) as mon:
        for step in range(1, 9):
            if step == 3:
                model.to(torch.bfloat16)
                x = x.bfloat16()
            if step == 6:
                with torch.no_grad():
                    for p in model.parameters():
                        p.clamp_(-0.05, 0.05)
            opt.zero_grad()
            loss = F.cross_entropy(model(x).float(), y)
            loss.backward()
            opt.step()
            values = mon.step(loss)
            assert values["charge_law_error/rescale"] == 0.0 and values["charge_law_error/translation"] == 0.0
    events = RunStore(tmp_path / "run" / "run.sqlite", read_only=True).events()
    rebounds = [(step, message) for step, kind, message in events if kind == "rebound"]
    assert [step for step, _ in rebounds] == [3, 6]
    assert all("changed outside optimizer.step()" in message for _, message in rebounds)


def test_a_clip_at_every_step_restarts_the_laws_with_one_event(tmp_path):
    """A WGAN critic clips its weights after every step: the laws start again at each step (the exact SGD
    law then holds to round-off over each step), said by one event, not one per step."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 1))
    x = torch.randn(32, 8)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    with sw.Monitor(model, opt, tmp_path / "run", example_input=x, logits=False, tensorboard=False) as mon:
        for _ in range(6):
            opt.zero_grad()
            loss = model(x).mean()
            loss.backward()
            opt.step()
            assert mon.step(loss)["charge_law_error/rescale"] < 1e-5
            with torch.no_grad():
                for p in model.parameters():
                    p.clamp_(-0.1, 0.1)
    events = RunStore(tmp_path / "run" / "run.sqlite", read_only=True).events()
    assert [step for step, kind, _ in events if kind == "rebound"] == [2]


def test_writes_before_the_first_step_say_nothing(tmp_path):
    """DDP broadcasts rank 0's weights into every replica when it wraps the model, in place; a monitor
    made before the wrap took that for an edit and wrote a "rebound" at step 1. Writes before the first
    step restart nothing that has begun: no event, and the laws start from the weights the step reads."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))
    x, y = torch.randn(32, 8), torch.randint(0, 4, (32,))
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    with sw.Monitor(model, opt, tmp_path / "run", example_input=x, tensorboard=False) as mon:
        with torch.no_grad():
            for p in model.parameters():
                p.mul_(1.5)  # as a checkpoint loaded after the monitor was made
        for _ in range(3):
            loss, _, _ = by_hand_step(model, opt, lambda: F.cross_entropy(model(x), y))
            assert mon.step(loss)["charge_law_error/rescale"] < 1e-5
    events = RunStore(tmp_path / "run" / "run.sqlite", read_only=True).events()
    assert not [kind for _, kind, _ in events if kind == "rebound"]


class AuxiliaryHead(nn.Module):
    """A trunk with a second head used in training mode only (deep supervision): the trace, in eval
    mode, never sees it, so the trunk's rescales it breaks are found."""

    def __init__(self):
        super().__init__()
        self.trunk, self.head, self.aux = nn.Linear(8, 16), nn.Linear(16, 4), nn.Linear(16, 4)

    def forward(self, x):
        h = torch.relu(self.trunk(x))
        out = self.head(h)
        return out + 0.5 * self.aux(h) if self.training else out


@pytest.mark.parametrize("aux", [True, False])
def test_a_loss_that_breaks_the_found_symmetries_is_said(tmp_path, aux):
    """Training through the auxiliary head breaks the trunk's rescales (gradient breaking 3.9e-2 in the
    trial): one "symmetry-broken" event. The same loop without it (the model in eval mode) says nothing."""
    torch.manual_seed(0)
    model = AuxiliaryHead()
    x, y = torch.randn(32, 8), torch.randint(0, 4, (32,))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with sw.Monitor(model, opt, tmp_path / "run", example_input=x, tensorboard=False) as mon:
        model.train(aux)
        for _ in range(3):
            loss, _, _ = by_hand_step(model, opt, lambda: F.cross_entropy(model(x), y))
            breaking = mon.step(loss)["gradient_breaking/rescale"]
            assert (breaking > 1e-3) if aux else (breaking < 1e-5)
    events = RunStore(tmp_path / "run" / "run.sqlite", read_only=True).events()
    assert [step for step, kind, _ in events if kind == "symmetry-broken"] == ([1] if aux else [])
